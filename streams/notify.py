"""Notifications: templates and the outbox (sent once per event, channel and recipient).

Templates are Jinja2 files in `streams/templates/`: `<kind>.subject.j2`, `<kind>.txt.j2` and
`<kind>.html.j2` (HTML autoescaped: user data never becomes markup); a kind without its own
templates uses `generic.*` with the request's title and body.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import jinja2
import psycopg

__all__ = ["Outbox", "message_id", "render"]

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=False,
)


def render(kind: str, params: dict[str, Any]) -> tuple[str, str, str]:
    """(subject, text, html) of a notification."""
    name = kind.lower()
    try:
        _ENV.get_template(f"{name}.txt.j2")
    except jinja2.TemplateNotFound:
        name = "generic"
    subject = _ENV.get_template(f"{name}.subject.j2").render(params).strip()
    text = _ENV.get_template(f"{name}.txt.j2").render(params)
    html = _ENV.get_template(f"{name}.html.j2").render(params)
    return subject, text, html


def message_id(event_id: str | uuid.UUID, channel: str) -> str:
    """The Message-ID of a notification's email: derived from the event id, so a copy sent again
    after a crash is recognisable as the same message."""
    return f"<{event_id}.{channel.lower()}@notifications.mohallamart>"


class Outbox:
    """The `notification_outbox` table (migration 0006)."""

    @staticmethod
    async def claim(
        conn: psycopg.AsyncConnection[Any],
        *,
        event_id: str,
        channel: str,
        recipient: str,
        user_id: str,
        kind: str,
        msg_id: str,
        trace_id: str,
        fallback: bool = False,
        redriven: bool = False,
    ) -> bool:
        """Record the notification before sending it; False if it was settled already (sent,
        failed or skipped): never send it again. A `fallback` may take over a skipped row; a
        `redriven` one (an operator's `dlq redrive`) reopens a failed row: it is tried again."""
        again = ["'SENDING'"] + ["'SKIPPED'"] * fallback + ["'FAILED'"] * redriven
        again_sql = f"({', '.join(again)})"
        cur = await conn.execute(
            "INSERT INTO notification_outbox (event_id, channel, recipient, user_id, kind, "
            "status, attempts, message_id, trace_id) VALUES (%s, %s, %s, %s, %s, 'SENDING', 1, "
            "%s, %s) ON CONFLICT (event_id, channel, recipient) DO UPDATE SET attempts = "
            "notification_outbox.attempts + 1, status = 'SENDING', updated_at = now() "
            f"WHERE notification_outbox.status IN {again_sql} RETURNING status",
            (event_id, channel, recipient, user_id, kind, msg_id, trace_id),
        )
        return await cur.fetchone() is not None

    @staticmethod
    async def settle(
        conn: psycopg.AsyncConnection[Any],
        *,
        event_id: str,
        channel: str,
        recipient: str,
        status: str,
        error: str | None = None,
    ) -> None:
        await conn.execute(
            "UPDATE notification_outbox SET status = %s, last_error = %s, updated_at = now(), "
            "sent_at = CASE WHEN %s = 'SENT' THEN now() ELSE sent_at END "
            "WHERE event_id = %s AND channel = %s AND recipient = %s",
            (status, error, status, event_id, channel, recipient),
        )

    @staticmethod
    async def skip(
        conn: psycopg.AsyncConnection[Any],
        *,
        event_id: str,
        channel: str,
        recipient: str,
        user_id: str,
        kind: str,
        why: str,
        trace_id: str,
    ) -> None:
        await conn.execute(
            "INSERT INTO notification_outbox (event_id, channel, recipient, user_id, kind, "
            "status, last_error, trace_id) VALUES (%s, %s, %s, %s, %s, 'SKIPPED', %s, %s) "
            "ON CONFLICT DO NOTHING",
            (event_id, channel, recipient, user_id, kind, why, trace_id),
        )
