"""search: the search role keeps the Typesense `products` and `shops` collections in step.

Each batch waits for the projections to apply its events, renders the documents it touches
from PostgreSQL (a shop's or shopkeeper's event re-renders the shop and all its products) and,
holding the search lock shared, upserts the searchable ones and deletes the others in the live
collection and in one being built by a reindex. Only published, in-stock products of approved
shops, and approved shops, are searchable. `search.reindex_requested` rebuilds a collection
(alias swap), or re-renders one shop's or some documents.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from prometheus_client import Counter

from connectors.base import DependencyDown
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
from streams.agents._read_side import PgReader, ProjectionsProgress, install_agents, wait_projected
from streams.reliability import Record, Rejection

if TYPE_CHECKING:
    from streams.runtime import Runtime

__all__ = ["install"]

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


def install(rt: Runtime) -> None:
    s = rt.settings
    index = SearchIndex(
        s.typesense_base_url,
        s.typesense_api_key.get_secret_value(),
        prefix=s.typesense_collection_prefix,
    )
    progress = ProjectionsProgress(s)

    async def write(records: list[Record], db: PgReader) -> list[Rejection]:
        events = [r.event for r in records]
        async with db.connection() as conn:
            await wait_projected(conn, records, progress)
            touched = affected(events)
            try:
                await write_docs(conn, index, touched["product"], touched["shop"])
            except CollectionMissing as exc:
                # Typesense lost a live collection: rebuild it from PostgreSQL, then carry on
                log.warning("%s; rebuilding the search collections", exc)
                await ensure_collections(conn, index, progress=log.info)
                await write_docs(conn, index, touched["product"], touched["shop"])
            for ev in events:
                if ev["type"] == "search.reindex_requested":
                    await _reindex_requested(conn, index, ev)
        return []

    async def _reindex_requested(
        conn: psycopg.AsyncConnection[Any], index: SearchIndex, ev: dict[str, Any]
    ) -> None:
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

    install_agents(rt, "search", ("product", "shop", "shopkeeper", "search"), write)

    @rt.app.task  # type: ignore[untyped-decorator]
    async def _collections() -> None:
        """Create the collections at start (building them from PostgreSQL if missing)."""
        db = PgReader(s.postgres_dsn)
        while True:
            try:
                async with db.connection() as conn:
                    built = await ensure_collections(conn, index, progress=log.info)
                if built:
                    log.warning("search collections built at start: %s", ", ".join(built))
                return
            except Exception as exc:  # noqa: BLE001 - retried until Typesense and PG answer
                log.warning(
                    "creating search collections failed (%s: %s); retrying",
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(2)
