"""search: the search role keeps the Typesense `products` and `shops` collections in step.

Each batch waits for the projections to apply its events, then goes to the `SearchDocuments`
sink (connectors.search): the documents it touches rendered from PostgreSQL, bulk-imported into
the live collection and into one being built by a reindex; `search.reindex_requested` rebuilds
a collection (alias swap), or re-renders one shop's or some documents. At start the role creates
the collections (building them from PostgreSQL if missing).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from connectors.db import PgReader
from connectors.search import SearchDocuments
from connectors.typesense import SearchIndex, ensure_collections
from streams.agents._read_side import install_read_sinks

if TYPE_CHECKING:
    from streams.runtime import Runtime

__all__ = ["install"]

log = logging.getLogger(__name__)


def install(rt: Runtime) -> None:
    s = rt.settings
    index = SearchIndex(
        s.typesense_base_url,
        s.typesense_api_key.get_secret_value(),
        prefix=s.typesense_collection_prefix,
    )
    install_read_sinks(
        rt,
        "search",
        ("product", "shop", "shopkeeper", "search"),
        lambda: SearchDocuments(PgReader(s.postgres_dsn), index),
    )

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
