"""stock: the stock role (agent `reserve_stock`). Stock-affecting events are re-keyed by shop id,
so one worker owns every product of an order; a changelog-backed table (RocksDB) holds the
stock; the decisions are `streams.stock_book.StockBook`'s.

Exactly once under at-least-once delivery, per batch of the by-shop topic:
1. every record is decided in order against the table plus the batch's pending writes (nothing is
   written yet); a record at or below its partition's applied-offset marker is skipped (it was
   applied before a crash), and so is a copy the router forwarded again (its router read
   position, header `x-routed-from`, at or below the highest the marker holds for that router
   input partition);
2. the derived events (deterministic ids) are produced and their delivery awaited;
3. only then, per partition: the marker carrying the offset and every entry ("not done"), the
   entries, the marker "done". The changelog keeps a prefix of these after a crash (one partition,
   an idempotent producer); a marker "not done" is completed from its own copy of the entries
   before the partition's next record is decided. Faust flushes the changelog before it commits
   the offsets.
A crash before 3 redoes the same decisions (same ids: downstream stores dedupe by id); a crash
during or after 3 finds the marker and skips.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import faust
from prometheus_client import Counter

from schemas.catalog import TOPICS
from streams import tracing
from streams.agents._batches import fence_check, raw_batches, raw_topic, settle
from streams.reliability import (
    SOURCE_HEADERS,
    Permanent,
    Record,
    Rejection,
    redrive_topic,
)
from streams.stock_book import Derived, StockBook
from streams.transport import in_partition_of

if TYPE_CHECKING:
    from streams.runtime import Runtime

__all__ = ["ROUTED", "install", "routed_copy"]

#: what the stock role reads (its own derived events are not routed back)
ROUTED = frozenset(
    {
        "product.created",
        "product.stock_set",
        "product.stock_adjusted",
        "order.created",
        "order.cancelled",
        "order.status_changed",
        "order.refunded",
    }
)
TICK = "x-tick"
#: the router's own read position of a routed record: "<topic>:<partition>:<offset>"
ROUTED_FROM = "x-routed-from"
COPIES = Counter(
    "mohallamart_stock_routed_copies_skipped_total",
    "Records the stock role's router forwarded again (after a rebalance or a crash) that the "
    "reserve step skipped, per router input partition",
    ["source"],
)


def routed_copy(headers: Mapping[str, bytes], routed: dict[str, int]) -> bool:
    """Whether a by-shop record is a copy the router forwarded again (after a rebalance or a
    crash it forwards every record since its last commit, however many came since), by its
    router read position (header `x-routed-from`) against `routed`, the highest position applied
    per router input partition, kept in the partition's marker (and raised here for a record
    that is not a copy). One router input partition's records reach a by-shop partition in its
    order (the router forwards in order, on an idempotent producer), and a router that starts
    over starts at a committed offset, whose records were delivered before it: so a position at
    or below the highest applied is a copy of a record this partition has had."""
    raw = headers.get(ROUTED_FROM)
    if raw is None:  # a tick, or a record routed before the header existed
        return False
    source, _, offset = raw.decode().rpartition(":")
    if int(offset) <= routed.get(source, -1):
        COPIES.labels(source).inc()
        return True
    routed[source] = int(offset)
    return False


class _Pending(MutableMapping[str, Any]):
    """The table as one record sees it: its own writes, then the batch's, then the table."""

    def __init__(self, table: Any, batch: dict[str, Any], event: faust.EventT[Any]) -> None:
        self.table, self.batch, self.event = table, batch, event
        self.writes: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        for layer in (self.writes, self.batch):
            if key in layer:
                return layer[key]
        in_partition_of(self.event)  # read this record's partition
        return self.table[key]

    def __contains__(self, key: object) -> bool:
        try:
            self[str(key)]
        except KeyError:
            return False
        return True

    def __setitem__(self, key: str, value: Any) -> None:
        self.writes[key] = value

    def __delitem__(self, key: str) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[str]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


def install(rt: Runtime) -> None:
    from streams.app import stock_by_shop_topic

    app: faust.App = rt.app
    s = rt.settings
    size, within = s.worker_batch_size, s.worker_batch_window_s
    by_shop_name = stock_by_shop_topic(s)
    wait_ms = int(s.stock_wait_unknown_product_s * 1000)
    table = app.Table(
        "stock",
        default=None,
        partitions=s.stock_partitions,
        schema=faust.Schema(
            key_type=str, value_type=None, key_serializer="json", value_serializer="json"
        ),
    )
    by_shop = raw_topic(app, by_shop_name, partitions=s.stock_partitions)
    # the projections read (and dead-letter) undecodable bytes of these topics
    # in-line retries, not parking: the table's applied-offset marker would skip a record
    # parked below it after a crash, and the by-shop topic keeps each shop's events in order
    # (only the types it routes are decoded)
    route_guard = rt.guard("route_stock_events", owns_decode=False, park=False, types=ROUTED)
    reserve_guard = rt.guard("reserve_stock", park=False)

    # --- 1. re-key by shop id -----------------------------------------------------------------
    async def forward(records: list[Record]) -> list[Rejection]:
        futures = []
        for r in records:
            ev = r.event
            if ev["type"] not in ROUTED:
                continue
            topic, partition, offset = r.origin
            headers = [
                (k, v)
                for k, v in r.headers.items()
                if k not in SOURCE_HEADERS and k != tracing.TRACEPARENT
            ]
            headers += [
                tracing.child_of(r),  # the by-shop copy: a child of this routing
                ("x-source-topic", topic.encode()),
                ("x-source-partition", str(partition).encode()),
                ("x-source-offset", str(offset).encode()),
                # where this router read it: the reserve step knows a copy forwarded again by it
                (ROUTED_FROM, f"{r.topic}:{r.partition}:{r.offset}".encode()),
            ]
            futures.append(
                await app.producer.send(
                    by_shop_name,
                    str(ev["data"]["shop_id"]).encode(),
                    r.value,
                    partition=None,
                    timestamp=r.timestamp_ms / 1000,
                    headers=headers,
                )
            )
        await asyncio.gather(*futures)
        return []

    sources = [TOPICS["product"].name, TOPICS["order"].name]

    @app.agent(raw_topic(app, *sources, *map(redrive_topic, sources)), name="route_stock_events")
    async def route_stock_events(stream: faust.StreamT[Any]) -> None:
        async for events, records in raw_batches(stream, size, within):
            await settle(events, route_guard.process(records, forward))

    # --- 2. decide, emit, then record ---------------------------------------------------------
    def _in(event: faust.EventT[Any]) -> None:
        """Table reads and writes go to `event`'s partition (its changelog partition too)."""
        in_partition_of(event)

    def _heal(p: int, event: faust.EventT[Any]) -> dict[str, Any]:
        """The partition's marker; if its batch's entries were not all written (a crash in the
        middle: the changelog kept a prefix of them), write them now."""
        _in(event)
        marker = table.get(f"@:{p}")
        if not isinstance(marker, dict):  # none yet (or a bare offset)
            marker = {"offset": -1 if marker is None else int(marker), "done": True}
        if not marker["done"]:
            for key, value in marker["writes"].items():
                table[key] = value
            marker = {"offset": marker["offset"], "done": True, "routed": marker.get("routed")}
            table[f"@:{p}"] = marker
        return {**marker, "routed": dict(marker.get("routed") or {})}

    async def reserve(records: list[Record]) -> list[Rejection]:
        # a worker expelled from its group (paused past its session) decides nothing
        await fence_check(app, (r.source for r in records), "stock/reserve_stock")
        now_ms = int(time.time() * 1000)
        batch: dict[str, Any] = {}
        markers: dict[int, dict[str, Any]] = {}
        # partition -> (its last event in the batch, its last offset, its entries)
        writes: dict[int, tuple[faust.EventT[Any], int, dict[str, Any]]] = {}
        derived: list[tuple[Derived, Record]] = []  # each with the record that caused it
        rejected: list[Rejection] = []
        for r in records:
            p = r.partition
            if p not in markers:
                markers[p] = _heal(p, r.source)
            if r.offset <= markers[p]["offset"]:
                continue  # applied before a crash: nothing again
            if routed_copy(r.headers, markers[p]["routed"]):
                continue  # forwarded again by the router: applied already
            view = _Pending(table, batch, r.source)
            book = StockBook(view, wait_unknown_ms=wait_ms)
            try:
                if r.event.get("type") == "~tick":
                    out = book.expire(p, now_ms)
                else:
                    out = book.apply(r.event, p, now_ms)
            except Permanent as exc:
                rejected.append(Rejection(r, str(exc), "StockRuleViolation"))
                view.writes.clear()
                out = []
            batch.update(view.writes)
            entries = writes[p][2] if p in writes else {}
            entries.update(view.writes)
            writes[p] = (r.source, r.offset, entries)
            derived.extend((d, r) for d in out)
        futures = []
        for d, cause in derived:
            topic, value = await rt.encode(d.type, d.id, d.occurred_at, d.trace_id, d.data)
            futures.append(
                await app.producer.send(
                    topic,
                    d.key.encode(),
                    value,
                    partition=None,
                    timestamp=d.occurred_at.timestamp(),
                    headers=[
                        ("x-trace-id", d.trace_id.encode()),
                        tracing.derived(cause, d.trace_id, d.id),
                    ],
                )
            )
        await asyncio.gather(*futures)  # delivered before the table says "applied"
        # ... and writes no state unless still a member (a pause may have fallen in between)
        await fence_check(app, (r.source for r in records), "stock/reserve_stock")
        # Per partition, three steps in its changelog partition (kept in order by the idempotent
        # producer, so a crash leaves a prefix): the marker with every entry ("not done"), the
        # entries, the marker "done". A prefix without "done" is healed from the marker.
        for p, (event, offset, entries) in writes.items():
            _in(event)
            routed = markers[p]["routed"]
            table[f"@:{p}"] = {"offset": offset, "done": False, "writes": entries, "routed": routed}
            for key, value in entries.items():
                table[key] = value
            table[f"@:{p}"] = {"offset": offset, "done": True, "routed": routed}
        return rejected

    @app.agent(by_shop, name="reserve_stock")
    async def reserve_stock(stream: faust.StreamT[Any]) -> None:
        # at most 500: a partition's marker carries its batch's entries in one changelog record
        async for events, records in raw_batches(stream, min(size, 500), within):
            await settle(events, reserve_guard.process(records, reserve))

    # --- 3. orders waiting for an unknown product: a tick per partition that has some ---------
    @app.timer(1.0)  # type: ignore[untyped-decorator]  # faust's decorators are untyped
    async def expire_waiting_orders() -> None:
        book = StockBook(table, wait_unknown_ms=wait_ms)
        for tp in app.assignor.assigned_actives():
            if tp.topic == by_shop_name and book.has_waiting(tp.partition):
                await app.producer.send(
                    by_shop_name,
                    b"~tick",
                    b"",
                    partition=tp.partition,
                    timestamp=None,
                    headers=[(TICK, b"1")],
                )
