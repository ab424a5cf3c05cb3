"""cache: the cache role keeps the Redis views of users, shops and products fresh.

Each batch waits for the projections to apply its events, renders the entities it touches from
PostgreSQL and compare-and-sets them in Redis (connectors.redis_cache): a deleted user or an
archived product becomes a tombstone, so a racing read-through fill cannot bring it back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter

from connectors.redis_cache import ViewCache
from connectors.views import View, affected, load_views
from streams.agents._read_side import PgReader, ProjectionsProgress, install_agents, wait_projected
from streams.reliability import Record, Rejection

if TYPE_CHECKING:
    from streams.runtime import Runtime

__all__ = ["install"]

WRITES = Counter(
    "mohallamart_cache_writes_total",
    "Views written to Redis by the cache role, by outcome (unchanged: the cache had them)",
    ["kind", "outcome"],
)


def install(rt: Runtime) -> None:
    cache = ViewCache(rt.settings.redis_dsn, ttl_s=rt.settings.cache_ttl_s)
    progress = ProjectionsProgress(rt.settings)

    async def write(records: list[Record], db: PgReader) -> list[Rejection]:
        events = [r.event for r in records]
        async with db.connection() as conn:
            await wait_projected(conn, records, progress)
            views: list[View] = []
            for kind, ids in affected(events).items():
                views.extend((await load_views(conn, kind, ids)).values())
        for view, written in zip(views, await cache.put(views), strict=True):
            WRITES.labels(view.kind, "written" if written else "unchanged").inc()
        return []

    install_agents(rt, "cache", ("user", "shop", "shopkeeper", "product"), write)
