"""Tracing through the API and the workers without a stack: the `traceparent` each record gets
(always, tracing on or off), the API's server span and the workers' processing spans (to an
in-memory exporter), and none at all when no endpoint is configured."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from api.auth import RateLimiter
from api.ingest import Ingestor
from api.problems import Problem
from api.routes.events import IngestEndpoints
from connectors.apikeys import ApiKey
from connectors.claims import ClaimOutcome
from connectors.producer import Delivery, Record
from core import telemetry
from core.settings import Settings
from schemas.catalog import EVENT_TYPES
from streams import tracing
from streams.reliability import Guard, Rejection, RetryPolicy
from streams.reliability import Record as InRecord

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CLIENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert telemetry.setup("mohallamart-test", None, processor=SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        telemetry.shutdown()


def _hex(span: ReadableSpan) -> tuple[str, str, str | None]:
    """(trace id, span id, parent span id) of a finished span, as hex."""
    assert span.context is not None
    parent = f"{span.parent.span_id:016x}" if span.parent is not None else None
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}", parent


# --- the API ------------------------------------------------------------------------------------
class _Auth:
    async def authenticate(self, authorization: str | None) -> ApiKey:
        return ApiKey("k1", "tests", ("ingest",), "admin", None, datetime.now(UTC), None)


class _Registry:
    def cached_id(self, event: Any) -> int:
        return 1


class _Claims:
    async def claim(self, ids: Sequence[str], *_: Any) -> list[ClaimOutcome]:
        return [ClaimOutcome(i, True, True, False, None, None, None) for i in ids]

    async def done(self, delivered: Any) -> None:
        pass

    async def release(self, ids: Any) -> None:
        pass


class _Producer:
    def __init__(self) -> None:
        self.records: list[Record] = []

    async def send(self, records: Sequence[Record]) -> list[Delivery]:
        self.records += records
        return [Delivery(r.topic, 0, n) for n, r in enumerate(records)]


def _endpoints(ready: bool = True) -> tuple[IngestEndpoints, _Producer]:
    producer = _Producer()
    ingestor = Ingestor(
        _Registry(),  # type: ignore[arg-type]  # only cached_id is called
        producer,  # type: ignore[arg-type]  # only send is called
        _Claims(),  # type: ignore[arg-type]
        max_event_bytes=900_000,
        request_timeout_s=2,
    )
    if ready:
        ingestor.topics_ready.set()
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    return IngestEndpoints(_Auth(), RateLimiter(1000, 2), ingestor, settings), producer  # type: ignore[arg-type]


def _order(**envelope: Any) -> dict[str, Any]:
    data = copy.deepcopy(EVENT_TYPES["order.created"].example)
    return {"type": "order.created", "data": data, **envelope}


async def _post(
    endpoints: IngestEndpoints, body: Any, batch: bool = False, **headers: str
) -> tuple[int, Any]:
    async def read(limit: int) -> bytes:
        return orjson.dumps(body)

    h = {"content-type": "application/json", "authorization": "Bearer k", **headers}
    status, out = await (endpoints.batch if batch else endpoints.single)(h, read)
    return status, orjson.loads(out)


def _header(record: Record) -> tuple[str, str, int]:
    assert record.headers is not None
    (name, value), *more = record.headers
    assert name == "traceparent" and not more
    assert isinstance(value, bytes)
    parsed = telemetry.parse_traceparent(value)
    assert parsed is not None, value
    return parsed


async def test_off_the_client_traceparent_is_handed_on_as_it_came() -> None:
    endpoints, producer = _endpoints()
    status, _ = await _post(endpoints, _order(), traceparent=CLIENT)
    assert status == 202
    (record,) = producer.records
    assert _header(record) == (CLIENT_TRACE, CLIENT_SPAN, 1)
    assert CLIENT_TRACE.encode() in record.value  # the envelope's trace id is the client's


async def test_off_an_event_without_traceparent_gets_one_in_its_own_trace() -> None:
    endpoints, producer = _endpoints()
    await _post(endpoints, _order())
    await _post(endpoints, _order(), **{"x-trace-id": "checkout-42"})
    await _post(endpoints, _order(), traceparent="00-not-a-valid-header-01")
    generated, explicit, invalid = producer.records
    trace_id, _, flags = _header(generated)
    assert telemetry.is_trace_id(trace_id) and flags == 1
    assert trace_id.encode() in generated.value  # the generated envelope trace id is the header's
    assert b"checkout-42" in explicit.value  # kept as the client wrote it in the envelope,
    assert _header(explicit)[0] == telemetry.w3c_trace_id("checkout-42")  # its W3C form here
    assert _header(invalid)[0].encode() in invalid.value  # an invalid header: a new trace


async def test_on_the_request_span_is_the_client_span_child_and_the_records_parent(
    spans: InMemorySpanExporter,
) -> None:
    endpoints, producer = _endpoints()
    status, body = await _post(endpoints, _order(), traceparent=CLIENT)
    assert status == 202
    (span,) = spans.get_finished_spans()
    trace_id, span_id, parent = _hex(span)
    assert (trace_id, parent) == (CLIENT_TRACE, CLIENT_SPAN)
    assert span.name == "POST /v1/events" and span.kind is SpanKind.SERVER
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 202
    assert span.attributes["mohallamart.event.id"] == body["id"]
    assert span.attributes["mohallamart.event.type"] == "order.created"
    (record,) = producer.records
    assert _header(record) == (CLIENT_TRACE, span_id, 1)


async def test_on_a_new_trace_is_the_envelope_trace(spans: InMemorySpanExporter) -> None:
    endpoints, producer = _endpoints()
    await _post(endpoints, _order())
    await _post(endpoints, _order(), **{"x-trace-id": "checkout-42"})
    first, second = spans.get_finished_spans()
    for span, record in zip((first, second), producer.records, strict=True):
        trace_id, span_id, parent = _hex(span)
        assert parent is None  # the first span of its trace
        assert _header(record) == (trace_id, span_id, 1)
    assert _hex(first)[0].encode() in producer.records[0].value
    assert _hex(second)[0] == telemetry.w3c_trace_id("checkout-42")


async def test_on_a_batch_is_one_span_and_an_event_with_its_own_trace_id_keeps_it(
    spans: InMemorySpanExporter,
) -> None:
    endpoints, producer = _endpoints()
    own = uuid.uuid4()
    events = [_order(), _order(trace_id=str(own)), _order()]
    status, _ = await _post(endpoints, {"events": events}, batch=True, traceparent=CLIENT)
    assert status == 202
    (span,) = spans.get_finished_spans()
    assert span.name == "POST /v1/events/batch"
    assert span.attributes is not None and span.attributes["mohallamart.events"] == 3
    _, span_id, _ = _hex(span)
    headers = [_header(r) for r in producer.records]
    assert headers == [
        (CLIENT_TRACE, span_id, 1),
        (own.hex, span_id, 1),
        (CLIENT_TRACE, span_id, 1),
    ]


async def test_on_a_refused_request_is_a_span_with_its_status(
    spans: InMemorySpanExporter,
) -> None:
    endpoints, producer = _endpoints(ready=False)
    with pytest.raises(Problem):
        await _post(endpoints, _order())  # the topics are not ready: 503
    with pytest.raises(Problem):
        await _post(endpoints, _order(), **{"content-type": "text/plain"})  # 415
    unavailable, unsupported = spans.get_finished_spans()
    assert unavailable.attributes is not None and unsupported.attributes is not None
    assert unavailable.attributes["http.response.status_code"] == 503
    assert unavailable.status.status_code is StatusCode.ERROR
    assert unsupported.attributes["http.response.status_code"] == 415
    assert unsupported.attributes["error.type"] == "unsupported-media-type"
    assert unsupported.status.status_code is StatusCode.UNSET  # the client's fault, not ours
    assert producer.records == []


# --- the workers --------------------------------------------------------------------------------
class _Decoder:
    """The records' values are JSON events here (no registry)."""

    def schema_id(self, value: bytes) -> int:
        return 1

    def needs(self, schema_id: int) -> bool:
        return False

    def decode(self, value: bytes) -> dict[str, Any]:
        return dict(orjson.loads(value))


class _KafkaProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[tuple[str, bytes]]]] = []

    async def send_and_wait(self, topic: str, *a: Any, headers: Any, **kw: Any) -> None:
        self.sent.append((topic, headers))


class _App:
    def __init__(self) -> None:
        self.producer = _KafkaProducer()


def _in(offset: int, event: dict[str, Any], headers: dict[str, bytes] | None = None) -> InRecord:
    return InRecord("orders", 2, offset, b"k", orjson.dumps(event), headers or {}, 0)


def _batch() -> tuple[InRecord, InRecord, InRecord]:
    with_header = _in(10, {"id": "e1", "type": "order.created"}, {"traceparent": CLIENT.encode()})
    old = uuid.uuid4()  # a record from before the header: its envelope's trace id
    without = _in(11, {"id": "e2", "type": "order.created", "trace_id": str(old)})
    refused = _in(12, {"id": "e3", "type": "order.created", "trace_id": "t3"})
    return with_header, without, refused


async def _process(records: Sequence[InRecord]) -> tuple[_App, dict[str, tuple[str, bytes]]]:
    """Run the records through a guard whose handler derives an event from each and refuses
    the third; returns the app and each record's derived `traceparent`."""
    app = _App()
    guard = Guard(
        app,  # type: ignore[arg-type]
        role="stock",
        stage="reserve_stock",
        decoder=_Decoder(),  # type: ignore[arg-type]
        policy=RetryPolicy(delays=()),
        park=False,
    )
    derived: dict[str, tuple[str, bytes]] = {}

    async def handler(batch: list[InRecord]) -> list[Rejection]:
        for r in batch:
            derived[r.event["id"]] = tracing.child_of(r)
        return [Rejection(r, "no stock", "StockRuleViolation") for r in batch if r.offset == 12]

    await guard.process(list(records), handler)
    return app, derived


def _dlq_traceparent(app: _App) -> bytes:
    ((topic, headers),) = app.producer.sent
    assert topic == "orders.dlq"
    return dict(headers)["traceparent"]


async def test_off_no_span_and_the_cause_context_goes_on() -> None:
    with_header, without, refused = records = _batch()
    app, derived = await _process(records)
    assert all(r.span is None for r in records)
    # the cause's own header, handed on: nothing recorded a span in between
    assert derived["e1"] == ("traceparent", CLIENT.encode())
    # no header: the envelope's trace, a parent id of the event's own
    old_trace = without.event["trace_id"].replace("-", "")
    assert derived["e2"] == (
        "traceparent",
        telemetry.traceparent(old_trace, telemetry.seeded_span_id("e2")),
    )
    # the dead letter stays in its event's trace
    assert telemetry.parse_traceparent(_dlq_traceparent(app)) == (
        telemetry.w3c_trace_id("t3"),
        telemetry.seeded_span_id("e3"),
        1,
    )


async def test_on_a_span_per_record_child_of_its_header_and_parent_of_what_it_derives(
    spans: InMemorySpanExporter,
) -> None:
    with_header, without, refused = records = _batch()
    app, derived = await _process(records)
    done = {s.attributes["messaging.message.id"]: s for s in spans.get_finished_spans()}  # type: ignore[index]
    assert sorted(done) == ["e1", "e2", "e3"]
    first, second, third = done["e1"], done["e2"], done["e3"]
    for span, r in ((first, with_header), (second, without), (third, refused)):
        assert span.name == "stock process" and span.kind is SpanKind.CONSUMER
        assert span.attributes is not None
        assert span.attributes["messaging.system"] == "kafka"
        assert span.attributes["messaging.destination.name"] == "orders"
        assert span.attributes["messaging.kafka.partition"] == 2
        assert span.attributes["messaging.kafka.offset"] == r.offset
        assert span.attributes["mohallamart.event.type"] == "order.created"
        assert span.attributes["mohallamart.stage"] == "stock/reserve_stock"
        assert span.resource.attributes["service.name"] == "mohallamart-test"
    trace_id, span_id, parent = _hex(first)
    assert (trace_id, parent) == (CLIENT_TRACE, CLIENT_SPAN)
    assert derived["e1"] == ("traceparent", telemetry.traceparent(CLIENT_TRACE, span_id))
    # without a header: the first span of the envelope's trace
    trace_id, span_id, parent = _hex(second)
    assert (trace_id, parent) == (without.event["trace_id"].replace("-", ""), None)
    assert derived["e2"] == ("traceparent", telemetry.traceparent(trace_id, span_id))
    # the refused record: dead-lettered, its span failed, the dead letter its child
    trace_id, span_id, _ = _hex(third)
    assert third.status.status_code is StatusCode.ERROR
    assert third.attributes is not None and third.attributes["mohallamart.dead_lettered"]
    assert _dlq_traceparent(app) == telemetry.traceparent(trace_id, span_id)


async def test_on_internal_records_get_no_span(spans: InMemorySpanExporter) -> None:
    tick = _in(1, {"type": "~tick"})
    raw = _in(2, {})  # a role's own record, not an event
    raw_traced = _in(3, {}, {"traceparent": CLIENT.encode()})
    tracing.begin([tick, raw, raw_traced], "analytics", "analytics/route_analytics")
    tracing.end([tick, raw, raw_traced])
    assert tick.span is None and raw.span is None
    (span,) = spans.get_finished_spans()
    assert _hex(span)[0] == CLIENT_TRACE


async def test_a_derived_event_of_another_trace_starts_from_its_own(
    spans: InMemorySpanExporter,
) -> None:
    cause = _in(5, {"id": "p1", "type": "product.created"}, {"traceparent": CLIENT.encode()})
    tracing.begin([cause], "stock", "stock/reserve_stock")
    order_trace = uuid.uuid4().hex
    # an order that waited for this product: decided now, in the order's trace
    name, value = tracing.derived(cause, order_trace, "d1")
    assert value == telemetry.traceparent(order_trace, telemetry.seeded_span_id("d1"))
    # one in the cause's trace: a child of its span
    _, same = tracing.derived(cause, CLIENT_TRACE, "d2")
    assert same == tracing.child_of(cause)[1]
    tracing.end([cause])


def test_an_event_no_record_caused_begins_a_trace() -> None:
    eid = str(uuid.uuid4())
    name, value = tracing.origin(eid, eid, "jobs schedule")
    assert (name, value) == (
        "traceparent",
        telemetry.traceparent(uuid.UUID(eid).hex, telemetry.seeded_span_id(eid)),
    )


def test_on_an_event_no_record_caused_has_a_producer_span(spans: InMemorySpanExporter) -> None:
    eid = str(uuid.uuid4())
    _, value = tracing.origin(eid, eid, "jobs schedule")
    (span,) = spans.get_finished_spans()
    assert span.name == "jobs schedule" and span.kind is SpanKind.PRODUCER
    trace_id, span_id, parent = _hex(span)
    assert (trace_id, parent) == (uuid.UUID(eid).hex, None)
    assert value == telemetry.traceparent(trace_id, span_id)
