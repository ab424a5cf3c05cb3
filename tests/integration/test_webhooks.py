"""Webhooks from the seeds' external services, against the real API and pipeline (issue 17):
Clerk's user webhooks (Standard Webhooks / Svix signatures) become user events; Twilio's SMS
status callbacks (X-Twilio-Signature) reach the delivery log. A missing, bad or replayed
signature answers 401 and writes nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest

from schemas.catalog import TOPICS
from tests.integration._pipeline import Pipeline, uid
from tests.integration._support import poll
from tests.integration.test_notifications import (
    _order,
    _order_event,
    _phone,
    _register,
    _shop_with_product,
)

pytestmark = pytest.mark.integration

#: the API's namespace for a webhook delivery's event id (api.routes.webhooks)
WEBHOOK_NAMESPACE = uuid.UUID("0b6f3c1e-55a4-5d0e-9a43-6d6f68616c6d")


def _svix(secret: str, msg_id: str, body: bytes, at: float | None = None) -> dict[str, str]:
    """The headers Svix signs a delivery with (Standard Webhooks, v1: HMAC-SHA256)."""
    ts = str(int(at if at is not None else time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return {
        "svix-id": msg_id,
        "svix-timestamp": ts,
        "svix-signature": "v1," + base64.b64encode(mac).decode(),
        "content-type": "application/json",
    }


def _clerk_user(user: str, first: str, email: str, phone: str | None = None) -> dict[str, Any]:
    return {
        "id": user,
        "first_name": first,
        "last_name": "Iyer",
        "primary_email_address_id": "idn_e",
        "email_addresses": [{"id": "idn_e", "email_address": email}],
        "primary_phone_number_id": "idn_p" if phone else None,
        "phone_numbers": [{"id": "idn_p", "phone_number": phone}] if phone else [],
    }


def _claims(p: Pipeline, event_id: str) -> int:
    return len(p.rows("SELECT 1 FROM ingest_claims WHERE event_id = %s", event_id))


def test_clerk_user_webhooks_become_user_events_and_bad_or_replayed_ones_write_nothing(
    pipeline: Pipeline, webhook_secrets: dict[str, str]
) -> None:
    p = pipeline
    secret = webhook_secrets["CLERK_WEBHOOK_SECRET"]
    user = uid("user_clerk")
    email = f"{user}@example.in"
    created = orjson.dumps(
        {
            "type": "user.created",
            "object": "event",
            "timestamp": int(time.time() * 1000),
            "data": _clerk_user(user, "Meera", email, "+919845011111"),
        }
    )
    msg = f"msg_{uuid.uuid4().hex}"
    event_id = str(uuid.uuid5(WEBHOOK_NAMESPACE, f"clerk|{msg}"))

    # a bad signature, a stale timestamp, no signature: 401, nothing written
    bad = _svix(secret, msg, created)
    bad["svix-signature"] = "v1," + base64.b64encode(b"x" * 32).decode()
    stale = _svix(secret, msg, created, at=time.time() - 600)
    unsigned = {"content-type": "application/json"}
    for headers in (bad, stale, unsigned):
        r = p.http.post("/v1/webhooks/clerk", content=created, headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["type"] == "/problems/bad-signature"
    forged = _svix("whsec_" + base64.b64encode(b"k" * 24).decode(), msg, created)
    assert p.http.post("/v1/webhooks/clerk", content=created, headers=forged).status_code == 401
    assert _claims(p, event_id) == 0

    # signed: a user.registered, acknowledged by Kafka, projected
    r = p.http.post("/v1/webhooks/clerk", content=created, headers=_svix(secret, msg, created))
    assert r.status_code == 202, r.text
    assert r.json()["id"] == event_id and r.json()["duplicate"] is False
    row = p.wait_row("SELECT name, email, phone FROM users WHERE user_id = %s", user, timeout=60)
    assert row == ("Meera Iyer", email, "+919845011111")

    # the same delivery again, signed anew (a replay): 401, nothing more written
    r = p.http.post("/v1/webhooks/clerk", content=created, headers=_svix(secret, msg, created))
    assert r.status_code == 401 and "replay" in r.json()["detail"]
    assert len(p.events_of(TOPICS["user"].name, "user.registered", [user])) == 1

    # user.updated and user.deleted, each its own delivery
    updated = orjson.dumps(
        {
            "type": "user.updated",
            "timestamp": int(time.time() * 1000) + 1,
            "data": _clerk_user(user, "Meenakshi", email),
        }
    )
    msg2 = f"msg_{uuid.uuid4().hex}"
    r = p.http.post("/v1/webhooks/clerk", content=updated, headers=_svix(secret, msg2, updated))
    assert r.status_code == 202, r.text
    p.wait_row(
        "SELECT 1 FROM users WHERE user_id = %s AND name = 'Meenakshi Iyer'", user, timeout=60
    )
    deleted = orjson.dumps(
        {
            "type": "user.deleted",
            "timestamp": int(time.time() * 1000) + 2,
            "data": {"id": user, "deleted": True, "object": "user"},
        }
    )
    msg3 = f"msg_{uuid.uuid4().hex}"
    r = p.http.post("/v1/webhooks/clerk", content=deleted, headers=_svix(secret, msg3, deleted))
    assert r.status_code == 202, r.text
    p.wait_row("SELECT 1 FROM users WHERE user_id = %s AND status = 'DELETED'", user, timeout=60)
    # a type this pipeline does not take: acknowledged, nothing written
    other = orjson.dumps({"type": "session.created", "data": {"id": "sess_1"}})
    msg4 = f"msg_{uuid.uuid4().hex}"
    r = p.http.post("/v1/webhooks/clerk", content=other, headers=_svix(secret, msg4, other))
    assert r.status_code == 200 and r.json() == {"ignored": "session.created"}
    assert _claims(p, str(uuid.uuid5(WEBHOOK_NAMESPACE, f"clerk|{msg4}"))) == 0


def _twilio(token: str, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature as Twilio computes it (its documented scheme)."""
    signed = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(
        hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()
    ).decode()


def test_twilio_sms_status_callbacks_reach_the_delivery_log_and_bad_or_replayed_ones_do_not(
    pipeline: Pipeline, webhook_secrets: dict[str, str], make_key: Any, providers: Any
) -> None:
    p = pipeline
    token = webhook_secrets["TWILIO_AUTH_TOKEN"]
    admin = {"Authorization": f"Bearer {make_key(['admin'])}"}
    owner, _, _ = _register(p)
    customer, _, _ = _register(p, email_opt_in=True, sms_opt_in=True)
    phone = _phone(p, customer)
    shop, pid = _shop_with_product(p, owner, stock=5)
    oid = _order(p, shop, pid, customer, 1)
    assert _order_event(p, "order.accepted", oid)
    # the SMS as the provider got it: it names where to report its status (a Twilio adapter
    # passes that on as StatusCallback), our message id in it
    (sms_sent,) = poll(lambda: providers.sent("/sms", phone) or None, timeout=60, what="the SMS")
    url = sms_sent["status_callback"]
    assert url.startswith(str(p.http.base_url).rstrip("/") + "/v1/webhooks/twilio/sms-status?")
    (ours,) = p.wait_row(
        "SELECT message_id FROM notification_outbox WHERE user_id = %s AND channel = 'SMS' "
        "AND status = 'SENT'",
        customer,
        timeout=60,
        what="the order's SMS sent",
    )
    assert url.endswith("?" + urlencode({"message_id": ours}))

    def log() -> dict[str, Any]:
        r = p.http.get("/v1/notifications", params={"user_id": customer}, headers=admin)
        assert r.status_code == 200, r.text
        (sms,) = [n for n in r.json()["notifications"] if n["channel"] == "SMS"]
        return dict(sms)

    sid = "SM" + uuid.uuid4().hex
    form = {"content-type": "application/x-www-form-urlencoded"}

    def callback(params: dict[str, str], signature: str | None = None) -> Any:
        sig = _twilio(token, url, params) if signature is None else signature
        headers = {**form, **({"X-Twilio-Signature": sig} if sig else {})}
        return p.http.post(url, content=urlencode(params), headers=headers)

    delivered = {"MessageSid": sid, "MessageStatus": "delivered", "To": phone}
    # a bad signature, one for other parameters, none: 401, nothing written
    for sig in ("bm90IGl0", _twilio(token, url, {**delivered, "MessageStatus": "failed"}), ""):
        r = callback(delivered, sig)
        assert r.status_code == 401, r.text
    assert log()["delivery_status"] is None

    r = callback(delivered)
    assert r.status_code == 200, r.text
    assert r.json() == {"message_sid": sid, "message_id": ours, "status": "delivered", "rows": 1}
    sms = log()
    assert sms["delivery_status"] == "delivered" and sms["delivery_at"] is not None

    # the same callback again (a replay): 401, the row as it was
    r = callback(delivered)
    assert r.status_code == 401 and "replay" in r.json()["detail"]
    assert log()["delivery_at"] == sms["delivery_at"]
    # a late `sent` (Twilio's callbacks may come out of order) does not hide `delivered`
    r = callback({**delivered, "MessageStatus": "sent"})
    assert r.status_code == 200 and r.json()["rows"] == 0
    assert log()["delivery_status"] == "delivered"
    # a signed status this log does not keep: acknowledged, nothing written
    r = callback({**delivered, "MessageStatus": "receiving"})
    assert r.status_code == 200 and r.json() == {"ignored": "receiving"}


def test_a_second_sms_status_of_a_failed_message_names_twilios_error(
    pipeline: Pipeline, webhook_secrets: dict[str, str], make_key: Any, providers: Any
) -> None:
    p = pipeline
    token = webhook_secrets["TWILIO_AUTH_TOKEN"]
    admin = {"Authorization": f"Bearer {make_key(['admin'])}"}
    owner, _, _ = _register(p)
    customer, _, _ = _register(p, email_opt_in=True, sms_opt_in=True)
    phone = _phone(p, customer)
    shop, pid = _shop_with_product(p, owner, stock=5)
    _order(p, shop, pid, customer, 1)
    (sms_sent,) = poll(lambda: providers.sent("/sms", phone) or None, timeout=60, what="the SMS")
    url = sms_sent["status_callback"]
    sid = "SM" + uuid.uuid4().hex
    form = {"content-type": "application/x-www-form-urlencoded"}
    for status in ("sent", "undelivered"):
        params = {"MessageSid": sid, "MessageStatus": status, "ErrorCode": "30003"}
        r = p.http.post(
            url,
            content=urlencode(params),
            headers={**form, "X-Twilio-Signature": _twilio(token, url, params)},
        )
        assert r.status_code == 200 and r.json()["rows"] == 1, r.text
    r = p.http.get("/v1/notifications", params={"user_id": customer}, headers=admin)
    (sms,) = [n for n in r.json()["notifications"] if n["channel"] == "SMS"]
    assert (sms["delivery_status"], sms["delivery_error"]) == ("undelivered", "Twilio error 30003")
