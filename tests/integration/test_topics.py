"""Topic creation on the real broker: every topic gets the replication factor and
`min.insync.replicas` its caller passes (KAFKA_REPLICATION_FACTOR, KAFKA_MIN_INSYNC_REPLICAS) and
the replay settings of its config; a topic's own config wins; an existing topic is left alone;
once `wait_topics_ready` returns, every partition is served by its leader and takes writes."""

from __future__ import annotations

import uuid
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    OffsetSpec,
)

from connectors.kafka import producer_config
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
    sec = settings.kafka_security
    tag = uuid.uuid4().hex[:8]
    event = Topic("tests", f"tests-{tag}.events", 2, "id")  # the event topics' default config
    own = Topic("tests", f"tests-{tag}-changelog", 1, "", config={"min.insync.replicas": "1"})
    try:
        created = ensure_topics(
            boot, [event, own], security=sec, replication=1, min_insync_replicas=2
        )
        assert sorted(created) == sorted([event.name, own.name])
        wait_topics_ready(boot, [event, own], security=sec, timeout_s=30)
        got = _configs(boot, event.name)
        assert got["min.insync.replicas"] == "2"  # the caller's
        assert got["retention.ms"] == "-1"  # the contract's: replay needs every event
        assert _configs(boot, own.name)["min.insync.replicas"] == "1"  # its own wins
        # an existing topic is left as it is
        assert (
            ensure_topics(boot, [event], security=sec, replication=1, min_insync_replicas=1) == []
        )
        assert _configs(boot, event.name)["min.insync.replicas"] == "2"
    finally:
        _delete(boot, [event.name, own.name])


def test_every_partition_is_served_and_keeps_every_record_once_the_topics_are_ready(
    stack: Stack, settings: Settings
) -> None:
    """Right after creation the metadata names a leader for each partition before that broker
    serves it ("not leader" for a while): an idempotent producer writing then lost records it
    reported delivered (the analytics oracle test saw the first orders of a fresh partition
    missing). Many topics at once, as a worker creates them, widen that window."""
    boot = settings.kafka_bootstrap
    sec = settings.kafka_security
    tag = uuid.uuid4().hex[:8]
    topics = [Topic("tests", f"tests-{tag}.ready-{i}", 6, "id") for i in range(40)]
    names = [t.name for t in topics]
    try:
        ensure_topics(boot, topics, security=sec, replication=1, min_insync_replicas=1)
        wait_topics_ready(boot, topics, security=sec, timeout_s=60)
        admin = AdminClient({"bootstrap.servers": boot})
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        request = {TopicPartition(t.name, p): latest for t in topics for p in range(6)}
        refused = []
        for tp, future in admin.list_offsets(request, request_timeout=10).items():
            try:
                future.result(10)
            except Exception as exc:  # noqa: BLE001 - the answer a user would get
                refused.append(f"{tp.topic}/{tp.partition}: {exc}")
        assert not refused, f"{len(refused)} partitions not served, first: {refused[:3]}"
        # and a record written to each partition at once is there, once
        producer = Producer(
            producer_config(
                boot,
                security=sec,
                delivery_timeout_ms=10_000,
                linger_ms=5,
                max_message_bytes=1024,
            )
        )
        failed: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failed.append(str(err))

        for tp in request:
            for i in range(3):
                producer.produce(
                    tp.topic,
                    value=b"%d" % i,
                    partition=tp.partition,
                    on_delivery=delivered,
                )
            producer.poll(0)
        assert producer.flush(30) == 0
        assert not failed, failed[:3]
        reader = Consumer({"bootstrap.servers": boot, "group.id": f"tests-{tag}"})
        try:
            counts = {
                f"{tp.topic}/{tp.partition}": reader.get_watermark_offsets(tp, timeout=10)[1]
                for tp in request
            }
        finally:
            reader.close()
        short = {k: n for k, n in counts.items() if n != 3}
        assert not short, f"partitions without their 3 records: {short}"
    finally:
        _delete(boot, names)
