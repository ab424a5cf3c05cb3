"""The workflows' notification catalogue (`streams.notices`) and the shared wait for the
projections (`streams.agents._read_side.wait_projected`)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from connectors.base import DependencyDown
from schemas.catalog import EVENT_TYPES
from streams.agents._read_side import wait_projected
from streams.notices import NOTICES, OWNER, USER, WATCHERS, fill
from streams.reliability import Record

_ROWS = {"product": "Nandini Toned Milk", "shop": "Sri Lakshmi Provision Stores"}


def _facts(type_: str, **over: Any) -> dict[str, Any]:
    data = copy.deepcopy(EVENT_TYPES[type_].example)
    data.update(over)
    return {**data, **(_ROWS if type_.startswith("product.") else {})}


@pytest.mark.parametrize(
    ("cause", "notice"),
    [(cause, n) for cause, notices in NOTICES.items() for n in notices],
    ids=lambda x: x if isinstance(x, str) else x.kind,
)
def test_every_notice_fills_from_its_causes_example(cause: str, notice: Any) -> None:
    assert cause in EVENT_TYPES
    assert notice.to in (USER, OWNER, WATCHERS)
    step, data = fill(notice, _facts(cause), "usr_9")
    assert step and data["user_id"] == "usr_9" and data["kind"] == notice.kind
    assert all(isinstance(v, str) for v in data["params"].values())
    assert "None" not in step


def test_an_accepted_order_reads_as_before() -> None:
    """The copy and params, byte for byte as the workflows wrote them before the catalogue."""
    confirmed, new_order = NOTICES["order.accepted"]
    step, data = fill(confirmed, _facts("order.accepted"), "usr_1001")
    params = {
        "order_id": "ord_1001",
        "shop_id": "shop_201",
        "total": "₹417.00",
        "items": "2 x prd_3001, 1 x prd_3002",
    }
    assert (step, data) == (
        "order_confirmed",
        {
            "user_id": "usr_1001",
            "kind": "ORDER_CONFIRMED",
            "channels": ["EMAIL", "SMS"],
            "title": "Your order ord_1001 is confirmed",
            "body": "Your order ord_1001 (2 x prd_3001, 1 x prd_3002; ₹417.00) is confirmed and "
            "being packed.",
            "params": params,
        },
    )
    assert list(data["params"]) == list(params)  # the order the Avro map is written in
    step, data = fill(new_order, _facts("order.accepted"), "usr_2001")
    assert (step, data["body"]) == (
        "new_order",
        "New order ord_1001: 2 x prd_3001, 1 x prd_3002 (₹417.00).",
    )


def test_a_status_change_a_refund_and_a_welcome_read_as_before() -> None:
    (changed,) = NOTICES["order.status_changed"]
    step, data = fill(changed, _facts("order.status_changed"), "usr_1001")
    assert step == "status_completed"
    assert (data["title"], data["body"]) == (
        "Your order ord_1001 is completed",
        "Your order ord_1001 is now completed.",
    )
    assert data["params"] == {"order_id": "ord_1001", "shop_id": "shop_201", "status": "COMPLETED"}
    (refunded,) = NOTICES["order.refunded"]
    _, data = fill(refunded, _facts("order.refunded", reason=None), "usr_1001")
    assert data["title"] == "Refund of ₹52.00 for order ord_1001"
    assert data["params"] == {"order_id": "ord_1001", "shop_id": "shop_201", "amount": "₹52.00"}
    (welcome,) = NOTICES["user.registered"]
    facts = _facts("user.registered")
    _, data = fill(welcome, facts, facts["user_id"])
    assert (data["title"], data["body"]) == (None, None)
    assert data["params"] == {"name": facts["name"], "email": facts["email"]}


def test_a_missing_value_reads_none_in_the_copy_and_is_left_out_of_the_params() -> None:
    (to_customer, to_shop) = NOTICES["order.cancelled"]
    _, data = fill(to_customer, _facts("order.cancelled", reason=None), "usr_1001")
    assert data["body"] == "Your order ord_1002 is cancelled (None)."
    assert "reason" not in data["params"]
    _, data = fill(to_shop, _facts("order.cancelled"), "usr_2001")
    assert data["body"].endswith("): do not pack it.")


def test_back_in_stock_names_the_shop_only_when_known_and_has_a_step_per_user() -> None:
    (notice,) = NOTICES["product.back_in_stock"]
    step, data = fill(notice, _facts("product.back_in_stock"), "usr_7")
    assert step == "back_in_stock:usr_7"
    assert data["body"] == "Nandini Toned Milk is back in stock at Sri Lakshmi Provision Stores."
    _, data = fill(notice, {**_facts("product.back_in_stock"), "shop": None}, "usr_7")
    assert data["body"] == "Nandini Toned Milk is back in stock."
    assert "shop" not in data["params"]


# --- wait_projected ------------------------------------------------------------------------------
def _record(offset: int, topic: str = "t") -> Record:
    return Record(
        topic=topic,
        partition=0,
        offset=offset,
        key=None,
        value=None,
        headers={},
        timestamp_ms=0,
        event={"id": f"e{offset}", "type": "order.cancelled"},
    )


class _Progress:
    """The projections' group, committed up to `offset` (exclusive)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    async def committed(self, tps: set[tuple[str, int]]) -> dict[tuple[str, int], int]:
        return {tp: self.offset for tp in tps}


async def test_wait_projected_returns_once_nothing_is_pending() -> None:
    calls: list[int] = []

    async def pending(conn: Any, waiting: list[Record]) -> list[Record]:
        calls.append(len(waiting))
        return waiting[1:] if len(calls) == 1 else []

    assert await wait_projected(None, [_record(0), _record(1)], _Progress(0), pending=pending) == []
    assert calls == [2, 1]


async def _never_applied(conn: Any, waiting: list[Record]) -> list[Record]:
    return waiting


async def test_wait_projected_returns_the_records_the_group_committed_past() -> None:
    passed = await wait_projected(
        None, [_record(3), _record(7)], _Progress(8), pending=_never_applied
    )
    assert [r.offset for r in passed] == [3, 7]


async def test_wait_projected_gives_up_as_a_dependency_down() -> None:
    # the group is past it, but a redriven record's offset is not the group's
    records = [_record(3), _record(1, topic="t.redrive")]
    with pytest.raises(DependencyDown, match="have not applied 1 event"):
        await wait_projected(None, records, _Progress(8), patience_s=0.2, pending=_never_applied)
