"""An asyncio face on librdkafka's producer: idempotent, acks=all, batching, one poll thread.

`send` resolves when the broker has acknowledged every record (or failed it). Delivery reports
are handed to the event loop in groups, one wake-up per poll, not one per record.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from connectors.kafka import producer_config
from core.settings import KafkaSecurity

__all__ = ["Delivery", "EventProducer", "Failure", "Record", "failure_kind"]


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: bytes
    value: bytes
    timestamp_ms: int
    #: Kafka headers (the API's: its W3C `traceparent`); None: none
    headers: list[tuple[str, str | bytes | None]] | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    topic: str
    partition: int
    offset: int


class Failure(Enum):
    """Why a record was not delivered, as the client of the API must act on it."""

    TRANSIENT = "transient"  # the broker or the network: retry the same request later
    REFUSED = "refused"  # the broker refused this record for what it holds: fix it
    TOO_LARGE = "too_large"  # the broker refused this record for its size
    UNEXPECTED = "unexpected"  # neither: a fault of ours or of the cluster's configuration


# Delivery reports carry no `retriable()` flag (librdkafka sets it only on errors of its newer
# error objects), so the codes are listed. librdkafka retries transient broker errors itself
# until `delivery.timeout.ms`: most outages end as _MSG_TIMED_OUT.
_TRANSIENT = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._QUEUE_FULL,
        KafkaError._RETRY,
        KafkaError._NODE_UPDATE,
        KafkaError._DESTROY,  # this process is shutting down: another one can take the retry
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.REPLICA_NOT_AVAILABLE,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError.THROTTLING_QUOTA_EXCEEDED,
    }
)
_REFUSED = frozenset({KafkaError.INVALID_TIMESTAMP, KafkaError.INVALID_RECORD})
_TOO_LARGE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


def failure_kind(err: KafkaError) -> Failure:
    """Sort a failed delivery. Anything not known to be transient or a refusal of the record is
    UNEXPECTED (authorization, unknown topic or partition, a fatal producer error, ...): retrying
    it would not help, so it must never be answered as an outage."""
    if err.fatal():
        return Failure.UNEXPECTED
    code = err.code()
    if code in _TRANSIENT or err.retriable():
        return Failure.TRANSIENT
    if code in _REFUSED:
        return Failure.REFUSED
    if code in _TOO_LARGE:
        return Failure.TOO_LARGE
    return Failure.UNEXPECTED


class EventProducer:
    def __init__(
        self,
        bootstrap: str,
        *,
        security: KafkaSecurity,
        delivery_timeout_ms: int,
        linger_ms: float,
        max_message_bytes: int = 1_000_000,
        extra: dict[str, Any] | None = None,
    ) -> None:
        conf = producer_config(
            bootstrap,
            security=security,
            delivery_timeout_ms=delivery_timeout_ms,
            linger_ms=linger_ms,
            max_message_bytes=max_message_bytes,
        )
        conf.update(extra or {})
        self._producer = Producer(conf)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: list[_Tracker] = []
        self._lock = threading.Lock()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(
            target=self._poll_loop, name="kafka-producer-poll", daemon=True
        )
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout_s)
        self._producer.flush(timeout_s)
        # the reports flush() served (after the poll thread stopped) still reach their sends
        try:
            self._hand_over()
        except RuntimeError:  # the event loop is closed: no send is waiting any more
            pass

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)
            self._hand_over()

    def _hand_over(self) -> None:
        if self._pending and self._loop is not None:
            with self._lock:
                batch, self._pending = self._pending, []
            self._loop.call_soon_threadsafe(_resolve, batch)

    def _on_delivery(
        self, tracker: _Tracker, index: int, err: KafkaError | None, msg: Message | None
    ) -> None:
        # Runs in the poll thread, inside poll(): record; hand over after poll returns. Also
        # runs in the event loop when produce() itself refused a record: hence the lock.
        if err is None and msg is not None:
            result: Delivery | KafkaError = Delivery(
                str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)
            )
        else:
            result = err if err is not None else KafkaError(KafkaError._FAIL)
        with self._lock:
            tracker.results[index] = result
            tracker.left -= 1
            if tracker.left == 0:
                self._pending.append(tracker)

    async def send(self, records: Sequence[Record]) -> list[Delivery | KafkaError]:
        """Produce every record; return, in order, where each landed or why it failed."""
        assert self._loop is not None, "start() first"
        if not records:
            return []
        tracker = _Tracker(len(records), self._loop.create_future())
        for index, r in enumerate(records):
            cb = partial(self._on_delivery, tracker, index)
            for attempt in range(50):
                try:
                    self._producer.produce(
                        r.topic,
                        r.value,
                        r.key,
                        timestamp=r.timestamp_ms,
                        headers=r.headers,
                        on_delivery=cb,
                    )
                    break
                except BufferError:
                    # The local queue is full: let the poll thread drain it.
                    await asyncio.sleep(0.01 * (attempt + 1))
                except KafkaException as exc:
                    self._on_delivery(tracker, index, exc.args[0], None)
                    break
            else:
                self._on_delivery(tracker, index, KafkaError(KafkaError._QUEUE_FULL), None)
        self._hand_over_from_loop()
        return await tracker.future

    def _hand_over_from_loop(self) -> None:
        # A send whose every record was refused by produce() has no report coming.
        with self._lock:
            done = [t for t in self._pending if t.left == 0 and not t.future.done()]
            if not done:
                return
            self._pending = [t for t in self._pending if t not in done]
        _resolve(done)


class _Tracker:
    """The delivery reports of one `send`: one future for the lot, not one per record."""

    __slots__ = ("future", "left", "results")

    def __init__(self, n: int, future: asyncio.Future[list[Delivery | KafkaError]]) -> None:
        self.results: list[Delivery | KafkaError] = [KafkaError(KafkaError._MSG_TIMED_OUT)] * n
        self.left = n
        self.future = future


def _resolve(trackers: list[_Tracker]) -> None:
    for t in trackers:
        if not t.future.done():
            t.future.set_result(t.results)
