"""Create the event topics with the settings that make replay possible (idempotent)."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from mohallamart.errors import PipelineError
from schemas.catalog import TOPICS, Topic

__all__ = ["TopicError", "ensure_topics"]


class TopicError(PipelineError):
    """A topic could not be created or checked."""


def ensure_topics(
    bootstrap: str,
    topics: Iterable[Topic] | None = None,
    *,
    replication: int = 1,
    timeout_s: float = 15.0,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created."""
    wanted = list(topics if topics is not None else TOPICS.values())
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise TopicError(f"Kafka at {bootstrap} not reachable: {exc}") from exc
    new = [
        NewTopic(
            t.name,
            num_partitions=t.partitions,
            replication_factor=replication,
            config=dict(t.config),
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
