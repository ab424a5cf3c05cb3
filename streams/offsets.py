"""Move a role's consumer group to the beginning of its topics, or to a point in time, so the role
runs again over what it has already seen (a replay). Only with the role's workers stopped: Kafka
refuses to move the offsets of a group that has members, and so does this command, by name.

Every role is idempotent (versions, event ids, outbox, markers), so a replay repeats no side
effect; it rebuilds what the role writes when its store was emptied first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.kafka import admin_config, consumer_config
from core.errors import PipelineError
from core.settings import Settings

__all__ = ["OffsetMove", "replay_windows", "reset_offsets"]


@dataclass(frozen=True)
class OffsetMove:
    topic: str
    partition: int
    current: int
    target: int


def _group(settings: Settings, role: str) -> str:
    from streams.app import ROLES

    if role not in ROLES:
        raise PipelineError(f"unknown role {role!r}; roles are: {', '.join(ROLES)}")
    return f"{settings.worker_app_prefix}-{role}"


def reset_offsets(
    settings: Settings,
    role: str,
    *,
    to: datetime | None,
    execute: bool,
    echo: Callable[[str], None] = lambda _line: None,
) -> list[OffsetMove]:
    """Move `role`'s group to the earliest offsets (`to` None) or to the first offset at or after
    `to`, on every partition it has committed (its changelog topics excepted). Without `execute`
    only the plan is returned."""
    group = _group(settings, role)
    admin = AdminClient(
        admin_config(settings.kafka_bootstrap, security=settings.kafka_security, log_level=3)
    )
    described = admin.describe_consumer_groups([group])[group].result(timeout=15)
    if described.members:
        raise PipelineError(
            f"group {group} has {len(described.members)} active member(s): stop the {role} "
            "workers first (their offsets would be overwritten by their next commit)"
        )
    request = ConsumerGroupTopicPartitions(group)
    committed = list(admin.list_consumer_group_offsets([request]).values())[0].result(timeout=15)
    tps = [
        tp
        for tp in committed.topic_partitions
        if tp.offset >= 0 and not tp.topic.endswith("-changelog")
    ]
    if not tps:
        raise PipelineError(f"group {group} has no committed offsets: nothing to move")
    probe = Consumer(
        consumer_config(
            settings.kafka_bootstrap, f"{group}-offset-probe", security=settings.kafka_security
        )
    )
    moves: list[OffsetMove] = []
    try:
        if to is None:
            targets = [probe.get_watermark_offsets(tp, timeout=15)[0] for tp in tps]
        else:
            ms = int(to.timestamp() * 1000)
            found = probe.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, ms) for tp in tps], timeout=15
            )
            targets = []
            for tp, f in zip(tps, found, strict=True):
                # no record at or after the time: the end of the partition
                targets.append(
                    f.offset if f.offset >= 0 else probe.get_watermark_offsets(tp, timeout=15)[1]
                )
    finally:
        probe.close()
    for tp, target in zip(tps, targets, strict=True):
        moves.append(OffsetMove(tp.topic, tp.partition, tp.offset, target))
    for m in sorted(moves, key=lambda m: (m.topic, m.partition)):
        echo(f"{group}  {m.topic}/{m.partition}: {m.current} -> {m.target}")
    if execute:
        result = admin.alter_consumer_group_offsets(
            [
                ConsumerGroupTopicPartitions(
                    group, [TopicPartition(m.topic, m.partition, m.target) for m in moves]
                )
            ]
        )
        list(result.values())[0].result(timeout=15)
        echo(f"moved {len(moves)} partition(s) of {group}")
    else:
        echo("dry run: add --execute to move them")
    return moves


def replay_windows(
    settings: Settings, *, execute: bool, echo: Callable[[str], None] = lambda _line: None
) -> list[OffsetMove]:
    """Replay the analytics windows from the role's by-key topic into empty stores: only the
    window stage's offsets move (to the start of the by-key topic, which keeps every
    contribution, mark and tick the router wrote: the replay stamps, closes and judges late
    exactly as the live run did). With the analytics workers stopped. The window stage moves to
    a new epoch (a new table: a new changelog topic and new local stores on every host, so no
    worker anywhere reads the state from before) and the analytics rows in PostgreSQL are
    emptied; the router's state (clocks, orders) stays. The final results are published again
    with the same ids (recognisable duplicates). The previous epoch's changelog topic is
    deleted."""
    from connectors.analytics import next_stage_epoch, stage_epoch, stage_table
    from streams.agents.analytics import by_key_topic

    group = _group(settings, "analytics")
    admin = AdminClient(
        admin_config(settings.kafka_bootstrap, security=settings.kafka_security, log_level=3)
    )
    described = admin.describe_consumer_groups([group])[group].result(timeout=15)
    if described.members:
        raise PipelineError(
            f"group {group} has {len(described.members)} active member(s): stop the analytics "
            "workers first"
        )
    topic = by_key_topic(settings.topic_namespace)
    epoch = stage_epoch(settings.postgres_dsn, group)
    old_changelog = f"{group}-{stage_table(epoch)}-changelog"
    probe = Consumer(
        consumer_config(
            settings.kafka_bootstrap, f"{group}-offset-probe", security=settings.kafka_security
        )
    )
    moves: list[OffsetMove] = []
    try:
        request = ConsumerGroupTopicPartitions(group)
        committed = list(admin.list_consumer_group_offsets([request]).values())[0]
        current = {
            tp.partition: tp.offset
            for tp in committed.result(timeout=15).topic_partitions
            if tp.topic == topic
        }
        for p in sorted(probe.list_topics(topic, timeout=15).topics[topic].partitions):
            low, _ = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=15)
            moves.append(OffsetMove(topic, p, current.get(p, -1), low))
    finally:
        probe.close()
    for m in moves:
        echo(f"{group}  {m.topic}/{m.partition}: {m.current} -> {m.target}")
    echo(
        f"window stage: epoch {epoch} -> {epoch + 1} (table {stage_table(epoch + 1)}, empty); "
        f"delete {old_changelog}"
    )
    echo(
        "empty analytics_sales, analytics_panes, analytics_sessions, analytics_late, "
        "analytics_watermarks, analytics_positions"
    )
    if not execute:
        echo("dry run: add --execute to replay")
        return moves
    result = admin.alter_consumer_group_offsets(
        [
            ConsumerGroupTopicPartitions(
                group, [TopicPartition(m.topic, m.partition, m.target) for m in moves]
            )
        ]
    )
    list(result.values())[0].result(timeout=15)
    new = next_stage_epoch(settings.postgres_dsn, group)
    if old_changelog in admin.list_topics(timeout=15).topics:
        list(admin.delete_topics([old_changelog], operation_timeout=30).values())[0].result(60)
    echo(
        f"moved {len(moves)} partition(s) of {group}; window stage epoch {new}: "
        "start the analytics role to replay"
    )
    return moves
