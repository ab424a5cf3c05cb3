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
