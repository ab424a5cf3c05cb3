"""The stock role's decisions, on a plain dict (the worker uses a Faust table)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.lifecycle import ORDER_TRANSITIONS, PRODUCT_TRANSITIONS, transition
from streams.reliability import Permanent
from streams.stock_book import StockBook

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def ev(type_: str, at: int = 0, **data: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": type_,
        "occurred_at": T0 + timedelta(seconds=at),
        "trace_id": "t",
        "data": {"shop_id": "s1", **data},
    }


def order(oid: str, *items: tuple[str, int]) -> dict[str, Any]:
    return ev(
        "order.created",
        order_id=oid,
        user_id="u1",
        total_paise=100,
        items=[
            {"product_id": p, "quantity": q, "unit_price_paise": 10, "name": p} for p, q in items
        ],
    )


def types(out: list[Any]) -> list[str]:
    return [d.type for d in out]


@pytest.fixture
def book() -> StockBook:
    return StockBook({}, wait_unknown_ms=0)


def test_an_order_reserves_every_item_or_none(book: StockBook) -> None:
    book.apply(ev("product.created", product_id="a", initial_stock=5), 0, 0)
    book.apply(ev("product.created", product_id="b", initial_stock=1), 0, 0)
    out = book.apply(order("o1", ("a", 2), ("b", 2)), 0, 0)
    assert types(out) == ["order.rejected"]
    assert out[0].data["reason"] == "INSUFFICIENT_STOCK"
    assert out[0].data["items"] == [
        {
            "product_id": "b",
            "reason": "INSUFFICIENT_STOCK",
            "requested_quantity": 2,
            "available_quantity": 1,
        }
    ]
    assert book.table["p:a"]["stock"] == 5 and book.table["p:b"]["stock"] == 1
    out = book.apply(order("o2", ("a", 2), ("b", 1)), 0, 0)
    assert types(out) == [
        "product.stock_changed",
        "product.stock_changed",
        "product.out_of_stock",
        "order.accepted",
    ]
    assert book.table["p:a"]["stock"] == 3 and book.table["p:b"]["stock"] == 0
    # each product's stock version: 1 for its initial stock, 2 for this reservation
    assert [d.data["sequence"] for d in out if d.type == "product.stock_changed"] == [2, 2]


def test_cancel_returns_stock_and_back_in_stock_is_derived(book: StockBook) -> None:
    book.apply(ev("product.created", product_id="a", initial_stock=1), 0, 0)
    book.apply(order("o1", ("a", 1)), 0, 0)
    out = book.apply(ev("order.cancelled", 5, order_id="o1", user_id="u1"), 0, 0)
    assert types(out) == ["product.stock_changed", "product.back_in_stock"]
    assert out[0].data["delta"] == 1 and out[0].data["reason"] == "ORDER_CANCELLED"
    # cancelled twice: refused (Cancelled -> Cancelled is not in the lifecycle), nothing returned
    with pytest.raises(Permanent, match="order.cancelled is not allowed when the entity is CANC"):
        book.apply(ev("order.cancelled", 6, order_id="o1", user_id="u1"), 0, 0)
    assert book.table["p:a"]["stock"] == 1


def test_refund_returns_only_what_came_back(book: StockBook) -> None:
    book.apply(ev("product.created", product_id="a", initial_stock=10), 0, 0)
    book.apply(order("o1", ("a", 4)), 0, 0)
    # refund before completion: refused, no stock effect
    refund = ev(
        "order.refunded",
        9,
        order_id="o1",
        user_id="u1",
        refund_paise=1,
        reason="DAMAGED",
        returned_items=[{"product_id": "a", "quantity": 3}],
    )
    with pytest.raises(Permanent, match="allowed from: COMPLETED"):
        book.apply(refund, 0, 0)
    book.apply(
        ev("order.status_changed", 5, order_id="o1", user_id="u1", to_status="COMPLETED"), 0, 0
    )
    out = book.apply(refund, 0, 0)
    assert [(d.data["delta"], d.data["stock_after"]) for d in out] == [(3, 9)]


def test_stock_never_negative_and_redelivered_adjustments_apply_once(book: StockBook) -> None:
    book.apply(ev("product.created", product_id="a", initial_stock=2), 0, 0)
    with pytest.raises(Permanent, match="negative"):
        book.apply(ev("product.stock_adjusted", product_id="a", delta=-3, reason="LOSS"), 0, 0)
    adj = ev("product.stock_adjusted", product_id="a", delta=5, reason="RESTOCK")
    assert len(book.apply(adj, 0, 0)) == 1
    assert book.apply(adj, 0, 0) == []
    assert book.table["p:a"]["stock"] == 7


def test_derived_ids_are_deterministic() -> None:
    created = ev("product.created", product_id="a", initial_stock=3)
    o = order("o1", ("a", 1))
    runs = []
    for _ in range(2):
        b = StockBook({}, wait_unknown_ms=0)
        b.apply(created, 0, 0)
        runs.append([(d.id, d.occurred_at) for d in b.apply(o, 0, 0)])
    assert runs[0] == runs[1]
    assert all(at == o["occurred_at"] + timedelta(milliseconds=1) for _, at in runs[0])


def test_an_unknown_product_is_waited_for_then_rejected() -> None:
    book = StockBook({}, wait_unknown_ms=1000)
    assert book.apply(order("o1", ("late", 1)), 3, now_ms=0) == []
    assert book.apply(order("o2", ("never", 1)), 3, now_ms=0) == []
    out = book.apply(ev("product.created", product_id="late", initial_stock=1), 3, 500)
    assert types(out) == [
        "product.stock_changed",
        "product.stock_changed",
        "product.out_of_stock",
        "order.accepted",
    ]
    assert book.expire(3, now_ms=999) == []
    out = book.expire(3, now_ms=1000)
    assert types(out) == ["order.rejected"] and out[0].data["reason"] == "UNKNOWN_PRODUCT"
    assert not book.has_waiting(3)


def test_lifecycle_tables_name_the_illegal_transition() -> None:
    assert transition(PRODUCT_TRANSITIONS, {"type": "product.published"}, "DRAFT") == "PUBLISHED"
    with pytest.raises(
        ValueError, match=r"product.archived is not allowed when the entity is DRAFT"
    ):
        transition(PRODUCT_TRANSITIONS, {"type": "product.archived"}, "DRAFT")
    done = {"type": "order.status_changed", "data": {"to_status": "COMPLETED"}}
    assert transition(ORDER_TRANSITIONS, done, "PROCESSING") == "COMPLETED"
    with pytest.raises(ValueError, match="allowed from: PROCESSING"):
        transition(ORDER_TRANSITIONS, done, "PENDING")


def test_an_accepted_order_carries_its_browsing_session(book: StockBook) -> None:
    book.apply(ev("product.created", product_id="a", initial_stock=5), 0, 0)
    placed = order("o1", ("a", 1))
    placed["data"]["session_id"] = "sess_1"
    (accepted,) = [d for d in book.apply(placed, 0, 0) if d.type == "order.accepted"]
    assert accepted.data["session_id"] == "sess_1"
    (accepted,) = [d for d in book.apply(order("o2", ("a", 1)), 0, 0) if d.type == "order.accepted"]
    assert accepted.data["session_id"] is None  # optional: a client that gives none


def test_a_routed_copy_is_known_by_its_router_read_position() -> None:
    from streams.agents.stock import routed_copy

    routed: dict[str, int] = {}

    def at(source: str, offset: int) -> dict[str, bytes]:
        return {"x-routed-from": f"{source}:{offset}".encode()}

    orders, products = "mm.order.events:3", "mm.product.events:0"
    assert [routed_copy(at(orders, o), routed) for o in (10, 11, 15)] == [False] * 3
    # the router started over at its committed offset: every copy, however far back, skipped
    assert [routed_copy(at(orders, o), routed) for o in (11, 12, 15)] == [True] * 3
    assert routed_copy(at(orders, 16), routed) is False
    # each router input partition has its own position (a redrive topic is another input)
    assert routed_copy(at(products, 2), routed) is False
    assert routed_copy(at("mm.order.events.redrive:3", 1), routed) is False
    assert routed == {orders: 16, products: 2, "mm.order.events.redrive:3": 1}
    assert routed_copy({}, routed) is False  # a tick, or routed before the header existed
