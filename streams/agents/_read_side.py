"""What the roles that read PostgreSQL share (cache, search, workflows, notifications, jobs): a
connection that reports outages as DependencyDown, the wait for the projections to deal with a
batch's events, and the agent wiring (one agent per topic, its redrive topic included)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import psycopg

from connectors.base import DependencyDown, Sink
from connectors.db import PgReader
from connectors.groups import GroupOffsets
from connectors.views import pending_events
from core.settings import Settings
from schemas.catalog import TOPICS
from streams.reliability import Later, Record, Rejection
from streams.sinks import install_loop, install_sink

if TYPE_CHECKING:
    from streams.runtime import Runtime

__all__ = [
    "Pending",
    "PgReader",
    "ProjectionsProgress",
    "install_agent",
    "install_agents",
    "install_read_sinks",
    "wait_projected",
]


class ProjectionsProgress:
    """Where the projections role's consumer group has committed: every record before that
    offset has been applied, skipped as superseded, or dead-lettered by the projections."""

    def __init__(self, settings: Settings) -> None:
        self.group = f"{settings.worker_app_prefix}-projections"
        self.offsets = GroupOffsets(settings.kafka_bootstrap, security=settings.kafka_security)

    async def committed(self, tps: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return await self.offsets.committed(self.group, tps)


#: the records of a batch the projections have still to deal with, as PostgreSQL shows it
Pending = Callable[[psycopg.AsyncConnection[Any], list[Record]], Awaitable[list[Record]]]


async def _not_applied(conn: psycopg.AsyncConnection[Any], records: list[Record]) -> list[Record]:
    """The records whose entity row has not reached the event's version and whose event is not
    recorded as refused (`connectors.views.pending_events`)."""
    pending = {str(e["id"]) for e in await pending_events(conn, [r.event for r in records])}
    return [r for r in records if str(r.event["id"]) in pending]


async def wait_projected(
    conn: psycopg.AsyncConnection[Any],
    records: list[Record],
    progress: ProjectionsProgress,
    *,
    patience_s: float = 10.0,
    pending: Pending = _not_applied,
    deferred: list[Record] | None = None,
    defer_after_s: float = 1.0,
) -> list[Record]:
    """Return once the projections have dealt with every record of the batch: `pending` no longer
    names it (by default: its entity row has reached the event's version, or the event is
    recorded as refused; fast, in PostgreSQL), or the projections' group has committed past the
    record (anything else: an event dead-lettered before refusals were recorded, one skipped as
    superseded). Returns the records passed that way, still pending in PostgreSQL's eyes. Raises
    DependencyDown when the projections are still behind after `patience_s` (the guard then
    backs off, as for an outage; a burst the projections are working through is waited for
    here, polling, not backed off). Given a `deferred` list, a record still pending after
    `defer_after_s` at which the projections' group holds its commit (their lowest unsettled
    record of the partition: parked for a retry) goes there instead, and the wait goes on for
    the rest (the projections apply other keys meanwhile)."""
    start = time.monotonic()
    next_commit_check = start + 0.05
    delay = 0.01
    passed: list[Record] = []
    waiting = [r for r in records if r.event.get("id")]
    if deferred is not None and defer_after_s <= 0:
        next_commit_check = start  # a parked record offered again: ask at once
    while waiting:
        waiting = await pending(conn, waiting)
        if not waiting:
            break
        now = time.monotonic()
        if now >= next_commit_check:
            next_commit_check = now + 0.25
            tps = {(r.topic, r.partition) for r in waiting if not r.topic.endswith(".redrive")}
            if tps:
                done = await progress.committed(tps)
                behind: list[Record] = []
                for r in waiting:
                    at = done.get((r.topic, r.partition), -1)
                    if at > r.offset:
                        passed.append(r)
                    elif deferred is not None and at == r.offset and now - start >= defer_after_s:
                        # the projections hold their commit at this very record (their
                        # lowest unsettled one) while it stays unapplied: parked for a retry
                        deferred.append(r)
                    else:
                        behind.append(r)
                waiting = behind
                if not waiting:
                    break
        if now - start >= patience_s:
            first = waiting[0].event
            raise DependencyDown(
                f"the projections have not applied {len(waiting)} event(s) yet "
                f"(e.g. {first['type']} {first['id']})"
            )
        await asyncio.sleep(delay)
        delay = min(0.1, delay * 2)
    return passed


Write = Callable[[list[Record], PgReader], Awaitable[list[Rejection]]]


def install_agents(
    rt: Runtime,
    prefix: str,
    categories: tuple[str, ...],
    write: Write,
    *,
    owns_decode: bool = False,
) -> None:
    """One agent per topic of `categories`, named `<prefix>_<category>s`, each with its own
    connection, applying `write` to its batches through the role's guard (the projections read,
    and dead-letter, undecodable bytes of the entity topics; a role that alone reads a topic owns
    its undecodable bytes)."""
    for category in categories:
        install_agent(rt, f"{prefix}_{category}s", TOPICS[category].name, write, owns_decode)


def install_agent(
    rt: Runtime,
    stage: str,
    topic: str,
    write: Write,
    owns_decode: bool,
    *,
    batch_size: int | None = None,
) -> None:
    """One agent reading `topic` and its redrive topic, with its own connection and guard, in
    batches of at most `batch_size` (WORKER_BATCH_SIZE by default)."""
    guard = rt.guard(stage, owns_decode=owns_decode)
    db = PgReader(rt.settings.postgres_dsn)

    async def handler(records: list[Record]) -> list[Rejection]:
        return await write(records, db)

    install_loop(rt, stage, topic, guard, handler, batch_size=batch_size or 0)


def install_read_sinks(
    rt: Runtime, prefix: str, categories: tuple[str, ...], make_sink: Callable[[], Sink]
) -> None:
    """One agent per topic of `categories`, named `<prefix>_<category>s`, driving a sink of its
    own (`make_sink()`) once the projections have applied the batch (`wait_projected`). A
    record whose event the projections have parked, and the later records of its key, are
    answered `Later`: parked here too, for their keys only, until the projections settle it."""
    progress = ProjectionsProgress(rt.settings)
    for category in categories:
        db = PgReader(rt.settings.postgres_dsn)

        async def projected(
            records: list[Record], db: PgReader = db
        ) -> tuple[list[Record], list[Later]]:
            deferred: list[Record] = []
            # a parked record offered again is set aside at once if the projections still hold it
            defer_after_s = 0.0 if all(r.parked for r in records) else 1.0
            async with db.connection() as conn:
                await wait_projected(
                    conn, records, progress, deferred=deferred, defer_after_s=defer_after_s
                )
            if not deferred:
                return records, []
            keys = set()
            ready: list[Record] = []
            later: list[Later] = []
            waiting = {id(r) for r in deferred}
            for r in records:  # a key's later records wait behind it
                if id(r) in waiting or (r.topic, r.key) in keys:
                    keys.add((r.topic, r.key))
                    later.append(Later(r, "its event is parked by the projections"))
                else:
                    ready.append(r)
            # (in later batches the guard queues the key's records behind the parked one)
            return ready, later

        install_sink(
            rt,
            f"{prefix}_{category}s",
            TOPICS[category].name,
            make_sink(),
            before=projected,
            owns_decode=False,
        )
