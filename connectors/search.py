"""The search role's sink: keeps the Typesense `products` and `shops` collections in step.

A batch renders the documents its events touch from PostgreSQL (a shop's or shopkeeper's event
re-renders the shop and all its products) and, holding the search lock shared, upserts the
searchable ones and deletes the others, in one bulk import per collection: in the live
collection and in one being built by a reindex. Only published, in-stock products of approved
shops, and approved shops, are searchable. `search.reindex_requested` rebuilds a collection
(alias swap), or re-renders one shop's or some documents. A live collection Typesense lost is
rebuilt from PostgreSQL, then the batch goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from prometheus_client import Counter

from connectors.base import APPLIED, DependencyDown, Outcome, Settled, settle_each
from connectors.db import PgReader
from connectors.typesense import (
    ALIASES,
    SEARCH_LOCK,
    CollectionMissing,
    SearchIndex,
    collections_for_write,
    ensure_collections,
    reindex,
)
from connectors.views import affected, product_search_docs, shop_search_docs

__all__ = ["DOCS", "SearchDocuments", "write_docs"]

log = logging.getLogger(__name__)

DOCS = Counter(
    "mohallamart_search_documents_total",
    "Search documents written by the search role, by collection and action",
    ["alias", "action"],
)


async def write_docs(
    conn: psycopg.AsyncConnection[Any],
    index: SearchIndex,
    products: set[str],
    shops: set[str],
) -> None:
    """Render and write the documents of `products`, and of `shops` with all their products."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (SEARCH_LOCK,))
        targets = await collections_for_write(conn)
        missing = [a for a in ALIASES if a not in targets]
        if missing:
            raise DependencyDown(f"search collections not created yet: {', '.join(missing)}")
        docs = {
            "products": await product_search_docs(conn, products, shops),
            "shops": await shop_search_docs(conn, shops),
        }
        for alias, rendered in docs.items():
            if not rendered:
                continue
            keep = [d for d in rendered.values() if d is not None]
            drop = [k for k, d in rendered.items() if d is None]
            for i, collection in enumerate(targets[alias]):
                try:
                    await index.upsert(collection, keep)
                    await index.delete(collection, drop)
                except CollectionMissing:
                    if i == 0:
                        raise  # the live one: rebuilt by the caller
                    # one being built whose reindex died without clearing it: nothing to keep
                    # in step
                    log.warning("%s: collection %s being built is gone; skipped", alias, collection)
            DOCS.labels(alias, "upserted").inc(len(keep))
            DOCS.labels(alias, "removed").inc(len(drop))


class SearchDocuments:
    """The sink (see the module's text)."""

    def __init__(self, reader: PgReader, index: SearchIndex) -> None:
        self.reader, self.index = reader, index

    async def write_batch(
        self, items: Sequence[dict[str, Any]], settled: Settled | None = None
    ) -> list[Outcome]:
        index = self.index
        async with self.reader.connection() as conn:
            touched = affected(items)
            try:
                await write_docs(conn, index, touched["product"], touched["shop"])
            except CollectionMissing as exc:
                # Typesense lost a live collection: rebuild it from PostgreSQL, then carry on
                log.warning("%s; rebuilding the search collections", exc)
                await ensure_collections(conn, index, progress=log.info)
                await write_docs(conn, index, touched["product"], touched["shop"])
            for ev in items:
                if ev["type"] == "search.reindex_requested":
                    await self._reindex_requested(conn, ev)
        return await settle_each([APPLIED] * len(items), settled)

    async def _reindex_requested(
        self, conn: psycopg.AsyncConnection[Any], ev: dict[str, Any]
    ) -> None:
        index = self.index
        d = ev["data"]
        alias = d["collection"]
        ids = set(d.get("ids") or [])
        shop = d.get("shop_id")
        if ids or shop:
            products = ids if alias == "products" else set()
            shops = ({shop} if shop else set()) | (ids if alias == "shops" else set())
            if alias == "products" and shop and not ids:
                await write_docs(conn, index, set(), {shop})
            else:
                await write_docs(conn, index, products, shops)
            return
        cur = await conn.execute(
            "SELECT updated_at FROM search_collections WHERE alias = %s AND building IS NULL",
            (alias,),
        )
        row = await cur.fetchone()
        occurred: datetime = ev["occurred_at"]
        if row is not None and row[0] > occurred:
            log.info("%s: rebuilt since %s was requested; skipped", alias, ev["id"])
            return
        result = await reindex(conn, index, alias, progress=log.info)
        log.warning("reindex of %s requested by %s: %s", alias, d.get("requested_by"), result)
