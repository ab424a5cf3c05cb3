"""Browsing sessions and the funnel (issue 15), pure: what an `analytics.tracked` event adds to
its session, and what a closed session tells about search -> purchase conversion and cart
abandonment.

A session (`streams.windows.Sessions`, per `session_id`, closed after 30 minutes without
activity) counts its events by kind; when it is final, `outcome` reads it:

- searched: it had a search; purchased: it had a purchase (the workflow's PURCHASE carries the
  order's `session_id`, so an order placed in the session lands in it);
- converted: searched and purchased (search -> purchase conversion);
- abandoned cart: something was added to the cart and nothing purchased;
- abandoned checkout: a checkout started and nothing purchased.

`funnel_values` is what a closed session adds to its day's funnel (the Asia/Kolkata day of its
first event).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["COUNTS", "Outcome", "funnel_values", "outcome", "session_values"]

#: analytics.tracked kind -> the session count it adds to
COUNTS = {
    "PAGE_VIEW": "page_views",
    "PRODUCT_VIEW": "page_views",
    "SHOP_VIEW": "page_views",
    "SEARCH": "searches",
    "SEARCH_RESULT_CLICKED": "clicks",
    "ADD_TO_CART": "add_to_cart",
    "REMOVE_FROM_CART": "remove_from_cart",
    "CHECKOUT_STARTED": "checkouts",
    "PURCHASE": "purchases",
}


def session_values(event: Mapping[str, Any]) -> dict[str, int]:
    """What one `analytics.tracked` event adds to its session: one event, and its kind's count
    (OTHER adds only the event)."""
    kind = str(event["data"]["kind"])
    out = {"events": 1}
    if kind in COUNTS:
        out[COUNTS[kind]] = 1
    return out


@dataclass(frozen=True)
class Outcome:
    searched: bool
    purchased: bool
    converted: bool
    abandoned_cart: bool
    abandoned_checkout: bool


def outcome(values: Mapping[str, int]) -> Outcome:
    """What a final session tells (its counts, as `session_values` added them)."""
    searched = values.get("searches", 0) > 0
    purchased = values.get("purchases", 0) > 0
    return Outcome(
        searched=searched,
        purchased=purchased,
        converted=searched and purchased,
        abandoned_cart=values.get("add_to_cart", 0) > 0 and not purchased,
        abandoned_checkout=values.get("checkouts", 0) > 0 and not purchased,
    )


def funnel_values(values: Mapping[str, int]) -> dict[str, int]:
    """What a final session adds to its day's funnel."""
    o = outcome(values)
    return {
        "sessions": 1,
        "searched_sessions": int(o.searched),
        "converted_sessions": int(o.converted),
        "cart_sessions": int(values.get("add_to_cart", 0) > 0),
        "abandoned_carts": int(o.abandoned_cart),
        "abandoned_checkouts": int(o.abandoned_checkout),
        "purchases": values.get("purchases", 0),
    }
