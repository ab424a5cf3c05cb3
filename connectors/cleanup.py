"""Cleanup runs in PostgreSQL: record a run once per (job, cutoff), remove the rows it covers, and
keep removed rows from coming back.

Nothing comes back: the projections hold the cleanup lock shared while they write a batch and do
not write a session that expired, or an audit row that occurred, before a recorded cutoff. A
cleanup takes the lock exclusively, so no batch that read the older cutoff is still writing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from prometheus_client import Gauge

__all__ = [
    "CLEANUP_LOCK",
    "TARGETS",
    "CutoffRefused",
    "Cutoffs",
    "apply_run",
    "check_run",
    "is_removed_session",
    "job_summary",
    "load_cutoffs",
    "publish_job_metrics",
]

#: the advisory lock id of cleanups against projection batches ("mmcl")
CLEANUP_LOCK = 0x6D6D636C

#: job -> target -> (table, the timestamp column compared with the cutoff). ANALYTICS has no
#: store of its own yet (analytics windows are a later issue): it removes 0 rows.
TARGETS: dict[str, dict[str, tuple[str, str]]] = {
    "expired_sessions": {"SESSIONS": ("sessions", "expires_at")},
    "old_logs": {"AUDIT_LOG": ("audit_log", "occurred_at"), "ANALYTICS": ("", "")},
}


@dataclass(frozen=True)
class Cutoffs:
    """The latest recorded cutoff per kind of row (None: never cleaned)."""

    sessions: datetime | None
    audit_log: datetime | None


async def load_cutoffs(conn: psycopg.AsyncConnection[Any]) -> Cutoffs:
    """Take the cleanup lock shared (until the transaction ends), then read the cutoffs: two
    statements, so the read sees a cleanup that committed while the lock was waited for."""
    await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (CLEANUP_LOCK,))
    cur = await conn.execute(
        "SELECT (SELECT max(cutoff) FROM public.job_runs WHERE job = 'expired_sessions') "
        "AS sessions, (SELECT max(cutoff) FROM public.job_runs WHERE job = 'old_logs' "
        "AND 'AUDIT_LOG' = ANY(targets)) AS audit_log"
    )
    row: Any = await cur.fetchone()
    if isinstance(row, dict):
        return Cutoffs(row["sessions"], row["audit_log"])
    return Cutoffs(row[0], row[1])


class CutoffRefused(ValueError):
    """A cleanup whose cutoff is after its own time (or far in the future): it would remove rows
    that do not exist yet and keep every new one out. Dead-lettered, never applied."""


#: how far a cleanup event's time may lie ahead of the clock
_FUTURE_SKEW = timedelta(minutes=5)


def check_run(event: dict[str, Any], now: datetime) -> None:
    """Raise `CutoffRefused` for a run that must not be applied."""
    cutoff: datetime = event["data"]["cutoff"]
    at: datetime = event["occurred_at"]
    if cutoff > at:
        raise CutoffRefused(
            f"CUTOFF_AFTER_EVENT: cutoff {cutoff.isoformat()} is after the run's own time "
            f"{at.isoformat()}"
        )
    if at > now + _FUTURE_SKEW:
        raise CutoffRefused(f"EVENT_IN_FUTURE: the run is dated {at.isoformat()}")


async def apply_run(conn: psycopg.AsyncConnection[Any], event: dict[str, Any]) -> dict[str, Any]:
    """Apply one cleanup event in the caller's transaction; return what was recorded:
    {"job", "cutoff", "first": bool, "removed": {table: rows}}. A copy of a recorded run (same
    job and cutoff) removes what it covers (nothing, unless a target is new to it) and is
    counted as a repeat; its removals and targets are added to the record."""
    d = event["data"]
    job = d["job"]
    known = TARGETS[job]
    cutoff: datetime = d["cutoff"]
    targets = [t for t in (d.get("targets") or list(known)) if t in known]
    await conn.execute("SELECT pg_advisory_xact_lock(%s)", (CLEANUP_LOCK,))
    removed: dict[str, int] = {}
    for target in targets:
        table, column = known[target]
        if not table:
            removed[target.lower()] = 0
            continue
        cur = await conn.execute(
            f"DELETE FROM {table} WHERE {column} < %s",  # noqa: S608 - names from TARGETS
            (cutoff,),
        )
        removed[table] = max(cur.rowcount, 0)
    cur = await conn.execute(
        "SELECT targets, removed FROM job_runs WHERE job = %s AND cutoff = %s FOR UPDATE",
        (job, cutoff),
    )
    row: Any = await cur.fetchone()
    if row is None:
        await conn.execute(
            "INSERT INTO job_runs (job, cutoff, event_id, triggered_by, targets, occurred_at, "
            "rows_removed, removed) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)",
            (
                job,
                cutoff,
                str(event["id"]),
                d.get("triggered_by") or "SCHEDULE",
                targets,
                event["occurred_at"],
                sum(removed.values()),
                json.dumps(removed),
            ),
        )
        return {"job": job, "cutoff": cutoff, "first": True, "removed": removed}
    old_targets, old_removed = (row["targets"], row["removed"]) if isinstance(row, dict) else row
    total = {k: old_removed.get(k, 0) + removed.get(k, 0) for k in {*old_removed, *removed}}
    await conn.execute(
        "UPDATE job_runs SET repeats = repeats + 1, targets = %s, removed = %s::jsonb, "
        "rows_removed = %s WHERE job = %s AND cutoff = %s",
        (
            sorted({*old_targets, *targets}),
            json.dumps(total),
            sum(total.values()),
            job,
            cutoff,
        ),
    )
    return {"job": job, "cutoff": cutoff, "first": False, "removed": removed}


def is_removed_session(row: dict[str, Any], cutoffs: Cutoffs) -> bool:
    at = row.get("expires_at")
    return cutoffs.sessions is not None and at is not None and _aware(at) < cutoffs.sessions


def _aware(at: datetime | str) -> datetime:
    t = datetime.fromisoformat(at) if isinstance(at, str) else at
    return t if t.tzinfo else t.replace(tzinfo=UTC)


RUNS = Gauge("mohallamart_job_runs", "Runs recorded in job_runs (one per job and cutoff)", ["job"])
LAST_RUN = Gauge(
    "mohallamart_job_last_run_timestamp_seconds", "When the job's latest run finished", ["job"]
)
LAST_CUTOFF = Gauge(
    "mohallamart_job_last_cutoff_timestamp_seconds", "The cutoff of the job's latest run", ["job"]
)
LAST_ROWS = Gauge("mohallamart_job_last_rows_removed", "Rows the latest run removed", ["job"])
REPEATS = Gauge(
    "mohallamart_job_repeats", "Copies of recorded runs applied again (removing nothing)", ["job"]
)


async def job_summary(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    """Per job: runs, repeats, and the latest run (by cutoff): when, cutoff, rows removed."""
    cur = await conn.execute(
        "SELECT job, count(*) AS runs, sum(repeats) AS repeats, "
        "(array_agg(finished_at ORDER BY cutoff DESC))[1] AS finished_at, max(cutoff) AS cutoff, "
        "(array_agg(rows_removed ORDER BY cutoff DESC))[1] AS rows_removed "
        "FROM job_runs GROUP BY job ORDER BY job"
    )
    cols = [c.name for c in cur.description or []]
    return [
        dict(zip(cols, r, strict=True)) if not isinstance(r, dict) else r
        for r in await cur.fetchall()
    ]


def publish_job_metrics(summary: list[dict[str, Any]]) -> None:
    for s in summary:
        job = s["job"]
        RUNS.labels(job).set(s["runs"])
        REPEATS.labels(job).set(s["repeats"] or 0)
        LAST_RUN.labels(job).set(s["finished_at"].timestamp())
        LAST_CUTOFF.labels(job).set(s["cutoff"].timestamp())
        LAST_ROWS.labels(job).set(s["rows_removed"])
