"""Per-key rate limits shared by every API process (issue 17): one token bucket per key in
Redis, taken from by a script (atomic, on Redis's clock), so N processes admit what one would."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from connectors.base import DependencyDown

__all__ = ["SharedBuckets"]

#: KEYS[1] the bucket; ARGV rate (tokens/s), capacity, n (needed), want (n, or more to hold as a
#: lease). Returns {taken, "0"}: min(want, what is there) when at least n is there; else
#: {0, seconds until n would be}.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local n, want = tonumber(ARGV[3]), tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or cap
local at = tonumber(b[2]) or now
tokens = math.min(cap, tokens + math.max(0, now - at) * rate)
local taken = 0
if tokens >= n then
  taken = math.max(n, math.min(want, math.floor(tokens)))
  tokens = tokens - taken
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate * 1000) + 1000)
if taken > 0 then
  return {taken, '0'}
end
return {0, tostring((n - tokens) / rate)}
"""


class SharedBuckets:
    """The buckets in Redis (`mm:rate:<key id>`). `take` answers 0.0 when the tokens were
    taken, else how many seconds until they would be; Redis unreachable is `DependencyDown`
    (the caller decides what to admit meanwhile)."""

    def __init__(self, url: str, *, timeout_s: float = 0.2) -> None:
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._sha: str | None = None

    async def close(self) -> None:
        await self.client.aclose()

    async def take(
        self, key_id: str, rate: float, capacity: float, n: int, want: int | None = None
    ) -> tuple[int, float]:
        """Take `n` tokens, or up to `want` (a lease, held by the caller) when there are:
        (taken, 0.0), or (0, seconds until `n` would be there)."""
        args = (rate, capacity, n, max(n, want or n))
        try:
            if self._sha is None:
                self._sha = str(await self.client.script_load(_TAKE))
            try:
                got: Any = await self.client.evalsha(self._sha, 1, f"mm:rate:{key_id}", *args)
            except RedisError as exc:
                if "NOSCRIPT" not in str(exc):
                    raise
                self._sha = None  # Redis restarted without its scripts: load it again
                got = await self.client.eval(_TAKE, 1, f"mm:rate:{key_id}", *args)
        except (RedisError, OSError) as exc:
            raise DependencyDown(f"Redis: {type(exc).__name__}") from exc
        taken = int(got[0])
        return (taken, 0.0) if taken > 0 else (0, float(got[1]))
