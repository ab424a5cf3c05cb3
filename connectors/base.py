"""The one contract every destination implements: a `Sink` takes a batch and answers one
`Outcome` per item.

- applied: the item is in the destination (or was already: sinks are idempotent);
- refused: the destination refuses the item for good (an illegal transition, an address the
  mail server rejects), with the reason; the runtime dead-letters the record;
- down: the destination could not be reached for this item; the runtime pauses the batch's
  partitions, backs off and offers the batch again for as long as it stays down.

A sink may instead raise `DependencyDown` for the whole batch. The runtime's side of the contract
is `streams.sinks`. Stock and analytics keep state and produce events: they are processors, not
sinks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from core.errors import PipelineError

__all__ = [
    "APPLIED",
    "ConnectorError",
    "DependencyDown",
    "Outcome",
    "Settled",
    "Sink",
    "down",
    "refused",
    "send_all",
    "settle_each",
]


class ConnectorError(PipelineError):
    """A destination refused or failed a write; wraps the client's error."""


class DependencyDown(ConnectorError):
    """The destination cannot be reached (refused, timed out, restarting): retry while it is down,
    never dead-letter."""


@dataclass(frozen=True)
class Outcome:
    """What a sink did with one item of a batch."""

    status: Literal["applied", "refused", "down"]
    reason: str = ""
    error_class: str = ""


#: the item is in the destination
APPLIED = Outcome("applied")


def refused(reason: str, error_class: str = "Refused") -> Outcome:
    """The destination refuses the item for good."""
    return Outcome("refused", reason, error_class)


def down(reason: str) -> Outcome:
    """The destination could not be reached for the item: offer it again later."""
    return Outcome("down", reason, "DependencyDown")


#: called with an item's index and outcome as soon as it is known (a sink sending items one by
#: one: the caller records each at once, so a crash repeats at most the items in flight)
Settled = Callable[[int, Outcome], Awaitable[None]]


async def settle_each(outcomes: Sequence[Outcome], settled: Settled | None) -> list[Outcome]:
    """For a sink that knows every outcome at once: report each to `settled`, return them."""
    if settled is not None:
        for i, o in enumerate(outcomes):
            await settled(i, o)
    return list(outcomes)


async def send_all(
    items: Sequence[object],
    send: Callable[[object], Awaitable[None]],
    refusal: type[Exception],
    settled: Settled | None,
) -> list[Outcome]:
    """Send every item at once (`send` limits how many are in flight); each outcome reported to
    `settled` as soon as it is known. An error other than a refusal or an outage is raised once
    every send has ended (the caller's guard treats it as the batch's fault)."""

    async def one(i: int, item: object) -> Outcome:
        try:
            await send(item)
            outcome = APPLIED
        except DependencyDown as exc:
            outcome = down(str(exc))
        except Exception as exc:
            if not isinstance(exc, refusal):
                raise
            outcome = refused(str(exc), type(exc).__name__)
        if settled is not None:
            await settled(i, outcome)
        return outcome

    results = await asyncio.gather(
        *(one(i, x) for i, x in enumerate(items)), return_exceptions=True
    )
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [r for r in results if isinstance(r, Outcome)]


class Sink(Protocol):
    """A destination written in batches."""

    async def write_batch(
        self, items: Sequence[Any], settled: Settled | None = None
    ) -> Sequence[Outcome]:
        """Apply a batch; one outcome per item, in order.

        Must be idempotent: the same batch may arrive again after a crash or a rebalance. A sink
        that writes a batch as one transaction (PostgreSQL) is all or nothing: an exception means
        nothing of it was applied. Raises DependencyDown when the destination cannot be reached
        at all."""
        ...
