"""The one agent loop that drives a sink (`connectors.base.Sink`).

A sink takes a batch and answers one `Outcome` per item: applied, refused with a reason, or not
done because its destination is down. The loop reads the agent's topics in batches
(`streams.agents._batches.raw_batches`), has the role's `Guard` decode them and settle each
record, and reads the outcomes so:

- applied: settled (acknowledged; committed once every record before it is settled too);
- refused: dead-lettered to `<topic>.dlq` with the reason (and the sink's error class);
- down: the batch's partitions pause and the batch is offered again with capped backoff for as
  long as the destination stays down (the items already applied are applied again without
  effect: sinks are idempotent); never dead-lettered.

A step before the sink (`before`) may wait or set records aside (the read side waits there until
the projections have applied what it renders, and answers `Later` for a record whose event the
projections have parked: the guard parks it for its key and offers it again). Stock and
analytics keep state and produce events: they are processors, not sinks, and have loops of
their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import faust

from connectors.base import DependencyDown, Outcome, Sink
from streams.agents._batches import raw_batches, raw_topic, settle
from streams.reliability import Guard, Handler, Later, Record, Rejection, redrive_topic

if TYPE_CHECKING:
    from streams.runtime import Runtime

__all__ = ["Before", "install_loop", "install_sink", "rejections"]

#: a step before the sink: (the records to write now, those to park for later: `Later`); it may
#: wait, or raise DependencyDown
Before = Callable[[list[Record]], Awaitable[tuple[list[Record], list[Later]]]]


def rejections(records: Sequence[Record], outcomes: Sequence[Outcome]) -> list[Rejection]:
    """The records a sink refused, for the guard to dead-letter; raises DependencyDown when the
    sink found its destination down for any item (the guard then backs off and retries)."""
    if len(outcomes) != len(records):
        raise RuntimeError(f"a sink answered {len(outcomes)} outcomes for {len(records)} items")
    for o in outcomes:
        if o.status == "down":
            raise DependencyDown(o.reason)
    return [
        Rejection(r, o.reason, o.error_class)
        for r, o in zip(records, outcomes, strict=True)
        if o.status == "refused"
    ]


def install_sink(
    rt: Runtime,
    stage: str,
    topic: str,
    sink: Sink,
    *,
    before: Before | None = None,
    owns_decode: bool = True,
    on_dead_letter: Any = None,
    positions: bool = False,
) -> None:
    """One agent `stage` reading `topic` (and its redrive topic) into `sink` through the role's
    guard: each batch's events, in offset order per partition. With `positions`, the sink is
    also given, per partition, the offset after the batch's last record (`write_batch(...,
    positions=)`: the projections record where they stand in the same transaction)."""
    guard = rt.guard(stage, owns_decode=owns_decode, on_dead_letter=on_dead_letter)

    async def handler(records: list[Record]) -> list[Rejection]:
        ready, later = (records, []) if before is None else await before(records)
        if not ready:
            return list(later)
        events = [r.event for r in ready]
        if positions:
            after: dict[tuple[str, int], int] = {}
            for r in ready:
                tp = (r.topic, r.partition)
                after[tp] = max(after.get(tp, 0), r.offset + 1)
            outcomes = await sink.write_batch(events, positions=after)  # type: ignore[call-arg]
        else:
            outcomes = await sink.write_batch(events)
        return [*rejections(ready, outcomes), *later]

    install_loop(rt, stage, topic, guard, handler)


def install_loop(
    rt: Runtime, stage: str, topic: str, guard: Guard, handler: Handler, *, batch_size: int = 0
) -> None:
    """The agent loop itself: batches of `topic` (and its redrive topic), in offset order per
    partition, each settled by `guard` running `handler` before the next is taken."""
    app: faust.App = rt.app
    size = batch_size or rt.settings.worker_batch_size
    within = rt.settings.worker_batch_window_s

    async def agent(stream: faust.StreamT[Any]) -> None:
        async for events, records in raw_batches(stream, size, within):
            await settle(events, guard.process(records, handler))

    app.agent(raw_topic(app, topic, redrive_topic(topic)), name=stage)(agent)
