"""Create the event topics with the settings that make replay possible (idempotent).

What a topic is (name, partitions, retention) is the event contract's (`schemas.catalog`); how
many copies the cluster keeps of it (replication factor, `min.insync.replicas`) is the caller's,
from KAFKA_REPLICATION_FACTOR and KAFKA_MIN_INSYNC_REPLICAS.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from connectors.kafka import admin_config
from core.errors import PipelineError
from schemas.catalog import TOPICS, Topic

__all__ = ["TopicError", "TopicsNotReady", "ensure_topics", "wait_topics_ready"]


class TopicError(PipelineError):
    """A topic could not be created or checked."""


class TopicsNotReady(TopicError):
    """Topics still missing, without a leader, or with other partition counts than expected."""


def ensure_topics(
    bootstrap: str,
    topics: Iterable[Topic] | None = None,
    *,
    replication: int,
    min_insync_replicas: int,
    timeout_s: float = 15.0,
) -> list[str]:
    """Create the topics that do not exist yet (the event topics when `topics` is None), each with
    `replication` copies and `min_insync_replicas` (unless its own config says otherwise);
    return the names created. An existing topic is left as it is."""
    wanted = list(topics if topics is not None else TOPICS.values())
    admin = AdminClient(admin_config(bootstrap))
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise TopicError(f"Kafka at {bootstrap} not reachable: {exc}") from exc
    new = [
        NewTopic(
            t.name,
            num_partitions=t.partitions,
            replication_factor=replication,
            config={"min.insync.replicas": str(min_insync_replicas), **t.config},
        )
        for t in wanted
        if t.name not in existing
    ]
    if not new:
        return []
    created: list[str] = []
    for name, future in admin.create_topics(new, request_timeout=timeout_s).items():
        try:
            future.result(timeout_s)
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" in str(exc):
                continue
            raise TopicError(f"creating topic {name} failed: {exc}") from exc
    return created


def wait_topics_ready(
    bootstrap: str,
    topics: Iterable[Topic],
    *,
    timeout_s: float = 60.0,
    interval_s: float = 0.25,
) -> None:
    """Return once every topic exists with its expected partition count and each partition has
    a leader, as the cluster's metadata says. A topic just created is not usable at once (its
    partitions have no leader yet, and a client that fetched metadata then sees 0 partitions):
    a worker that starts consuming before this holds wrong metadata for minutes. Raise
    `TopicsNotReady` after `timeout_s`, naming each topic and its partition counts."""
    wanted = {t.name: t.partitions for t in topics}
    admin = AdminClient(admin_config(bootstrap))
    deadline = time.monotonic() + timeout_s
    problems: list[str] = []
    while True:
        problems = []
        try:
            meta = admin.list_topics(timeout=max(1.0, min(10.0, deadline - time.monotonic())))
        except KafkaException as exc:
            problems = [f"Kafka at {bootstrap} not reachable: {exc}"]
        else:
            for name, expected in sorted(wanted.items()):
                tm = meta.topics.get(name)
                if tm is None or tm.error is not None:
                    problems.append(f"{name}: missing ({tm.error if tm else 'not in metadata'})")
                    continue
                got = len(tm.partitions)
                if got != expected:
                    problems.append(f"{name}: {got} partitions, {expected} expected")
                    continue
                leaderless = sorted(p for p, pm in tm.partitions.items() if pm.leader < 0)
                if leaderless:
                    problems.append(f"{name}: no leader yet for partitions {leaderless}")
        if not problems:
            return
        if time.monotonic() >= deadline:
            raise TopicsNotReady(
                f"topics not ready after {timeout_s:.0f} s: " + "; ".join(problems)
            )
        time.sleep(interval_s)
