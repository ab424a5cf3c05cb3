"""What the workflows role reads and writes in PostgreSQL: how the projections judged an event,
the shop and product rows a notification names, and the back-in-stock alerts (`stock_alerts`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from connectors.postgres import entity_of, version_of

__all__ = ["Judgement", "WorkflowStore"]


@dataclass(frozen=True)
class Judgement:
    """What PostgreSQL says of an event the projections judge."""

    refused: bool = False  # recorded in `projection_refusals`
    applied: bool = False  # its row holds exactly this event's version
    newer: bool = False  # its row holds a newer version (this one applied or refused before it)
    user_id: str | None = None  # the user its row names

    @property
    def decided(self) -> bool:
        """Refused, or applied: the projections have dealt with it."""
        return self.refused or self.applied


class WorkflowStore:
    """The workflows' queries, each on the caller's connection."""

    @staticmethod
    async def refused(conn: psycopg.AsyncConnection[Any], event_ids: Sequence[str]) -> set[str]:
        """The ids of `event_ids` the projections recorded as refused."""
        cur = await conn.execute(
            "SELECT event_id::text FROM projection_refusals WHERE event_id = ANY(%s::uuid[])",
            (list(event_ids),),
        )
        return {row[0] for row in await cur.fetchall()}

    @staticmethod
    async def judgements(
        conn: psycopg.AsyncConnection[Any], events: Sequence[dict[str, Any]]
    ) -> dict[str, Judgement]:
        """event id -> its judgement, for events that version a row (`entity_of`): the refusals
        first, then one query per table for the rest (not one per event)."""
        refused = await WorkflowStore.refused(conn, [str(ev["id"]) for ev in events])
        out = {eid: Judgement(refused=True) for eid in refused}
        wanted: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for ev in events:
            eid = str(ev["id"])
            if eid in refused:
                continue
            out[eid] = Judgement()
            table, key_col, key = entity_of(ev) or ("", "", "")
            at, vid = version_of(ev)
            wanted.setdefault((table, key_col), []).append(
                {"e": eid, "k": key, "at": at.isoformat(), "v": str(vid)}
            )
        for (table, key_col), probe in wanted.items():
            cur = await conn.execute(
                "SELECT w.e, (t.version_at, t.version_id) = (w.at, w.v), "  # noqa: S608
                "(t.version_at, t.version_id) > (w.at, w.v), t.user_id "
                "FROM jsonb_to_recordset(%s::jsonb) AS w(e text, k text, at timestamptz, v uuid) "
                f"JOIN {table} t ON t.{key_col} = w.k",
                (json.dumps(probe),),
            )
            for eid, applied, newer, user in await cur.fetchall():
                out[eid] = Judgement(applied=bool(applied), newer=bool(newer), user_id=str(user))
        return out

    @staticmethod
    async def shop_owner(conn: psycopg.AsyncConnection[Any], shop_id: str) -> str | None:
        """The user who owns the shop; None if the shop is not a row (yet)."""
        cur = await conn.execute("SELECT owner_user_id FROM shops WHERE shop_id = %s", (shop_id,))
        row = await cur.fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    async def product(
        conn: psycopg.AsyncConnection[Any], product_id: str
    ) -> tuple[str, str | None, str | None] | None:
        """(product name, shop name, shop owner) of a product, the last two None if its shop is
        not a row (yet); None if the product is not a row (yet)."""
        cur = await conn.execute(
            "SELECT p.name, s.name, s.owner_user_id FROM products p "
            "LEFT JOIN shops s ON s.shop_id = p.shop_id WHERE p.product_id = %s",
            (product_id,),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        return str(row[0]), row[1], None if row[2] is None else str(row[2])

    @staticmethod
    async def remember_alert(conn: psycopg.AsyncConnection[Any], ev: dict[str, Any]) -> None:
        """Arm the alert a `product.stock_alert_requested` asks for."""
        d = ev["data"]
        await conn.execute(
            "INSERT INTO stock_alerts (product_id, user_id, shop_id, requested_at, request_id) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (product_id, user_id) DO UPDATE SET "
            "requested_at = EXCLUDED.requested_at, request_id = EXCLUDED.request_id, "
            "notified_by = NULL, notified_at = NULL "
            # asking again after being told arms the alert again; an older request (a replay)
            # does not
            "WHERE stock_alerts.notified_at IS NOT NULL "
            "AND stock_alerts.notified_at < EXCLUDED.requested_at",
            (d["product_id"], d["user_id"], d["shop_id"], ev["occurred_at"], str(ev["id"])),
        )

    @staticmethod
    async def claim_alerts(
        conn: psycopg.AsyncConnection[Any], product_id: str, event_id: str, at: datetime
    ) -> list[tuple[str, bool, bool]]:
        """Mark the product's armed alerts (asked for at or before `at`) as told by the
        back-in-stock event `event_id`; (user id, the user is a row, the user wants such alerts)
        of every alert that event tells (now, or the first time it was processed: a replay)."""
        async with conn.transaction():
            await conn.execute(
                "UPDATE stock_alerts SET notified_by = %s, notified_at = %s "
                "WHERE product_id = %s AND notified_by IS NULL AND requested_at <= %s",
                (event_id, at, product_id, at),
            )
            cur = await conn.execute(
                "SELECT a.user_id, u.user_id IS NOT NULL, "
                "coalesce((u.preferences ->> 'back_in_stock_alerts')::boolean, true) "
                "FROM stock_alerts a LEFT JOIN users u ON u.user_id = a.user_id "
                "WHERE a.product_id = %s AND a.notified_by = %s ORDER BY a.user_id",
                (product_id, event_id),
            )
            rows = await cur.fetchall()
        return [(str(user), bool(known), bool(wants)) for user, known, wants in rows]
