"""Whether a worker consumes nothing while records wait: the rule of its watchdog, pure.

A partition is idle when its fetch position (or, before the first fetch, its committed offset)
has not moved for `limit_s`. An idle partition is a suspect when the broker holds records past
that position, and stuck when it is a suspect at two asks in a row (`ask_every_s` apart) at the
same position: records that arrived a moment before an ask, not fetched yet, never end a worker.
The broker is asked only when some partition is idle (a caught-up worker is idle too: most of the
time, nothing waits).

A second rule watches commits (`CommitWatch`): a partition whose records were fetched past its
committed offset, none of them parked for a retry and the partition not paused, whose committed
offset has not moved for `limit_s`, is stuck too. A worker whose agents hang (or hold a record
back that will never come again) fetches on, or stops fetching once its agents' queues are
full, and commits nothing: seen in CI after a Kafka restart, two stock workers Ready and silent
for 6 minutes, their fetch positions past their commits."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["CommitWatch", "StallWatch"]


class StallWatch:
    def __init__(self, limit_s: float, ask_every_s: float = 30.0) -> None:
        self.limit_s = limit_s
        self.ask_every_s = ask_every_s
        self.since: dict[Any, tuple[int | None, float]] = {}  # partition -> (position, since)
        self.suspects: dict[Any, int | None] = {}  # partition -> its position at the last ask
        self.asked = float("-inf")

    def reset(self) -> None:
        """A rebalance, a recovery, a deliberate pause: every position starts afresh."""
        self.since.clear()
        self.suspects.clear()

    def observe(self, now: float, positions: Mapping[Any, int | None]) -> dict[Any, float]:
        """Record the positions; the partitions idle for longer than the limit (seconds idle),
        when it is time to ask the broker about them (else none)."""
        seen = {}
        for tp, at in positions.items():
            before = self.since.get(tp)
            seen[tp] = (at, before[1] if before is not None and before[0] == at else now)
        self.since = seen
        idle = {tp: now - t for tp, (_at, t) in seen.items() if now - t > self.limit_s}
        if not idle:
            self.suspects.clear()
            return {}
        if now - self.asked < self.ask_every_s:
            return {}
        self.asked = now
        return idle

    def stuck(
        self, idle: Mapping[Any, float], ends: Mapping[tuple[str, int], int]
    ) -> list[tuple[Any, float]]:
        """The idle partitions with records past their position at this ask and at the one
        before, at the same position (longest idle first)."""
        out = []
        suspects = {}
        for tp, seconds in idle.items():
            at = self.since[tp][0]
            if at is None or ends.get((tp.topic, tp.partition), 0) > at:
                suspects[tp] = at
                if tp in self.suspects and self.suspects[tp] == at:
                    out.append((tp, seconds))
        self.suspects = suspects
        return sorted(out, key=lambda x: -x[1])


class CommitWatch:
    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.since: dict[Any, tuple[int, float]] = {}  # partition -> (committed, since)

    def reset(self) -> None:
        self.since.clear()

    def observe(
        self,
        now: float,
        positions: Mapping[Any, tuple[int | None, int | None]],
        exempt: set[Any],
    ) -> list[tuple[Any, float]]:
        """`positions`: partition -> (fetch position, committed offset); `exempt`: partitions
        with records parked for a retry. The partitions fetched past a committed offset that
        has not moved for longer than the limit (longest first)."""
        seen: dict[Any, tuple[int, float]] = {}
        for tp, (fetched, committed) in positions.items():
            if fetched is None or committed is None or fetched <= committed or tp in exempt:
                continue
            before = self.since.get(tp)
            seen[tp] = (committed, before[1] if before and before[0] == committed else now)
        self.since = seen
        out = [(tp, now - t) for tp, (_c, t) in seen.items() if now - t > self.limit_s]
        return sorted(out, key=lambda x: -x[1])
