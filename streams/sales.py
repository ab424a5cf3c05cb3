"""What an order event adds to its shop's sales windows (issue 15's revenue rule), pure.

Revenue counts `order.accepted` (an order that got its stock), minus `order.cancelled` after
acceptance (what of the order had not been refunded already) and `order.refunded` (by amount,
never more than what is left of the order); each contribution goes to the shop the event names,
at the event's own time (`occurred_at`), so a window holds what happened in it. An order
cancelled before it was accepted never counted, and subtracts nothing.

The role keeps one `OrderSales` per order (in its table); a redelivered event finds the state it
left and adds nothing again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["Contribution", "OrderSales", "contribution"]

#: the event types that move revenue
TYPES = frozenset({"order.accepted", "order.cancelled", "order.refunded"})


@dataclass(frozen=True)
class OrderSales:
    """What the sales windows have counted of one order."""

    total_paise: int
    refunded_paise: int = 0
    cancelled: bool = False
    applied: tuple[str, ...] = ()  # the ids of the events counted (refunds may be several)

    @property
    def left_paise(self) -> int:
        return 0 if self.cancelled else self.total_paise - self.refunded_paise

    def as_json(self) -> dict[str, Any]:
        return {
            "total": self.total_paise,
            "refunded": self.refunded_paise,
            "cancelled": self.cancelled,
            "applied": list(self.applied),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> OrderSales:
        return cls(int(d["total"]), int(d["refunded"]), bool(d["cancelled"]), tuple(d["applied"]))


@dataclass(frozen=True)
class Contribution:
    """Values to add to `shop`'s windows holding `at_ms`."""

    shop: str
    at_ms: int
    values: Mapping[str, int]


def _ms(at: Any) -> int:
    return int(at.timestamp() * 1000) if isinstance(at, datetime) else int(at)


def contribution(
    state: OrderSales | None, event: Mapping[str, Any]
) -> tuple[OrderSales | None, Contribution | None]:
    """The order's state after `event`, and what `event` adds to its shop's sales (None: it
    adds nothing: not a sales event, a copy counted already, or a step of an order the windows
    never counted)."""
    t = event["type"]
    if t not in TYPES:
        return state, None
    d = event["data"]
    eid = str(event["id"])
    if state is not None and eid in state.applied:
        return state, None  # counted already
    shop, at = str(d["shop_id"]), _ms(event["occurred_at"])
    if t == "order.accepted":
        if state is not None:
            return state, None  # accepted once per order
        items = sum(int(i["quantity"]) for i in d["items"])
        total = int(d["total_paise"])
        new = OrderSales(total, applied=(eid,))
        return new, Contribution(shop, at, {"revenue_paise": total, "orders": 1, "items": items})
    if state is None or state.cancelled:
        return state, None  # never accepted (nothing counted), or cancelled already
    applied = (*state.applied, eid)
    if t == "order.cancelled":
        left = state.left_paise
        new = OrderSales(state.total_paise, state.refunded_paise, True, applied)
        values = {"revenue_paise": -left, "cancelled_paise": left, "cancelled_orders": 1}
        return new, Contribution(shop, at, values)
    amount = min(int(d["refund_paise"]), state.left_paise)
    new = OrderSales(state.total_paise, state.refunded_paise + amount, False, applied)
    return new, Contribution(shop, at, {"revenue_paise": -amount, "refunded_paise": amount})
