"""Live updates (`GET /v1/live`, Server-Sent Events) from one shared Kafka consumer per process.

The hub reads the order and product topics in a thread (no consumer group: it assigns every
partition) and hands each batch to the event loop, which appends it to a per-partition buffer and
fans it out to the subscribed clients' queues. Nothing a client does can block the hub: a client
whose queue is full is disconnected.

A client's position is a vector of offsets, one per partition of the two topics: the next offset
it has not yet passed. Every event it receives carries that vector as its SSE `id`; a client that
reconnects with `Last-Event-ID` gets the buffered events at or after it, that match its
subscription, and then the live ones: nothing missed, nothing twice. At start the hub fills its
buffer from the last `live_buffer_per_partition` records of each partition, so a client can also
resume on another API process, or after a restart.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import threading
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition
from prometheus_client import Counter, Gauge
from starlette.responses import Response

from api.problems import Problem
from connectors.kafka import consumer_config
from core.settings import Settings
from schemas.catalog import TOPICS
from schemas.codec import RegistryDecoder, UndecodableRecord
from schemas.lifecycle import ORDER_STATUS_AFTER
from schemas.registry import SchemaRegistry

__all__ = ["LiveHub", "SSEResponse", "Subscription"]

log = logging.getLogger("mohallamart.api.live")

CLIENTS = Gauge(
    "mohallamart_api_live_clients", "Live-update (SSE) clients connected to this process"
)
DISCONNECTED = Counter(
    "mohallamart_api_live_slow_disconnects_total",
    "Live clients disconnected because they fell behind",
)
DELIVERED = Counter("mohallamart_api_live_events_total", "Events queued to live clients")


_POSITION = re.compile(r"^[0-9]+(\.[0-9]+)*$", re.ASCII)


@dataclass(frozen=True)
class LiveEvent:
    slot: int  # the partition's index in the position vector
    offset: int
    type: str
    data: dict[str, Any]

    def body(self) -> bytes:
        return orjson.dumps(self.data)


def _live_event(slot: int, offset: int, ev: dict[str, Any]) -> LiveEvent | None:
    t = ev["type"]
    d = ev["data"]
    common = {"event_id": str(ev["id"]), "type": t, "occurred_at": ev["occurred_at"].isoformat()}
    if t.startswith("order."):
        # the status the order lifecycle gives it (a status change names its own)
        status = d.get("to_status") if t == "order.status_changed" else ORDER_STATUS_AFTER.get(t)
        if status is None:
            return None
        data = {
            **common,
            "order_id": d["order_id"],
            "user_id": d["user_id"],
            "shop_id": d["shop_id"],
            "status": status,
        }
        for extra in ("reason", "from_status", "total_paise"):
            if d.get(extra) is not None:
                data[extra] = d[extra]
        return LiveEvent(slot, offset, t, data)
    if t == "product.stock_changed":
        data = {
            **common,
            "product_id": d["product_id"],
            "shop_id": d["shop_id"],
            "stock": d["stock_after"],
            "delta": d["delta"],
            "in_stock": d["stock_after"] > 0,
            "reason": d["reason"],
            "sequence": d.get("sequence"),
        }
        return LiveEvent(slot, offset, t, data)
    return None


@dataclass
class Subscription:
    """What a client follows, already narrowed to what its key's principal may see."""

    users: frozenset[str] = frozenset()
    orders: frozenset[str] = frozenset()
    shops: frozenset[str] = frozenset()
    products: frozenset[str] = frozenset()
    #: order events are further limited to this user's or shop's (None: admin)
    only_user: str | None = None
    only_shop: str | None = None

    def matches(self, e: LiveEvent) -> bool:
        d = e.data
        if e.type == "product.stock_changed":
            return d["product_id"] in self.products
        if self.only_user is not None and d["user_id"] != self.only_user:
            return False
        if self.only_shop is not None and d["shop_id"] != self.only_shop:
            return False
        return (
            d["user_id"] in self.users
            or d["order_id"] in self.orders
            or (e.type == "order.created" and d["shop_id"] in self.shops)
        )


@dataclass(eq=False)
class _Client:
    sub: Subscription
    position: list[int]
    limit: int
    queue: collections.deque[tuple[LiveEvent, str]] = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    too_slow: bool = False
    gone: bool = False

    def push(self, e: LiveEvent, position_id: str) -> bool:
        if len(self.queue) >= self.limit:
            return False
        self.queue.append((e, position_id))
        self.wake.set()
        return True


class LiveHub:
    """One shared consumer of the order and product topics, fanned out to the SSE clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = [TOPICS["order"].name, TOPICS["product"].name]
        self.decoder = RegistryDecoder(SchemaRegistry(settings.registry_url).schema_by_id)
        self.slots: dict[tuple[str, int], int] = {}
        self.head: list[int] = []  # next offset the hub will receive, per slot
        self.floor: list[int] = []  # the buffer holds every event at or after this, per slot
        self.fresh: list[int] = []  # where a new client starts, at least (the end at start-up)
        self.buffers: list[collections.deque[LiveEvent]] = []
        self.clients: set[_Client] = set()
        self.ready = asyncio.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- the shared consumer (a thread) ---------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="live-hub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _consumer(self) -> Consumer:
        return Consumer(
            consumer_config(
                self.settings.kafka_bootstrap,
                f"mohallamart-live-{uuid.uuid4()}",  # never joins: partitions assigned
                {
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "fetch.wait.max.ms": 20,
                    "log_level": 3,
                },
                security=self.settings.kafka_security,
            )
        )

    def _assign(self, consumer: Consumer) -> dict[tuple[str, int], int]:
        keep = self.settings.live_buffer_per_partition
        assignment: list[TopicPartition] = []
        slots: dict[tuple[str, int], int] = {}
        starts: list[int] = []
        ends: list[int] = []
        for topic in self.topics:
            meta = consumer.list_topics(topic, timeout=5).topics[topic]
            if meta.error is not None or not meta.partitions:
                raise KafkaException(meta.error)
            for p in sorted(meta.partitions):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)
                slots[(topic, p)] = len(starts)
                start = max(low, high - keep)
                starts.append(start)
                ends.append(high)
                assignment.append(TopicPartition(topic, p, start if high > start else OFFSET_END))
        consumer.assign(assignment)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._started, slots, starts, ends)
        return slots

    def _started(
        self, slots: dict[tuple[str, int], int], starts: list[int], ends: list[int]
    ) -> None:
        self.slots = slots
        self.head = list(starts)
        self.floor = list(starts)
        self.fresh = list(ends)
        self.buffers = [collections.deque() for _ in starts]
        self.ready.set()
        log.info("live updates: following %d partitions", len(starts))

    def _run(self) -> None:
        consumer: Consumer | None = None
        # this thread's own copy: the loop learns the slots (`_started`) a moment later, and
        # every record consumed meanwhile must still be dispatched
        slots: dict[tuple[str, int], int] | None = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                if slots is None:
                    slots = self._assign(consumer)
                msgs = consumer.consume(500, 0.2)
            except Exception as exc:  # noqa: BLE001 - Kafka not there yet: try again
                log.warning("live updates: %s: %s; retrying", type(exc).__name__, exc)
                if consumer is not None and slots is None:
                    with contextlib.suppress(Exception):
                        consumer.close()
                    consumer = None
                self._stop.wait(2)
                continue
            batch: list[tuple[int, int, LiveEvent | None]] = []
            for m in msgs:
                if m.error() is not None:
                    continue
                slot = slots.get((str(m.topic()), int(m.partition() or 0)))
                offset = m.offset()
                if slot is None or offset is None:
                    continue
                batch.append((slot, offset, self._decode(slot, offset, m.value())))
            if batch:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._dispatch, batch)
        if consumer is not None:
            consumer.close()

    def _decode(self, slot: int, offset: int, value: bytes | None) -> LiveEvent | None:
        try:
            sid = self.decoder.schema_id(value)
            if self.decoder.needs(sid):
                self.decoder.load(sid)
            return _live_event(slot, offset, self.decoder.decode(value))
        except (UndecodableRecord, KeyError, ValueError):
            return None
        except Exception as exc:  # noqa: BLE001 - the registry is down: this record is skipped
            log.warning("live updates: cannot decode a record (%s)", type(exc).__name__)
            return None

    # --- on the event loop ------------------------------------------------------------------------
    def _dispatch(self, batch: list[tuple[int, int, LiveEvent | None]]) -> None:
        keep = self.settings.live_buffer_per_partition
        slow: list[_Client] = []
        for slot, offset, e in batch:
            if offset < self.head[slot]:
                continue
            self.head[slot] = offset + 1
            if e is None:
                continue
            buf = self.buffers[slot]
            buf.append(e)
            if len(buf) > keep:
                self.floor[slot] = buf.popleft().offset + 1
            for c in self.clients:
                if c.too_slow or offset < c.position[slot]:
                    continue
                c.position[slot] = offset + 1
                if c.sub.matches(e):
                    if c.push(e, self.encode(c.position)):
                        DELIVERED.inc()
                    else:
                        c.too_slow = True
                        slow.append(c)
        for c in self.clients:  # records that matched no one still move every position on
            for slot, head in enumerate(self.head):
                if c.position[slot] < head:
                    c.position[slot] = head
        for c in slow:
            DISCONNECTED.inc()
            c.wake.set()

    def encode(self, position: Iterable[int]) -> str:
        return ".".join(str(x) for x in position)

    def decode_position(self, value: str) -> list[int]:
        position = [int(x) for x in value.split(".")] if _POSITION.match(value) else []
        if len(position) != len(self.head) or any(x < 0 for x in position):
            raise Problem(
                400,
                "bad-last-event-id",
                f"Last-Event-ID must be {len(self.head)} offsets joined by '.', as sent in the "
                "events' `id` field",
            )
        return position

    def subscribe(self, sub: Subscription, last_event_id: str | None) -> _Client:
        """Register a client; with `last_event_id`, queue what it missed first (atomically: no
        batch is dispatched in between)."""
        if not self.ready.is_set():
            raise Problem(
                503,
                "live-not-ready",
                "live updates are starting; retry",
                headers={"Retry-After": "2"},
            )
        if last_event_id:
            position = self.decode_position(last_event_id)
            too_old = [
                f"{t}/{p}"
                for (t, p), slot in self.slots.items()
                if position[slot] < self.floor[slot]
            ]
            if too_old:
                raise Problem(
                    410,
                    "position-too-old",
                    "this position is older than the events this process keeps "
                    f"({', '.join(too_old)}); reconnect without Last-Event-ID",
                )
        else:
            position = [max(h, f) for h, f in zip(self.head, self.fresh, strict=True)]
        client = _Client(sub, position, self.settings.live_client_queue)
        missed: list[LiveEvent] = []
        for slot, buf in enumerate(self.buffers):
            if position[slot] >= self.head[slot]:
                continue
            missed.extend(e for e in buf if e.offset >= position[slot])
        for e in missed:  # partition by partition, in offset order
            client.position[e.slot] = e.offset + 1
            if sub.matches(e):
                client.limit += 1  # what it missed never counts against it
                client.push(e, self.encode(client.position))
        for slot, head in enumerate(self.head):
            client.position[slot] = max(client.position[slot], head)
        self.clients.add(client)
        CLIENTS.inc()
        return client

    def unsubscribe(self, client: _Client) -> None:
        if client in self.clients:
            self.clients.discard(client)
            CLIENTS.dec()

    async def chunks(self, client: _Client) -> AsyncIterator[bytes]:
        heartbeat = self.settings.live_heartbeat_s
        yield f": following {len(self.head)} partitions\nretry: 2000\n\n".encode()
        while not client.gone:
            while client.queue:  # what is queued goes out in writes of up to 64 KiB
                parts: list[bytes] = []
                size = 0
                while client.queue and size < 65536:
                    e, position_id = client.queue.popleft()
                    part = b"id: %s\nevent: %s\ndata: %s\n\n" % (
                        position_id.encode(),
                        e.type.encode(),
                        e.body(),
                    )
                    parts.append(part)
                    size += len(part)
                yield b"".join(parts)
            if client.too_slow:
                yield b'event: disconnected\ndata: {"reason": "too slow"}\n\n'
                return
            client.wake.clear()
            try:
                await asyncio.wait_for(client.wake.wait(), heartbeat)
            except TimeoutError:
                yield b": keep-alive\n\n"


class SSEResponse(Response):
    """The live stream as a raw ASGI response: every write has a deadline, so a client that does
    not read (its socket buffers full) is disconnected instead of holding anything up."""

    media_type = "text/event-stream"

    def __init__(self, hub: LiveHub, client: _Client, write_timeout_s: float) -> None:
        # not Response.__init__: the body is streamed by __call__
        self.hub, self.client, self.write_timeout_s = hub, client, write_timeout_s
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        client = self.client

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    client.gone = True
                    client.wake.set()
                    return

        watcher = asyncio.create_task(watch())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                    ],
                }
            )
            async for chunk in self.hub.chunks(client):
                try:
                    await asyncio.wait_for(
                        send({"type": "http.response.body", "body": chunk, "more_body": True}),
                        self.write_timeout_s,
                    )
                except TimeoutError:
                    client.too_slow = True
                    DISCONNECTED.inc()
                    return  # the server closes a response left incomplete
            if client.gone:
                return
            # too slow: the last event said so; end here (the server closes the connection)
        finally:
            watcher.cancel()
            self.hub.unsubscribe(client)
