"""Create the event topics with the settings that make replay possible (idempotent).

What a topic is (name, partitions, retention) is the event contract's (`schemas.catalog`); how
many copies the cluster keeps of it (replication factor, `min.insync.replicas`) is the caller's,
from KAFKA_REPLICATION_FACTOR and KAFKA_MIN_INSYNC_REPLICAS.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterable

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec  # type: ignore[attr-defined]

from connectors.kafka import admin_config
from core.errors import PipelineError
from core.settings import KafkaSecurity
from schemas.catalog import TOPICS, Topic

__all__ = [
    "TopicError",
    "TopicsNotReady",
    "ensure_topics",
    "ensure_topics_ready",
    "wait_topics_ready",
]


class TopicError(PipelineError):
    """A topic could not be created or checked."""


class TopicsNotReady(TopicError):
    """Topics still missing, without a leader, or with other partition counts than expected."""


def ensure_topics(
    bootstrap: str,
    topics: Iterable[Topic] | None = None,
    *,
    security: KafkaSecurity,
    replication: int,
    min_insync_replicas: int,
    timeout_s: float = 15.0,
) -> list[str]:
    """Create the topics that do not exist yet (the event topics when `topics` is None), each with
    `replication` copies and `min_insync_replicas` (unless its own config says otherwise);
    return the names created. An existing topic is left as it is."""
    wanted = list(topics if topics is not None else TOPICS.values())
    admin = AdminClient(admin_config(bootstrap, security=security))
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


def ensure_topics_ready(
    bootstrap: str,
    topics: Iterable[Topic] | None = None,
    *,
    security: KafkaSecurity,
    replication: int,
    min_insync_replicas: int,
    timeout_s: float = 15.0,
) -> list[str]:
    """`ensure_topics`, then `wait_topics_ready`: what a producer needs before its first write
    (a record written to a partition its leader does not serve yet may be lost). Returns the
    names created."""
    wanted = list(topics if topics is not None else TOPICS.values())
    deadline = time.monotonic() + timeout_s  # one budget for both steps
    created = ensure_topics(
        bootstrap,
        wanted,
        security=security,
        replication=replication,
        min_insync_replicas=min_insync_replicas,
        timeout_s=timeout_s,
    )
    wait_topics_ready(
        bootstrap,
        wanted,
        security=security,
        timeout_s=max(1.0, deadline - time.monotonic()),
    )
    return created


def wait_topics_ready(
    bootstrap: str,
    topics: Iterable[Topic],
    *,
    security: KafkaSecurity,
    timeout_s: float = 60.0,
    interval_s: float = 0.25,
) -> None:
    """Return once every topic exists with its expected partition count and each partition's
    leader serves it. A topic just created is not usable at once: its partitions have no leader
    yet, and a client that fetched metadata then sees 0 partitions (a worker that starts
    consuming before this holds wrong metadata for minutes); and for a while after the metadata
    names a leader, that broker has not taken the partition yet (it answers "not leader"). An
    idempotent librdkafka producer writing then can lose records while reporting them
    delivered: its first request fails, the next one is accepted (the broker knows no sequence
    of the producer yet), and the first request's records count as delivered by the later
    one's success. So each partition must also answer a ListOffsets request. Raise
    `TopicsNotReady` after `timeout_s`, naming what is not ready."""
    wanted = {t.name: t.partitions for t in topics}
    admin = AdminClient(admin_config(bootstrap, security=security))
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
                problems = _not_served(admin, wanted, deadline)
        if not problems:
            return
        if time.monotonic() >= deadline:
            raise TopicsNotReady(
                f"topics not ready after {timeout_s:.0f} s: " + "; ".join(problems)
            )
        time.sleep(interval_s)


def _not_served(admin: AdminClient, wanted: dict[str, int], deadline: float) -> list[str]:
    """The partitions whose leader does not answer a ListOffsets request yet, per topic."""
    request = {
        TopicPartition(name, p): OffsetSpec.latest()  # type: ignore[no-untyped-call]
        for name, n in wanted.items()
        for p in range(n)
    }
    if not request:
        return []
    wait = max(1.0, min(10.0, deadline - time.monotonic()))
    pending: dict[str, list[int]] = {}
    first = ""
    try:
        futures = admin.list_offsets(request, request_timeout=wait)
    except KafkaException as exc:
        return [f"listing offsets failed: {exc}"]
    concurrent.futures.wait(list(futures.values()), timeout=wait)  # one wait for them all
    for tp, future in futures.items():
        try:
            future.result(0)
        except Exception as exc:  # noqa: BLE001 - a KafkaException or a timeout: not served yet
            pending.setdefault(tp.topic, []).append(tp.partition)
            first = first or str(exc)
    return [
        f"{name}: partitions {sorted(parts)} not served by their leader yet ({first})"
        for name, parts in sorted(pending.items())
    ]
