"""The agents' offset continuity: each record of a partition admitted once, in order, a jump sought
back once and held until the record expected comes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from streams.agents._batches import _Continuity

A = TP("t", 0)
B = TP("t", 1)


@dataclass
class _Message:
    tp: TP
    offset: int
    acked: bool = False


@dataclass
class _Event:
    message: _Message


@dataclass
class _Thread:
    seeks: list[dict[TP, int]] = field(default_factory=list)

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.seeks.append(dict(partitions))


@dataclass
class _Consumer:
    _committed_offset: dict[TP, int]
    _thread: _Thread = field(default_factory=_Thread)


@dataclass
class _App:
    consumer: _Consumer
    consumer_generation_id: int = 1


def _admit(c: _Continuity, *offsets: tuple[TP, int]) -> tuple[list[tuple[TP, int]], list[int]]:
    events = [_Event(_Message(tp, o)) for tp, o in offsets]
    kept = asyncio.run(c.admit(events))  # type: ignore[arg-type]
    held = [e.message.offset for e in events if e.message.acked]
    return [(e.message.tp, e.message.offset) for e in kept], held


def test_in_order_records_are_admitted_and_a_jump_is_sought_back_once_and_held() -> None:
    app: Any = _App(_Consumer({A: 10, B: 0}))
    c = _Continuity(app)
    assert _admit(c, (A, 10), (B, 0), (A, 11)) == ([(A, 10), (B, 0), (A, 11)], [])
    # 12..14 skipped by the consumer: held, sought back to 12 once; B keeps flowing
    assert _admit(c, (A, 15), (B, 1), (A, 16)) == ([(B, 1)], [15, 16])
    assert _admit(c, (A, 17)) == ([], [17])
    assert app.consumer._thread.seeks == [{A: 12}]
    # the records sought come; a copy of one admitted already is held, not processed twice
    assert _admit(c, (A, 12), (A, 13), (A, 12), (A, 14), (A, 15)) == (
        [(A, 12), (A, 13), (A, 14), (A, 15)],
        [12],
    )


def test_a_seek_is_repeated_only_after_a_while_and_a_rebalance_starts_afresh() -> None:
    app: Any = _App(_Consumer({A: 5}))
    c = _Continuity(app)
    c.RESEEK_S = 0.0
    assert _admit(c, (A, 7)) == ([], [7])
    assert _admit(c, (A, 8)) == ([], [8])
    assert app.consumer._thread.seeks == [{A: 5}, {A: 5}]
    app.consumer_generation_id = 2
    app.consumer._committed_offset[A] = 8
    assert _admit(c, (A, 8)) == ([(A, 8)], [])


def test_records_of_paused_partitions_are_handed_on_those_of_revoked_ones_are_not() -> None:
    from types import SimpleNamespace

    from streams.app import _Assigned

    consumer = SimpleNamespace(_active_partitions={A}, _paused_partitions={B})
    assigned = _Assigned(consumer)
    assert A in assigned and B in assigned  # paused while its fetch was in flight: kept
    consumer._paused_partitions.discard(B)  # revoked: neither active nor paused
    assert B not in assigned
    consumer._active_partitions = None  # before the first assignment
    assert A not in assigned
