"""What the commit watchdog asks of the consumer (`streams.app`'s `_commit_check`)."""

from __future__ import annotations

from typing import Any


def test_commits_wait_for_kafka_while_the_group_coordinator_is_unknown() -> None:
    """The commit watchdog leaves a worker alone while its consumer knows no group coordinator
    (brokers down: aiokafka's commits wait for one); a workflows worker was ended as stuck
    while two of three brokers were down."""
    from types import SimpleNamespace

    from streams.transport import coordinator_known

    def app(coordinator_id: int | None) -> Any:
        coordinator = SimpleNamespace(coordinator_id=coordinator_id)
        inner = SimpleNamespace(_coordinator=coordinator)
        return SimpleNamespace(consumer=SimpleNamespace(_thread=SimpleNamespace(_consumer=inner)))

    assert not coordinator_known(app(None))
    assert coordinator_known(app(4))
    assert coordinator_known(SimpleNamespace(consumer=SimpleNamespace()))  # not started yet


def test_a_partition_never_committed_starts_at_the_first_offset_fetched() -> None:
    """A worker whose first commits failed in a rebalance was handed, in its next generation,
    records past some it had fetched and never processed, and took them for the partition's
    first (offset continuity and the commit watchdog saw no committed offset: two orders'
    `order.created` skipped for 10 minutes in CI's drill). Continuity and the watchdog now
    measure such a partition from the first offset the consumer fetched of it."""
    from types import SimpleNamespace

    from faust.types import TP

    from streams.transport import AppPositions, commit_positions, start_offset

    never, committed = TP("orders", 0), TP("orders", 1)
    consumer = SimpleNamespace(
        _committed_offset={committed: 40},
        _mm_first_offset={never: 0, committed: 12},
        _paused_partitions=set(),
    )
    app: Any = SimpleNamespace(consumer=consumer, tables=SimpleNamespace(values=list))
    assert start_offset(app, never) == 0
    assert start_offset(app, committed) == 40
    assert start_offset(app, TP("orders", 2)) is None  # not fetched yet: not known
    assert AppPositions(app).committed(never) == 0
    assert commit_positions(app) == {}  # no assignment read yet: nothing watched
