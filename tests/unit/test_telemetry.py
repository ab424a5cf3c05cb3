"""`core.telemetry` without a collector: the W3C `traceparent` built and read, trace ids mapped,
nothing made when no endpoint is configured, and spans (to an in-memory exporter) when one is."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import INVALID_SPAN, SpanKind
from pydantic import ValidationError

from core import telemetry
from core.settings import Settings

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, the spans kept in memory; off again afterwards."""
    exporter = InMemorySpanExporter()
    assert telemetry.setup("mohallamart-test", None, processor=SimpleSpanProcessor(exporter))
    try:
        yield exporter
    finally:
        telemetry.shutdown()


# --- the header ---------------------------------------------------------------------------------
def test_a_header_is_built_and_read_back() -> None:
    header = telemetry.traceparent(TRACE, SPAN)
    assert header == f"00-{TRACE}-{SPAN}-01".encode()
    assert telemetry.parse_traceparent(header) == (TRACE, SPAN, 1)
    assert telemetry.parse_traceparent(header.decode()) == (TRACE, SPAN, 1)
    assert telemetry.traceparent(TRACE, SPAN, 0).endswith(b"-00")


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE.upper()}-{SPAN}-01",  # upper case is not W3C
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE}-{SPAN}-01",  # the forbidden version
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE[:-1]}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}-1",
    ],
)
def test_malformed_headers_are_ignored(value: str | None) -> None:
    assert telemetry.parse_traceparent(value) is None


def test_a_later_version_is_read_by_its_first_four_fields() -> None:
    assert telemetry.parse_traceparent(f"01-{TRACE}-{SPAN}-03-what-comes") == (TRACE, SPAN, 3)


def test_the_parent_context_is_extracted_from_kafka_headers() -> None:
    header = telemetry.traceparent(TRACE, SPAN)
    for carrier in (
        [("x-trace-id", b"t"), ("traceparent", header)],  # as confluent-kafka gives them
        {"traceparent": header},  # as the workers' records hold them
        {"traceparent": header.decode()},  # an HTTP request's
    ):
        ctx = telemetry.span_context(telemetry.extract(carrier))  # type: ignore[arg-type]
        assert ctx.is_valid and ctx.is_remote
        assert (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}", int(ctx.trace_flags)) == (
            TRACE,
            SPAN,
            1,
        )
        assert telemetry.traceparent_of(ctx) == header
    for carrier in ([], [("traceparent", None)], {"traceparent": b"00-nope"}):
        assert not telemetry.span_context(telemetry.extract(carrier)).is_valid  # type: ignore[arg-type]


def test_trace_ids_of_every_form_map_to_w3c_ones() -> None:
    assert telemetry.w3c_trace_id(TRACE) == TRACE
    assert telemetry.w3c_trace_id(TRACE.upper()) == TRACE
    u = uuid.uuid4()
    assert telemetry.w3c_trace_id(str(u)) == u.hex  # the workers' fallback: an event id
    free = telemetry.w3c_trace_id("trace-from-a-client")
    assert telemetry.is_trace_id(free)
    assert free == telemetry.w3c_trace_id("trace-from-a-client")  # the same string, the same trace
    assert free != telemetry.w3c_trace_id("another")
    assert telemetry.is_trace_id(telemetry.w3c_trace_id("0" * 32))  # never the invalid id
    assert telemetry.seeded_span_id("e1") == telemetry.seeded_span_id("e1") != "0" * 16


def test_an_outgoing_context_names_its_span_in_each_record_trace() -> None:
    out = telemetry.Outgoing.of(TRACE, SPAN)
    assert out.for_trace(None) is out.header
    assert out.for_trace(TRACE) is out.header
    other = uuid.uuid4()
    assert out.for_trace(str(other)) == f"00-{other.hex}-{SPAN}-01".encode()
    fresh = telemetry.Outgoing.of(TRACE)  # no span recorded: a random parent id
    assert telemetry.parse_traceparent(fresh.header) == (TRACE, fresh.span_id, 1)


# --- off unless configured ----------------------------------------------------------------------
def test_nothing_is_set_up_without_an_endpoint() -> None:
    assert telemetry.setup("mohallamart-test", None) is False
    assert telemetry.setup("mohallamart-test", "") is False
    assert not telemetry.enabled()
    span = telemetry.start_span("x", kind=SpanKind.INTERNAL, trace_id=TRACE)
    assert span is INVALID_SPAN and not span.is_recording()
    telemetry.shutdown()  # harmless when nothing was set up


@pytest.mark.parametrize(
    ("name", "value"), [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")]
)
def test_the_standard_switches_turn_spans_off(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    assert telemetry.setup("mohallamart-test", "http://127.0.0.1:4318/v1/traces") is False
    assert not telemetry.enabled()


def test_the_endpoint_settings() -> None:
    assert Settings(_env_file=None).otel_traces_url is None  # type: ignore[call-arg]
    base = Settings(_env_file=None, otel_exporter_otlp_endpoint="http://c:4318/")  # type: ignore[call-arg]
    assert base.otel_traces_url == "http://c:4318/v1/traces"
    both = Settings(
        _env_file=None,  # type: ignore[call-arg]
        otel_exporter_otlp_endpoint="http://c:4318",
        otel_exporter_otlp_traces_endpoint="http://t:4318/custom/traces",
    )
    assert both.otel_traces_url == "http://t:4318/custom/traces"
    empty = Settings(_env_file=None, otel_exporter_otlp_endpoint="")  # type: ignore[call-arg]
    assert empty.otel_traces_url is None  # compose passes an empty value for "off"
    with pytest.raises(ValidationError, match="OTEL_EXPORTER_OTLP_ENDPOINT must be an http"):
        Settings(_env_file=None, otel_exporter_otlp_endpoint="collector:4318")  # type: ignore[call-arg]


# --- on -----------------------------------------------------------------------------------------
def test_a_root_span_takes_the_trace_id_it_is_given(spans: InMemorySpanExporter) -> None:
    assert telemetry.enabled()
    span = telemetry.start_span("root", kind=SpanKind.SERVER, trace_id=TRACE)
    span.end()
    (done,) = spans.get_finished_spans()
    assert done.context is not None and f"{done.context.trace_id:032x}" == TRACE
    assert done.parent is None
    assert done.resource.attributes["service.name"] == "mohallamart-test"
    # the next root span gets a trace of its own
    telemetry.start_span("other", kind=SpanKind.SERVER).end()
    assert f"{spans.get_finished_spans()[1].context.trace_id:032x}" != TRACE  # type: ignore[union-attr]


def test_a_span_is_the_child_of_the_context_it_is_given(spans: InMemorySpanExporter) -> None:
    parent = telemetry.extract([("traceparent", telemetry.traceparent(TRACE, SPAN))])
    span = telemetry.start_span("child", kind=SpanKind.CONSUMER, parent=parent, trace_id="1" * 32)
    header = telemetry.traceparent_of(span.get_span_context())
    span.end()
    (done,) = spans.get_finished_spans()
    assert done.parent is not None and f"{done.parent.span_id:016x}" == SPAN
    assert done.context is not None and f"{done.context.trace_id:032x}" == TRACE
    assert header == f"00-{TRACE}-{done.context.span_id:016x}-01".encode()


def test_an_unsampled_parent_makes_no_recorded_span(spans: InMemorySpanExporter) -> None:
    parent = telemetry.extract({"traceparent": telemetry.traceparent(TRACE, SPAN, 0)})
    span = telemetry.start_span("child", kind=SpanKind.CONSUMER, parent=parent)
    assert not span.is_recording()
    # yet its context goes on, with the decision: the header says "not sampled"
    assert telemetry.traceparent_of(span.get_span_context()).startswith(f"00-{TRACE}-".encode())
    assert telemetry.traceparent_of(span.get_span_context()).endswith(b"-00")
    span.end()
    assert spans.get_finished_spans() == ()


def test_shutdown_stops_the_spans(spans: InMemorySpanExporter) -> None:
    telemetry.shutdown()
    assert not telemetry.enabled()
    assert telemetry.start_span("late", kind=SpanKind.INTERNAL) is INVALID_SPAN
