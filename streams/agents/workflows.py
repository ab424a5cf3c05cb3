"""workflows: the seeds' business flows as agents. Each step derives events with deterministic ids
(UUIDv5 of the cause and the step), occurring 1 ms after their cause, carrying the cause's trace
id, so a flow can be followed by its trace id and a replay derives the very same events.

- user registered -> WELCOME (email) to the user;
- order accepted by the stock role -> ORDER_CONFIRMED (email + SMS) to the customer,
  NEW_ORDER_FOR_SHOP (push) to the shop's owner;
- order rejected -> ORDER_REJECTED (email, with the reason) to the customer;
- order status changed -> ORDER_STATUS_CHANGED (email) to the customer.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

from connectors.base import DependencyDown
from streams.agents._read_side import PgReader, install_agents
from streams.reliability import Record, Rejection

__all__ = ["derived_id", "install"]

_NS = uuid.UUID("6d6d6172-742d-4e6f-7469-667900000000")
#: how long an order's notification waits for its shop's row, then goes without the push
_UNKNOWN_SHOP_AFTER_S = 15.0


def derived_id(cause_id: str, step: str) -> str:
    return str(uuid.uuid5(_NS, f"{cause_id}:{step}"))


def _rupees(paise: int | None) -> str:
    return f"₹{(paise or 0) / 100:,.2f}"


def _requests(ev: dict[str, Any], shop_owner: str | None) -> list[tuple[str, dict[str, Any]]]:
    """(step, notification.requested data) derived from one event."""
    t, d = ev["type"], ev["data"]
    if t == "user.registered":
        return [
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
    if t not in ("order.accepted", "order.rejected", "order.status_changed"):
        return []
    oid, total = d["order_id"], _rupees(d.get("total_paise"))
    params = {"order_id": oid, "shop_id": d["shop_id"]}
    if t == "order.accepted":
        items = ", ".join(
            f"{i['quantity']} x {i.get('name') or i['product_id']}" for i in d["items"]
        )
        out = [
            (
                "order_confirmed",
                {
                    "user_id": d["user_id"],
                    "kind": "ORDER_CONFIRMED",
                    "channels": ["EMAIL", "SMS"],
                    "title": f"Your order {oid} is confirmed",
                    "body": f"Your order {oid} ({items}; {total}) is confirmed and being packed.",
                    "params": {**params, "total": total, "items": items},
                },
            )
        ]
        if shop_owner:
            out.append(
                (
                    "new_order",
                    {
                        "user_id": shop_owner,
                        "kind": "NEW_ORDER_FOR_SHOP",
                        "channels": ["PUSH"],
                        "title": f"New order {oid}",
                        "body": f"New order {oid}: {items} ({total}).",
                        "params": {**params, "total": total, "items": items},
                    },
                )
            )
        return out
    if t == "order.rejected":
        return [
            (
                "order_rejected",
                {
                    "user_id": d["user_id"],
                    "kind": "ORDER_REJECTED",
                    "channels": ["EMAIL"],
                    "title": f"Your order {oid} could not be accepted",
                    "body": f"Sorry, your order {oid} could not be accepted: {d['reason']}.",
                    "params": {**params, "reason": str(d["reason"])},
                },
            )
        ]
    return [
        (
            f"status_{d['to_status'].lower()}",
            {
                "user_id": d["user_id"],
                "kind": "ORDER_STATUS_CHANGED",
                "channels": ["EMAIL"],
                "title": f"Your order {oid} is {d['to_status'].lower()}",
                "body": f"Your order {oid} is now {d['to_status'].lower()}.",
                "params": {**params, "status": d["to_status"]},
            },
        )
    ]


def install(rt: Any) -> None:
    app = rt.app

    async def write(records: list[Record], db: PgReader) -> list[Rejection]:
        pending = []
        for r in records:
            ev = r.event
            owner = None
            if ev.get("type") == "order.accepted":
                owner = await _shop_owner(db, ev)
            for step, data in _requests(ev, owner):
                at = ev["occurred_at"] + timedelta(milliseconds=1)
                topic, value = await rt.encode(
                    "notification.requested",
                    derived_id(str(ev["id"]), step),
                    at,
                    ev.get("trace_id") or str(ev["id"]),
                    data,
                )
                pending.append(
                    await app.producer.send(
                        topic,
                        str(data["user_id"]).encode(),
                        value,
                        partition=None,
                        timestamp=at.timestamp(),
                        headers=[],
                    )
                )
        for fut in pending:  # delivered before the batch's offsets are committed
            await fut
        return []

    async def _shop_owner(db: PgReader, ev: dict[str, Any]) -> str | None:
        async with db.connection() as conn:
            cur = await conn.execute(
                "SELECT owner_user_id FROM shops WHERE shop_id = %s", (ev["data"]["shop_id"],)
            )
            row = await cur.fetchone()
        if row is not None:
            return str(row[0])
        if time.time() - ev["occurred_at"].timestamp() > _UNKNOWN_SHOP_AFTER_S:
            return None
        raise DependencyDown(f"shop {ev['data']['shop_id']} not projected yet")

    install_agents(rt, "workflow", ("user", "order"), write)
