"""The agents' offset continuity: each record of a partition admitted once, in order, a jump sought
back once and held until the record expected comes. Driven through the runtime's own `Positions`
contract (an in-memory one here); the faust side of it is exercised by the integration tests'
real workers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from faust.types import TP

from streams.transport import Continuity

A = TP("t", 0)
B = TP("t", 1)


@dataclass
class _Message:
    tp: TP
    offset: int


@dataclass
class _Event:
    message: _Message


@dataclass
class _Positions:
    """Committed offsets, a group generation and the seeks asked for, in memory."""

    committed_offsets: dict[TP, int]
    gen: int = 1
    seeks: list[tuple[TP, int]] = field(default_factory=list)
    sought_gen: int | None = 1  # the generation whose seek to the committed offsets is done

    def generation(self) -> int | None:
        return self.gen

    def sought(self) -> bool:
        return self.sought_gen == self.gen

    def committed(self, tp: TP) -> int | None:
        return self.committed_offsets.get(tp)

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


def _admit(c: Continuity, *offsets: tuple[TP, int]) -> tuple[list[tuple[TP, int]], list[int]]:
    events = [_Event(_Message(tp, o)) for tp, o in offsets]
    kept, held = asyncio.run(c.admit(events))  # type: ignore[arg-type]
    return [(e.message.tp, e.message.offset) for e in kept], [e.message.offset for e in held]


def test_in_order_records_are_admitted_and_a_jump_is_sought_back_once_and_held() -> None:
    pos = _Positions({A: 10, B: 0})
    c = Continuity(pos)
    assert _admit(c, (A, 10), (B, 0), (A, 11)) == ([(A, 10), (B, 0), (A, 11)], [])
    # 12..14 skipped by the consumer: held, sought back to 12 once; B keeps flowing
    assert _admit(c, (A, 15), (B, 1), (A, 16)) == ([(B, 1)], [15, 16])
    assert _admit(c, (A, 17)) == ([], [17])
    assert pos.seeks == [(A, 12)]
    # the records sought come; a copy of one admitted already is held, not processed twice
    assert _admit(c, (A, 12), (A, 13), (A, 12), (A, 14), (A, 15)) == (
        [(A, 12), (A, 13), (A, 14), (A, 15)],
        [12],
    )


def test_a_seek_is_repeated_only_after_a_while_and_a_rebalance_starts_afresh() -> None:
    pos = _Positions({A: 5})
    c = Continuity(pos)
    c.RESEEK_S = 0.0
    assert _admit(c, (A, 7)) == ([], [7])
    assert _admit(c, (A, 8)) == ([], [8])
    assert pos.seeks == [(A, 5), (A, 5)]
    pos.gen = pos.sought_gen = 2
    pos.committed_offsets[A] = 8
    assert _admit(c, (A, 8)) == ([(A, 8)], [])


def test_a_committed_offset_that_moves_past_the_one_expected_is_followed() -> None:
    # Seen in the drill: two stock workers joining at once, records delivered during the table
    # recovery, before faust's seek to the committed offsets: the committed offset read then
    # was stale (53; the other worker had committed 143 in the generation between). Sought back
    # to 53 and held; then faust sought to 143 and the records from 143 came, held for ever
    # against 53 (the worker Ready, fetching, and accepting nothing).
    pos = _Positions({A: 53})
    c = Continuity(pos)
    assert _admit(c, (A, 143), (A, 144)) == ([], [143, 144])
    assert pos.seeks == [(A, 53)]
    pos.committed_offsets[A] = 143  # faust's seek to the committed offsets, within the generation
    assert _admit(c, (A, 143), (A, 144), (A, 145)) == ([(A, 143), (A, 144), (A, 145)], [])
    # and once admitted from there, a copy below is still held
    assert _admit(c, (A, 144)) == ([], [144])


def test_an_offset_read_ahead_of_the_groups_is_followed_down_until_a_record_is_admitted() -> None:
    # Seen in the zombie test: a commit failed in a rebalance (895), faust recorded it anyway;
    # in the next generation the expected offset was read as 895, the records 885..894 came after
    # faust's seek to the group's true offset (885) and were held as copies for ever (the commit
    # stuck at 885 until the worker's watchdog ended it).
    pos = _Positions({A: 895})
    c = Continuity(pos)
    assert _admit(c, (A, 962)) == ([], [962])
    pos.committed_offsets[A] = 885  # faust's seek to the group's committed offsets
    assert _admit(c, (A, 885), (A, 886)) == ([(A, 885), (A, 886)], [])
    # once a record is admitted in the generation, one below it is a copy again
    pos.committed_offsets[A] = 880
    assert _admit(c, (A, 885)) == ([], [885])


def test_a_commit_that_failed_is_not_recorded_as_the_groups_offset(monkeypatch: Any) -> None:
    """faust records the offsets of a commit as committed whatever its outcome; the transport's
    consumer keeps the group's: continuity reads it (the test above)."""
    from collections import defaultdict

    from faust.transport import consumer as faust_consumer

    from streams.transport.driver import Consumer

    outcome = [False]

    async def faust_commit(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        did_commit = await self._commit(offsets)
        self._committed_offset.update(offsets)  # as faust does, committed or not
        return bool(did_commit)

    async def kafka_commit(self: Any, offsets: Any) -> bool:
        return outcome[0]

    monkeypatch.setattr(faust_consumer.Consumer, "_commit_offsets", faust_commit)
    monkeypatch.setattr(faust_consumer.ThreadDelegateConsumer, "_commit", kafka_commit)
    c: Any = object.__new__(Consumer)
    c.__dict__["_committed_offset"] = defaultdict(lambda: None, {A: 885})
    c.__dict__["_mm_group"] = {A: 885}  # what the assignment's seek read
    assert asyncio.run(c._commit_offsets({A: 895, B: 10})) is False  # a rebalance in progress
    assert (c._committed_offset[A], c._committed_offset[B]) == (885, None)
    outcome[0] = True
    assert asyncio.run(c._commit_offsets({A: 895, B: 10})) is True
    assert (c._committed_offset[A], c._committed_offset[B]) == (895, 10)


def test_a_failed_commit_puts_back_the_offset_of_an_assignment_made_during_it(
    monkeypatch: Any,
) -> None:
    """A commit's awaits (the producer's flush, the request) can span a rebalance whose seek reads
    the group's offsets anew: a failed commit puts back those, not the ones from before it (seen
    in CI: 288 put back over 328, and the commits stopped until the watchdog ended the worker)."""
    from collections import defaultdict

    from faust.transport import consumer as faust_consumer

    from streams.transport.driver import Consumer

    c: Any = object.__new__(Consumer)
    c.__dict__["_committed_offset"] = defaultdict(lambda: None, {A: 288})
    c.__dict__["_mm_group"] = {A: 288}

    async def faust_commit(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        # meanwhile the next assignment's seek read the group's offset (another commit of the
        # old generation had gone through: 328)
        self._committed_offset[A] = 328
        self.__dict__["_mm_group"] = dict(self._committed_offset)
        self._committed_offset.update(offsets)  # as faust does, committed or not
        return False

    monkeypatch.setattr(faust_consumer.Consumer, "_commit_offsets", faust_commit)
    assert asyncio.run(c._commit_offsets({A: 339})) is False
    assert c._committed_offset[A] == 328


def test_nothing_is_admitted_in_a_generation_before_its_seek_to_the_committed_offsets() -> None:
    # Seen in CI's drill (a stock worker's commits stopped until its watchdog ended it, twice):
    # faust resumed the flow before its seek to the committed offsets; 737..740 were processed
    # and acknowledged, the seek dropped those acknowledgements and delivered them again, and
    # they were held as copies for ever (the commit stuck at 737, 61 offsets acked above it).
    pos = _Positions({A: 730}, gen=7, sought_gen=6)
    c = Continuity(pos)
    assert _admit(c, (A, 737), (A, 738), (A, 739), (A, 740)) == ([], [737, 738, 739, 740])
    assert pos.seeks == []  # faust's own seek is coming
    pos.committed_offsets[A] = 737
    pos.sought_gen = 7  # faust's seek: 737 and on come again
    assert _admit(c, (A, 737), (A, 738), (A, 739), (A, 740), (A, 741)) == (
        [(A, 737), (A, 738), (A, 739), (A, 740), (A, 741)],
        [],
    )


def test_the_transport_consumer_names_the_generation_its_seek_completed_in(
    monkeypatch: Any,
) -> None:
    from types import SimpleNamespace

    from faust.transport import consumer as faust_consumer

    from streams.transport import AppPositions
    from streams.transport.driver import Consumer

    app = SimpleNamespace(consumer_generation_id=7)

    async def faust_seek(self: Any) -> None:
        self._committed_offset.update({A: 737})

    monkeypatch.setattr(faust_consumer.Consumer, "perform_seek", faust_seek)
    c: Any = object.__new__(Consumer)
    c.__dict__.update(app=app, _committed_offset={}, _acked={}, _acked_index={})
    app.consumer = c  # type: ignore[attr-defined]
    positions = AppPositions(app)  # type: ignore[arg-type]
    assert c.sought_generation is None and not positions.sought()
    asyncio.run(c.perform_seek())
    assert c.sought_generation == 7 and positions.sought()
    app.consumer_generation_id = 8  # the next rebalance: not sought until its own seek
    assert not positions.sought()


def test_a_seek_of_partitions_with_no_offset_read_yet_leaves_them_where_they_are(
    monkeypatch: Any,
) -> None:
    """Seen in the drill (a stock worker ended with status 1): a rebalance during a table
    recovery added standby partitions with no offset (None), and the recovery under way sought
    them there; aiokafka raised and faust's recovery crashed the worker."""
    from faust.transport import consumer as faust_consumer

    from streams.transport.driver import Consumer

    sought: list[dict[TP, int]] = []

    async def faust_seek_wait(self: Any, partitions: dict[TP, int]) -> None:
        if any(not isinstance(o, int) or o < 0 for o in partitions.values()):
            raise ValueError("Offset must be a positive integer")  # as aiokafka does
        sought.append(dict(partitions))

    monkeypatch.setattr(faust_consumer.ThreadDelegateConsumer, "seek_wait", faust_seek_wait)
    c: Any = object.__new__(Consumer)
    asyncio.run(c.seek_wait({A: 12, B: None}))
    assert sought == [{A: 12}]


def test_an_offset_below_the_groups_is_not_committed(monkeypatch: Any) -> None:
    """Seen in the full drill's `clock` row: offsets read before faust's producer flush (11160)
    were committed after an assignment made during the flush had sought the partition to the
    group's offset, moved on by the other worker (11184): the group's offset went back, faust
    recorded it, and with every record from 11184 on acknowledged the commit stopped for good."""
    from collections import defaultdict

    from faust.transport import consumer as faust_consumer

    from streams.transport.driver import Consumer

    c: Any = object.__new__(Consumer)
    c.__dict__["_committed_offset"] = defaultdict(lambda: None, {A: 11100, B: 50})
    c.__dict__["_mm_group"] = {A: 11100, B: 50}
    committed: list[dict[TP, int]] = []

    async def faust_commit(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        # during the producer's flush, the next assignment's seek reads the group's offsets
        self._committed_offset[A] = 11184
        self.__dict__["_mm_group"] = dict(self._committed_offset)
        did_commit = await self._commit(offsets)
        self._committed_offset.update(offsets)  # as faust does
        return bool(did_commit)

    async def kafka_commit(self: Any, offsets: Any) -> bool:
        committed.append(dict(offsets))
        return True

    monkeypatch.setattr(faust_consumer.Consumer, "_commit_offsets", faust_commit)
    monkeypatch.setattr(faust_consumer.ThreadDelegateConsumer, "_commit", kafka_commit)
    assert asyncio.run(c._commit_offsets({A: 11160, B: 60})) is True
    assert committed == [{B: 60}]  # A's offset is older than the group's: not sent
    assert (c._committed_offset[A], c._committed_offset[B]) == (11184, 60)
    assert c.__dict__["_mm_group"] == {A: 11184, B: 60}
    # all of them stale: nothing is sent, nothing recorded
    assert asyncio.run(c._commit_offsets({A: 11170})) is False
    assert committed == [{B: 60}] and c._committed_offset[A] == 11184


def test_a_partition_with_no_committed_offset_expects_the_lowest_record_held_before_the_seek() -> (
    None
):
    # Seen in CI (the analytics test's worker, a new group): records 0..2 came before faust's
    # seek and were held; that seek does not move a partition with no committed offset, so
    # they never came again, and the worker waited for them for ever (its drill point unmet).
    pos = _Positions({}, gen=3, sought_gen=2)
    c = Continuity(pos)
    assert _admit(c, (A, 0), (A, 1), (A, 2)) == ([], [0, 1, 2])
    pos.sought_gen = 3  # faust's seek: nothing to seek A to
    assert _admit(c, (A, 3), (A, 4)) == ([], [3, 4])
    assert pos.seeks == [(A, 0)]  # sought back to the lowest held
    assert _admit(c, (A, 0), (A, 1), (A, 2), (A, 3)) == ([(A, 0), (A, 1), (A, 2), (A, 3)], [])


def test_nothing_is_committed_between_an_assignment_and_its_seek(monkeypatch: Any) -> None:
    """CI: offsets computed from acknowledgements of before an assignment were committed after
    it (3449, under the 3526 the other worker had committed in between): the group's offset went
    back and this worker's commits stopped."""
    from collections import defaultdict
    from types import SimpleNamespace

    from faust.transport import consumer as faust_consumer

    from streams.transport.driver import Consumer

    sent: list[dict[TP, int]] = []

    async def kafka_commit(self: Any, offsets: Any) -> bool:
        sent.append(dict(offsets))
        return True

    monkeypatch.setattr(faust_consumer.ThreadDelegateConsumer, "_commit", kafka_commit)
    c: Any = object.__new__(Consumer)
    c.__dict__.update(
        app=SimpleNamespace(consumer_generation_id=4),
        _committed_offset=defaultdict(lambda: None, {A: 3449}),
        _mm_group={A: 3449},
        _mm_sought_generation=3,  # generation 4 assigned, its seek not done yet
    )
    assert asyncio.run(c._commit({A: 3449})) is False
    assert sent == []
    c.__dict__["_mm_sought_generation"] = 4
    assert asyncio.run(c._commit({A: 3460})) is True
    assert sent == [{A: 3460}]


def test_the_generations_seek_moves_a_partition_never_committed_to_its_first_offset(
    monkeypatch: Any,
) -> None:
    """faust's seek to the committed offsets leaves a partition the group never committed where
    it is: records fetched before it (held, or dropped with the last generation) never came
    again, and a restarted analytics worker of a fresh group stood still until the commit
    watchdog ended it. It is sought to the first offset this consumer fetched of it; a
    committed partition and a table's changelog are left to faust."""
    from types import SimpleNamespace

    from faust.transport import consumer as faust_consumer

    from streams.transport.driver import Consumer

    changelog = TP("app-table-changelog", 0)
    app = SimpleNamespace(
        consumer_generation_id=3,
        tables=SimpleNamespace(
            values=lambda: [
                SimpleNamespace(
                    changelog_topic=SimpleNamespace(get_topic_name=lambda: changelog.topic)
                )
            ]
        ),
    )

    async def faust_seek(self: Any) -> None:
        self._committed_offset.update({A: 737})  # B: never committed

    sought: list[dict[TP, int]] = []

    async def seek_wait(partitions: dict[TP, int]) -> None:
        sought.append(dict(partitions))

    monkeypatch.setattr(faust_consumer.Consumer, "perform_seek", faust_seek)
    c: Any = object.__new__(Consumer)
    c.__dict__.update(
        app=app,
        _committed_offset={},
        _acked={B: [12, 13]},
        _acked_index={B: {12, 13}},
        _mm_first_offset={A: 700, B: 12, changelog: 0},
        _thread=SimpleNamespace(assignment=lambda: {A, B, changelog}, seek_wait=seek_wait),
    )
    asyncio.run(c.perform_seek())
    assert sought == [{B: 12}]
    assert not c._acked.get(B)  # its records come again: their acknowledgements go
    assert c.sought_generation == 3
