"""notifications: `notification.requested` -> the user's channels, each message sent once.

1. `notify_requests` reads the requests: the recipient's row (contact details, preferences) from
   PostgreSQL; a channel the user opted out of (or that is not configured) is recorded SKIPPED;
   each other channel gets the request forwarded to its own topic
   (`<ns>.notification.email|sms|push`, header `x-channel`).
2. `deliver_email`, `deliver_sms`, `deliver_push` each read their topic through their own guard,
   so one channel that is down pauses only itself: an outbox row claimed before sending, then the
   batch goes to the channel's sink (`EmailChannel`: the SMTP pool; `ProviderChannel`: concurrent
   provider calls), each outcome settled in the outbox as soon as it is known; a provider or SMTP
   server that is down is retried while down, never dead-lettered; a permanent refusal is
   dead-lettered at once, except an SMS, which falls back to email (dead-lettered only if that
   fails too).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import faust
from psycopg.rows import dict_row

from connectors.base import DependencyDown, Outcome, Sink
from connectors.email import EmailChannel, EmailSender
from connectors.outbox import Outbox
from connectors.provider import ProviderChannel, ProviderClient
from schemas.catalog import TOPICS
from streams import tracing
from streams.agents._read_side import PgReader, install_agent
from streams.messages import message_id, render
from streams.reliability import SOURCE_HEADERS, Record, Rejection

if TYPE_CHECKING:
    from streams.runtime import Runtime

__all__ = ["CHANNELS", "channel_topic", "install"]

CHANNELS = ("EMAIL", "SMS", "PUSH")
#: channel -> the preference that opts a user in
_OPT_IN = {"EMAIL": "email_opt_in", "SMS": "sms_opt_in", "PUSH": "push_opt_in"}
#: how long a request waits for its user's row before it is refused (UNKNOWN_USER)
_UNKNOWN_USER_AFTER_S = 15.0


@dataclass
class _Message:
    """One message of a batch, claimed in the outbox, ready to send."""

    record: Record
    channel: str
    recipient: str
    key: dict[str, str]  # its outbox row: event id, channel, recipient
    body: Any  # an email message, or a provider's payload


class _Settling:
    """Outbox outcomes written as a group commit: whoever finds the connection free writes
    every outcome known by then in one statement; each caller returns once its own is written."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.pending: list[tuple[dict[str, str], str, str | None]] = []
        self.turn = asyncio.Lock()

    async def add(self, key: dict[str, str], status: str, error: str | None) -> None:
        self.pending.append((key, status, error))
        async with self.turn:
            batch, self.pending = self.pending, []
            await Outbox.settle_many(self.conn, batch)


def channel_topic(namespace: str, channel: str) -> str:
    return f"{namespace}.notification.{channel.lower()}"


def _recipient(user: dict[str, Any], channel: str) -> str:
    if channel == "EMAIL":
        return str(user["email"])
    if channel == "SMS":
        return str(user["phone"] or "")
    return str(user["user_id"])  # push: the provider maps the user to their devices


async def _users(conn: Any, records: list[Record]) -> dict[str, dict[str, Any]]:
    """The rows of the users a batch's requests name, in one query."""
    ids = sorted({str(r.event["data"]["user_id"]) for r in records if r.event.get("data")})
    if not ids:
        return {}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT user_id, name, email, phone, preferences, status FROM users "
            "WHERE user_id = ANY(%s)",
            (ids,),
        )
        return {str(row["user_id"]): row for row in await cur.fetchall()}


def install(rt: Runtime) -> None:
    s = rt.settings
    callback = (s.sms_status_callback_url or "").strip()
    app: faust.App = rt.app
    host, port = s.smtp_address
    email = EmailSender(host, port, s.email_from, pool_size=s.email_pool_size)
    # each channel's sink: the SMTP pool; SMS and push with their calls in flight
    sinks: dict[str, Sink] = {"EMAIL": EmailChannel(email)}
    providers: dict[str, ProviderClient] = {}
    for channel, name, key in (
        ("SMS", "SMS provider", s.sms_provider_key),
        ("PUSH", "push provider", s.push_provider_key),
    ):
        url = s.provider_endpoint(channel.lower())
        if url is not None:
            providers[channel] = ProviderClient(name, url, key.get_secret_value())
            sinks[channel] = ProviderChannel(providers[channel], s.provider_concurrency)
    requests_topic = TOPICS["notification"].name
    # this process, as the owner of the outbox rows it is sending (connectors.outbox)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    async def forward(r: Record, channel: str, extra: dict[str, str] | None = None) -> Any:
        topic, partition, offset = r.origin
        headers = [
            (k, v)
            for k, v in r.headers.items()
            if k not in SOURCE_HEADERS
            and k not in ("x-channel", "x-fallback-from", "x-redriven", tracing.TRACEPARENT)
        ]
        headers += [
            tracing.child_of(r),  # the channel's copy: a child of this step
            ("x-channel", channel.encode()),
            ("x-source-topic", topic.encode()),
            ("x-source-partition", str(partition).encode()),
            ("x-source-offset", str(offset).encode()),
        ]
        headers += [(k, v.encode()) for k, v in (extra or {}).items()]
        return await app.producer.send(
            channel_topic(s.topic_namespace, channel),
            r.key,
            r.value,
            partition=None,
            timestamp=r.timestamp_ms / 1000,
            headers=headers,
        )

    # --- 1. requests -> channels ---------------------------------------------------------------
    async def route(records: list[Record], db: PgReader) -> list[Rejection]:
        refused: list[Rejection] = []
        pending = []
        async with db.connection() as conn:
            requests = [r for r in records if r.event.get("type") == "notification.requested"]
            users = await _users(conn, requests)
            for r in requests:
                ev = r.event
                d = ev["data"]
                user = users.get(str(d["user_id"]))
                if user is None:
                    if time.time() - ev["occurred_at"].timestamp() > _UNKNOWN_USER_AFTER_S:
                        refused.append(Rejection(r, f"UNKNOWN_USER: {d['user_id']}", "UnknownUser"))
                        continue
                    raise DependencyDown(f"user {d['user_id']} not projected yet")
                eid, trace = str(ev["id"]), ev.get("trace_id") or str(ev["id"])
                prefs = user["preferences"] or {}
                for channel in dict.fromkeys(d["channels"]):
                    why = None
                    if user["status"] != "ACTIVE" or not prefs.get(_OPT_IN[channel], False):
                        why = "opted out"
                    elif channel != "EMAIL" and channel not in providers:
                        why = "channel not configured"
                    elif not _recipient(user, channel):
                        why = "no address for this channel"
                    if why:
                        await Outbox.skip(
                            conn,
                            event_id=eid,
                            channel=channel,
                            recipient=_recipient(user, channel),
                            user_id=user["user_id"],
                            kind=d["kind"],
                            why=why,
                            trace_id=trace,
                        )
                        continue
                    # a request an operator redrove: a failed send is tried again
                    redriven = {"x-redriven": "1"} if r.topic.endswith(".redrive") else None
                    pending.append(await forward(r, channel, redriven))
        for fut in pending:
            await fut
        return refused

    install_agent(rt, "notify_requests", requests_topic, route, owns_decode=True)

    # --- 2. one agent per channel --------------------------------------------------------------
    def deliverer(channel: str) -> Any:
        async def deliver(records: list[Record], db: PgReader) -> list[Rejection]:
            """Claim every message of the batch in the outbox, send them at once (the SMTP pool
            or concurrent provider calls), each settled as soon as it is sent: a crash may repeat
            the messages in flight then (each recognisable by its Message-ID)."""
            refused: list[Rejection] = []
            async with db.connection() as conn:
                seen: set[tuple[str, ...]] = set()
                users = await _users(conn, records)
                wanted: list[tuple[Record, dict[str, Any], dict[str, Any]]] = []
                for r in records:
                    if r.headers.get("x-channel", b"").decode() != channel:
                        continue
                    # a copy of a request forwarded twice (the request step is at-least-once)
                    # in the same batch: its outbox row is claimed by the first copy
                    copy = (str(r.event.get("id")), r.headers.get("x-fallback-from", b"").decode())
                    if copy in seen:
                        continue
                    seen.add(copy)
                    user = users.get(str(r.event["data"]["user_id"]))
                    if user is None:  # the request step saw it: only a deleted row gets here
                        uid = r.event["data"]["user_id"]
                        refused.append(Rejection(r, f"UNKNOWN_USER: {uid}", "UnknownUser"))
                        continue
                    wanted.append((r, user, _claim_row(r, channel, user)))
                # one claim for the batch; a row settled already is never sent again
                claims = await Outbox.claim_many(conn, [w[2] for w in wanted], owner=owner)
                ready = [
                    _message(r, channel, user, row)
                    for (r, user, row), mine in zip(wanted, claims, strict=True)
                    if mine
                ]
                # each message settled as soon as it is sent (group commit: the outcomes known
                # while one UPDATE runs go in the next), so a crash repeats at most the messages
                # in flight, not the batch's
                settling = _Settling(conn)

                async def settled(i: int, o: Outcome) -> None:
                    m = ready[i]
                    status = {"applied": "SENT", "refused": "FAILED", "down": "SENDING"}[o.status]
                    await settling.add(m.key, status, o.reason or None)
                    if o.status != "refused":
                        return
                    if channel == "SMS":  # as the seeds do: the message goes by email
                        await (await forward(m.record, "EMAIL", {"x-fallback-from": "SMS"}))
                    else:
                        reason = f"{o.reason} (to {m.recipient})"
                        refused.append(Rejection(m.record, reason, o.error_class))

                outcomes = await sinks[channel].write_batch([m.body for m in ready], settled)
                for o in outcomes:  # retried (while down); those sent are settled: never again
                    if o.status == "down":
                        raise DependencyDown(o.reason)
            return refused

        return deliver

    def _claim_row(r: Record, channel: str, user: dict[str, Any]) -> dict[str, Any]:
        ev, d = r.event, r.event["data"]
        eid = str(ev["id"])
        return {
            "event_id": eid,
            "channel": channel,
            "recipient": _recipient(user, channel),
            "user_id": user["user_id"],
            "kind": d["kind"],
            "msg_id": message_id(eid, channel),
            "trace_id": ev.get("trace_id") or eid,
            # a fallback from SMS goes out even where the email was skipped as opted out
            "fallback": "x-fallback-from" in r.headers,
            "redriven": "x-redriven" in r.headers,
        }

    def _message(r: Record, channel: str, user: dict[str, Any], row: dict[str, Any]) -> _Message:
        """The message of a claimed row, rendered."""
        d = r.event["data"]
        eid, trace, kind, recipient = (
            row["event_id"],
            row["trace_id"],
            row["kind"],
            row["recipient"],
        )
        key = {"event_id": eid, "channel": channel, "recipient": recipient}
        params = {"name": user["name"], "email": user["email"], **(d.get("params") or {})}
        params.setdefault("title", d.get("title") or "MohallaMart")
        params.setdefault("body", d.get("body") or "")
        subject, text, html = render(kind, params)
        subject = d.get("title") or subject
        if channel == "EMAIL":
            body: Any = email.build(
                to=recipient,
                subject=subject,
                text=text,
                html=html,
                message_id=row["msg_id"],
                headers={"X-MohallaMart-Event-Id": eid, "X-MohallaMart-Trace-Id": trace},
            )
        else:
            body = {
                "to": recipient,
                "title": subject,
                "body": d.get("body") or subject,
                "message_id": row["msg_id"],
                "kind": kind,
            }
            if channel == "SMS" and callback:
                # where the provider reports the message's delivery status (Twilio:
                # StatusCallback), our message id in it: the API's webhook finds the row by it
                sep = "&" if "?" in callback else "?"
                body["status_callback"] = callback + sep + urlencode({"message_id": row["msg_id"]})
        return _Message(r, channel, recipient, key, body)

    # A channel's batch is what its connections send in about a second: a rebalance waits for
    # the batches in flight, and a long one would outlast the group's session
    batch = {
        "EMAIL": s.email_pool_size * 100,
        "SMS": s.provider_concurrency * 16,
        "PUSH": s.provider_concurrency * 16,
    }
    for channel in CHANNELS:
        install_agent(
            rt,
            f"deliver_{channel.lower()}",
            channel_topic(s.topic_namespace, channel),
            deliverer(channel),
            owns_decode=True,
            batch_size=batch[channel],
        )
