"""Ingest dedup claims in PostgreSQL, shared by every API process.

An event id is claimed before its event is produced and marked done with where it landed; a
failed produce releases the claim, so a retry is never mistaken for a duplicate. A claim still
pending long after any request could have finished (its API process died mid-request) may be
taken over by a retry with the same body.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


_CLAIM = """
WITH input AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(hashes)s::bytea[], %(types)s::text[])
        AS t(event_id, body_hash, event_type)
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
FROM unnest(%(ids)s::uuid[], %(topics)s::text[], %(parts)s::int[], %(offsets)s::bigint[])
    AS u(event_id, topic, p, o)
WHERE c.event_id = u.event_id
"""

_RELEASE = "DELETE FROM ingest_claims WHERE event_id = ANY(%(ids)s::uuid[]) AND status = 'pending'"


class ClaimStore:
    def __init__(self, pool: AsyncConnectionPool[Any], *, stale_after_s: float) -> None:
        self.pool = pool
        self.stale = f"{int(stale_after_s)} seconds"

    async def claim(
        self, ids: Sequence[str], hashes: Sequence[bytes], types: Sequence[str]
    ) -> list[ClaimOutcome]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                _CLAIM,
                {
                    "ids": list(ids),
                    "hashes": list(hashes),
                    "types": list(types),
                    "stale": self.stale,
                },
            )
            rows = await cur.fetchall()
        by_id = {
            r[0]: ClaimOutcome(
                r[0], bool(r[1]), bool(r[1]) or bool(r[2]), bool(r[3]), r[4], r[5], r[6]
            )
            for r in rows
        }
        return [by_id[str(uuid.UUID(i))] for i in ids]

    async def done(self, delivered: Sequence[tuple[str, str, int, int]]) -> None:
        if not delivered:
            return
        async with self.pool.connection() as conn:
            await conn.execute(
                _DONE,
                {
                    "ids": [d[0] for d in delivered],
                    "topics": [d[1] for d in delivered],
                    "parts": [d[2] for d in delivered],
                    "offsets": [d[3] for d in delivered],
                },
            )

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
