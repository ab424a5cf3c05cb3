"""Webhooks from the seeds' external services (issue 17).

- `POST /v1/webhooks/clerk`: Clerk's user webhooks, signed per Standard Webhooks (Svix headers
  `svix-id`, `svix-timestamp`, `svix-signature`), verified with the `standardwebhooks` package
  (timestamp within 5 minutes). `user.created|updated|deleted` become `user.registered|updated|
  deleted` events, ingested as a client's are (validated, acknowledged by Kafka); the event id
  is a UUIDv5 of the delivery's id, so the same delivery can never make two events.
- `POST /v1/webhooks/twilio/sms-status[?message_id=<ours>]`: Twilio's SMS status callbacks,
  signed with `X-Twilio-Signature` (base64 HMAC-SHA1, keyed by the auth token, of the URL
  followed by each form parameter's name and value, sorted by name), put on the delivery-log
  row of that message (our message id in the callback URL the SMS adapter gave Twilio, else
  Twilio's `MessageSid`).

A missing, bad or replayed signature (a delivery id claimed before) answers 401 and writes
nothing. A delivery is claimed (`webhook_receipts`) before its effect and the claim is given
back if the effect fails, so the sender's retry is taken.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from psycopg_pool import AsyncConnectionPool
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from api.ingest import Ingestor
from api.problems import Problem
from connectors import webhooks
from core.settings import Settings

__all__ = ["router"]

log = logging.getLogger("mohallamart.api.webhooks")
router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

#: UUIDv5 namespace of the events a webhook delivery makes (`clerk|<svix-id>`)
WEBHOOK_NAMESPACE = uuid.UUID("0b6f3c1e-55a4-5d0e-9a43-6d6f68616c6d")
#: at most this much of a webhook body is read
MAX_BODY = 256 * 1024
_CLERK_TYPES = {
    "user.created": "user.registered",
    "user.updated": "user.updated",
    "user.deleted": "user.deleted",
}
_TWILIO_STATUSES = frozenset(
    {"accepted", "queued", "sending", "sent", "delivered", "undelivered", "failed", "read"}
)


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "bad-signature", detail)


def _not_enabled(setting: str) -> Problem:
    return Problem(404, "not-found", f"this webhook is not enabled (set {setting})")


async def _body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Problem(413, "too-large", f"a webhook body may be at most {MAX_BODY} bytes")
    return body


def _state(request: Request) -> tuple[Settings, AsyncConnectionPool, Ingestor]:
    s = request.app.state
    return s.settings, s.reads.pool, s.ingestor


async def _claimed(pool: AsyncConnectionPool, source: str, delivery_id: str) -> None:
    async with pool.connection() as conn:
        if not await webhooks.claim(conn, source, delivery_id):
            raise _unauthorized(f"delivery {delivery_id[:100]} was received before (a replay)")


async def _release(pool: AsyncConnectionPool, source: str, delivery_id: str) -> None:
    async with pool.connection() as conn:
        await webhooks.release(conn, source, delivery_id)


# --- Clerk ------------------------------------------------------------------------------------
def clerk_event(payload: Mapping[str, Any], delivery_id: str) -> dict[str, Any] | None:
    """The event a Clerk webhook makes (None: a type this pipeline does not take)."""
    kind = _CLERK_TYPES.get(str(payload.get("type")))
    if kind is None:
        return None
    d = payload.get("data") or {}
    user_id = str(d.get("id") or "")
    at_ms = payload.get("timestamp") or d.get("updated_at") or d.get("created_at")
    occurred = (
        datetime.fromtimestamp(int(at_ms) / 1000, UTC) if at_ms else datetime.now(UTC)
    ).isoformat()
    event: dict[str, Any] = {
        "id": str(uuid.uuid5(WEBHOOK_NAMESPACE, f"clerk|{delivery_id}")),
        "type": kind,
        "occurred_at": occurred,
    }
    if kind == "user.deleted":
        event["data"] = {"user_id": user_id, "reason": "USER_REQUEST"}
        return event

    def primary(items: Any, id_key: str, value_key: str) -> str | None:
        items = [x for x in items or [] if isinstance(x, dict)]
        chosen = next((x for x in items if x.get("id") == d.get(id_key)), None)
        chosen = chosen or (items[0] if items else None)
        return None if chosen is None else str(chosen.get(value_key) or "") or None

    email = primary(d.get("email_addresses"), "primary_email_address_id", "email_address")
    phone = primary(d.get("phone_numbers"), "primary_phone_number_id", "phone_number")
    name = " ".join(str(x) for x in (d.get("first_name"), d.get("last_name")) if x).strip()
    name = name or str(d.get("username") or "") or (email or "").split("@")[0] or user_id
    data: dict[str, Any] = {"user_id": user_id, "name": name[:200], "email": email, "phone": phone}
    event["data"] = data
    return event


@router.post(
    "/clerk",
    summary="Clerk user webhooks (Standard Webhooks / Svix signature) as user events",
    status_code=202,
    responses={401: {"description": "a missing, bad or replayed signature: nothing written"}},
)
async def clerk(request: Request) -> Response:
    settings, pool, ingestor = _state(request)
    secret = settings.clerk_webhook_secret
    if secret is None or not secret.get_secret_value():
        raise _not_enabled("CLERK_WEBHOOK_SECRET")
    body = await _body(request)
    h = request.headers
    delivery_id = h.get("svix-id") or h.get("webhook-id") or ""
    headers = {
        "webhook-id": delivery_id,
        "webhook-timestamp": h.get("svix-timestamp") or h.get("webhook-timestamp") or "",
        "webhook-signature": h.get("svix-signature") or h.get("webhook-signature") or "",
    }
    try:
        Webhook(secret.get_secret_value()).verify(body, headers, json_parse=False)
    except (WebhookVerificationError, ValueError, TypeError) as exc:
        # the package's own words (missing headers, too old, no matching signature): no secret
        raise _unauthorized(f"the Svix signature does not verify: {exc}") from None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Problem(400, "bad-json", "the body is not JSON") from None
    event = clerk_event(payload, delivery_id) if isinstance(payload, dict) else None
    if event is None:
        # signed, but nothing this pipeline takes: acknowledged so Clerk does not retry it
        return Response(
            orjson.dumps(
                {"ignored": str(payload.get("type") if isinstance(payload, dict) else "")}
            ),
            status_code=200,
            media_type="application/json",
        )
    await _claimed(pool, "clerk", delivery_id)
    try:
        prepared = ingestor.validate(
            [event], batch=False, source="webhook:clerk", trace_id=event["id"].replace("-", "")
        )
        (result,) = await ingestor.ingest(prepared, batch=False)
    except BaseException:
        await _release(pool, "clerk", delivery_id)
        raise
    return Response(
        orjson.dumps(result.as_dict()),
        status_code=200 if result.duplicate else 202,
        media_type="application/json",
    )


# --- Twilio -----------------------------------------------------------------------------------
def twilio_signature(token: str, url: str, params: list[tuple[str, str]]) -> str:
    """What Twilio sends in `X-Twilio-Signature` for a form POST of `params` (name, value pairs
    as sent; a name may repeat) to `url`: the URL, then per name in order each of its distinct
    values in order, name and value concatenated (as Twilio's own validators compute it)."""
    values: dict[str, set[str]] = {}
    for k, v in params:
        values.setdefault(k, set()).add(v)
    signed = url + "".join(k + v for k in sorted(values) for v in sorted(values[k]))
    digest = hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


@router.post(
    "/twilio/sms-status",
    summary="Twilio SMS status callbacks (X-Twilio-Signature) onto the delivery log",
    responses={401: {"description": "a missing, bad or replayed signature: nothing written"}},
)
async def twilio_sms_status(request: Request) -> Response:
    settings, pool, _ = _state(request)
    token = settings.twilio_auth_token
    if token is None or not token.get_secret_value():
        raise _not_enabled("TWILIO_AUTH_TOKEN")
    body = await _body(request)
    pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    params = dict(pairs)
    query = request.url.query
    base = settings.twilio_status_callback_url
    # the URL as Twilio was given it, its query included (Twilio signs the whole URL)
    url = (base + (f"?{query}" if query else "")) if base else str(request.url)
    given = request.headers.get("x-twilio-signature", "")
    expected = twilio_signature(token.get_secret_value(), url, pairs)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise _unauthorized("X-Twilio-Signature does not verify for this URL and these parameters")
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    status = (params.get("MessageStatus") or params.get("SmsStatus") or "").lower()
    if not sid or status not in _TWILIO_STATUSES:
        raise Problem(
            422,
            "validation-error",
            "MessageSid and a known MessageStatus are required "
            f"({', '.join(sorted(_TWILIO_STATUSES))})",
        )
    error = params.get("ErrorCode") or None
    # our message id: in the callback URL the SMS adapter gave Twilio (`?message_id=`, signed
    # with the rest), else Twilio's own id
    ours = request.query_params.get("message_id") or sid
    delivery_id = f"{sid}:{status}"
    await _claimed(pool, "twilio", delivery_id)
    try:
        async with pool.connection() as conn:
            rows = await webhooks.record_sms_status(
                conn, ours, status, None if error is None else f"Twilio error {error[:20]}"
            )
    except BaseException:
        await _release(pool, "twilio", delivery_id)
        raise
    if rows == 0:
        log.info("twilio: status %s of a message not ours (%s)", status, sid[:40])
    return Response(
        orjson.dumps({"message_sid": sid, "message_id": ours, "status": status, "rows": rows}),
        status_code=200,
        media_type="application/json",
    )
