"""An asyncio face on librdkafka's producer: idempotent, acks=all, batching, one poll thread.

`send` resolves when the broker has acknowledged every record (or failed it). Delivery reports
are handed to the event loop in groups, one wake-up per poll, not one per record.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

__all__ = ["Delivery", "EventProducer", "Record"]


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: bytes
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Delivery:
    topic: str
    partition: int
    offset: int


class EventProducer:
    def __init__(
        self,
        bootstrap: str,
        *,
        delivery_timeout_ms: int,
        linger_ms: float,
        max_message_bytes: int = 1_000_000,
        extra: dict[str, Any] | None = None,
    ) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "max.in.flight.requests.per.connection": 5,
            # Java-compatible murmur2 for keyed records: the same partition as aiokafka/Faust.
            "partitioner": "murmur2_random",
            "linger.ms": linger_ms,
            "batch.num.messages": 10000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "message.max.bytes": max_message_bytes + 1024,
            # The whole life of a record, retries included: shorter than a request's timeout.
            "delivery.timeout.ms": delivery_timeout_ms,
            "request.timeout.ms": min(30_000, max(1000, delivery_timeout_ms // 2)),
            "socket.keepalive.enable": True,
            "log_level": 3,
        }
        conf.update(extra or {})
        self._producer = Producer(conf)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: list[tuple[asyncio.Future[Delivery | KafkaError], Any]] = []

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

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)
            self._hand_over()

    def _hand_over(self) -> None:
        if self._pending and self._loop is not None:
            batch, self._pending = self._pending, []
            self._loop.call_soon_threadsafe(_resolve, batch)

    def _on_delivery(
        self, fut: asyncio.Future[Delivery | KafkaError], err: KafkaError | None, msg: Message
    ) -> None:
        # Runs in the poll thread, inside poll(): collect, hand over after poll returns.
        self._pending.append(
            (
                fut,
                err
                if err is not None
                else Delivery(str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)),
            )
        )

    def outstanding(self) -> int:
        return len(self._producer)

    async def send(self, records: Sequence[Record]) -> list[Delivery | KafkaError]:
        """Produce every record; return, in order, where each landed or why it failed."""
        assert self._loop is not None, "start() first"
        futures: list[asyncio.Future[Delivery | KafkaError]] = []
        for r in records:
            fut: asyncio.Future[Delivery | KafkaError] = self._loop.create_future()
            cb = _bind(self._on_delivery, fut)
            for attempt in range(50):
                try:
                    self._producer.produce(
                        r.topic, r.value, r.key, timestamp=r.timestamp_ms, on_delivery=cb
                    )
                    break
                except BufferError:
                    # The local queue is full: let the poll thread drain it.
                    await asyncio.sleep(0.01 * (attempt + 1))
                except KafkaException as exc:
                    fut.set_result(exc.args[0])
                    break
            else:
                fut.set_result(KafkaError(KafkaError._QUEUE_FULL))
            futures.append(fut)
        return list(await asyncio.gather(*futures))


def _bind(fn: Any, fut: Any) -> Any:
    return lambda err, msg: fn(fut, err, msg)


def _resolve(batch: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for fut, result in batch:
        if not fut.done():
            fut.set_result(result)
