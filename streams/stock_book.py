"""Stock decisions: the pure logic of the stock role, over a table of one partition's shops.

Every stock-affecting event of a shop (product created, stock set or adjusted, order created,
cancelled, completed, refunded) arrives here in the order of the shop's by-shop partition, so the
decision for an order sees every product of its shop. The state lives in a mapping (a Faust table
in the worker, a dict in unit tests):

- ``p:<product id>`` -> {"stock": n, "shop": id, "recent": [event ids of the last sets/adjusts]}
- ``o:<order id>``   -> {"status": ..., "items": {product: reserved}, "returned": {product: n}}
  (the order lifecycle's statuses; PENDING while a product is not yet known, with the order and
  its deadline)
- ``w:<partition>``  -> order ids waiting in that partition

An order reserves all its items or none; stock never goes negative; each change yields one
`product.stock_changed` (one inventory movement), reaching zero `product.out_of_stock`, rising from
zero `product.back_in_stock`. A cancel, completion or refund outside the order lifecycle is
refused (`Permanent`: dead-lettered by this role too, so a redrive reaches the stock as well).
Derived events have deterministic ids (UUIDv5 of the cause's id, their type and product) and occur
1 ms after their cause, so a replay derives the same events.
"""

from __future__ import annotations

import uuid
from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from schemas.lifecycle import ORDER_TRANSITIONS, transition
from streams.reliability import Permanent

__all__ = ["NAMESPACE", "Derived", "StockBook"]

#: Namespace of derived event ids.
NAMESPACE = uuid.UUID("6f1d3c2a-9b7e-5c4d-8e2f-1a0b9c8d7e6f")
_RECENT = 32  # event ids of sets/adjusts remembered per product (redelivered copies are recent)


@dataclass(frozen=True)
class Derived:
    """An event the stock role emits."""

    type: str
    key: str
    data: dict[str, Any]
    id: str
    occurred_at: datetime
    trace_id: str


def derived_id(cause_id: str, type_: str, discriminator: str = "") -> str:
    return str(uuid.uuid5(NAMESPACE, f"{cause_id}/{type_}/{discriminator}"))


class StockBook:
    """Applies one event at a time to `table`; returns the events to emit."""

    def __init__(self, table: MutableMapping[str, Any], *, wait_unknown_ms: int) -> None:
        self.table = table
        self.wait_unknown_ms = wait_unknown_ms

    # --- entry points -------------------------------------------------------------------------
    def apply(self, event: dict[str, Any], partition: int, now_ms: int) -> list[Derived]:
        t = event["type"]
        d = event["data"]
        out: list[Derived] = []
        if t == "product.created":
            self._product_created(event, partition, now_ms, out)
        elif t in ("product.stock_set", "product.stock_adjusted"):
            self._stock_change(event, out)
        elif t == "order.created":
            if f"o:{d['order_id']}" not in self.table:
                self._order_created(_order_of(event), partition, now_ms, out)
        elif t in ("order.cancelled", "order.status_changed", "order.refunded"):
            order = self.table.get(f"o:{d['order_id']}")
            if order is None:
                raise Permanent(f"{t}: unknown order {d['order_id']}")
            if _version(event) <= tuple(order.get("v") or ()):
                return out  # applied already, or older than the order's state (as the rows do)
            try:
                status = transition(ORDER_TRANSITIONS, event, order["status"])
            except ValueError as exc:
                raise Permanent(str(exc)) from None
            if t == "order.cancelled":
                self._order_cancelled(event, order, partition, out)
            elif t == "order.refunded":
                self._order_refunded(event, order, out)
            else:
                self.table[f"o:{d['order_id']}"] = {**order, "status": status}
            self._stamp(d["order_id"], _version(event))
        return out

    def expire(self, partition: int, now_ms: int) -> list[Derived]:
        """Reject the orders of `partition` that waited for an unknown product too long."""
        out: list[Derived] = []
        waiting = list(self.table.get(f"w:{partition}") or [])
        for order_id in waiting:
            order = self.table.get(f"o:{order_id}")
            if order and order["status"] == "PENDING" and order["deadline_ms"] <= now_ms:
                self._unwait(partition, order_id)
                self._decide(order["order"], partition, now_ms, out, final=True)
        return out

    def has_waiting(self, partition: int) -> bool:
        return bool(self.table.get(f"w:{partition}"))

    # --- products -----------------------------------------------------------------------------
    def _product_created(
        self, event: dict[str, Any], partition: int, now_ms: int, out: list[Derived]
    ) -> None:
        d = event["data"]
        key = f"p:{d['product_id']}"
        if key in self.table:
            return
        stock = int(d.get("initial_stock") or 0)
        self.table[key] = {"stock": stock, "shop": d["shop_id"], "recent": [str(event["id"])]}
        if stock:
            out.append(
                self._movement(event, d["product_id"], d["shop_id"], stock, stock, "INITIAL")
            )
        # orders that waited for this product
        for order_id in list(self.table.get(f"w:{partition}") or []):
            order = self.table.get(f"o:{order_id}")
            if order and order["status"] == "PENDING":
                items = order["order"]["items"]
                if all(f"p:{pid}" in self.table for pid in items):
                    self._unwait(partition, order_id)
                    self._decide(order["order"], partition, now_ms, out, final=True)

    def _stock_change(self, event: dict[str, Any], out: list[Derived]) -> None:
        d = event["data"]
        key = f"p:{d['product_id']}"
        product = self.table.get(key)
        if product is None:
            raise Permanent(f"{event['type']}: unknown product {d['product_id']}")
        eid = str(event["id"])
        if eid in product["recent"]:
            return  # a redelivered copy
        stock = int(product["stock"])
        if event["type"] == "product.stock_set":
            new, reason = int(d["quantity"]), "STOCK_SET"
        else:
            new, reason = stock + int(d["delta"]), "ADJUSTMENT"
        if new < 0:
            raise Permanent(
                f"product.stock_adjusted: would make stock of {d['product_id']} negative "
                f"(stock {stock}, delta {d['delta']})"
            )
        self.table[key] = {
            **product,
            "stock": new,
            "recent": ([*product["recent"], eid])[-_RECENT:],
        }
        if new != stock:
            out.extend(self._changes(event, d["product_id"], product["shop"], stock, new, reason))

    # --- orders -------------------------------------------------------------------------------
    def _order_created(
        self, order: dict[str, Any], partition: int, now_ms: int, out: list[Derived]
    ) -> None:
        unknown = [pid for pid in order["items"] if f"p:{pid}" not in self.table]
        if unknown and self.wait_unknown_ms > 0:
            self.table[f"o:{order['order_id']}"] = {
                "status": "PENDING",
                "order": order,
                "deadline_ms": now_ms + self.wait_unknown_ms,
            }
            self.table[f"w:{partition}"] = [
                *(self.table.get(f"w:{partition}") or []),
                order["order_id"],
            ]
            self._stamp(order["order_id"], _version(order["cause"]))
            return
        self._decide(order, partition, now_ms, out, final=True)

    def _decide(
        self, order: dict[str, Any], partition: int, now_ms: int, out: list[Derived], final: bool
    ) -> None:
        """Reserve every item or none."""
        cause = order["cause"]
        problems: list[dict[str, Any]] = []
        for pid, qty in order["items"].items():
            product = self.table.get(f"p:{pid}")
            if product is None:
                problems.append(
                    {
                        "product_id": pid,
                        "reason": "UNKNOWN_PRODUCT",
                        "requested_quantity": min(qty, 1000),
                        "available_quantity": None,
                    }
                )
            elif product["stock"] < qty:
                problems.append(
                    {
                        "product_id": pid,
                        "reason": "INSUFFICIENT_STOCK",
                        "requested_quantity": min(qty, 1000),
                        "available_quantity": int(product["stock"]),
                    }
                )
        oid = order["order_id"]
        if problems:
            reasons = {p["reason"] for p in problems}
            reason = "UNKNOWN_PRODUCT" if "UNKNOWN_PRODUCT" in reasons else "INSUFFICIENT_STOCK"
            detail = "; ".join(
                f"{p['product_id']}: unknown product"
                if p["available_quantity"] is None
                else f"{p['product_id']}: {p['requested_quantity']} requested, "
                f"{p['available_quantity']} in stock"
                for p in problems
            )
            self.table[f"o:{oid}"] = {"status": "REJECTED", "items": {}, "returned": {}}
            out.append(
                self._derive(
                    cause,
                    "order.rejected",
                    oid,
                    {
                        "order_id": oid,
                        "shop_id": order["shop_id"],
                        "user_id": order["user_id"],
                        "reason": reason,
                        "items": problems,
                        "detail": detail[:1000],
                        "cause_event_id": cause["id"],
                    },
                )
            )
            self._stamp(oid, _version(out[-1]))
            return
        accepted = []
        for pid, qty in order["items"].items():
            product = self.table[f"p:{pid}"]
            before = int(product["stock"])
            self.table[f"p:{pid}"] = {**product, "stock": before - qty}
            out.extend(
                self._changes(
                    cause,
                    pid,
                    product["shop"],
                    before,
                    before - qty,
                    "ORDER_RESERVED",
                    order_id=oid,
                )
            )
            accepted.append({"product_id": pid, "quantity": qty, "stock_after": before - qty})
        self.table[f"o:{oid}"] = {"status": "PROCESSING", "items": order["items"], "returned": {}}
        out.append(
            self._derive(
                cause,
                "order.accepted",
                oid,
                {
                    "order_id": oid,
                    "shop_id": order["shop_id"],
                    "user_id": order["user_id"],
                    "items": accepted,
                    "total_paise": order["total_paise"],
                    "cause_event_id": cause["id"],
                    "session_id": order.get("session_id"),
                },
            )
        )
        self._stamp(oid, _version(out[-1]))

    def _order_cancelled(
        self, event: dict[str, Any], order: dict[str, Any], partition: int, out: list[Derived]
    ) -> None:
        oid = event["data"]["order_id"]
        if order["status"] == "PENDING":  # still waiting for a product: nothing reserved
            self._unwait(partition, oid)
            self.table[f"o:{oid}"] = {"status": "CANCELLED", "items": {}, "returned": {}}
        else:
            self._return(event, order["items"], "ORDER_CANCELLED", out)
            self.table[f"o:{oid}"] = {**order, "status": "CANCELLED"}

    def _order_refunded(
        self, event: dict[str, Any], order: dict[str, Any], out: list[Derived]
    ) -> None:
        d = event["data"]
        back: dict[str, int] = {}
        for item in d.get("returned_items") or []:
            pid = item["product_id"]
            left = int(order["items"].get(pid, 0)) - int(order["returned"].get(pid, 0))
            qty = min(int(item["quantity"]), left - back.get(pid, 0))
            if qty > 0:
                back[pid] = back.get(pid, 0) + qty
        self._return(event, back, "ORDER_REFUNDED", out)
        returned = dict(order["returned"])
        for pid, qty in back.items():
            returned[pid] = returned.get(pid, 0) + qty
        self.table[f"o:{d['order_id']}"] = {**order, "status": "REFUNDED", "returned": returned}

    def _return(
        self, event: dict[str, Any], items: dict[str, int], reason: str, out: list[Derived]
    ) -> None:
        for pid, qty in items.items():
            product = self.table.get(f"p:{pid}")
            if product is None or qty <= 0:
                continue
            before = int(product["stock"])
            self.table[f"p:{pid}"] = {**product, "stock": before + qty}
            out.extend(
                self._changes(
                    event,
                    pid,
                    product["shop"],
                    before,
                    before + qty,
                    reason,
                    order_id=event["data"]["order_id"],
                )
            )

    def _stamp(self, order_id: str, version: tuple[int, str]) -> None:
        """Record the version of the last event applied to an order: (occurred_at ms, id)."""
        key = f"o:{order_id}"
        self.table[key] = {**self.table[key], "v": list(version)}

    def _unwait(self, partition: int, order_id: str) -> None:
        waiting = [o for o in (self.table.get(f"w:{partition}") or []) if o != order_id]
        self.table[f"w:{partition}"] = waiting

    # --- derived events -----------------------------------------------------------------------
    def _changes(
        self,
        cause: dict[str, Any],
        pid: str,
        shop: str,
        before: int,
        after: int,
        reason: str,
        order_id: str | None = None,
    ) -> list[Derived]:
        out = [self._movement(cause, pid, shop, after - before, after, reason, order_id)]
        if after == 0 and before > 0:
            out.append(
                self._derive(
                    cause,
                    "product.out_of_stock",
                    pid,
                    {
                        "product_id": pid,
                        "shop_id": shop,
                        "stock": 0,
                        "cause_event_id": str(cause["id"]),
                    },
                    discriminator=pid,
                )
            )
        elif before == 0 and after > 0:
            out.append(
                self._derive(
                    cause,
                    "product.back_in_stock",
                    pid,
                    {
                        "product_id": pid,
                        "shop_id": shop,
                        "stock": after,
                        "cause_event_id": str(cause["id"]),
                    },
                    discriminator=pid,
                )
            )
        return out

    def _movement(
        self,
        cause: dict[str, Any],
        pid: str,
        shop: str,
        delta: int,
        after: int,
        reason: str,
        order_id: str | None = None,
    ) -> Derived:
        """One `product.stock_changed`, carrying the product's next stock version (`sequence`):
        stores apply the highest, wherever a copy re-sent after a crash lands in the topic."""
        key = f"p:{pid}"
        product = self.table[key]
        seq = int(product.get("seq", 0)) + 1
        self.table[key] = {**product, "seq": seq}
        return self._derive(
            cause,
            "product.stock_changed",
            pid,
            {
                "product_id": pid,
                "shop_id": shop,
                "delta": delta,
                "stock_after": after,
                "reason": reason,
                "order_id": order_id,
                "cause_event_id": str(cause["id"]),
                "cause_type": cause["type"],
                "sequence": seq,
            },
            discriminator=pid,
        )

    @staticmethod
    def _derive(
        cause: dict[str, Any], type_: str, key: str, data: dict[str, Any], discriminator: str = ""
    ) -> Derived:
        occurred = cause["occurred_at"]
        if not isinstance(occurred, datetime):
            occurred = datetime.fromisoformat(occurred)
        return Derived(
            type=type_,
            key=key,
            data=data,
            id=derived_id(str(cause["id"]), type_, discriminator),
            occurred_at=occurred + timedelta(milliseconds=1),
            trace_id=str(cause.get("trace_id") or cause["id"]),
        )


def _version(event: Any) -> tuple[int, str]:
    """(occurred_at in ms, id) of an event, a derived event or a kept cause: the rows' version."""
    if isinstance(event, Derived):
        at: Any = event.occurred_at
        eid = event.id
    else:
        at, eid = event["occurred_at"], event["id"]
    if not isinstance(at, datetime):
        at = datetime.fromisoformat(at)
    return int(at.timestamp() * 1000), str(eid)


def _order_of(event: dict[str, Any]) -> dict[str, Any]:
    """What the stock role keeps of an order.created (JSON-serialisable, for the table)."""
    d = event["data"]
    items: dict[str, int] = {}
    for item in d["items"]:
        items[item["product_id"]] = items.get(item["product_id"], 0) + int(item["quantity"])
    return {
        "order_id": d["order_id"],
        "shop_id": d["shop_id"],
        "user_id": d["user_id"],
        "items": items,
        "total_paise": int(d["total_paise"]),
        "session_id": d.get("session_id"),
        "cause": {
            "id": str(event["id"]),
            "type": event["type"],
            "occurred_at": event["occurred_at"].isoformat(),
            "trace_id": event.get("trace_id"),
        },
    }
