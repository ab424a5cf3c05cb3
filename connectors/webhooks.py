"""What the API's webhook routes write (issue 17): the receipt of each delivery, claimed before
its effect so a replayed delivery writes nothing, and the SMS provider's delivery status on the
notification delivery log."""

from __future__ import annotations

from typing import Any, Literal

import psycopg

__all__ = [
    "SMS_STATUS_RANK",
    "claim",
    "done",
    "expire",
    "record_sms_status",
    "release",
    "sms_status_once",
]

#: a pending claim older than this was cut off (a crash, a cancelled request): a retry takes it
STALE_PENDING_S = 30
#: an SMS status's place in a message's life: a status only ever moves forward (Twilio's
#: callbacks may come out of order, and a late `sent` must not hide a `delivered`)
SMS_STATUS_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "delivered": 4,
    "undelivered": 4,
    "failed": 4,
    "canceled": 4,
    "partially_delivered": 4,
    "read": 5,
}

Claim = Literal["claimed", "replay", "in progress"]


async def claim(conn: psycopg.AsyncConnection[Any], source: str, delivery_id: str) -> Claim:
    """Claim a delivery (pending): "replay" if it was done before, "in progress" if another
    request holds a fresh claim on it."""
    cur = await conn.execute(
        "INSERT INTO webhook_receipts AS r (source, delivery_id, state) "
        "VALUES (%s, %s, 'pending') ON CONFLICT (source, delivery_id) DO UPDATE "
        "SET received_at = now() WHERE r.state = 'pending' "
        "AND r.received_at < now() - make_interval(secs => %s) RETURNING 1",
        (source, delivery_id, STALE_PENDING_S),
    )
    if await cur.fetchone() is not None:
        return "claimed"
    cur = await conn.execute(
        "SELECT state FROM webhook_receipts WHERE source = %s AND delivery_id = %s",
        (source, delivery_id),
    )
    row = await cur.fetchone()
    return "replay" if row is None or row[0] == "done" else "in progress"


async def done(conn: psycopg.AsyncConnection[Any], source: str, delivery_id: str) -> None:
    """The delivery's effect is written: from now on it is a replay."""
    await conn.execute(
        "UPDATE webhook_receipts SET state = 'done' WHERE source = %s AND delivery_id = %s",
        (source, delivery_id),
    )


async def release(conn: psycopg.AsyncConnection[Any], source: str, delivery_id: str) -> None:
    """Give a pending claim back: its effect was not written (the sender's retry is taken)."""
    await conn.execute(
        "DELETE FROM webhook_receipts WHERE source = %s AND delivery_id = %s AND state = 'pending'",
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
    """Put a provider's delivery status on the SMS rows of `message_id`, only where it moves the
    row's status forward (`SMS_STATUS_RANK`); how many rows it changed."""
    rank = SMS_STATUS_RANK[status]
    ranks = (
        "CASE delivery_status "
        + " ".join(f"WHEN '{s}' THEN {r}" for s, r in SMS_STATUS_RANK.items())
        + " ELSE -1 END"
    )
    cur = await conn.execute(
        "UPDATE notification_outbox SET delivery_status = %s, delivery_error = %s, "
        "delivery_at = now(), updated_at = now() WHERE message_id = %s AND channel = 'SMS' "
        f"AND (delivery_status IS NULL OR {ranks} < %s)",  # noqa: S608 - our own constants
        (status, error, message_id, rank),
    )
    return max(cur.rowcount, 0)


async def sms_status_once(
    conn: psycopg.AsyncConnection[Any],
    delivery_id: str,
    message_id: str,
    status: str,
    error: str | None,
) -> int | None:
    """A Twilio callback's effect and its receipt in one transaction: None if the delivery was
    received before (a replay; nothing written), else how many rows it moved forward."""
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO webhook_receipts (source, delivery_id, state) VALUES ('twilio', %s, "
            "'done') ON CONFLICT DO NOTHING RETURNING 1",
            (delivery_id,),
        )
        if await cur.fetchone() is None:
            return None
        return await record_sms_status(conn, message_id, status, error)
