"""The pipeline's output records (not events): what the analytics role publishes for analytics
teams, Avro with Confluent framing like the events, one subject per topic (TopicNameStrategy:
`<topic>-value`, so any Confluent consumer or `kafka-avro-console-consumer` reads them).

- `<namespace>.analytics.windows`: a window's final result (`outputs/analytics_window.avsc`),
  keyed by `<aggregate>:<key>`, its id a UUIDv5 of aggregate, key and window start;
- `<namespace>.analytics.late`: an event that came after its window was final
  (`outputs/analytics_late.avsc`), its id a UUIDv5 of the event id, the aggregate and the key.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["ANALYTICS_LATE", "ANALYTICS_WINDOW", "Output", "late_id", "window_id"]

_DIR = Path(__file__).resolve().parent / "outputs"
#: the namespace of the output ids' UUIDv5 (fixed: ids must not change between releases)
_NS = uuid.UUID("5b0d7d0e-9a1f-5c3e-8e55-6d6f68616c6c")


@dataclass(frozen=True)
class Output:
    """One output record kind: its topic (after the namespace) and schema."""

    suffix: str  # "analytics.windows"
    schema_file: str

    def topic(self, namespace: str) -> str:
        return f"{namespace}.{self.suffix}"

    def subject(self, namespace: str) -> str:
        return f"{self.topic(namespace)}-value"

    @property
    def schema(self) -> dict[str, Any]:
        return _load(self.schema_file)


@cache
def _load(name: str) -> dict[str, Any]:
    return json.loads((_DIR / name).read_text())  # type: ignore[no-any-return]


ANALYTICS_WINDOW = Output("analytics.windows", "analytics_window.avsc")
ANALYTICS_LATE = Output("analytics.late", "analytics_late.avsc")


def window_id(aggregate: str, key: str, start_ms: int) -> str:
    """The id of a window's final result: the same window always gets the same id."""
    return str(uuid.uuid5(_NS, f"window|{aggregate}|{key}|{start_ms}"))


def late_id(event_id: str, aggregate: str, key: str) -> str:
    """The id of a late-event report: one per event and window it missed (an order's products
    each miss their own trending window)."""
    return str(uuid.uuid5(_NS, f"late|{event_id}|{aggregate}|{key}"))
