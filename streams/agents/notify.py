"""notifications: `notification.requested` -> the user's channels, each message sent once.

For each request: the recipient's row (its contact details and preferences) from PostgreSQL; per
requested channel the user has not opted out of, an outbox row before sending and the outcome
after (streams.notify.Outbox). SMTP down (4xx, refused, timeout): retried while down, never
dead-lettered; a recipient refused for good (5xx): dead-lettered at once.

So far: email. SMS and push requests are recorded as SKIPPED ("channel not available yet").
"""

from __future__ import annotations

import time
from typing import Any

from psycopg.rows import dict_row

from connectors.base import DependencyDown
from connectors.email import EmailRefused, EmailSender
from streams.agents._read_side import PgReader, install_agents
from streams.notify import Outbox, message_id, render
from streams.reliability import Record, Rejection

__all__ = ["install"]

#: channel -> the preference that opts a user in
_OPT_IN = {"EMAIL": "email_opt_in", "SMS": "sms_opt_in", "PUSH": "push_opt_in"}
#: how long a request waits for its user's row before it is refused (UNKNOWN_USER)
_UNKNOWN_USER_AFTER_S = 300.0


def install(rt: Any) -> None:
    s = rt.settings
    host, port = s.smtp_address
    email = EmailSender(host, port, s.email_from)

    async def write(records: list[Record], db: PgReader) -> list[Rejection]:
        refused: list[Rejection] = []
        async with db.connection() as conn:
            for r in records:
                ev = r.event
                if ev.get("type") != "notification.requested":
                    continue
                d = ev["data"]
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(
                        "SELECT user_id, name, email, phone, preferences, status FROM users "
                        "WHERE user_id = %s",
                        (d["user_id"],),
                    )
                    user = await cur.fetchone()
                if user is None:
                    age = time.time() - ev["occurred_at"].timestamp()
                    if age > _UNKNOWN_USER_AFTER_S:
                        refused.append(Rejection(r, f"UNKNOWN_USER: {d['user_id']}", "UnknownUser"))
                        continue
                    raise DependencyDown(f"user {d['user_id']} not projected yet")
                failure = await _deliver(conn, ev, user)
                if failure is not None:
                    refused.append(Rejection(r, failure, "EmailRefused"))
        return refused

    async def _deliver(conn: Any, ev: dict[str, Any], user: dict[str, Any]) -> str | None:
        d = ev["data"]
        eid, kind = str(ev["id"]), d["kind"]
        trace = ev.get("trace_id") or eid
        prefs = user["preferences"] or {}
        for channel in d["channels"]:
            recipient = user["email"] if channel == "EMAIL" else (user["phone"] or "")
            common = {"event_id": eid, "channel": channel, "recipient": recipient}
            if user["status"] != "ACTIVE" or not prefs.get(_OPT_IN[channel], False):
                await Outbox.skip(
                    conn,
                    **common,
                    user_id=user["user_id"],
                    kind=kind,
                    why="opted out",
                    trace_id=trace,
                )
                continue
            if channel != "EMAIL":
                await Outbox.skip(
                    conn,
                    **common,
                    user_id=user["user_id"],
                    kind=kind,
                    why="channel not available yet",
                    trace_id=trace,
                )
                continue
            msg_id = message_id(eid, channel)
            if not await Outbox.claim(
                conn, **common, user_id=user["user_id"], kind=kind, msg_id=msg_id, trace_id=trace
            ):
                continue  # sent (or settled) already: never again
            params = {"name": user["name"], "email": user["email"], **d.get("params", {})}
            params.setdefault("title", d.get("title") or "MohallaMart")
            params.setdefault("body", d.get("body") or "")
            subject, text, html = render(kind, params)
            msg = email.build(
                to=recipient,
                subject=d.get("title") or subject,
                text=text,
                html=html,
                message_id=msg_id,
                headers={"X-MohallaMart-Event-Id": eid, "X-MohallaMart-Trace-Id": trace},
            )
            try:
                await email.send(msg)
            except EmailRefused as exc:
                await Outbox.settle(conn, **common, status="FAILED", error=str(exc))
                return f"{exc} ({recipient})"
            except DependencyDown as exc:
                await Outbox.settle(conn, **common, status="SENDING", error=str(exc))
                raise
            await Outbox.settle(conn, **common, status="SENT")
        return None

    install_agents(rt, "notify", ("notification",), write, owns_decode=True)
