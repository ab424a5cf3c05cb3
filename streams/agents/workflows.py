"""workflows: the seeds' business flows as agents. Each step derives events with deterministic ids
(UUIDv5 of the cause and the step), occurring 1 ms after their cause, carrying the cause's trace
id, so a flow can be followed by its trace id and a replay derives the very same events (and the
notification outbox sends nothing twice).

- user registered -> WELCOME (email) to the user (the projections store its default preferences);
- order accepted by the stock role -> ORDER_CONFIRMED (email + SMS) to the customer,
  NEW_ORDER_FOR_SHOP (push) to the shop's owner, and an `analytics.tracked` PURCHASE;
- order rejected -> ORDER_REJECTED (email, with the reason) to the customer;
- order status changed / cancelled / refunded -> ORDER_STATUS_CHANGED / ORDER_CANCELLED /
  ORDER_REFUNDED (email) to the customer; a cancellation also pushes to the shop's owner;
- product out of stock -> OUT_OF_STOCK (push + email) to the shop's owner;
- product.stock_alert_requested -> remembered (`stock_alerts`); the next back in stock ->
  BACK_IN_STOCK (push + email) to each user who asked (and has `back_in_stock_alerts` on), once;
- shopkeeper applied / approved / rejected -> SHOPKEEPER_APPLIED / _APPROVED / _REJECTED (email)
  to the applicant (the approval itself enables the shop: projections, then search).

Client events the projections judge (a status change, a cancellation, a refund, a shopkeeper's
application or decision) notify only once the projections have applied them: one they refused
(an illegal transition, dead-lettered) tells nobody anything.

A step that fails is retried alone (the guard retries the batch; derived events already produced
are produced again with the same ids and are recognised downstream as the same events).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from connectors.base import DependencyDown
from connectors.postgres import entity_of, version_of
from streams.agents._read_side import PgReader, ProjectionsProgress, install_agents
from streams.reliability import Record, Rejection

__all__ = ["derived_id", "install"]

_NS = uuid.UUID("6d6d6172-742d-4e6f-7469-667900000000")
#: how long a step waits for a row the projections have not written yet, then goes without it
_UNKNOWN_ROW_AFTER_S = 15.0

Request = tuple[str, dict[str, Any]]

#: client events whose legality the projections decide (see the module docstring)
_JUDGED = frozenset(
    {
        "order.status_changed",
        "order.cancelled",
        "order.refunded",
        "shopkeeper.applied",
        "shopkeeper.approved",
        "shopkeeper.rejected",
    }
)
#: how long a batch waits for the projections to judge its events before backing off
_JUDGE_PATIENCE_S = 10.0


def derived_id(cause_id: str, step: str) -> str:
    return str(uuid.uuid5(_NS, f"{cause_id}:{step}"))


def _rupees(paise: int | None) -> str:
    return f"₹{(paise or 0) / 100:,.2f}"


def _notice(
    user: str, kind: str, channels: list[str], title: str, body: str, **params: Any
) -> dict[str, Any]:
    return {
        "user_id": user,
        "kind": kind,
        "channels": channels,
        "title": title,
        "body": body,
        "params": {k: str(v) for k, v in params.items() if v is not None},
    }


def _items(d: dict[str, Any]) -> str:
    return ", ".join(f"{i['quantity']} x {i.get('name') or i['product_id']}" for i in d["items"])


def _order_requests(ev: dict[str, Any], owner: str | None) -> list[Request]:
    """(step, notification.requested data) derived from an order event."""
    t, d = ev["type"], ev["data"]
    oid, shop = d["order_id"], d["shop_id"]
    if t == "order.accepted":
        items, total = _items(d), _rupees(d.get("total_paise"))
        out = [
            (
                "order_confirmed",
                _notice(
                    d["user_id"],
                    "ORDER_CONFIRMED",
                    ["EMAIL", "SMS"],
                    f"Your order {oid} is confirmed",
                    f"Your order {oid} ({items}; {total}) is confirmed and being packed.",
                    order_id=oid,
                    shop_id=shop,
                    total=total,
                    items=items,
                ),
            )
        ]
        if owner:
            out.append(
                (
                    "new_order",
                    _notice(
                        owner,
                        "NEW_ORDER_FOR_SHOP",
                        ["PUSH"],
                        f"New order {oid}",
                        f"New order {oid}: {items} ({total}).",
                        order_id=oid,
                        shop_id=shop,
                        total=total,
                        items=items,
                    ),
                )
            )
        return out
    if t == "order.rejected":
        return [
            (
                "order_rejected",
                _notice(
                    d["user_id"],
                    "ORDER_REJECTED",
                    ["EMAIL"],
                    f"Your order {oid} could not be accepted",
                    f"Sorry, your order {oid} could not be accepted: {d['reason']}.",
                    order_id=oid,
                    shop_id=shop,
                    reason=d["reason"],
                ),
            )
        ]
    if t == "order.status_changed":
        status = d["to_status"].lower()
        return [
            (
                f"status_{status}",
                _notice(
                    d["user_id"],
                    "ORDER_STATUS_CHANGED",
                    ["EMAIL"],
                    f"Your order {oid} is {status}",
                    f"Your order {oid} is now {status}.",
                    order_id=oid,
                    shop_id=shop,
                    status=d["to_status"],
                ),
            )
        ]
    if t == "order.cancelled":
        reason = d.get("reason")
        out = [
            (
                "order_cancelled",
                _notice(
                    d["user_id"],
                    "ORDER_CANCELLED",
                    ["EMAIL"],
                    f"Your order {oid} is cancelled",
                    f"Your order {oid} is cancelled ({reason}).",
                    order_id=oid,
                    shop_id=shop,
                    reason=reason,
                ),
            )
        ]
        if owner:
            out.append(
                (
                    "order_cancelled_shop",
                    _notice(
                        owner,
                        "ORDER_CANCELLED",
                        ["PUSH"],
                        f"Order {oid} cancelled",
                        f"Order {oid} was cancelled ({reason}): do not pack it.",
                        order_id=oid,
                        shop_id=shop,
                        reason=reason,
                    ),
                )
            )
        return out
    if t == "order.refunded":
        amount = _rupees(d.get("refund_paise"))
        return [
            (
                "order_refunded",
                _notice(
                    d["user_id"],
                    "ORDER_REFUNDED",
                    ["EMAIL"],
                    f"Refund of {amount} for order {oid}",
                    f"We refunded {amount} for your order {oid}.",
                    order_id=oid,
                    shop_id=shop,
                    amount=amount,
                    reason=d.get("reason"),
                ),
            )
        ]
    return []


def _shopkeeper_requests(ev: dict[str, Any]) -> list[Request]:
    t, d = ev["type"], ev["data"]
    user, shop = d["user_id"], d["shop_id"]
    if t == "shopkeeper.applied":
        name = d.get("business_name")
        return [
            (
                "shopkeeper_applied",
                _notice(
                    user,
                    "SHOPKEEPER_APPLIED",
                    ["EMAIL"],
                    "We received your shop application",
                    f"Thank you for applying to sell on MohallaMart as {name}.",
                    shop_id=shop,
                    business_name=name,
                ),
            )
        ]
    if t == "shopkeeper.approved":
        return [
            (
                "shopkeeper_approved",
                _notice(
                    user,
                    "SHOPKEEPER_APPROVED",
                    ["EMAIL"],
                    "Your shop is approved",
                    "Good news: your shop is approved and open for orders on MohallaMart.",
                    shop_id=shop,
                    note=d.get("note"),
                ),
            )
        ]
    if t == "shopkeeper.rejected":
        return [
            (
                "shopkeeper_rejected",
                _notice(
                    user,
                    "SHOPKEEPER_REJECTED",
                    ["EMAIL"],
                    "Your shop application was not approved",
                    f"Sorry, we could not approve your shop application ({d['reason']}).",
                    shop_id=shop,
                    reason=d["reason"],
                    note=d.get("note"),
                ),
            )
        ]
    return []


def _purchase(ev: dict[str, Any]) -> dict[str, Any]:
    """The analytics event of an accepted order (the revenue the seeds' trackAnalytics kept)."""
    d = ev["data"]
    return {
        "session_id": f"order-{d['order_id']}",
        "user_id": d["user_id"],
        "kind": "PURCHASE",
        "page": None,
        "query": None,
        "results_count": None,
        "product_id": None,
        "shop_id": d["shop_id"],
        "order_id": d["order_id"],
        "quantity": None,
        "value_paise": d.get("total_paise") or 0,
        "properties": {
            "derived_from": "order.accepted",
            "items": str(sum(int(i["quantity"]) for i in d["items"])),
        },
    }


#: event id -> when this process first saw it (a client sets occurred_at: it may lie ahead)
_FIRST_SEEN: dict[str, float] = {}


def _waited_long_enough(ev: dict[str, Any]) -> bool:
    """Has `ev` waited `_UNKNOWN_ROW_AFTER_S` for a row, counted from when it occurred or was
    first seen here, whichever is earlier?"""
    now = time.time()
    if len(_FIRST_SEEN) > 100_000:
        _FIRST_SEEN.clear()
    seen = _FIRST_SEEN.setdefault(str(ev["id"]), now)
    return bool(now - min(seen, ev["occurred_at"].timestamp()) > _UNKNOWN_ROW_AFTER_S)


async def _judge(
    conn: Any, records: list[Record], progress: ProjectionsProgress
) -> tuple[set[str], dict[str, str]]:
    """(ids of the judged events of `records` the projections refused, event id -> the user of
    the row each applied one changed). Returns once every judged event is applied (its row holds
    the event's version), refused (recorded in `projection_refusals`), or passed over (the
    projections' group committed past it: applied if its row holds a newer version, else
    refused before refusals were recorded)."""
    waiting = [r for r in records if r.event.get("type") in _JUDGED]
    refused: set[str] = set()
    users: dict[str, str] = {}
    start = time.monotonic()
    delay = 0.02
    while waiting:
        cur = await conn.execute(
            "SELECT event_id::text FROM projection_refusals WHERE event_id = ANY(%s::uuid[])",
            ([str(r.event["id"]) for r in waiting],),
        )
        refused |= {row[0] for row in await cur.fetchall()}
        # one query per table for the batch's judged events (not one per event)
        wanted: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in waiting:
            eid = str(r.event["id"])
            if eid in refused:
                continue
            table, key_col, key = entity_of(r.event) or ("", "", "")
            at, vid = version_of(r.event)
            wanted.setdefault((table, key_col), []).append(
                {"e": eid, "k": key, "at": at.isoformat(), "v": str(vid)}
            )
        rows: dict[str, tuple[bool, bool]] = {}  # event id -> (applied, row holds a newer one)
        for (table, key_col), probe in wanted.items():
            cur = await conn.execute(
                "SELECT w.e, (t.version_at, t.version_id) = (w.at, w.v), "  # noqa: S608
                "(t.version_at, t.version_id) > (w.at, w.v), t.user_id "
                "FROM jsonb_to_recordset(%s::jsonb) AS w(e text, k text, at timestamptz, v uuid) "
                f"JOIN {table} t ON t.{key_col} = w.k",
                (json.dumps(probe),),
            )
            for eid, applied, newer, user in await cur.fetchall():
                rows[eid] = (bool(applied), bool(newer))
                users[eid] = str(user)
        still: list[tuple[Record, bool]] = []  # (record, its row holds a newer version)
        for r in waiting:
            eid = str(r.event["id"])
            if eid in refused:
                continue
            applied, newer = rows.get(eid, (False, False))
            if not applied:
                still.append((r, newer))
        if not still:
            break
        waiting = [r for r, _ in still]
        if time.monotonic() - start > 0.25:
            tps = {(r.topic, r.partition) for r in waiting if not r.topic.endswith(".redrive")}
            done = await progress.committed(tps) if tps else {}
            past = {
                str(r.event["id"]): newer
                for r, newer in still
                if done.get((r.topic, r.partition), -1) > r.offset
            }
            if past:  # refusals are recorded before the projections commit: read them again
                cur = await conn.execute(
                    "SELECT event_id::text FROM projection_refusals "
                    "WHERE event_id = ANY(%s::uuid[])",
                    (list(past),),
                )
                again = {row[0] for row in await cur.fetchall()}
                refused |= {e for e, newer in past.items() if e in again or not newer}
                waiting = [r for r in waiting if str(r.event["id"]) not in past]
            if waiting and time.monotonic() - start > _JUDGE_PATIENCE_S:
                first = waiting[0].event
                raise DependencyDown(
                    f"the projections have not judged {len(waiting)} event(s) yet "
                    f"(e.g. {first['type']} {first['id']})"
                )
        await asyncio.sleep(delay)
        delay = min(0.2, delay * 2)
    return refused, users


def install(rt: Any) -> None:
    app = rt.app
    progress = ProjectionsProgress(rt.settings)

    async def write(records: list[Record], db: PgReader) -> list[Rejection]:
        pending = []
        async with db.connection() as conn:
            refused, users = await _judge(conn, records, progress)
            for r in records:
                ev = r.event
                if str(ev.get("id")) in refused:
                    continue  # an illegal transition: it changed nothing, it tells nobody
                user = users.get(str(ev.get("id")))
                if user is not None and user != ev["data"].get("user_id"):
                    # told to the user the row names (the order's customer, the applicant),
                    # never to one the client wrote into the event
                    ev = {**ev, "data": {**ev["data"], "user_id": user}}
                for type_, step, data, key in await _derive(conn, ev, r):
                    at = ev["occurred_at"] + timedelta(milliseconds=1)
                    topic, value = await rt.encode(
                        type_,
                        derived_id(str(ev["id"]), step),
                        at,
                        ev.get("trace_id") or str(ev["id"]),
                        data,
                    )
                    pending.append(
                        await app.producer.send(
                            topic,
                            key.encode(),
                            value,
                            partition=None,
                            timestamp=at.timestamp(),
                            headers=[],
                        )
                    )
        for fut in pending:  # delivered before the batch's offsets are committed
            await fut
        return []

    async def _derive(
        conn: Any, ev: dict[str, Any], r: Record
    ) -> list[tuple[str, str, dict[str, Any], str]]:
        """(event type, step, data, record key) of the events `ev` derives."""
        t = ev["type"]
        requests: list[Request] = []
        extra: list[tuple[str, str, dict[str, Any], str]] = []
        if t == "user.registered":
            d = ev["data"]
            requests = [
                (
                    "welcome",
                    {
                        "user_id": d["user_id"],
                        "kind": "WELCOME",
                        "channels": ["EMAIL"],
                        "title": None,
                        "body": None,
                        "params": {"name": d["name"], "email": d["email"]},
                    },
                )
            ]
        elif t.startswith("order."):
            owner = None
            if t in ("order.accepted", "order.cancelled"):
                owner = await _shop_owner(conn, ev, r)
            requests = _order_requests(ev, owner)
            if t == "order.accepted":
                extra.append(
                    (
                        "analytics.tracked",
                        "analytics",
                        _purchase(ev),
                        f"order-{ev['data']['order_id']}",
                    )
                )
        elif t.startswith("shopkeeper."):
            requests = _shopkeeper_requests(ev)
        elif t == "product.stock_alert_requested":
            await _remember_alert(conn, ev)
        elif t == "product.out_of_stock":
            requests = await _out_of_stock(conn, ev, r)
        elif t == "product.back_in_stock":
            requests = await _back_in_stock(conn, ev, r)
        return [
            ("notification.requested", step, data, str(data["user_id"])) for step, data in requests
        ] + extra

    async def _passed(r: Record) -> bool:
        """Has `r` waited long enough for a row the projections have not written (15 s from when
        it occurred or was first seen)? Then the row was never created: the step goes without
        it. (Asking the projections' group for its offsets per record instead paused and resumed
        the partitions so often under load that aiokafka's fetcher crashed: see the note.)"""
        return r.topic.endswith(".redrive") or _waited_long_enough(r.event)

    async def _shop_owner(conn: Any, ev: dict[str, Any], r: Record) -> str | None:
        cur = await conn.execute(
            "SELECT owner_user_id FROM shops WHERE shop_id = %s", (ev["data"]["shop_id"],)
        )
        row = await cur.fetchone()
        if row is not None:
            return str(row[0])
        if await _passed(r):
            return None  # a shop that was never created: no push
        raise DependencyDown(f"shop {ev['data']['shop_id']} not projected yet")

    async def _product(
        conn: Any, ev: dict[str, Any], r: Record
    ) -> tuple[str, str | None, str | None]:
        """(product name, shop name, shop owner) of a stock event's product."""
        d = ev["data"]
        cur = await conn.execute(
            "SELECT p.name, s.name, s.owner_user_id FROM products p "
            "LEFT JOIN shops s ON s.shop_id = p.shop_id WHERE p.product_id = %s",
            (d["product_id"],),
        )
        row = await cur.fetchone()
        if row is None or row[2] is None:
            if not await _passed(r):
                raise DependencyDown(f"product {d['product_id']} or its shop not projected yet")
            return (row[0] if row else d["product_id"]), None, None
        return str(row[0]), row[1], str(row[2])

    async def _out_of_stock(conn: Any, ev: dict[str, Any], r: Record) -> list[Request]:
        d = ev["data"]
        name, _, owner = await _product(conn, ev, r)
        if owner is None:
            return []
        return [
            (
                "out_of_stock",
                _notice(
                    owner,
                    "OUT_OF_STOCK",
                    ["PUSH", "EMAIL"],
                    f"Out of stock: {name}",
                    f"{name} is out of stock.",
                    product=name,
                    product_id=d["product_id"],
                    shop_id=d["shop_id"],
                ),
            )
        ]

    async def _remember_alert(conn: Any, ev: dict[str, Any]) -> None:
        d = ev["data"]
        await conn.execute(
            "INSERT INTO stock_alerts (product_id, user_id, shop_id, requested_at, request_id) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (product_id, user_id) DO UPDATE SET "
            "requested_at = EXCLUDED.requested_at, request_id = EXCLUDED.request_id, "
            "notified_by = NULL, notified_at = NULL "
            # asking again after being told arms the alert again; an older request (a replay)
            # does not
            "WHERE stock_alerts.notified_at IS NOT NULL "
            "AND stock_alerts.notified_at < EXCLUDED.requested_at",
            (d["product_id"], d["user_id"], d["shop_id"], ev["occurred_at"], str(ev["id"])),
        )

    async def _back_in_stock(conn: Any, ev: dict[str, Any], r: Record) -> list[Request]:
        d = ev["data"]
        eid: str = str(ev["id"])
        at: datetime = ev["occurred_at"]
        name, shop_name, _ = await _product(conn, ev, r)
        async with conn.transaction():
            await conn.execute(
                "UPDATE stock_alerts SET notified_by = %s, notified_at = %s "
                "WHERE product_id = %s AND notified_by IS NULL AND requested_at <= %s",
                (eid, at, d["product_id"], at),
            )
            # those this event tells (now, or the first time it was processed: a replay)
            cur = await conn.execute(
                "SELECT a.user_id, u.user_id IS NOT NULL, "
                "coalesce((u.preferences ->> 'back_in_stock_alerts')::boolean, true) "
                "FROM stock_alerts a LEFT JOIN users u ON u.user_id = a.user_id "
                "WHERE a.product_id = %s AND a.notified_by = %s ORDER BY a.user_id",
                (d["product_id"], eid),
            )
            rows = await cur.fetchall()
        if any(not known for _, known, _ in rows) and not _waited_long_enough(ev):
            # a user the projections have not written yet (another topic): wait for the row
            # rather than use up their alert unheard (the marking above is kept: idempotent)
            raise DependencyDown(f"a user who asked about {d['product_id']} is not projected yet")
        users = [str(user) for user, known, wants in rows if known and wants]
        return [
            (
                f"back_in_stock:{user}",
                _notice(
                    user,
                    "BACK_IN_STOCK",
                    ["PUSH", "EMAIL"],
                    f"Back in stock: {name}",
                    f"{name} is back in stock" + (f" at {shop_name}." if shop_name else "."),
                    product=name,
                    product_id=d["product_id"],
                    shop=shop_name,
                    shop_id=d["shop_id"],
                    stock=d.get("stock"),
                ),
            )
            for user in users
        ]

    install_agents(rt, "workflow", ("user", "order", "product", "shopkeeper"), write)
