"""`mohallamart rebuild analytics`: the analytics tables rebuilt from the window stage's topic,
beside the live ones, then swapped in without losing a write.

1. A plain consumer (librdkafka, a group of its own that commits nothing) reads the retained
   by-key topic (`mohallamart.analytics.by-key`: every contribution, mark and tick the router
   forwarded, in each partition's order) from the checkpoint or the beginning, and folds each
   partition with the window stage's own code (`streams.analytics.StagePartition`, the rows by
   `streams.agents.analytics.rows_of`): the same windows, lateness, finality and rows as the
   live role. The rows go to the analytics tables of the schema `rebuild_analytics` (shaped like
   public's) with the stage's positions, chunk by chunk; the fold's state is saved with a chunk
   every `--checkpoint-s` seconds, so Ctrl-C or `kill -9` loses nothing: the same command
   continues from that checkpoint (rows written after it are written again, the same: values
   are set, never added to). Nothing is sent: no final result, no late event on any topic.
2. It chases the live stage's own positions (`analytics_positions`, written in each live
   write's transaction), never going past them, until it is within `CUTOVER_GAP` records.
3. The cut-over: the analytics barrier taken exclusively (every live write holds it shared
   until it commits, so the stage pauses between two writes), the live positions L read, the
   shadow brought exactly to L (a live write may stand in the middle of a bundle: the shadow
   applies the same items of it), parity checked (every row of every analytics table, by
   checksum, the wall-clock columns left out) and the tables swapped, in one transaction. The
   stage's next write goes to the new tables. Without parity the swap is refused unless
   `--force`; the old tables stay in `rebuild_analytics_previous` until `rebuild drop-old
   --store analytics`.

The router is not replayed: the by-key topic is its output, kept (retained) for this.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg import sql

from connectors.analytics import (
    ANALYTICS_LOCK,
    ANALYTICS_TABLES,
    AnalyticsWrite,
    LateRow,
    read_positions,
    write_late,
    write_panes,
    write_positions,
    write_sales,
    write_sessions,
    write_watermarks,
)
from connectors.rebuild import (
    ANALYTICS_PREVIOUS,
    ANALYTICS_SHADOW,
    create_shadow,
    hold,
    meta,
    parity,
    shape_differs,
    swap,
)
from core.settings import Settings
from mohallamart.rebuild import CUTOVER_GAP, STALL_S, RebuildFailed, Say, _Progress
from schemas.outputs import late_id

__all__ = ["rebuild_analytics"]

T = TypeVar("T")

#: partition -> (the offset applied, the router positions applied of the next record: None
#: when nothing of it is applied)
Target = dict[int, tuple[int, dict[str, list[int]] | None]]


class _Fold:
    """The shadow's window stage: one `StagePartition` per by-key partition, and its writer."""

    def __init__(self, settings: Settings, schema: str) -> None:
        from schemas.catalog import TOPICS
        from streams.agents.analytics import by_key_topic
        from streams.analytics import window_kinds

        self.settings, self.schema = settings, schema
        self.topic = by_key_topic(settings.topic_namespace)
        self.kinds = window_kinds(settings.analytics_grace_s, settings.analytics_session_gap_s)
        n = TOPICS["order"].partitions
        self.sources = [f"{TOPICS[c].name}:{p}" for c in ("order", "analytics") for p in range(n)]
        self.parts: dict[int, Any] = {}
        self.ends: dict[int, tuple[int, int]] = {}
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.saved_at = 0.0
        self.items = 0
        self.unreadable = 0
        self.late: list[Any] = []
        from confluent_kafka import Consumer

        from connectors.kafka import consumer_config

        self.consumer = Consumer(
            consumer_config(
                settings.kafka_bootstrap,
                f"{settings.worker_app_prefix}-rebuild-analytics-{uuid.uuid4()}",
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
        self.paused: set[int] = set()
        # the consumer's blocking calls, one at a time, off the event loop; `close` waits for
        # the one running (a cancelled await does not stop its thread)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="rebuild-analytics-consumer")
        #: the live stage group's commits of partitions it has recorded no position of
        self.committed: dict[int, int] = {}

    def fresh(self) -> Any:
        from streams.analytics import StagePartition

        return StagePartition(self.kinds, self.sources)

    def restore(self, state: dict[str, Any]) -> Any:
        from streams.analytics import StagePartition
        from streams.windows import Windows

        part = StagePartition(self.kinds, self.sources, state["marker"])
        for name, st in state["windows"].items():
            part.windows[name] = Windows.restore(self.kinds[name], st)
        return part

    async def open(self) -> None:
        self.conn = await psycopg.AsyncConnection.connect(self.settings.postgres_dsn)
        # the shadow alone: a dropped shadow fails the rebuild rather than writing live tables
        await self.conn.execute(
            sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema))
        )
        await self.conn.commit()
        cur = await self.conn.execute("SELECT stage_partition, state FROM rebuild_state")
        for p, state in await cur.fetchall():
            self.parts[int(p)] = self.restore(orjson.loads(state))
        await self.conn.commit()

    def discover(self) -> None:
        from confluent_kafka import TopicPartition

        found = self.consumer.list_topics(self.topic, timeout=15).topics.get(self.topic)
        if found is None or found.error is not None:
            raise RebuildFailed(f"{self.topic} does not exist: has the analytics role ever run?")
        for p in found.partitions:
            self.ends[p] = self.consumer.get_watermark_offsets(
                TopicPartition(self.topic, p), timeout=15
            )
            if p not in self.parts:
                self.parts[p] = self.fresh()
        low = {p: lo for p, (lo, _) in self.ends.items() if lo > self.parts[p].offset + 1}
        if low:
            gone = ", ".join(f"{p}@{lo}" for p, lo in sorted(low.items()))
            raise RebuildFailed(
                f"{self.topic} no longer holds its first records ({gone}): retention removed "
                "them, so the windows cannot be rebuilt from it"
            )
        self.consumer.assign(
            [TopicPartition(self.topic, p, self.parts[p].offset + 1) for p in self.ends]
        )

    def high(self, partitions: list[int]) -> dict[int, int]:
        """The end offset of each of `partitions` now."""
        from confluent_kafka import TopicPartition

        return {
            p: self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
            for p in partitions
        }

    def park(self, p: int, at: int) -> None:
        from confluent_kafka import TopicPartition

        if p not in self.paused:
            tp = TopicPartition(self.topic, p, at)
            self.consumer.pause([tp])
            self.consumer.seek(tp)
            self.paused.add(p)

    def unpark(self, p: int) -> None:
        from confluent_kafka import TopicPartition

        if p in self.paused:
            self.consumer.resume([TopicPartition(self.topic, p)])
            self.paused.discard(p)

    def where(self) -> dict[tuple[str, int], int]:
        return {("analytics.by-key", p): part.offset + 1 for p, part in self.parts.items()}

    async def fold_to(
        self, target: dict[int, int], progress: _Progress, *, chunk: int, checkpoint_s: float
    ) -> None:
        """Apply every by-key record up to each partition's target offset (inclusive), writing
        rows and positions per chunk, and the fold's state every `checkpoint_s`."""
        from streams.analytics import items_of

        progress.stops = {("analytics.by-key", p): target.get(p, -1) + 1 for p in self.ends}
        for p, part in self.parts.items():
            if part.offset < target.get(p, -1):
                self.unpark(p)
            else:
                self.park(p, part.offset + 1)
        last_read = time.monotonic()
        while any(self.parts[p].offset < target.get(p, -1) for p in self.ends):
            left = sum(max(0, target.get(p, -1) - self.parts[p].offset) for p in self.ends)
            msgs = await self.blocking(self.consumer.consume, max(1, min(chunk, left)), 0.5)
            touched: set[int] = set()
            for m in msgs:
                if m.error() is not None:
                    continue
                mp, offset = m.partition(), m.offset()
                if mp is None or offset is None:
                    continue
                p = mp
                part = self.parts[p]
                if offset <= part.offset:
                    continue  # read again after a seek
                if offset > target.get(p, -1):
                    self.park(p, offset)
                    continue
                for item in items_of(m.value(), _routed_from(m)):
                    self._take(part, item, p, offset)
                part.offset = offset
                touched.add(p)
            for p in self.ends:
                if self.parts[p].offset >= target.get(p, -1):
                    self.park(p, self.parts[p].offset + 1)
            if touched:
                last_read = time.monotonic()
                await self.write(touched, save=time.monotonic() - self.saved_at >= checkpoint_s)
                progress.events = self.items
            elif time.monotonic() - last_read > STALL_S:
                raise RebuildFailed(f"no record of {self.topic} read for {STALL_S:.0f} s")
            progress.line(self.where())

    async def fold_partial(self, p: int, routed: dict[str, list[int]]) -> bool:
        """Of partition `p`'s next record, apply the items a live write in the middle of its
        bundle had applied (up to the router positions `routed`). False if none."""
        from confluent_kafka import TopicPartition

        from streams.analytics import items_of

        part = self.parts[p]
        if part.routed == routed:
            return False
        at = part.offset + 1
        self.paused.discard(p)
        self.consumer.resume([TopicPartition(self.topic, p)])
        self.consumer.seek(TopicPartition(self.topic, p, at))
        deadline = time.monotonic() + 30
        record = None
        while record is None and time.monotonic() < deadline:
            for m in await self.blocking(self.consumer.consume, 1, 0.5):
                if m.error() is None and m.partition() == p and m.offset() == at:
                    record = m
        self.park(p, at)
        if record is None:
            raise RebuildFailed(f"{self.topic}/{p}@{at} could not be read in 30 s")
        for item in items_of(record.value(), _routed_from(record)):
            if not _within(item, routed):
                break  # the live write stopped here
            self._take(part, item, p, at)
        await self.write({p}, save=False)
        return True

    def _take(self, part: Any, item: dict[str, Any], p: int, offset: int) -> None:
        try:
            got = part.take(item)
            if got is not None:
                self.items += 1
                self.late += got
        except (KeyError, ValueError, TypeError, AttributeError):
            self.unreadable += 1  # the live stage logs and skips such an item too

    async def write(self, touched: set[int], *, save: bool) -> None:
        from streams.agents.analytics import rows_of

        assert self.conn is not None
        w = AnalyticsWrite([], [], [], [], [], {})
        for p in sorted(touched):
            part = self.parts[p]
            closed = part.close()
            _, dirty, cells, changed = part.take_changes()
            w.watermarks[p] = part.watermark
            w.positions[p] = (part.offset, dict(part.routed))
            rows_of(self.kinds, part, dirty, changed, cells, closed, w)
        for x in self.late:
            lt = x.late
            w.late.append(
                LateRow(
                    late_id(x.event_id, lt.window, lt.key),
                    x.event_id,
                    x.event_type,
                    lt.window,
                    lt.key,
                    lt.start_ms,
                    lt.end_ms,
                    lt.event_ms,
                    lt.watermark_ms,
                )
            )
        self.late = []
        async with self.conn.transaction():
            await write_sales(self.conn, w.sales)
            await write_panes(self.conn, w.panes)
            await write_sessions(self.conn, w.sessions_changed, w.sessions)
            await write_late(self.conn, w.late)
            await write_watermarks(self.conn, w.watermarks)
            await write_positions(self.conn, self.topic, w.positions)
            if save:
                rows = [
                    (
                        p,
                        orjson.dumps(
                            {
                                "marker": part.marker(),
                                "windows": {n: x.state() for n, x in part.windows.items()},
                            }
                        ),
                    )
                    for p, part in self.parts.items()
                ]
                async with self.conn.cursor() as cur:
                    await cur.executemany(
                        "INSERT INTO rebuild_state (stage_partition, state) VALUES (%s, %s) "
                        "ON CONFLICT (stage_partition) DO UPDATE SET state = EXCLUDED.state",
                        rows,
                    )
                self.saved_at = time.monotonic()

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in the consumer's thread."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args))

    async def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.consumer.close()
        if self.conn is not None:
            await self.conn.close()


def _routed_from(m: Any) -> str | None:
    """A by-key record's `x-routed-from` header (records from before bundles carry one)."""
    from streams.agents.analytics import ROUTED_FROM

    for k, v in m.headers() or []:
        if k == ROUTED_FROM:
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


def _within(item: dict[str, Any], routed: dict[str, list[int]]) -> bool:
    """Whether an item is at or below the router positions a live write had applied."""
    if "o" not in item:
        return True
    source = str(item["m"] if "m" in item else item["s"])
    last = routed.get(source)
    return last is not None and (int(item["o"]), int(item["i"])) <= (int(last[0]), int(last[1]))


#: partition -> (the offset the live stage applied, the router positions it applied; None for
#: a partition it has recorded no position of, read to its end and committed)
Targets = dict[int, tuple[int, dict[str, list[int]] | None]]


class _Unsettled(Exception):
    """A by-key partition the live stage has recorded no position of is not committed to its
    end: where it stands is not known."""


async def _targets(
    conn: psycopg.AsyncConnection[Any], settings: Settings, fold: _Fold, *, paused: bool = False
) -> Targets:
    """Where the live window stage stands per by-key partition: its recorded positions (written
    with its rows). A partition it has recorded nothing of (no write since positions were
    recorded) counts only once its group has committed it to its end: then everything in it
    is applied. Asked while the stage is paused, the commits are those read before the pause
    (its writes are what moves them), and the partition's end is read again (_Unsettled if
    the commit is short of it)."""
    live: Targets = dict(await read_positions(conn, fold.topic))
    missing = [p for p in fold.ends if p not in live]
    if missing and not paused:
        from connectors.groups import GroupOffsets

        offsets = GroupOffsets(settings.kafka_bootstrap, security=settings.kafka_security)
        try:
            got = await offsets.committed(
                f"{settings.worker_app_prefix}-analytics", [(fold.topic, p) for p in missing]
            )
        finally:
            await offsets.close()
        fold.committed = {p: max(got.get((fold.topic, p), 0), 0) for p in missing}
    if missing:
        ends = await fold.blocking(fold.high, missing)
        short = [p for p in missing if fold.committed.get(p, 0) < ends[p]]
        if short and paused:
            raise _Unsettled(
                ", ".join(f"by-key/{p}@{fold.committed.get(p, 0)} of {ends[p]}" for p in short)
            )
        for p in missing:
            live[p] = (min(fold.committed.get(p, 0), ends[p]) - 1, None)
    return live


async def rebuild_analytics(
    settings: Settings,
    *,
    cutover: bool = True,
    force: bool = False,
    chunk: int = 5000,
    checkpoint_s: float = 10.0,
    say: Say = print,
    cutover_within_s: float = 600.0,
    show: int = 20,
) -> int:
    """The command (see the module's text). Returns an exit status."""
    schema = ANALYTICS_SHADOW
    dsn = settings.postgres_dsn
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        if cutover:
            cur = await c.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (ANALYTICS_PREVIOUS,)
            )
            if await cur.fetchone() is not None:
                say(
                    f"{ANALYTICS_PREVIOUS} holds the tables of an earlier cut-over: "
                    "`mohallamart rebuild drop-old --store analytics` first"
                )
                return 2
    lock = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        if not await hold(lock, schema):
            raise RebuildFailed(f"another rebuild or drop is working on {schema}")
        cur = await lock.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if await cur.fetchone() is None:
            await create_shadow(
                lock, schema, until=None, tables=ANALYTICS_TABLES, store="analytics"
            )
            await lock.execute(
                sql.SQL(
                    "CREATE TABLE {}.rebuild_state (stage_partition integer PRIMARY KEY, "
                    "state bytea NOT NULL)"
                ).format(sql.Identifier(schema))
            )
            say(f"{schema}: created (analytics tables shaped like public's)")
        elif (await meta(lock, schema) or {}).get("store") != "analytics":
            raise RebuildFailed(f"{schema} exists but is not this rebuild's shadow: not touched")
        changed = await shape_differs(lock, schema, ANALYTICS_TABLES)
        if changed:
            raise RebuildFailed(
                f"{schema} was made before a migration changed {', '.join(changed)}: "
                f"`mohallamart rebuild discard --schema {schema}` and start again"
            )
        fold = _Fold(settings, schema)
        try:
            await fold.open()
            await fold.blocking(fold.discover)
            start = {p: part.offset + 1 for p, part in fold.parts.items() if part.offset >= 0}
            if start:
                at = ", ".join(f"by-key/{p}@{o}" for p, o in sorted(start.items()))
                say(f"{schema}: resuming from its checkpoint: {at}")
            else:
                say(f"{schema}: starting from the beginning of {len(fold.ends)} partitions")
            # items: the contributions and marks the bundles hold
            progress = _Progress(say, fold.where(), unit="items")
            return await _catch_up_and_cut_over(
                settings,
                fold,
                progress,
                chunk=chunk,
                checkpoint_s=checkpoint_s,
                say=say,
                cutover=cutover,
                force=force,
                within_s=cutover_within_s,
                show=show,
            )
        finally:
            await fold.close()
    finally:
        await lock.close()


def _at(target: Targets) -> str:
    return ", ".join(f"by-key/{p}@{o + 1}" for p, (o, _) in sorted(target.items()) if o >= 0)


async def _catch_up_and_cut_over(
    settings: Settings,
    fold: _Fold,
    progress: _Progress,
    *,
    chunk: int,
    checkpoint_s: float,
    say: Say,
    cutover: bool,
    force: bool,
    within_s: float,
    show: int,
) -> int:
    schema, dsn = fold.schema, settings.postgres_dsn
    deadline = time.monotonic() + within_s
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        while True:
            live = await _targets(c, settings, fold)
            await fold.fold_to(
                {p: o for p, (o, _) in live.items()},
                progress,
                chunk=chunk,
                checkpoint_s=checkpoint_s,
            )
            live = await _targets(c, settings, fold)
            gap = sum(max(0, o - fold.parts[p].offset) for p, (o, _) in live.items())
            if gap <= CUTOVER_GAP:
                break
            if time.monotonic() > deadline:
                progress.line(fold.where(), final=True)
                say(
                    f"{schema}: still {gap:,} records behind the live window stage after "
                    f"{within_s:.0f} s; run the same command again to continue"
                )
                return 1
    await fold.write(set(), save=True)
    progress.line(fold.where(), final=True)
    say(f"{schema}: within {gap:,} records of the live window stage ({_at(live)})")
    if not cutover:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            counts, diffs = await parity(c, schema, limit=show, tables=ANALYTICS_TABLES)
        say(
            f"{schema}: built; no cut-over asked (`mohallamart rebuild analytics` continues and "
            f"swaps it in). Parity now, without pausing the live stage (a difference may be "
            f"its lag): {sum(n for _, n in counts.values()):,} rows, {len(diffs)} differences"
        )
        for d in diffs:
            say(f"  {d.table} {d.key}: {d.what}")
        return 0
    async with await psycopg.AsyncConnection.connect(dsn) as b:
        asked = time.monotonic()
        try:
            async with b.transaction():
                # each statement sees what committed before it (the live write the lock waited
                # for), whatever the server's default isolation
                await b.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
                await b.execute("SET LOCAL lock_timeout = '30s'")
                await b.execute("SELECT pg_advisory_xact_lock(%s)", (ANALYTICS_LOCK,))
                granted = time.monotonic()
                say(
                    f"cut-over: live window stage paused (its write in flight took "
                    f"{granted - asked:.2f} s to commit)"
                )
                try:
                    live = await _targets(b, settings, fold, paused=True)
                except _Unsettled as exc:
                    say(
                        "  by-key partitions the live stage has recorded no position of and not "
                        f"committed to their end: {exc} (its next write records them)"
                    )
                    raise _NoParity from None
                unknown = sorted(p for p in live if p not in fold.parts)
                if unknown:
                    say(f"  by-key partitions this rebuild does not read: {unknown}")
                    raise _NoParity
                # no state saved inside the pause (a resume from the last save folds the same)
                await fold.fold_to(
                    {p: o for p, (o, _) in live.items()},
                    progress,
                    chunk=chunk,
                    checkpoint_s=float("inf"),
                )
                for p, (_, routed) in sorted(live.items()):
                    if routed and await fold.fold_partial(p, routed):
                        say(
                            f"  by-key/{p}: the live stage stood in the middle of a bundle; "
                            "the shadow applied the same items of it"
                        )
                counts, diffs = await parity(b, schema, limit=show, tables=ANALYTICS_TABLES)
                shadow_at = await read_positions(b, fold.topic, schema)
                off = [
                    p
                    for p, (o, routed) in live.items()
                    if o >= 0
                    and (
                        shadow_at.get(p, (-1, {})) != (o, routed)
                        if routed is not None
                        else shadow_at.get(p, (-1, {}))[0] != o
                    )
                ]
                checked = time.monotonic()
                say(
                    f"cut-over: {schema} at the live position ({_at(live)}); parity of "
                    f"{sum(n for _, n in counts.values()):,} rows in {checked - granted:.2f} s"
                )
                for d in diffs:
                    say(f"  {d.table} {d.key}: {d.what}")
                for p in off:
                    mine = shadow_at.get(p, (-1, {}))
                    say(
                        f"  positions: by-key/{p}: live {live[p][0] + 1}, {schema} {mine[0] + 1}"
                        + (" (router positions differ)" if mine[0] == live[p][0] else "")
                    )
                if (diffs or off) and not force:
                    raise _NoParity
                await b.execute("SET LOCAL lock_timeout = '5s'")
                await swap(
                    b,
                    schema,
                    ANALYTICS_PREVIOUS,
                    tables=ANALYTICS_TABLES,
                    drop_incoming=True,
                )
        except _NoParity:
            say(
                f"cut-over refused: {schema} differs from the live tables (above); nothing "
                "swapped, the live window stage resumed. `--force` swaps anyway."
            )
            return 1
        except psycopg.errors.LockNotAvailable as exc:
            say(
                f"cut-over abandoned: a lock was not granted in time ({exc}); nothing swapped, "
                "the live window stage resumed; run the same command again"
            )
            return 1
        resumed = time.monotonic()
    say(f"cut-over: swapped; live window stage resumed after a pause of {resumed - asked:.2f} s")
    say(
        f"the old tables are in {ANALYTICS_PREVIOUS} until `mohallamart rebuild drop-old "
        "--store analytics`"
    )
    return 0


class _NoParity(Exception):
    pass
