"""Scripted browsing journeys through the session windows and the funnel (streams/funnel.py,
streams/windows.py): a journey that searches and buys converts, a cart left alone is abandoned
once the session closes, and a late event that bridges two sessions makes them one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from streams.funnel import funnel_values, outcome, session_values
from streams.windows import MINUTE_MS, Final, Sessions, Windows

T0 = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
GAP = 30 * MINUTE_MS
#: a session's grace: an app that sends its events late (offline, in batches) may send them up to
#: 30 minutes behind the session's latest
KIND = Sessions("sessions", gap_ms=GAP, grace_ms=30 * MINUTE_MS)


def _ms(minutes: float) -> int:
    return int((T0 + timedelta(minutes=minutes)).timestamp() * 1000)


def _tracked(session: str, kind: str) -> dict[str, Any]:
    return {"type": "analytics.tracked", "data": {"session_id": session, "kind": kind}}


def _journey(steps: list[tuple[str, float, str]]) -> list[Final]:
    """(session, minute, kind) in arrival order, each stamped with the highest time before it."""
    w = Windows(KIND)
    high = -1
    finals: list[Final] = []
    for session, minute, kind in steps:
        t = _ms(minute)
        assert w.add(session, t, session_values(_tracked(session, kind)), seen_ms=high) is None
        high = max(high, t)
        finals += w.advance(high)
    return finals + w.advance(_ms(24 * 60))


def test_browse_search_click_cart_and_purchase_is_one_converted_session() -> None:
    (s,) = _journey(
        [
            ("s1", 0, "PAGE_VIEW"),
            ("s1", 2, "SEARCH"),
            ("s1", 3, "SEARCH_RESULT_CLICKED"),
            ("s1", 4, "PRODUCT_VIEW"),
            ("s1", 5, "ADD_TO_CART"),
            ("s1", 7, "CHECKOUT_STARTED"),
            ("s1", 9, "PURCHASE"),  # the workflow's PURCHASE, in the order's session
        ]
    )
    assert (s.key, s.start_ms, s.end_ms) == ("s1", _ms(0), _ms(9) + GAP)
    assert s.values["duration_ms"] == 9 * MINUTE_MS
    assert (s.values["page_views"], s.values["searches"], s.values["events"]) == (2, 1, 7)
    o = outcome(s.values)
    assert o.converted and not o.abandoned_cart and not o.abandoned_checkout
    assert funnel_values(s.values)["converted_sessions"] == 1


def test_a_cart_left_alone_is_abandoned_once_the_session_closes() -> None:
    finals = _journey(
        [
            ("s2", 0, "SEARCH"),
            ("s2", 1, "ADD_TO_CART"),
            ("s2", 2, "CHECKOUT_STARTED"),
            ("s3", 45, "PAGE_VIEW"),  # another visitor, later: moves the watermark on
        ]
    )
    s2 = next(f for f in finals if f.key == "s2")
    o = outcome(s2.values)
    assert o.searched and not o.purchased and o.abandoned_cart and o.abandoned_checkout
    assert funnel_values(s2.values) == {
        "sessions": 1,
        "searched_sessions": 1,
        "converted_sessions": 0,
        "cart_sessions": 1,
        "abandoned_carts": 1,
        "abandoned_checkouts": 1,
        "purchases": 0,
    }
    # s2 closed when the watermark passed its last event + 30 min + grace, not before
    assert s2.end_ms == _ms(2) + GAP


def test_a_late_event_bridging_two_sessions_makes_them_one() -> None:
    (s,) = _journey(
        [
            ("s4", 0, "SEARCH"),
            ("s4", 40, "ADD_TO_CART"),  # 40 min later: a second session, for now
            ("s4", 20, "PRODUCT_VIEW"),  # arrives 20 min late: within its source's grace
            ("s4", 41, "PURCHASE"),
        ]
    )
    assert (s.start_ms, s.values["events"], s.values["duration_ms"]) == (
        _ms(0),
        4,
        41 * MINUTE_MS,
    )
    assert outcome(s.values).converted


def test_an_event_further_behind_than_the_grace_is_late_and_changes_nothing() -> None:
    w = Windows(KIND)
    w.add("s5", _ms(0), {"events": 1})
    w.add("s5", _ms(40), {"events": 1})
    late = w.add("s5", _ms(5), {"events": 1}, seen_ms=_ms(40))  # 35 min behind its source
    assert late is not None and late.event_ms == _ms(5)
    assert sorted(w.current("s5")) == [_ms(0), _ms(40)]  # still two sessions
