"""The notification outbox in PostgreSQL: each notification is recorded before it is sent, once
per event, channel and recipient, so a redelivery or a replay never sends it again.
"""

from __future__ import annotations

from typing import Any

import psycopg

__all__ = ["Outbox"]


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
