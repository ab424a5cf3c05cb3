"""The trace of one ingest request: its envelope trace id, its server span (tracing on), and the
`traceparent` its records carry (always)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, StatusCode

from api.problems import Problem
from core import telemetry
from core.telemetry import Outgoing

__all__ = ["IngestTrace"]


class IngestTrace:
    """Entered around an ingest request. The envelope trace id of its events (`trace_id`):

    1. an `X-Trace-Id` header, as given (up to 200 characters: a client's business trace id
       stays what it looks events up by);
    2. else a client's valid W3C `traceparent`: its trace id;
    3. else a new one (32 random lowercase hex digits).

    The request's span and its records' `traceparent` continue the client's W3C trace when it
    sent one (the span its child), else the envelope's trace id in its W3C form
    (`telemetry.w3c_trace_id`: itself when it is 32 lowercase hex digits).

    `outgoing` is what the records' `traceparent` names: the request's span, or with tracing
    off the client's own parent (nothing recorded a span here) or a random span id. With tracing
    off no span is made: the whole cost is reading the headers and formatting one header."""

    __slots__ = ("outgoing", "span", "status", "trace_id")

    def __init__(self, headers: Mapping[str, str], route: str) -> None:
        #: the answer's status, when the request succeeds (the caller sets it)
        self.status = 200
        client = telemetry.parse_traceparent(headers.get(telemetry.TRACEPARENT))
        explicit = headers.get("x-trace-id")
        if explicit:
            self.trace_id = explicit[:200]
        elif client is not None:
            self.trace_id = client[0]
        else:
            self.trace_id = telemetry.new_trace_id()
        # the spans and headers continue a client's W3C trace; else the envelope's, in W3C form
        w3c = client[0] if client is not None else telemetry.w3c_trace_id(self.trace_id)
        if not telemetry.enabled():
            self.span: Span = INVALID_SPAN
            self.outgoing = Outgoing.of(*client) if client is not None else Outgoing.of(w3c)
            return
        self.span = telemetry.start_span(
            f"POST {route}",
            kind=SpanKind.SERVER,
            parent=telemetry.extract(headers) if client is not None else None,
            trace_id=w3c,  # when it has no (valid) parent
            attributes={"http.request.method": "POST", "http.route": route, "url.path": route},
        )
        self.outgoing = Outgoing.of_span(self.span)

    def events(self, prepared: Sequence[Any]) -> None:
        """Name the request's events on its span (one: its id and type; a batch: how many)."""
        span = self.span
        if not span.is_recording():
            return
        if len(prepared) == 1:
            span.set_attribute("mohallamart.event.id", prepared[0].event_id)
            span.set_attribute("mohallamart.event.type", prepared[0].type)
        span.set_attribute("mohallamart.events", len(prepared))

    def __enter__(self) -> IngestTrace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self.span
        if not span.is_recording():
            return
        if isinstance(exc, Problem):
            status = exc.status
            span.set_attribute("error.type", exc.slug)
        elif exc is not None:
            status = 500
            span.record_exception(exc)
            span.set_attribute("error.type", type(exc).__qualname__)
        else:
            status = self.status
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(StatusCode.ERROR)
        span.end()
