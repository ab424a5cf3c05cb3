"""The seeds' workflows beyond registration and order acceptance: out of stock and back in stock,
the shopkeeper's application, approval and rejection, cancellations and refunds, the analytics
event of an accepted order. Each checked where a user would see it: the email in the Maildir, the
push or SMS at the provider, the event on its topic."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.catalog import TOPICS
from streams.agents.notifications import CHANNELS, channel_topic
from streams.agents.workflows import derived_id
from tests.integration._pipeline import Pipeline, example, order_created, uid
from tests.integration._support import poll
from tests.integration.test_notifications import (
    _drained,
    _mails,
    _order,
    _order_event,
    _outbox,
    _register,
    _shop_with_product,
)

pytestmark = pytest.mark.integration

PRODUCT = "Sona Masoori Rice 5 kg"


def _settled(p: Pipeline) -> None:
    """Every step has handled what is in its topics now: nothing more is on its way."""
    p.caught_up("stock", ["order", "product"], timeout=120)
    p.caught_up("workflows", ["user", "order", "product", "shopkeeper"], timeout=120)
    channels = [channel_topic(p.settings.topic_namespace, c) for c in CHANNELS]
    p.caught_up("notifications", ["notification"], timeout=120, topics=channels)


def _subjects(p: Pipeline, address: str, prefix: str) -> list[str]:
    return [m["Subject"] for m in _mails(p, address) if m["Subject"].startswith(prefix)]


def _restock(p: Pipeline, shop: str, pid: str, delta: int) -> None:
    p.post(
        "product.stock_adjusted",
        example("product.stock_adjusted", product_id=pid, shop_id=shop, delta=delta),
    )


def test_out_of_stock_alerts_the_shop_and_back_in_stock_tells_who_asked_once(
    pipeline: Pipeline, providers: Any
) -> None:
    p = pipeline
    _drained(p)  # what earlier tests queued goes first: this test measures its own flow
    owner, owner_mail, _ = _register(p, push_opt_in=True, email_opt_in=True)
    asker, asker_mail, _ = _register(
        p, push_opt_in=True, email_opt_in=True, back_in_stock_alerts=True
    )
    no_alerts, no_alerts_mail, _ = _register(
        p, push_opt_in=True, email_opt_in=True, back_in_stock_alerts=False
    )
    buyer, _, _ = _register(p, email_opt_in=False)
    shop, pid = _shop_with_product(p, owner, stock=1)

    _order(p, shop, pid, buyer, 1)  # the last one: out of stock
    poll(
        lambda: [m for m in providers.sent("/push", owner) if "Out of stock" in m["title"]] or None,
        timeout=60,
        what="the shop's out-of-stock push",
    )
    poll(
        lambda: _subjects(p, owner_mail, "Out of stock") or None,
        timeout=60,
        what="the shop's out-of-stock email",
    )
    (alert,) = _subjects(p, owner_mail, "Out of stock")
    assert alert == f"Out of stock: {PRODUCT}"

    for user in (asker, no_alerts):
        p.post(
            "product.stock_alert_requested",
            {"product_id": pid, "shop_id": shop, "user_id": user},
        )
    p.wait_row(
        "SELECT count(*) FROM stock_alerts WHERE product_id = %s",
        pid,
        until=lambda r: r[0] == 2,
        what="the two alerts remembered",
    )
    _restock(p, shop, pid, 5)
    poll(
        lambda: _subjects(p, asker_mail, "Back in stock") or None,
        timeout=60,
        what="the back-in-stock email",
    )
    poll(
        lambda: (
            [m for m in providers.sent("/push", asker) if "Back in stock" in m["title"]] or None
        ),
        timeout=60,
        what="the back-in-stock push",
    )
    mail = next(m for m in _mails(p, asker_mail) if m["Subject"].startswith("Back in stock"))
    assert mail["Subject"] == f"Back in stock: {PRODUCT}"
    text = mail.get_body(preferencelist=("plain",))
    assert text is not None and "5 in stock" in text.get_content()

    # out again, back again: the one who asked was told once and is not told again
    _order(p, shop, pid, buyer, 5)
    p.wait_row("SELECT stock FROM products WHERE product_id = %s", pid, until=lambda r: r[0] == 0)
    _restock(p, shop, pid, 3)
    p.wait_row("SELECT stock FROM products WHERE product_id = %s", pid, until=lambda r: r[0] == 3)
    _settled(p)
    assert len(_subjects(p, asker_mail, "Back in stock")) == 1
    assert len([m for m in providers.sent("/push", asker) if "Back in stock" in m["title"]]) == 1
    # the user whose alerts are off, and the buyer who never asked: nothing
    assert _subjects(p, no_alerts_mail, "Back in stock") == []
    assert not [m for m in providers.sent("/push", no_alerts) if "Back in stock" in m["title"]]
    # the shop was told each time it ran out
    assert len(_subjects(p, owner_mail, "Out of stock")) == 2


def test_a_shopkeepers_application_approval_and_rejection_are_emailed(pipeline: Pipeline) -> None:
    p = pipeline
    _drained(p)  # what earlier tests queued goes first: this test measures its own flow
    approved, approved_mail, _ = _register(p, email_opt_in=True)
    rejected, rejected_mail, _ = _register(p, email_opt_in=True)
    shops = {}
    for user in (approved, rejected):
        shop = shops[user] = uid("shop")
        p.post("shop.created", example("shop.created", shop_id=shop, owner_user_id=user))
        p.post(
            "shopkeeper.applied",
            example(
                "shopkeeper.applied",
                shop_id=shop,
                user_id=user,
                shopkeeper_id=uid("sk"),
                business_name="Lakshmi <Stores> & Sons",
            ),
        )
    for address in (approved_mail, rejected_mail):
        poll(
            lambda a=address: _subjects(p, a, "We received your shop application") or None,
            timeout=60,
            what="the application's acknowledgement",
        )
    mail = _mails(p, approved_mail)[-1]
    html = mail.get_body(preferencelist=("html",))
    assert html is not None and "Lakshmi &lt;Stores&gt; &amp; Sons" in html.get_content()

    p.post(
        "shopkeeper.approved",
        example("shopkeeper.approved", shop_id=shops[approved], user_id=approved),
    )
    p.post(
        "shopkeeper.rejected",
        example("shopkeeper.rejected", shop_id=shops[rejected], user_id=rejected),
    )
    poll(
        lambda: _subjects(p, approved_mail, "Your shop is approved") or None,
        timeout=60,
        what="the approval email",
    )
    poll(
        lambda: _subjects(p, rejected_mail, "Your shop application was not approved") or None,
        timeout=60,
        what="the rejection email",
    )
    ok = next(m for m in _mails(p, approved_mail) if m["Subject"] == "Your shop is approved")
    ok_text = ok.get_body(preferencelist=("plain",))
    assert ok_text is not None and "FSSAI licence and ID verified" in ok_text.get_content()
    no = next(m for m in _mails(p, rejected_mail) if "not approved" in m["Subject"])
    no_text = no.get_body(preferencelist=("plain",))
    assert no_text is not None and "INCOMPLETE_DOCUMENTS" in no_text.get_content()
    # the approval enabled the shop (what search and listings read)
    p.wait_row(
        "SELECT status FROM shopkeepers WHERE shop_id = %s",
        shops[approved],
        until=lambda r: r[0] == "APPROVED",
    )
    _settled(p)
    assert len(_subjects(p, approved_mail, "Your shop is approved")) == 1
    assert _subjects(p, rejected_mail, "Your shop is approved") == []


def test_accepted_orders_are_tracked_cancellations_and_refunds_notify(
    pipeline: Pipeline, providers: Any
) -> None:
    p = pipeline
    _drained(p)  # what earlier tests queued goes first: this test measures its own flow
    owner, _, _ = _register(p, push_opt_in=True)
    customer, address, _ = _register(p, email_opt_in=True)
    shop, pid = _shop_with_product(p, owner, stock=10)
    kept, cancelled = _order(p, shop, pid, customer, 2), _order(p, shop, pid, customer, 1)

    accepted = _order_event(p, "order.accepted", kept)
    tracked = poll(
        lambda: (
            [
                e
                for e in p.events_of(
                    TOPICS["analytics"].name, "analytics.tracked", [f"order-{kept}"]
                )
                if str(e["id"]) == derived_id(accepted["id"], "analytics")
            ]
            or None
        ),
        timeout=60,
        what="the PURCHASE analytics event",
    )
    (purchase,) = tracked
    assert purchase["trace_id"] == accepted["trace_id"]
    d = purchase["data"]
    assert (d["kind"], d["order_id"], d["user_id"], d["shop_id"]) == (
        "PURCHASE",
        kept,
        customer,
        shop,
    )
    assert d["value_paise"] == accepted["data"]["total_paise"]

    _order_event(p, "order.accepted", cancelled)
    # the event names another user: the order's own customer is told, never that one
    other, other_mail, _ = _register(p, email_opt_in=True)
    p.post(
        "order.cancelled",
        example("order.cancelled", order_id=cancelled, shop_id=shop, user_id=other),
    )
    p.post(
        "order.status_changed",
        example(
            "order.status_changed",
            order_id=kept,
            shop_id=shop,
            user_id=customer,
            from_status="PROCESSING",
            to_status="COMPLETED",
        ),
    )
    p.post(
        "order.refunded",
        example(
            "order.refunded",
            order_id=kept,
            shop_id=shop,
            user_id=customer,
            refund_paise=5200,
            returned_items=[{"product_id": pid, "quantity": 1}],
        ),
    )
    poll(
        lambda: _subjects(p, address, f"Your order {cancelled} is cancelled") or None,
        timeout=60,
        what="the cancellation email",
    )
    poll(
        lambda: (
            [
                m
                for m in providers.sent("/push", owner)
                if m["title"] == f"Order {cancelled} cancelled"
            ]
            or None
        ),
        timeout=60,
        what="the shop's cancellation push",
    )
    poll(
        lambda: _subjects(p, address, f"Refund of ₹52.00 for order {kept}") or None,
        timeout=60,
        what="the refund email",
    )
    refunded = _order_event(p, "order.refunded", kept)
    assert _outbox(p, refunded["id"], "order_refunded") == {"EMAIL": "SENT"}
    # an illegal change (a cancelled order completed): refused by the projections, told nobody
    illegal = p.post(
        "order.status_changed",
        example(
            "order.status_changed",
            order_id=cancelled,
            shop_id=shop,
            user_id=customer,
            from_status="CANCELLED",
            to_status="COMPLETED",
        ),
    )
    poll(
        lambda: p.dead_letters(TOPICS["order"].name, illegal["id"]) or None,
        timeout=60,
        what="the illegal change dead-lettered by the projections",
    )
    _settled(p)
    assert _subjects(p, address, f"Your order {cancelled} is completed") == []
    assert _outbox(p, illegal["id"], "status_completed") == {}
    assert len(_subjects(p, address, f"Your order {kept} is completed")) == 1
    assert len(_subjects(p, address, f"Your order {cancelled} is cancelled")) == 1
    assert _subjects(p, other_mail, "Your order") == []
    assert len(_subjects(p, address, f"Refund of ₹52.00 for order {kept}")) == 1


def test_a_purchase_joins_the_browsing_session_its_order_was_placed_in(pipeline: Pipeline) -> None:
    p = pipeline
    owner, _, _ = _register(p)
    customer, _, _ = _register(p)
    shop, pid = _shop_with_product(p, owner, stock=5)
    session, oid = uid("sess"), uid("ord")
    ev = order_created(oid, shop, {pid: 1})
    ev["data"].update(user_id=customer, session_id=session)
    p.post_event(ev)
    accepted = _order_event(p, "order.accepted", oid)
    assert accepted["data"]["session_id"] == session
    (purchase,) = poll(
        lambda: p.events_of(TOPICS["analytics"].name, "analytics.tracked", [session]) or None,
        timeout=60,
        what="the PURCHASE in its session",
    )
    d = purchase["data"]
    assert (d["kind"], d["order_id"], d["session_id"]) == ("PURCHASE", oid, session)
