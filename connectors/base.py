"""The one contract every destination implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from mohallamart.errors import PipelineError

__all__ = ["ConnectorError", "Sink"]


class ConnectorError(PipelineError):
    """A destination refused or failed a write; wraps the client's error."""


class Sink(Protocol):
    """A destination written in batches."""

    async def write_batch(self, events: Sequence[Any]) -> None:
        """Apply a batch. Must be idempotent: the same batch may arrive again after a crash."""
        ...
