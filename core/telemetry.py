"""Tracing: the W3C trace context on every Kafka record, and OpenTelemetry spans when configured.

Two things, kept apart:

- **Propagation, always on.** Every record the API and the workers publish carries a W3C
  `traceparent` header (`00-<trace id>-<parent span id>-<flags>`), whether or not spans are
  made: with tracing off it is built here by string formatting, no SDK call (the workers handle
  10k+ events/s). A trace id is 32 lowercase hex digits; an envelope `trace_id` of another form
  (any client string is accepted) maps to one with `w3c_trace_id`.
- **Spans, only when an OTLP endpoint is configured** (`OTEL_EXPORTER_OTLP_ENDPOINT`, or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: `Settings.otel_traces_url`). `setup` then builds a
  TracerProvider (`service.name` `mohallamart-api` or `mohallamart-<role>`) that batches spans
  to that endpoint over OTLP/HTTP; unset, `enabled()` is False and callers make no span at all.
  The SDK reads its other standard variables itself (`OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`,
  `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`...); `OTEL_SDK_DISABLED=true`
  or `OTEL_TRACES_EXPORTER=none` turns spans off as an unset endpoint does.

The provider is this module's own, never the global one: nothing else in the process (FastAPI's
built-in telemetry follows the global provider) starts making spans because tracing is on.
"""

from __future__ import annotations

import atexit
import contextvars
import hashlib
import logging
import os
import random
import re
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

__all__ = [
    "TRACEPARENT",
    "Outgoing",
    "enabled",
    "extract",
    "is_trace_id",
    "new_trace_id",
    "parse_traceparent",
    "seeded_span_id",
    "setup",
    "shutdown",
    "span_context",
    "start_span",
    "traceparent",
    "traceparent_of",
    "w3c_trace_id",
]

log = logging.getLogger(__name__)

#: the W3C header, on HTTP requests and on Kafka records alike
TRACEPARENT = "traceparent"

_HEX32 = re.compile(r"[0-9a-f]{32}\Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
# version-traceid-parentid-flags; a version after 00 may add fields (W3C: read the first four)
_TRACEPARENT = re.compile(rb"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
_PROPAGATOR = TraceContextTextMapPropagator()
_ROOT = Context()  # no parent: a span started in it begins a trace

_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None
_lock = threading.Lock()
_exit_hooked = False
#: the trace id the next root span takes (see `start_span`); 0: a random one
_forced_trace_id: contextvars.ContextVar[int] = contextvars.ContextVar(
    "mohallamart_forced_trace_id", default=0
)


# --- setup ------------------------------------------------------------------------------------
def setup(
    service: str,
    endpoint: str | None,
    *,
    processor: SpanProcessor | None = None,
    sdk_env: Mapping[str, str] | None = None,
) -> bool:
    """Make spans from now on, exported to `endpoint` (the full OTLP/HTTP traces URL) in batches,
    as `service`; returns whether tracing is on. Without an endpoint (or with
    `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`) nothing is set up and every caller
    stays on its no-span path. `processor` replaces the batch exporter (tests hand an in-memory
    one). `sdk_env`: the SDK's own variables from the settings (`.env`), put in the environment
    where it has none (the SDK reads only the environment). Called once at the start of a
    process; the provider is shut down (its last spans flushed) at exit."""
    global _provider, _tracer, _exit_hooked
    for name, value in (sdk_env or {}).items():
        os.environ.setdefault(name, value)
    if (
        os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
        or os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none"
    ):
        return False
    if not endpoint and processor is None:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class _IdGenerator(RandomIdGenerator):
        """Random ids, except a root span's trace id when the caller names it (the envelope's
        trace id, so a span and the event it handles agree)."""

        def generate_trace_id(self) -> int:
            return _forced_trace_id.get() or super().generate_trace_id()

        def is_trace_id_random(self) -> bool:
            return False  # a forced id may be a client's or a hash: flags stay 00 or 01

    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.namespace": "mohallamart"}),
        id_generator=_IdGenerator(),
        shutdown_on_exit=False,  # `shutdown` below, bounded in time
    )
    if processor is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))
    provider.add_span_processor(processor)
    with _lock:
        old, _provider = _provider, provider
        _tracer = provider.get_tracer("mohallamart")
        if not _exit_hooked:
            atexit.register(shutdown)
            _exit_hooked = True
    if old is not None:
        old.shutdown()
    log.info(
        "tracing on: spans of %s exported to %s",
        service,
        _where(endpoint) if endpoint else "(a given processor)",
    )
    return True


def _where(url: str) -> str:
    """A URL as logged: scheme, host and port only (no credentials, path or query)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "(an unreadable URL)"


def shutdown(timeout_s: float = 5.0) -> None:
    """Flush the spans not exported yet and stop making spans; waits at most `timeout_s` (a
    collector that does not answer must not hold up the end of a process). Idempotent."""
    global _provider, _tracer
    with _lock:
        provider, _provider, _tracer = _provider, None, None
    if provider is None:
        return
    done = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    done.start()
    done.join(timeout_s)
    if done.is_alive():
        log.warning("tracing: the last spans were not exported within %.0f s", timeout_s)


def enabled() -> bool:
    """Whether spans are made (an endpoint is configured). Callers check this once per request
    or batch and skip every span call when False."""
    return _tracer is not None


# --- spans ------------------------------------------------------------------------------------
def start_span(
    name: str,
    *,
    kind: trace.SpanKind,
    parent: Context | None = None,
    trace_id: str | None = None,
    attributes: Mapping[str, str | int | bool] | None = None,
) -> trace.Span:
    """A span, child of `parent` when that holds a valid span context; else the first span of
    trace `trace_id` (32 lowercase hex digits: an envelope's trace id) or of a new trace. The
    caller ends it. With tracing off: the invalid span, which records nothing."""
    tracer = _tracer
    if tracer is None:
        return trace.INVALID_SPAN
    if parent is not None and trace.get_current_span(parent).get_span_context().is_valid:
        return tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
    token = _forced_trace_id.set(int(trace_id, 16)) if trace_id else None
    try:
        return tracer.start_span(name, context=_ROOT, kind=kind, attributes=attributes)
    finally:
        if token is not None:
            _forced_trace_id.reset(token)


class _HeaderGetter(Getter[Any]):
    """Reads Kafka headers (a mapping or (key, value) pairs, values bytes) for the propagator."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        if isinstance(carrier, Mapping):
            value = carrier.get(key)
            values = [] if value is None else [value]
        else:
            values = [v for k, v in carrier if k == key and v is not None]
        if not values:
            return None
        return [v.decode("latin-1") if isinstance(v, bytes | bytearray) else str(v) for v in values]

    def keys(self, carrier: Any) -> list[str]:
        return list(carrier) if isinstance(carrier, Mapping) else [k for k, _ in carrier]


_GETTER = _HeaderGetter()


def extract(
    headers: Mapping[str, bytes | str] | Iterable[tuple[str, bytes | str | None]],
) -> Context:
    """The parent context carried by a record's (or a request's) headers, with the W3C
    TraceContext propagator (`traceparent`, and `tracestate` if any); an empty context when
    there is none or it is malformed."""
    return _PROPAGATOR.extract(headers, context=_ROOT, getter=_GETTER)


def span_context(context: Context) -> trace.SpanContext:
    """The span context `context` holds (invalid when it holds none)."""
    return trace.get_current_span(context).get_span_context()


# --- trace ids and headers (no SDK: these run with tracing off too) ---------------------------
def is_trace_id(value: str) -> bool:
    """A W3C trace id: 32 lowercase hex digits, not all zero."""
    return _HEX32.match(value) is not None and value != "0" * 32


def w3c_trace_id(trace_id: str) -> str:
    """The W3C trace id of an envelope's `trace_id`: itself when it is one (in lower case), a
    UUID's 32 digits, else the first 128 bits of its BLAKE2b hash (the same string, the same
    trace: a derived event's header finds its cause's trace)."""
    lower = trace_id.lower()
    if is_trace_id(lower):
        return lower
    if _UUID.match(lower) is not None and lower != "00000000-0000-0000-0000-000000000000":
        return lower.replace("-", "")
    digest = hashlib.blake2b(trace_id.encode("utf-8", "surrogatepass"), digest_size=16)
    return digest.hexdigest() if digest.digest() != bytes(16) else "1" * 32


def seeded_span_id(seed: str) -> str:
    """A parent span id for a record no span produced (tracing off, or a record without one):
    derived from `seed` (an event id), so a replay writes the same header."""
    digest = hashlib.blake2b(seed.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return digest if digest != "0" * 16 else "1" * 16


def new_trace_id() -> str:
    """A new random W3C trace id (a tenth of uuid4's cost: it needs no system entropy)."""
    return "%032x" % (random.getrandbits(128) or 1)  # noqa: UP031 - the fastest spelling


def _random_span_id() -> str:
    return "%016x" % (random.getrandbits(64) or 1)  # noqa: UP031


def traceparent(trace_id: str, span_id: str, flags: int = 1) -> bytes:
    """The `traceparent` value `00-<trace_id>-<span_id>-<flags>` (flags 01: sampled)."""
    return b"00-%s-%s-%02x" % (trace_id.encode(), span_id.encode(), flags & 0xFF)


def traceparent_of(context: trace.SpanContext) -> bytes:
    """The `traceparent` value that makes a record the child of the span of `context`."""
    return b"00-%032x-%016x-%02x" % (context.trace_id, context.span_id, context.trace_flags)


def parse_traceparent(value: bytes | str | None) -> tuple[str, str, int] | None:
    """(trace id, parent span id, flags) of a `traceparent` value, or None when it is absent or
    not valid W3C (an all-zero id, version ff, extra fields after version 00). Cheap: a regular
    expression, no SDK."""
    if not value:
        return None
    raw = value.encode("latin-1") if isinstance(value, str) else value
    m = _TRACEPARENT.match(raw)
    if m is None:
        return None
    version, trace_id, span_id, flags = m.groups()
    rest = raw[m.end() :]
    if version == b"ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == b"00" and rest.strip(b" \t"):
        return None
    if version != b"00" and rest and not rest.startswith(b"-"):
        return None
    return trace_id.decode(), span_id.decode(), int(flags, 16)


class Outgoing(NamedTuple):  # a tuple: built once per request on the API's hot path
    """The trace context a request or a record hands to the records it produces: their
    `traceparent` names `span_id` (the span that produced them) in trace `trace_id`."""

    trace_id: str
    span_id: str
    flags: int
    header: bytes

    @classmethod
    def of(cls, trace_id: str, span_id: str | None = None, flags: int = 1) -> Outgoing:
        """`span_id` None: a random one (nothing recorded a span here: the records' parent is
        only a name)."""
        span_id = span_id or _random_span_id()
        return cls(trace_id, span_id, flags, traceparent(trace_id, span_id, flags))

    @classmethod
    def of_span(cls, span: trace.Span) -> Outgoing:
        ctx = span.get_span_context()
        return cls(
            "%032x" % ctx.trace_id,  # noqa: UP031
            "%016x" % ctx.span_id,  # noqa: UP031
            int(ctx.trace_flags),
            traceparent_of(ctx),
        )

    def for_trace(self, trace_id: str | None) -> bytes:
        """The header of a record whose envelope carries `trace_id` (None: this trace): this
        context's, or the same parent in that record's own trace."""
        if not trace_id:
            return self.header
        w3c = w3c_trace_id(trace_id)
        return self.header if w3c == self.trace_id else traceparent(w3c, self.span_id, self.flags)
