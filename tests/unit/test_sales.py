"""The revenue rule of the sales windows (streams/sales.py): accepted orders count, a
cancellation after acceptance takes back what was left, refunds by amount (never more than
left), each to the event's shop at the event's time; copies add nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from streams.sales import Contribution, OrderSales, contribution

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


def ev(type_: str, at: int, **data: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": type_,
        "occurred_at": T0 + timedelta(minutes=at),
        "data": {"order_id": "o1", "shop_id": "shop_a", **data},
    }


def ms(at: int) -> int:
    return int((T0 + timedelta(minutes=at)).timestamp() * 1000)


ACCEPTED = ev(
    "order.accepted",
    0,
    total_paise=10_000,
    items=[{"product_id": "a", "quantity": 2}, {"product_id": "b", "quantity": 1}],
)


def test_accepted_counts_once_and_a_copy_adds_nothing() -> None:
    state, c = contribution(None, ACCEPTED)
    assert c == Contribution("shop_a", ms(0), {"revenue_paise": 10_000, "orders": 1, "items": 3})
    assert contribution(state, ACCEPTED) == (state, None)


def test_refunds_by_amount_then_a_cancellation_takes_back_what_is_left() -> None:
    state, _ = contribution(None, ACCEPTED)
    refund = ev("order.refunded", 5, refund_paise=3_000)
    state, c = contribution(state, refund)
    assert c == Contribution("shop_a", ms(5), {"revenue_paise": -3_000, "refunded_paise": 3_000})
    assert contribution(state, refund) == (state, None)  # a copy
    state, c = contribution(state, ev("order.cancelled", 70))
    assert c == Contribution(
        "shop_a", ms(70), {"revenue_paise": -7_000, "cancelled_paise": 7_000, "cancelled_orders": 1}
    )
    # nothing is left to refund or cancel
    assert contribution(state, ev("order.refunded", 80, refund_paise=1))[1] is None
    assert contribution(state, ev("order.cancelled", 81))[1] is None
    assert state is not None and OrderSales.from_json(state.as_json()) == state


def test_a_refund_never_takes_more_than_is_left() -> None:
    state, _ = contribution(None, ACCEPTED)
    state, c = contribution(state, ev("order.refunded", 1, refund_paise=8_000))
    state, c = contribution(state, ev("order.refunded", 2, refund_paise=8_000))
    assert c is not None and c.values == {"revenue_paise": -2_000, "refunded_paise": 2_000}


def test_an_order_never_accepted_counts_nothing() -> None:
    assert contribution(None, ev("order.cancelled", 1)) == (None, None)
    assert contribution(None, ev("order.refunded", 1, refund_paise=5)) == (None, None)
    assert contribution(None, ev("order.created", 0)) == (None, None)
