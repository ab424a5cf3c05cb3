"""`Authorization: Bearer <api key>`: who is calling, with which scopes, at what rate."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from api.problems import Problem
from connectors.apikeys import ApiKey, hash_key, lookup_key
from connectors.base import DependencyDown
from connectors.ratelimit import SharedBuckets

__all__ = ["Authenticator", "RateLimiter", "key_problems"]

_log = logging.getLogger("mohallamart.api.auth")


def key_problems(scope: str, *, admin: bool = False) -> dict[int, str]:
    """The answers every route behind a key may give (for its OpenAPI `responses`)."""
    return {
        401: "no key, or an unknown, revoked or expired key",
        403: f"the key lacks the `{scope}` scope" + (", or is not an admin key" if admin else ""),
        503: "the key could not be checked: the database did not answer (Retry-After)",
    }


class Authenticator:
    """Looks keys up by hash, caching answers briefly (a revocation bites within `cache_s`)."""

    def __init__(self, pool: AsyncConnectionPool[Any], cache_s: float) -> None:
        self.pool = pool
        self.cache_s = cache_s
        self._cache: dict[bytes, tuple[ApiKey | None, float]] = {}

    async def authenticate(self, authorization: str | None) -> ApiKey:
        if not authorization or not authorization.startswith("Bearer "):
            raise Problem(
                401,
                "unauthenticated",
                "send `Authorization: Bearer <api key>`",
                headers={"WWW-Authenticate": "Bearer"},
            )
        key = authorization[7:].strip()
        h = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit is not None and hit[1] > now:
            found = hit[0]
        else:
            try:
                found = await self._lookup(key)
            except Exception as exc:  # psycopg: the database is unreachable
                raise Problem(
                    503,
                    "database-unavailable",
                    "cannot check API keys right now; retry later",
                    headers={"Retry-After": "5"},
                ) from exc
            if len(self._cache) > 10_000:
                self._cache.clear()
            # Unknown keys are remembered for a shorter time: a key just created works at once.
            self._cache[h] = (found, now + (self.cache_s if found else min(1.0, self.cache_s)))
        if found is not None and found.expires_at is not None:
            if datetime.now(UTC) >= found.expires_at:
                found = None  # a rotated key past its overlap (cached before its end)
        if found is None:
            raise Problem(
                401,
                "invalid-api-key",
                "the API key is unknown or revoked",
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return found

    async def _lookup(self, key: str) -> ApiKey | None:
        """One retry: a pooled connection can fail once after PostgreSQL restarted."""
        for attempt in (1, 2):
            try:
                async with self.pool.connection() as conn:
                    return await lookup_key(conn, key)
            except Exception as exc:
                # the type and the server's first line only: never the key or the DSN
                first = str(exc).splitlines()[0][:200] if str(exc) else ""
                _log.warning("API-key lookup failed (%s: %s)", type(exc).__name__, first)
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2)
        return None

    @staticmethod
    def require(key: ApiKey, scope: str) -> None:
        if scope not in key.scopes:
            raise Problem(
                403,
                "missing-scope",
                f"this API key lacks the `{scope}` scope (it has: {', '.join(key.scopes)})",
            )


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


#: a lease of shared tokens: about this many seconds of a key's rate, usable this long
LEASE_S = 0.05


class RateLimiter:
    """A token bucket per key, in events per second, with a burst of `burst_s` seconds.

    With `shared` (Redis), the bucket is one for every API process (`mohallamart api --workers
    N`, several hosts): N processes admit what one would. While Redis does not answer, each
    process falls back to a bucket of its own (so a key may get up to N times its rate then),
    rather than refuse every client: logged once a minute. Each process takes tokens a little
    ahead (a lease of `LEASE_S` of the rate, used within `LEASE_S`), so a busy key costs one
    round trip to Redis per lease, not per request; leased tokens not used in time are lost
    (a key gets at most its rate, never more)."""

    def __init__(
        self, default_rate: int, burst_s: float, shared: SharedBuckets | None = None
    ) -> None:
        self.default_rate = default_rate
        self.burst_s = burst_s
        self.shared = shared
        self._buckets: dict[str, _Bucket] = {}
        #: per key, tokens this process took from the shared bucket ahead of need (`updated`:
        #: until when they may be used)
        self._leases: dict[str, _Bucket] = {}
        #: per key, the round trip to the shared bucket in flight (the others wait for it)
        self._fetching: dict[str, asyncio.Future[None]] = {}
        self._down_logged = 0.0

    async def take(self, key: ApiKey, n: int) -> None:
        rate = float(key.rate_per_s or self.default_rate)
        capacity = max(rate * self.burst_s, float(n))
        if self.shared is not None:
            for _ in range(3):
                now = time.monotonic()
                lease = self._leases.get(key.key_id)
                if lease is not None and lease.updated > now and lease.tokens >= n:
                    lease.tokens -= n  # from what this process took from the shared bucket
                    return
                pending = self._fetching.get(key.key_id)
                if pending is None:
                    break
                # one round trip per key at a time: the others wait for its lease
                await asyncio.shield(pending)
            # take a little more than needed (about LEASE_S of the rate, held LEASE_S): one
            # round trip to Redis per lease instead of per request; a key of a small rate
            # takes exactly what it needs
            want = max(n, min(int(rate * LEASE_S), int(capacity)))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._fetching[key.key_id] = done
            try:
                taken, wait_s = await self.shared.take(key.key_id, rate, capacity, n, want)
            except DependencyDown as exc:
                if now - self._down_logged > 60:
                    self._down_logged = now
                    _log.warning("shared rate limits unavailable (%s): per process meanwhile", exc)
            else:
                if taken < n:
                    self._refuse(rate, wait_s)
                if taken > n:
                    now = time.monotonic()
                    lease = self._leases.get(key.key_id)
                    left = lease.tokens if lease is not None and lease.updated > now else 0.0
                    self._leases[key.key_id] = _Bucket(left + taken - n, now + LEASE_S)
                return
            finally:
                if self._fetching.get(key.key_id) is done:
                    del self._fetching[key.key_id]
                done.set_result(None)
        self._take_local(key.key_id, rate, capacity, n)

    def _take_local(self, key_id: str, rate: float, capacity: float, n: int) -> None:
        now = time.monotonic()
        b = self._buckets.get(key_id)
        if b is None:
            b = self._buckets[key_id] = _Bucket(capacity, now)
        b.tokens = min(capacity, b.tokens + (now - b.updated) * rate)
        b.updated = now
        if b.tokens < n:
            self._refuse(rate, (n - b.tokens) / rate)
        b.tokens -= n

    @staticmethod
    def _refuse(rate: float, wait_s: float) -> None:
        wait = max(1, math.ceil(wait_s))
        raise Problem(
            429,
            "rate-limited",
            f"this API key may send {int(rate)} events per second; retry after {wait} s",
            headers={"Retry-After": str(wait)},
        )
