"""Typesense: the `products` and `shops` collections behind aliases, written in bulk.

Searchers query the alias (`products`, `shops`); it points at a concrete collection
(`products_<ms>`). A full reindex builds a new collection from PostgreSQL and then swaps the
alias, so search never sees an empty or half-built index.

The search role and a reindex never write a stale document over a newer one: both render
documents from PostgreSQL and write them while holding the search lock (a PostgreSQL advisory
lock, shared by the role's batches, exclusive for a reindex's chunks and for the alias swap). The
collections behind each alias, and the one being built, are in the `search_collections` table;
the role writes to both while a reindex runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import orjson
import psycopg

from connectors.base import ConnectorError, DependencyDown
from connectors.views import searchable_chunk

__all__ = [
    "ALIASES",
    "CollectionMissing",
    "SEARCH_LOCK",
    "SearchIndex",
    "collections_for_write",
    "ensure_collections",
    "reindex",
]

#: the advisory lock id of the search lock ("mmsr")
SEARCH_LOCK = 0x6D6D7372

_PRODUCT_FIELDS: list[dict[str, Any]] = [
    {"name": "product_id", "type": "string"},
    {"name": "shop_id", "type": "string", "facet": True},
    {"name": "shop_name", "type": "string", "facet": True},
    {"name": "name", "type": "string"},
    {"name": "description", "type": "string"},
    {"name": "category", "type": "string", "facet": True},
    {"name": "price_paise", "type": "int64", "facet": True},
    {"name": "mrp_paise", "type": "int64", "optional": True},
    {"name": "unit", "type": "string", "index": False, "optional": True},
    {"name": "image_url", "type": "string", "index": False, "optional": True},
    {"name": "status", "type": "string", "facet": True},
    {"name": "stock", "type": "int32"},
    {"name": "in_stock", "type": "bool", "facet": True},
    {"name": "location", "type": "geopoint", "optional": True},
    {"name": "updated_at", "type": "int64"},
]
_SHOP_FIELDS: list[dict[str, Any]] = [
    {"name": "shop_id", "type": "string"},
    {"name": "name", "type": "string"},
    {"name": "description", "type": "string"},
    {"name": "category", "type": "string", "facet": True},
    {"name": "locality", "type": "string", "facet": True},
    {"name": "city", "type": "string", "facet": True},
    {"name": "accepting_orders", "type": "bool", "facet": True},
    {"name": "approval_status", "type": "string", "facet": True},
    {"name": "delivery_radius_m", "type": "int32", "optional": True},
    {"name": "location", "type": "geopoint", "optional": True},
    {"name": "updated_at", "type": "int64"},
]
#: alias -> fields of its collections
ALIASES: dict[str, list[dict[str, Any]]] = {"products": _PRODUCT_FIELDS, "shops": _SHOP_FIELDS}


class CollectionMissing(ConnectorError):
    """A collection written to does not exist (dropped by a reindex, or Typesense lost it)."""


class SearchIndex:
    """A small async Typesense client (httpx): only what the pipeline uses."""

    def __init__(
        self, base_url: str, api_key: str, *, prefix: str = "", timeout_s: float = 5.0
    ) -> None:
        #: put before every collection and alias name (TYPESENSE_COLLECTION_PREFIX): the read
        #: benchmark's collections live beside the pipeline's
        self.prefix = prefix
        self.http = httpx.AsyncClient(
            base_url=base_url,
            headers={"X-TYPESENSE-API-KEY": api_key},
            timeout=timeout_s,
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One call; DependencyDown when Typesense cannot answer (refused, timeout, 5xx)."""
        try:
            resp = await self.http.request(method, path, **kw)
        except httpx.TransportError as exc:
            raise DependencyDown(f"Typesense: {type(exc).__name__}: {exc}") from exc
        if resp.status_code >= 500:
            raise DependencyDown(f"Typesense: HTTP {resp.status_code}: {resp.text[:200]}")
        return resp

    async def alias_target(self, alias: str) -> str | None:
        resp = await self.request("GET", f"/aliases/{self.prefix}{alias}")
        if resp.status_code == 404:
            return None
        _check(resp, f"read alias {alias}")
        return str(resp.json()["collection_name"]).removeprefix(self.prefix)

    async def create_collection(self, name: str, fields: list[dict[str, Any]]) -> None:
        resp = await self.request(
            "POST", "/collections", json={"name": self.prefix + name, "fields": fields}
        )
        if resp.status_code != 409:  # 409: it exists already
            _check(resp, f"create collection {name}")

    async def drop_collection(self, name: str) -> None:
        resp = await self.request("DELETE", f"/collections/{self.prefix}{name}")
        if resp.status_code != 404:
            _check(resp, f"drop collection {name}")

    async def point_alias(self, alias: str, collection: str) -> None:
        resp = await self.request(
            "PUT",
            f"/aliases/{self.prefix}{alias}",
            json={"collection_name": self.prefix + collection},
        )
        _check(resp, f"point alias {alias} at {collection}")

    async def upsert(self, collection: str, docs: list[dict[str, Any]]) -> None:
        """Bulk upsert (one JSONL import); every line must succeed."""
        if not docs:
            return
        body = b"\n".join(orjson.dumps(d) for d in docs)
        resp = await self.request(
            "POST",
            f"/collections/{self.prefix}{collection}/documents/import",
            params={"action": "upsert"},
            content=body,
            headers={"Content-Type": "text/plain"},
        )
        if resp.status_code == 404:
            raise CollectionMissing(f"Typesense: collection {collection} does not exist")
        _check(resp, f"import into {collection}")
        lines = [orjson.loads(x) for x in resp.content.splitlines() if x.strip()]
        failed = [line for line in lines if not line.get("success")]
        if failed:
            raise ConnectorError(
                f"Typesense refused {len(failed)} of {len(docs)} documents in {collection}: "
                f"{failed[0].get('error')}"
            )

    async def delete(self, collection: str, ids: Iterable[str]) -> None:
        """Remove documents by id (absent ones are fine), in one call."""
        wanted = sorted(set(ids))
        for i in range(0, len(wanted), 200):
            chunk = wanted[i : i + 200]
            # ids are written by our producers (key patterns), but escape backticks anyway
            terms = ",".join("`" + x.replace("`", "") + "`" for x in chunk)
            resp = await self.request(
                "DELETE",
                f"/collections/{self.prefix}{collection}/documents",
                params={"filter_by": f"id:[{terms}]", "batch_size": 200},
            )
            if resp.status_code == 404 and "ollection" in resp.text:
                raise CollectionMissing(f"Typesense: collection {collection} does not exist")
            if resp.status_code != 404:
                _check(resp, f"delete from {collection}")

    async def search(self, alias: str, params: dict[str, Any]) -> dict[str, Any]:
        resp = await self.request(
            "GET", f"/collections/{self.prefix}{alias}/documents/search", params=params
        )
        _check(resp, f"search {alias}")
        result: dict[str, Any] = resp.json()
        return result


def _check(resp: httpx.Response, what: str) -> None:
    if resp.status_code >= 300:
        raise ConnectorError(f"Typesense: {what}: HTTP {resp.status_code}: {resp.text[:300]}")


async def collections_for_write(conn: psycopg.AsyncConnection[Any]) -> dict[str, list[str]]:
    """alias -> the collections a write must reach (the live one, and one being built). Call
    inside a transaction that holds the search lock."""
    cur = await conn.execute("SELECT alias, live, building FROM search_collections")
    out: dict[str, list[str]] = {}
    for alias, live, building in await cur.fetchall():
        out[alias] = [live] + ([building] if building and building != live else [])
    return out


async def ensure_collections(
    conn: psycopg.AsyncConnection[Any],
    index: SearchIndex,
    *,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Make sure every alias points at a collection, building it from PostgreSQL if not (on a
    new stack, or a Typesense that lost its data). Returns the aliases built."""
    built = []
    for alias in ALIASES:
        cur = await conn.execute("SELECT live FROM search_collections WHERE alias = %s", (alias,))
        row = await cur.fetchone()
        await conn.commit()
        target = await index.alias_target(alias)
        if row is not None and target == row[0]:
            continue
        await reindex(conn, index, alias, progress=progress)
        built.append(alias)
    return built


async def reindex(
    conn: psycopg.AsyncConnection[Any],
    index: SearchIndex,
    alias: str,
    *,
    chunk: int = 2000,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build a new collection for `alias` from PostgreSQL and swap the alias to it; the old
    collection is dropped afterwards. Returns {collection, docs, seconds, docs_per_s}."""
    say = progress or (lambda _line: None)
    fields = ALIASES[alias]
    new = f"{alias}_{time.time_ns() // 1_000_000}"
    await index.create_collection(new, fields)
    started = time.monotonic()
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEARCH_LOCK,))
            await conn.execute(
                "INSERT INTO search_collections (alias, live, building) VALUES (%s, %s, %s) "
                "ON CONFLICT (alias) DO UPDATE SET building = EXCLUDED.building, "
                "updated_at = now()",
                (alias, new, new),
            )
        total, after, last_report = 0, "", 0.0
        while True:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEARCH_LOCK,))
                docs = await searchable_chunk(conn, alias, after, chunk)
                await index.upsert(new, docs)
            if not docs:
                break
            total += len(docs)
            after = str(docs[-1]["id"])
            now = time.monotonic()
            if now - last_report >= 1.0:
                last_report = now
                say(f"{alias}: {total:,} documents in {now - started:.1f} s")
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEARCH_LOCK,))
            old = await index.alias_target(alias)
            await index.point_alias(alias, new)
            await conn.execute(
                "UPDATE search_collections SET live = %s, building = NULL, updated_at = now() "
                "WHERE alias = %s",
                (new, alias),
            )
    except BaseException:
        # never leave a half-built collection behind, nor the role writing to it
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEARCH_LOCK,))
            await conn.execute(
                "UPDATE search_collections SET building = NULL WHERE alias = %s AND building = %s",
                (alias, new),
            )
            await conn.execute(
                "DELETE FROM search_collections WHERE alias = %s AND live = %s", (alias, new)
            )
        try:
            await index.drop_collection(new)
        except Exception:  # noqa: BLE001, S110 - the original error is the one to report
            pass
        raise
    if old and old != new:
        await index.drop_collection(old)
    seconds = time.monotonic() - started
    say(f"{alias}: {total:,} documents in {seconds:.1f} s; alias now -> {new}")
    return {
        "alias": alias,
        "collection": new,
        "docs": total,
        "seconds": round(seconds, 3),
        "docs_per_s": round(total / seconds, 1) if seconds > 0 else None,
    }
