"""The analytics role's steps as plain code (streams/analytics.py): what an event contributes,
and a window stage partition: copies skipped by position, lateness by the stamp, the watermark
the minimum of the source partitions', state put back from its table entries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from streams.analytics import (
    Contribution,
    StagePartition,
    contributions,
    search_term,
    window_kinds,
)
from streams.sales import OrderSales

GRACE = {
    "sales_1m": 5.0,
    "sales_1h": 60.0,
    "sales_1d": 300.0,
    "trending": 30.0,
    "search_terms": 30.0,
    "sessions": 300.0,
}
KINDS = window_kinds(GRACE, 1800)
SOURCES = ["o:0", "o:1"]
T0 = int(datetime(2026, 12, 6, 10, 0, tzinfo=UTC).timestamp() * 1000)


def accepted(oid: str, at_ms: int, total: int = 1000) -> dict[str, Any]:
    return {
        "id": f"acc-{oid}",
        "type": "order.accepted",
        "occurred_at": datetime.fromtimestamp(at_ms / 1000, UTC),
        "data": {
            "order_id": oid,
            "shop_id": "shop_a",
            "items": [
                {"product_id": "p1", "quantity": 2},
                {"product_id": "p2", "quantity": 1},
                {"product_id": "p1", "quantity": 1},
            ],
            "total_paise": total,
        },
    }


def test_an_accepted_order_adds_sales_and_each_product_once_to_trending() -> None:
    state, out = contributions(accepted("o1", T0), None)
    assert isinstance(state, OrderSales)
    assert out == [
        Contribution("sales", "shop_a", T0, {"revenue_paise": 1000, "orders": 1, "items": 4}),
        Contribution("trending", "shop_a/p1", T0, {"units": 3, "orders": 1}),
        Contribution("trending", "shop_a/p2", T0, {"units": 1, "orders": 1}),
    ]
    # the same event again adds nothing
    assert contributions(accepted("o1", T0), state) == (state, [])


def test_a_search_counts_for_its_session_and_its_normalised_text() -> None:
    ev = {
        "id": "e1",
        "type": "analytics.tracked",
        "occurred_at": T0,
        "data": {
            "session_id": "s1",
            "kind": "SEARCH",
            "query": "  Basmati   RICE ",
            "shop_id": "x",
        },
    }
    _, out = contributions(ev, None)
    assert out == [
        Contribution("sessions", "s1", T0, {"events": 1, "searches": 1, "shop:x": 1}),
        Contribution("search_terms", "basmati rice", T0, {"searches": 1}),
    ]
    assert search_term("\tMilk\n") == "milk"


def rec(t: int, seen: int, src: str = "o:0", key: str = "shop_a") -> dict[str, Any]:
    return {
        "a": "sales",
        "k": key,
        "t": t,
        "v": {"orders": 1},
        "w": seen,
        "s": src,
        "e": f"e{t}",
        "y": "order.accepted",
    }


def test_a_copy_forwarded_again_is_skipped_by_its_position() -> None:
    part = StagePartition(KINDS, SOURCES)
    assert not part.copy_of_applied("o:0:10:0")
    assert not part.copy_of_applied("o:0:10:1")  # the next record of the same source record
    assert part.copy_of_applied("o:0:10:0")  # forwarded again
    assert part.copy_of_applied("o:0:9:7")
    assert not part.copy_of_applied("o:1:3:0")  # another source partition: its own order
    assert not part.copy_of_applied("o:0:11:0")
    assert part.copy_of_applied(f"o:0:10:{10**13 + T0}")  # a tick's mark after offset 10


def test_the_stage_watermark_is_the_minimum_of_its_sources_and_late_is_judged_by_the_stamp() -> (
    None
):
    part = StagePartition(KINDS, SOURCES)
    assert part.apply(rec(T0 + 1000, -1)) == []
    assert part.close() == []  # o:1 has no watermark yet
    part.apply({"m": "o:1", "w": T0 + 65_000})
    assert part.watermark == T0 + 1000  # o:0 is behind
    part.apply({"m": "o:0", "w": T0 + 65_000})
    finals = part.close()
    assert [(f.window, f.start_ms) for f in finals] == [("sales_1m", T0)]
    # an event of the closed minute whose own source partition had passed end + grace: late
    late = part.apply(rec(T0 + 2000, T0 + 65_000, src="o:1"))
    assert [x.late.window for x in late] == ["sales_1m"]
    # one whose source was still within grace counts, for the windows still open
    assert part.apply(rec(T0 + 70_000, T0 + 64_000)) == []


def test_a_partition_put_back_from_its_entries_goes_on_exactly_as_before() -> None:
    a = StagePartition(KINDS, SOURCES)
    for i in range(5):
        a.apply(rec(T0 + i * 20_000, T0 + i * 20_000, src="o:0", key=f"shop_{i % 2}"))
    a.apply({"m": "o:1", "w": T0 + 10_000})
    a.close()
    entries, _, _, _ = a.take_changes()
    marker = a.marker()
    b = StagePartition(KINDS, SOURCES, marker)
    b.load((k, v) for k, v in entries.items() if v)
    for part in (a, b):
        part.apply({"m": "o:1", "w": T0 + 3_600_000 * 30})
        part.apply({"m": "o:0", "w": T0 + 3_600_000 * 30})
    fa = sorted((f.window, f.key, f.start_ms, tuple(sorted(f.values.items()))) for f in a.close())
    fb = sorted((f.window, f.key, f.start_ms, tuple(sorted(f.values.items()))) for f in b.close())
    assert fa == fb and len(fa) > 5
