"""The workflows' notification catalogue: what each cause tells whom, of which kind, on which
channels, in which words. Plain data; the workflows role (`streams.agents.workflows`) reads the
rows a notice needs and produces one `notification.requested` per notice and recipient.

A notice's `step` (the derived event's id is UUIDv5 of the cause's id and its step), `title` and
`body` are Jinja2 templates, and each of its `params` a Jinja2 expression, over the cause's data
fields, `user` (the recipient) and, for a stock event, `product` and `shop` (the names the
projections hold). A param that comes out None is left out; the others go, as text, to the
templates of `streams/templates/` (`streams.messages`). Filters: `rupees` (paise as ₹1,234.50),
`lines` (an order's items as "2 x name, ...").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2

__all__ = ["NOTICES", "OWNER", "USER", "WATCHERS", "Notice", "fill"]

#: the user the cause names: the registered user, the order's customer, the applicant (for an
#: event the projections judge, the user its row names)
USER = "user"
#: the owner of the cause's shop (nobody while the shop is unknown)
OWNER = "owner"
#: each user who asked to be told when the product is back (`product.stock_alert_requested`)
WATCHERS = "watchers"


@dataclass(frozen=True)
class Notice:
    step: str
    to: str  # USER, OWNER or WATCHERS
    kind: str
    channels: tuple[str, ...]
    title: str | None
    body: str | None
    params: Mapping[str, str]  # param -> expression, in the order they are sent


_ORDER = {"order_id": "order_id", "shop_id": "shop_id"}
_LINES = {**_ORDER, "total": "total_paise | rupees", "items": "items | lines"}

#: cause (event type) -> its notices, in the order they are produced
NOTICES: Mapping[str, tuple[Notice, ...]] = {
    "user.registered": (
        Notice(
            "welcome",
            USER,
            "WELCOME",
            ("EMAIL",),
            None,
            None,
            {"name": "name", "email": "email"},
        ),
    ),
    "order.accepted": (
        Notice(
            "order_confirmed",
            USER,
            "ORDER_CONFIRMED",
            ("EMAIL", "SMS"),
            "Your order {{ order_id }} is confirmed",
            "Your order {{ order_id }} ({{ items | lines }}; {{ total_paise | rupees }}) is "
            "confirmed and being packed.",
            _LINES,
        ),
        Notice(
            "new_order",
            OWNER,
            "NEW_ORDER_FOR_SHOP",
            ("PUSH",),
            "New order {{ order_id }}",
            "New order {{ order_id }}: {{ items | lines }} ({{ total_paise | rupees }}).",
            _LINES,
        ),
    ),
    "order.rejected": (
        Notice(
            "order_rejected",
            USER,
            "ORDER_REJECTED",
            ("EMAIL",),
            "Your order {{ order_id }} could not be accepted",
            "Sorry, your order {{ order_id }} could not be accepted: {{ reason }}.",
            {**_ORDER, "reason": "reason"},
        ),
    ),
    "order.status_changed": (
        Notice(
            "status_{{ to_status | lower }}",
            USER,
            "ORDER_STATUS_CHANGED",
            ("EMAIL",),
            "Your order {{ order_id }} is {{ to_status | lower }}",
            "Your order {{ order_id }} is now {{ to_status | lower }}.",
            {**_ORDER, "status": "to_status"},
        ),
    ),
    "order.cancelled": (
        Notice(
            "order_cancelled",
            USER,
            "ORDER_CANCELLED",
            ("EMAIL",),
            "Your order {{ order_id }} is cancelled",
            "Your order {{ order_id }} is cancelled ({{ reason }}).",
            {**_ORDER, "reason": "reason"},
        ),
        Notice(
            "order_cancelled_shop",
            OWNER,
            "ORDER_CANCELLED",
            ("PUSH",),
            "Order {{ order_id }} cancelled",
            "Order {{ order_id }} was cancelled ({{ reason }}): do not pack it.",
            {**_ORDER, "reason": "reason"},
        ),
    ),
    "order.refunded": (
        Notice(
            "order_refunded",
            USER,
            "ORDER_REFUNDED",
            ("EMAIL",),
            "Refund of {{ refund_paise | rupees }} for order {{ order_id }}",
            "We refunded {{ refund_paise | rupees }} for your order {{ order_id }}.",
            {**_ORDER, "amount": "refund_paise | rupees", "reason": "reason"},
        ),
    ),
    "shopkeeper.applied": (
        Notice(
            "shopkeeper_applied",
            USER,
            "SHOPKEEPER_APPLIED",
            ("EMAIL",),
            "We received your shop application",
            "Thank you for applying to sell on MohallaMart as {{ business_name }}.",
            {"shop_id": "shop_id", "business_name": "business_name"},
        ),
    ),
    "shopkeeper.approved": (
        Notice(
            "shopkeeper_approved",
            USER,
            "SHOPKEEPER_APPROVED",
            ("EMAIL",),
            "Your shop is approved",
            "Good news: your shop is approved and open for orders on MohallaMart.",
            {"shop_id": "shop_id", "note": "note"},
        ),
    ),
    "shopkeeper.rejected": (
        Notice(
            "shopkeeper_rejected",
            USER,
            "SHOPKEEPER_REJECTED",
            ("EMAIL",),
            "Your shop application was not approved",
            "Sorry, we could not approve your shop application ({{ reason }}).",
            {"shop_id": "shop_id", "reason": "reason", "note": "note"},
        ),
    ),
    "product.out_of_stock": (
        Notice(
            "out_of_stock",
            OWNER,
            "OUT_OF_STOCK",
            ("PUSH", "EMAIL"),
            "Out of stock: {{ product }}",
            "{{ product }} is out of stock.",
            {"product": "product", "product_id": "product_id", "shop_id": "shop_id"},
        ),
    ),
    "product.back_in_stock": (
        Notice(
            "back_in_stock:{{ user }}",
            WATCHERS,
            "BACK_IN_STOCK",
            ("PUSH", "EMAIL"),
            "Back in stock: {{ product }}",
            "{{ product }} is back in stock{% if shop %} at {{ shop }}{% endif %}.",
            {
                "product": "product",
                "product_id": "product_id",
                "shop": "shop",
                "shop_id": "shop_id",
                "stock": "stock",
            },
        ),
    ),
}


def _rupees(paise: int | None) -> str:
    return f"₹{(paise or 0) / 100:,.2f}"


def _lines(items: list[dict[str, Any]]) -> str:
    return ", ".join(f"{i['quantity']} x {i.get('name') or i['product_id']}" for i in items)


_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
_ENV.filters["rupees"] = _rupees
_ENV.filters["lines"] = _lines


@functools.cache
def _template(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


@functools.cache
def _expression(source: str) -> Callable[..., Any]:
    return _ENV.compile_expression(source, undefined_to_none=True)


def fill(notice: Notice, facts: Mapping[str, Any], user: str) -> tuple[str, dict[str, Any]]:
    """(step, `notification.requested` data) of `notice` to `user`; `facts`: the cause's data
    fields and what the workflow read for it."""
    ctx = {**facts, "user": user}
    params = {name: _expression(expr)(**ctx) for name, expr in notice.params.items()}
    return _template(notice.step).render(ctx), {
        "user_id": user,
        "kind": notice.kind,
        "channels": list(notice.channels),
        "title": None if notice.title is None else _template(notice.title).render(ctx),
        "body": None if notice.body is None else _template(notice.body).render(ctx),
        "params": {name: str(value) for name, value in params.items() if value is not None},
    }
