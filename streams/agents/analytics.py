"""analytics: the analytics role (agents `route_analytics`, `aggregate_windows`; timer
`tick_quiet_sources`). Event-time windows of our own on changelog-backed tables (faust's windowed
tables expire windows by the wall clock); the arithmetic is `streams.windows`, `streams.sales`,
`streams.funnel` and `streams.analytics`.

1. **Route.** `route_analytics` reads the order and analytics topics, every record in order (each
   moves its partition's clock; only order and `analytics.tracked` events are decoded). Per
   source partition it keeps a clock (`SourceClock`: the highest event time seen, or granted by
   a tick) and, per
   order, what the sales windows counted of it (`OrderSales`), in the table `analytics-router`
   (partitioned like the source topics). Each event becomes contributions
   (`streams.analytics.contributions`), forwarded to the by-key topic, to the partition of
   its aggregate and key (Kafka's default partitioner), each stamped with its source
   partition's watermark just before it (lateness is judged by it) and its position (source
   partition, offset, index). Each time a source partition's watermark passes a point where a
   window may close (`closes_between`: a minute boundary plus a grace), a mark goes to every
   by-key partition. A batch's contributions and marks go as **bundles**
   (`streams.analytics.Bundles`: one record per by-key partition, its items in order).
2. **Tick.** A source partition quiet for `ANALYTICS_TICK_IDLE_S`, read to its end, gets a tick:
   a record in the retained ticks topic naming the partition, the offset it follows and the
   watermark it grants (the wall clock), written before it is applied (a mark to every by-key
   partition). The router applies the ticks of the topic at the offsets they follow, so a
   router that reads a partition again stamps and marks exactly as before, and invents no
   tick: a tick is only written where the router is at the partition's end, and only when it
   moves the partition's watermark past a window boundary.
3. **Aggregate.** `aggregate_windows` reads the by-key topic. Per partition, its state
   (`streams.analytics.StagePartition`: each source partition's watermark, the router
   positions applied, the windows of its keys) lives in the table `analytics`: one entry per
   window kind and key, a marker and a journal (`streams.analytics.Journal`). A record at or
   below the applied offset, or an item the router forwarded again (position at or below the
   highest applied from its source), is skipped. After a batch (or every ANALYTICS_FLUSH_ITEMS, in
   the middle of a bundle: its offset stays unapplied, its items applied are skipped by
   position when it comes again), the windows are advanced to the partition's watermark (the
   minimum of its source partitions'); then, in order: the rows (current and final) in
   PostgreSQL, in one transaction; the final results and late events on their topics
   (librdkafka, delivery awaited); per partition **one** journal record holding the batch's
   positions and the entries of the keys it changed, and at times a checkpoint (the entries,
   the marker, the journal records deleted). A crash before the journal record redoes the
   batch from the same state: the same rows (values set, never added; a final row never
   changes) and the same final records (same ids: recognisable duplicates).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import faust
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from prometheus_client import Counter, Gauge, Histogram

from connectors.analytics import (
    AnalyticsStore,
    AnalyticsWrite,
    LateRow,
    PaneRow,
    SalesWindow,
    SessionRow,
    stage_epoch,
    stage_table,
)
from connectors.base import DependencyDown
from connectors.kafka import consumer_config
from connectors.producer import Delivery, EventProducer
from connectors.producer import Record as OutRecord
from schemas.catalog import TOPICS
from schemas.codec import EventCodec, UndecodableRecord
from schemas.outputs import ANALYTICS_LATE, ANALYTICS_WINDOW, Output, late_id, window_id
from schemas.registry import UnknownSchema
from streams.agents._batches import fence_check, raw_batches, raw_topic, settle
from streams.analytics import (
    ROUTED,
    Bundles,
    Journal,
    LateEvent,
    StagePartition,
    contributions,
    items_of,
    journal_key,
    partition_of,
    replay,
    window_kinds,
)
from streams.reliability import Record, Rejection
from streams.sales import OrderSales
from streams.transport import AppPositions, highwater, in_partition_of, settling
from streams.windows import MINUTE_MS, ZONE, Final, Hopping, Sessions, SourceClock, Tumbling

if TYPE_CHECKING:
    from core.settings import KafkaSecurity
    from streams.runtime import Runtime

__all__ = ["by_key_topic", "final_datum", "install", "rows_of", "ticks_topic"]

log = logging.getLogger(__name__)

ROUTED_FROM = "x-routed-from"
#: the key of a bundle record (the router chooses each record's partition)
BUNDLE_KEY = b"~bundle"
#: the window stage writes its state after at most `ANALYTICS_FLUSH_ITEMS` items, or once
#: the keys they changed reach FLUSH_KEYS (its journal record carries those keys' entries:
#: about 300 bytes each in the benchmark; one over `JOURNAL_CHUNK_BYTES` is cut in several)
FLUSH_KEYS = 2000
#: a window stage partition checkpoints its journal (see `streams.analytics.Journal`) once it
#: holds this many keys' entries or this many batches
CHECKPOINT_KEYS = 5000
CHECKPOINT_RECORDS = 50
#: how long librdkafka tries to deliver a final result or late event before the batch fails
#: (and is done again)
OUTPUT_DELIVERY_TIMEOUT_MS = 30_000
#: a tick's mark comes after every record of the offset it follows: its index is this + W
TICK_INDEX = 10**13
#: sales windows: window kind -> the `period` of their rows
PERIODS = {"sales_1m": "1m", "sales_1h": "1h", "sales_1d": "1d"}

FINALS = Counter(
    "mohallamart_analytics_final_results_total", "Window final results emitted", ["window"]
)
LATE = Counter(
    "mohallamart_analytics_late_events_total",
    "Events that came after their window was final (reported, not counted)",
    ["window"],
)
COPIES = Counter(
    "mohallamart_analytics_routed_copies_skipped_total",
    "By-key items the router forwarded again (after a crash or a rebalance) that the window "
    "stage skipped by their position",
)
BAD_ITEMS = Counter(
    "mohallamart_analytics_unreadable_items_total",
    "By-key items the window stage could not read (from a router of another version; each "
    "logged with its position, then skipped)",
)
TICKS = Counter(
    "mohallamart_analytics_ticks_total", "Tick records written for quiet source partitions"
)
WATERMARK = Gauge(
    "mohallamart_analytics_watermark_seconds",
    "A window stage partition's watermark (event time, seconds since the epoch)",
    ["partition"],
)
FINAL_DELAY = Histogram(
    "mohallamart_analytics_final_delay_seconds",
    "Wall time from the watermark reaching a window's end + grace to its final result written",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)


def by_key_topic(namespace: str) -> str:
    """The analytics role's internal topic: contributions re-keyed by aggregate and key."""
    return f"{namespace}.analytics.by-key"


def ticks_topic(namespace: str) -> str:
    """The retained topic of tick records (quiet source partitions' watermarks)."""
    return f"{namespace}.analytics.ticks"


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


class Ticks:
    """The ticks topic as the router knows it: per source partition its ticks, (offset followed,
    watermark granted), in order. Read from the topic (whole: it is small) whenever the group's
    assignment changed, and kept up to date by the ticks this process writes."""

    def __init__(self, bootstrap: str, topic: str, security: KafkaSecurity) -> None:
        self.bootstrap, self.topic, self.security = bootstrap, topic, security
        self.by_source: dict[str, list[tuple[int, int]]] = {}
        self.generation: int | None = -2

    def read(self, since_ms: int) -> None:
        """Read the ticks granting more than `since_ms` (those at or below it are in every
        clock already: the lowest watermark of the sources this process reads)."""
        consumer = Consumer(
            consumer_config(
                self.bootstrap,
                "mohallamart-analytics-ticks-reader",
                {"enable.auto.commit": False, "enable.partition.eof": False},
                security=self.security,
            )
        )
        found: dict[str, list[tuple[int, int]]] = {}
        try:
            meta = consumer.list_topics(self.topic, timeout=10)
            for p in meta.topics[self.topic].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)
                start = OFFSET_BEGINNING
                if since_ms >= 0:  # a tick's timestamp is the watermark it grants
                    (found_at,) = consumer.offsets_for_times(
                        [TopicPartition(self.topic, p, since_ms + 1)], timeout=10
                    )
                    start = found_at.offset if found_at.offset >= 0 else high
                if high <= 0 or start >= high:
                    continue
                consumer.assign([TopicPartition(self.topic, p, start)])
                pos = -1
                deadline = time.monotonic() + 60
                while pos < high - 1 and time.monotonic() < deadline:
                    for m in consumer.consume(1000, timeout=1):
                        if m.error() is not None:
                            continue
                        pos = m.offset() or 0
                        t = orjson.loads(m.value() or b"{}")
                        found.setdefault(t["source"], []).append(
                            (int(t["follows"]), int(t["watermark"]))
                        )
                if pos < high - 1:
                    raise TimeoutError(f"reading {self.topic} took more than 60 s")
        finally:
            consumer.close()
        self.by_source = {k: sorted(v) for k, v in found.items()}

    def add(self, source: str, follows: int, watermark: int) -> None:
        self.by_source.setdefault(source, []).append((follows, watermark))

    def between(self, source: str, low: int, high: int) -> list[tuple[int, int]]:
        """The ticks of `source` following offsets in [low, high]."""
        return [t for t in self.by_source.get(source, ()) if low <= t[0] <= high]


def install(rt: Runtime) -> None:  # noqa: PLR0915 - one role's wiring, read top to bottom
    app: faust.App = rt.app
    s = rt.settings
    ns = s.topic_namespace
    size, within = s.worker_batch_size, s.worker_batch_window_s
    kinds = window_kinds(s.analytics_grace_s, s.analytics_session_gap_s)
    graces = sorted({int(v * 1000) % MINUTE_MS for v in s.analytics_grace_s.values()})
    by_key_name = by_key_topic(ns)
    parts = s.analytics_partitions
    src_topics = [TOPICS["order"].name, TOPICS["analytics"].name]
    n_src = TOPICS["order"].partitions
    if TOPICS["analytics"].partitions != n_src:
        raise ValueError("the order and analytics topics must have as many partitions")
    sources = [f"{t}:{p}" for t in src_topics for p in range(n_src)]
    json_schema: Any = faust.Schema(
        key_type=str, value_type=None, key_serializer="json", value_serializer="json"
    )
    # clocks and orders' sales states; one table (one changelog partition per source partition,
    # so the orders' states, written first, are never behind the clock after a crash)
    router_table = app.Table("analytics-router", default=None, partitions=n_src, schema=json_schema)
    # the window stage's table: a replay moves to a new epoch (a new, empty table)
    stage_name = stage_table(stage_epoch(s.postgres_dsn, app.conf.id))
    table = app.Table(stage_name, default=None, partitions=parts, schema=json_schema)
    ticks = Ticks(s.kafka_bootstrap, ticks_topic(ns), s.kafka_security)
    positions = AppPositions(app)
    store = AnalyticsStore(s.postgres_dsn, positions_of=by_key_name)
    # every record (in order: each moves its partition's clock); the router decodes what it reads
    route_guard = rt.guard("route_analytics", park=False, raw=True)
    stage_guard = rt.guard("aggregate_windows", park=False, raw=True)
    lock = asyncio.Lock()  # the router's batches and the ticks, one at a time
    # a drill fires once per data directory (a worker restarted with it set goes on)
    fired = s.worker_data_dir / rt.role / f"analytics-fault-{s.analytics_fault}"
    fault = ["" if fired.exists() else s.analytics_fault]

    async def drill(point: str) -> None:
        """End the worker here (status 137, as kill -9) if the drill `point` is set."""
        if fault[0] != point:
            return
        fault[0] = ""
        fired.write_text(f"{point} fired at {time.time():.3f}\n")
        await app.producer.flush()
        log.warning("analytics: the drill %s ends this worker", point)
        os._exit(137)

    # --- 1. route ---------------------------------------------------------------------------
    partitions: dict[str, int] = {}  # a contribution's key -> its by-key partition

    def partition_for(key: str) -> int:
        p = partitions.get(key)
        if p is None:
            if len(partitions) >= 100_000:
                partitions.clear()
            p = partitions[key] = partition_of(key, parts)
        return p

    clocks: dict[str, tuple[int, SourceClock]] = {}  # source -> (offset handled, its clock)
    last_seen: dict[str, float] = {}  # source -> monotonic time its last record was handled

    async def ensure_ticks() -> None:
        gen = positions.generation()
        if gen != ticks.generation:
            clocks.clear()  # read again from the table: another process may have moved them
            router_journals.clear()
            mine = [
                clock_of(f"{tp.topic}:{tp.partition}", None)[1].watermark
                for tp in app.assignor.assigned_actives()
                if tp.topic in src_topics
            ]
            await asyncio.to_thread(ticks.read, min(mine, default=-1))
            ticks.generation = gen
            clocks.clear()
            router_journals.clear()

    def clock_of(source: str, event: faust.EventT[Any] | None) -> tuple[int, SourceClock]:
        known = clocks.get(source)
        if known is None:
            saved = router_get(int(source.rpartition(":")[2]), f"clock|{source}", event)
            offset, wm = (-1, -1) if saved is None else (int(saved[0]), int(saved[1]))
            known = clocks[source] = (offset, SourceClock(wm))
        return known

    # the router table's journal, as the window stage's (`streams.analytics.Journal`): per
    # changelog partition (a source partition number) one record per batch holding the orders'
    # states and clocks it changed; an entry of its own per key only at a checkpoint
    router_journals: dict[int, Journal] = {}

    def router_journal(k: int, event: faust.EventT[Any] | None) -> Journal:
        known = router_journals.get(k)
        if known is None:
            if event is not None:
                in_partition_of(event)
            marker = router_table.get(f"@:{k}")
            if not isinstance(marker, dict):
                marker = None
            last = int(marker["n"]) if marker else 0
            records = []
            n = last + 1
            while (record := router_table.get(journal_key(k, n))) is not None:
                records.append((journal_key(k, n), record))
                n += 1
            _, _, known = replay({}, marker, records)
            if marker and "from" in marker:
                # the last checkpoint's records (from..n) a crash may have left: never read
                # (the journal starts above n), deleted by the next write
                known.stale = list(range(int(marker["from"]), last + 1))
            router_journals[k] = known
        return known

    def router_get(k: int, key: str, event: faust.EventT[Any] | None) -> Any:
        """The router table's value of `key` (changelog partition `k`): its journal's first."""
        journal = router_journal(k, event)
        if key in journal.pending:
            return journal.pending[key]
        if event is not None:
            in_partition_of(event)
        return router_table.get(key)

    def router_write(writes: dict[int, tuple[dict[str, Any], faust.EventT[Any]]]) -> None:
        """Per changelog partition, one journal record of `writes` (and at times a checkpoint,
        one partition's per call)."""
        checkpointed = False
        for k, (values, event) in writes.items():
            journal = router_journal(k, event)
            in_partition_of(event)
            for n in journal.stale:
                if journal_key(k, n) in router_table:
                    del router_table[journal_key(k, n)]
            journal.stale = []
            ops, half = journal.batch(
                k,
                {},
                values,
                keys=CHECKPOINT_KEYS,
                records=CHECKPOINT_RECORDS,
                defer=checkpointed,
            )
            checkpointed = checkpointed or half is not None
            in_partition_of(event)
            for key, value in ops:
                if value is None:
                    if key in router_table:
                        del router_table[key]
                else:
                    router_table[key] = value

    def mark(out: Bundles, source: str, offset: int, index: int, wm: int) -> None:
        out.add_to_all({"m": source, "w": wm, "o": offset, "i": index}, wm)

    def apply_ticks(source: str, low: int, high: int, clock: SourceClock, out: Bundles) -> None:
        """Grant the ticks following offsets in [low, high]; their marks into `out`."""
        for follows, wm in ticks.between(source, low, high):
            before = clock.watermark
            clock.grant(wm)
            if closes_between(graces, before, clock.watermark):
                mark(out, source, follows, TICK_INDEX + wm, clock.watermark)

    def shipped(out: Bundles) -> list[Any]:
        return [
            app.producer.send(
                by_key_name, BUNDLE_KEY, value, partition=p, timestamp=ts / 1000, headers=[]
            )
            for p, value, ts in out.take()
        ]

    async def send_in_order(sends: list[Any]) -> None:
        futures = [await f for f in sends]  # queued in order (one partition: kept in order)
        await asyncio.gather(*futures)  # delivered before the table says "handled"

    async def decoded(r: Record) -> dict[str, Any] | None:
        """The event of a record the router reads (None: another type, or bytes that do not
        decode: the projections dead-letter those)."""
        try:
            sid = rt.decoder.schema_id(r.value)
            if rt.decoder.needs(sid):
                await asyncio.to_thread(rt.decoder.load, sid)  # registry down: retried
            if rt.decoder.type_of(sid) not in ROUTED:
                return None
            return rt.decoder.decode(r.value)
        except (UndecodableRecord, UnknownSchema):
            return None

    async def route(records: list[Record]) -> list[Rejection]:
        try:
            try:
                await ensure_ticks()
            except Exception as exc:  # noqa: BLE001 - Kafka: retried as a dependency down
                raise DependencyDown(f"reading {ticks.topic}: {type(exc).__name__}: {exc}") from exc
            # a worker expelled from its group (paused past its session) routes nothing
            await fence_check(app, (r.source for r in records), "analytics/route_analytics")
            await route_records(records)
        except BaseException:
            clocks.clear()  # what the table holds is the truth: read it again
            router_journals.clear()
            raise
        return []

    async def route_records(records: list[Record]) -> None:
        out = Bundles(parts)
        orders: dict[str, tuple[OrderSales | None, faust.EventT[Any]]] = {}
        touched: dict[str, faust.EventT[Any]] = {}
        for r in records:
            source = f"{r.topic}:{r.partition}"
            handled, clock = clock_of(source, r.source)
            if r.offset <= handled:
                continue  # handled before a crash (the table is ahead of the committed offset)
            apply_ticks(source, handled, r.offset - 1, clock, out)
            touched[source] = r.source
            last_seen[source] = time.monotonic()
            ev = await decoded(r)
            if ev is None:
                # not read, but its time (occurred_at, the record's timestamp) moves the clock
                before = clock.watermark
                clock.stamp(r.timestamp_ms)
                if closes_between(graces, before, clock.watermark):
                    mark(out, source, r.offset, 0, clock.watermark)
                clocks[source] = (r.offset, clock)
                continue
            state: OrderSales | None = None
            oid = ""
            if ev["type"] != "analytics.tracked":
                oid = str(ev["data"]["order_id"])
                if oid in orders:
                    state = orders[oid][0]
                else:
                    saved = router_get(r.partition, f"order|{oid}", r.source)
                    state = None if saved is None else OrderSales.from_json(saved)
            new, made = contributions(ev, state)
            if oid and new is not state:
                orders[oid] = (new, r.source)
            seen, _ = clock.stamp(_ms(ev["occurred_at"]))
            passed = clock.watermark if closes_between(graces, seen, clock.watermark) else None
            eid, etype = str(ev["id"]), str(ev["type"])
            for i, c in enumerate(made):
                item = {
                    "a": c.aggregate,
                    "k": c.key,
                    "t": c.at_ms,
                    "v": c.values,
                    "w": seen,
                    "s": source,
                    "e": eid,
                    "y": etype,
                    "o": r.offset,
                    "i": i,
                }
                out.add(partition_for(f"{c.aggregate}:{c.key}"), item, c.at_ms)
            if passed is not None:
                mark(out, source, r.offset, len(made), passed)
            clocks[source] = (r.offset, clock)
        sends = shipped(out)
        forwarded = bool(sends)
        await send_in_order(sends)
        if forwarded:
            # forwarded, not recorded: a restart forwards the same records again (copies)
            await drill("router-after-forward")
        # the orders' states and the clocks of a source partition number in one journal
        # record: a crash never leaves a clock ahead of an order's state (written only by a
        # member of the group's current generation)
        await fence_check(app, touched.values(), "analytics/route_analytics")
        writes: dict[int, tuple[dict[str, Any], faust.EventT[Any]]] = {}
        for oid, (state, event) in orders.items():
            if state is not None:
                k = event.message.partition
                writes.setdefault(k, ({}, event))[0][f"order|{oid}"] = state.as_json()
        for source, event in touched.items():
            offset, clock = clocks[source]
            k = event.message.partition
            writes.setdefault(k, ({}, event))[0][f"clock|{source}"] = [offset, clock.watermark]
        router_write(writes)

    async def route_batch(records: list[Record]) -> None:
        async with lock:
            await route_guard.process(records, route)
            # a record dead-lettered (settled, never forwarded) still moves its partition's
            # position: a tick follows the partition's last offset
            top: dict[str, Record] = {}
            for r in records:
                source = f"{r.topic}:{r.partition}"
                if source not in top or r.offset > top[source].offset:
                    top[source] = r
            moved: dict[int, tuple[dict[str, Any], faust.EventT[Any]]] = {}
            for source, r in top.items():
                known = clocks.get(source)
                if known is not None and known[0] < r.offset:
                    clocks[source] = (r.offset, known[1])
                    value = [r.offset, known[1].watermark]
                    moved.setdefault(r.partition, ({}, r.source))[0][f"clock|{source}"] = value
            try:
                router_write(moved)
            except BaseException:
                clocks.clear()  # what the table holds is the truth: read it again
                router_journals.clear()
                raise

    @app.agent(raw_topic(app, *src_topics), name="route_analytics")
    async def route_analytics(stream: faust.StreamT[Any]) -> None:
        async for events, records in raw_batches(stream, size, within):
            await settle(events, route_batch(records))

    # --- 2. tick quiet source partitions -------------------------------------------------------
    idle = s.analytics_tick_idle_s

    @app.timer(0.25)  # type: ignore[untyped-decorator]  # faust's decorators are untyped
    async def tick_quiet_sources() -> None:
        # waits for the router's batch in progress (skipping instead delayed the ticks of a
        # busy router by seconds: final results 2.4 s late at 200 events/s)
        async with lock:
            if settling(app):
                return  # the router table may not be restored yet: no clock read now
            try:
                await ensure_ticks()
            except Exception as exc:  # noqa: BLE001 - Kafka not reachable: next time
                log.warning("analytics: reading the ticks topic failed: %s", exc)
                return
            generation = ticks.generation
            now_mono, now_ms = time.monotonic(), int(time.time() * 1000)
            for tp in app.assignor.assigned_actives():
                if tp.topic not in src_topics:
                    continue
                source = f"{tp.topic}:{tp.partition}"
                handled, clock = clock_of(source, None)
                # ticks of the topic at this offset (a restart): granted before deciding
                out = Bundles(parts)
                apply_ticks(source, handled, handled, clock, out)
                await send_in_order(shipped(out))
                end = highwater(app, tp)
                if end is None or handled != end - 1:
                    continue  # not read to its end (or no fetch yet)
                if now_mono - last_seen.get(source, 0.0) < idle:
                    continue
                grant = now_ms - now_ms % 1000
                if grant <= clock.watermark or not closes_between(graces, clock.watermark, grant):
                    continue
                if settling(app) or positions.generation() != generation:
                    return  # the partitions moved meanwhile: the next owner ticks them
                tick = {"source": source, "follows": handled, "watermark": grant}
                await send_in_order(
                    [
                        app.producer.send(
                            ticks_topic(ns),
                            source.encode(),
                            orjson.dumps(tick),
                            partition=0,
                            timestamp=grant / 1000,
                            headers=[],
                        )
                    ]
                )
                TICKS.inc()
                ticks.add(source, handled, grant)
                # granted (its marks sent); the clock's entry follows with the next record
                apply_ticks(source, handled, handled, clock, out)
                await send_in_order(shipped(out))

    # --- 3. aggregate --------------------------------------------------------------------------
    stage: dict[int, StagePartition] = {}
    flush_items = s.analytics_flush_items
    journals: dict[int, Journal] = {}
    stage_gen: list[int | None] = [-2]
    codecs: dict[str, tuple[int, EventCodec]] = {}

    async def codec(output: Output) -> tuple[int, EventCodec]:
        known = codecs.get(output.suffix)
        if known is None:
            sid = await asyncio.to_thread(
                rt.registry.register_subject, output.subject(ns), output.schema
            )
            known = codecs[output.suffix] = (sid, EventCodec(output.schema))
        return known

    # the final results and late events: librdkafka's producer (faust's, in Python, cost a
    # tenth of the role's CPU for about one final result per event in the benchmark)
    outputs: list[EventProducer] = []
    closing: list[bool] = []

    async def publish(records: list[OutRecord]) -> None:
        """Write `records`; return once Kafka acknowledged every one (DependencyDown if not:
        the batch is done again, the same records with the same ids)."""
        if not records:
            return
        if closing:
            raise DependencyDown("the worker is stopping: the analytics outputs are closed")
        if not outputs:
            producer = EventProducer(
                s.kafka_bootstrap,
                security=s.kafka_security,
                delivery_timeout_ms=OUTPUT_DELIVERY_TIMEOUT_MS,
                linger_ms=5,
                max_message_bytes=1 << 20,
            )
            producer.start(asyncio.get_running_loop())
            outputs.append(producer)
        results = await outputs[0].send(records)
        failed = [r for r in results if not isinstance(r, Delivery)]
        if failed:
            if any(err.fatal() for err in failed):
                # an idempotent producer that hit a fatal error is unusable: the next try
                # starts a new one
                dead = outputs.pop()
                await asyncio.to_thread(dead.close, 5.0)
            raise DependencyDown(f"{len(failed)} analytics output records not written: {failed[0]}")

    @app.on_before_shutdown.connect
    async def close_outputs(_app: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        closing.append(True)  # a batch still running is done again by the next worker
        for producer in outputs:
            await asyncio.to_thread(producer.close)
        outputs.clear()

    def put(key: str, value: Any) -> None:
        if value is None:
            if key in table:
                del table[key]
        else:
            table[key] = value

    def load(p: int, event: faust.EventT[Any]) -> StagePartition:
        """Partition `p`'s state from the table: its entries, then its journal's records."""
        in_partition_of(event)
        marker = table.get(f"@:{p}")
        if isinstance(marker, dict) and not marker.get("done", True):
            # a marker "not done" (written before journals): its entries completed first
            for key, value in marker["writes"].items():
                put(key, value)
            marker = {k: v for k, v in marker.items() if k != "writes"} | {"done": True}
            table[f"@:{p}"] = marker
        w_prefix, j_prefix = f"w:{p}:", f"j:{p}:"
        entries: dict[str, Any] = {}
        records: list[tuple[str, Any]] = []
        for k, v in table.items():
            if k.startswith(w_prefix):
                entries[k] = v
            elif k.startswith(j_prefix) and v:
                records.append((k, v))
        states, last, journals[p] = replay(
            entries, marker if isinstance(marker, dict) else None, records
        )
        part = StagePartition(kinds, sources, last)
        part.load((k[len(w_prefix) :], v) for k, v in states.items() if v)
        part.take_changes()
        return part

    async def aggregate(records: list[Record]) -> list[Rejection]:
        gen = positions.generation()
        if gen != stage_gen[0]:
            stage.clear()  # read again from the table: another process may have moved it
            stage_gen[0] = gen
        touched: dict[int, faust.EventT[Any]] = {}
        late: list[LateEvent] = []
        taken = 0
        try:
            for r in records:
                p = r.partition
                part = stage.get(p)
                if part is None:
                    part = stage[p] = load(p, r.source)
                if r.offset <= part.offset:
                    continue  # applied before a crash
                touched[p] = r.source
                routed = r.headers.get(ROUTED_FROM)
                for item in items_of(r.value, None if routed is None else routed.decode()):
                    try:
                        got = part.take(item)
                    except (KeyError, ValueError, TypeError, AttributeError) as exc:
                        # one item, not its whole bundle: the others apply
                        BAD_ITEMS.inc()
                        log.error(
                            "analytics: by-key %d@%d: an item the stage cannot read (%s: %s), "
                            "skipped: %s",
                            p,
                            r.offset,
                            type(exc).__name__,
                            exc,
                            orjson.dumps(item)[:500].decode(errors="replace"),
                        )
                        continue
                    if got is None:
                        COPIES.inc()
                        continue
                    late += got
                    taken += 1
                    if taken >= flush_items or (
                        taken % 100 == 0
                        and sum(stage[q].changed_keys() for q in touched) >= FLUSH_KEYS
                    ):
                        # in the middle of a bundle: the marker keeps this record's offset
                        # unapplied, the positions applied skip its first items on a restart
                        await emit(touched, late)
                        touched, late, taken = {p: r.source}, [], 0
                part.offset = r.offset
            await emit(touched, late)
        except BaseException:
            for p in touched:
                stage.pop(p, None)  # what the table holds is the truth: read it again
            raise
        return []

    async def emit(touched: dict[int, faust.EventT[Any]], late: list[LateEvent]) -> None:
        # a worker expelled from its group (paused past its session) writes no window
        await fence_check(app, touched.values(), "analytics/aggregate_windows")
        finals: list[Final] = []
        entries: dict[int, dict[str, Any]] = {}
        w = AnalyticsWrite([], [], [], [], [], {})
        now = time.time()
        for p in touched:
            part = stage[p]
            closed = part.close()
            finals += closed
            ent, dirty, cells, changed = part.take_changes()
            entries[p] = ent
            w.watermarks[p] = part.watermark
            w.positions[p] = (part.offset, dict(part.routed))
            if part.watermark >= 0:
                WATERMARK.labels(str(p)).set(part.watermark / 1000)
            rows_of(kinds, part, dirty, changed, cells, closed, w)
            for f in closed:
                FINALS.labels(f.window).inc()
                due = f.end_ms + kinds[f.window].grace_ms
                FINAL_DELAY.observe(max(0.0, now - due / 1000))
        for x in late:
            lt = x.late
            LATE.labels(lt.window).inc()
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
        await store.write(w)
        sends: list[OutRecord] = []
        if finals:
            sid, wc = await codec(ANALYTICS_WINDOW)
            topic = ANALYTICS_WINDOW.topic(ns)
            for f in finals:
                value = wc.encode(sid, final_datum(f))
                sends.append(OutRecord(topic, f"{f.window}:{f.key}".encode(), value, f.end_ms))
        if late:
            sid, lc = await codec(ANALYTICS_LATE)
            for x in late:
                lt = x.late
                value = lc.encode(
                    sid,
                    {
                        "id": late_id(x.event_id, lt.window, lt.key),
                        "event_id": x.event_id,
                        "event_type": x.event_type,
                        "aggregate": lt.window,
                        "key": lt.key,
                        "window_start": _dt(lt.start_ms),
                        "window_end": _dt(lt.end_ms),
                        "occurred_at": _dt(lt.event_ms),
                        "watermark": _dt(lt.watermark_ms),
                        "values": x.values,
                    },
                )
                sends.append(
                    OutRecord(
                        ANALYTICS_LATE.topic(ns),
                        f"{lt.window}:{lt.key}".encode(),
                        value,
                        lt.event_ms,
                    )
                )
        await publish(sends)
        await fence_check(app, touched.values(), "analytics/aggregate_windows")
        # per partition, in its changelog partition: the batch's journal record (its state
        # and positions: one record), and at times a checkpoint
        checkpointed = False
        for p, event in touched.items():
            in_partition_of(event)
            marker = stage[p].marker()
            writes = {f"w:{p}:{k}": v for k, v in entries[p].items()}
            ops, half = journals[p].batch(
                p,
                marker,
                writes,
                keys=CHECKPOINT_KEYS,
                records=CHECKPOINT_RECORDS,
                force=bool(writes) and fault[0] == "between-state-and-marker",
                defer=checkpointed,  # one partition's checkpoint per batch
            )
            checkpointed = checkpointed or half is not None
            for i, (key, value) in enumerate(ops):
                if i == half:
                    # the batch's state is written, half its checkpoint's entries and the
                    # marker are not: a restart must complete them from the journal
                    await drill("between-state-and-marker")
                put(key, value)

    @app.agent(raw_topic(app, by_key_name, partitions=parts), name="aggregate_windows")
    async def aggregate_windows(stream: faust.StreamT[Any]) -> None:
        # records of bundles: a batch's state is written every `flush_items` items
        async for events, records in raw_batches(stream, size, within):
            await settle(events, stage_guard.process(records, aggregate))


def rows_of(
    kinds: Mapping[str, Tumbling | Hopping | Sessions],
    part: StagePartition,
    dirty: dict[str, set[str]],
    changed: dict[str, dict[str, dict[int, dict[str, int]]]],
    cells: dict[str, list[tuple[str, int, dict[str, int]]]],
    closed: list[Final],
    w: AnalyticsWrite,
) -> None:
    """The PostgreSQL rows of a window stage batch: the open windows and panes that changed and
    the open sessions of the keys that changed (current), the cells and sessions closed (final).
    An open cell that did not change keeps the row written when it last did."""
    for kind, period in PERIODS.items():
        tk = kinds[kind]
        assert isinstance(tk, Tumbling)
        for key, opened in changed[kind].items():
            for start, values in opened.items():
                w.sales.append(SalesWindow(period, key, start, tk.bounds(start)[1], values, False))
        for key, start, values in cells[kind]:
            w.sales.append(SalesWindow(period, key, start, tk.bounds(start)[1], values, True))
    for kind in ("trending", "search_terms"):
        for key, opened in changed[kind].items():
            for pane, values in opened.items():
                w.panes.append(PaneRow(kind, key, pane, values, False))
        for key, pane, values in cells[kind]:
            w.panes.append(PaneRow(kind, key, pane, values, True))
    sessions = part.windows["sessions"]
    gap = kinds["sessions"]
    assert isinstance(gap, Sessions)
    w.sessions_changed += sorted(dirty["sessions"])
    for key in dirty["sessions"]:
        for sess in sessions.sessions.get(key, []):
            w.sessions.append(_session_row(key, sess.first_ms, sess.last_ms, sess.counts, False))
    for f in closed:
        if f.window == "sessions":
            w.sessions.append(
                _session_row(f.key, f.start_ms, f.end_ms - gap.gap_ms, f.values, True)
            )


def closes_between(graces: list[int], before: int, after: int) -> bool:
    """Whether a window may close between watermarks `before` and `after`: a minute boundary
    plus a window kind's grace (`graces`: each modulo a minute) lies in (before, after]. Hours,
    days and panes end on minutes; a session ends anywhere and closes at the next such point.
    Marks and ticks are sent only then: a source partition's watermark reaches the stage at
    most a few times a minute of event time, however dense its events (a replay of old events
    would otherwise send one mark per event)."""
    if after <= before:
        return False
    if before < 0:
        return True
    for g in graces:
        k = (before - g) // MINUTE_MS + 1  # the first point k * 60 s + g above `before`
        if k * MINUTE_MS + g <= after:
            return True
    return False


def final_datum(f: Final) -> dict[str, Any]:
    """A final result as its Avro record (`schemas/outputs/analytics_window.avsc`)."""
    return {
        "id": window_id(f.window, f.key, f.start_ms),
        "aggregate": f.window,
        "key": f.key,
        "window_start": _dt(f.start_ms),
        "window_end": _dt(f.end_ms),
        "values": {k: int(v) for k, v in f.values.items()},
    }


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _session_row(key: str, first: int, last: int, values: Any, final: bool) -> SessionRow:
    day = datetime.fromtimestamp(first / 1000, UTC).astimezone(ZONE).date().isoformat()
    counts = {k: int(v) for k, v in values.items() if k != "duration_ms"}
    return SessionRow(key, first, last, day, counts, final)
