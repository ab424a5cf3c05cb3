"""The zombie fence (`streams.transport.fence`): a stateful worker writes a batch's state only
while its group coordinator confirms it is a member of the current generation, the one the batch
was fetched in; a confirmation lasts a third of the session timeout on the monotonic clock, so
a worker paused past its session always asks again. The coordinator is replaced by one that
answers with the error codes Kafka gives (0 none, 22 ILLEGAL_GENERATION, 25 UNKNOWN_MEMBER_ID,
27 REBALANCE_IN_PROGRESS)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiokafka.errors as kafka_errors
import pytest
from aiokafka.protocol.group import HeartbeatRequest_v0

from streams.agents._batches import fence_check, settle
from streams.transport import fence as fence_mod
from streams.transport.fence import Fence, Fenced, install_fence

NONE, ILLEGAL_GENERATION, UNKNOWN_MEMBER, REBALANCING = 0, 22, 25, 27


class Coordinator:
    group_id = "mohallamart-stock"

    def __init__(self, *answers: int | Exception, generation: int = 7) -> None:
        self.answers = list(answers)
        self.generation, self.member_id = generation, "member-1"
        self.asked: list[tuple[int, str]] = []

    async def ensure_coordinator_known(self) -> None:
        return None

    async def _send_req(self, request: Any) -> Any:
        built = request.build(HeartbeatRequest_v0)  # what goes on the wire
        self.asked.append((built.generation_id, built.member_id))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(error_code=answer)


class Thread:
    def __init__(self, coordinator: Coordinator) -> None:
        self.client = SimpleNamespace(_coordinator=coordinator)

    def _ensure_consumer(self) -> Any:
        return self.client

    async def call_thread(self, fun: Any) -> Any:
        return await fun()


class App:
    def __init__(self, coordinator: Coordinator) -> None:
        self.consumer = SimpleNamespace(_thread=Thread(coordinator))


def _event(generation: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(generation_id=generation, acked=False))


def test_a_member_is_confirmed_once_per_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(fence_mod.time, "monotonic", lambda: now[0])
    coordinator = Coordinator(NONE, NONE)
    fence = Fence(App(coordinator), session_timeout_s=3.0)  # type: ignore[arg-type]
    assert asyncio.run(fence.member()) is True
    now[0] += 0.9  # within the lease (1 s): no round trip
    assert asyncio.run(fence.member()) is True
    assert coordinator.asked == [(7, "member-1")]
    now[0] += 0.2  # past it: asked again
    assert asyncio.run(fence.member()) is True
    assert len(coordinator.asked) == 2


@pytest.mark.parametrize("answer", [ILLEGAL_GENERATION, UNKNOWN_MEMBER])
def test_a_worker_paused_past_its_session_is_refused_when_it_resumes(
    monkeypatch: pytest.MonkeyPatch, answer: int
) -> None:
    now = [1000.0]
    monkeypatch.setattr(fence_mod.time, "monotonic", lambda: now[0])
    coordinator = Coordinator(NONE, answer)
    app = App(coordinator)
    fence = install_fence(app, session_timeout_s=3.0)  # type: ignore[arg-type]
    batch = [_event(7), _event(7)]
    asyncio.run(fence_check(app, batch, "stock/reserve_stock"))  # type: ignore[arg-type]
    now[0] += 9.0  # SIGSTOP for three session timeouts; the monotonic clock ran on
    with pytest.raises(Fenced):
        asyncio.run(fence_check(app, batch, "stock/reserve_stock"))  # type: ignore[arg-type]
    assert len(coordinator.asked) == 2
    assert fence.confirmations == 2


def test_during_a_rebalance_the_member_still_owns_its_partitions() -> None:
    fence = Fence(App(Coordinator(REBALANCING)), session_timeout_s=3.0)  # type: ignore[arg-type]
    assert asyncio.run(fence.member()) is True


def test_a_batch_of_an_earlier_generation_is_abandoned_without_asking() -> None:
    coordinator = Coordinator(NONE)
    app = App(coordinator)
    install_fence(app, session_timeout_s=3.0)  # type: ignore[arg-type]
    with pytest.raises(Fenced):
        asyncio.run(fence_check(app, [_event(7), _event(6)], "stock"))  # type: ignore[arg-type]


def test_a_consumer_that_knows_it_was_expelled_writes_nothing() -> None:
    coordinator = Coordinator(generation=-1)  # aiokafka's reset_generation
    fence = Fence(App(coordinator), session_timeout_s=3.0)  # type: ignore[arg-type]
    assert asyncio.run(fence.member()) is False
    assert coordinator.asked == []


def test_an_unanswered_coordinator_is_a_dependency_down_not_a_verdict() -> None:
    coordinator = Coordinator(kafka_errors.KafkaConnectionError("broker gone"), NONE)
    fence = Fence(App(coordinator), session_timeout_s=3.0)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):  # the stage's guard retries it with backoff
        asyncio.run(fence.member())
    assert asyncio.run(fence.member()) is True


def test_a_role_without_a_fence_is_not_checked() -> None:
    app = App(Coordinator())  # no answers: a round trip would fail
    asyncio.run(fence_check(app, [_event(3)], "projections"))  # type: ignore[arg-type]


def test_a_fenced_batch_is_held_back_and_the_agent_goes_on() -> None:
    events = [_event(7), _event(7)]

    async def fenced() -> None:
        raise Fenced("stock/reserve_stock")

    asyncio.run(settle(events, fenced()))  # type: ignore[arg-type]
    # held: marked acked without their offsets recorded (they come again to the owner)
    assert all(e.message.acked for e in events)


def test_in_a_rebalance_no_round_trip_is_made_on_the_consumer_thread() -> None:
    """faust revokes from the consumer's thread and waits for the tables' flush: a round trip
    on that thread from the flush would wait forever (a stock worker hung so after a Kafka
    restart). A member keeping its generation is trusted until it gives its partitions up."""
    coordinator = Coordinator()  # no answers: a round trip would fail the test
    app = App(coordinator)
    app.rebalancing = True  # type: ignore[attr-defined]
    fence = Fence(app, session_timeout_s=3.0)  # type: ignore[arg-type]
    assert asyncio.run(fence.member()) is True
    assert coordinator.asked == []
    coordinator.generation = -1  # expelled: its heartbeat was refused before the revocation
    assert asyncio.run(fence.member()) is False
