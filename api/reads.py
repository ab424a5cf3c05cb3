"""The read side of the API: read-through cached views, orders, search, who may see what."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import orjson
import psycopg
from prometheus_client import Counter
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.exceptions import RedisError

from api.problems import Problem
from connectors.analytics import read_sales
from connectors.apikeys import ApiKey
from connectors.base import ConnectorError, DependencyDown
from connectors.redis_cache import ViewCache
from connectors.typesense import SearchIndex
from connectors.views import load_views
from core.settings import Settings

__all__ = ["CACHE", "ReadSide", "can_see"]

CACHE = Counter(
    "mohallamart_api_cache_requests_total",
    "Read-through cache lookups by entity and result (hit, miss, error: Redis failed, "
    "skipped: Redis marked down)",
    ["entity", "result"],
)


def can_see(key: ApiKey, *, user: str | None = None, shop: str | None = None) -> bool:
    """May `key` see data that belongs to `user` (and/or `shop`)? admin: everything; `user:U`:
    U's; `shop:S`: S's."""
    p = key.principal
    if p == "admin":
        return True
    if p.startswith("user:"):
        return user is not None and p[5:] == user
    if p.startswith("shop:"):
        return shop is not None and p[5:] == shop
    return False


def _database_unavailable() -> Problem:
    return Problem(
        503,
        "database-unavailable",
        "cannot read right now; retry later",
        headers={"Retry-After": "2"},
    )


def not_found(what: str, entity_id: str) -> Problem:
    return Problem(404, "not-found", f"no {what} {entity_id!r} (or not visible to this API key)")


class ReadSide:
    def __init__(self, settings: Settings, pool: AsyncConnectionPool[Any]) -> None:
        self.settings = settings
        self.pool = pool
        self.cache = ViewCache(
            settings.redis_dsn,
            ttl_s=settings.cache_ttl_s,
            timeout_s=settings.cache_timeout_ms / 1000,
        )
        self.index = SearchIndex(
            settings.typesense_base_url,
            settings.typesense_api_key.get_secret_value(),
            prefix=settings.typesense_collection_prefix,
        )
        self._redis_down_until = 0.0

    async def close(self) -> None:
        await self.cache.close()
        await self.index.close()

    # --- cached views -----------------------------------------------------------------------
    def _redis_usable(self, kind: str) -> bool:
        if time.monotonic() < self._redis_down_until:
            CACHE.labels(kind, "skipped").inc()
            return False
        return True

    def _redis_failed(self, kind: str) -> None:
        CACHE.labels(kind, "error").inc()
        self._redis_down_until = time.monotonic() + self.settings.cache_down_s

    async def view(self, kind: str, entity_id: str) -> bytes | None:
        """The view's JSON, read through the cache; None if there is no such entity, or it is
        deleted (a user) or archived (a product)."""
        timeout = self.settings.cache_timeout_ms / 1000
        if self._redis_usable(kind):
            try:
                cached = await asyncio.wait_for(self.cache.get(kind, entity_id), timeout)
            except (RedisError, OSError, TimeoutError):
                self._redis_failed(kind)
            else:
                if cached is not None:
                    CACHE.labels(kind, "hit").inc()
                    return cached or None  # b"": a tombstone (deleted or archived)
                else:
                    CACHE.labels(kind, "miss").inc()
        try:
            async with self.pool.connection() as conn:
                found = (await load_views(conn, kind, [entity_id])).get(entity_id)
        except Exception as exc:  # psycopg: PostgreSQL unreachable
            raise _database_unavailable() from exc
        if found is None:
            return None
        if self._redis_usable(kind):
            try:  # the fill: a compare-and-set, never over a newer value
                await asyncio.wait_for(self.cache.put([found]), timeout)
            except (DependencyDown, TimeoutError):
                self._redis_failed(kind)
        if found.gone:
            return None
        return found.payload()

    # --- orders (not cached) --------------------------------------------------------------------
    async def order(self, order_id: str) -> dict[str, Any] | None:
        try:
            async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    "SELECT order_id, shop_id, user_id, status, total_paise, delivery_fee_paise, "
                    "payment_method, delivery_address, note, status_reason, status_reason_code, "
                    "refund_paise, "
                    "created_at, updated_at FROM orders WHERE order_id = %s",
                    (order_id,),
                )
                row = await cur.fetchone()
                if row is None:
                    return None
                await cur.execute(
                    "SELECT line, product_id, name, quantity, unit_price_paise, returned_quantity "
                    "FROM order_items WHERE order_id = %s ORDER BY line",
                    (order_id,),
                )
                row["items"] = await cur.fetchall()
                order: dict[str, Any] = row
                return order
        except Exception as exc:  # psycopg: PostgreSQL unreachable
            raise _database_unavailable() from exc

    # --- analytics windows ------------------------------------------------------------------------
    async def sales(
        self, shop_id: str, period: str, start: datetime, end: datetime
    ) -> list[dict[str, Any]]:
        return await self.analytics(read_sales, shop_id, period, start, end)  # type: ignore[no-any-return]

    async def analytics(self, read: Any, *args: Any) -> Any:
        """`read(conn, *args)` of `connectors.analytics` on a pooled connection; PostgreSQL
        unreachable is a 503."""
        try:
            async with self.pool.connection() as conn:
                return await read(conn, *args)
        except (OSError, psycopg.OperationalError, PoolTimeout) as exc:
            raise _database_unavailable() from exc

    # --- search ----------------------------------------------------------------------------------
    async def search(self, alias: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.index.search(alias, params)
        except DependencyDown as exc:
            raise Problem(
                503,
                "search-unavailable",
                "search is unavailable right now; retry later",
                headers={"Retry-After": "2"},
            ) from exc
        except ConnectorError as exc:
            if "HTTP 404" in str(exc):
                raise Problem(
                    503,
                    "search-not-ready",
                    "the search collections are not built yet (the search worker builds them "
                    "at start)",
                    headers={"Retry-After": "5"},
                ) from exc
            if "HTTP 400" in str(exc):
                raise Problem(422, "bad-search", str(exc).split(": ", 2)[-1]) from exc
            raise


def json_bytes(value: Any) -> bytes:
    return orjson.dumps(value, default=str)
