"""Records of a partition must come in offset order, from the committed offset on, each once."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import faust
from faust.types import TP

__all__ = ["Continuity", "Positions"]

log = logging.getLogger(__name__)


class Positions(Protocol):
    """Where the consumer stands: its group generation, the committed offsets, a seek."""

    def generation(self) -> int | None: ...

    def committed(self, tp: TP) -> int | None: ...

    def sought(self) -> bool:
        """Whether the consumer has sought every partition to its committed offset in the
        current generation (faust does so once per assignment, after its table recovery)."""
        ...

    async def seek(self, tp: TP, offset: int) -> None: ...


class Continuity:
    """Around rebalances faust can hand over a record beyond the committed offset
    (faust-streaming #221: prefetched records) and skip the ones before it. Such a jump is not
    processed: the partition is sought back to the offset expected (once; again only if the
    records sought have not come within `RESEEK_S`), and the partition's records are held (never
    acknowledged) until the one expected comes. A record below the one expected was admitted
    already in this generation (a copy fetched again after a seek): it is held too, not
    processed twice. A committed offset past the one expected is followed: the records before
    it were processed and committed (a committed offset read stale before faust's own seek to
    the committed offsets held a partition for ever); so is one below it while no record of the
    partition was admitted in this generation. Nothing is admitted in a generation before faust's
    seek to the committed offsets (`Positions.sought`); a partition with no committed offset
    then expects the lowest record held before it (that seek does not move it)."""

    RESEEK_S = 5.0

    def __init__(self, positions: Positions) -> None:
        self.positions = positions
        self.next: dict[TP, int] = {}
        self.sought: dict[TP, tuple[int, float]] = {}  # partition -> (offset, when)
        self.generation: int | None = None
        self.admitted: set[TP] = set()  # partitions with a record admitted in this generation
        # partition -> the lowest offset held before the generation's seek
        self.early: dict[TP, int] = {}

    async def admit(
        self, events: Sequence[faust.EventT[Any]]
    ) -> tuple[list[faust.EventT[Any]], list[faust.EventT[Any]]]:
        """(the events to process, the events held back: never to be acknowledged)."""
        pos = self.positions
        if pos.generation() != self.generation:  # a rebalance: start afresh
            self.generation = pos.generation()
            self.next.clear()
            self.sought.clear()
            self.admitted.clear()
            self.early.clear()
        if not pos.sought():
            # before the generation's seek to the committed offsets: that seek drops the
            # acknowledgements recorded so far and delivers these records again; a partition
            # with no committed offset is not sought, so the lowest held is expected next
            for e in events:
                tp, offset = e.message.tp, e.message.offset
                self.early[tp] = min(offset, self.early.get(tp, offset))
            return [], list(events)
        keep: list[faust.EventT[Any]] = []
        held: list[faust.EventT[Any]] = []
        for e in events:
            m = e.message
            tp = m.tp
            expected = self.next.get(tp)
            committed = pos.committed(tp)  # the next offset to read
            if expected is None or (
                committed is not None
                and (committed > expected or (committed < expected and tp not in self.admitted))
            ):
                # the first record of the partition in this generation; or a committed offset
                # past the one expected: the records before it were processed and committed
                # (faust's seek to the committed offsets after a table recovery, when records
                # had come before it against a committed offset read stale); or one below it
                # while nothing was admitted in this generation (an offset read ahead of the
                # group's: faust records a commit that failed in a rebalance)
                if expected is not None and committed is not None:
                    self.next[tp] = committed
                    self.sought.pop(tp, None)
                expected = committed if committed is not None else self.early.get(tp)
            if expected is not None and m.offset < expected and tp in self.next:
                held.append(e)  # a copy of a record admitted already
                continue
            if expected is not None and m.offset > expected:
                held.append(e)
                self.next[tp] = expected
                last = self.sought.get(tp)
                now = time.monotonic()
                if last is None or last[0] != expected or now - last[1] > self.RESEEK_S:
                    log.warning(
                        "%s/%d: offset %d delivered, %d expected: seeking back, holding the "
                        "partition's records until it comes",
                        tp.topic,
                        tp.partition,
                        m.offset,
                        expected,
                    )
                    self.sought[tp] = (expected, now)
                    await pos.seek(tp, expected)
                continue
            keep.append(e)
            self.admitted.add(tp)
            self.next[tp] = m.offset + 1
        return keep, held
