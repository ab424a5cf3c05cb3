"""PostgreSQL projections: users, sessions, shops, shopkeepers, categories, products, orders and
their items, inventory movements and the audit log.

One `write_batch` is one transaction: the rows the batch touches are read `FOR UPDATE`, the events
applied in order in memory, and each table written with one multi-row upsert. An entity's version
is the (`occurred_at`, `id`) of the last event applied to it: an event whose version is not newer
is skipped (a redelivery or an older event changes nothing), and the upsert's WHERE clause holds
the same rule in the database. Effects keyed by event id (movements, audit rows) are inserted
ON CONFLICT DO NOTHING. A transition outside the lifecycle tables is refused (the caller
dead-letters it) and touches nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from connectors.base import APPLIED, DependencyDown, Outcome, Settled, refused, settle_each
from connectors.cleanup import Cutoffs, is_removed_session, load_cutoffs
from connectors.db import SESSION_LOST, session_options
from schemas.catalog import record_defaults
from schemas.lifecycle import (
    ORDER_TRANSITIONS,
    PRODUCT_TRANSITIONS,
    SHOPKEEPER_TRANSITIONS,
    transition,
)

__all__ = ["PostgresProjections", "entity_of", "version_of"]

Row = dict[str, Any]

# table -> key column
_TABLES: dict[str, str] = {
    "users": "user_id",
    "sessions": "session_id",
    "shops": "shop_id",
    "shopkeepers": "shop_id",
    "products": "product_id",
    "orders": "order_id",
}

# event type -> (table, key field of data); None: the projections have nothing to do
_ENTITY: dict[str, tuple[str, str] | None] = {
    "user.registered": ("users", "user_id"),
    "user.updated": ("users", "user_id"),
    "user.preferences_changed": ("users", "user_id"),
    "user.deleted": ("users", "user_id"),
    "user.signed_in": ("sessions", "session_id"),
    "user.signed_out": ("sessions", "session_id"),
    "shop.created": ("shops", "shop_id"),
    "shop.updated": ("shops", "shop_id"),
    "shopkeeper.applied": ("shopkeepers", "shop_id"),
    "shopkeeper.approved": ("shopkeepers", "shop_id"),
    "shopkeeper.rejected": ("shopkeepers", "shop_id"),
    "product.created": ("products", "product_id"),
    "product.updated": ("products", "product_id"),
    "product.published": ("products", "product_id"),
    "product.archived": ("products", "product_id"),
    "product.moved_to_draft": ("products", "product_id"),
    "product.stock_changed": ("products", "product_id"),
    "product.stock_set": None,  # the stock role decides; its product.stock_changed is applied
    "product.stock_adjusted": None,
    "product.out_of_stock": None,
    "product.back_in_stock": None,
    "order.created": ("orders", "order_id"),
    "order.accepted": ("orders", "order_id"),
    "order.rejected": ("orders", "order_id"),
    "order.cancelled": ("orders", "order_id"),
    "order.status_changed": ("orders", "order_id"),
    "order.refunded": ("orders", "order_id"),
}


def entity_of(event: dict[str, Any]) -> tuple[str, str, str] | None:
    """(table, key column, key) of the row `event` versions, or None."""
    spec = _ENTITY.get(event["type"])
    if spec is None:
        return None
    table, field = spec
    return table, _TABLES[table], str(event["data"][field])


def version_of(event: dict[str, Any]) -> tuple[datetime, uuid.UUID]:
    """An event's version: its (`occurred_at`, id), as the rows keep theirs."""
    eid = event["id"]
    return event["occurred_at"], eid if isinstance(eid, uuid.UUID) else uuid.UUID(str(eid))


def _json(value: Any) -> str:
    # orjson writes datetimes as RFC 3339 and UUIDs as strings, both as PostgreSQL reads them
    return orjson.dumps(value, default=str).decode()


@dataclass
class _Batch:
    """What one batch writes, besides the entity rows."""

    audit: list[Row]
    items: list[Row]
    returned: list[Row]
    movements: list[Row]
    categories: dict[str, datetime]
    created_products: list[str]


class _Illegal(Exception):
    pass


#: the cut-over barrier ("mmrb"): every live batch holds it shared until it commits; a rebuild's
#: cut-over takes it exclusively, so the live projections pause between two batches
REBUILD_LOCK = 0x6D6D7262

#: the tables the projections write: what a rebuild builds and swaps (`connectors.rebuild`)
PROJECTION_TABLES = (
    *_TABLES,
    "order_items",
    "inventory_movements",
    "audit_log",
    "categories",
    "projection_refusals",
    "projection_positions",
)

Positions = Mapping[tuple[str, int], int]


class PostgresProjections:
    """The projections sink (see the module docstring). With `schema`, it writes the tables of
    that schema (a rebuild's shadow) and reads everything else (the cleanup runs) from public;
    such a writer takes no cut-over barrier."""

    def __init__(
        self, dsn: str, *, connect_timeout_s: float = 5.0, schema: str | None = None
    ) -> None:
        self._dsn = dsn
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg.AsyncConnection[Row] | None = None
        self._upserts: dict[str, str] = {}
        self._schema = schema

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _connection(self) -> psycopg.AsyncConnection[Row]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self._dsn,
                connect_timeout=int(self._connect_timeout_s),
                row_factory=dict_row,
                # psycopg prepares a statement after 5 runs; a generic plan made while a table
                # was small (a fresh database) kept scanning it whole once it had grown (p50
                # 700 ms from API to row after 100k events). A batch is worth planning each time.
                # (after this process's own: `connectors.db.limit_idle_transactions`)
                options=session_options(
                    "plan_cache_mode=force_custom_plan",
                    # a rebuild's schema alone: were it dropped under the rebuild, its writes
                    # fail instead of reaching the live tables (what it reads of public is
                    # qualified)
                    *(() if self._schema is None else (f"search_path={self._schema}",)),
                ),
            )
            if not self._upserts:
                await self._prepare_upserts(self._conn)
        return self._conn

    async def _prepare_upserts(self, conn: psycopg.AsyncConnection[Row]) -> None:
        for table, key in _TABLES.items():
            cur = await conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = %s "
                "ORDER BY ordinal_position",
                (table,),
            )
            cols = [r["column_name"] for r in await cur.fetchall()]
            if not cols:
                raise DependencyDown(f"table {table} missing: run `mohallamart db migrate`")
            guard = "(t.version_at, t.version_id) <= (EXCLUDED.version_at, EXCLUDED.version_id)"
            if table == "products":
                guard += " AND t.stock_seq <= EXCLUDED.stock_seq"
            self._upserts[table] = (
                f"INSERT INTO {table} AS t SELECT * FROM jsonb_populate_recordset(NULL::{table}, "
                f"%s::jsonb) ON CONFLICT ({key}) DO UPDATE SET ({', '.join(cols)}) = "
                f"ROW({', '.join('EXCLUDED.' + c for c in cols)}) WHERE {guard}"
            )
        await conn.commit()

    # --- the sink contract --------------------------------------------------------------------
    async def write_batch(
        self,
        items: Sequence[dict[str, Any]],
        settled: Settled | None = None,
        *,
        positions: Positions | None = None,
    ) -> list[Outcome]:
        """Apply a batch of events in one transaction: each applied (or already applied, or
        older than its row), or refused as an illegal transition. `positions`, (topic,
        partition) -> the offset after the batch's last record there, are recorded in the same
        transaction (`projection_positions`)."""
        try:
            conn = await self._connection()
            async with conn.transaction():
                if self._schema is None:
                    # the cut-over barrier: a rebuild's cut-over waits for this batch to commit,
                    # and this batch waits for the cut-over (then writes the tables swapped in)
                    await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (REBUILD_LOCK,))
                outcomes = await self._apply(conn, items)
                # refusals with their batch (the dead-letter handler records them again, without
                # effect): positions never stand past a refused event without its refusal
                await _record_refusals(conn, items, outcomes)
                if positions:
                    await record_positions(conn, positions)
        except SESSION_LOST as exc:
            await self._drop()
            raise DependencyDown(f"PostgreSQL: {type(exc).__name__}: {exc}".strip()) from exc
        return await settle_each(outcomes, settled)

    async def record_refusal(self, event: dict[str, Any], error_class: str, reason: str) -> None:
        """Remember that `event` was dead-lettered: the read side stops waiting for it."""
        try:
            conn = await self._connection()
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO projection_refusals (event_id, event_type, error_class, reason) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
                    (str(event["id"]), event["type"], error_class, reason[:2000]),
                )
        except SESSION_LOST as exc:
            await self._drop()
            raise DependencyDown(f"PostgreSQL: {type(exc).__name__}: {exc}".strip()) from exc

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # noqa: BLE001, S110 - it is already broken
                pass

    async def _apply(
        self, conn: psycopg.AsyncConnection[Row], events: Sequence[dict[str, Any]]
    ) -> list[Outcome]:
        # held shared until commit: a cleanup waits for this batch, and this batch sees every
        # cleanup recorded before it (nothing a cleanup removed is written again)
        cutoffs = await load_cutoffs(conn)
        keys: dict[str, set[str]] = {}
        for ev in events:
            ent = entity_of(ev)
            if ent is not None:
                keys.setdefault(ent[0], set()).add(ent[2])
        state: dict[str, dict[str, Row]] = {}
        for table in sorted(keys):  # a fixed order: no deadlock between two workers
            cur = await conn.execute(
                f"SELECT * FROM {table} WHERE {_TABLES[table]} = ANY(%s) "  # noqa: S608
                f"ORDER BY {_TABLES[table]} FOR UPDATE",
                (sorted(keys[table]),),
            )
            state[table] = {str(r[_TABLES[table]]): r for r in await cur.fetchall()}
        dirty: dict[str, dict[str, Row]] = {}
        out = _Batch(
            audit=[], items=[], returned=[], movements=[], categories={}, created_products=[]
        )
        outcomes: list[Outcome] = [APPLIED] * len(events)
        for i, ev in enumerate(events):
            ent = entity_of(ev)
            if ent is None:
                continue
            table, _, key = ent
            rows = state[table]
            current = rows.get(key)
            if ev["type"] == "product.stock_changed":
                self._stock_changed(ev, current, out)
                if current is not None and current is rows.get(key):
                    dirty.setdefault(table, {})[key] = current
                continue
            if current is not None and version_of(ev) <= (
                current["version_at"],
                current["version_id"],
            ):
                continue  # applied already, or older than what the row holds
            if current is None and table == "sessions" and _cleaned(ev, cutoffs):
                continue  # a session a cleanup removed: it stays removed
            try:
                new = _APPLY[ev["type"]](ev, current, out)
            except _Illegal as exc:
                outcomes[i] = refused(str(exc), "IllegalTransition")
                continue
            at, vid = version_of(ev)
            new["version_at"], new["version_id"] = at, vid
            new["updated_at"] = at
            old_status = current.get("status") if current else None
            if "status" in new and new["status"] != old_status:
                out.audit.append(
                    {
                        "event_id": vid,
                        "entity_type": table.rstrip("s"),
                        "entity_id": key,
                        "from_status": old_status,
                        "to_status": new["status"],
                        "event_type": ev["type"],
                        "occurred_at": at,
                    }
                )
            rows[key] = new
            dirty.setdefault(table, {})[key] = new
        if cutoffs.audit_log is not None:  # older rows were removed by a cleanup
            out.audit = [a for a in out.audit if a["occurred_at"] >= cutoffs.audit_log]
        # one round trip for every write of the batch
        async with conn.pipeline():
            await self._write(conn, dirty, out)
        return outcomes

    async def rebuild_chunk(
        self, events: Sequence[dict[str, Any]], positions: Positions
    ) -> list[Outcome]:
        """A rebuild's chunk (`schema` set): applied as a live batch is, its refusals recorded
        (nothing dead-lettered), its positions checkpointed, in one transaction. An event the
        database refuses (a check, a value out of range) is split out, as the live guard
        splits a failing batch, and recorded as refused with the error's class."""
        if self._schema is None:
            raise RuntimeError("rebuild_chunk writes a rebuild's schema only")
        conn = await self._connection()
        async with conn.transaction():
            outcomes = await self._apply_split(conn, events)
            await _record_refusals(conn, events, outcomes)
            await record_positions(conn, positions)
        return outcomes

    async def _apply_split(
        self, conn: psycopg.AsyncConnection[Row], events: Sequence[dict[str, Any]]
    ) -> list[Outcome]:
        try:
            async with conn.transaction():  # a savepoint
                return await self._apply(conn, events)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            if len(events) == 1:
                return [refused(f"{type(exc).__name__}: {exc}"[:2000], type(exc).__name__)]
            mid = len(events) // 2
            return [
                *await self._apply_split(conn, events[:mid]),
                *await self._apply_split(conn, events[mid:]),
            ]

    @staticmethod
    def _stock_changed(ev: dict[str, Any], current: Row | None, out: _Batch) -> None:
        d = ev["data"]
        at, vid = version_of(ev)
        seq = int(d.get("sequence") or 0)
        out.movements.append(
            {
                "sequence": seq,
                "event_id": vid,
                "product_id": d["product_id"],
                "shop_id": d["shop_id"],
                "delta": d["delta"],
                "stock_after": d["stock_after"],
                "reason": d["reason"],
                "order_id": d.get("order_id"),
                "cause_event_id": d["cause_event_id"],
                "cause_type": d["cause_type"],
                "occurred_at": at,
            }
        )
        if current is not None and seq > current["stock_seq"]:
            current["stock"] = d["stock_after"]
            current["stock_seq"] = seq

    async def _write(
        self, conn: psycopg.AsyncConnection[Row], dirty: dict[str, dict[str, Row]], out: _Batch
    ) -> None:
        for table in sorted(dirty):
            await conn.execute(self._upserts[table], (_json(list(dirty[table].values())),))
        if out.items:
            await conn.execute(
                "INSERT INTO order_items (order_id, line, product_id, name, quantity, "
                "unit_price_paise) SELECT order_id, line, product_id, name, quantity, "
                "unit_price_paise FROM jsonb_populate_recordset(NULL::order_items, %s::jsonb) "
                "ON CONFLICT DO NOTHING",
                (_json(out.items),),
            )
        if out.returned:
            await conn.execute(
                "UPDATE order_items i SET returned_quantity = LEAST(i.quantity, r.quantity) "
                "FROM jsonb_to_recordset(%s::jsonb) AS r(order_id text, product_id text, "
                "quantity integer) WHERE i.order_id = r.order_id AND i.product_id = r.product_id",
                (_json(out.returned),),
            )
        if out.movements:
            await conn.execute(
                "INSERT INTO inventory_movements SELECT * FROM "
                "jsonb_populate_recordset(NULL::inventory_movements, %s::jsonb) "
                "ON CONFLICT DO NOTHING",
                (_json(out.movements),),
            )
        if out.created_products:
            # movements that arrived before their product's row (its creation was dead-lettered
            # and redriven later): the row takes the latest stock they recorded
            await conn.execute(
                "UPDATE products p SET stock = m.stock_after, stock_seq = m.sequence "
                "FROM (SELECT DISTINCT ON (product_id) product_id, stock_after, sequence "
                "FROM inventory_movements WHERE product_id = ANY(%s) "
                "ORDER BY product_id, sequence DESC) m "
                "WHERE p.product_id = m.product_id AND m.sequence > p.stock_seq",
                (out.created_products,),
            )
        if out.audit:
            await conn.execute(
                "INSERT INTO audit_log (event_id, entity_type, entity_id, from_status, to_status, "
                "event_type, occurred_at) SELECT event_id, entity_type, entity_id, from_status, "
                "to_status, event_type, occurred_at FROM "
                "jsonb_populate_recordset(NULL::audit_log, %s::jsonb) ON CONFLICT DO NOTHING",
                (_json(out.audit),),
            )
        if out.categories:
            await conn.execute(
                # the earliest event that named it, whatever order the topics were read in (a
                # rebuild from the topics gives the same row)
                "INSERT INTO categories AS t SELECT * FROM jsonb_populate_recordset("
                "NULL::categories, %s::jsonb) ON CONFLICT (category) DO UPDATE SET "
                "first_seen_at = EXCLUDED.first_seen_at "
                "WHERE EXCLUDED.first_seen_at < t.first_seen_at",
                (_json([{"category": c, "first_seen_at": t} for c, t in out.categories.items()]),),
            )


async def _record_refusals(
    conn: psycopg.AsyncConnection[Any],
    events: Sequence[dict[str, Any]],
    outcomes: Sequence[Outcome],
) -> None:
    refused_ = [
        {
            "event_id": str(ev["id"]),
            "event_type": ev["type"],
            "error_class": o.error_class or "IllegalTransition",
            "reason": o.reason[:2000],
        }
        for ev, o in zip(events, outcomes, strict=True)
        if o.status == "refused"
    ]
    if refused_:
        await conn.execute(
            "INSERT INTO projection_refusals (event_id, event_type, error_class, reason) "
            "SELECT event_id, event_type, error_class, reason FROM "
            "jsonb_populate_recordset(NULL::projection_refusals, %s::jsonb) "
            "ON CONFLICT (event_id) DO NOTHING",
            (_json(refused_),),
        )


async def record_positions(conn: psycopg.AsyncConnection[Any], positions: Positions) -> None:
    """Move `projection_positions` forward to `positions` (never back)."""
    await conn.execute(
        "INSERT INTO projection_positions AS t (topic, partition, next_offset) "
        "SELECT topic, partition, next_offset FROM jsonb_to_recordset(%s::jsonb) "
        "AS r(topic text, partition integer, next_offset bigint) "
        "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = "
        "GREATEST(t.next_offset, EXCLUDED.next_offset)",
        (
            _json(
                [{"topic": t, "partition": p, "next_offset": o} for (t, p), o in positions.items()]
            ),
        ),
    )


def _cleaned(ev: dict[str, Any], cutoffs: Cutoffs) -> bool:
    """An event about a session that is absent because a cleanup removed it (on a replay, or a
    sign-out arriving after the cleanup): a sign-in whose session expired before the latest
    cutoff is not written again; a sign-out of an absent session, once sessions have been
    cleaned, ends nothing (the event carries no expiry to tell a removed session from one that
    never was: it is skipped rather than dead-lettered)."""
    if cutoffs.sessions is None:
        return False
    if ev["type"] == "user.signed_in":
        return is_removed_session(ev["data"], cutoffs)
    return bool(ev["type"] == "user.signed_out")


# --- how each event changes its row ---------------------------------------------------------
# Each takes (event, current row or None, batch extras) and returns the new row (a copy), or
# raises _Illegal with the reason.


def _require(current: Row | None, what: str, ev: dict[str, Any]) -> Row:
    if current is None:
        raise _Illegal(f"{ev['type']}: unknown {what}")
    return dict(current)


def _lifecycle(table: Any, ev: dict[str, Any], current: Row | None) -> str:
    try:
        return transition(table, ev, current["status"] if current else None)
    except ValueError as exc:
        raise _Illegal(str(exc)) from None


def _user_registered(ev: dict[str, Any], cur: Row | None, out: _Batch) -> Row:
    if cur is not None:
        raise _Illegal(f"user.registered: user {ev['data']['user_id']} exists ({cur['status']})")
    d = ev["data"]
    return {
        "user_id": d["user_id"],
        "name": d["name"],
        "email": d["email"],
        "phone": d.get("phone"),
        "role": d["role"],
        # left out by the client: the documented defaults, so every reader sees whole preferences
        "preferences": d.get("preferences") or record_defaults("user.registered", "preferences"),
        "status": "ACTIVE",
        "deleted_reason": None,
        "created_at": ev["occurred_at"],
    }


def _active_user(ev: dict[str, Any], cur: Row | None) -> Row:
    row = _require(cur, "user", ev)
    if row["status"] == "DELETED":
        raise _Illegal(f"{ev['type']}: user {row['user_id']} is deleted")
    return row


def _user_updated(ev: dict[str, Any], cur: Row | None, out: _Batch) -> Row:
    row = _active_user(ev, cur)
    d = ev["data"]
    row.update(name=d["name"], email=d["email"], phone=d.get("phone"))
    return row


def _user_preferences(ev: dict[str, Any], cur: Row | None, out: _Batch) -> Row:
    row = _active_user(ev, cur)
    row["preferences"] = {k: v for k, v in ev["data"].items() if k != "user_id"}
    return row


def _user_deleted(ev: dict[str, Any], cur: Row | None, out: _Batch) -> Row:
    row = _active_user(ev, cur)
    row.update(status="DELETED", deleted_reason=ev["data"].get("reason"))
    return row


def _signed_in(ev: dict[str, Any], cur: Row | None, out: _Batch) -> Row:
    d = ev["data"]
    if cur is not None:
        raise _Illegal(f"user.signed_in: session {d['session_id']} exists")
    return {
        "session_id": d["session_id"],
        "user_id": d["user_id"],
        "platform": d.get("platform"),
        "device": d.get("device"),
        "started_at": ev["occurred_at"],
        "expires_at": d.get("expires_at"),
        "ended_at": None,
        "end_reason": None,
    }


def _signed_out(ev: dict[str, Any], cur: Row | None, out: _Batch) -> Row:
    row = _require(cur, "session", ev)
    if row["ended_at"] is not None:
        raise _Illegal(f"user.signed_out: session {row['session_id']} has ended")
    row.update(ended_at=ev["occurred_at"], end_reason=ev["data"].get("reason"))
    return row


def _shop_fields(d: dict[str, Any]) -> Row:
    return {
        "shop_id": d["shop_id"],
        "owner_user_id": d["owner_user_id"],
        "name": d["name"],
        "description": d.get("description"),
        "category": d.get("category"),
        "phone": d.get("phone"),
        "address": d["address"],
        "lat": d.get("lat"),
        "lng": d.get("lng"),
        "delivery_radius_m": d.get("delivery_radius_m"),
        "accepting_orders": d.get("accepting_orders", True),
    }


def _shop_created(ev: dict[str, Any], cur: Row | None, out: _Batch) -> Row:
    if cur is not None:
        raise _Illegal(f"shop.created: shop {ev['data']['shop_id']} exists")
    return {**_shop_fields(ev["data"]), "created_at": ev["occurred_at"]}


def _shop_updated(ev: dict[str, Any], cur: Row | None, out: _Batch) -> Row:
    row = _require(cur, "shop", ev)
    row.update(_shop_fields(ev["data"]))
    return row


def _shopkeeper(ev: dict[str, Any], cur: Row | None, out: _Batch) -> Row:
    status = _lifecycle(SHOPKEEPER_TRANSITIONS, ev, cur)
    d = ev["data"]
    if ev["type"] == "shopkeeper.applied":
        return {
            "shop_id": d["shop_id"],
            "shopkeeper_id": d["shopkeeper_id"],
            "user_id": d["user_id"],
            "business_name": d.get("business_name"),
            "phone": d.get("phone"),
            "email": d.get("email"),
            "gstin": d.get("gstin"),
            "fssai_license": d.get("fssai_license"),
            "documents": d.get("documents", []),
            "status": status,
            "decided_by": None,
            "decision_note": None,
            "applied_at": ev["occurred_at"],
            "decided_at": None,
        }
    row = dict(cur or {})
    row.update(
        status=status,
        decided_by=d.get("approved_by") or d.get("rejected_by"),
        decision_note=" — ".join(str(x) for x in (d.get("reason"), d.get("note")) if x) or None,
        decided_at=ev["occurred_at"],
    )
    return row


def _product_fields(d: dict[str, Any], out: _Batch, at: datetime) -> Row:
    if d.get("category"):
        known = out.categories.get(d["category"])
        out.categories[d["category"]] = at if known is None else min(known, at)
    return {
        "product_id": d["product_id"],
        "shop_id": d["shop_id"],
        "name": d["name"],
        "description": d.get("description"),
        "category": d.get("category"),
        "price_paise": d["price_paise"],
        "mrp_paise": d.get("mrp_paise"),
        "unit": d.get("unit"),
        "image_url": d.get("image_url"),
    }


def _product_created(ev: dict[str, Any], cur: Row | None, out: _Batch) -> Row:
    status = _lifecycle(PRODUCT_TRANSITIONS, ev, cur)
    out.created_products.append(ev["data"]["product_id"])
    return {
        **_product_fields(ev["data"], out, ev["occurred_at"]),
        "status": status,
        "stock": 0,
        "stock_seq": 0,
        "created_at": ev["occurred_at"],
    }


def _product_updated(ev: dict[str, Any], cur: Row | None, out: _Batch) -> Row:
    row = _require(cur, "product", ev)
    row.update(_product_fields(ev["data"], out, ev["occurred_at"]))
    return row


def _product_status(ev: dict[str, Any], cur: Row | None, out: _Batch) -> Row:
    status = _lifecycle(PRODUCT_TRANSITIONS, ev, cur)
    row = dict(cur or {})
    row["status"] = status
    return row


def _order(ev: dict[str, Any], cur: Row | None, out: _Batch) -> Row:
    status = _lifecycle(ORDER_TRANSITIONS, ev, cur)
    d = ev["data"]
    t = ev["type"]
    if t == "order.created":
        for line, item in enumerate(d["items"], start=1):
            out.items.append(
                {
                    "order_id": d["order_id"],
                    "line": line,
                    "product_id": item["product_id"],
                    "name": item.get("name"),
                    "quantity": item["quantity"],
                    "unit_price_paise": item["unit_price_paise"],
                }
            )
        return {
            "order_id": d["order_id"],
            "shop_id": d["shop_id"],
            "user_id": d["user_id"],
            "status": status,
            "total_paise": d["total_paise"],
            "delivery_fee_paise": d.get("delivery_fee_paise"),
            "payment_method": d.get("payment_method"),
            "payment_reference": d.get("payment_reference"),
            "delivery_address": d.get("delivery_address"),
            "note": d.get("note"),
            "status_reason": None,
            "status_reason_code": None,
            "refund_paise": None,
            "created_at": ev["occurred_at"],
        }
    row = dict(cur or {})
    row["status"] = status
    if t in ("order.rejected", "order.cancelled", "order.refunded"):
        row["status_reason_code"] = d["reason"]
    if t == "order.rejected":
        row["status_reason"] = ": ".join(str(x) for x in (d["reason"], d.get("detail")) if x)
    elif t == "order.cancelled":
        row["status_reason"] = d.get("reason")
    elif t == "order.refunded":
        row["status_reason"] = d.get("reason")
        row["refund_paise"] = d["refund_paise"]
        for item in d.get("returned_items", []):
            out.returned.append({"order_id": d["order_id"], **item})
    return row


_APPLY: dict[str, Callable[[dict[str, Any], Row | None, _Batch], Row]] = {
    "user.registered": _user_registered,
    "user.updated": _user_updated,
    "user.preferences_changed": _user_preferences,
    "user.deleted": _user_deleted,
    "user.signed_in": _signed_in,
    "user.signed_out": _signed_out,
    "shop.created": _shop_created,
    "shop.updated": _shop_updated,
    "shopkeeper.applied": _shopkeeper,
    "shopkeeper.approved": _shopkeeper,
    "shopkeeper.rejected": _shopkeeper,
    "product.created": _product_created,
    "product.updated": _product_updated,
    "product.published": _product_status,
    "product.archived": _product_status,
    "product.moved_to_draft": _product_status,
    "order.created": _order,
    "order.accepted": _order,
    "order.rejected": _order,
    "order.cancelled": _order,
    "order.status_changed": _order,
    "order.refunded": _order,
}
