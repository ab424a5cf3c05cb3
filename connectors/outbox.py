"""The notification outbox in PostgreSQL: each notification is recorded before it is sent, once
per event, channel and recipient, so a redelivery or a replay never sends it again.

A row being sent belongs to the worker process that claimed it (`owner`): another process that
meets the same notification meanwhile (the next owner of its partition after a rebalance, while
the last one still finishes its batch) is told to wait (`ClaimedElsewhere`, a DependencyDown:
its batch backs off and is tried again) until the row is settled or the claim is older than
`CLAIM_LEASE_S` (the claimant crashed). So two workers never send the same message at once.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from connectors.base import DependencyDown

__all__ = ["CLAIM_LEASE_S", "ClaimedElsewhere", "Outbox"]

#: how long a claim holds against other worker processes (a send gives up after 10 s)
CLAIM_LEASE_S = 30.0


class ClaimedElsewhere(DependencyDown):
    """Another worker process is sending this notification now: wait until it is settled."""


class Outbox:
    """The `notification_outbox` table (migrations 0006, 0010)."""

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
        owner: str,
        fallback: bool = False,
        redriven: bool = False,
        lease_s: float = CLAIM_LEASE_S,
    ) -> bool:
        """Record the notification before sending it, as `owner`'s; False if it was settled
        already (sent, failed or skipped): never send it again. A `fallback` may take over a
        skipped row; a `redriven` one (an operator's `dlq redrive`) reopens a failed row: it is
        tried again. Raises ClaimedElsewhere while another owner's claim of the row holds."""
        again = ["'SENDING'"] + ["'SKIPPED'"] * fallback + ["'FAILED'"] * redriven
        again_sql = f"({', '.join(again)})"
        # one round trip: the claim, or (when the row is not ours to send) the row as it was
        cur = await conn.execute(
            "WITH claim AS (INSERT INTO notification_outbox (event_id, channel, recipient, "
            "user_id, kind, status, attempts, message_id, trace_id, claimed_by, claimed_at) "
            "VALUES (%(e)s, %(c)s, %(r)s, %(u)s, %(k)s, 'SENDING', 1, %(m)s, %(t)s, %(o)s, now()) "
            "ON CONFLICT (event_id, channel, recipient) DO UPDATE SET "
            "attempts = notification_outbox.attempts + 1, status = 'SENDING', updated_at = now(), "
            "claimed_by = EXCLUDED.claimed_by, claimed_at = now() "
            f"WHERE notification_outbox.status IN {again_sql} "
            "AND (notification_outbox.status <> 'SENDING' "
            "OR notification_outbox.claimed_by IS NULL "
            "OR notification_outbox.claimed_by = EXCLUDED.claimed_by "
            "OR notification_outbox.claimed_at < now() - make_interval(secs => %(l)s)) "
            "RETURNING 1) "
            "SELECT 'CLAIMED', 0.0 FROM claim UNION ALL "
            "SELECT status, extract(epoch FROM now() - claimed_at)::float8 "
            "FROM notification_outbox WHERE event_id = %(e)s AND channel = %(c)s "
            "AND recipient = %(r)s AND NOT EXISTS (SELECT 1 FROM claim)",
            {
                "e": event_id,
                "c": channel,
                "r": recipient,
                "u": user_id,
                "k": kind,
                "m": msg_id,
                "t": trace_id,
                "o": owner,
                "l": lease_s,
            },
        )
        row = await cur.fetchone()
        if row is None or row[0] == "CLAIMED":
            return True
        if row[0] == "SENDING":
            raise ClaimedElsewhere(
                f"the {channel} notification of event {event_id} is being sent by another worker "
                f"(claimed {float(row[1] or 0):.0f} s ago; its claim lapses after {lease_s:.0f} s)"
            )
        return False

    @staticmethod
    async def claim_many(
        conn: psycopg.AsyncConnection[Any],
        rows: list[dict[str, Any]],
        *,
        owner: str,
        lease_s: float = CLAIM_LEASE_S,
    ) -> list[bool]:
        """`claim` for a batch, in three statements whatever its size: one bool per row (True:
        claimed by `owner`, send it). Each row: event_id, channel, recipient, user_id, kind,
        msg_id, trace_id, fallback, redriven. Raises ClaimedElsewhere if another owner's claim
        of a row holds (the rows claimed here stay `owner`'s: the batch comes again)."""
        if not rows:
            return []
        cols = ("event_id", "channel", "recipient", "user_id", "kind", "msg_id", "trace_id")
        arrays = [[str(r[c]) for r in rows] for c in cols]
        arrays[0] = [str(uuid.UUID(e)) for e in arrays[0]]  # as PostgreSQL prints it
        flags = [[bool(r.get("fallback")) for r in rows], [bool(r.get("redriven")) for r in rows]]
        # 1. new rows: claimed at once
        cur = await conn.execute(
            "INSERT INTO notification_outbox (event_id, channel, recipient, user_id, kind, "
            "status, attempts, message_id, trace_id, claimed_by, claimed_at) "
            "SELECT v.e::uuid, v.c, v.r, v.u, v.k, 'SENDING', 1, v.m, v.t, %s, now() "
            "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
            "%s::text[], %s::text[]) AS v(e, c, r, u, k, m, t) "
            "ON CONFLICT (event_id, channel, recipient) DO NOTHING "
            "RETURNING event_id::text, channel, recipient",
            (owner, *arrays),
        )
        claimed = {tuple(x) for x in await cur.fetchall()}
        keys = list(zip(*arrays[:3], strict=True))
        # 2. rows that were there: claimed again where the rules allow (a row being sent by this
        # owner or by none, or whose claim lapsed; a fallback takes over a skipped row; a
        # redrive reopens a failed one)
        again = [i for i, k in enumerate(keys) if k not in claimed]
        if again:
            cur = await conn.execute(
                "UPDATE notification_outbox o SET attempts = o.attempts + 1, "
                "status = 'SENDING', updated_at = now(), claimed_by = %s, claimed_at = now() "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::bool[], %s::bool[]) "
                "AS v(e, c, r, fb, rd) "
                "WHERE o.event_id = v.e::uuid AND o.channel = v.c AND o.recipient = v.r "
                "AND ((o.status = 'SENDING' AND (o.claimed_by IS NULL OR o.claimed_by = %s "
                "OR o.claimed_at < now() - make_interval(secs => %s))) "
                "OR (o.status = 'SKIPPED' AND v.fb) OR (o.status = 'FAILED' AND v.rd)) "
                "RETURNING o.event_id::text, o.channel, o.recipient",
                (
                    owner,
                    [keys[i][0] for i in again],
                    [keys[i][1] for i in again],
                    [keys[i][2] for i in again],
                    [flags[0][i] for i in again],
                    [flags[1][i] for i in again],
                    owner,
                    lease_s,
                ),
            )
            claimed |= {tuple(x) for x in await cur.fetchall()}
        rest = [k for k in keys if k not in claimed]
        if rest:
            # 3. the others: settled already (never again), or being sent by another owner
            cur = await conn.execute(
                "SELECT o.event_id::text, o.channel, extract(epoch FROM now() - o.claimed_at) "
                "FROM notification_outbox o JOIN unnest(%s::text[], %s::text[], %s::text[]) "
                "AS v(e, c, r) ON o.event_id = v.e::uuid AND o.channel = v.c "
                "AND o.recipient = v.r WHERE o.status = 'SENDING' LIMIT 1",
                ([k[0] for k in rest], [k[1] for k in rest], [k[2] for k in rest]),
            )
            busy = await cur.fetchone()
            if busy is not None:
                raise ClaimedElsewhere(
                    f"the {busy[1]} notification of event {busy[0]} is being sent by another "
                    f"worker (claimed {float(busy[2] or 0):.0f} s ago; its claim lapses after "
                    f"{lease_s:.0f} s)"
                )
        out: list[bool] = []
        for k in keys:  # a key twice in the batch (a fallback beside its original): sent once
            out.append(k in claimed)
            claimed.discard(k)
        return out

    @staticmethod
    async def settle_many(
        conn: psycopg.AsyncConnection[Any], outcomes: list[tuple[dict[str, str], str, str | None]]
    ) -> None:
        """`settle` for many rows in one statement: (key, status, error) each."""
        if not outcomes:
            return
        await conn.execute(
            "UPDATE notification_outbox o SET status = v.s, last_error = v.err, "
            "updated_at = now(), sent_at = CASE WHEN v.s = 'SENT' THEN now() ELSE o.sent_at END "
            "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) "
            "AS v(e, c, r, s, err) "
            "WHERE o.event_id = v.e::uuid AND o.channel = v.c AND o.recipient = v.r",
            (
                [k["event_id"] for k, _, _ in outcomes],
                [k["channel"] for k, _, _ in outcomes],
                [k["recipient"] for k, _, _ in outcomes],
                [st for _, st, _ in outcomes],
                [err for _, _, err in outcomes],
            ),
        )

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
