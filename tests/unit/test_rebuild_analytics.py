"""`mohallamart rebuild analytics`: which items of a bundle the cut-over applies when the live
window stage wrote its state in the middle of it (`_within`)."""

from __future__ import annotations

from mohallamart.rebuild_analytics import _within

SRC = "ns.order.events:2"


def test_an_item_at_or_below_the_live_router_position_of_its_source_was_applied() -> None:
    routed = {SRC: [40, 3]}
    assert _within({"a": "sales", "s": SRC, "o": 40, "i": 3}, routed)
    assert _within({"a": "sales", "s": SRC, "o": 39, "i": 9}, routed)


def test_an_item_past_it_or_of_a_source_the_stage_has_not_applied_was_not() -> None:
    routed = {SRC: [40, 3]}
    assert not _within({"a": "sales", "s": SRC, "o": 40, "i": 4}, routed)
    assert not _within({"a": "sales", "s": SRC, "o": 41, "i": 0}, routed)
    assert not _within({"a": "sales", "s": "ns.order.events:3", "o": 1, "i": 0}, routed)


def test_a_mark_is_judged_by_its_own_source_and_an_item_without_a_position_applies() -> None:
    routed = {SRC: [40, 3]}
    assert _within({"m": SRC, "w": 5, "o": 40, "i": 2}, routed)
    assert not _within({"m": SRC, "w": 5, "o": 40, "i": 10**13 + 5}, routed)
    assert _within({"m": SRC, "w": 5}, routed)  # from a router before positions
