"""Notifications (first slice of issue 7): the welcome email of a registration, sent once per event
through the outbox, opt-outs respected, a replay of the role sending nothing new."""

from __future__ import annotations

import email.policy
import os
import random
import time
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from schemas.catalog import TOPICS
from streams.agents.notifications import CHANNELS, channel_topic
from streams.agents.workflows import derived_id
from streams.app import stock_by_shop_topic
from streams.messages import message_id
from tests.integration._cli import mohallamart
from tests.integration._pipeline import Pipeline, example, order_created, uid
from tests.integration._readside import reader
from tests.integration._support import poll, report

pytestmark = pytest.mark.integration


#: Maildir file name -> (delivered at, recipient, bytes): a message file never changes once
#: delivered, so each is read once (a CI run leaves ~10,000 in the Maildir)
_MAILDIR: dict[str, tuple[float, str, bytes]] = {}


def _mails(p: Pipeline, to: str) -> list[EmailMessage]:
    """The messages the local SMTP server stored for `to`, oldest first."""
    maildir = p.settings.stack_dir / "smtp" / "maildir"
    for sub in ("new", "cur"):
        folder = maildir / sub
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            name = entry.name.split(":", 1)[0]  # cur/ files gain flags
            if name in _MAILDIR:
                continue
            raw = Path(entry.path).read_bytes()
            rcpt = message_from_bytes(raw, policy=email.policy.compat32)["X-Smtp-Rcpt-To"]
            _MAILDIR[name] = (entry.stat().st_mtime, str(rcpt), raw)
    out = []
    for _, _, raw in sorted(v for v in _MAILDIR.values() if v[1] == to):
        parsed = message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        out.append(parsed)
    return out


def _register(
    p: Pipeline, *, address: str | None = None, phone: str | None = None, **prefs: Any
) -> tuple[str, str, dict[str, Any]]:
    user = uid("usr")
    address = address or f"{user}@example.in"
    data = example(
        "user.registered",
        user_id=user,
        email=address,
        name="Priya <b>& Co</b>",
        phone=phone or "+9198" + str(random.randrange(10**7, 10**8)),
    )
    data["preferences"] = {**data["preferences"], **prefs}
    ev = p.post("user.registered", data)
    return user, address, ev


def _phone(p: Pipeline, user: str) -> str:
    row = p.wait_row("SELECT phone FROM users WHERE user_id = %s", user, what="the user row")
    return str(row[0])


def _shop_with_product(p: Pipeline, owner: str, stock: int) -> tuple[str, str]:
    shop, pid = uid("shop"), uid("prd")
    p.post("shop.created", example("shop.created", shop_id=shop, owner_user_id=owner))
    p.post(
        "product.created",
        example(
            "product.created",
            product_id=pid,
            shop_id=shop,
            name="Sona Masoori Rice 5 kg",
            initial_stock=stock,
        ),
    )
    p.wait_row("SELECT 1 FROM inventory_movements WHERE product_id = %s", pid, what="stock")
    return shop, pid


def _order(p: Pipeline, shop: str, pid: str, user: str, qty: int) -> str:
    oid = uid("ord")
    ev = order_created(oid, shop, {pid: qty})
    ev["data"]["user_id"] = user
    p.post_event(ev)
    return oid


def _outbox(p: Pipeline, cause_id: str, step: str) -> dict[str, str]:
    """channel -> status of the notification `step` derived from `cause_id`."""
    rows = p.rows(
        "SELECT channel, status FROM notification_outbox WHERE event_id = %s",
        derived_id(cause_id, step),
    )
    return {c: s for c, s in rows}


def _order_event(p: Pipeline, type_: str, oid: str) -> dict[str, Any]:
    found = poll(
        lambda: p.events_of(TOPICS["order"].name, type_, [oid]) or None,
        timeout=60,
        what=f"{type_} of {oid}",
    )
    return found[0]


def _drained(p: Pipeline) -> None:
    """What earlier tests queued (tens of thousands of orders, thousands of notifications) goes
    through every step upstream of the channels first: stock, then workflows, then notifications.
    Otherwise this test's SMS waits behind that backlog, which says nothing about SMTP."""
    started = time.monotonic()
    p.caught_up("stock", ["order", "product"], timeout=300)
    p.caught_up("stock", [], timeout=300, topics=[stock_by_shop_topic(p.settings)])
    p.caught_up("projections", ["user", "shop", "shopkeeper", "order"], timeout=300)
    p.caught_up("workflows", ["user", "order"], timeout=300)
    channels = [channel_topic(p.settings.topic_namespace, c) for c in CHANNELS]
    p.caught_up("notifications", ["notification"], timeout=300, topics=channels)
    report(f"earlier tests' backlog drained in {time.monotonic() - started:.1f} s")


def test_a_registration_sends_one_welcome_email_and_a_replay_sends_nothing_new(
    pipeline: Pipeline, make_key: Any
) -> None:
    p = pipeline
    user, address, ev = _register(p, email_opt_in=True)
    mails = poll(lambda: _mails(p, address) or None, timeout=60, what="the welcome email")
    (mail,) = mails
    assert mail["To"] == address
    assert mail["Subject"] == "Welcome to MohallaMart, Priya <b>& Co</b>"
    request_id = derived_id(ev["id"], "welcome")
    assert mail["Message-ID"].strip() == message_id(request_id, "EMAIL")
    # followed by the registration's trace id, as it is in Kafka
    (cause,) = p.events_of(TOPICS["user"].name, "user.registered", [user])
    assert mail["X-MohallaMart-Trace-Id"].strip() == cause["trace_id"]
    text = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    assert "Namaste Priya <b>& Co</b>" in text.get_content()
    # user data is escaped in the HTML part
    assert "Namaste Priya &lt;b&gt;&amp; Co&lt;/b&gt;" in html.get_content()
    # the delivery log (scope admin)
    log = reader(p, make_key(["admin"])).get("/v1/notifications", params={"user_id": user})
    assert log.status_code == 200, log.text
    (entry,) = log.json()["notifications"]
    assert (entry["event_id"], entry["channel"], entry["recipient"]) == (
        request_id,
        "EMAIL",
        address,
    )
    assert (entry["status"], entry["attempts"], entry["kind"]) == ("SENT", 1, "WELCOME")
    denied = reader(p, make_key(["read"])).get("/v1/notifications", params={"user_id": user})
    assert denied.status_code == 403

    # the role replayed from the beginning of its topic: nothing is sent again
    p.workers.stop("notifications")
    out = mohallamart("offsets", "reset", "--role", "notifications", "--to-earliest", "--execute")
    assert out.returncode == 0, out.stderr
    p.workers.restart("notifications")
    # the requests and the per-channel topics they were forwarded to, all replayed
    channels = [channel_topic(p.settings.topic_namespace, c) for c in CHANNELS]
    p.caught_up("notifications", ["notification"], timeout=300, topics=channels)
    assert len(_mails(p, address)) == 1


def test_an_opted_out_channel_receives_nothing(pipeline: Pipeline) -> None:
    p = pipeline
    user, address, ev = _register(p, email_opt_in=False)
    request_id = derived_id(ev["id"], "welcome")
    row = p.wait_row(
        "SELECT status, last_error FROM notification_outbox WHERE event_id = %s",
        request_id,
        timeout=60,
        what="the request to be handled",
    )
    assert row == ("SKIPPED", "opted out")
    assert _mails(p, address) == []


def test_an_accepted_order_sends_one_email_one_sms_and_one_push_a_rejected_one_its_notice(
    pipeline: Pipeline, providers: Any
) -> None:
    p = pipeline
    owner, _, _ = _register(p, push_opt_in=True)
    customer, address, _ = _register(p, email_opt_in=True, sms_opt_in=True)
    phone = _phone(p, customer)
    shop, pid = _shop_with_product(p, owner, stock=5)

    oid = _order(p, shop, pid, customer, 2)
    subject = f"Your order {oid} is confirmed"
    poll(
        lambda: [m for m in _mails(p, address) if m["Subject"] == subject] or None,
        timeout=60,
        what="the confirmation email",
    )
    poll(lambda: providers.sent("/sms", phone) or None, timeout=60, what="the SMS")
    poll(lambda: providers.sent("/push", owner) or None, timeout=60, what="the shop's push")
    accepted = _order_event(p, "order.accepted", oid)
    assert _outbox(p, accepted["id"], "order_confirmed") == {"EMAIL": "SENT", "SMS": "SENT"}
    assert _outbox(p, accepted["id"], "new_order") == {"PUSH": "SENT"}
    (sms,) = providers.sent("/sms", phone)
    assert oid in sms["body"] and "2 x" in sms["body"]
    assert sms["auth"] == "Bearer test-sms-key"
    assert sms["idempotency_key"] == message_id(
        derived_id(accepted["id"], "order_confirmed"), "SMS"
    )
    (push,) = providers.sent("/push", owner)
    assert push["title"] == f"New order {oid}"
    (mail,) = [m for m in _mails(p, address) if m["Subject"] == subject]
    assert oid in mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]

    # a status change: the customer is told once
    p.post(
        "order.status_changed",
        example(
            "order.status_changed",
            order_id=oid,
            shop_id=shop,
            user_id=customer,
            from_status="PROCESSING",
            to_status="COMPLETED",
        ),
    )
    done = f"Your order {oid} is completed"
    poll(
        lambda: [m for m in _mails(p, address) if m["Subject"] == done] or None,
        timeout=60,
        what="the status email",
    )

    # rejected (more than the stock): the rejection notice only
    rejected_oid = _order(p, shop, pid, customer, 50)
    notice = f"Your order {rejected_oid} could not be accepted"
    (mail,) = poll(
        lambda: [m for m in _mails(p, address) if m["Subject"] == notice] or None,
        timeout=60,
        what="the rejection notice",
    )
    assert "INSUFFICIENT_STOCK" in mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    rejected = _order_event(p, "order.rejected", rejected_oid)
    assert _outbox(p, rejected["id"], "order_rejected") == {"EMAIL": "SENT"}
    assert len([m for m in _mails(p, address) if rejected_oid in m["Subject"]]) == 1
    assert [r for r in providers.sent("/sms", phone) if rejected_oid in r["body"]] == []
    # each message once
    p.caught_up("notifications", ["notification"], timeout=60)
    assert len([m for m in _mails(p, address) if m["Subject"] == subject]) == 1
    assert len([m for m in _mails(p, address) if m["Subject"] == done]) == 1
    assert len(providers.sent("/sms", phone)) == 1
    assert len(providers.sent("/push", owner)) == 1


def test_a_refused_sms_arrives_as_an_email_and_a_refused_email_is_dead_lettered(
    pipeline: Pipeline, providers: Any
) -> None:
    p = pipeline
    owner, _, _ = _register(p, push_opt_in=False)
    # SMS only (email opted out): the provider refuses the number for good
    customer, address, _ = _register(p, email_opt_in=False, sms_opt_in=True)
    phone = _phone(p, customer)
    providers.status_for[phone] = 400
    shop, pid = _shop_with_product(p, owner, stock=5)
    oid = _order(p, shop, pid, customer, 1)
    subject = f"Your order {oid} is confirmed"
    (mail,) = poll(
        lambda: [m for m in _mails(p, address) if m["Subject"] == subject] or None,
        timeout=60,
        what="the SMS's fallback email",
    )
    accepted = _order_event(p, "order.accepted", oid)
    assert _outbox(p, accepted["id"], "order_confirmed") == {"SMS": "FAILED", "EMAIL": "SENT"}
    request_id = derived_id(accepted["id"], "order_confirmed")
    assert p.dead_letters(TOPICS["notification"].name, request_id) == []

    # an address the SMTP server refuses for good (550): dead-lettered at once, with its context
    user, bad, ev = _register(p, address=f"{uid('nobody')}@reject.invalid", email_opt_in=True)
    welcome = derived_id(ev["id"], "welcome")
    (letter,) = poll(
        lambda: p.dead_letters(TOPICS["notification"].name, welcome) or None,
        timeout=60,
        what="the refused welcome email's dead letter",
    )
    assert letter["x-stage"] == "notifications/deliver_email"
    assert letter["x-error-class"] == "EmailRefused"
    assert letter["x-attempts"] == "1"
    assert letter["x-original-topic"] == TOPICS["notification"].name
    assert "550" in letter["x-error-message"] and bad in letter["x-error-message"]
    assert _mails(p, bad) == []

    # an operator redrives it: the failed send is tried again (not taken as settled), refused
    # again, and back in the dead-letter topic once, marked as redriven
    out = mohallamart("dlq", "redrive", "--id", welcome)
    assert out.returncode == 0, out.stderr
    assert "redriven 1" in out.stdout, out.stdout
    again = poll(
        lambda: (
            [
                h
                for h in p.dead_letters(TOPICS["notification"].name, welcome)
                if h.get("x-redrive-count") == "1"
            ]
            or None
        ),
        timeout=60,
        what="the redriven email's second dead letter",
    )
    assert len(again) == 1 and again[0]["x-error-class"] == "EmailRefused"
    assert p.rows(
        "SELECT status, attempts FROM notification_outbox WHERE event_id = %s", welcome
    ) == [("FAILED", 2)]
    assert _mails(p, bad) == []
