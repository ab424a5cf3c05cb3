"""The dead-letter records of every event topic, and sending them back once their cause is fixed
(`mohallamart dlq list | redrive`, the operator dashboard).

A redrive sends the record's original bytes to `<topic>.redrive`, with headers naming the stage
that should run it again (only that role's agents take it) and its original coordinates. Each
dead-letter record is redriven at most once (recorded in `dlq_redrives`); a redriven copy that
fails again becomes a new dead-letter record (`x-redrive-count` 1), listed again, never looped.
A record older than what its entity's row now holds is reported as superseded and not sent.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from connectors.kafka import consumer_config, producer_config
from connectors.postgres import entity_of, version_of
from core.errors import PipelineError
from core.settings import Settings
from core.telemetry import TRACEPARENT
from schemas.catalog import TOPICS
from schemas.codec import RegistryDecoder, UndecodableRecord
from schemas.registry import RegistryError, SchemaRegistry

__all__ = [
    "REDRIVE_COUNT",
    "REDRIVE_STAGE",
    "DeadLetter",
    "DlqError",
    "dead_letter_topic",
    "list_dead_letters",
    "redrive",
    "redrive_topic",
]

#: Set by a redrive on the copy it sends back: the stage that should run it again, and how many
#: times the record has been redriven.
REDRIVE_STAGE = "x-redrive-stage"
REDRIVE_COUNT = "x-redrive-count"
#: the advisory lock a redrive holds (the CLI's and the dashboard's): one at a time, so a
#: record is never sent twice by two redrives that both read it as pending
REDRIVE_LOCK = 0x6D6D_646C_7172  # "mmdlqr"


def dead_letter_topic(topic: str) -> str:
    return f"{topic}.dlq"


def redrive_topic(topic: str) -> str:
    return f"{topic}.redrive"


class DlqError(PipelineError):
    """The dead-letter topics could not be read or a record could not be redriven."""


@dataclass
class DeadLetter:
    """One dead-letter record and what became of it."""

    dlq_topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]
    status: str = "pending"  # pending | redriven | superseded
    detail: str = ""
    event: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def event_id(self) -> str:
        return self.headers.get("x-event-id", "")

    def as_dict(self) -> dict[str, Any]:
        h = self.headers
        return {
            "dlq": f"{self.dlq_topic}/{self.partition}@{self.offset}",
            "event_id": self.event_id,
            "event_type": h.get("x-event-type", ""),
            "original": f"{h.get('x-original-topic')}/{h.get('x-original-partition')}"
            f"@{h.get('x-original-offset')}",
            "stage": h.get("x-stage", ""),
            "error": f"{h.get('x-error-class', '')}: {h.get('x-error-message', '')}",
            "attempts": int(h.get("x-attempts", "0") or 0),
            "first_failure": h.get("x-first-failure-time", ""),
            "redrive_count": int(h.get(REDRIVE_COUNT, "0") or 0),
            "status": self.status,
            "detail": self.detail,
        }


def _read(settings: Settings, topics: Iterable[str]) -> list[DeadLetter]:
    consumer = Consumer(
        consumer_config(
            settings.kafka_bootstrap,
            f"mohallamart-dlq-reader-{uuid.uuid4()}",  # never commits
            {"enable.auto.commit": False, "enable.partition.eof": True},
            security=settings.kafka_security,
        )
    )
    out: list[DeadLetter] = []
    try:
        meta = consumer.list_topics(timeout=10)
        assign: list[TopicPartition] = []
        for t in topics:
            if t not in meta.topics:
                continue
            for p in meta.topics[t].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                if high > low:
                    assign.append(TopicPartition(t, p, low))
        ends = {(tp.topic, tp.partition) for tp in assign}
        if not assign:
            return out
        highs = {
            (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1]
            for tp in assign
        }
        consumer.assign(assign)
        while ends:
            msg = consumer.poll(5.0)
            if msg is None:
                raise DlqError("timed out reading the dead-letter topics")
            err = msg.error()
            topic, partition, offset = str(msg.topic()), int(msg.partition() or 0), msg.offset()
            tp = (topic, partition)
            if err is not None:
                if err.code() == -191:  # _PARTITION_EOF
                    ends.discard(tp)
                    continue
                raise DlqError(f"reading {topic}: {err}")
            offset = int(offset or 0)
            if offset >= highs[tp] - 1:
                ends.discard(tp)
            raw_headers: list[tuple[str, Any]] = list(msg.headers() or [])  # type: ignore[arg-type]
            headers = {
                k: (v.encode() if isinstance(v, str) else v or b"").decode("utf-8", "replace")
                for k, v in raw_headers
            }
            key, value = msg.key(), msg.value()
            out.append(
                DeadLetter(
                    topic,
                    partition,
                    offset,
                    key.encode() if isinstance(key, str) else key,
                    value.encode() if isinstance(value, str) else value,
                    headers,
                )
            )
    except KafkaException as exc:
        raise DlqError(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    finally:
        consumer.close()
    return out


def list_dead_letters(settings: Settings, topic: str | None = None) -> list[DeadLetter]:
    """Every dead-letter record (of one event topic, or all), with its redrive status."""
    names = [dead_letter_topic(t.name) for t in TOPICS.values() if topic in (None, t.name)]
    letters = _read(settings, names)
    if letters:
        with psycopg.connect(settings.postgres_dsn) as conn:
            done = {
                (t, p, o): (outcome, detail or "")
                for t, p, o, outcome, detail in conn.execute(
                    'SELECT dlq_topic, "partition", "offset", outcome, detail FROM dlq_redrives'
                )
            }
        for dl in letters:
            dl.status, dl.detail = done.get(
                (dl.dlq_topic, dl.partition, dl.offset), ("pending", "")
            )
    return letters


def _superseded(conn: psycopg.Connection[Any], event: dict[str, Any]) -> str | None:
    """Why the event is out of date, if the row it targets already holds a newer version."""
    ent = entity_of(event)
    if ent is None:
        return None
    table, key_col, key = ent
    row = conn.execute(
        f"SELECT version_at, version_id FROM {table} WHERE {key_col} = %s",  # noqa: S608
        (key,),
    ).fetchone()
    if row is None:
        return None
    at, eid = version_of(event)
    if (at, eid) <= (row[0], row[1]):
        return (
            f"{table} {key} is at version ({row[0].isoformat()}, {row[1]}), "
            f"newer than this event's ({at.isoformat()}, {eid})"
        )
    return None


def _try_lock(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (REDRIVE_LOCK,)).fetchone()
    return bool(row and row[0])


def redrive(
    settings: Settings,
    *,
    event_ids: set[str] | None,
    topic: str | None = None,
    echo: Callable[[str], None] = lambda _line: None,
    lock_timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Redrive the pending dead-letter records (all, or those of `event_ids`): counts by outcome,
    and under "sent" where each copy went ({event_id, stage, topic, partition, offset}).
    One redrive at a time (an advisory lock): the records' status is read under it, so two
    redrives never both send a record."""
    counts: dict[str, Any] = {"redriven": 0, "superseded": 0, "sent": []}
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        deadline = time.monotonic() + lock_timeout_s
        while not _try_lock(conn):
            if time.monotonic() > deadline:
                raise DlqError(f"another redrive has been running for over {lock_timeout_s:.0f} s")
            time.sleep(0.2)
        try:
            letters = [
                dl
                for dl in list_dead_letters(settings, topic)
                if dl.status == "pending" and (event_ids is None or dl.event_id in event_ids)
            ]
            if letters:
                _redrive(settings, conn, letters, counts, echo)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (REDRIVE_LOCK,))
    return counts


def _redrive(
    settings: Settings,
    conn: psycopg.Connection[Any],
    letters: list[DeadLetter],
    counts: dict[str, Any],
    echo: Callable[[str], None],
) -> None:
    registry = SchemaRegistry(settings.registry_url)
    decoder = RegistryDecoder(registry.schema_by_id)
    producer = Producer(
        producer_config(
            settings.kafka_bootstrap,
            security=settings.kafka_security,
            delivery_timeout_ms=10_000,
            linger_ms=0,
            max_message_bytes=1 << 20,
        )
    )
    errors: list[str] = []
    where: list[tuple[str, int, int]] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))
        else:
            where.append((str(msg.topic()), int(msg.partition()), int(msg.offset())))

    for n, dl in enumerate(letters, start=1):
        h = dl.headers
        stage = h.get("x-stage", "")
        detail = None
        try:
            # the rows are the projections' view of each entity; the stock role applies
            # order events under the same version rule, so the rows judge both stages
            detail = _superseded(conn, decoder.decode(dl.value))
        except (UndecodableRecord, RegistryError):
            pass  # sent back as it is: its stage will dead-letter it again, once
        original = h.get("x-original-topic", "")
        if detail is not None:
            outcome = "superseded"
            echo(f"[dlq] {dl.event_id} superseded: {detail}")
        else:
            outcome = "redriven"
            headers: list[tuple[str, str | bytes | None]] = [
                (REDRIVE_STAGE, stage.encode()),
                (REDRIVE_COUNT, str(int(h.get(REDRIVE_COUNT, "0") or 0) + 1).encode()),
                ("x-source-topic", original.encode()),
                ("x-source-partition", h.get("x-original-partition", "0").encode()),
                ("x-source-offset", h.get("x-original-offset", "0").encode()),
            ]
            if TRACEPARENT in h:  # the copy sent back stays in its event's trace
                headers.append((TRACEPARENT, h[TRACEPARENT].encode()))
            producer.produce(
                redrive_topic(original),
                key=dl.key,
                value=dl.value,
                headers=headers,
                on_delivery=delivered,
            )
            if producer.flush(15) or errors or not where:
                raise DlqError(f"redriving {dl.event_id} failed: {errors or 'timed out'}")
            topic_, partition_, offset_ = where.pop()
            counts["sent"].append(
                {
                    "event_id": dl.event_id,
                    "stage": stage,
                    "topic": topic_,
                    "partition": partition_,
                    "offset": offset_,
                }
            )
            echo(f"[dlq] {dl.event_id} redriven to {redrive_topic(original)} ({stage})")
        conn.execute(
            'INSERT INTO dlq_redrives (dlq_topic, "partition", "offset", event_id, outcome, '
            "detail) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (dl.dlq_topic, dl.partition, dl.offset, dl.event_id, outcome, detail),
        )
        counts[outcome] += 1
        if n % 100 == 0:
            echo(f"[dlq] {n}/{len(letters)} done")
