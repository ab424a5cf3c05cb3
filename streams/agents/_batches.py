"""How agents read their stream: raw records in batches, settled by a Guard before Faust acks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import faust

from streams.reliability import Record
from streams.transport import AppPositions, Continuity, Fence, Fenced, fence_of, hold

log = logging.getLogger(__name__)

__all__ = ["fence_check", "hold_unsettled", "raw_batches", "raw_topic"]


def raw_topic(app: faust.App, *names: str, **kw: Any) -> faust.TopicT:
    """A topic read as bytes: the agent decodes, so undecodable bytes reach the dead-letter topic
    instead of being dropped by the framework."""
    return app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", **kw
    )


async def raw_batches(
    stream: faust.StreamT[Any], size: int, within: float
) -> AsyncIterator[tuple[Sequence[faust.EventT[Any]], list[Record]]]:
    """Batches of raw records, in offset order per partition (see `transport.Continuity`); the
    records held back are never acknowledged (they come again)."""
    continuity = Continuity(AppPositions(stream.app))
    # take_events is on faust's Stream, not (yet) on its StreamT protocol
    async for events in stream.take_events(size, within=within):  # type: ignore[attr-defined]
        admitted, held = await continuity.admit(events)
        if held:
            hold_unsettled(held)
        yield admitted, [Record.from_event(e) for e in admitted]


def hold_unsettled(events: Sequence[faust.EventT[Any]]) -> None:
    """Keep Faust from committing `events` (its take() acks in a finally, even when the agent is
    cancelled mid-batch at shutdown): marked as acked without recording their offsets, they are
    delivered again after a restart, and applied idempotently."""
    for e in events:
        hold(e)


async def settle(events: Sequence[faust.EventT[Any]], work: Any) -> None:
    """Await `work`; if the agent is cancelled first, hold the batch's offsets back. A batch
    abandoned by the zombie fence (`Fenced`) is held back too: its records come again to the
    partitions' owner, and the agent goes on with its next batch."""
    try:
        await work
    except asyncio.CancelledError:
        hold_unsettled(events)
        raise
    except Fenced:
        hold_unsettled(events)


async def fence_check(app: faust.App, events: Iterable[faust.EventT[Any]], what: str) -> None:
    """Before a stateful stage writes a batch's state: raise `Fenced` unless this worker is a
    member of its group's current generation, the one the batch was fetched in (see
    `streams.transport.fence`). Nothing for a role without a fence."""
    fence: Fence | None = fence_of(app)
    if fence is not None:
        await fence.check((e.message.generation_id for e in events), what)
