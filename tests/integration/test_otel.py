"""OpenTelemetry through the real pipeline: a client's W3C `traceparent` from the HTTP request
into the Kafka records' headers, through every role and every derived event, and the spans each
process exported to the session's OTLP receiver (`tests/integration/_otlp.py`: the API and the
workers are started with its URL, see conftest's `otlp`)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from core import telemetry
from schemas.catalog import TOPICS
from tests.integration._otlp import ExportedSpan, OtlpReceiver
from tests.integration._pipeline import Pipeline, example, order_created, uid
from tests.integration._support import poll

pytestmark = pytest.mark.integration


def _record_at(p: Pipeline, topic: str, partition: int, offset: int) -> tuple[dict[str, str], Any]:
    """The headers and the decoded event of the record at `topic`/`partition`@`offset`, read
    with a plain consumer."""
    c = Consumer(
        {
            "bootstrap.servers": p.settings.kafka_bootstrap,
            "group.id": f"tests-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        c.assign([TopicPartition(topic, partition, offset)])

        def fetched() -> Any:
            msg = c.poll(1)
            return msg if msg is not None and not msg.error() else None

        msg = poll(fetched, timeout=30, what=f"the record at {topic}/{partition}@{offset}")
        assert msg.offset() == offset
        headers = {k: (v or b"").decode() for k, v in (msg.headers() or [])}
        return headers, p.decoder.decode(msg.value())
    finally:
        c.close()


def _parent(headers: dict[str, str]) -> tuple[str, str, int]:
    parsed = telemetry.parse_traceparent(headers.get("traceparent"))
    assert parsed is not None, f"no valid traceparent header: {headers}"
    return parsed


def _processing(
    spans: list[ExportedSpan], service: str, event_id: str, stage: str = ""
) -> list[ExportedSpan]:
    """The spans of `service` processing `event_id` (more than one if a rebalance or a restart
    made a worker read the record again)."""
    found = [
        s
        for s in spans
        if s.service == service
        and s.attributes.get("messaging.message.id") == event_id
        and (not stage or s.attributes.get("mohallamart.stage") == stage)
    ]
    assert found, f"no span of {service} {stage} processing {event_id}: {spans}"
    return found


def test_a_client_trace_runs_from_the_request_through_every_role_and_derived_event(
    pipeline: Pipeline, otlp: OtlpReceiver
) -> None:
    p = pipeline
    shop, pid = uid("shop"), uid("prd")
    p.post("shop.created", example("shop.created", shop_id=shop))
    p.post(
        "product.created", example("product.created", product_id=pid, shop_id=shop, initial_stock=5)
    )
    p.wait_row("SELECT 1 FROM inventory_movements WHERE product_id = %s", pid, timeout=60)

    oid = uid("ord")
    ev = order_created(oid, shop, {pid: 2})
    trace_id, client_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    r = p.http.post(
        "/v1/events", json=ev, headers={"traceparent": f"00-{trace_id}-{client_span}-01"}
    )
    assert r.status_code == 202, r.text
    ack = r.json()

    # the order's record carries the trace: the API's span is its parent
    headers, order = _record_at(p, ack["topic"], ack["partition"], ack["offset"])
    assert str(order["id"]) == ev["id"] and order["trace_id"] == trace_id
    record_trace, api_span_id, flags = _parent(headers)
    assert (record_trace, flags) == (trace_id, 1)
    assert api_span_id != client_span

    (movement,) = p.wait_row(
        "SELECT event_id FROM inventory_movements WHERE cause_event_id = %s", ev["id"], timeout=60
    )
    movement = str(movement)

    def exported() -> dict[str, ExportedSpan] | None:
        spans = otlp.spans_of(trace_id)
        found = {
            "api": [s for s in spans if s.service == "mohallamart-api"],
            "projections": [
                s
                for s in spans
                if s.service == "mohallamart-projections"
                and s.attributes.get("messaging.message.id") == ev["id"]
            ],
            "route": [
                s
                for s in spans
                if s.attributes.get("mohallamart.stage") == "stock/route_stock_events"
            ],
            "reserve": [
                s for s in spans if s.attributes.get("mohallamart.stage") == "stock/reserve_stock"
            ],
            "derived": [
                s
                for s in spans
                if s.service == "mohallamart-projections"
                and s.attributes.get("messaging.message.id") == movement
            ],
        }
        if not all(found.values()):
            return None
        return {k: v[0] for k, v in found.items()}

    try:
        poll(exported, timeout=90, interval=0.3, what="the spans of the order's trace")
    except AssertionError as exc:
        got = [
            (s.service, s.name, s.attributes.get("mohallamart.stage"))
            for s in otlp.spans_of(trace_id)
        ]
        raise AssertionError(f"{exc}\nspans of the trace so far: {got}") from None
    spans = otlp.spans_of(trace_id)

    # the API: one server span, the client's child, the record's parent
    (api,) = [s for s in spans if s.service == "mohallamart-api"]
    assert (api.name, api.parent_id, api.span_id) == ("POST /v1/events", client_span, api_span_id)
    assert api.attributes["http.response.status_code"] == 202
    assert api.attributes["mohallamart.event.id"] == ev["id"]

    # the projections and the stock role read the order's record: children of the API's span
    for projected in _processing(spans, "mohallamart-projections", ev["id"]):
        assert projected.name == "projections process" and projected.parent_id == api_span_id
        assert projected.kind == 5  # CONSUMER
        assert projected.attributes["messaging.system"] == "kafka"
        assert projected.attributes["messaging.destination.name"] == ack["topic"]
        assert projected.attributes["messaging.kafka.partition"] == ack["partition"]
        assert projected.attributes["messaging.kafka.offset"] == ack["offset"]
        assert projected.attributes["mohallamart.event.type"] == "order.created"
    routes = _processing(spans, "mohallamart-stock", ev["id"], "stock/route_stock_events")
    assert all(s.name == "stock process" and s.parent_id == api_span_id for s in routes)
    # ... the stock role's by-shop copy is the routing's child, its derived events the
    # reservation's
    reserves = _processing(spans, "mohallamart-stock", ev["id"], "stock/reserve_stock")
    assert all(s.parent_id in {r.span_id for r in routes} for s in reserves)
    reserved_by = {s.span_id for s in reserves}
    for derived in _processing(spans, "mohallamart-projections", movement):
        assert derived.parent_id in reserved_by
        assert derived.attributes["mohallamart.event.type"] == "product.stock_changed"

    # the derived events' records carry the trace, the reservation as their parent
    stock_changed = [
        (h, e)
        for h, _, e in p.records(TOPICS["product"].name, keys=[pid])
        if e and str(e["id"]) == movement
    ]
    assert stock_changed, "the product.stock_changed record"
    for h, e in stock_changed:  # a copy produced again after a crash carries the same
        assert e["trace_id"] == trace_id
        derived_trace, parent, _ = _parent(h)
        assert derived_trace == trace_id and parent in reserved_by
        assert h["x-trace-id"] == trace_id  # the header before this one, kept
    accepted = [
        h for h, _, e in p.records(ack["topic"], keys=[oid]) if e and e["type"] == "order.accepted"
    ]
    assert accepted, "the order.accepted record"
    for h in accepted:
        derived_trace, parent, _ = _parent(h)
        assert derived_trace == trace_id and parent in reserved_by


def test_an_event_posted_without_traceparent_still_carries_one(pipeline: Pipeline) -> None:
    p = pipeline
    shop = uid("shop")
    r = p.http.post(
        "/v1/events", json=p.event("shop.created", example("shop.created", shop_id=shop))
    )
    assert r.status_code == 202, r.text
    ack = r.json()
    headers, event = _record_at(p, ack["topic"], ack["partition"], ack["offset"])
    trace_id, span_id, _ = _parent(headers)
    # the trace id the API generated for the envelope is the header's
    assert telemetry.is_trace_id(event["trace_id"]) and trace_id == event["trace_id"]
    assert span_id != "0" * 16

    # a client's own X-Trace-Id stays in the envelope; the header carries its W3C form
    own = f"checkout-{uuid.uuid4().hex[:8]}"
    r = p.http.post(
        "/v1/events",
        json=p.event("shop.created", example("shop.created", shop_id=uid("shop"))),
        headers={"X-Trace-Id": own},
    )
    assert r.status_code == 202, r.text
    ack = r.json()
    headers, event = _record_at(p, ack["topic"], ack["partition"], ack["offset"])
    assert event["trace_id"] == own
    assert _parent(headers)[0] == telemetry.w3c_trace_id(own)
