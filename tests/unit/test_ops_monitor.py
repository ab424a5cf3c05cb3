"""The dashboard's overview: which groups are roles, how lag and rates are counted, and a part
that cannot be read reported beside the others."""

from __future__ import annotations

import asyncio
from typing import Any

from api.ops_monitor import OpsMonitor
from connectors.base import DependencyDown
from core.settings import Settings


class _Offsets:
    def __init__(self) -> None:
        self.committed: dict[str, dict[tuple[str, int], int]] = {
            "mohallamart-projections": {
                ("mohallamart.user.events", 0): 10,
                # faust's own topics are not a role's input
                ("mohallamart-projections-table-changelog", 0): 3,
            },
            "mohallamart-stock": {("mohallamart.stock.by-shop", 1): 4},
        }
        self.end: dict[tuple[str, int], int] = {}
        self.down = False

    async def groups(self, prefix: str) -> list[str]:
        if self.down:
            raise DependencyDown("Kafka: down")
        return [*self.committed, "mohallamart-projections-rebuild", "other-group"]

    async def all_committed(self, group: str) -> dict[tuple[str, int], int]:
        return self.committed[group]

    async def ends(self, topics: Any) -> dict[tuple[str, int], int]:
        names = set(topics)
        out = {("mohallamart.user.events", p): 0 for p in range(6)}
        out[("mohallamart.user.events", 0)] = 25
        out[("mohallamart.user.events", 1)] = 7  # never committed: all of it is lag
        out[("mohallamart.stock.by-shop", 0)] = 2
        out[("mohallamart.stock.by-shop", 1)] = 4
        out[("mohallamart.order.events.dlq", 0)] = 5
        out.update(self.end)
        return {tp: o for tp, o in out.items() if tp[0] in names}

    async def close(self) -> None:
        pass


class _Pool:
    def connection(self) -> Any:
        raise OSError("no PostgreSQL in a unit test")


async def _deps(_s: Settings) -> dict[str, dict[str, object]]:
    return {"kafka": {"ok": True, "ms": 1.0}}


def _monitor() -> tuple[OpsMonitor, _Offsets]:
    m = OpsMonitor(Settings(ops_stream_every_s=0.5), _Pool(), _deps)  # type: ignore[arg-type]
    fake = _Offsets()
    m.offsets = fake  # type: ignore[assignment]
    return m, fake


def test_roles_lag_counts_every_partition_of_their_topics_and_rates_need_two_snapshots() -> None:
    m, fake = _monitor()
    snap = asyncio.run(m._compute())
    roles = {r["role"]: r for r in snap["roles"]}
    assert set(roles) == {"projections", "stock"}  # not the rebuild's group nor another's
    proj = roles["projections"]
    assert [p["topic"] for p in proj["partitions"]] == ["mohallamart.user.events"] * 6
    assert proj["lag"] == (25 - 10) + 7
    assert proj["consumed_per_s"] is None
    assert roles["stock"]["lag"] == 2  # partition 0 never committed, partition 1 caught up
    assert snap["dead_letters"]["records"] == 5
    assert snap["errors"] == ["PostgreSQL: OSError"]  # the other parts still shown
    fake.committed["mohallamart-projections"][("mohallamart.user.events", 0)] = 20
    m._before = {k: (t - 2.0, n) for k, (t, n) in m._before.items()}  # two seconds ago
    again = {r["role"]: r for r in asyncio.run(m._compute())["roles"]}
    assert 4.9 <= again["projections"]["consumed_per_s"] <= 5.1


def test_kafka_down_is_an_error_beside_the_dependencies() -> None:
    m, fake = _monitor()
    fake.down = True
    snap = asyncio.run(m._compute())
    assert snap["roles"] == [] and snap["dependencies"]["kafka"]["ok"]
    assert any(e.startswith("consumer lag: Kafka: down") for e in snap["errors"])
