"""Event-time windows: the arithmetic of the analytics role (issue 15), pure: no Kafka, no tables.

Everything here is a function of event times and watermarks, never of the wall clock, so a live
run, a replay and a test oracle that see the same records (and the same tick records) close the
same windows at the same points.

- **Periods.** Minutes are UTC minutes; hours and days are calendar periods in `ZONE`
  (Asia/Kolkata, the marketplace's zone: a day starts at 00:00 IST = 18:30 UTC the day before).
- **Tumbling** windows (`Tumbling`): one window per period.
- **Hopping** windows (`Hopping`, 1 h every 5 min): an event updates one pane (5 min, UTC); a
  window is the sum of the panes it covers, so top-N is computed at read time from panes.
- **Sessions** (`Sessions`): per key, events less than `gap` apart form one session; an event that
  bridges two open sessions merges them.
- **Watermarks** (`Watermarks`): per source partition, the highest event time seen (or granted
  by a tick record); a stage's watermark is the minimum over its source partitions, so it does
  not depend on how their records interleave.
- **Final and late.** A window is final once the watermark passes its end + grace; its final
  result is emitted once, by `Windows.advance`. An event is late when its own source
  partition's watermark had passed its window's end + grace (see `Windows`): it changes nothing
  and is reported (`Late`), never silently dropped.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo

__all__ = [
    "MINUTE_MS",
    "ZONE",
    "Final",
    "Hopping",
    "Late",
    "Session",
    "Sessions",
    "SourceClock",
    "Tumbling",
    "Watermarks",
    "Windows",
    "tick_due",
]

ZONE = ZoneInfo("Asia/Kolkata")
MINUTE_MS = 60_000
Unit = Literal["minute", "hour", "day"]


def _local_floor(t_ms: int, unit: Unit) -> datetime:
    local = datetime.fromtimestamp(t_ms / 1000, UTC).astimezone(ZONE)
    if unit == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    return local.replace(hour=0, minute=0, second=0, microsecond=0)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


_QUARTER_MS = 15 * MINUTE_MS


@lru_cache(maxsize=8192)
def _local_bounds(unit: Unit, t_ms: int) -> tuple[int, int]:
    first = _local_floor(t_ms, unit)
    step = timedelta(hours=1) if unit == "hour" else timedelta(days=1)
    # the next period's start in local time (a day may be 23 or 25 h long where DST exists)
    nxt = (first.replace(tzinfo=None) + step).replace(tzinfo=ZONE)
    return _ms(first), _ms(nxt)


@dataclass(frozen=True)
class Tumbling:
    """One window per period: a UTC minute, or an hour or a day in `ZONE`."""

    name: str
    unit: Unit
    grace_ms: int

    def bounds(self, t_ms: int) -> tuple[int, int]:
        """[start, end) of the window holding event time `t_ms` (ms since the epoch)."""
        if self.unit == "minute":
            start = t_ms - t_ms % MINUTE_MS
            return start, start + MINUTE_MS
        # every period of ZONE starts on a quarter hour (UTC): one answer per quarter hour
        return _local_bounds(self.unit, t_ms - t_ms % _QUARTER_MS)


@dataclass(frozen=True)
class Hopping:
    """Windows of `size_ms` starting every `step_ms`; an event lands in one pane of `step_ms`."""

    name: str
    size_ms: int
    step_ms: int
    grace_ms: int

    def __post_init__(self) -> None:
        if self.size_ms % self.step_ms:
            raise ValueError("a hopping window's size must be a multiple of its step")

    def pane(self, t_ms: int) -> int:
        """The start of the pane holding `t_ms`."""
        return t_ms - t_ms % self.step_ms

    def windows_of_pane(self, pane: int) -> list[tuple[int, int]]:
        """Every window [start, end) the pane starting at `pane` is part of."""
        n = self.size_ms // self.step_ms
        return [
            (s, s + self.size_ms)
            for s in range(pane - (n - 1) * self.step_ms, pane + 1, self.step_ms)
        ]

    def panes_of(self, start: int) -> list[int]:
        return list(range(start, start + self.size_ms, self.step_ms))


@dataclass
class Session:
    """One browsing session: its first and last event times and its counts."""

    first_ms: int
    last_ms: int
    counts: dict[str, int] = field(default_factory=dict)

    def end_ms(self, gap_ms: int) -> int:
        """When it ends if nothing more comes: its last event + the gap."""
        return self.last_ms + gap_ms


@dataclass(frozen=True)
class Sessions:
    """Per key, events less than `gap_ms` apart are one session."""

    name: str
    gap_ms: int
    grace_ms: int


@dataclass(frozen=True)
class Final:
    """A window's final result: emitted once, when the watermark passed its end + grace."""

    window: str  # the window kind's name
    key: str
    start_ms: int
    end_ms: int
    values: Mapping[str, int]


@dataclass(frozen=True)
class Late:
    """An event for a window that was final already: it changes nothing, and is reported."""

    window: str
    key: str
    start_ms: int
    end_ms: int
    event_ms: int
    watermark_ms: int


class Watermarks:
    """The highest event time seen (or granted by a tick) per source partition; the stage's
    watermark is the minimum over every source partition it reads (-1 until each has one)."""

    def __init__(self, sources: Iterable[str]) -> None:
        self.seen: dict[str, int] = dict.fromkeys(sources, -1)

    def observe(self, source: str, t_ms: int) -> None:
        if t_ms > self.seen.get(source, -1):
            self.seen[source] = t_ms

    @property
    def current(self) -> int:
        return min(self.seen.values()) if self.seen else -1


class SourceClock:
    """One source partition's watermark as the router sees it, record by record.

    `stamp` takes a record's event time and answers the watermark just before it (the router
    stamps it on the forwarded record: lateness is judged by it) and, when the watermark entered
    a new `mark_every_ms` step, the mark to broadcast to every stage partition (so a stage that
    gets none of this partition's records still learns its watermark). Both depend only on the
    partition's records in their order: a replay stamps and marks the same. `grant` is a tick's
    watermark (a quiet partition), applied at the source offset the tick follows."""

    def __init__(self, watermark_ms: int = -1, *, mark_every_ms: int = 1_000) -> None:
        self.watermark = watermark_ms
        self.mark_every_ms = mark_every_ms

    def stamp(self, t_ms: int) -> tuple[int, int | None]:
        seen = self.watermark
        return seen, self._raise(t_ms)

    def grant(self, watermark_ms: int) -> int | None:
        return self._raise(watermark_ms)

    def _raise(self, t_ms: int) -> int | None:
        before = self.watermark
        if t_ms <= before:
            return None
        self.watermark = t_ms
        if before < 0 or t_ms // self.mark_every_ms > before // self.mark_every_ms:
            return t_ms
        return None


def tick_due(
    *,
    now_ms: int,
    last_record_ms: int,
    caught_up: bool,
    watermark_ms: int,
    idle_ms: int,
    lateness_ms: int,
) -> int | None:
    """The watermark a tick should grant a source partition, or None: only once the partition
    has been quiet for `idle_ms` of wall time (since its last record arrived) and the router has
    read all of it, and only if that moves its watermark: wall time minus `lateness_ms` (what an
    event may still arrive behind the clock without being late)."""
    if not caught_up or now_ms - last_record_ms < idle_ms:
        return None
    grant = now_ms - lateness_ms
    return grant if grant > watermark_ms else None


def _add(into: dict[str, int], values: Mapping[str, int]) -> None:
    for k, v in values.items():
        into[k] = into.get(k, 0) + v


class Windows:
    """The current aggregates of one window kind, and what closes them.

    `add` puts an event's values into its window (or pane, or session), or answers `Late`.
    `advance` takes the stage's watermark (the minimum over its source partitions) and answers
    the windows it made final, each once, in order of end time. The state is plain dicts, so the
    role can keep it in a changelog-backed table of its own.

    **Late is judged by the event's own source partition**: `seen_ms` is that partition's
    watermark just before the event (the router stamps it). An event is late when that has
    passed its window's end + grace (a session event: its own time + grace). Everything the
    stage knows of that partition came before the event, in the partition's order, so the
    stage's watermark can have closed the window only if the event is late by this rule: which
    events count is a function of each source partition alone, never of how the partitions
    interleave in the stage (live, replay and an oracle agree)."""

    def __init__(self, kind: Tumbling | Hopping | Sessions) -> None:
        self.kind = kind
        self.watermark = -1
        # tumbling: (key, start) -> values; hopping: (key, pane) -> values
        self.cells: dict[tuple[str, int], dict[str, int]] = {}
        # the same cells' starts per key (a batch reads and writes a few keys among many)
        self.starts: dict[str, set[int]] = {}
        # hopping: windows already final, per key: the highest final window start
        self.final_until: dict[str, int] = {}
        # sessions: key -> its open sessions, by first event time
        self.sessions: dict[str, list[Session]] = {}
        # the keys whose state changed since `take_dirty` (the role writes only theirs), and
        # the cells (tumbling windows, hopping panes) `advance` closed, with their values
        self.dirty: set[str] = set()
        self.closed: list[tuple[str, int, dict[str, int]]] = []
        # the cells `add` changed since `take_changed` (their PostgreSQL rows are written)
        self.dirty_cells: set[tuple[str, int]] = set()
        # per key, the lowest watermark at which `advance` may close something of it, and a
        # heap of (that watermark, key): `advance` visits only the keys due (entries whose due
        # is no longer the key's are skipped)
        self.key_due: dict[str, int] = {}
        self.heap: list[tuple[int, str]] = []

    # --- events ---------------------------------------------------------------------------------
    def add(
        self, key: str, t_ms: int, values: Mapping[str, int], seen_ms: int | None = None
    ) -> Late | None:
        """Count an event at `t_ms` whose source partition's watermark was `seen_ms` just
        before it (None: the stage's own watermark, for a stage with one source)."""
        kind = self.kind
        seen = self.watermark if seen_ms is None else max(seen_ms, self.watermark)
        if isinstance(kind, Tumbling):
            start, end = kind.bounds(t_ms)
            if seen >= end + kind.grace_ms:
                return Late(kind.name, key, start, end, t_ms, seen)
            _add(self.open_cell(key, start), values)
            self.dirty.add(key)
            self.dirty_cells.add((key, start))
            self._schedule(key, end + kind.grace_ms)
            return None
        if isinstance(kind, Hopping):
            pane = kind.pane(t_ms)
            first_start, first_end = kind.windows_of_pane(pane)[0]
            if seen >= first_end + kind.grace_ms:
                # the earliest window holding this pane is final: its result would change
                return Late(kind.name, key, first_start, first_end, t_ms, seen)
            _add(self.open_cell(key, pane), values)
            self.dirty.add(key)
            self.dirty_cells.add((key, pane))
            self._schedule(key, first_end + kind.grace_ms)
            return None
        if seen >= t_ms + kind.grace_ms:
            # more than the grace behind its source: a session it touched may be final already
            return Late(kind.name, key, t_ms, t_ms + kind.gap_ms, t_ms, seen)
        open_ = self.sessions.get(key, [])
        touching = [s for s in open_ if s.first_ms - kind.gap_ms < t_ms < s.last_ms + kind.gap_ms]
        merged = Session(t_ms, t_ms, dict(values))
        for s in touching:
            merged.first_ms = min(merged.first_ms, s.first_ms)
            merged.last_ms = max(merged.last_ms, s.last_ms)
            _add(merged.counts, s.counts)
        rest = [s for s in open_ if s not in touching]
        self.sessions[key] = sorted([*rest, merged], key=lambda s: s.first_ms)
        self.dirty.add(key)
        # (a merged session ends later than those it took in: the key's due may be early; an
        # early visit closes nothing and schedules the key again)
        self._schedule(key, merged.end_ms(kind.gap_ms) + kind.grace_ms)
        return None

    def open_cell(self, key: str, start: int) -> dict[str, int]:
        """The values of `key`'s cell starting at `start`, opened (empty) if need be."""
        cell = self.cells.get((key, start))
        if cell is None:
            cell = self.cells[(key, start)] = {}
            self.starts.setdefault(key, set()).add(start)
        return cell

    def close_cell(self, key: str, start: int) -> dict[str, int]:
        """Remove `key`'s cell starting at `start`; its values."""
        values = self.cells.pop((key, start))
        starts = self.starts[key]
        starts.discard(start)
        if not starts:
            del self.starts[key]
        self.dirty_cells.discard((key, start))
        return values

    def _schedule(self, key: str, at: int) -> None:
        """`key` may have something to close once the watermark reaches `at`."""
        known = self.key_due.get(key)
        if known is None or at < known:
            self.key_due[key] = at
            heapq.heappush(self.heap, (at, key))

    def _key_due_of(self, key: str) -> int | None:
        """The lowest watermark at which something of `key` closes (None: nothing open)."""
        kind = self.kind
        if isinstance(kind, Tumbling):
            starts = self.starts.get(key, ())
            return min((kind.bounds(s)[1] + kind.grace_ms for s in starts), default=None)
        if isinstance(kind, Hopping):
            done = self.final_until.get(key, -(1 << 62))
            dues = []
            for pane in self.starts.get(key, ()):
                # the first window holding the pane that is not final yet
                for start, end in kind.windows_of_pane(pane):
                    if start > done:
                        dues.append(end + kind.grace_ms)
                        break
            return min(dues, default=None)
        return min(
            (s.end_ms(kind.gap_ms) + kind.grace_ms for s in self.sessions.get(key, ())),
            default=None,
        )

    def _final(self, end_ms: int, grace_ms: int) -> bool:
        return self.watermark >= end_ms + grace_ms

    # --- the watermark --------------------------------------------------------------------------
    def advance(self, watermark_ms: int) -> list[Final]:
        """Move the watermark (never back) and answer the windows it made final."""
        if watermark_ms <= self.watermark:
            return []
        self.watermark = watermark_ms
        heap, key_due = self.heap, self.key_due
        keys: list[str] = []
        while heap and heap[0][0] <= watermark_ms:
            at, key = heapq.heappop(heap)
            if key_due.get(key) == at:
                del key_due[key]
                keys.append(key)
        if not keys:
            return []  # nothing can close yet
        kind = self.kind
        out: list[Final] = []
        for key in keys:
            if isinstance(kind, Tumbling):
                self._advance_tumbling(kind, key, out)
            elif isinstance(kind, Hopping):
                self._advance_hopping(kind, key, out)
            else:
                self._advance_sessions(kind, key, out)
            again = self._key_due_of(key)
            if again is not None:
                self._schedule(key, again)
        return sorted(out, key=lambda f: (f.end_ms, f.key, f.start_ms))

    def recompute_due(self) -> None:
        """Schedule every key afresh (after the state was put back)."""
        self.key_due, self.heap = {}, []
        for key in {*self.starts, *self.sessions}:
            at = self._key_due_of(key)
            if at is not None:
                self._schedule(key, at)

    def _advance_tumbling(self, kind: Tumbling, key: str, out: list[Final]) -> None:
        for start in sorted(self.starts.get(key, ())):
            _, end = kind.bounds(start)
            if self._final(end, kind.grace_ms):
                values = self.close_cell(key, start)
                out.append(Final(kind.name, key, start, end, dict(values)))
                self.closed.append((key, start, values))
                self.dirty.add(key)

    def _advance_sessions(self, kind: Sessions, key: str, out: list[Final]) -> None:
        keep = []
        for s in self.sessions.get(key, []):
            if self._final(s.end_ms(kind.gap_ms), kind.grace_ms):
                values = {**s.counts, "duration_ms": s.last_ms - s.first_ms}
                out.append(Final(kind.name, key, s.first_ms, s.end_ms(kind.gap_ms), values))
                self.dirty.add(key)
            else:
                keep.append(s)
        if keep:
            self.sessions[key] = keep
        else:
            self.sessions.pop(key, None)

    def _advance_hopping(self, kind: Hopping, key: str, out: list[Final]) -> None:
        panes = set(self.starts.get(key, ()))
        if not panes:
            return
        done = self.final_until.get(key, -(1 << 62))
        starts = {s for p in panes for s, _ in kind.windows_of_pane(p)}
        for start in sorted(starts):
            end = start + kind.size_ms
            if start <= done or not self._final(end, kind.grace_ms):
                continue
            total: dict[str, int] = {}
            for p in kind.panes_of(start):
                _add(total, self.cells.get((key, p), {}))
            out.append(Final(kind.name, key, start, end, total))
            self.final_until[key] = max(self.final_until.get(key, start), start)
            self.dirty.add(key)
        # a pane no window still open needs is dropped
        left = len(panes)
        for p in panes:
            last_start, last_end = kind.windows_of_pane(p)[-1]
            if self._final(last_end, kind.grace_ms):
                self.closed.append((key, p, self.close_cell(key, p)))
                left -= 1
        if not left:
            # no pane left: an event not late can only open windows after the last final
            self.final_until.pop(key, None)

    # --- state, for the role's changelog record ----------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything this holds, JSON-serialisable: the role writes it, with the partition's
        applied offset, as one changelog record, so a restart resumes exactly here."""
        return {
            "watermark": self.watermark,
            "cells": [[k, start, v] for (k, start), v in sorted(self.cells.items())],
            "final_until": dict(self.final_until),
            "sessions": {
                k: [[s.first_ms, s.last_ms, s.counts] for s in open_]
                for k, open_ in sorted(self.sessions.items())
            },
        }

    @classmethod
    def restore(cls, kind: Tumbling | Hopping | Sessions, state: Mapping[str, Any]) -> Windows:
        w = cls(kind)
        w.watermark = int(state["watermark"])
        for k, start, v in state["cells"]:
            w.open_cell(str(k), int(start)).update(v)
        w.final_until = {str(k): int(v) for k, v in state["final_until"].items()}
        w.sessions = {
            str(k): [Session(int(f), int(last), dict(c)) for f, last, c in open_]
            for k, open_ in state["sessions"].items()
        }
        w.recompute_due()
        return w

    # --- per key, for the role's table (one entry per key, written when dirty) ---------------
    def take_dirty(self) -> tuple[set[str], list[tuple[str, int, dict[str, int]]]]:
        """The keys changed and the cells closed since the last call (then forgotten)."""
        dirty, closed = self.dirty, self.closed
        self.dirty, self.closed = set(), []
        return dirty, closed

    def key_state(self, key: str) -> dict[str, Any] | None:
        """Everything held for `key`, JSON-serialisable (None: nothing)."""
        cells = [
            [start, dict(self.cells[(key, start)])] for start in sorted(self.starts.get(key, ()))
        ]
        sessions = [[s.first_ms, s.last_ms, dict(s.counts)] for s in self.sessions.get(key, [])]
        if not cells and not sessions:
            return None
        out: dict[str, Any] = {"c": cells, "s": sessions}
        if key in self.final_until:
            out["f"] = self.final_until[key]
        return out

    def load_key(self, key: str, state: Mapping[str, Any]) -> None:
        """Put back what `key_state` gave (the watermark is the caller's)."""
        for start, values in state["c"]:
            cell = self.open_cell(key, int(start))
            cell.clear()
            cell.update({str(n): int(v) for n, v in values.items()})
        if state["s"]:
            self.sessions[key] = [
                Session(int(f), int(last), {str(n): int(v) for n, v in c.items()})
                for f, last, c in state["s"]
            ]
        if "f" in state:
            self.final_until[key] = int(state["f"])
        at = self._key_due_of(key)
        if at is not None:
            self._schedule(key, at)

    def key_states(self, keys: set[str]) -> dict[str, dict[str, Any] | None]:
        """`key_state` of each of `keys`, in one pass over the cells."""
        out: dict[str, dict[str, Any] | None] = {}
        for key in keys:
            c = [
                [start, dict(self.cells[(key, start)])]
                for start in sorted(self.starts.get(key, ()))
            ]
            sessions = [[s.first_ms, s.last_ms, dict(s.counts)] for s in self.sessions.get(key, [])]
            if not c and not sessions:
                out[key] = None
                continue
            st: dict[str, Any] = {"c": c, "s": sessions}
            if key in self.final_until:
                st["f"] = self.final_until[key]
            out[key] = st
        return out

    def take_changed(self) -> dict[str, dict[int, dict[str, int]]]:
        """The open cells `add` changed since the last call, by key and start (then forgotten):
        the current rows a batch writes (a cell that did not change keeps its row)."""
        out: dict[str, dict[int, dict[str, int]]] = {}
        for key, start in self.dirty_cells:
            out.setdefault(key, {})[start] = dict(self.cells[(key, start)])
        self.dirty_cells = set()
        return out

    def current(self, key: str) -> dict[int, dict[str, int]]:
        """The open windows of `key` by start (tumbling: the window; hopping: the panes;
        sessions: each open session by its first event time)."""
        if isinstance(self.kind, Sessions):
            return {s.first_ms: dict(s.counts) for s in self.sessions.get(key, [])}
        return {start: dict(self.cells[(key, start)]) for start in self.starts.get(key, ())}
