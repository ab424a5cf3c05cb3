"""What the API's webhook routes write (issue 17): the receipt of each delivery, claimed before
its effect so a replayed delivery writes nothing, and the SMS provider's delivery status on the
notification delivery log."""

from __future__ import annotations

from typing import Any

import psycopg

__all__ = ["claim", "expire", "record_sms_status", "release"]


async def claim(conn: psycopg.AsyncConnection[Any], source: str, delivery_id: str) -> bool:
    """Claim a delivery: False if it was claimed before (a replay)."""
    cur = await conn.execute(
        "INSERT INTO webhook_receipts (source, delivery_id) VALUES (%s, %s) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        (source, delivery_id),
    )
    return await cur.fetchone() is not None


async def release(conn: psycopg.AsyncConnection[Any], source: str, delivery_id: str) -> None:
    """Give a claim back: its effect was not written (the sender's retry must be taken)."""
    await conn.execute(
        "DELETE FROM webhook_receipts WHERE source = %s AND delivery_id = %s",
        (source, delivery_id),
    )


async def expire(conn: psycopg.AsyncConnection[Any], days: int) -> int:
    """Forget receipts older than `days` (a sender's tolerance is minutes)."""
    cur = await conn.execute(
        "DELETE FROM webhook_receipts WHERE received_at < now() - make_interval(days => %s)",
        (days,),
    )
    return max(cur.rowcount, 0)


async def record_sms_status(
    conn: psycopg.AsyncConnection[Any], message_id: str, status: str, error: str | None
) -> int:
    """Put a provider's delivery status on the SMS rows of `message_id`; how many rows it
    reached (0: no message of ours has that id)."""
    cur = await conn.execute(
        "UPDATE notification_outbox SET delivery_status = %s, delivery_error = %s, "
        "delivery_at = now(), updated_at = now() WHERE message_id = %s AND channel = 'SMS'",
        (status, error, message_id),
    )
    return max(cur.rowcount, 0)
