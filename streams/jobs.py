"""Scheduled jobs: expired sessions removed daily, old logs removed weekly.

A run is an event on the cleanup topic (`cleanup.expired_sessions`, `cleanup.old_logs`) carrying
its cutoff. The scheduler (the leader of the `jobs` role, or `mohallamart jobs run`) derives the
cutoff from the period the clock is in, and the event id from (job, cutoff): however many workers
or operators start the run of one period, it is one event id and one cutoff. The `jobs` role
applies it in one transaction (`connectors.cleanup.apply_run`): the run is recorded in `job_runs`
(key: job, cutoff) and the rows are removed, once; a second copy or a replay finds the record,
removes what the cutoff covers (nothing: removed rows do not come back) and counts a repeat.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "JOB_EVENTS",
    "due",
    "list_runs",
    "period_start",
    "run_data",
    "run_event_id",
    "run_now",
    "schedule",
]

#: job -> its event type
JOB_EVENTS = {"expired_sessions": "cleanup.expired_sessions", "old_logs": "cleanup.old_logs"}
_NS = uuid.UUID("6d6d6172-742d-4a6f-6273-000000000000")
#: periods are counted from a Monday, 00:00 UTC: a weekly job's period starts on Mondays
_EPOCH = datetime(1970, 1, 5, tzinfo=UTC)


def period_start(now: datetime, every_s: int) -> datetime:
    """Start of the period of `every_s` seconds that `now` is in (counted from a Monday)."""
    n = int((now - _EPOCH).total_seconds()) // every_s
    return _EPOCH + timedelta(seconds=n * every_s)


def due(job: str, now: datetime, every_s: int, keep_days: int) -> tuple[datetime, datetime]:
    """(the current period's start, its cutoff): `keep_days` before the period began (expired
    sessions: those that expired before it, kept 0 days by default; old logs: those older than
    the retention)."""
    start = period_start(now, every_s)
    return start, start - timedelta(days=keep_days)


_UNIX = datetime(1970, 1, 1, tzinfo=UTC)


def run_event_id(job: str, cutoff: datetime) -> str:
    """UUIDv5 of the job and the cutoff in whole milliseconds (as Avro carries it)."""
    return str(uuid.uuid5(_NS, f"{job}:{(cutoff - _UNIX) // timedelta(milliseconds=1)}"))


def run_data(job: str, cutoff: datetime, triggered_by: str) -> dict[str, Any]:
    data: dict[str, Any] = {"job": job, "cutoff": cutoff, "triggered_by": triggered_by}
    if job == "old_logs":
        data["targets"] = ["AUDIT_LOG", "ANALYTICS"]
    return data


def run_now(
    settings: Any,
    job: str,
    *,
    cutoff: datetime | None,
    wait_s: float,
    echo: Callable[[str], None],
) -> int:
    """Produce the run of `job` (default cutoff: the current period's, as the scheduler would)
    and, with `wait_s`, wait until the jobs role has recorded it. Returns an exit status."""
    from confluent_kafka import Producer

    from schemas.catalog import EVENT_TYPES
    from schemas.codec import EventCodec
    from schemas.registry import SchemaRegistry
    from streams.tracing import origin

    every, keep = schedule(settings)[job]
    now = datetime.now(UTC)
    _, due_cutoff = due(job, now, every, keep)
    if cutoff is None:
        cutoff = due_cutoff
    cutoff = cutoff.astimezone(UTC)
    cutoff = cutoff.replace(microsecond=cutoff.microsecond // 1000 * 1000)  # as Avro carries it
    if cutoff > now:
        echo(f"job {job}: the cutoff {cutoff.isoformat()} is in the future: refused")
        return 2
    eid = run_event_id(job, cutoff)
    et = EVENT_TYPES[JOB_EVENTS[job]]
    sid = SchemaRegistry(settings.registry_url).register(et)
    value = EventCodec(et.schema).encode(
        sid,
        {
            "id": eid,
            "type": et.name,
            "occurred_at": now,
            "source": "mohallamart-cli",
            "trace_id": eid,
            "data": run_data(job, cutoff, "OPERATOR"),
        },
    )
    import psycopg

    def recorded() -> tuple[Any, ...] | None:
        with psycopg.connect(settings.postgres_dsn, connect_timeout=10) as conn:
            return conn.execute(
                "SELECT event_id, triggered_by, finished_at, rows_removed, removed, repeats "
                "FROM job_runs WHERE job = %s AND cutoff = %s",
                (job, cutoff),
            ).fetchone()

    known = recorded()  # recorded already: this copy will be a repeat
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            **settings.kafka_security.librdkafka(),
        }
    )
    errors: list[str] = []
    producer.produce(
        et.topic.name,
        key=job.encode(),
        value=value,
        headers=[origin(eid, eid)],  # the first hop of its own trace
        on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
    )
    if producer.flush(30) or errors:
        echo(f"job {job}: the run could not be produced: {errors or 'delivery timed out'}")
        return 1
    echo(f"job {job}: run for cutoff {cutoff.isoformat()} produced (event {eid})")
    if wait_s <= 0:
        return 0
    deadline = time.monotonic() + wait_s
    while True:
        row = recorded()
        if row is not None and (known is None or row[5] > known[5]):
            echo(
                f"job {job}: cutoff {cutoff.isoformat()}: "
                + (
                    f"run recorded at {row[2].isoformat()}, {row[3]} rows removed {row[4]}"
                    if known is None
                    else f"recorded already at {row[2].isoformat()} ({row[1]}, {row[3]} rows "
                    f"removed {row[4]}): nothing more removed"
                )
            )
            return 0
        if time.monotonic() > deadline:
            echo(
                f"job {job}: not applied after {wait_s:.0f} s: is a `jobs` worker running "
                "(`mohallamart worker --role jobs`)?"
            )
            return 1
        time.sleep(0.2)


def schedule(settings: Any) -> dict[str, tuple[int, int]]:
    """job -> (period in seconds, days kept before the period's start)."""
    return {
        "expired_sessions": (
            settings.jobs_expired_sessions_every_s,
            settings.jobs_expired_sessions_keep_days,
        ),
        "old_logs": (settings.jobs_old_logs_every_s, settings.log_retention_days),
    }


def list_runs(settings: Any, limit: int, echo: Callable[[str], None]) -> int:
    import psycopg

    with psycopg.connect(settings.postgres_dsn, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT job, cutoff, triggered_by, finished_at, rows_removed, removed, repeats "
            "FROM job_runs ORDER BY finished_at DESC LIMIT %s",
            (limit,),
        ).fetchall()
    echo(f"{'JOB':<17} {'CUTOFF':<26} {'BY':<9} {'FINISHED':<26} {'ROWS':>7} REPEATS  REMOVED")
    for job, cutoff, by, fin, n, removed, repeats in rows:
        echo(
            f"{job:<17} {cutoff.isoformat():<26} {by:<9} {fin.isoformat(timespec='seconds'):<26} "
            f"{n:>7} {repeats:>7}  {removed}"
        )
    return 0
