"""aiokafka's offset reset after a leader change: a failed offset request with stale metadata
asks for fresh metadata (`streams.transport.driver.refresh_metadata_on_stale_offsets`)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka.errors as kafka_errors
import pytest
from aiokafka.consumer.fetcher import Fetcher

from streams.transport.driver import refresh_metadata_on_stale_offsets


class _Client:
    def __init__(self) -> None:
        self.updates = 0

    def force_metadata_update(self) -> None:
        self.updates += 1


def _fetcher(error: type[kafka_errors.KafkaError] | None) -> Any:
    class Stale(Fetcher):  # type: ignore[misc]
        async def _proc_offset_request(self, node_id: int, topic_data: Any) -> Any:
            if error is not None:
                raise error("mohallamart.product.events.redrive/1")  # as aiokafka raises it
            return {"tp": (5, None)}

    refresh_metadata_on_stale_offsets(Stale)
    refresh_metadata_on_stale_offsets(Stale)  # installed once, however often asked
    f: Any = object.__new__(Stale)
    f._client = _Client()
    return f


def test_an_offset_request_refused_by_a_former_leader_asks_for_fresh_metadata() -> None:
    # seen in the drill: 1,435 refusals by broker 4 in 150 s, no metadata asked for
    f = _fetcher(kafka_errors.NotLeaderForPartitionError)
    with pytest.raises(kafka_errors.NotLeaderForPartitionError):
        asyncio.run(f._proc_offset_request(4, {}))
    assert f._client.updates == 1


def test_other_outcomes_leave_the_metadata_alone() -> None:
    f = _fetcher(None)
    assert asyncio.run(f._proc_offset_request(4, {})) == {"tp": (5, None)}
    f = _fetcher(kafka_errors.UnsupportedForMessageFormatError)  # not a metadata problem
    with pytest.raises(kafka_errors.UnsupportedForMessageFormatError):
        asyncio.run(f._proc_offset_request(4, {}))
    assert f._client.updates == 0
