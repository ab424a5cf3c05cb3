"""One event's path through the pipeline, from the project's own records (`GET
/v1/events/{id}/trace`).

Nothing here is a log or a tracing backend: each hop is read from what the pipeline keeps anyway.
- acknowledged: the ingest claim (topic, partition, offset), and the record itself read back;
- projected: the entity's row and its version (applied, superseded by a later event, or still
  pending), a refusal, the status change in the audit log;
- stock: the inventory movements it caused (each a derived `product.stock_changed`);
- the order's row when a derived event moved it (accepted or rejected by the stock role);
- notifications: the outbox rows of its trace (recipients masked);
- cache and search: the version the Redis view holds, the document Typesense holds;
- dead letters of its topic naming it (with their stage, class and attempts), and redrives;
- analytics: the windows holding it (an order's: those of its acceptance), and its late reports.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from connectors.kafka import consumer_config
from connectors.postgres import entity_of, version_of
from connectors.redis_cache import ViewCache, cache_key
from connectors.typesense import SearchIndex
from core.settings import KafkaSecurity

__all__ = ["KafkaLookup", "mask", "scrub", "trace"]

Hop = dict[str, Any]
_KIND = {"users": "user", "shops": "shop", "shopkeepers": "shop", "products": "product"}
_SEARCH = {"products": "products", "shops": "shops", "shopkeepers": "shops"}


def mask(recipient: str) -> str:
    """An address as the trace shows it: `p***@example.in`, `+91******345`."""
    if "@" in recipient:
        name, _, domain = recipient.partition("@")
        return f"{name[:1]}***@{domain}"
    if len(recipient) > 5:
        return recipient[:3] + "*" * (len(recipient) - 6) + recipient[-3:]
    return "***"


_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+)")
_DIGITS = re.compile(r"\+?\d[\d ]{6,}\d")


def scrub(text: str | None) -> str | None:
    """An error text as a trace shows it: addresses and phone numbers masked (a provider's
    reply often echoes the number)."""
    if text is None:
        return None
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    return _DIGITS.sub(lambda m: mask(m.group(0).replace(" ", "")), text)[:500]


#: how many dead-letter records one trace reads at most (from the event's acknowledgement on)
DLQ_SCAN_LIMIT = 20_000


class KafkaLookup:
    """Reads one record back by its position, and the dead letters naming an event (blocking:
    run in a thread)."""

    def __init__(
        self,
        bootstrap: str,
        decode: Callable[[bytes], dict[str, Any]],
        *,
        security: KafkaSecurity,
    ) -> None:
        self.bootstrap = bootstrap
        self.decode = decode
        self.security = security

    def _consumer(self) -> Any:
        from confluent_kafka import Consumer

        return Consumer(
            consumer_config(
                self.bootstrap,
                "mohallamart-trace",
                {
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    # a record retention removed: an error, not a wait for new ones
                    "auto.offset.reset": "error",
                    "log_level": 3,
                },
                security=self.security,
            )
        )

    def record(self, topic: str, partition: int, offset: int) -> dict[str, Any] | None:
        from confluent_kafka import TopicPartition

        c = self._consumer()
        try:
            c.assign([TopicPartition(topic, partition, offset)])
            for _ in range(5):
                m = c.poll(1.0)
                if m is None:
                    continue
                if m.error() is not None:
                    return None  # gone (retention), or the partition cannot be read
                if m.offset() == offset:
                    value = m.value()
                    return None if value is None else self.decode(value)
                if (m.offset() or 0) > offset:
                    return None
            return None
        finally:
            c.close()

    def dead_letters(self, topic: str, event_id: str, since: datetime | None = None) -> list[Hop]:
        """The records of `topic` (a dead-letter topic) whose `x-event-id` is `event_id`, from
        `since` on (at most `DLQ_SCAN_LIMIT` records read)."""
        from confluent_kafka import TopicPartition

        c = self._consumer()
        out: list[Hop] = []
        try:
            meta = c.list_topics(topic, timeout=5).topics.get(topic)
            if meta is None or meta.error is not None:
                return out
            ends: dict[int, int] = {}
            starts: dict[int, int] = {}
            for p in meta.partitions:
                low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                if high > low:
                    ends[p], starts[p] = high, low
            if since is not None and starts:
                ms = int(since.timestamp() * 1000)
                found = c.offsets_for_times(
                    [TopicPartition(topic, p, ms) for p in starts], timeout=5
                )
                for tp in found:
                    if tp.offset < 0:  # nothing since: nothing to read there
                        ends.pop(tp.partition, None)
                    else:
                        starts[tp.partition] = max(starts[tp.partition], tp.offset)
            assign = [TopicPartition(topic, p, starts[p]) for p in ends if starts[p] < ends[p]]
            ends = {p: ends[p] for p in ends if starts[p] < ends[p]}
            if not assign:
                return out
            c.assign(assign)
            read = 0
            while ends and read < DLQ_SCAN_LIMIT:
                read += 1
                m = c.poll(5.0)
                if m is None:
                    break
                if m.error() is not None:
                    continue
                p, off = m.partition(), m.offset()
                if p in ends and off is not None and off >= ends[p] - 1:
                    del ends[p]
                raw: list[tuple[str, Any]] = list(m.headers() or [])
                h = {k: (v.decode() if isinstance(v, bytes) else str(v or "")) for k, v in raw}
                if h.get("x-event-id") == event_id:
                    out.append(
                        {
                            "hop": "dead_lettered",
                            "at": h.get("x-first-failure-time"),
                            "topic": topic,
                            "partition": p,
                            "offset": off,
                            "stage": h.get("x-stage"),
                            "error_class": h.get("x-error-class"),
                            "error": scrub(h.get("x-error-message", "")),
                            "attempts": int(h.get("x-attempts") or 0),
                        }
                    )
        finally:
            c.close()
        return out


def _iso(at: Any) -> Any:
    """UTC, so that hops sort by their text."""
    return at.astimezone(UTC).isoformat() if isinstance(at, datetime) else at


#: a row's last commit, where PostgreSQL keeps commit timestamps (NULL elsewhere)
_COMMITTED = (
    "CASE WHEN current_setting('track_commit_timestamp') = 'on' "
    "THEN pg_xact_commit_timestamp({}.xmin) END"
)


Connect = Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]


async def trace(
    connect: Connect,
    event_id: str,
    *,
    kafka: KafkaLookup,
    cache: ViewCache | None = None,
    index: SearchIndex | None = None,
) -> dict[str, Any] | None:
    """Every hop of `event_id` the project's records show, in time order; None if the pipeline
    never acknowledged such an event (within the claims' retention) nor derived it as a stock
    movement. `connect` lends a PostgreSQL connection; none is held while Kafka is read."""
    async with connect() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            'SELECT event_type, status, topic, "partition", "offset", claimed_at, done_at '
            "FROM ingest_claims WHERE event_id = %s::uuid",
            (event_id,),
        )
        claim = await cur.fetchone()
        await cur.execute(
            "SELECT * FROM inventory_movements WHERE event_id = %s::uuid", (event_id,)
        )
        derived_movement = await cur.fetchone()
    hops: list[Hop] = []
    event: dict[str, Any] | None = None
    body: dict[str, Any] = {"event_id": event_id}
    if claim is not None:
        body["type"] = claim["event_type"]
        hops.append(
            {
                "hop": "acknowledged",
                "at": _iso(claim["done_at"] or claim["claimed_at"]),
                "by": "api",
                "status": claim["status"],
                "topic": claim["topic"],
                "partition": claim["partition"],
                "offset": claim["offset"],
            }
        )
        if claim["topic"] is not None and claim["offset"] is not None:
            try:
                event = await asyncio.to_thread(
                    kafka.record, claim["topic"], claim["partition"], claim["offset"]
                )
            except ValueError as exc:  # undecodable (UndecodableRecord), unknown schema
                hops.append({"hop": "unreadable", "at": None, "by": "api", "error": str(exc)})
            if claim["topic"]:
                since = claim["claimed_at"] - timedelta(minutes=1)
                hops.extend(
                    await asyncio.to_thread(
                        kafka.dead_letters, f"{claim['topic']}.dlq", event_id, since
                    )
                )
    elif derived_movement is not None:
        body["type"] = "product.stock_changed"
        hops.append(
            {
                "hop": "derived",
                "at": _iso(derived_movement["occurred_at"]),
                "by": "stock",
                "type": "product.stock_changed",
                "cause_event_id": str(derived_movement["cause_event_id"]),
                "cause_type": derived_movement["cause_type"],
            }
        )
    else:
        return None
    async with connect() as conn:
        if event is not None:
            body.update(
                type=event["type"],
                occurred_at=_iso(event["occurred_at"]),
                trace_id=event.get("trace_id"),
                source=event.get("source"),
            )
            hops.extend(await _projected(conn, event))
            hops.extend(await _notifications(conn, str(event.get("trace_id") or "")))
            if cache is not None:
                hops.extend(await _cached(cache, event))
            if index is not None:
                hops.extend(await _indexed(index, event))
        hops.extend(await _movements(conn, event_id))
        hops.extend(await _redrives(conn, event_id))
        if event is not None:
            hops.extend(await _windows(conn, event))
    hops.sort(key=lambda h: (h.get("at") is None, str(h.get("at") or "")))
    body["hops"] = hops
    return body


async def _projected(conn: psycopg.AsyncConnection[Any], event: dict[str, Any]) -> list[Hop]:
    out: list[Hop] = []
    ent = entity_of(event)
    eid = str(event["id"])
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT error_class, reason, refused_at FROM projection_refusals "
            "WHERE event_id = %s::uuid",
            (eid,),
        )
        refusal = await cur.fetchone()
        if refusal is not None:
            out.append(
                {
                    "hop": "refused",
                    "at": _iso(refusal["refused_at"]),
                    "by": "projections",
                    "error_class": refusal["error_class"],
                    "reason": refusal["reason"],
                }
            )
        if ent is not None and event["type"] != "product.stock_changed":
            table, key_col, key = ent
            await cur.execute(
                f"SELECT version_at, version_id, {_COMMITTED.format('t')} AS "  # noqa: S608
                f"committed_at, to_jsonb(t)->>'status' AS status FROM {table} t "
                f"WHERE {key_col} = %s",  # names from the catalogue
                (key,),
            )
            row = await cur.fetchone()
            mine = version_of(event)
            theirs = None if row is None else (row["version_at"], row["version_id"])
            # the row first: a refused event redriven after the fix is applied, its refusal
            # (still listed above) history
            if theirs is not None and theirs == mine:
                state = "applied"
            elif theirs is not None and theirs > mine:
                state = "superseded by a later event"
            elif refusal is not None:
                state = "refused"
            elif row is None:
                state = "not applied"
            else:
                state = "not applied yet"
            if refusal is None or row is not None:
                out.append(
                    {
                        "hop": "projected",
                        "at": _iso(row["committed_at"]) if row and state == "applied" else None,
                        "by": "projections",
                        "table": table,
                        "key": key,
                        "state": state,
                        "row_version": None
                        if row is None
                        else f"{row['version_at'].isoformat()}/{row['version_id']}",
                        "row_status": None if row is None else row["status"],
                    }
                )
        await cur.execute(
            "SELECT entity_type, entity_id, from_status, to_status, recorded_at FROM audit_log "
            "WHERE event_id = %s::uuid",
            (eid,),
        )
        for a in await cur.fetchall():
            out.append(
                {
                    "hop": "status_changed",
                    "at": _iso(a["recorded_at"]),
                    "by": "projections",
                    "entity": f"{a['entity_type']} {a['entity_id']}",
                    "from": a["from_status"],
                    "to": a["to_status"],
                }
            )
        if event["type"].startswith("order."):
            await cur.execute(
                "SELECT status, status_reason_code, version_id, "
                f"{_COMMITTED.format('orders')} AS committed_at FROM orders WHERE order_id = %s",
                (str(event["data"].get("order_id")),),
            )
            order = await cur.fetchone()
            if order is not None and str(order["version_id"]) != eid:
                out.append(
                    {
                        "hop": "order_now",
                        "at": _iso(order["committed_at"]),
                        "by": "projections",
                        "status": order["status"],
                        "reason_code": order["status_reason_code"],
                        "moved_by_event": str(order["version_id"]),
                    }
                )
    return out


#: the window start (in SQL, of a time `%(t)s`) of each sales period: UTC minutes, Asia/Kolkata
#: hours and days (as the analytics role's windows)
_PERIOD_START = {
    "1m": "date_trunc('minute', %(t)s::timestamptz)",
    "1h": "date_trunc('hour', %(t)s::timestamptz AT TIME ZONE 'Asia/Kolkata') "
    "AT TIME ZONE 'Asia/Kolkata'",
    "1d": "date_trunc('day', %(t)s::timestamptz AT TIME ZONE 'Asia/Kolkata') "
    "AT TIME ZONE 'Asia/Kolkata'",
}
_PANE = "to_timestamp(floor(extract(epoch FROM %(t)s::timestamptz) / 300) * 300)"


async def _windows(conn: psycopg.AsyncConnection[Any], event: dict[str, Any]) -> list[Hop]:
    """The analytics windows holding the event (its row as it is now: current or final), and
    its late reports. An order counts in the sales windows once accepted: for an order's own
    events, the windows of its acceptance (the stock role's `order.accepted`). Whether the
    event itself is in a window's values is not recorded; a late report says it is not."""
    out: list[Hop] = []
    eid, t, d = str(event["id"]), event["type"], event["data"]
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT aggregate, key, window_start, window_end, watermark, recorded_at "
            "FROM analytics_late WHERE event_id = %s",
            (eid,),
        )
        for r in await cur.fetchall():
            out.append(
                {
                    "hop": "late",
                    "at": _iso(r["recorded_at"]),
                    "by": "analytics",
                    "window": r["aggregate"],
                    "key": r["key"],
                    "window_start": _iso(r["window_start"]),
                    "window_end": _iso(r["window_end"]),
                    "watermark": _iso(r["watermark"]),
                }
            )
        at: Any = event["occurred_at"]
        via: str | None = None
        sales: str | None = None
        products: list[str] = []
        if t == "analytics.tracked":
            await cur.execute(
                "SELECT session_id, first_at, last_at, events, final, updated_at "
                "FROM analytics_sessions WHERE session_id = %s AND first_at <= %s "
                "AND last_at >= %s",
                (str(d.get("session_id")), at, at),
            )
            for r in await cur.fetchall():
                out.append(
                    {
                        "hop": "window",
                        "at": _iso(r["updated_at"]),
                        "by": "analytics",
                        "window": "sessions",
                        "key": r["session_id"],
                        "window_start": _iso(r["first_at"]),
                        "window_end": _iso(r["last_at"]),
                        "values": {"events": r["events"]},
                        "final": r["final"],
                    }
                )
            return out
        if t == "order.created":
            # counted when accepted: the acceptance's time and shop
            await cur.execute(
                "SELECT event_id, occurred_at FROM audit_log WHERE entity_type = 'order' "
                "AND entity_id = %s AND event_type = 'order.accepted'",
                (str(d.get("order_id")),),
            )
            acc = await cur.fetchone()
            if acc is None:
                return out
            at, via, sales = acc["occurred_at"], str(acc["event_id"]), str(d.get("shop_id"))
            products = sorted({str(i["product_id"]) for i in d.get("items") or []})
        elif t in ("order.accepted", "order.cancelled", "order.refunded"):
            sales = str(d.get("shop_id"))
            if t == "order.accepted":
                products = sorted({str(i["product_id"]) for i in d.get("items") or []})
        if sales is None:
            return out
        for period, start in _PERIOD_START.items():
            await cur.execute(
                "SELECT window_start, window_end, revenue_paise, orders, items, "
                "cancelled_paise, refunded_paise, final, updated_at FROM analytics_sales "
                f"WHERE shop_id = %(s)s AND period = %(p)s AND window_start = {start}",  # noqa: S608
                {"s": sales, "p": period, "t": at},
            )
            for r in await cur.fetchall():
                hop = {
                    "hop": "window",
                    "at": _iso(r["updated_at"]),
                    "by": "analytics",
                    "window": f"sales_{period}",
                    "key": sales,
                    "window_start": _iso(r["window_start"]),
                    "window_end": _iso(r["window_end"]),
                    "values": {
                        k: r[k]
                        for k in (
                            "revenue_paise",
                            "orders",
                            "items",
                            "cancelled_paise",
                            "refunded_paise",
                        )
                    },
                    "final": r["final"],
                }
                if via:
                    hop["via_event"] = via
                out.append(hop)
        if products:
            await cur.execute(
                "SELECT key, pane_start, units, orders, final, updated_at FROM analytics_panes "
                f"WHERE aggregate = 'trending' AND pane_start = {_PANE} AND key = ANY(%(k)s)",  # noqa: S608
                {"t": at, "k": [f"{sales}/{p}" for p in products]},
            )
            for r in await cur.fetchall():
                hop = {
                    "hop": "window",
                    "at": _iso(r["updated_at"]),
                    "by": "analytics",
                    "window": "trending (5-minute pane)",
                    "key": r["key"],
                    "window_start": _iso(r["pane_start"]),
                    "values": {"units": r["units"], "orders": r["orders"]},
                    "final": r["final"],
                }
                if via:
                    hop["via_event"] = via
                out.append(hop)
    return out


async def _movements(conn: psycopg.AsyncConnection[Any], event_id: str) -> list[Hop]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT event_id, product_id, delta, stock_after, sequence, reason, occurred_at, "
            f"{_COMMITTED.format('inventory_movements')} AS committed_at FROM inventory_movements "
            "WHERE cause_event_id = %s::uuid ORDER BY sequence",
            (event_id,),
        )
        return [
            {
                "hop": "stock_movement",
                "at": _iso(m["committed_at"] or m["occurred_at"]),
                "by": "stock",
                "derived_event_id": str(m["event_id"]),
                "derived_type": "product.stock_changed",
                "product_id": m["product_id"],
                "delta": m["delta"],
                "stock_after": m["stock_after"],
                "sequence": m["sequence"],
                "reason": m["reason"],
            }
            for m in await cur.fetchall()
        ]


async def _notifications(conn: psycopg.AsyncConnection[Any], trace_id: str) -> list[Hop]:
    if not trace_id:
        return []
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT event_id, channel, recipient, kind, status, attempts, last_error, "
            "message_id, created_at, sent_at FROM notification_outbox WHERE trace_id = %s "
            "ORDER BY created_at LIMIT 50",
            (trace_id,),
        )
        return [
            {
                "hop": "notification",
                "at": _iso(n["sent_at"] or n["created_at"]),
                "by": "notifications",
                "notification_event_id": str(n["event_id"]),
                "kind": n["kind"],
                "channel": n["channel"],
                "recipient": mask(n["recipient"]),
                "status": n["status"],
                "attempts": n["attempts"],
                "error": scrub(n["last_error"]),
                # derived events carry their cause's trace id; events posted in one batch (or
                # with one traceparent) share it, so their notifications are listed together
                "matched_by": "trace id",
            }
            for n in await cur.fetchall()
        ]


async def _cached(cache: ViewCache, event: dict[str, Any]) -> list[Hop]:
    ent = entity_of(event)
    if ent is None or ent[0] not in _KIND:
        return []
    kind, key = _KIND[ent[0]], ent[2]
    # a shop's view carries the shop's version (v1) and its shopkeeper's (v2)
    component = "v2" if ent[0] == "shopkeepers" else "v1"
    try:
        v1 = await cache.client.hget(cache_key(kind, key), component)
    except Exception as exc:  # noqa: BLE001 - a trace shows what it can
        return [{"hop": "cached", "at": None, "by": "cache", "state": f"unknown ({exc})"}]
    if v1 is None:
        return [
            {
                "hop": "cached",
                "at": None,
                "by": "cache",
                "state": "no entry (expired or never read)",
            }
        ]
    held = v1.decode() if isinstance(v1, bytes) else str(v1)
    at, vid = version_of(event)
    mine = f"{int(at.timestamp() * 1_000_000):020d}:{vid}"
    state = (
        "this event's version"
        if held == mine
        else ("a later version" if held > mine else "an older version")
    )
    return [
        {"hop": "cached", "at": None, "by": "cache", "key": cache_key(kind, key), "state": state}
    ]


async def _indexed(index: SearchIndex, event: dict[str, Any]) -> list[Hop]:
    ent = entity_of(event)
    if ent is None or ent[0] not in _SEARCH:
        return []
    alias, key = _SEARCH[ent[0]], ent[2]
    hop: Hop = {"hop": "indexed", "at": None, "by": "search", "collection": alias}
    try:
        resp = await index.request(
            "GET",
            f"/collections/{index.prefix}{alias}/documents/export",
            params={"filter_by": f"id:[`{key.replace('`', '')}`]"},
        )
    except Exception as exc:  # noqa: BLE001 - a trace shows what it can
        return [{**hop, "state": f"unknown ({type(exc).__name__})"}]
    if resp.status_code != 200:
        return [{**hop, "state": f"unknown (Typesense answered {resp.status_code})"}]
    lines = [x for x in resp.content.splitlines() if x.strip()]
    if not lines:
        return [{**hop, "state": "not in the index (not searchable)"}]
    doc = orjson.loads(lines[0])
    updated = datetime.fromtimestamp(int(doc.get("updated_at") or 0), UTC)
    if ent[0] == "shopkeepers":
        # a shopkeeper's decision makes its shop searchable, without moving its updated_at
        return [{**hop, "document_updated_at": updated.isoformat(), "state": "in the index"}]
    mine = event["occurred_at"].replace(microsecond=0)
    state = "this event's version or later" if updated >= mine else "an older version"
    return [{**hop, "document_updated_at": updated.isoformat(), "state": state}]


async def _redrives(conn: psycopg.AsyncConnection[Any], event_id: str) -> list[Hop]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            'SELECT dlq_topic, "partition", "offset", outcome, detail, done_at FROM dlq_redrives '
            "WHERE event_id = %s ORDER BY done_at",
            (event_id,),
        )
        return [
            {
                "hop": "redriven" if r["outcome"] == "redriven" else "redrive_skipped",
                "at": _iso(r["done_at"]),
                "by": "operator",
                "dead_letter": f"{r['dlq_topic']}/{r['partition']}@{r['offset']}",
                "detail": r["detail"],
            }
            for r in await cur.fetchall()
        ]
