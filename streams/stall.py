"""Whether a worker consumes nothing while records wait: the rule of its watchdog, pure.

A partition is idle when its fetch position (or, before the first fetch, its committed offset)
has not moved for `limit_s`. An idle partition is a suspect when the broker holds records past
that position, and stuck when it is a suspect at two asks in a row (`ask_every_s` apart) at the
same position: records that arrived a moment before an ask, not fetched yet, never end a worker.
The broker is asked only when some partition is idle (a caught-up worker is idle too: most of the
time, nothing waits)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["StallWatch"]


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
