"""The one reliability mechanism every agent uses.

Agents receive raw bytes; `Guard.process` decodes them, hands the batch to the agent's handler and
holds the line that Faust does not (an agent that raises has its messages acked anyway):

- a dependency that is down (`DependencyDown`, connection refused, timeout, registry unreachable)
  is retried with capped backoff for as long as it is down, the batch's partitions paused and the
  `mohallamart_worker_dependency_down` gauge raised; it never reaches the dead-letter topic;
- Kafka "not ready yet" (metadata naming a topic unknown, without a leader, or with partition
  counts that disagree, as just after topics are created) is retried the same way with the
  consumer's metadata refreshed, for at most `RetryPolicy.not_ready_s` (60 s); then the worker
  exits with status 78, naming the topics: a real mismatch is loud, never a dead letter;
- any other error fails the batch: it is split in halves until the record at fault is alone, so one
  bad record never fails the good ones; that record is **parked**: retried after each of the
  policy's delays (1 s, 5 s, 15 s by default) by a task of its own and then dead-lettered, while
  the stage goes on with other keys; later records of the same key queue behind it (order per
  key is kept). A parked record is held (never acknowledged) until it is settled, and the
  transport's commit rule never commits past the lowest record not acknowledged, so a crash
  brings it back (at attempt 1; the records after it are applied again without effect). At
  most `RetryPolicy.max_parked` records per partition are parked: beyond, the partition pauses.
  A stage that keeps offset markers of its own (the stock role) retries in line instead;
- a permanent failure (bytes that do not decode, a `Permanent` error, a record the handler rejects,
  such as an illegal transition) is dead-lettered at once;
- a dead-lettered record goes to `<original topic>.dlq` with headers naming the original topic,
  partition and offset, the error's class and message, the stage, the attempts and the first
  failure time; the partition keeps flowing.

Handlers must be idempotent (a batch may be applied again after a crash) and all-or-nothing per
call (the batch is retried and split).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections import Counter as Tally
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import faust
from aiokafka.errors import KafkaError
from faust.exceptions import PartitionsMismatch
from faust.types import TP
from prometheus_client import Counter, Gauge, Histogram

from connectors.base import DependencyDown
from connectors.dlq import REDRIVE_COUNT, REDRIVE_STAGE, dead_letter_topic, redrive_topic
from core import telemetry
from core.errors import PipelineError
from schemas.codec import RegistryDecoder, UndecodableRecord
from schemas.registry import RegistryUnavailable, UnknownSchema
from streams import tracing, transport

__all__ = [
    "DLQ_HEADERS",
    "REDRIVE_COUNT",
    "REDRIVE_STAGE",
    "Guard",
    "Later",
    "Permanent",
    "Record",
    "Rejection",
    "RetryPolicy",
    "dead_letter_topic",
    "exit_worker",
    "parked_partitions",
    "redrive_topic",
]

log = logging.getLogger(__name__)

#: The headers of a dead-letter record (values UTF-8).
DLQ_HEADERS = (
    "x-original-topic",
    "x-original-partition",
    "x-original-offset",
    "x-error-class",
    "x-error-message",
    "x-stage",
    "x-attempts",
    "x-first-failure-time",
)
#: Set on a record forwarded from another topic (the stock role's by-shop topic): its origin.
SOURCE_HEADERS = ("x-source-topic", "x-source-partition", "x-source-offset")

EVENTS = Counter(
    "mohallamart_worker_records_total", "Records handled, by outcome", ["role", "stage", "outcome"]
)
DEAD_LETTERS = Counter(
    "mohallamart_worker_dead_letters_total",
    "Records sent to a dead-letter topic",
    ["role", "stage", "error"],
)
RETRIES = Counter("mohallamart_worker_retries_total", "Record retries", ["role", "stage"])
DOWN = Gauge(
    "mohallamart_worker_dependency_down",
    "1 while a stage waits for a dependency that is down (its partitions paused)",
    ["role", "stage"],
)
DOWN_RETRIES = Counter(
    "mohallamart_worker_dependency_retries_total",
    "Attempts made while a dependency was down",
    ["role", "stage"],
)
LAG_SECONDS = Histogram(
    "mohallamart_worker_batch_age_seconds",
    "Age of a batch's oldest record (its Kafka timestamp: the event's occurred_at) as it starts",
    ["role", "stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600),
)
PARKED = Gauge(
    "mohallamart_worker_parked_records",
    "Records parked for a retry (and the records of the same keys queued behind them)",
    ["role", "stage"],
)
PARKED_KEYS = Gauge(
    "mohallamart_worker_parked_keys", "Keys with a record parked for a retry", ["role", "stage"]
)
BATCH_SECONDS = Histogram(
    "mohallamart_worker_batch_seconds",
    "Time to apply one batch",
    ["role", "stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class Permanent(PipelineError):
    """A record that can never succeed as it is (it breaks a rule): dead-lettered at once."""


@dataclass
class Record:
    """One Kafka record as the agent received it, and its event once decoded."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    timestamp_ms: int
    event: dict[str, Any] = field(default_factory=dict)
    #: the Faust event it came from (table writes need it as their context)
    source: Any = field(default=None, repr=False, compare=False)
    #: parked by the guard (offered again by its retrier)
    parked: bool = field(default=False, compare=False)
    #: its processing span while the guard handles it (tracing on; `streams.tracing`)
    span: Any = field(default=None, repr=False, compare=False)
    #: (W3C trace id, `traceparent`) of the events it causes, once worked out (streams.tracing)
    trace: tuple[str, bytes] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_event(cls, ev: faust.EventT[Any]) -> Record:
        m = ev.message
        headers = m.headers
        hdrs = dict(headers) if isinstance(headers, Sequence) else dict(headers or {})
        return cls(
            topic=m.topic,
            partition=m.partition,
            offset=m.offset,
            key=m.key,
            value=m.value,
            headers={k: (v if isinstance(v, bytes) else str(v).encode()) for k, v in hdrs.items()},
            timestamp_ms=int(m.timestamp * 1000),
            source=ev,
        )

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)

    @property
    def origin(self) -> tuple[str, int, int]:
        """The (topic, partition, offset) the record was first written at."""
        h = self.headers
        if "x-source-topic" in h:
            return (
                h["x-source-topic"].decode(),
                int(h["x-source-partition"]),
                int(h["x-source-offset"]),
            )
        topic = self.topic
        if topic.endswith(".redrive"):
            topic = topic[: -len(".redrive")]
        return topic, self.partition, self.offset


@dataclass(frozen=True)
class Rejection:
    """A record the handler refuses for good (e.g. an illegal transition), with the reason."""

    record: Record
    reason: str
    error_class: str = "IllegalTransition"


@dataclass(frozen=True)
class Later(Rejection):
    """A record the handler cannot apply yet for a reason outside it (the read side: the
    projections have parked its event while they applied later ones): parked for its key like a
    failing record and offered again every `RetryPolicy.later_s`, never dead-lettered."""

    error_class: str = "NotYet"


@dataclass(frozen=True)
class RetryPolicy:
    """Delays between the attempts of a failing record, and the backoff while a dependency is
    down (doubling from `down_initial_s` up to `down_cap_s`, for as long as it takes)."""

    delays: tuple[float, ...] = (1.0, 5.0, 15.0)
    down_initial_s: float = 0.5
    down_cap_s: float = 10.0
    #: how long Kafka may stay "not ready" (metadata) before the worker exits with status 78
    not_ready_s: float = 60.0
    #: records parked per partition (a failing record and the ones of its key behind it) before
    #: the partition pauses
    max_parked: int = 1000
    #: how often a record the handler answered `Later` for is offered again
    later_s: float = 0.5


Handler = Callable[[list[Record]], Awaitable[Sequence[Rejection]]]
#: called after a record is dead-lettered, with (record, error class, message)
DeadLetterHook = Callable[[Record, str, str], Awaitable[None]]


#: exit status of a worker that cannot start or go on for want of configuration (EX_CONFIG)
EXIT_NOT_READY = 78


def is_not_ready(exc: BaseException) -> bool:
    """Kafka's metadata is not ready yet: a topic unknown or without a leader, or partition
    counts that disagree (faust's check of a table against its changelog)."""
    if isinstance(exc, PartitionsMismatch):
        return True
    return (
        isinstance(exc, KafkaError)
        and exc.invalid_metadata
        and type(exc).__name__ != "KafkaConnectionError"
    )


def is_dependency_down(exc: BaseException) -> bool:
    if isinstance(exc, KafkaError):  # aiokafka: connection lost, timeouts
        if type(exc).__name__ == "KafkaTimeoutError":
            return True
        return exc.retriable and not is_not_ready(exc)
    return isinstance(
        exc, DependencyDown | RegistryUnavailable | ConnectionError | TimeoutError | OSError
    )


def exit_worker(code: int, message: str) -> None:
    """End the worker process now (its supervisor restarts it), after logging why."""
    log.critical("%s (exiting with status %d)", message, code)
    logging.shutdown()
    os._exit(code)


@dataclass
class _Lot:
    """One key's parked records, in offset order; the first is the one being retried."""

    records: deque[Record]
    attempts: int
    first_failure: float
    last: BaseException | None = None
    due: float = 0.0
    #: the head waits for something outside it (`Later`), it has not failed
    waiting: bool = False


#: the guards of this process (for `parked_partitions`)
_GUARDS: weakref.WeakSet[Any] = weakref.WeakSet()


def parked_partitions() -> set[TP]:
    """The partitions with a record parked for a retry in any guard of this process: their
    committed offsets wait, as they should, until it is settled."""
    return {tp for guard in list(_GUARDS) for tp in guard.parked()}


class Guard:
    """Runs one stage's handler over batches of raw records, as the module docstring says."""

    def __init__(
        self,
        app: faust.App,
        *,
        role: str,
        stage: str,
        decoder: RegistryDecoder,
        policy: RetryPolicy,
        owns_decode: bool = True,
        on_dead_letter: DeadLetterHook | None = None,
        refresh_metadata: Callable[[], Awaitable[None]] | None = None,
        park: bool = True,
        types: frozenset[str] | None = None,
        raw: bool = False,
    ) -> None:
        self.app = app
        # records of the role's own internal topic (not Avro events): handed over undecoded
        self.raw = raw
        # the event types the stage handles (None: all); others pass without being decoded
        self.types = types
        self.on_dead_letter = on_dead_letter
        self.refresh_metadata = refresh_metadata
        self.park = park
        # key -> its parked records, the first the one failing; one handler call at a time
        self._lots: dict[tuple[str, bytes | int], _Lot] = {}
        self._parked: Tally[TP] = Tally()
        _GUARDS.add(self)
        self._full: set[TP] = set()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._retrier: asyncio.Task[None] | None = None
        self._handler: Handler | None = None
        # Undecodable bytes are a fault of the record, not of a stage: the first role that reads
        # a topic dead-letters them (one record), the others skip them (counted).
        self.owns_decode = owns_decode
        self.role = role
        self.stage = f"{role}/{stage}"
        self.decoder = decoder
        self.policy = policy
        self._labels = (role, self.stage)

    # --- entry point --------------------------------------------------------------------------
    async def process(self, records: list[Record], handler: Handler) -> None:
        """Decode, apply, retry, split, dead-letter: returns once every record is settled."""
        records = [r for r in records if self._mine(r)]
        if not records:
            return
        oldest = min(r.timestamp_ms for r in records)
        LAG_SECONDS.labels(*self._labels).observe(max(0.0, time.time() * 1000 - oldest) / 1000)
        good = await self._decode(records)
        traced = good if telemetry.enabled() else None
        if traced:
            tracing.begin(traced, self.role, self.stage)
        try:
            if self._lots:
                self._drop_revoked()
                good = self._divert(good)
            if good:
                with BATCH_SECONDS.labels(*self._labels).time():
                    async with self._lock:
                        await self._run(good, handler)
        finally:
            if traced:
                tracing.end(traced)

    def _mine(self, record: Record) -> bool:
        """A redriven copy is for the role that dead-lettered it, not for every consumer."""
        if record.topic.endswith(".redrive") or REDRIVE_STAGE in record.headers:
            wanted = record.headers.get(REDRIVE_STAGE, b"").decode()
            return wanted.split("/", 1)[0] == self.role
        return True

    async def _decode(self, records: list[Record]) -> list[Record]:
        good: list[Record] = []
        for r in records:
            if self.raw:
                good.append(r)
                continue
            if "x-tick" in r.headers:  # the stock role's own timer record: nothing to decode
                r.event = {"type": "~tick"}
                good.append(r)
                continue
            try:
                sid = self.decoder.schema_id(r.value)
                if self.decoder.needs(sid):
                    await self._until_up(
                        [r],
                        lambda sid=sid: asyncio.to_thread(  # type: ignore[misc]
                            self.decoder.load, sid
                        ),
                    )
                if self.types is not None:
                    kind = self.decoder.type_of(sid)
                    if kind is not None and kind not in self.types:
                        continue  # not for this stage (acknowledged with the batch)
                r.event = self.decoder.decode(r.value)
            except (UndecodableRecord, UnknownSchema) as exc:
                if not self.owns_decode:
                    EVENTS.labels(*self._labels, "undecodable_skipped").inc()
                    continue
                await self.dead_letter(
                    r, exc, attempts=1, first_failure=time.time(), stage="decode"
                )
                continue
            good.append(r)
        return good

    # --- the mechanism ------------------------------------------------------------------------
    async def _run(self, batch: list[Record], handler: Handler) -> None:
        if self._lots:  # a record of this batch was parked: the later ones of its key queue
            batch = self._divert(batch)
            if not batch:
                return
        try:
            rejected = await self._until_up(batch, lambda: handler(batch))
        except Exception as exc:  # noqa: BLE001 - any error of the batch: find the record at fault
            if len(batch) > 1:
                mid = len(batch) // 2
                await self._run(batch[:mid], handler)
                await self._run(batch[mid:], handler)
            elif self.park and not isinstance(exc, Permanent) and self.policy.delays:
                self._park_failed(batch[0], handler, exc)
            else:
                await self._retry_one(batch[0], handler, exc)
            return
        await self._settle(batch, self._defer(rejected, handler))

    # --- parking ------------------------------------------------------------------------------
    def parked(self) -> set[TP]:
        """The partitions with a record of this stage parked for a retry."""
        return {tp for tp, n in self._parked.items() if n > 0}

    @staticmethod
    def _key(record: Record) -> tuple[str, bytes | int]:
        """Records of one key keep their order; a record without a key is a key of its own."""
        return (record.topic, record.key if record.key is not None else record.offset)

    def _divert(self, records: list[Record]) -> list[Record]:
        """The records free to go; those of a parked key queue behind it."""
        free: list[Record] = []
        for r in records:
            lot = self._lots.get(self._key(r))
            if lot is None:
                free.append(r)
            else:
                lot.records.append(r)
                self._hold(r)
        return free

    def _hold(self, record: Record) -> None:
        record.parked = True
        transport.hold(record.source)
        tp = record.tp
        self._parked[tp] += 1
        if self._parked[tp] >= self.policy.max_parked and tp not in self._full:
            self._full.add(tp)
            self.app.consumer.pause_partitions({tp})
            log.warning(
                "%s: %d records parked on %s/%d: partition paused",
                self.stage,
                self._parked[tp],
                tp.topic,
                tp.partition,
            )
        self._gauges()

    def _release(self, record: Record) -> None:
        transport.release(self.app, record.source)
        self._forget(record)

    def _forget(self, record: Record) -> None:
        tp = record.tp
        self._parked[tp] -= 1
        if self._parked[tp] <= 0:
            del self._parked[tp]
        if tp in self._full and self._parked[tp] < self.policy.max_parked:
            self._full.discard(tp)
            self.app.consumer.resume_partitions({tp})
        self._gauges()

    def _gauges(self) -> None:
        PARKED.labels(*self._labels).set(sum(self._parked.values()))
        PARKED_KEYS.labels(*self._labels).set(len(self._lots))

    def _park_failed(self, record: Record, handler: Handler, exc: Exception) -> None:
        now = time.monotonic()
        lot = _Lot(deque([record]), attempts=1, first_failure=time.time(), last=exc)
        lot.due = now + self.policy.delays[0]
        self._lots[self._key(record)] = lot
        self._handler = handler
        self._hold(record)
        RETRIES.labels(*self._labels).inc()
        log.warning(
            "%s: %s at %s/%d@%d failed (%s: %s); parked, retrying in %.1f s (other keys go on)",
            self.stage,
            record.event.get("type"),
            record.topic,
            record.partition,
            record.offset,
            type(exc).__name__,
            exc,
            self.policy.delays[0],
        )
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.ensure_future(self._retry_parked())
        self._wake.set()

    def _defer(self, rejected: Sequence[Rejection], handler: Handler) -> list[Rejection]:
        """Park the records answered `Later` (each key's first; the rest of its key behind it);
        return the refusals proper."""
        later = [r for r in rejected if isinstance(r, Later)]
        if not later:
            return list(rejected)
        if not self.park:
            raise DependencyDown(later[0].reason)  # the whole batch waits and comes again
        for rej in later:
            record = rej.record
            lot = self._lots.get(self._key(record))
            if lot is not None:
                lot.records.append(record)
                self._hold(record)
                continue
            lot = _Lot(deque([record]), attempts=0, first_failure=time.time(), waiting=True)
            lot.due = time.monotonic() + self.policy.later_s
            self._lots[self._key(record)] = lot
            self._handler = handler
            self._hold(record)
            log.info(
                "%s: %s at %s/%d@%d parked: %s (other keys go on)",
                self.stage,
                record.event.get("type"),
                record.topic,
                record.partition,
                record.offset,
                rej.reason,
            )
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.ensure_future(self._retry_parked())
        self._wake.set()
        return [r for r in rejected if not isinstance(r, Later)]

    def _drop_revoked(self) -> None:
        """Parked records of partitions no longer ours are dropped (never acknowledged: the
        partition's new owner reads them again from the committed offset)."""
        assigned = self.app.assignor.assigned_actives()
        for key, lot in list(self._lots.items()):
            if lot.records[0].tp not in assigned:
                del self._lots[key]
                for r in lot.records:
                    self._forget(r)

    async def _retry_parked(self) -> None:
        """Retry each parked key's first record when it is due, then let its queue go on."""
        while self._lots:
            self._drop_revoked()
            now = time.monotonic()
            due = [k for k, lot in self._lots.items() if lot.due <= now]
            if not due:
                nearest = min((lot.due for lot in self._lots.values()), default=now + 1)
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), max(0.0, nearest - now))
                except TimeoutError:
                    pass
                continue
            for key in due:
                await self._retry_lot(key)

    async def _retry_lot(self, key: tuple[str, bytes | int]) -> None:
        lot = self._lots.get(key)
        handler = self._handler
        assert handler is not None
        while lot is not None and lot.records:
            head = lot.records[0]
            one = [head]
            try:
                async with self._lock:
                    rejected = await self._until_up(one, partial(handler, one))
            except Exception as exc:  # noqa: BLE001 - counted, retried, then dead-lettered
                if self._lots.get(key) is not lot:  # dropped meanwhile (revoked)
                    return
                lot.attempts += 1
                lot.last = exc
                if isinstance(exc, Permanent) or lot.attempts > len(self.policy.delays):
                    await self.dead_letter(
                        head, exc, attempts=lot.attempts, first_failure=lot.first_failure
                    )
                    self._next(lot, head)
                    continue
                delay = self.policy.delays[lot.attempts - 1]
                lot.due = time.monotonic() + delay
                RETRIES.labels(*self._labels).inc()
                log.warning(
                    "%s: %s at %s/%d@%d failed again (%s: %s); retrying in %.1f s",
                    self.stage,
                    head.event.get("type"),
                    head.topic,
                    head.partition,
                    head.offset,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                return
            if self._lots.get(key) is not lot:
                return
            if any(isinstance(r, Later) for r in rejected):
                lot.waiting = True
                lot.due = time.monotonic() + self.policy.later_s
                return
            await self._settle([head], rejected)
            self._next(lot, head)
        if lot is not None and not lot.records and self._lots.get(key) is lot:
            del self._lots[key]
            self._gauges()

    def _next(self, lot: _Lot, settled: Record) -> None:
        """`settled` is applied or dead-lettered: acknowledge it; the next of its key is tried
        at once, as a record never tried."""
        lot.records.popleft()
        self._release(settled)
        lot.attempts, lot.first_failure, lot.due = 0, time.time(), time.monotonic()
        lot.waiting = False

    async def _retry_one(self, record: Record, handler: Handler, exc: Exception) -> None:
        first = time.time()
        attempts = 1
        last: Exception = exc
        if not isinstance(exc, Permanent):
            for delay in self.policy.delays:
                RETRIES.labels(*self._labels).inc()
                log.warning(
                    "%s: %s at %s/%d@%d failed (%s: %s); retrying in %.1f s",
                    self.stage,
                    record.event.get("type"),
                    record.topic,
                    record.partition,
                    record.offset,
                    type(last).__name__,
                    last,
                    delay,
                )
                await asyncio.sleep(delay)
                attempts += 1
                try:
                    rejected = await self._until_up([record], lambda: handler([record]))
                except Permanent as again:
                    last = again
                    break
                except Exception as again:  # noqa: BLE001 - counted, then dead-lettered
                    last = again
                    continue
                await self._settle([record], rejected)
                return
        await self.dead_letter(record, last, attempts=attempts, first_failure=first)

    async def _until_up(self, batch: list[Record], call: Callable[[], Awaitable[Any]]) -> Any:
        """`call()`, retried with capped backoff while a dependency is down, or (for at most
        `policy.not_ready_s`) while Kafka's metadata is not ready; partitions paused."""
        delay = self.policy.down_initial_s
        paused: set[TP] = set()
        not_ready_since: float | None = None
        try:
            while True:
                try:
                    return await call()
                except Exception as exc:
                    if is_not_ready(exc):
                        now = time.monotonic()
                        not_ready_since = not_ready_since or now
                        if now - not_ready_since >= self.policy.not_ready_s:
                            topics = ", ".join(sorted({r.topic for r in batch}))
                            exit_worker(
                                EXIT_NOT_READY,
                                f"{self.stage}: Kafka not ready after "
                                f"{self.policy.not_ready_s:g} s reading {topics}: "
                                f"{type(exc).__name__}: {exc}",
                            )
                        if self.refresh_metadata is not None:
                            try:
                                await self.refresh_metadata()
                            except Exception as again:  # noqa: BLE001 - retried on the next turn
                                log.warning("%s: metadata refresh failed: %r", self.stage, again)
                    elif not is_dependency_down(exc):
                        raise
                    if not paused:
                        paused = {r.tp for r in batch}
                        self.app.consumer.pause_partitions(paused)
                        DOWN.labels(*self._labels).set(1)
                        log.warning(
                            "%s: %s (%s: %s); partitions %s paused, retrying",
                            self.stage,
                            "Kafka not ready" if not_ready_since else "dependency down",
                            type(exc).__name__,
                            exc,
                            ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(paused)),
                        )
                    DOWN_RETRIES.labels(*self._labels).inc()
                    await asyncio.sleep(delay)
                    delay = min(self.policy.down_cap_s, delay * 2)
        finally:
            if paused:
                self.app.consumer.resume_partitions(paused)
                DOWN.labels(*self._labels).set(0)
                log.warning("%s: dependency back; partitions resumed", self.stage)

    async def _settle(self, batch: list[Record], rejected: Sequence[Rejection]) -> None:
        for rej in rejected:
            await self.dead_letter(
                rej.record,
                None,
                attempts=1,
                first_failure=time.time(),
                error=(rej.error_class, rej.reason),
            )
        EVENTS.labels(*self._labels, "applied").inc(len(batch) - len(rejected))

    # --- dead letters -------------------------------------------------------------------------
    async def dead_letter(
        self,
        record: Record,
        exc: BaseException | None,
        *,
        attempts: int,
        first_failure: float,
        stage: str | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        """Send `record` to its original topic's dead-letter topic, with its context."""
        topic, partition, offset = record.origin
        cls, message = error if error else (type(exc).__name__, str(exc))
        stage_name = f"{self.role}/{stage}" if stage else self.stage
        redrives = int(record.headers.get(REDRIVE_COUNT, b"0"))
        headers = {
            "x-original-topic": topic,
            "x-original-partition": str(partition),
            "x-original-offset": str(offset),
            "x-error-class": cls,
            "x-error-message": message[:2000],
            "x-stage": stage_name,
            "x-attempts": str(attempts),
            "x-first-failure-time": datetime.fromtimestamp(first_failure, UTC).isoformat(),
            "x-event-id": str(record.event.get("id", "")),
            "x-event-type": str(record.event.get("type", "")),
            REDRIVE_COUNT: str(redrives),
        }
        tracing.dead_lettered(record, cls, message)
        DEAD_LETTERS.labels(self.role, stage_name, cls).inc()
        EVENTS.labels(*self._labels, "dead_lettered").inc()
        log.error(
            "%s: %s/%d@%d dead-lettered after %d attempt(s): %s: %s",
            stage_name,
            topic,
            partition,
            offset,
            attempts,
            cls,
            message,
        )
        await self.app.producer.send_and_wait(
            dead_letter_topic(topic),
            record.key,
            record.value,
            partition=None,
            timestamp=record.timestamp_ms / 1000,
            # the dead letter stays in its event's trace (a redrive hands the header on)
            headers=[*((k, v.encode()) for k, v in headers.items()), tracing.child_of(record)],
        )
        hook = self.on_dead_letter
        if hook is not None and record.event.get("id"):
            await self._until_up([record], lambda: hook(record, cls, message))
