"""How agents read their stream: raw records in batches, settled by a Guard before Faust acks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import faust
from faust.types import TP, AppT

from streams.reliability import Record

log = logging.getLogger(__name__)

__all__ = ["hold_unsettled", "raw_batches", "raw_topic"]


def raw_topic(app: faust.App, *names: str, **kw: Any) -> faust.TopicT:
    """A topic read as bytes: the agent decodes, so undecodable bytes reach the dead-letter topic
    instead of being dropped by the framework."""
    return app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", **kw
    )


class _Continuity:
    """Records of a partition must come in offset order, from the committed offset on, each
    once. Around rebalances faust can hand over a record beyond the committed offset
    (faust-streaming #221: prefetched records) and skip the ones before it. Such a jump is not
    processed: the partition is sought back to the offset expected (once; again only if the
    records sought have not come within `RESEEK_S`), and the partition's records are held (never
    acknowledged) until the one expected comes. A record below the one expected was admitted
    already in this generation (a copy fetched again after a seek): it is held too, not
    processed twice."""

    RESEEK_S = 5.0

    def __init__(self, app: AppT) -> None:
        self.app = app
        self.next: dict[TP, int] = {}
        self.sought: dict[TP, tuple[int, float]] = {}  # partition -> (offset, when)
        self.generation: int | None = None

    async def admit(self, events: Sequence[faust.EventT[Any]]) -> list[faust.EventT[Any]]:
        consumer: Any = self.app.consumer
        if self.app.consumer_generation_id != self.generation:  # a rebalance: start afresh
            self.generation = self.app.consumer_generation_id
            self.next.clear()
            self.sought.clear()
        keep: list[faust.EventT[Any]] = []
        held: list[faust.EventT[Any]] = []
        for e in events:
            m = e.message
            tp = m.tp
            expected = self.next.get(tp)
            if expected is None:
                expected = consumer._committed_offset.get(tp)  # the next offset to read
            if expected is not None and m.offset < expected and tp in self.next:
                held.append(e)  # a copy of a record admitted already
                continue
            if expected is not None and m.offset > expected:
                held.append(e)
                self.next[tp] = expected
                last = self.sought.get(tp)
                now = time.monotonic()
                if last is None or last[0] != expected or now - last[1] > self.RESEEK_S:
                    log.warning(
                        "%s/%d: offset %d delivered, %d expected: seeking back, holding the "
                        "partition's records until it comes",
                        tp.topic,
                        tp.partition,
                        m.offset,
                        expected,
                    )
                    self.sought[tp] = (expected, now)
                    await _seek(consumer, tp, expected)
                continue
            keep.append(e)
            self.next[tp] = m.offset + 1
        if held:
            hold_unsettled(held)
        return keep


async def _seek(consumer: Any, tp: TP, offset: int) -> None:
    """Seek on the consumer's own thread. faust runs aiokafka in a thread of its own, and its
    `Consumer.seek` calls aiokafka from the caller's thread: aiokafka's `seek_to` then deletes
    the partition's fetched records while that thread iterates over them in `fetched_records`
    (a KeyError that crashes the fetcher: the worker stays up and consumes nothing) and sets a
    future of the other thread's loop. `seek_wait` runs the seek on the consumer thread."""
    thread = getattr(consumer, "_thread", None)
    if thread is None:  # a consumer without a thread of its own
        await consumer.seek(tp, offset)
        return
    await thread.seek_wait({tp: offset})


async def raw_batches(
    stream: faust.StreamT[Any], size: int, within: float
) -> AsyncIterator[tuple[Sequence[faust.EventT[Any]], list[Record]]]:
    """Batches of raw records, in offset order per partition (see `_Continuity`)."""
    continuity = _Continuity(stream.app)
    # take_events is on faust's Stream, not (yet) on its StreamT protocol
    async for events in stream.take_events(size, within=within):  # type: ignore[attr-defined]
        admitted = await continuity.admit(events)
        yield admitted, [Record.from_event(e) for e in admitted]


def hold_unsettled(events: Sequence[faust.EventT[Any]]) -> None:
    """Keep Faust from committing `events` (its take() acks in a finally, even when the agent is
    cancelled mid-batch at shutdown): marked as acked without recording their offsets, they are
    delivered again after a restart, and applied idempotently."""
    for e in events:
        e.message.acked = True


async def settle(events: Sequence[faust.EventT[Any]], work: Any) -> None:
    """Await `work`; if the agent is cancelled first, hold the batch's offsets back."""
    try:
        await work
    except asyncio.CancelledError:
        hold_unsettled(events)
        raise
