"""`mohallamart rebuild postgres`: the projection tables rebuilt from the topics, beside the live
ones, then swapped in without losing a write.

1. A plain consumer (librdkafka, a group of its own that commits nothing) reads the projections'
   topics and their redrive topics (the records redriven to the projections) from the
   checkpoint, or from the beginning, and applies them in chunks with the projections' own code
   (`PostgresProjections(schema=...)`: the same fold, lifecycle rules and upserts) into the
   tables of a shadow schema. Each chunk and its positions commit together, so Ctrl-C or
   `kill -9` loses nothing: the same command continues from the checkpoint. Nothing is sent: no
   dead letter (an event the projections refuse is recorded as refused), no derived event.
2. It chases the live projections' own positions (`projection_positions`, written in each live
   batch's transaction), never going past them, until it is within `CUTOVER_GAP` records.
3. The cut-over: the barrier lock taken exclusively (every live batch holds it shared until it
   commits, so the live projections pause between two batches), their positions L read, the
   shadow brought exactly to L, the cleanup runs applied to it, parity checked (every row of
   every projection table, by checksum), and the tables swapped, all in one transaction. The
   live projections' next batch then writes the new tables. Without parity the swap is refused
   unless `--force`. The old tables stay in `rebuild_previous` until `rebuild drop-old`;
   `rebuild rollback` brings them up to date the same way and swaps them back.
4. `--until T`: a point-in-time copy in `rebuild_asof_<T>`: exactly the records before
   `offsets_for_times(T)` of each partition; never swapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg

from connectors.postgres import REBUILD_LOCK, PostgresProjections
from connectors.rebuild import (
    PREVIOUS,
    SHADOW,
    create_shadow,
    drop_schema,
    hold,
    meta,
    parity,
    positions,
    prune,
    shape_differs,
    swap,
    swap_back,
)
from core.settings import Settings

__all__ = ["RebuildFailed", "drop", "rebuild_postgres", "rebuild_redis", "rollback_postgres"]

Say = Callable[[str], None]
TP = tuple[str, int]
T = TypeVar("T")

#: how close (records) the shadow must be to the live projections before the cut-over pauses them
CUTOVER_GAP = 1000


class RebuildFailed(Exception):
    """The rebuild stopped; the shadow and its checkpoint stay for the same command to resume."""


@dataclass
class _Progress:
    say: Say
    start: dict[TP, int]
    stops: dict[TP, int] = field(default_factory=dict)
    events: int = 0
    started: float = field(default_factory=time.monotonic)
    last: float = 0.0
    last_events: int = 0
    tty: bool = field(default_factory=lambda: sys.stdout.isatty())
    #: what `events` counts
    unit: str = "events"

    def line(self, pos: dict[TP, int], *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.5 if self.tty else 2.0):
            return
        rate = (self.events - self.last_events) / max(now - self.last, 1e-6) if self.last else 0
        self.last, self.last_events = now, self.events
        total = sum(max(0, self.stops.get(tp, 0) - self.start.get(tp, 0)) for tp in self.stops)
        done = sum(
            max(0, min(pos.get(tp, 0), self.stops[tp]) - self.start.get(tp, 0)) for tp in self.stops
        )
        overall = self.events / max(now - self.started, 1e-6)
        eta = (total - done) / overall if overall > 0 and total > done else 0.0
        width = 30
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "." * (width - filled)
        text = (
            f"[{bar}] {done:,}/{total:,} records, {self.events:,} {self.unit} applied, "
            f"{rate if not final else overall:,.0f} {self.unit}/s, ETA {eta:,.0f} s"
        )
        left = sorted(
            ((self.stops[tp] - pos.get(tp, 0), tp) for tp in self.stops),
            reverse=True,
        )
        behind = {tp: pos.get(tp, 0) for n, tp in left[:3] if n > 0}
        if behind and not self.tty:
            text += f"; furthest behind: {_where(behind)}"
        if self.tty and not final:
            sys.stdout.write("\r" + text[:160])
            sys.stdout.flush()
        else:
            if self.tty:
                sys.stdout.write("\r")
            self.say(text)


def _topics(settings: Settings) -> list[str]:
    from schemas.catalog import TOPICS
    from streams.agents.projections import CATEGORIES
    from streams.reliability import redrive_topic

    names = [TOPICS[c].name for c in CATEGORIES]
    return names + [redrive_topic(t) for t in names]


class _Source:
    """The plain consumer: assigned partitions, each read from a position up to a stop."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Consumer

        from connectors.kafka import consumer_config
        from schemas.codec import RegistryDecoder
        from schemas.registry import SchemaRegistry

        self.consumer = Consumer(
            consumer_config(
                settings.kafka_bootstrap,
                f"{settings.worker_app_prefix}-rebuild-{uuid.uuid4()}",
                {
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "fetch.max.bytes": 52_428_800,
                    "log_level": 3,
                },
                security=settings.kafka_security,
            )
        )
        self.decoder = RegistryDecoder(SchemaRegistry(settings.registry_url).schema_by_id)
        self.partitions: dict[TP, tuple[int, int]] = {}  # tp -> (low, high) watermarks
        self.paused: set[TP] = set()
        #: redrive partitions waiting at a record for its original: -> (original's tp, offset)
        self.held: dict[TP, tuple[TP, int]] = {}
        #: the live projections' group commits of partitions they have no position of
        self.committed: dict[TP, int] = {}
        self.undecodable = 0
        # the consumer's blocking calls, one at a time, off the event loop; `close` waits for
        # the one running (a cancelled await, Ctrl-C, does not stop its thread)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="rebuild-consumer")

    def discover(self, topics: list[str]) -> None:
        from confluent_kafka import TopicPartition

        meta_ = self.consumer.list_topics(timeout=15)
        for t in topics:
            if t not in meta_.topics or meta_.topics[t].error is not None:
                continue  # a redrive topic nobody has written yet
            for p in meta_.topics[t].partitions:
                low, high = self.consumer.get_watermark_offsets(TopicPartition(t, p), timeout=15)
                self.partitions[(t, p)] = (low, high)

    def assign(self, at: dict[TP, int]) -> None:
        from confluent_kafka import TopicPartition

        self.consumer.assign([TopicPartition(t, p, at[(t, p)]) for t, p in self.partitions])

    def until(self, when: datetime) -> dict[TP, int]:
        """Per partition, the first offset at or after `when` (its end if none)."""
        from confluent_kafka import TopicPartition

        ms = int(when.timestamp() * 1000)
        found = self.consumer.offsets_for_times(
            [TopicPartition(t, p, ms) for t, p in self.partitions], timeout=15
        )
        out = {}
        for tp in found:
            key = (tp.topic, tp.partition)
            out[key] = self.partitions[key][1] if tp.offset < 0 else tp.offset
        return out

    def park(self, tp: TP, at: int) -> None:
        """Stop reading `tp`, its next record to be read again from `at`."""
        from confluent_kafka import TopicPartition

        if tp not in self.paused:
            part = TopicPartition(tp[0], tp[1], at)
            self.consumer.pause([part])
            self.consumer.seek(part)
            self.paused.add(tp)

    def unpark(self, tp: TP) -> None:
        from confluent_kafka import TopicPartition

        if tp in self.paused:
            self.consumer.resume([TopicPartition(tp[0], tp[1])])
            self.paused.discard(tp)

    async def blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` in the consumer's thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, lambda: fn(*args, **kwargs)
        )

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.consumer.close()


#: how long a rebuild waits without reading a record it still needs before it gives up
STALL_S = 120.0


def _take_chunk(
    source: _Source, pos: dict[TP, int], stops: dict[TP, int], *, chunk: int
) -> tuple[list[dict[str, Any]], dict[TP, int]]:
    """Read and decode the next chunk (blocking: run in a thread): its events, and the
    positions it moves. `pos` moves along; redrive partitions wait for their originals."""
    from schemas.codec import UndecodableRecord
    from schemas.registry import RegistryUnavailable, UnknownSchema
    from streams.reliability import REDRIVE_STAGE

    held = source.held
    # ask for no more than is left: librdkafka returns once it has that many, instead of
    # waiting out the timeout for a full chunk (inside the cut-over's pause, that matters)
    left = sum(max(0, stops.get(tp, 0) - pos[tp]) for tp in source.partitions)
    msgs = source.consumer.consume(max(1, min(chunk, left)), 0.5)
    events: list[dict[str, Any]] = []
    moved: dict[TP, int] = {}
    for m in msgs:
        if m.error() is not None:
            continue
        topic, partition, offset = m.topic(), m.partition(), m.offset()
        if topic is None or partition is None or offset is None:
            continue
        tp = (topic, partition)
        if offset < pos[tp] or tp in held:
            continue  # read again after a seek, or waiting for its original
        if offset >= stops.get(tp, 0):
            source.park(tp, offset)
            continue
        if topic.endswith(".redrive"):
            raw: list[tuple[str, Any]] = list(m.headers() or [])  # type: ignore[arg-type]
            h = {k: (v.decode() if isinstance(v, bytes) else str(v or "")) for k, v in raw}
            if h.get(REDRIVE_STAGE, "").split("/", 1)[0] != "projections":
                pos[tp] = moved[tp] = offset + 1
                continue  # redriven to another role
            src = (h.get("x-source-topic", ""), int(h.get("x-source-partition") or 0))
            src_offset = int(h.get("x-source-offset") or -1)
            if src in pos and pos[src] <= src_offset and pos[src] < stops.get(src, 0):
                held[tp] = (src, src_offset)
                source.park(tp, offset)
                continue
        pos[tp] = moved[tp] = offset + 1
        try:
            events.append(source.decoder.decode(m.value()))
        except (UndecodableRecord, UnknownSchema):
            source.undecodable += 1  # the live role dead-letters these bytes
        except RegistryUnavailable as exc:
            # nothing of this chunk is written: the checkpoint stays before it
            raise RebuildFailed(f"the schema registry is not answering: {exc}") from exc
    for tp, (src, src_offset) in list(held.items()):
        if pos[src] > src_offset or pos[src] >= stops.get(src, 0):
            del held[tp]  # its original is applied (or is not part of this rebuild)
            if pos[tp] < stops.get(tp, 0):
                source.unpark(tp)
    for tp in source.partitions:
        if pos[tp] >= stops.get(tp, 0):
            source.park(tp, pos[tp])
    return events, moved


async def _read_to(
    source: _Source,
    sink: PostgresProjections,
    pos: dict[TP, int],
    stops: dict[TP, int],
    progress: _Progress,
    *,
    chunk: int,
) -> None:
    """Apply every record before `stops`, from `pos` (moved along, checkpointed per chunk).

    The next chunk is read and decoded (in a thread) while PostgreSQL applies the last one:
    decoding is most of the rebuild's own CPU, and the database works meanwhile.

    A record redriven to the projections is applied after its original (a rebuild from the
    beginning reaches the small redrive partitions long before the originals): its redrive
    partition waits at it until the original's partition has passed the original's offset."""
    progress.stops = stops
    for tp in source.partitions:
        if pos[tp] < stops.get(tp, 0) and tp not in source.held:
            source.unpark(tp)
        else:
            source.park(tp, pos[tp])

    def more() -> bool:
        return any(pos[tp] < stops.get(tp, 0) for tp in source.partitions)

    last_read = time.monotonic()
    reading = (
        asyncio.ensure_future(source.blocking(_take_chunk, source, pos, stops, chunk=chunk))
        if more()
        else None
    )
    try:
        while reading is not None:
            events, moved = await reading
            # `pos` is the read position: what is applied is what `moved` checkpoints
            reading = (
                asyncio.ensure_future(source.blocking(_take_chunk, source, pos, stops, chunk=chunk))
                if more()
                else None
            )
            if moved:
                last_read = time.monotonic()
                await sink.rebuild_chunk(events, moved)
                progress.events += len(events)
            elif time.monotonic() - last_read > STALL_S:
                waiting = {tp: stops[tp] - pos[tp] for tp in stops if pos[tp] < stops[tp]}
                raise RebuildFailed(
                    f"no record read for {STALL_S:.0f} s; still to read: {_where(waiting)}"
                )
            progress.line(pos)
    finally:
        if reading is not None:
            # never leave the consumer to a thread while the caller goes on (or closes it)
            with contextlib.suppress(BaseException):
                await reading


async def _live_positions(conn: psycopg.AsyncConnection[Any]) -> dict[TP, int]:
    """Where the live projections stand: their `projection_positions`."""
    cur = await conn.execute(
        "SELECT topic, partition, next_offset FROM public.projection_positions"
    )
    return {(t, p): int(o) for t, p, o in await cur.fetchall()}


async def _committed(settings: Settings, tps: list[TP]) -> dict[TP, int]:
    from connectors.groups import GroupOffsets

    offsets = GroupOffsets(settings.kafka_bootstrap, security=settings.kafka_security)
    try:
        return await offsets.committed(f"{settings.worker_app_prefix}-projections", tps)
    finally:
        await offsets.close()


async def _targets(
    conn: psycopg.AsyncConnection[Any],
    settings: Settings,
    source: _Source,
    *,
    paused: bool = False,
) -> dict[TP, int]:
    """Where the live projections stand, per partition: their recorded positions, and for a
    partition they have recorded nothing of (its records were applied before positions were
    recorded, or it has none), their group's commit. Asked while the live projections are
    paused, the commits are those read before the pause (a client of Kafka's takes a second
    to start, and the commit of a partition the live role has not written since cannot move)."""
    live = await _live_positions(conn)
    missing = [tp for tp in source.partitions if tp not in live]
    if missing and not paused:
        source.committed = await _committed(settings, missing)
    for tp in missing:
        at = source.committed.get(tp, -1)
        live[tp] = max(at, source.partitions[tp][0]) if at >= 0 else source.partitions[tp][0]
    return {tp: max(live.get(tp, 0), 0) for tp in source.partitions}


def _where(pos: dict[TP, int], limit: int = 12) -> str:
    """Per-partition positions, for people: `user.events/3@120` (namespace left out)."""
    parts = [f"{t.split('.', 1)[-1]}/{p}@{o}" for (t, p), o in sorted(pos.items()) if o]
    if not parts:
        return "the beginning"
    more = len(parts) - limit
    return ", ".join(parts[:limit]) + (f" (+{more} more)" if more > 0 else "")


async def _build(
    settings: Settings,
    schema: str,
    *,
    until: datetime | None,
    say: Say,
    create: bool,
) -> tuple[_Source, PostgresProjections, dict[TP, int], _Progress]:
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as c:
        cur = await c.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        exists = await cur.fetchone() is not None
        if not exists:
            if not create:
                raise RebuildFailed(f"{schema} does not exist")
            await create_shadow(c, schema, until=until)
            say(f"{schema}: created (projection tables shaped like public's)")
        elif create and await meta(c, schema) is None:
            raise RebuildFailed(f"{schema} exists but is not a rebuild's shadow: not touched")
        changed = await shape_differs(c, schema)
        if changed:
            raise RebuildFailed(
                f"{schema} was made before a migration changed {', '.join(changed)}: "
                f"`mohallamart rebuild discard --schema {schema}` and start again"
            )
        done = await positions(c, schema)
    source = _Source(settings)
    try:
        await source.blocking(source.discover, _topics(settings))
        pos = {tp: max(done.get(tp, 0), source.partitions[tp][0]) for tp in source.partitions}
        if done:
            say(f"{schema}: resuming from its checkpoint: {_where(done)}")
        else:
            say(f"{schema}: starting from the beginning of {len(source.partitions)} partitions")
        source.assign(pos)
    except BaseException:
        source.close()
        raise
    sink = PostgresProjections(settings.postgres_dsn, schema=schema)
    return source, sink, pos, _Progress(say, dict(pos))


async def _holding(settings: Settings, schema: str) -> psycopg.AsyncConnection[Any]:
    """A session holding `schema`'s rebuild lock (RebuildFailed if another has it)."""
    conn = await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True)
    if not await hold(conn, schema):
        await conn.close()
        raise RebuildFailed(f"another rebuild, rollback or drop is working on {schema}")
    return conn


async def rebuild_postgres(
    settings: Settings,
    *,
    until: datetime | None = None,
    cutover: bool = True,
    force: bool = False,
    chunk: int = 20000,
    say: Say = print,
    cutover_within_s: float = 600.0,
    show: int = 20,
) -> int:
    """The command (see the module's text). Returns an exit status."""
    schema = (
        SHADOW if until is None else f"rebuild_asof_{until.astimezone(UTC):%Y%m%dT%H%M%SZ}".lower()
    )
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as c:
        if until is None and cutover:
            cur = await c.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (PREVIOUS,))
            if await cur.fetchone() is not None:
                say(
                    f"{PREVIOUS} holds the tables of an earlier cut-over: `mohallamart rebuild "
                    "drop-old` (or `rebuild rollback`) first"
                )
                return 2
    lock = await _holding(settings, schema)
    try:
        source, sink, pos, progress = await _build(
            settings, schema, until=until, say=say, create=True
        )
        try:
            if until is not None:
                stops = await source.blocking(source.until, until)
                await _read_to(source, sink, pos, stops, progress, chunk=chunk)
                async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as c:
                    async with c.transaction():
                        await prune(c, schema)
                progress.line(pos, final=True)
                say(
                    f"{schema}: the projections as of {until.isoformat()} "
                    f"({source.undecodable} undecodable records skipped). Read it with "
                    f"`SET search_path TO {schema}, public`; `mohallamart rebuild discard "
                    f"--schema {schema}` drops it."
                )
                return 0
            return await _catch_up_and_cut_over(
                settings,
                schema,
                source,
                sink,
                pos,
                progress,
                chunk=chunk,
                say=say,
                cutover=cutover,
                force=force,
                within_s=cutover_within_s,
                swap_in=lambda conn: swap(conn, SHADOW, PREVIOUS),
                show=show,
            )
        finally:
            source.close()
            await sink.close()
    finally:
        await lock.close()


async def rollback_postgres(
    settings: Settings, *, force: bool = False, chunk: int = 20000, say: Say = print
) -> int:
    """Bring the tables the last cut-over put aside up to the live position, then swap them
    back in with the same barrier."""
    lock = await _holding(settings, PREVIOUS)
    try:
        source, sink, pos, progress = await _build(
            settings, PREVIOUS, until=None, say=say, create=False
        )
        try:
            return await _catch_up_and_cut_over(
                settings,
                PREVIOUS,
                source,
                sink,
                pos,
                progress,
                chunk=chunk,
                say=say,
                cutover=True,
                force=force,
                within_s=600.0,
                swap_in=swap_back,
                show=20,
            )
        finally:
            source.close()
            await sink.close()
    finally:
        await lock.close()


async def drop(settings: Settings, schema: str) -> None:
    """Drop a rebuild schema nobody is working on."""
    lock = await _holding(settings, schema)
    try:
        await drop_schema(lock, schema)
    finally:
        await lock.close()


async def _catch_up_and_cut_over(
    settings: Settings,
    schema: str,
    source: _Source,
    sink: PostgresProjections,
    pos: dict[TP, int],
    progress: _Progress,
    *,
    chunk: int,
    say: Say,
    cutover: bool,
    force: bool,
    within_s: float,
    swap_in: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]],
    show: int,
) -> int:
    dsn = settings.postgres_dsn
    deadline = time.monotonic() + within_s
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        while True:
            live = await _targets(c, settings, source)
            await _read_to(source, sink, pos, live, progress, chunk=chunk)
            live = await _targets(c, settings, source)
            gap = sum(max(0, live[tp] - pos[tp]) for tp in live)
            if gap <= CUTOVER_GAP:
                break
            if time.monotonic() > deadline:
                progress.line(pos, final=True)
                say(
                    f"{schema}: still {gap:,} records behind the live projections after "
                    f"{within_s:.0f} s; run the same command again to continue"
                )
                return 1
    progress.line(pos, final=True)
    say(f"{schema}: within {gap:,} records of the live projections ({_where(live)})")
    if not cutover:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            counts, diffs = await parity(c, schema, limit=show)
        say(
            f"{schema}: built; no cut-over asked (`mohallamart rebuild postgres` continues and "
            f"swaps it in). Parity now, without pausing the live projections (a difference may "
            f"be their lag): {sum(n for _, n in counts.values()):,} rows, {len(diffs)} "
            "differences"
        )
        for d in diffs:
            say(f"  {d.table} {d.key}: {d.what}")
        return 0
    async with await psycopg.AsyncConnection.connect(dsn) as b:
        asked = time.monotonic()
        try:
            async with b.transaction():
                # each statement sees what committed before it (the batch the lock waited
                # for), whatever the server's default isolation
                await b.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                # while this waits, new live batches queue behind it too: the pause starts here
                await b.execute("SET LOCAL lock_timeout = '30s'")
                await b.execute("SELECT pg_advisory_xact_lock(%s)", (REBUILD_LOCK,))
                granted = time.monotonic()
                say(
                    f"cut-over: live projections paused (their batches in flight took "
                    f"{granted - asked:.2f} s to commit)"
                )
                live = await _live_positions(b)
                unknown = sorted(tp for tp, o in live.items() if o > 0 and tp not in pos)
                if unknown:
                    new = _where(dict.fromkeys(unknown, 1))
                    say(f"  partitions this rebuild does not read (new since it started): {new}")
                    raise _NoParity
                at = await _targets(b, settings, source, paused=True)
                await _read_to(source, sink, pos, at, progress, chunk=chunk)
                removed = await prune(b, schema)
                counts, diffs = await parity(b, schema, limit=show)
                shadow_at = await positions(b, schema)
                off = [tp for tp, o in at.items() if o > 0 and shadow_at.get(tp, 0) != o]
                checked = time.monotonic()
                say(
                    f"cut-over: {schema} at the live position ({_where(at)}); cleanup runs "
                    f"applied ({removed or 'nothing to remove'}); parity of "
                    f"{sum(n for _, n in counts.values()):,} rows in {checked - granted:.2f} s"
                )
                for d in diffs:
                    say(f"  {d.table} {d.key}: {d.what}")
                for tp in off:
                    say(f"  positions: {tp[0]}/{tp[1]} live {at[tp]}, {schema} {shadow_at.get(tp)}")
                if (diffs or off) and not force:
                    raise _NoParity
                # readers of the tables (the API) hold them briefly; waiting longer would hold
                # up the live projections
                await b.execute("SET LOCAL lock_timeout = '5s'")
                await swap_in(b)
        except _NoParity:
            say(
                f"cut-over refused: {schema} differs from the live tables (above); nothing "
                "swapped, the live projections resumed. `--force` swaps anyway."
            )
            return 1
        except psycopg.errors.LockNotAvailable as exc:
            say(
                f"cut-over abandoned: a lock was not granted in time ({exc}); nothing swapped, "
                "the live projections resumed; run the same command again"
            )
            return 1
        resumed = time.monotonic()
    say(f"cut-over: swapped; live projections resumed after a pause of {resumed - asked:.2f} s")
    if schema == SHADOW:
        say(
            f"the old tables are in {PREVIOUS} until `mohallamart rebuild drop-old`; "
            "`mohallamart rebuild rollback` swaps them back"
        )
    return 0


class _NoParity(Exception):
    pass


# --- Redis ---------------------------------------------------------------------------------------
_VIEW_TABLES = {
    "user": ("users", "user_id"),
    "shop": ("shops", "shop_id"),
    "product": ("products", "product_id"),
}


async def rebuild_redis(
    settings: Settings, *, drop: bool = False, chunk: int = 2000, say: Say = print
) -> dict[str, int]:
    """Render every view (users, shops, products) from PostgreSQL into Redis, as the cache role
    does: each write a compare-and-set on the view's version, so a view the live role wrote
    meanwhile (newer) is never overwritten and nothing needs pausing; a view at the same version
    whose payload differs (a rendering fixed since) is rewritten. `drop` first deletes every
    cached view (reads go to PostgreSQL until their view is back). Sends nothing."""
    from connectors.redis_cache import VIEW_PATTERN, ViewCache
    from connectors.views import load_views

    cache = ViewCache(settings.redis_dsn, ttl_s=settings.cache_ttl_s, timeout_s=10.0)
    counts = {"views": 0, "written": 0, "unchanged": 0, "dropped": 0}
    try:
        if drop:
            counts["dropped"] = await cache.drop_all()
            say(f"rebuild redis: {counts['dropped']:,} cached views deleted ({VIEW_PATTERN})")
        async with await psycopg.AsyncConnection.connect(
            settings.postgres_dsn, autocommit=True
        ) as conn:
            totals = {}
            for kind, (table, _col) in _VIEW_TABLES.items():
                cur = await conn.execute(f"SELECT count(*) FROM {table}")  # noqa: S608
                row = await cur.fetchone()
                totals[kind] = int(row[0]) if row else 0
            total = sum(totals.values())
            started = last = time.monotonic()
            kinds = ", ".join(f"{k} {n:,}" for k, n in totals.items())
            say(f"rebuild redis: {total:,} views to render ({kinds})")
            # the next chunk is read and rendered while the last one is written to Redis
            writing: asyncio.Task[list[bool]] | None = None

            async def settle(task: asyncio.Task[list[bool]] | None) -> None:
                nonlocal last
                if task is None:
                    return
                written = await task
                counts["views"] += len(written)
                counts["written"] += sum(written)
                counts["unchanged"] += len(written) - sum(written)
                now = time.monotonic()
                if now - last >= (0.5 if sys.stdout.isatty() else 2.0):
                    last = now
                    rate = counts["views"] / max(now - started, 1e-6)
                    eta = (total - counts["views"]) / rate if rate else 0.0
                    say(
                        f"rebuild redis: {counts['views']:,}/{total:,} views, "
                        f"{rate:,.0f} views/s, ETA {max(eta, 0):,.0f} s"
                    )

            try:
                for kind, (table, col) in _VIEW_TABLES.items():
                    after = ""
                    while True:
                        cur = await conn.execute(
                            f"SELECT {col} FROM {table} WHERE {col} > %s "  # noqa: S608
                            f"ORDER BY {col} LIMIT %s",
                            (after, chunk),
                        )
                        ids = [r[0] for r in await cur.fetchall()]
                        if not ids:
                            break
                        after = ids[-1]
                        views = list((await load_views(conn, kind, ids)).values())
                        await settle(writing)
                        writing = asyncio.create_task(cache.put(views, replace_equal=True))
                await settle(writing)
                writing = None
            finally:
                if writing is not None and not writing.done():
                    writing.cancel()
                    with contextlib.suppress(BaseException):
                        await writing
            took = time.monotonic() - started
            per_s = counts["views"] / max(took, 1e-6)
            say(
                f"rebuild redis: {counts['views']:,} views rendered in {took:.1f} s "
                f"({per_s:,.0f} views/s): {counts['written']:,} written, "
                f"{counts['unchanged']:,} already current (or newer) in Redis"
            )
    finally:
        await cache.close()
    return counts
