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
