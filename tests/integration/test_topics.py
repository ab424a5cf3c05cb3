"""Topic creation on the real broker: every topic gets the replication factor and
`min.insync.replicas` its caller passes (KAFKA_REPLICATION_FACTOR, KAFKA_MIN_INSYNC_REPLICAS) and
the replay settings of its config; a topic's own config wins; an existing topic is left alone."""

from __future__ import annotations

import uuid

from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from connectors.topics import ensure_topics, wait_topics_ready
from core.settings import Settings
from mohallamart.stack import Stack
from schemas.catalog import Topic


def _configs(bootstrap: str, name: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    found = admin.describe_configs([res])[res].result(15)
    return {k: v.value for k, v in found.items()}


def _delete(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.delete_topics(names, operation_timeout=30).values():
        f.result(30)


def test_topics_get_the_callers_replication_settings_and_their_own_config(
    stack: Stack, settings: Settings
) -> None:
    boot = settings.kafka_bootstrap
    tag = uuid.uuid4().hex[:8]
    event = Topic("tests", f"tests-{tag}.events", 2, "id")  # the event topics' default config
    own = Topic("tests", f"tests-{tag}-changelog", 1, "", config={"min.insync.replicas": "1"})
    try:
        created = ensure_topics(boot, [event, own], replication=1, min_insync_replicas=2)
        assert sorted(created) == sorted([event.name, own.name])
        wait_topics_ready(boot, [event, own], timeout_s=30)
        got = _configs(boot, event.name)
        assert got["min.insync.replicas"] == "2"  # the caller's
        assert got["retention.ms"] == "-1"  # the contract's: replay needs every event
        assert _configs(boot, own.name)["min.insync.replicas"] == "1"  # its own wins
        # an existing topic is left as it is
        assert ensure_topics(boot, [event], replication=1, min_insync_replicas=1) == []
        assert _configs(boot, event.name)["min.insync.replicas"] == "2"
    finally:
        _delete(boot, [event.name, own.name])
