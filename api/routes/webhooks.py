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

import asyncio
import base64
import hashlib
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import orjson
import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import Response
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from api.ingest import Ingestor
from api.problems import Problem, json_answer, problems
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
T = TypeVar("T")


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "bad-signature", detail)


def _not_enabled(setting: str) -> Problem:
    return Problem(404, "not-found", f"this webhook is not enabled (set {setting})")


async def _body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise Problem(413, "too-large", f"a webhook body may be at most {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Problem(413, "too-large", f"a webhook body may be at most {MAX_BODY} bytes")
    return body


def _state(request: Request) -> tuple[Settings, AsyncConnectionPool, Ingestor]:
    s = request.app.state
    return s.settings, s.reads.pool, s.ingestor


async def _db(pool: AsyncConnectionPool, work: Callable[[Any], Awaitable[T]]) -> T:
    """`work(conn)` on a pooled connection; the database unreachable is a 503 (retried by the
    sender), never a bare 500."""
    try:
        async with pool.connection() as conn:
            return await work(conn)
    except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
        log.warning("webhook: the database is unavailable (%s)", type(exc).__name__)
        raise Problem(
            503,
            "database-unavailable",
            "cannot record this delivery right now; retry later",
            headers={"Retry-After": "5"},
        ) from None


async def _claimed(pool: AsyncConnectionPool, source: str, delivery_id: str) -> None:
    got = await _db(pool, lambda c: webhooks.claim(c, source, delivery_id))
    if got == "replay":
        raise _unauthorized(f"delivery {delivery_id[:100]} was received before (a replay)")
    if got == "in progress":
        raise Problem(
            409,
            "in-progress",
            f"delivery {delivery_id[:100]} is being processed; retry later",
            headers={"Retry-After": "5"},
        )


async def _release(pool: AsyncConnectionPool, source: str, delivery_id: str) -> None:
    """Give the claim back (the effect failed), whatever happens to this request meanwhile; if
    that fails too, the pending claim goes stale and the sender's retry takes it over."""

    async def give_back() -> None:
        try:
            await _db(pool, lambda c: webhooks.release(c, source, delivery_id))
        except Exception as exc:  # noqa: BLE001 - logged; the stale claim is taken over later
            log.warning("webhook: claim of %s not given back (%s)", source, type(exc).__name__)

    await asyncio.shield(give_back())


# --- the OpenAPI description -------------------------------------------------------------------
def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "schema": {"type": "string"}, "description": description}


_IGNORED = json_answer(
    "signed, but nothing this pipeline keeps: acknowledged, nothing written",
    {"type": "object", "required": ["ignored"], "properties": {"ignored": {"type": "string"}}},
)
_CLERK_OPENAPI = {
    "parameters": [
        _header("svix-id", "the delivery's id (or `webhook-id`)"),
        _header("svix-timestamp", "seconds since the epoch (or `webhook-timestamp`)"),
        _header("svix-signature", "`v1,<base64 HMAC-SHA256>` (or `webhook-signature`)"),
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["type", "data"],
                    "properties": {
                        "type": {"type": "string", "description": "`user.created`, ..."},
                        "data": {"type": "object", "description": "Clerk's user object"},
                        "timestamp": {"type": "integer", "description": "milliseconds"},
                    },
                }
            }
        },
    },
}
_CLERK_RESPONSES = {
    202: json_answer("the user event, acknowledged by Kafka (as `POST /v1/events` answers)"),
    200: _IGNORED,
    **problems(
        {
            400: "the body is not JSON",
            401: "a missing, bad or replayed signature, or a timestamp out of tolerance: "
            "nothing written",
            404: "this webhook is not enabled (CLERK_WEBHOOK_SECRET unset)",
            409: "the same delivery is being processed right now (Retry-After)",
            413: "a body over 256 KiB, or an event too large for Kafka",
            422: "a payload that cannot be read, or a user the contract refuses (no email)",
            500: "Kafka failed the event with an error a retry will not fix",
            503: "Kafka, the registry or the database did not answer (Retry-After)",
        }
    ),
}
_TWILIO_OPENAPI = {
    "parameters": [
        _header("X-Twilio-Signature", "base64 HMAC-SHA1 of the URL and the sorted parameters"),
        {
            "name": "message_id",
            "in": "query",
            "schema": {"type": "string"},
            "description": "our message id, as the SMS named the callback",
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "MessageSid": {"type": "string"},
                        "MessageStatus": {"type": "string"},
                        "ErrorCode": {"type": "string"},
                    },
                }
            }
        },
    },
}
_TWILIO_RESPONSES = {
    200: {
        "description": "the status, on the SMS's row of the delivery log (`rows`: 0 for a "
        "message not ours), or a status the log does not keep (`ignored`)",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    **problems(
        {
            401: "a missing or bad signature, or the same (MessageSid, status) again: nothing "
            "written",
            404: "this webhook is not enabled (TWILIO_AUTH_TOKEN unset)",
            413: "a body over 256 KiB",
            422: "no MessageSid",
            503: "the database did not answer (Retry-After)",
        }
    ),
}


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
    openapi_extra=_CLERK_OPENAPI,
    responses=_CLERK_RESPONSES,
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
    except WebhookVerificationError as exc:
        # the package's own words (missing headers, too old, no matching signature)
        raise _unauthorized(f"the Svix signature does not verify: {exc}") from None
    except (ValueError, TypeError, IndexError):
        raise _unauthorized("the Svix signature headers are malformed") from None
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Problem(400, "bad-json", "the body is not JSON") from None
    try:
        event = clerk_event(payload, delivery_id) if isinstance(payload, dict) else None
    except (ValueError, TypeError, AttributeError, OverflowError, OSError) as exc:
        raise Problem(
            422,
            "validation-error",
            f"this Clerk event cannot be read: {type(exc).__name__}",
        ) from None
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
    try:
        await _db(pool, lambda c: webhooks.done(c, "clerk", delivery_id))
    except Problem:
        # written, its claim still pending: a retry after it goes stale is ingested again
        # with the same event id (a duplicate, acknowledged as one)
        pass
    return Response(
        orjson.dumps(result.as_dict()),
        status_code=200 if result.duplicate else 202,
        media_type="application/json",
    )


# --- Twilio -----------------------------------------------------------------------------------
def _callback_urls(request: Request, configured: str | None) -> list[str]:
    """The URL Twilio signed, as it may have written it: the configured public one (with this
    request's query) or the one the request came to; each with and without the scheme's default
    port (Twilio's own validators accept both)."""
    query = request.url.query
    if configured:
        parts = urlsplit(configured)
        q = "&".join(x for x in (parts.query, query) if x)
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, q, ""))
    else:
        url = str(request.url)
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = parts.hostname or ""
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, ""))
    ported = urlunsplit(
        (parts.scheme, f"{host}:{parts.port or default}", parts.path, parts.query, "")
    )
    return list(dict.fromkeys([url, bare if parts.port in (None, default) else url, ported]))


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
    openapi_extra=_TWILIO_OPENAPI,
    responses=_TWILIO_RESPONSES,
)
async def twilio_sms_status(request: Request) -> Response:
    settings, pool, _ = _state(request)
    token = settings.twilio_auth_token
    if token is None or not token.get_secret_value():
        raise _not_enabled("TWILIO_AUTH_TOKEN")
    body = await _body(request)
    pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    params = dict(pairs)
    given = request.headers.get("x-twilio-signature", "")
    token_s = token.get_secret_value()
    if not given or not any(
        hmac.compare_digest(given.encode(), twilio_signature(token_s, url, pairs).encode())
        for url in _callback_urls(request, settings.twilio_status_callback_url)
    ):
        raise _unauthorized("X-Twilio-Signature does not verify for this URL and these parameters")
    sid = params.get("MessageSid") or params.get("SmsSid") or ""
    status = (params.get("MessageStatus") or params.get("SmsStatus") or "").lower()
    if not sid:
        raise Problem(422, "validation-error", "MessageSid is required")
    if status not in webhooks.SMS_STATUS_RANK:
        # signed by Twilio, a status this log does not keep: acknowledged, nothing written
        return Response(
            orjson.dumps({"ignored": status[:40]}), status_code=200, media_type="application/json"
        )
    error = params.get("ErrorCode") or None
    # our message id: in the callback URL the SMS adapter gave Twilio (`?message_id=`, signed
    # with the rest), else Twilio's own id
    ours = request.query_params.get("message_id") or sid
    text = None if error is None else f"Twilio error {error[:20]}"
    rows = await _db(
        pool, lambda c: webhooks.sms_status_once(c, f"{sid}:{status}", ours, status, text)
    )
    if rows is None:
        raise _unauthorized(f"callback {sid[:40]}:{status} was received before (a replay)")
    if rows == 0:
        log.info("twilio: status %s of a message not ours (%s)", status, sid[:40])
    return Response(
        orjson.dumps({"message_sid": sid, "message_id": ours, "status": status, "rows": rows}),
        status_code=200,
        media_type="application/json",
    )
