"""Ingestion: validate, encode, claim, produce, record. Shared by the single and batch routes.

A request's events are validated all-or-nothing before anything is claimed or produced. 2xx is
answered only for events the broker acknowledged (acks=all, idempotent producer).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from confluent_kafka import KafkaError
from prometheus_client import Counter, Histogram

from api.problems import Problem
from connectors.claims import ClaimStore
from connectors.producer import Delivery, EventProducer, Failure, Record, failure_kind
from core.telemetry import TRACEPARENT, Outgoing, w3c_trace_id
from schemas.catalog import EVENT_TYPES, EventType
from schemas.codec import frame
from schemas.encoder import _long, _string, compile_encoder
from schemas.fastpath import compile_fast
from schemas.registry import RegistryError, SchemaRegistry
from schemas.validate import NUL_RULE, FieldError, Validator

__all__ = ["Ingestor", "Result"]

_log = logging.getLogger("mohallamart.api")

EVENTS = Counter("mohallamart_ingest_events_total", "Events accepted (202) by type", ["type"])
DUPLICATES = Counter(
    "mohallamart_ingest_duplicates_total", "Events answered as duplicates", ["type"]
)
REJECTS = Counter(
    "mohallamart_ingest_rejects_total", "Rejected ingest requests by reason", ["reason"]
)
PRODUCE_LATENCY = Histogram(
    "mohallamart_produce_latency_seconds",
    "From produce to the broker's acknowledgement of a request's events",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_ENVELOPE_KEYS = frozenset({"type", "id", "occurred_at", "source", "trace_id", "data"})


@dataclass(slots=True)
class _Compiled:
    event: EventType
    validator: Validator  # names every bad field (the slow path)
    fast: Callable[[bytearray, Any], None]  # checks and writes valid data in one pass
    data_encoder: Callable[[dict[str, Any], bytes], bytes]  # writes what the validator converted
    type_bytes: bytes  # the Avro encoding of the `type` field


@dataclass(slots=True)
class _Prepared:
    event_id: str
    type: str
    envelope_tail: bytes  # occurred_at, source, trace_id, data: all but the schema id and id
    key: bytes
    ts_ms: int
    body_hash: bytes
    compiled: _Compiled
    traceparent: bytes  # the record's W3C header: a child of the request's span


@dataclass(frozen=True, slots=True)
class Result:
    id: str
    type: str
    topic: str
    partition: int
    offset: int
    duplicate: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "duplicate": self.duplicate,
        }


def _data_schema(event: EventType) -> tuple[dict[str, Any], str]:
    schema = event.schema
    for f in schema["fields"]:
        if f["name"] == "data":
            return f["type"], schema.get("namespace", "")
    raise ValueError(f"{event.schema_file} has no data field")


def _unavailable(dependency: str, detail: str) -> Problem:
    """503 with Retry-After: a dependency did not answer; the request may simply be retried."""
    REJECTS.labels(f"{dependency}_unavailable").inc()
    return Problem(503, f"{dependency}-unavailable", detail, headers={"Retry-After": "5"})


def _produce_failed(failed: list[tuple[int, KafkaError]], produced: int, batch: bool) -> Problem:
    """The answer to deliveries that failed (`failed`: index in the request, error). A refusal of
    an event is answered first, since the client can fix it; then an error no retry fixes (500);
    only when every failure is transient, 503 with Retry-After."""
    written = produced - len(failed)
    tail = (
        f"; {written} of {produced} event(s) were written (a retry answers them as duplicates)"
        if written
        else "; nothing was written"
    )
    kinds = [(i, err, failure_kind(err)) for i, err in failed]
    refused = [(i, err, k) for i, err, k in kinds if k in (Failure.REFUSED, Failure.TOO_LARGE)]
    if refused:
        errors = []
        for i, err, _ in refused:
            if err.code() == KafkaError.INVALID_TIMESTAMP:
                field = f"events[{i}].occurred_at" if batch else "occurred_at"
                rule = (
                    "was refused by Kafka: further from the broker's clock than the topic "
                    "accepts (log.message.timestamp.after.max.ms / before.max.ms)"
                )
            else:
                field = f"events[{i}]" if batch else "(event)"
                rule = f"was refused by Kafka: {err.str()}"
            errors.append(FieldError(field, rule))
        too_large = all(k is Failure.TOO_LARGE for _, _, k in refused)
        REJECTS.labels("too_large" if too_large else "refused_by_kafka").inc()
        return Problem(
            413 if too_large else 422,
            "event-too-large" if too_large else "refused-by-kafka",
            f"Kafka refused {len(refused)} event(s){tail}",
            errors=errors,
        )
    unexpected = [(i, err) for i, err, k in kinds if k is Failure.UNEXPECTED]
    if unexpected:
        names = sorted({err.name() for _, err in unexpected})
        _log.error(
            "Kafka failed %d of %d event(s) with an error no retry fixes: %s",
            len(unexpected),
            produced,
            "; ".join(sorted({err.str() for _, err in unexpected})),
        )
        REJECTS.labels("kafka_error").inc()
        return Problem(
            500,
            "kafka-error",
            f"Kafka failed {len(unexpected)} event(s) with an error a retry will not fix "
            f"({', '.join(names)}){tail}; the API's log has the details",
            errors=[
                FieldError(f"events[{i}]" if batch else "(event)", f"was not written: {err.name()}")
                for i, err in unexpected
            ],
        )
    return _unavailable(
        "kafka",
        f"Kafka did not acknowledge {len(failed)} of {produced} event(s) in time{tail}; "
        "retry the same request",
    )


class Ingestor:
    def __init__(
        self,
        registry: SchemaRegistry,
        producer: EventProducer,
        claims: ClaimStore,
        *,
        max_event_bytes: int,
        request_timeout_s: float,
        max_clock_skew_s: float = 60.0,
    ) -> None:
        self.registry = registry
        self.producer = producer
        self.claims = claims
        #: delivered events whose claims the database has not marked done yet (it was down)
        self._undone: list[tuple[str, str, int, int]] = []
        self._done_task: asyncio.Task[None] | None = None
        #: set once the event topics exist with their settings: producing before that would let
        #: Kafka auto-create them with the broker's defaults (wrong partition count, retention).
        self.topics_ready = asyncio.Event()
        self.max_event_bytes = max_event_bytes
        self.request_timeout_s = request_timeout_s
        self.max_clock_skew = timedelta(seconds=max_clock_skew_s)
        self._skew_rule = f"must not be more than {max_clock_skew_s:g} s in the future"
        self._compiled: dict[str, _Compiled] = {}
        for name, event in EVENT_TYPES.items():
            data_schema, namespace = _data_schema(event)
            if isinstance(data_schema, dict) and "namespace" not in data_schema:
                data_schema = {**data_schema, "namespace": namespace}
            type_bytes = bytearray()
            _string(type_bytes, name)
            self._compiled[name] = _Compiled(
                event,
                Validator(data_schema),
                compile_fast(data_schema),
                compile_encoder(data_schema),
                bytes(type_bytes),
            )
        postable = sorted(n for n, e in EVENT_TYPES.items() if e.postable)
        self._unknown_rule = "must be a known event type (GET /v1/event-types): " + ", ".join(
            postable
        )

    # --- validation --------------------------------------------------------------------------
    def _prepare(
        self,
        obj: Any,
        prefix: str,
        source: str,
        trace_id: str,
        outgoing: Outgoing,
        errors: list[FieldError],
        now: datetime,
    ) -> _Prepared | None:
        at = (lambda f: f"{prefix}{f}") if prefix else (lambda f: f)
        if not isinstance(obj, dict):
            errors.append(FieldError(prefix.rstrip(".") or "(body)", "must be an object"))
            return None
        before = len(errors)
        for k in obj:
            if k not in _ENVELOPE_KEYS:
                errors.append(FieldError(at(str(k)), "unknown field"))
        type_name = obj.get("type")
        compiled = self._compiled.get(type_name) if isinstance(type_name, str) else None
        if type_name is None:
            errors.append(FieldError(at("type"), "is required"))
        elif compiled is None:
            errors.append(FieldError(at("type"), self._unknown_rule))
        elif not compiled.event.postable:
            errors.append(
                FieldError(at("type"), "is derived by the workers and cannot be posted by clients")
            )
        event_id = obj.get("id")
        if event_id is None:
            event_id = str(uuid.uuid4())
        else:
            if not (isinstance(event_id, str) and _CANONICAL_UUID.match(event_id)):
                try:  # other spellings of a UUID (upper case, braces, no hyphens): normalise
                    event_id = str(uuid.UUID(event_id)) if isinstance(event_id, str) else None
                except ValueError:
                    event_id = None
            if event_id is None:
                errors.append(FieldError(at("id"), "must be a UUID"))
        occurred = obj.get("occurred_at")
        ts: datetime | None
        if occurred is None:
            ts = datetime.now(UTC)
        else:
            ts = None
            if isinstance(occurred, str):
                try:
                    ts = datetime.fromisoformat(occurred)
                except ValueError:
                    ts = None
            if ts is None or ts.tzinfo is None:
                errors.append(
                    FieldError(at("occurred_at"), "must be an ISO 8601 timestamp with a timezone")
                )
                ts = None
            elif ts - now > self.max_clock_skew:
                # Kafka 4 would refuse a record over an hour ahead, and anything ahead of the
                # clocks sorts after events that really happened later.
                clock = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
                errors.append(
                    FieldError(at("occurred_at"), f"{self._skew_rule} (the API's clock: {clock})")
                )
                ts = None
        for opt in ("source", "trace_id"):
            v = obj.get(opt)
            if v is not None and (not isinstance(v, str) or not 1 <= len(v) <= 200):
                errors.append(FieldError(at(opt), "must be a string of 1 to 200 characters"))
            elif v is not None and "\x00" in v:
                errors.append(FieldError(at(opt), NUL_RULE))
        if "data" not in obj:
            errors.append(FieldError(at("data"), "is required"))
        if compiled is None or not compiled.event.postable or "data" not in obj:
            return None
        raw = obj["data"]
        data_bytes = bytearray()
        try:
            compiled.fast(data_bytes, raw)
            key = raw[compiled.event.key_field]
        except Exception:  # noqa: BLE001 - Reject, or anything odd: the full validator explains
            data, data_errors = compiled.validator.convert(raw, at("data"))
            errors.extend(data_errors)
            if data_errors:
                return None
            data_bytes = bytearray(compiled.data_encoder(data, b""))
            key = data[compiled.event.key_field]
        if len(errors) > before or ts is None or event_id is None:
            return None
        # Avro writes a record as its fields in order: the envelope is id, type, occurred_at,
        # source, trace_id, data (tests/unit/test_schema_catalog.py holds every schema to it).
        tail = bytearray(compiled.type_bytes)
        ts_ms = int(ts.timestamp() * 1000)
        _long(tail, ts_ms)
        _string(tail, obj.get("source") or source)
        own_trace = obj.get("trace_id")
        _string(tail, own_trace or trace_id)
        tail += data_bytes
        body_hash = hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).digest()
        return _Prepared(
            event_id=event_id,
            type=str(type_name),
            envelope_tail=bytes(tail),
            key=str(key).encode(),
            ts_ms=ts_ms,
            body_hash=body_hash,
            compiled=compiled,
            # an event with a trace id of its own is in that trace (the request's span its parent)
            traceparent=outgoing.for_trace(own_trace),
        )

    def validate(
        self,
        events: list[Any],
        *,
        batch: bool,
        source: str,
        trace_id: str,
        outgoing: Outgoing | None = None,
    ) -> list[_Prepared]:
        """All-or-nothing: every event valid, or a 422 naming every bad field. `trace_id` goes
        into the envelopes that carry none; `outgoing` is the trace context their records' W3C
        `traceparent` names (None: `trace_id`'s trace, a parent span no one recorded)."""
        if outgoing is None:
            outgoing = Outgoing.of(w3c_trace_id(trace_id))
        errors: list[FieldError] = []
        prepared: list[_Prepared] = []
        seen: dict[str, int] = {}
        now = datetime.now(UTC)
        for i, obj in enumerate(events):
            at = f"events[{i}]." if batch else ""
            p = self._prepare(obj, at, source, trace_id, outgoing, errors, now)
            if p is None:
                continue
            if p.event_id in seen:
                errors.append(
                    FieldError(f"events[{i}].id", f"duplicates events[{seen[p.event_id]}].id")
                )
            seen[p.event_id] = i
            prepared.append(p)
        if errors:
            REJECTS.labels("invalid").inc()
            n = len({e.field.split(".", 1)[0] for e in errors}) if batch else 1
            raise Problem(
                422,
                "validation-error",
                f"{len(errors)} problem(s) in {n} event(s); nothing was written"
                if batch
                else f"{len(errors)} problem(s); nothing was written",
                errors=errors,
            )
        return prepared

    async def _release(self, ids: list[str]) -> None:
        """Release the claims of events that were not written, so that a retry, corrected or
        not, is neither a duplicate nor a conflict. A database failure here must not replace
        the answer the client needs: the claim stays pending, and a retry with the same body
        takes it over once it is stale."""
        try:
            await self.claims.release(ids)
        except Exception:
            _log.exception("releasing the dedup claims of %d unwritten event(s) failed", len(ids))

    # --- encode, claim, produce ---------------------------------------------------------------
    async def _mark_done(self, delivered: list[tuple[str, str, int, int]]) -> None:
        """Record where delivered events landed. Kafka has them: they are accepted, whatever the
        database says. If it does not answer, the answer is still 202 and their claims stay
        pending (a retry meanwhile is told "in flight", 409, never produced again) until they
        are marked done in the background, once it answers. (A 500 here told the client an
        acknowledged event had failed: the fault drill found it with PostgreSQL down.)"""
        try:
            await self.claims.done(delivered)
        except Exception as exc:  # noqa: BLE001 - psycopg errors: the database is down
            _log.warning(
                "ingest: %d delivered event(s) accepted, their claims not yet marked done (%s: "
                "%s); marking them in the background",
                len(delivered),
                type(exc).__name__,
                exc,
            )
            self._undone.extend(delivered)
            if self._done_task is None or self._done_task.done():
                self._done_task = asyncio.get_running_loop().create_task(self._finish_done())

    async def _finish_done(self) -> None:
        delay = 0.5
        while self._undone:
            batch, self._undone = self._undone, []
            try:
                await self.claims.done(batch)
            except Exception:  # noqa: BLE001 - still down: again later
                self._undone[:0] = batch
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            _log.info("ingest: %d claims marked done after the database came back", len(batch))

    async def _schema_id(self, event: EventType) -> int:
        known = self.registry.cached_id(event)
        if known is not None:
            return known
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self.registry.register, event), timeout=5
            )
        except (RegistryError, TimeoutError) as exc:
            raise _unavailable(
                "registry", "the schema registry did not answer in time; retry later"
            ) from exc

    async def _encode(self, prepared: list[_Prepared], batch: bool) -> list[Record]:
        records: list[Record] = []
        too_big: list[FieldError] = []
        ids: dict[str, int] = {}
        for i, p in enumerate(prepared):
            sid = ids.get(p.type)
            if sid is None:
                sid = ids[p.type] = await self._schema_id(p.compiled.event)
            head = bytearray(frame(sid, b""))
            _string(head, p.event_id)
            value = bytes(head) + p.envelope_tail
            if len(value) > self.max_event_bytes:
                too_big.append(
                    FieldError(
                        f"events[{i}]" if batch else "(event)",
                        f"must encode to at most {self.max_event_bytes} bytes (is {len(value)})",
                    )
                )
            records.append(
                Record(
                    p.compiled.event.topic.name,
                    p.key,
                    value,
                    p.ts_ms,
                    [(TRACEPARENT, p.traceparent)],
                )
            )
        if too_big:
            REJECTS.labels("too_large").inc()
            raise Problem(
                413,
                "event-too-large",
                "an event is too large for Kafka; nothing was written",
                errors=too_big,
            )
        return records

    async def ingest(self, prepared: list[_Prepared], *, batch: bool) -> list[Result]:
        if not self.topics_ready.is_set():
            raise _unavailable(
                "kafka", "the event topics are not created yet (Kafka unreachable); retry later"
            )
        records = await self._encode(prepared, batch)
        try:
            outcomes = await self.claims.claim(
                [p.event_id for p in prepared],
                [p.body_hash for p in prepared],
                [p.type for p in prepared],
            )
        except Exception as exc:  # psycopg errors: the database is unreachable
            raise _unavailable(
                "database", "the ingest database did not answer; retry later"
            ) from exc
        conflicts = [
            FieldError(
                f"events[{i}].id" if batch else "id",
                "was already used for an event with a different body",
            )
            for i, o in enumerate(outcomes)
            if not o.same_body
        ]
        in_flight = [
            FieldError(
                f"events[{i}].id" if batch else "id",
                "is being ingested by another request right now",
            )
            for i, o in enumerate(outcomes)
            if o.same_body and not o.claimed and not o.done
        ]
        mine = [i for i, o in enumerate(outcomes) if o.claimed]
        if conflicts or in_flight:
            await self.claims.release([prepared[i].event_id for i in mine])
            REJECTS.labels("conflict").inc()
            raise Problem(
                409,
                "id-conflict",
                "event ids conflict with events already accepted; nothing was written",
                errors=conflicts + in_flight,
            )
        t0 = time.monotonic()
        try:
            # asyncio.timeout, not wait_for: no extra task per request on the hot path.
            async with asyncio.timeout(self.request_timeout_s):
                deliveries = await self.producer.send([records[i] for i in mine])
        except TimeoutError:
            deliveries = [KafkaError(KafkaError._MSG_TIMED_OUT) for _ in mine]
        except Exception:
            # Answered 500 (nothing acknowledged): a retry must not find these ids taken. Not
            # on cancellation: records may still land, so the claims go stale instead.
            await self._release([prepared[i].event_id for i in mine])
            raise
        PRODUCE_LATENCY.observe(time.monotonic() - t0)
        delivered: list[tuple[str, str, int, int]] = []
        failed: list[tuple[int, KafkaError]] = []
        landed: dict[int, Delivery] = {}
        for i, d in zip(mine, deliveries, strict=True):
            if isinstance(d, Delivery):
                delivered.append((prepared[i].event_id, d.topic, d.partition, d.offset))
                landed[i] = d
            else:
                failed.append((i, d))
        if failed:
            await self._release([prepared[i].event_id for i, _ in failed])
        if delivered:
            await self._mark_done(delivered)
        if failed:
            raise _produce_failed(failed, len(mine), batch)
        results: list[Result] = []
        accepted: dict[str, int] = {}
        duplicates: dict[str, int] = {}
        for i, (p, o) in enumerate(zip(prepared, outcomes, strict=True)):
            if i in landed:
                d = landed[i]
                results.append(Result(p.event_id, p.type, d.topic, d.partition, d.offset, False))
                accepted[p.type] = accepted.get(p.type, 0) + 1
            else:
                assert o.topic is not None and o.partition is not None and o.offset is not None
                results.append(Result(p.event_id, p.type, o.topic, o.partition, o.offset, True))
                duplicates[p.type] = duplicates.get(p.type, 0) + 1
        for t, n in accepted.items():
            EVENTS.labels(t).inc(n)
        for t, n in duplicates.items():
            DUPLICATES.labels(t).inc(n)
        return results
