"""The hot loop, in bulk: how fetched records reach an agent's batch.

faust hands records on one at a time twice over. Its consumer loop delivers each record to the
agents' queues inside `wait_first(callback(message), suspend_flow.wait())`, two tasks created
and cancelled per record; its `Stream.take_events` runs a processor per record in a background
task of its own (`await sleep(0)`, sensors, a trace context, an `await` per processor) to fill
a buffer the agent then takes. At 10,000 records/s that is most of a worker's CPU
(`make profile-workers`: "event loop" and "faust consumer loop" were two thirds of it).

Here:
- `drain_messages` (the consumer's loop) runs the delivery callback inline: it almost always
  completes without suspending (the queues have room, flow control is on); only when it does
  suspend is
  the rest of it awaited under faust's `wait_first(..., suspend_flow.wait())`, so a rebalance
  still interrupts a delivery blocked on a full queue;
- `Stream.take_events` takes what the agent's queue holds in one go (up to `max_`): it waits for
  the first record, then takes every record already queued, and yields at once: `within` is
  not waited (a batch under load is what queued while the last one was handled; a lone record
  goes at once). Each record gets the bookkeeping
  faust's per-record loop gives it: tracked as unacknowledged, acknowledged after the agent has
  handled the batch (when it asks for the next). A record fetched before a rebalance (its
  consumer generation is stale, or flow control is off) is dropped without an acknowledgement:
  faust acknowledges it, so its offset could be committed although no agent saw it. faust's
  per-stream sensor calls (its `/stats` page) are not made; the per-message ones are.
Agents keep the ordinary API: `async for events in stream.take_events(n, within=s)`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import EventT
from mode.utils.times import Seconds, want_seconds

__all__ = ["Stream", "drain_messages"]


class _Resume:
    """Awaits the rest of a coroutine that suspended on `pending` when first run inline."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Any, pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # CancelledError included: the coroutine sees it
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _finish(coro: Any, pending: Any) -> Any:
    return await _Resume(coro, pending)


async def drain_messages(consumer: Any, fetcher: Any) -> None:
    """faust's `Consumer._drain_messages` (the loop that feeds the agents' queues from
    `getmany`), delivering inline. Every record fetched is delivered (the driver's read-offset
    map never drops one: see `driver.Consumer`)."""
    callback: Callable[[Any], Any] = consumer.callback
    getmany = consumer.getmany
    consumer_should_stop = consumer._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    set_flag = consumer.diag.set_flag
    unset_flag = consumer.diag.unset_flag
    commit_every = consumer._commit_every
    suspend_flow = consumer.suspend_flow
    sleep = asyncio.sleep
    yield_every = 100
    since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(CONSUMER_FETCHING)
            ait: AsyncIterator[Any] = getmany(timeout=1.0)
            await sleep(0)
            if not consumer.should_stop:
                async for _tp, message in ait:
                    since_yield += 1
                    if since_yield > yield_every:
                        await sleep(0)
                        since_yield = 0
                    if commit_every is not None and consumer._n_acked >= commit_every:
                        consumer._n_acked = 0
                        await consumer.commit()
                    coro = callback(message)
                    try:
                        pending = coro.send(None)
                    except StopIteration:
                        continue
                    # suspended (a full queue, flow control off): a rebalance may interrupt it
                    await consumer.wait_first(_finish(coro, pending), suspend_flow.wait())
                unset_flag(CONSUMER_FETCHING)
    except consumer.consumer_stopped_errors:
        if consumer.transport.app.should_stop:
            consumer.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if consumer.transport.app.should_stop:
            consumer.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        consumer.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(CONSUMER_FETCHING)


class Stream(faust.Stream[Any]):
    """faust's Stream with `take_events` in bulk (see the module's text)."""

    async def take_events(
        self, max_: int, within: Seconds
    ) -> AsyncGenerator[list[EventT[Any]], None]:
        self._finalized = True
        await self.maybe_start()
        app = self.app
        channel: Any = self.channel
        queue = channel.queue
        get, get_nowait, qsize = queue.get, queue.get_nowait, queue.qsize
        consumer = app.consumer
        add_unacked = consumer.unacked.add
        acking_topics = app.topics.acking_topics
        flow_active = app.flow_control.is_active
        on_message_in = app.sensors.on_message_in
        on_message_out = app.sensors.on_message_out
        event_cls = EventT
        _ = want_seconds(within)  # the agents' API; a batch never waits while records queue
        try:
            while not self.should_stop:
                try:
                    taken = [await get()]
                    for _i in range(min(qsize(), max_ - 1)):
                        taken.append(get_nowait())
                except StopAsyncIteration:  # how faust ends a stream (at stop): what was taken
                    return  # is neither tracked nor acknowledged, so it comes again
                events: list[EventT[Any]] = []
                generation = app.consumer_generation_id
                active = flow_active()
                for event in taken:
                    if not isinstance(event, event_cls):
                        continue
                    message = event.message
                    if not active or message.generation_id != generation:
                        # fetched before a rebalance: dropped, never acknowledged (faust acks
                        # it, and its offset could then be committed although no agent saw it:
                        # the partition's new owner would start past it). The seek to the
                        # committed offset at assignment brings it again.
                        continue
                    if message.topic in acking_topics and not message.tracked:
                        message.tracked = True
                        add_unacked(message)
                        on_message_in(message.tp, message.offset, message)
                    events.append(event)
                if not events:
                    continue
                self.events_total += len(events)
                try:
                    yield events
                finally:
                    for event in events:
                        _ack(event, on_message_out)
        finally:
            on_stop_iteration = getattr(channel, "on_stop_iteration", None)
            if on_stop_iteration is not None:
                on_stop_iteration()


def _ack(event: EventT[Any], on_message_out: Callable[..., Any]) -> None:
    if event.ack():
        message = event.message
        on_message_out(message.tp, message.offset, message)
