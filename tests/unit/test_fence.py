"""The zombie fence (`streams.transport.fence`): a stateful worker writes a batch's state only
while its group coordinator confirms it is a member of the current generation, the one the batch
was fetched in; a confirmation lasts a third of the session timeout on the monotonic clock, so
a worker paused past its session always asks again. The coordinator is replaced by one that
answers with the error codes Kafka gives (0 none, 22 ILLEGAL_GENERATION, 25 UNKNOWN_MEMBER_ID,
27 REBALANCE_IN_PROGRESS)."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import aiokafka.errors as kafka_errors
import pytest
from aiokafka.protocol.group import HeartbeatRequest_v0
from faust.types import TP
from mode import Signal

from streams.agents._batches import fence_check, settle
from streams.transport import fence as fence_mod
from streams.transport.fence import (
    EXIT_FENCED,
    GENERATION_HEADER,
    Fence,
    Fenced,
    install_fence,
    stamp_generation,
)

NONE, ILLEGAL_GENERATION, UNKNOWN_MEMBER, REBALANCING = 0, 22, 25, 27
NO_ANSWER = -100  # the request is sent, no answer comes


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
        if answer == NO_ANSWER:
            await asyncio.Event().wait()
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(error_code=answer)


class Thread:
    """faust's consumer thread: aiokafka runs on a loop of its own thread. Its method queue is
    taken to be busy (both workers waiting for a rebalance): the fence must not need it."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.client = SimpleNamespace(_coordinator=coordinator)
        self.thread_loop = asyncio.new_event_loop()
        threading.Thread(target=self.thread_loop.run_forever, daemon=True).start()

    def _ensure_consumer(self) -> Any:
        return self.client

    async def call_thread(self, fun: Any) -> Any:
        await asyncio.Event().wait()  # the method queue's workers are all busy


class App:
    def __init__(self, coordinator: Coordinator) -> None:
        self.consumer = SimpleNamespace(_thread=Thread(coordinator))
        # faust's signal, sent once a rebalance's revoked partitions are given up
        self.on_partitions_revoked = Signal().with_default_sender(self)
        self.should_stop = False


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


def test_a_coordinator_that_does_not_answer_is_no_confirmation_and_no_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A changelog send waits for this answer and a rebalance waits for the changelog: the ask
    # ends within the lease, as a dependency down (retried), never blocks the worker.
    coordinator = Coordinator(NO_ANSWER, NONE)
    fence = Fence(App(coordinator), session_timeout_s=0.3)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="did not answer"):
        asyncio.run(fence.member())
    assert time.monotonic() - started < 5
    assert asyncio.run(fence.member()) is True
    assert fence.confirmations == 1


# --- a zombie's late changelog records, at restore ------------------------------------------------
def _changelog(tmp_path: Any) -> tuple[Any, TP]:
    import faust

    from streams.transport.table import Table

    app = faust.App("t-fence", store="rocksdb://", datadir=str(tmp_path), autodiscover=False)
    app.conf.Table = Table
    table = app.Table("stock", default=None, partitions=1, key_type=str, value_type=int)
    return table, TP(table.changelog_topic.get_topic_name(), 0)


def _record(tp: TP, offset: int, value: int, generation: int | None, at: float) -> Any:
    headers = [] if generation is None else [(GENERATION_HEADER, str(generation).encode())]
    message = SimpleNamespace(
        tp=tp,
        partition=tp.partition,
        offset=offset,
        key=b'"prd_1"',
        value=str(value).encode(),
        headers=headers,
        timestamp=at,
    )
    return SimpleNamespace(message=message, key=message.key, value=message.value)


def test_a_restore_skips_a_paused_workers_records_that_landed_after_the_next_owners(
    tmp_path: Any,
) -> None:
    table, tp = _changelog(tmp_path)
    table.apply_changelog_batch(
        [
            _record(tp, 0, 40, generation=4, at=100.0),  # the worker, before its pause
            _record(tp, 1, 38, generation=5, at=110.0),  # the next owner, after the session
            _record(tp, 2, 39, generation=4, at=100.5),  # the zombie's record, sent on resume
            _record(tp, 3, 37, generation=5, at=111.0),
            _record(tp, 4, 36, generation=4, at=100.6),
        ]
    )
    assert table.data["prd_1"] == 37  # the next owner's last write, not the zombie's
    assert table.changelog_order.skipped == 2
    # a later restore starts past the skipped records (it does not meet them again)
    assert table.data.persisted_offset(tp) == 4


def test_a_group_that_began_again_and_records_without_a_generation_are_applied(
    tmp_path: Any,
) -> None:
    table, tp = _changelog(tmp_path)
    table.apply_changelog_batch(
        [
            _record(tp, 0, 40, generation=9, at=100.0),
            _record(tp, 1, 41, generation=None, at=101.0),  # written before the header existed
            # the group's metadata deleted (all workers gone for days): generations begin again
            _record(tp, 2, 30, generation=1, at=900_000.0),
            _record(tp, 3, 31, generation=2, at=900_010.0),
        ]
    )
    assert table.data["prd_1"] == 31
    assert table.changelog_order.skipped == 0


def test_a_fenced_roles_changelog_records_carry_their_writers_generation() -> None:
    from faust.types.tuples import FutureMessage, PendingMessage

    message = PendingMessage(None, "c", b"k", b"v", 0, None, None, None, None, None, None)  # type: ignore[arg-type]
    fut = FutureMessage(message)
    stamp_generation(fut, 12)
    assert fut.message.headers == [(GENERATION_HEADER, b"12")]
    assert fence_mod.generation_of(fut.message.headers) == 12


# --- a worker expelled while it held partitions ends, to restore its tables ----------------------
class Exited(BaseException):
    pass


def _exit_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def exit_(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(fence_mod.os, "_exit", exit_)


def test_a_worker_expelled_while_it_held_partitions_exits_at_their_revocation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _exit_raises(monkeypatch)
    coordinator = Coordinator()
    app = App(coordinator)
    fence = install_fence(app, session_timeout_s=3.0)  # type: ignore[arg-type]
    revoked = {TP("mohallamart.stock.by-shop", 1)}
    fence.written += 3  # its changelog buffer took records
    # a rebalance it takes part in (its generation kept until it joins again): it stays
    asyncio.run(app.on_partitions_revoked.send(revoked))
    # expelled in its recovery, before any write of its own: it stays (nothing can land late)
    coordinator.generation, coordinator.member_id = -1, ""
    asyncio.run(app.on_partitions_revoked.send(revoked))
    # joined again and wrote; then its heartbeat was refused after a pause (aiokafka resets
    # generation and member id)
    coordinator.generation, coordinator.member_id = 9, "member-2"
    fence.written += 1
    coordinator.generation, coordinator.member_id = -1, ""
    with pytest.raises(Exited) as exited:
        asyncio.run(app.on_partitions_revoked.send(revoked))
    assert exited.value.args == (EXIT_FENCED,)


def test_a_first_join_or_a_stop_is_not_an_expulsion(monkeypatch: pytest.MonkeyPatch) -> None:
    _exit_raises(monkeypatch)
    coordinator = Coordinator(generation=-1)
    coordinator.member_id = ""
    app = App(coordinator)
    fence = install_fence(app, session_timeout_s=3.0)  # type: ignore[arg-type]
    fence.written += 1
    asyncio.run(app.on_partitions_revoked.send(set()))  # before the first join: nothing held
    fence.written += 1
    app.should_stop = True  # left the group at its stop
    asyncio.run(app.on_partitions_revoked.send({TP("mohallamart.stock.by-shop", 1)}))


def test_a_restore_after_the_workers_own_writes_skips_a_zombies_late_record(
    tmp_path: Any,
) -> None:
    """The worker took the partition over (generation 5) and wrote; a zombie's record of
    generation 4 landed after its last own record, where a later restore in this process starts
    (faust's restore position is the store's last own record): it is not applied."""
    table, tp = _changelog(tmp_path)
    table.apply_changelog_batch([_record(tp, 0, 40, generation=4, at=100.0)])
    table.changelog_order.wrote(tp, [(GENERATION_HEADER, b"5")], 110.0)  # its own, delivered
    table.apply_changelog_batch([_record(tp, 7, 39, generation=4, at=100.5)])
    assert table.data["prd_1"] == 40
    assert table.changelog_order.skipped == 1
