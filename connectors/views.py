"""The read side's views of the projections: what the API answers, the cache holds and search
indexes, each rendered from the PostgreSQL rows with the version it was rendered at.

The cache and search roles are triggered by the events but render from the projections, so the
cache, the index and PostgreSQL agree by construction: before rendering, a role waits until the
projections have applied (or refused) the batch's events (streams.agents._read_side).

A view's version is a tuple of fixed-width strings, compared component by component: a product's
is (entity version, stock version), a shop's (shop version, shopkeeper version), a user's (entity
version). Every component only grows, so of two renderings the newer is greater or equal in each.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from connectors.postgres import entity_of, version_of

__all__ = [
    "KINDS",
    "View",
    "affected",
    "load_views",
    "pending_events",
    "product_search_docs",
    "shop_search_docs",
]

Row = dict[str, Any]
KINDS = ("user", "shop", "product")
_ZERO = "0" * 20


def _ver(at: datetime | None, vid: uuid.UUID | str | None) -> str:
    if at is None:
        return _ZERO
    return f"{int(at.timestamp() * 1_000_000):020d}:{vid}"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


@dataclass(frozen=True)
class View:
    """One entity as the read API shows it."""

    kind: str
    id: str
    version: tuple[str, ...]
    doc: Row
    #: deleted (user) or archived (product): not served from the cache, removed from it
    gone: bool = False
    #: who owns it: the user id of a user, the shop id of a shop or product
    owner: str = ""

    def payload(self) -> bytes:
        return orjson.dumps(self.doc, default=_json_default)


def _user(r: Row) -> View:
    doc = {
        "user_id": r["user_id"],
        "name": r["name"],
        "email": r["email"],
        "phone": r["phone"],
        "role": r["role"],
        "preferences": r["preferences"],
        "status": r["status"],
        "created_at": r["created_at"],
        "updated_at": r["updated_at"],
    }
    return View(
        "user",
        r["user_id"],
        (_ver(r["version_at"], r["version_id"]),),
        doc,
        gone=r["status"] == "DELETED",
        owner=r["user_id"],
    )


def _shop(r: Row) -> View:
    doc = {
        "shop_id": r["shop_id"],
        "owner_user_id": r["owner_user_id"],
        "name": r["name"],
        "description": r["description"],
        "category": r["category"],
        "phone": r["phone"],
        "address": r["address"],
        "lat": r["lat"],
        "lng": r["lng"],
        "delivery_radius_m": r["delivery_radius_m"],
        "accepting_orders": r["accepting_orders"],
        # the shopkeeper's application: NONE, PENDING, APPROVED or REJECTED
        "approval_status": r["approval_status"] or "NONE",
        "created_at": r["created_at"],
        "updated_at": r["updated_at"],
    }
    version = (_ver(r["version_at"], r["version_id"]), _ver(r["k_version_at"], r["k_version_id"]))
    return View("shop", r["shop_id"], version, doc, owner=r["shop_id"])


def _product(r: Row) -> View:
    doc = {
        "product_id": r["product_id"],
        "shop_id": r["shop_id"],
        "name": r["name"],
        "description": r["description"],
        "category": r["category"],
        "price_paise": r["price_paise"],
        "mrp_paise": r["mrp_paise"],
        "unit": r["unit"],
        "image_url": r["image_url"],
        "status": r["status"],
        "stock": r["stock"],
        "in_stock": r["stock"] > 0,
        "stock_sequence": r["stock_seq"],
        "created_at": r["created_at"],
        "updated_at": r["updated_at"],
    }
    version = (_ver(r["version_at"], r["version_id"]), f"{r['stock_seq']:020d}")
    return View(
        "product",
        r["product_id"],
        version,
        doc,
        gone=r["status"] == "ARCHIVED",
        owner=r["shop_id"],
    )


_QUERIES = {
    "user": ("SELECT * FROM users WHERE user_id = ANY(%s)", _user),
    "shop": (
        "SELECT s.*, k.status AS approval_status, k.version_at AS k_version_at, "
        "k.version_id AS k_version_id FROM shops s LEFT JOIN shopkeepers k USING (shop_id) "
        "WHERE s.shop_id = ANY(%s)",
        _shop,
    ),
    "product": ("SELECT * FROM products WHERE product_id = ANY(%s)", _product),
}


async def load_views(
    conn: psycopg.AsyncConnection[Any], kind: str, ids: Iterable[str]
) -> dict[str, View]:
    """The views of `ids` that have a row (absent ids are missing from the answer)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    sql, render = _QUERIES[kind]
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, (wanted,))
        return {v.id: v for v in (render(r) for r in await cur.fetchall())}


# --- which entities a batch touches ----------------------------------------------------------
#: event type prefix -> view kind
_KIND_OF = {"user.": "user", "shop.": "shop", "shopkeeper.": "shop", "product.": "product"}
_SESSION_TYPES = ("user.signed_in", "user.signed_out")


def affected(events: Iterable[dict[str, Any]]) -> dict[str, set[str]]:
    """kind -> ids of the views the events change."""
    out: dict[str, set[str]] = {k: set() for k in KINDS}
    for ev in events:
        t = ev.get("type", "")
        if t in _SESSION_TYPES:
            continue
        for prefix, kind in _KIND_OF.items():
            if t.startswith(prefix):
                key = {"user": "user_id", "shop": "shop_id", "product": "product_id"}[kind]
                value = ev["data"].get(key)
                if value is not None:
                    out[kind].add(str(value))
                break
    return out


# --- waiting for the projections -------------------------------------------------------------
def _watched(ev: dict[str, Any]) -> bool:
    t = ev.get("type", "")
    return t not in _SESSION_TYPES and any(t.startswith(p) for p in _KIND_OF)


async def pending_events(
    conn: psycopg.AsyncConnection[Any], events: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The events the projections have neither applied (the row's version has reached theirs;
    a product.stock_changed: its movement is a row) nor refused."""
    todo: dict[str, dict[str, Any]] = {}
    by_table: dict[tuple[str, str], list[dict[str, Any]]] = {}
    movements: list[str] = []
    for ev in events:
        if not _watched(ev):
            continue
        ent = entity_of(ev)
        if ent is None:
            continue
        eid = str(ev["id"])
        todo[eid] = ev
        if ev["type"] == "product.stock_changed":
            movements.append(eid)
            continue
        table, key_col, key = ent
        at, vid = version_of(ev)
        by_table.setdefault((table, key_col), []).append({"k": key, "at": at, "eid": str(vid)})
    if not todo:
        return []
    done: set[str] = set()
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT event_id::text FROM projection_refusals WHERE event_id = ANY(%s::uuid[])",
            (list(todo),),
        )
        done.update(r[0] for r in await cur.fetchall())
        if movements:
            await cur.execute(
                "SELECT event_id::text FROM inventory_movements WHERE event_id = ANY(%s::uuid[])",
                (movements,),
            )
            done.update(r[0] for r in await cur.fetchall())
        for (table, key_col), wanted in by_table.items():
            await cur.execute(
                "SELECT r.eid::text FROM jsonb_to_recordset(%s::jsonb) "  # noqa: S608
                "AS r(k text, at timestamptz, eid uuid) "
                f"JOIN {table} t ON t.{key_col} = r.k "
                "AND (t.version_at, t.version_id) >= (r.at, r.eid)",
                (orjson.dumps(wanted, default=_json_default).decode(),),
            )
            done.update(r[0] for r in await cur.fetchall())
    return [ev for eid, ev in todo.items() if eid not in done]


# --- search documents --------------------------------------------------------------------------
_PRODUCT_DOCS = (
    "SELECT p.product_id, p.shop_id, p.name, p.description, p.category, p.price_paise, "
    "p.mrp_paise, p.unit, p.image_url, p.status, p.stock, p.updated_at, s.name AS shop_name, "
    "s.lat, s.lng, k.status AS approval_status FROM products p "
    "LEFT JOIN shops s ON s.shop_id = p.shop_id "
    "LEFT JOIN shopkeepers k ON k.shop_id = p.shop_id "
)
_SEARCHABLE_PRODUCT = "p.status = 'PUBLISHED' AND p.stock > 0 AND k.status = 'APPROVED'"
_SHOP_DOCS = (
    "SELECT s.*, k.status AS approval_status FROM shops s "
    "LEFT JOIN shopkeepers k ON k.shop_id = s.shop_id "
)


def _product_doc(r: Row) -> Row | None:
    """The search document of a product, or None when it must not be searchable."""
    if not (r["status"] == "PUBLISHED" and r["stock"] > 0 and r["approval_status"] == "APPROVED"):
        return None
    doc: Row = {
        "id": r["product_id"],
        "product_id": r["product_id"],
        "shop_id": r["shop_id"],
        "shop_name": r["shop_name"] or "",
        "name": r["name"],
        "description": r["description"] or "",
        "category": r["category"] or "uncategorised",
        "price_paise": r["price_paise"],
        "unit": r["unit"] or "",
        "image_url": r["image_url"] or "",
        "status": r["status"],
        "stock": r["stock"],
        "in_stock": r["stock"] > 0,
        "updated_at": int(r["updated_at"].timestamp()),
    }
    if r["mrp_paise"] is not None:
        doc["mrp_paise"] = r["mrp_paise"]
    if r["lat"] is not None and r["lng"] is not None:
        doc["location"] = [r["lat"], r["lng"]]
    return doc


def _shop_doc(r: Row) -> Row | None:
    if r["approval_status"] != "APPROVED":
        return None
    address = r["address"] or {}
    doc: Row = {
        "id": r["shop_id"],
        "shop_id": r["shop_id"],
        "name": r["name"],
        "description": r["description"] or "",
        "category": r["category"] or "uncategorised",
        "locality": str(address.get("locality") or ""),
        "city": str(address.get("city") or ""),
        "accepting_orders": bool(r["accepting_orders"]),
        "approval_status": r["approval_status"],
        "updated_at": int(r["updated_at"].timestamp()),
    }
    if r["delivery_radius_m"] is not None:
        doc["delivery_radius_m"] = r["delivery_radius_m"]
    if r["lat"] is not None and r["lng"] is not None:
        doc["location"] = [r["lat"], r["lng"]]
    return doc


async def product_search_docs(
    conn: psycopg.AsyncConnection[Any], product_ids: Iterable[str], shop_ids: Iterable[str]
) -> dict[str, Row | None]:
    """product id -> its document (None: not searchable) for the products named and every product
    of the shops named; a product without a row maps to None."""
    pids, sids = sorted(set(product_ids)), sorted(set(shop_ids))
    out: dict[str, Row | None] = dict.fromkeys(pids)
    if not pids and not sids:
        return out
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            _PRODUCT_DOCS + "WHERE p.product_id = ANY(%s) OR p.shop_id = ANY(%s)", (pids, sids)
        )
        for r in await cur.fetchall():
            out[r["product_id"]] = _product_doc(r)
    return out


async def shop_search_docs(
    conn: psycopg.AsyncConnection[Any], shop_ids: Iterable[str]
) -> dict[str, Row | None]:
    sids = sorted(set(shop_ids))
    out: dict[str, Row | None] = dict.fromkeys(sids)
    if not sids:
        return out
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_SHOP_DOCS + "WHERE s.shop_id = ANY(%s)", (sids,))
        for r in await cur.fetchall():
            out[r["shop_id"]] = _shop_doc(r)
    return out


async def searchable_chunk(
    conn: psycopg.AsyncConnection[Any], alias: str, after: str, limit: int
) -> list[Row]:
    """The next `limit` searchable documents of `alias` (products or shops) after id `after`."""
    async with conn.cursor(row_factory=dict_row) as cur:
        if alias == "products":
            await cur.execute(
                _PRODUCT_DOCS + f"WHERE {_SEARCHABLE_PRODUCT} AND p.product_id > %s "
                "ORDER BY p.product_id LIMIT %s",
                (after, limit),
            )
            docs = [_product_doc(r) for r in await cur.fetchall()]
        else:
            await cur.execute(
                _SHOP_DOCS + "WHERE k.status = 'APPROVED' AND s.shop_id > %s "
                "ORDER BY s.shop_id LIMIT %s",
                (after, limit),
            )
            docs = [_shop_doc(r) for r in await cur.fetchall()]
    return [d for d in docs if d is not None]
