"""Ingest dedup claims in PostgreSQL, shared by every API process.

An event id is claimed before its event is produced and marked done with where it landed; a
failed produce releases the claim, so a retry is never mistaken for a duplicate. A claim still
pending long after any request could have finished (its API process died mid-request) may be
taken over by a retry with the same body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from psycopg_pool import AsyncConnectionPool

__all__ = ["ClaimOutcome", "ClaimStore"]


@dataclass(frozen=True, slots=True)
class ClaimOutcome:
    event_id: str
    claimed: bool  # True: ours to produce
    same_body: bool
    done: bool  # already delivered: topic/partition/offset are set
    topic: str | None
    partition: int | None
    offset: int | None


# Rows travel as one JSON document: psycopg adapts a 1,000-element Python list element by
# element, which cost more CPU than everything else in a batch's database work.
_CLAIM = """
WITH input AS (
    SELECT (r->>0)::uuid AS event_id, decode(r->>1, 'hex') AS body_hash, r->>2 AS event_type
    FROM jsonb_array_elements(%(rows)s::jsonb) AS r
),
ins AS (
    INSERT INTO ingest_claims AS c (event_id, body_hash, event_type, status)
    SELECT event_id, body_hash, event_type, 'pending' FROM input
    ON CONFLICT (event_id) DO UPDATE SET claimed_at = now()
        WHERE c.status = 'pending' AND c.body_hash = EXCLUDED.body_hash
          AND c.claimed_at < now() - %(stale)s::interval
    RETURNING c.event_id
)
SELECT i.event_id::text, ins.event_id IS NOT NULL, c.body_hash = i.body_hash,
       coalesce(c.status = 'done', false), c.topic, c."partition", c."offset"
FROM input i
LEFT JOIN ins ON ins.event_id = i.event_id
LEFT JOIN ingest_claims c ON c.event_id = i.event_id AND ins.event_id IS NULL
"""

_DONE = """
UPDATE ingest_claims c
SET status = 'done', topic = u.topic, "partition" = u.p, "offset" = u.o, done_at = now()
FROM (
    SELECT (r->>0)::uuid AS event_id, r->>1 AS topic, (r->>2)::int AS p, (r->>3)::bigint AS o
    FROM jsonb_array_elements(%(rows)s::jsonb) AS r
) AS u
WHERE c.event_id = u.event_id
"""

_RELEASE = "DELETE FROM ingest_claims WHERE event_id = ANY(%(ids)s::uuid[]) AND status = 'pending'"


T = TypeVar("T")
R = TypeVar("R")


class _Coalescer(Generic[T, R]):
    """Group commit: what concurrent requests submit while a flush is running goes out together
    in the next one, so N requests cost one statement and one round trip, not N."""

    def __init__(
        self, flush: Callable[[list[T]], Awaitable[list[R]]], *, parallel: int, max_items: int
    ) -> None:
        self._flush = flush
        self._queue: list[tuple[list[T], asyncio.Future[list[R]]]] = []
        self._running = 0
        self._parallel = parallel
        self._max_items = max_items

    async def submit(self, items: list[T]) -> list[R]:
        fut: asyncio.Future[list[R]] = asyncio.get_running_loop().create_future()
        self._queue.append((items, fut))
        if self._running < self._parallel:
            self._running += 1
            asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                group: list[tuple[list[T], asyncio.Future[list[R]]]] = []
                n = 0
                while self._queue and (not group or n + len(self._queue[0][0]) <= self._max_items):
                    entry = self._queue.pop(0)
                    group.append(entry)
                    n += len(entry[0])
                flat = [item for items, _ in group for item in items]
                try:
                    results = await self._flush(flat)
                except Exception as exc:  # noqa: BLE001 - handed to every waiting request
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                at = 0
                for items, fut in group:
                    if not fut.done():
                        fut.set_result(results[at : at + len(items)])
                    at += len(items)
        finally:
            self._running -= 1


class ClaimStore:
    def __init__(
        self, pool: AsyncConnectionPool[Any], *, stale_after_s: float, parallel: int = 4
    ) -> None:
        self.pool = pool
        self.stale = f"{int(stale_after_s)} seconds"
        self._claims: _Coalescer[tuple[str, bytes, str], ClaimOutcome] = _Coalescer(
            self._claim_now, parallel=parallel, max_items=5000
        )
        self._dones: _Coalescer[tuple[str, str, int, int], None] = _Coalescer(
            self._done_now, parallel=parallel, max_items=5000
        )

    async def claim(
        self, ids: Sequence[str], hashes: Sequence[bytes], types: Sequence[str]
    ) -> list[ClaimOutcome]:
        return await self._claims.submit(list(zip(ids, hashes, types, strict=True)))

    async def done(self, delivered: Sequence[tuple[str, str, int, int]]) -> None:
        if delivered:
            await self._dones.submit(list(delivered))

    async def _claim_now(self, items: list[tuple[str, bytes, str]]) -> list[ClaimOutcome]:
        # The same id twice in one statement (two requests racing) would make the upsert touch
        # a row twice: the first goes in the statement, later ones answer as "in flight".
        # Ids arrive normalised (lower-case canonical UUIDs), as PostgreSQL prints them back.
        first: dict[str, int] = {}
        for i, (event_id, _, _) in enumerate(items):
            first.setdefault(event_id, i)
        unique = [items[i] for i in sorted(first.values())]
        outcomes = await self._claim_rows(
            [u[0] for u in unique], [u[1] for u in unique], [u[2] for u in unique]
        )
        out = []
        for i, (key, body_hash, _) in enumerate(items):
            o = outcomes[key]
            if first[key] != i:
                same = items[first[key]][1] == body_hash
                o = ClaimOutcome(key, False, same, False, None, None, None)
            out.append(o)
        return out

    async def _claim_rows(
        self, ids: Sequence[str], hashes: Sequence[bytes], types: Sequence[str]
    ) -> dict[str, ClaimOutcome]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                _CLAIM,
                {
                    "rows": orjson.dumps(
                        [[i, h.hex(), t] for i, h, t in zip(ids, hashes, types, strict=True)]
                    ).decode(),
                    "stale": self.stale,
                },
            )
            rows = await cur.fetchall()
        return {
            r[0]: ClaimOutcome(
                r[0], bool(r[1]), bool(r[1]) or bool(r[2]), bool(r[3]), r[4], r[5], r[6]
            )
            for r in rows
        }

    async def _done_now(self, delivered: list[tuple[str, str, int, int]]) -> list[None]:
        async with self.pool.connection() as conn:
            await conn.execute(_DONE, {"rows": orjson.dumps(delivered).decode()})
        return [None] * len(delivered)

    async def release(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        async with self.pool.connection() as conn:
            await conn.execute(_RELEASE, {"ids": list(ids)})

    async def expire(self, retention_days: int) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM ingest_claims WHERE claimed_at < now() - make_interval(days => %s)",
                (retention_days,),
            )
            return int(cur.rowcount)
