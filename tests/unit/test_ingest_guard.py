"""Nothing is produced before the event topics exist: Kafka would auto-create them with the
broker's defaults (wrong partition count and retention). Until then the API answers 503."""

from __future__ import annotations

import pytest

from api.ingest import Ingestor
from api.problems import Problem
from connectors.claims import ClaimStore
from connectors.producer import EventProducer
from core.settings import KafkaSecurity
from schemas.catalog import EVENT_TYPES
from schemas.registry import SchemaRegistry


async def test_ingest_answers_503_until_the_topics_exist() -> None:
    # Nothing listens on port 1: any attempt to reach a dependency would fail differently.
    producer = EventProducer(
        "127.0.0.1:1", security=KafkaSecurity(), delivery_timeout_ms=1000, linger_ms=1
    )
    ingestor = Ingestor(
        SchemaRegistry("http://127.0.0.1:1"),
        producer,
        ClaimStore(None, stale_after_s=30),  # type: ignore[arg-type]  # never reached
        max_event_bytes=900_000,
        request_timeout_s=2,
    )
    event = {"type": "order.created", "data": EVENT_TYPES["order.created"].example}
    prepared = ingestor.validate([event], batch=False, source="test", trace_id="t")
    with pytest.raises(Problem) as refused:
        await ingestor.ingest(prepared, batch=False)
    assert refused.value.status == 503
    assert refused.value.slug == "kafka-unavailable"
    assert refused.value.headers["Retry-After"].isdigit()
    # It stopped before the dedup claims too: reaching them (no pool) would have answered
    # "database-unavailable".


class _Registry:
    def cached_id(self, event: object) -> int:
        return 7


class _Producer:
    def __init__(self) -> None:
        self.sent: list[object] = []

    async def send(self, records: list[object]) -> list[object]:
        from connectors.producer import Delivery

        self.sent += records
        return [Delivery("mohallamart.order.events", 0, 100 + i) for i in range(len(records))]


class _Claims:
    """Claims whose database goes away after the claim: `done` fails `down` times."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.marked: list[tuple[str, str, int, int]] = []

    async def claim(self, ids: list[str], hashes: list[bytes], types: list[str]) -> list[object]:
        from connectors.claims import ClaimOutcome

        return [ClaimOutcome(i, True, True, False, None, None, None) for i in ids]

    async def done(self, delivered: list[tuple[str, str, int, int]]) -> None:
        if self.down:
            self.down -= 1
            raise OSError("connection refused")
        self.marked += delivered

    async def release(self, ids: list[str]) -> None:
        raise AssertionError("a delivered event's claim must never be released")


async def test_an_event_kafka_acknowledged_is_accepted_though_the_database_then_fails() -> None:
    """The database down between the produce and the claim's "done": the event is in Kafka, so
    the answer is its coordinates (202), not a 500 telling the client it failed; the claim is
    marked done once the database answers again."""
    import asyncio

    producer, claims = _Producer(), _Claims(down=2)
    ingestor = Ingestor(
        _Registry(),  # type: ignore[arg-type]
        producer,  # type: ignore[arg-type]
        claims,  # type: ignore[arg-type]
        max_event_bytes=900_000,
        request_timeout_s=2,
    )
    ingestor.topics_ready.set()
    event = {"type": "order.created", "data": EVENT_TYPES["order.created"].example}
    prepared = ingestor.validate([event], batch=False, source="test", trace_id="t")
    results = await ingestor.ingest(prepared, batch=False)
    assert [(r.topic, r.offset, r.duplicate) for r in results] == [
        ("mohallamart.order.events", 100, False)
    ]
    assert len(producer.sent) == 1
    for _ in range(100):  # the background marking: 0.5 s, then 1 s of backoff
        if claims.marked:
            break
        await asyncio.sleep(0.05)
    assert [m[0] for m in claims.marked] == [prepared[0].event_id]
