"""Zombie fencing for the stateful roles: a worker confirms it is still a member of its group's
current generation before it writes state (its changelog-backed tables).

A worker paused past its session timeout (SIGSTOP, a stalled VM, a GC pause) is expelled from its
group and its partitions go to another worker, which restores the tables from their changelogs.
When the paused worker resumes it does not know yet: its heartbeat has not been answered. Without
a fence it would finish the batch in hand and append to changelog partitions it no longer owns,
after the new owner restored them: the next restore would read a state nobody decided.

The rule (`Fence`), before a batch's state is written and before each changelog record leaves:
- a batch fetched in an earlier generation than the consumer's current one is abandoned (never
  acknowledged: its records come again to whichever worker owns them now);
- the member's generation is confirmed with the group coordinator (a Heartbeat request with the
  member id and generation: the coordinator answers ILLEGAL_GENERATION or UNKNOWN_MEMBER_ID to an
  expelled member). A confirmation holds for a lease of a third of the session timeout, measured
  on the monotonic clock, which keeps running while a process is stopped: a worker that was
  paused long enough to be expelled always asks again before it writes.
- an expelled member writes nothing: its batch is abandoned (`Fenced`), and a changelog record
  already queued is dropped and counted (its local store is then distrusted and restored from
  the changelog at the next assignment, `streams.app.distrust_crashed_stores`).
- an expelled member that still held partitions, and wrote to their changelogs, ends (status
  `EXIT_FENCED`) when its consumer revokes them, before it joins again: its supervisor starts
  it again and its tables are restored from the changelogs alone. Records it had handed to its
  Kafka client before a pause land after the next owner's, and faust records the changelog
  offset of each of its own records as it is delivered (the local store's restore position):
  had it taken such a partition back, its restore would have started after the other owner's
  writes, and it decided from a state without them (the drill's pause row: two stock movements
  of one sequence).

What no check in the process can see: a pause after the last check, with records already handed
to the Kafka client (in its accumulator, or in flight). On resume the client sends them, and they
land in the changelog after the next owner's first writes. Kafka's remedy is a transactional
producer per partition, which this project does not use (librdkafka lacks KIP-890, and faust's
transactions commit every partition at once). Here every changelog record carries its writer's
group generation (`GENERATION_HEADER`, stamped as the table write is made), and a restore skips a
record of an older generation than one already applied in that partition when it was also
created before that generation's first record (`ChangelogOrder`): the zombie's late records
never reach the restored table. (The drill's pause row found 7 products whose movement chains a
zombie's late records broke at the next restore.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka.protocol.group import HeartbeatRequest
from faust.types import TP, AppT
from prometheus_client import Counter

__all__ = [
    "EXIT_FENCED",
    "GENERATION_HEADER",
    "ChangelogOrder",
    "Fence",
    "Fenced",
    "fence_of",
    "install_fence",
    "stamp_generation",
]

log = logging.getLogger(__name__)

WRITTEN = Counter(
    "mohallamart_worker_changelog_records_total",
    "Table changelog records a stateful worker queued for Kafka since it started",
)

#: exit status of a worker expelled with state not written (EX_TEMPFAIL: its supervisor restarts
#: it, and its tables are restored from their changelogs)
EXIT_FENCED = 75

FENCED = Counter(
    "mohallamart_worker_fenced_total",
    "Batches abandoned and changelog records dropped because this worker was no longer a member "
    "of its group's current generation (a zombie fenced)",
    ["what"],
)

#: answers meaning "this member still owns its partitions" (during a rebalance it does, until it
#: gives them up itself)
_MEMBER = (kafka_errors.NoError, kafka_errors.RebalanceInProgressError)
#: answers meaning "expelled": the group has moved on without this member
_EXPELLED = (kafka_errors.IllegalGenerationError, kafka_errors.UnknownMemberIdError)


class Fenced(BaseException):  # noqa: N818 - a signal like CancelledError, not an error
    """This worker is not a member of its group's current generation: the batch in hand is
    abandoned and nothing of it is written. A BaseException so that no `except Exception` of a
    stage takes it for a failing record (a retry, a dead letter)."""


class _Unconfirmed(Exception):  # noqa: N818
    """The coordinator did not answer: membership is not known (a retryable dependency)."""


class Fence:
    """The membership checks of one worker (its app's consumer)."""

    def __init__(self, app: AppT, session_timeout_s: float) -> None:
        self.app = app
        self.lease_s = session_timeout_s / 3
        self._confirmed: tuple[int, str] | None = None  # (generation, member) confirmed
        self._confirmed_at = float("-inf")  # monotonic time the confirming request was sent
        self.confirmations = 0  # round trips made (for tests and the benchmark)
        #: changelog records queued since the last revocation (`note_write`)
        self.written = 0

    # --- what the coordinator knows of this member -------------------------------------------
    def _coordinator(self) -> Any:
        consumer: Any = self.app.consumer
        thread = getattr(consumer, "_thread", None)
        client = thread._ensure_consumer() if thread is not None else None
        return None if client is None else client._coordinator

    def _member(self) -> tuple[int, str]:
        coordinator = self._coordinator()
        if coordinator is None:
            return -1, ""
        return int(coordinator.generation), str(coordinator.member_id or "")

    async def _ask(self, generation: int, member: str) -> bool:
        """True: the coordinator confirms `member` in `generation`; False: expelled."""
        consumer: Any = self.app.consumer
        thread = consumer._thread
        coordinator = self._coordinator()

        async def heartbeat() -> Any:
            await coordinator.ensure_coordinator_known()
            return await coordinator._send_req(
                HeartbeatRequest(coordinator.group_id, generation, member)
            )

        # On the consumer thread's loop (aiokafka is bound to it), not through its method queue:
        # that queue has two workers, which faust's own calls may both hold while they wait
        # for a rebalance, itself waiting for this worker's table flush, itself waiting for
        # this answer. Bounded: an answer that does not come in a lease is no confirmation.
        sent = asyncio.run_coroutine_threadsafe(heartbeat(), thread.thread_loop)
        try:
            response = await asyncio.wait_for(asyncio.wrap_future(sent), self.lease_s)
        except TimeoutError:
            sent.cancel()
            raise _Unconfirmed(
                f"the group coordinator did not answer in {self.lease_s:.1f} s"
            ) from None
        except kafka_errors.KafkaError as exc:
            raise _Unconfirmed(f"the group coordinator did not answer: {exc}") from None
        error = kafka_errors.for_code(response.error_code)
        if error in _MEMBER:
            return True
        if error in _EXPELLED:
            return False
        raise _Unconfirmed(f"the group coordinator answered {error.__name__}")

    async def member(self) -> bool:
        """Whether this worker is (still) a member of its group's current generation; a round
        trip to the coordinator at most once per lease. Raises ConnectionError when the
        coordinator does not answer (a dependency down: the caller retries)."""
        generation, member = self._member()
        if generation < 0 or not member:
            return False  # the consumer itself knows it was expelled (or has not joined)
        if getattr(self.app, "rebalancing", False):
            # In a rebalance the consumer's thread waits for this one (faust revokes, flushing
            # the tables, from it): a round trip on that thread would never return (a stock
            # worker hung after a Kafka restart in CI). A member still holding its generation
            # owns its partitions until it gives them up; an expelled one has reset its
            # generation when its heartbeat was refused, before any revocation (seen above).
            return True
        now = time.monotonic()
        if self._confirmed == (generation, member) and now - self._confirmed_at < self.lease_s:
            return True
        try:
            ok = await self._ask(generation, member)
        except _Unconfirmed as exc:
            raise ConnectionError(str(exc)) from None
        self.confirmations += 1
        if ok:
            self._confirmed, self._confirmed_at = (generation, member), now
        else:
            self._confirmed = None
        return ok

    def note_write(self) -> None:
        """A changelog record of this worker's tables was queued for Kafka."""
        self.written += 1
        WRITTEN.inc()

    def expelled(self) -> bool:
        """Whether this worker's consumer has been told it is no longer a member of its group: a
        heartbeat, commit or sync answered UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION, and the
        consumer reset its generation (also so before its first join, and after it left)."""
        generation, member = self._member()
        return generation < 0 or not member

    async def check(self, generations: Iterable[int | None], what: str) -> None:
        """Before a batch's state is written: raise `Fenced` unless every record of the batch
        was fetched in the consumer's current generation and the coordinator confirms it."""
        current, _member = self._member()
        stale = {g for g in generations if g is not None and g != current}
        if stale or not await self.member():
            FENCED.labels(what).inc()
            log.warning(
                "%s: this worker is not a member of its group's current generation (batch of "
                "generation %s, the consumer's %s): the batch is abandoned, its records come "
                "again to the partitions' owner",
                what,
                ",".join(map(str, sorted(stale))) or current,
                current,
            )
            raise Fenced(what)


_FENCES: weakref.WeakKeyDictionary[Any, Fence] = weakref.WeakKeyDictionary()


def install_fence(app: AppT, session_timeout_s: float) -> Fence:
    """Fence `app`'s state writes (the stateful roles: their agents check before a batch's
    writes, the changelog buffer before each record leaves)."""
    fence = _FENCES[app] = Fence(app, session_timeout_s)

    def end_if_expelled(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked")
        leave_if_expelled(fence, revoked, stopping=bool(getattr(app, "should_stop", False)))

    # faust sends it once the partitions are given up (agents idle, its buffer flushed), before
    # the consumer joins again; a strong reference, held by the app for its life
    revocations: Any = app.on_partitions_revoked  # mode's handler type is not expressible here
    revocations.connect(end_if_expelled, weak=False)
    return fence


def leave_if_expelled(fence: Fence, revoked: Any, *, stopping: bool) -> None:
    """At a revocation: a worker whose consumer was expelled while it held partitions, and which
    wrote changelog records since its last revocation, ends (`EXIT_FENCED`), to be started again
    with its tables restored from the changelogs (see the module's docstring). A revocation in a
    rebalance it takes part in, at its first join or at its stop, is not an expulsion."""
    written, fence.written = fence.written, 0
    if not revoked or stopping or not fence.expelled() or not written:
        # nothing of its own can land late (a worker expelled in its recovery, under load, has
        # written nothing yet): it joins again as it is
        return
    FENCED.labels("worker expelled").inc()
    log.critical(
        "this worker was expelled from its group (paused or cut off past its session) while it "
        "held %d partitions: records it had handed to Kafka may have landed after their next "
        "owner's, so its local tables are not trusted; exiting (status %d) to be started again "
        "and restore them from the changelogs",
        len(revoked),
        EXIT_FENCED,
    )
    logging.shutdown()
    os._exit(EXIT_FENCED)


def fence_of(app: AppT) -> Fence | None:
    """The app's fence, or None (a stateless role)."""
    try:
        return _FENCES.get(app)
    except TypeError:  # not weakly referable: not an app with a fence
        return None


async def may_send(fence: Fence, stopping: Any) -> bool:
    """For the changelog buffer, before a record leaves: True to send it, False to drop it (this
    worker was expelled). While the coordinator does not answer, it waits (the record stays
    queued, in order), unless the worker is stopping."""
    delay = 0.1
    while True:
        try:
            return await fence.member()
        except ConnectionError as exc:
            if stopping():
                log.warning("changelog: membership not confirmed at stop (%s): record sent", exc)
                return True
            log.warning("changelog: membership not confirmed (%s); retrying", exc)
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)


#: the header of a table changelog record: its writer's group generation when the write was made
GENERATION_HEADER = "mohallamart-generation"


def stamp_generation(fut: Any, generation: int) -> None:
    """Add the writer's generation to a changelog record about to be buffered (faust's
    FutureMessage: its `message` a PendingMessage tuple)."""
    message = fut.message
    headers = message.headers
    if isinstance(headers, Mapping):
        headers = list(headers.items())
    fut.message = message._replace(
        headers=[*(headers or ()), (GENERATION_HEADER, str(generation).encode())]
    )


def generation_of(headers: Any) -> int | None:
    """The writer's generation a changelog record carries (None: not stamped)."""
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    for key, value in items:
        if key == GENERATION_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


class ChangelogOrder:
    """Which changelog records a restore applies, per partition in changelog order: a record of
    an older generation than the newest applied there, created before that generation's first
    record, is a zombie's late write (handed to its Kafka client before a pause, sent on
    resume, after the partition's next owner wrote) and is skipped. A record of an older
    generation created later is a group that began again (its metadata deleted after all its
    workers left): applied, and its generation is the newest from there. Records without the
    header (written before it existed) are applied."""

    def __init__(self) -> None:
        self._newest: dict[TP, tuple[int, float]] = {}  # generation, its first record's time
        self.skipped = 0

    def wrote(self, tp: TP, headers: Any, timestamp: float | None) -> None:
        """One of this worker's own changelog records was delivered: a later restore of `tp` in
        this process starts after it (faust's restore position is the store's last own record)
        and must know its generation, or a zombie's late record found there is applied."""
        generation = generation_of(headers)
        if generation is None:
            return
        newest = self._newest.get(tp)
        if newest is None or generation > newest[0]:
            self._newest[tp] = (generation, float(timestamp or 0.0))

    def admit(self, tp: TP, headers: Any, timestamp: float | None) -> bool:
        generation = generation_of(headers)
        if generation is None:
            return True
        at = float(timestamp or 0.0)
        newest = self._newest.get(tp)
        if newest is None or generation > newest[0] or (generation < newest[0] and at > newest[1]):
            self._newest[tp] = (generation, at)
            return True
        if generation == newest[0]:
            return True
        self.skipped += 1
        FENCED.labels("changelog record skipped at restore").inc()
        log.warning(
            "table changelog %s/%d: a record of generation %d created before generation %d's "
            "first record (a paused worker's late write) is not applied",
            tp.topic,
            tp.partition,
            generation,
            newest[0],
        )
        return False
