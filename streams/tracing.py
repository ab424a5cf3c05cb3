"""The workers' side of tracing (see `core.telemetry`): a span per record each stage processes,
when tracing is on, and the W3C `traceparent` of every record a worker publishes, always.

- `begin` / `end`: the guard (`streams.reliability.Guard.process`) opens one consumer span per
  decoded record of a batch (`<role> process`), a child of the record's `traceparent` header, or,
  for a record without one (written before the header existed, or by a producer that sets
  none), the first span of its envelope's trace id; it ends them when the batch is settled.
  Internal records (a tick, a raw record without the header) get none.
- `child_of(record)`: the `traceparent` header of an event derived from `record`: a child of its
  processing span when tracing is on; with tracing off, the record's own `traceparent` handed on
  (nothing recorded a span here), or one in its envelope's trace id. So the propagation is there
  either way, in the cause's trace.
- `derived(record, trace_id, seed)`: the same, for an event whose envelope carries `trace_id`,
  which may be another trace than its record's (an order that waited for its product is decided
  when the product arrives: it stays in the order's trace).
- `origin(trace_id, seed, name)`: the header of an event no record caused (a scheduled job, a
  drift report): the first span of its own trace.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind, StatusCode

from core import telemetry
from core.telemetry import TRACEPARENT

if TYPE_CHECKING:
    from streams.reliability import Record

__all__ = ["TRACEPARENT", "begin", "child_of", "dead_lettered", "derived", "end", "origin"]

Header = tuple[str, bytes]


def begin(records: Iterable[Record], role: str, stage: str) -> None:
    """Open the processing span of each record (call only when `telemetry.enabled()`)."""
    name = f"{role} process"
    for r in records:
        ev = r.event
        kind = ev.get("type")
        if kind == "~tick":
            continue
        parent = None
        trace_id = None
        if TRACEPARENT in r.headers:
            parent = telemetry.extract(r.headers)
            if not telemetry.span_context(parent).is_valid:
                parent = None
        if parent is None:
            if not ev:  # a raw record of the role's own (not an event) without a header
                continue
            trace_id = telemetry.w3c_trace_id(str(ev.get("trace_id") or ev.get("id") or ""))
        # few attributes: each costs the SDK about 0.4 us, per record and role
        attributes: dict[str, str | int | bool] = {
            "messaging.system": "kafka",
            "messaging.destination.name": r.topic,
            "messaging.kafka.partition": r.partition,
            "messaging.kafka.offset": r.offset,
            "mohallamart.stage": stage,
        }
        if ev.get("id") is not None:
            attributes["messaging.message.id"] = str(ev["id"])
        if kind:
            attributes["mohallamart.event.type"] = str(kind)
        r.span = telemetry.start_span(
            name, kind=SpanKind.CONSUMER, parent=parent, trace_id=trace_id, attributes=attributes
        )


def end(records: Iterable[Record]) -> None:
    """End the processing spans `begin` opened (a record parked for a retry: marked so)."""
    for r in records:
        span = r.span
        if span is not None and span.is_recording():
            if r.parked:
                span.set_attribute("mohallamart.parked", True)
            span.end()


def dead_lettered(record: Record, error_class: str, message: str) -> None:
    """Mark the record's span as failed (if it is still open)."""
    span = record.span
    if span is not None and span.is_recording():
        span.set_attribute("mohallamart.dead_lettered", True)
        span.set_attribute("error.type", error_class)
        span.set_status(StatusCode.ERROR, f"{error_class}: {message[:200]}")


def _context(record: Record) -> tuple[str, bytes]:
    """(W3C trace id, `traceparent`) of the events `record` causes; worked out once."""
    known = record.trace
    if known is not None:
        return known
    span = record.span
    if span is not None and span.get_span_context().is_valid:
        out = telemetry.Outgoing.of_span(span)
        known = (out.trace_id, out.header)
    else:
        parsed = telemetry.parse_traceparent(record.headers.get(TRACEPARENT))
        if parsed is not None:
            known = (parsed[0], telemetry.traceparent(*parsed))
        else:
            ev = record.event
            seed = str(ev.get("id") or f"{record.topic}/{record.partition}/{record.offset}")
            trace_id = telemetry.w3c_trace_id(str(ev.get("trace_id") or seed))
            known = (trace_id, telemetry.traceparent(trace_id, telemetry.seeded_span_id(seed)))
    record.trace = known
    return known


def child_of(record: Record) -> Header:
    """The `traceparent` header of a record produced because of `record`, in its trace."""
    return TRACEPARENT, _context(record)[1]


def derived(record: Record | None, trace_id: str, seed: str) -> Header:
    """The `traceparent` header of a derived event whose envelope carries `trace_id`: a child of
    `record`'s processing when that is its trace, else the first span of `trace_id`'s own
    (`seed`: the derived event's id)."""
    w3c = telemetry.w3c_trace_id(trace_id)
    if record is not None:
        cause_trace, header = _context(record)
        if cause_trace == w3c:
            return TRACEPARENT, header
    return origin(trace_id, seed)


def origin(trace_id: str, seed: str, name: str = "") -> Header:
    """The `traceparent` header of an event nothing consumed caused (`seed`: its id). With
    tracing on and a `name`, a producer span is recorded as its parent: the first span of
    `trace_id`'s trace."""
    w3c = telemetry.w3c_trace_id(trace_id)
    if name and telemetry.enabled():
        span = telemetry.start_span(
            name,
            kind=SpanKind.PRODUCER,
            trace_id=w3c,
            attributes={"messaging.system": "kafka", "mohallamart.event.id": seed},
        )
        span.end()
        if span.get_span_context().is_valid:
            return TRACEPARENT, telemetry.traceparent_of(span.get_span_context())
    return TRACEPARENT, telemetry.traceparent(w3c, telemetry.seeded_span_id(seed))
