"""The API's rate limiter over a shared bucket: a busy key takes its tokens in leases (one round
trip per lease, not per request); a key of a small rate takes exactly what it needs; a refusal
is a 429 with Retry-After; Redis down falls back to a bucket per process."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from api.auth import RateLimiter
from api.problems import Problem
from connectors.apikeys import ApiKey
from connectors.base import DependencyDown


class _Shared:
    """A shared bucket that holds `tokens` and counts the round trips."""

    def __init__(self, tokens: float, down: bool = False) -> None:
        self.tokens, self.down, self.calls = tokens, down, 0

    async def take(
        self, key_id: str, rate: float, capacity: float, n: int, want: int | None = None
    ) -> tuple[int, float]:
        self.calls += 1
        await asyncio.sleep(0.001)  # a round trip: other requests run meanwhile
        if self.down:
            raise DependencyDown("Redis: ConnectionError")
        if self.tokens < n:
            return 0, (n - self.tokens) / rate
        taken = max(n, min(want or n, int(self.tokens)))
        self.tokens -= taken
        return taken, 0.0


def _key(rate: int) -> ApiKey:
    return ApiKey("k1", "tests", ("ingest",), "admin", rate, datetime.now(UTC), None)


def test_a_busy_key_costs_one_round_trip_per_lease() -> None:
    shared = _Shared(tokens=10_000)
    limiter = RateLimiter(1000, 2, shared)  # type: ignore[arg-type]

    async def run() -> None:
        for _ in range(50):
            await limiter.take(_key(1000), 1)

    asyncio.run(run())
    assert shared.calls == 1  # 50 ms of 1,000/s: one lease of 50
    assert shared.tokens == 10_000 - 50


def test_a_small_rate_takes_exactly_what_it_needs_then_429() -> None:
    shared = _Shared(tokens=2)
    limiter = RateLimiter(1000, 2, shared)  # type: ignore[arg-type]

    async def run() -> None:
        await limiter.take(_key(1), 1)
        await limiter.take(_key(1), 1)
        with pytest.raises(Problem) as refused:
            await limiter.take(_key(1), 1)
        assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "1"

    asyncio.run(run())
    assert shared.calls == 3 and shared.tokens == 0


def test_redis_down_falls_back_to_a_bucket_per_process() -> None:
    shared = _Shared(tokens=0, down=True)
    limiter = RateLimiter(1000, 2, shared)  # type: ignore[arg-type]

    async def run() -> None:
        await limiter.take(_key(1), 2)  # the local bucket: a burst of 2 s at 1/s
        with pytest.raises(Problem):
            await limiter.take(_key(1), 1)

    asyncio.run(run())


def test_concurrent_requests_of_a_key_wait_for_one_lease_not_drain_the_bucket() -> None:
    # 64 requests at once (a client's connections at saturation): one round trip, the others
    # served from its lease; before, each took a lease of its own and the bucket ran dry (429s)
    shared = _Shared(tokens=500)
    limiter = RateLimiter(1000, 2, shared)  # type: ignore[arg-type]

    async def run() -> None:
        await asyncio.gather(*(limiter.take(_key(1000), 1) for _ in range(64)))

    asyncio.run(run())
    assert shared.calls == 2  # a lease of 50, then one more for the 14 left
    assert shared.tokens == 500 - 100
