"""cache: the cache role keeps the Redis views of users, shops and products fresh.

Each batch waits for the projections to apply its events, then goes to the `RedisViews` sink
(connectors.redis_cache): the entities it touches rendered from PostgreSQL and compare-and-set in
Redis (a deleted user or an archived product becomes a tombstone, so a racing read-through fill
cannot bring it back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from connectors.db import PgReader
from connectors.redis_cache import RedisViews, ViewCache
from streams.agents._read_side import install_read_sinks

if TYPE_CHECKING:
    from streams.runtime import Runtime

__all__ = ["install"]


def install(rt: Runtime) -> None:
    s = rt.settings
    cache = ViewCache(s.redis_dsn, ttl_s=s.cache_ttl_s)
    install_read_sinks(
        rt,
        "cache",
        ("user", "shop", "shopkeeper", "product"),
        lambda: RedisViews(PgReader(s.postgres_dsn), cache),
    )
