"""How agents read their stream: raw records in batches, settled by a Guard before Faust acks."""

from __future__ import annotations

import asyncio
import logging
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
    """Records of a partition must come in offset order, from the committed offset on. Around
    rebalances faust can hand over a record beyond the committed offset (faust-streaming #221:
    prefetched records) and skip the ones before it. Such a jump is not processed: the
    partition is sought back to the offset expected, the batch's records of that partition are
    held (never acknowledged) and come again, in order."""

    def __init__(self, app: AppT) -> None:
        self.app = app
        self.next: dict[TP, int] = {}
        self.generation: int | None = None

    async def admit(self, events: Sequence[faust.EventT[Any]]) -> list[faust.EventT[Any]]:
        consumer: Any = self.app.consumer
        if self.app.consumer_generation_id != self.generation:  # a rebalance: start afresh
            self.generation = self.app.consumer_generation_id
            self.next.clear()
        keep: list[faust.EventT[Any]] = []
        held: list[faust.EventT[Any]] = []
        jumped: set[TP] = set()
        for e in events:
            m = e.message
            tp = m.tp
            if tp in jumped:
                held.append(e)
                continue
            expected = self.next.get(tp)
            if expected is None:
                expected = consumer._committed_offset.get(tp)  # the next offset to read
            if expected is not None and m.offset > expected:
                log.warning(
                    "%s/%d: offset %d delivered, %d expected: seeking back, holding the batch",
                    tp.topic,
                    tp.partition,
                    m.offset,
                    expected,
                )
                jumped.add(tp)
                held.append(e)
                self.next[tp] = expected
                await consumer.seek(tp, expected)
                continue
            keep.append(e)
            if expected is None or m.offset >= expected:
                self.next[tp] = m.offset + 1
        if held:
            hold_unsettled(held)
        return keep


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
