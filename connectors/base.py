"""The one contract every destination implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from core.errors import PipelineError

__all__ = ["ConnectorError", "DependencyDown", "Refusal", "Sink"]


class ConnectorError(PipelineError):
    """A destination refused or failed a write; wraps the client's error."""


class DependencyDown(ConnectorError):
    """The destination cannot be reached (refused, timed out, restarting): retry while it is down,
    never dead-letter."""


@dataclass(frozen=True)
class Refusal:
    """An event of a batch the destination refuses for good (e.g. an illegal transition)."""

    index: int  # position in the batch
    reason: str


class Sink(Protocol):
    """A destination written in batches."""

    async def write_batch(self, events: Sequence[Any]) -> Sequence[Refusal]:
        """Apply a batch; return the events refused for good (the rest are applied).

        Must be idempotent: the same batch may arrive again after a crash. All or nothing: an
        exception means nothing of the batch was applied. Raises DependencyDown when the
        destination cannot be reached."""
        ...
