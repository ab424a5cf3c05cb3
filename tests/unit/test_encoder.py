"""The compiled Avro encoder writes exactly the bytes fastavro writes, for every event type."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from schemas.catalog import EVENT_TYPES
from schemas.codec import EventCodec
from schemas.validate import Validator


def _datum(name: str, data: dict[str, Any], occurred: datetime) -> dict[str, Any]:
    event = EVENT_TYPES[name]
    data_schema = next(f["type"] for f in event.schema["fields"] if f["name"] == "data")
    converted, errors = Validator({**data_schema, "namespace": event.schema["namespace"]}).convert(
        data
    )
    assert not errors, errors
    return {
        "id": str(uuid.uuid4()),
        "type": name,
        "occurred_at": occurred,
        "source": "api:tests ✓ ünïcode",
        "trace_id": "t" * 300,
        "data": converted,
    }


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_same_bytes_as_fastavro_for_every_example(name: str) -> None:
    codec = EventCodec(EVENT_TYPES[name].schema)
    datum = _datum(
        name, EVENT_TYPES[name].example, datetime(2026, 11, 23, 10, 15, 30, 123456, tzinfo=UTC)
    )
    assert codec.encode(7, datum) == codec.encode_fastavro(7, datum)
    assert (
        codec.decode(codec.encode(7, datum))["data"]
        == codec.decode(codec.encode_fastavro(7, datum))["data"]
    )


def test_same_bytes_for_edge_values() -> None:
    name = "analytics.tracked"
    codec = EventCodec(EVENT_TYPES[name].schema)
    data = copy.deepcopy(EVENT_TYPES[name].example)
    data["properties"] = {f"k{i}": "v" * i for i in range(200)}  # multi-byte block counts
    for occurred in (
        datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),  # negative millis
        datetime(2026, 1, 1, 5, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2262, 1, 1, tzinfo=UTC),
    ):
        datum = _datum(name, data, occurred)
        assert codec.encode(1, datum) == codec.encode_fastavro(1, datum)
    sparse = {k: v for k, v in data.items() if k in ("session_id", "kind")}
    datum = _datum(name, sparse, datetime.now(UTC))
    assert codec.encode(1, datum) == codec.encode_fastavro(1, datum)
