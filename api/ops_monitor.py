"""What the operator dashboard shows, in one snapshot: each worker role's consumer lag by
partition and the records it consumes per second, the event topics' ingest rate, each
dependency's health, the dead letters, and the rebuilds under way.

One snapshot is computed at a time and shared by every client for `OPS_STREAM_EVERY_S` (the
dashboards of several operators cost Kafka and PostgreSQL one look per period, not one each).
Rates are the difference between two snapshots. A part that cannot be read (Kafka down, say)
is reported under `errors` with the other parts still shown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from connectors.base import DependencyDown
from connectors.groups import GroupOffsets
from connectors.rebuild import progress
from core.settings import Settings
from schemas.catalog import TOPICS

__all__ = ["OpsMonitor"]

TP = tuple[str, int]


class OpsMonitor:
    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool[Any],
        dependencies: Callable[[Settings], Awaitable[dict[str, dict[str, object]]]],
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.dependencies = dependencies
        self.offsets = GroupOffsets(
            settings.kafka_bootstrap, security=settings.kafka_security, timeout_s=3.0
        )
        self.every_s = settings.ops_stream_every_s
        self._lock = asyncio.Lock()
        self._last: dict[str, Any] | None = None
        self._last_at = 0.0
        # the previous snapshot's sums, for rates: name -> (monotonic time, records)
        self._before: dict[str, tuple[float, int]] = {}

    async def snapshot(self) -> dict[str, Any]:
        """The latest snapshot, computed afresh when the last one is older than the period."""
        async with self._lock:
            if self._last is None or time.monotonic() - self._last_at >= self.every_s * 0.9:
                self._last = await self._compute()
                self._last_at = time.monotonic()
            return self._last

    async def close(self) -> None:
        await self.offsets.close()

    def _rate(self, name: str, now: float, records: int) -> float | None:
        before = self._before.get(name)
        self._before[name] = (now, records)
        if before is None or now <= before[0] or records < before[1]:
            return None
        return round((records - before[1]) / (now - before[0]), 1)

    async def _compute(self) -> dict[str, Any]:
        errors: list[str] = []
        deps_task = asyncio.ensure_future(self.dependencies(self.settings))
        roles: list[dict[str, Any]] = []
        topics: list[dict[str, Any]] = []
        dead: dict[str, int | None] = {"records": None, "settled": None, "pending": None}
        now = time.monotonic()
        try:
            roles, topics, dead_records = await self._kafka(now)
            dead["records"] = dead_records
        except DependencyDown as exc:
            errors.append(f"consumer lag: {exc}")
        except BaseException:
            deps_task.cancel()
            raise
        rebuilds: list[dict[str, Any]] = []
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute("SELECT count(*) FROM dlq_redrives")
                row = await cur.fetchone()
                dead["settled"] = int(row[0]) if row else 0
                rebuilds = await progress(conn)
        except Exception as exc:  # noqa: BLE001 - the other parts are still shown
            errors.append(f"PostgreSQL: {type(exc).__name__}")
        if dead["records"] is not None and dead["settled"] is not None:
            dead["pending"] = max(0, dead["records"] - dead["settled"])
        for r in rebuilds:
            r["per_s"] = self._rate(f"rebuild:{r['schema']}", now, r["records"])
        return {
            "at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "every_s": self.every_s,
            "roles": roles,
            "topics": topics,
            "dependencies": await deps_task,
            "dead_letters": dead,
            "rebuilds": rebuilds,
            "errors": errors,
        }

    async def _kafka(self, now: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
        prefix = f"{self.settings.worker_app_prefix}-"
        groups = [g for g in await self.offsets.groups(prefix) if "-" not in g.removeprefix(prefix)]
        committed = {g: await self.offsets.all_committed(g) for g in groups}
        # a role's input topics: not faust's own (changelogs, the assignor's), named after it
        wanted: dict[str, dict[TP, int]] = {
            g: {tp: o for tp, o in c.items() if not tp[0].startswith(f"{g}-")}
            for g, c in committed.items()
        }
        events = [t.name for t in TOPICS.values()]
        dlq = [f"{name}.dlq" for name in events]
        # the roles' topics exist (their groups committed on them); an event or dead-letter
        # topic nobody has created yet must not blank the roles' lag
        ends = await self.offsets.ends({tp[0] for c in wanted.values() for tp in c})
        try:
            ends.update(await self.offsets.ends(set(events) | set(dlq)))
        except DependencyDown:
            for name in [*events, *dlq]:
                try:
                    ends.update(await self.offsets.ends([name]))
                except DependencyDown:
                    continue
        roles = []
        for g, known in wanted.items():
            # every partition of the topics the group committed on: one it never committed has
            # everything still to read
            topics_of = {t for t, _ in known}
            c = {tp: known.get(tp, -1) for tp in ends if tp[0] in topics_of}
            parts: list[dict[str, Any]] = [
                {
                    "topic": t,
                    "partition": p,
                    "committed": o,
                    "end": ends.get((t, p), o),
                    "lag": max(0, ends.get((t, p), o) - max(o, 0)),
                }
                for (t, p), o in sorted(c.items())
            ]
            consumed = sum(max(o, 0) for o in c.values())
            roles.append(
                {
                    "role": g.removeprefix(prefix),
                    "group": g,
                    "lag": sum(x["lag"] for x in parts),
                    "consumed_per_s": self._rate(f"group:{g}", now, consumed),
                    "partitions": parts,
                }
            )
        topics = []
        for name in events:
            records = sum(o for (t, _), o in ends.items() if t == name)
            topics.append(
                {
                    "topic": name,
                    "records": records,
                    "per_s": self._rate(f"topic:{name}", now, records),
                }
            )
        dead_records = sum(o for (t, _), o in ends.items() if t in set(dlq))
        return roles, topics, dead_records
