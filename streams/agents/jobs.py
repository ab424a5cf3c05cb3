"""jobs: the scheduler of the cleanup jobs (on the role's leader only) and the agent that applies
the cleanup events (see `streams.jobs` and `connectors.cleanup`).

Every `jobs_tick_s` the leader works out each job's current period and cutoff; a run not recorded
yet is produced as a cleanup event (id: UUIDv5 of job and cutoff, occurred at the period's start,
keyed by the job). A run missed while no worker was up is made at the next tick (a later cutoff
covers every earlier one).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from connectors.cleanup import (
    CutoffRefused,
    apply_run,
    check_run,
    job_summary,
    publish_job_metrics,
)
from connectors.drift import CHECKS, drift_event, publish_metrics
from schemas.catalog import TOPICS
from streams import tracing
from streams.agents._read_side import PgReader, install_agent
from streams.jobs import JOB_EVENTS, due, run_data, run_event_id, schedule
from streams.reliability import Record, Rejection
from streams.sync_check import report_lines, run_check

if TYPE_CHECKING:
    from streams.runtime import Runtime

__all__ = ["install"]

log = logging.getLogger(__name__)


def install(rt: Runtime) -> None:
    app = rt.app
    settings = rt.settings
    emitted: set[str] = set()
    db = PgReader(settings.postgres_dsn)

    async def write(records: list[Record], reader: PgReader) -> list[Rejection]:
        refused: list[Rejection] = []
        async with reader.connection() as conn:
            for r in records:
                ev = r.event
                try:
                    check_run(ev, datetime.now(UTC))
                except CutoffRefused as exc:
                    refused.append(Rejection(r, str(exc), "CutoffRefused"))
                    continue
                async with conn.transaction():
                    run = await apply_run(conn, ev)
                removed = ", ".join(f"{t} {n}" for t, n in run["removed"].items())
                if run["first"]:
                    log.info(
                        "job %s: cutoff %s, removed %s (event %s, %s)",
                        run["job"],
                        run["cutoff"].isoformat(),
                        removed,
                        ev["id"],
                        ev["data"].get("triggered_by"),
                    )
                else:
                    log.info(
                        "job %s: cutoff %s recorded already (event %s): a repeat, removed %s",
                        run["job"],
                        run["cutoff"].isoformat(),
                        ev["id"],
                        removed,
                    )
            publish_job_metrics(await job_summary(conn))
        return refused

    install_agent(rt, "cleanup", TOPICS["cleanup"].name, write, owns_decode=True)

    @app.timer(settings.jobs_tick_s, on_leader=True)  # type: ignore[untyped-decorator]
    async def scheduler() -> None:
        if not settings.jobs_schedule_enabled:
            return
        try:
            await _tick()
        except Exception as exc:  # noqa: BLE001 - the next tick tries again
            log.warning(
                "jobs scheduler: %s: %s; trying again at the next tick", type(exc).__name__, exc
            )

    async def _tick() -> None:
        now = datetime.now(UTC)
        for job, (every_s, keep_days) in schedule(settings).items():
            start, cutoff = due(job, now, every_s, keep_days)
            eid = run_event_id(job, cutoff)
            if eid in emitted:
                continue
            async with db.connection() as conn:
                cur = await conn.execute(
                    "SELECT 1 FROM job_runs WHERE job = %s AND cutoff = %s", (job, cutoff)
                )
                if await cur.fetchone() is not None:
                    emitted.add(eid)
                    continue
            topic, value = await rt.encode(
                JOB_EVENTS[job], eid, start, eid, run_data(job, cutoff, "SCHEDULE")
            )
            fut = await app.producer.send(
                topic,
                job.encode(),
                value,
                partition=None,
                timestamp=None,
                headers=[tracing.origin(eid, eid, "jobs schedule")],
            )
            await fut
            emitted.add(eid)
            log.info("job %s: run for cutoff %s scheduled (event %s)", job, cutoff.isoformat(), eid)

    if settings.sync_check_every_s > 0:
        checking = asyncio.Lock()

        @app.timer(settings.sync_check_every_s, on_leader=True)  # type: ignore[untyped-decorator]
        async def check_data_sync() -> None:
            """The data-sync monitor: PostgreSQL against Redis and Typesense (leader only)."""
            if checking.locked():
                return
            async with checking:
                await _check_data_sync()

    async def _check_data_sync() -> None:
        # nothing may escape a faust timer: it would stop the whole worker
        try:
            check_id, reports = await run_check(settings)
            outcome = publish_metrics(reports)
            for line in report_lines(reports):
                (log.info if outcome == "clean" else log.warning)("data-sync check: %s", line)
            for r in reports:
                for f in r.drift:
                    ev = drift_event(f, trigger="SCHEDULE", check_id=check_id)
                    topic, value = await rt.encode(
                        ev["type"], ev["id"], ev["occurred_at"], ev["trace_id"], ev["data"]
                    )
                    fut = await app.producer.send(
                        topic,
                        f.entity_id.encode(),
                        value,
                        partition=None,
                        timestamp=ev["occurred_at"].timestamp(),
                        headers=[tracing.origin(ev["trace_id"], ev["id"], "jobs data-sync check")],
                    )
                    await fut
        except Exception as exc:  # noqa: BLE001 - the next period tries again
            CHECKS.labels("failed").inc()
            log.warning(
                "data-sync check: %s: %s; trying again in %.0f s",
                type(exc).__name__,
                exc,
                settings.sync_check_every_s,
            )
