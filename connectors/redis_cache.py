"""The Redis cache of the read views (users, shops, products).

An entry is a hash: `p` the view's JSON (empty for a deleted user or an archived product: a
tombstone), `v1`..`vn` its version's components. Every write is one Lua script, so it is an atomic
compare-and-set: it applies only when the new version is at least the stored one in every
component and greater in one; an equal version only renews the TTL. A read-through fill that read
PostgreSQL before an update therefore never overwrites the newer value the cache role wrote
meanwhile, and an older event never overwrites a newer one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import NoScriptError, RedisError

from connectors.base import APPLIED, DependencyDown, Outcome, Settled, settle_each
from connectors.db import PgReader
from connectors.views import View, affected, load_views

__all__ = ["VIEW_PATTERN", "RedisViews", "ViewCache", "cache_key"]

_CAS = """
local n = #ARGV - 2
local newer = false
for i = 1, n do
  local old = redis.call('HGET', KEYS[1], 'v' .. i)
  local new = ARGV[i + 2]
  if old then
    if new < old then return 0 end
    if new > old then newer = true end
  else
    newer = true
  end
end
if not newer then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return 0
end
local fields = {'p', ARGV[2]}
for i = 1, n do
  fields[#fields + 1] = 'v' .. i
  fields[#fields + 1] = ARGV[i + 2]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""


#: the rebuild's variant: an equal version whose payload differs is rewritten too (after a fix
#: to a rendering, the rows keep their versions; the live role never needs this)
_CAS_REPLACE_EQUAL = _CAS.replace(
    """if not newer then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return 0
end""",
    """if not newer and redis.call('HGET', KEYS[1], 'p') == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return 0
end""",
)
assert _CAS_REPLACE_EQUAL != _CAS


def cache_key(kind: str, entity_id: str) -> str:
    return f"mm:view:{kind}:{entity_id}"


#: every cached view's key
VIEW_PATTERN = "mm:view:*"


class ViewCache:
    """Versioned writes and plain reads of the views in Redis."""

    def __init__(self, url: str, *, ttl_s: float, timeout_s: float = 2.0) -> None:
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
        )
        self._sha: str | None = None
        self._sha_replace: str | None = None

    async def close(self) -> None:
        await self.client.aclose()

    async def _script(self, replace_equal: bool = False) -> str:
        if replace_equal:
            if self._sha_replace is None:
                self._sha_replace = str(await self.client.script_load(_CAS_REPLACE_EQUAL))
            return self._sha_replace
        if self._sha is None:
            self._sha = str(await self.client.script_load(_CAS))
        return self._sha

    def _args(self, view: View) -> list[Any]:
        payload = b"" if view.gone else view.payload()
        return [self.ttl_ms, payload, *view.version]

    async def put(self, views: Sequence[View], *, replace_equal: bool = False) -> list[bool]:
        """Compare-and-set each view; True where it was written (newer than the cache; with
        `replace_equal`, also an equal version whose payload differs)."""
        if not views:
            return []
        try:
            sha = await self._script(replace_equal)
            try:
                return await self._put(sha, views)
            except NoScriptError:  # Redis restarted and lost its script cache
                self._sha = self._sha_replace = None
                return await self._put(await self._script(replace_equal), views)
        except (RedisError, OSError) as exc:
            raise DependencyDown(f"Redis: {type(exc).__name__}: {exc}") from exc

    async def _put(self, sha: str, views: Sequence[View]) -> list[bool]:
        async with self.client.pipeline(transaction=False) as pipe:
            for v in views:
                pipe.evalsha(sha, 1, cache_key(v.kind, v.id), *self._args(v))
            results = await pipe.execute()
        return [bool(r) for r in results]

    async def drop_all(self, batch: int = 1000) -> int:
        """Delete every cached view (`rebuild redis --drop`): how many were deleted."""
        dropped = 0
        try:
            keys: list[Any] = []
            async for key in self.client.scan_iter(match=VIEW_PATTERN, count=batch):
                keys.append(key)
                if len(keys) >= batch:
                    dropped += int(await self.client.unlink(*keys))
                    keys.clear()
            if keys:
                dropped += int(await self.client.unlink(*keys))
        except (RedisError, OSError) as exc:
            raise DependencyDown(f"Redis: {type(exc).__name__}: {exc}") from exc
        return dropped

    async def get(self, kind: str, entity_id: str) -> bytes | None:
        """The cached JSON of a view, b"" for a tombstone, None on a miss. Raises RedisError."""
        value = await self.client.hget(cache_key(kind, entity_id), "p")
        if value is None:
            return None
        return value if isinstance(value, bytes) else value.encode()


WRITES = Counter(
    "mohallamart_cache_writes_total",
    "Views written to Redis by the cache role, by outcome (unchanged: the cache had them)",
    ["kind", "outcome"],
)


class RedisViews:
    """The cache role's sink: the views a batch of events touches (users, shops, products),
    rendered from PostgreSQL and compare-and-set in Redis (a deleted user or an archived product
    becomes a tombstone, so a racing read-through fill cannot bring it back)."""

    def __init__(self, reader: PgReader, cache: ViewCache) -> None:
        self.reader, self.cache = reader, cache

    async def write_batch(
        self, items: Sequence[dict[str, Any]], settled: Settled | None = None
    ) -> list[Outcome]:
        views: list[View] = []
        async with self.reader.connection() as conn:
            for kind, ids in affected(items).items():
                views.extend((await load_views(conn, kind, ids)).values())
        for view, written in zip(views, await self.cache.put(views), strict=True):
            WRITES.labels(view.kind, "written" if written else "unchanged").inc()
        return await settle_each([APPLIED] * len(items), settled)
