"""`POST /v1/events`, `POST /v1/events/batch`, `GET /v1/event-types`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from api.auth import Authenticator, RateLimiter
from api.deps import BearerDep
from api.ingest import Ingestor
from api.problems import Problem, json_answer, problems
from api.tracing import IngestTrace
from core.settings import Settings
from schemas.catalog import EVENT_TYPES
from schemas.jsonschema import postable_event_schemas
from schemas.validate import FieldError as _fe

__all__ = ["IngestEndpoints", "read_capped", "read_limited", "require_json", "router"]

router = APIRouter(prefix="/v1", tags=["events"])


def _json(body: Any, status: int) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


Reader = Callable[[int], Awaitable[bytes]]


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Problem(400, "malformed-json", f"the request body is not valid JSON: {exc}") from None


_JSON = "application/json"


def require_json(content_type: str | None) -> None:
    """415 unless the body is declared `application/json` (parameters such as `charset` allowed,
    the type in any case). Only that type: `application/*+json` types name other documents
    (`application/problem+json` is an error report), and every JSON client sends this one.
    The usual spelling costs one string compare."""
    if content_type == _JSON:
        return
    if content_type is not None and content_type.split(";", 1)[0].strip().lower() == _JSON:
        return
    got = f"got {content_type[:100]!r}" if content_type else "none was sent"
    raise Problem(
        415,
        "unsupported-media-type",
        f"the body must be sent as Content-Type: application/json ({got}); nothing was written",
        errors=[_fe("Content-Type", "must be application/json")],
    )


class IngestEndpoints:
    """The ingest routes' logic, free of any web framework: the FastAPI routes below and the
    ASGI fast path (`api.fastpath`) both call it, so they cannot drift apart."""

    def __init__(
        self, auth: Authenticator, limiter: RateLimiter, ingestor: Ingestor, settings: Settings
    ) -> None:
        self.auth = auth
        self.limiter = limiter
        self.ingestor = ingestor
        self.settings = settings

    async def single(self, headers: Mapping[str, str], read: Reader) -> tuple[int, bytes]:
        with IngestTrace(headers, "/v1/events") as trace:
            key = await self.auth.authenticate(headers.get("authorization"))
            Authenticator.require(key, "ingest")
            require_json(headers.get("content-type"))
            await self.limiter.take(key, 1)
            obj = _parse(await read(self.settings.ingest_max_body_bytes))
            prepared = self.ingestor.validate(
                [obj],
                batch=False,
                source=f"api:{key.name}",
                trace_id=trace.trace_id,
                outgoing=trace.outgoing,
            )
            trace.events(prepared)
            (result,) = await self.ingestor.ingest(prepared, batch=False)
            trace.status = 200 if result.duplicate else 202
            return trace.status, orjson.dumps(result.as_dict())

    async def batch(self, headers: Mapping[str, str], read: Reader) -> tuple[int, bytes]:
        with IngestTrace(headers, "/v1/events/batch") as trace:
            return await self._batch(headers, read, trace)

    async def _batch(
        self, headers: Mapping[str, str], read: Reader, trace: IngestTrace
    ) -> tuple[int, bytes]:
        key = await self.auth.authenticate(headers.get("authorization"))
        Authenticator.require(key, "ingest")
        require_json(headers.get("content-type"))
        settings = self.settings
        body = _parse(await read(settings.ingest_max_batch_body_bytes))
        if not isinstance(body, dict):
            raise Problem(
                422,
                "validation-error",
                "the body must be an object with `events`",
                errors=[_fe("(body)", "must be an object")],
            )
        unknown = [k for k in body if k != "events"]
        events = body.get("events")
        if unknown or not isinstance(events, list) or not events:
            errs = [_fe(k, "unknown field") for k in unknown]
            if events is None:
                errs.append(_fe("events", "is required"))
            elif not isinstance(events, list):
                errs.append(_fe("events", "must be an array"))
            elif not events:
                errs.append(_fe("events", "must have at least 1 item"))
            raise Problem(
                422, "validation-error", "invalid batch; nothing was written", errors=errs
            )
        if len(events) > settings.ingest_max_batch:
            raise Problem(
                413,
                "batch-too-large",
                f"a batch holds at most {settings.ingest_max_batch} events (got {len(events)})",
                errors=[_fe("events", f"must have at most {settings.ingest_max_batch} items")],
            )
        await self.limiter.take(key, len(events))
        prepared = self.ingestor.validate(
            events,
            batch=True,
            source=f"api:{key.name}",
            trace_id=trace.trace_id,
            outgoing=trace.outgoing,
        )
        trace.events(prepared)
        results = await self.ingestor.ingest(prepared, batch=True)
        trace.status = 200 if all(r.duplicate for r in results) else 202
        return trace.status, orjson.dumps({"results": [r.as_dict() for r in results]})


async def read_capped(
    chunks: AsyncIterator[bytes], content_length: str | None, limit: int
) -> bytes:
    """The request body, or 413 as soon as it is known to exceed `limit` bytes."""
    too_large = Problem(413, "body-too-large", f"the request body must be at most {limit} bytes")
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise too_large
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def read_limited(request: Request) -> Reader:
    async def read(limit: int) -> bytes:
        return await read_capped(request.stream(), request.headers.get("content-length"), limit)

    return read


def _examples() -> dict[str, Any]:
    return {
        name: {
            "summary": e.description,
            "value": {"type": name, "data": e.example},
        }
        for name, e in EVENT_TYPES.items()
        if e.postable
    }


#: one event as a client posts it: one branch per postable type (its envelope and `data`,
#: from its Avro schema: `schemas.jsonschema`)
_EVENT_SCHEMA = {"oneOf": postable_event_schemas()}
_ERRORS = problems(
    {
        400: "malformed JSON",
        401: "no key, or an unknown, revoked or expired key",
        403: "the key lacks the `ingest` scope",
        409: "an id already used with a different body, or being ingested right now",
        413: "over the size limit, or an event too large for Kafka",
        415: "the body is not sent as Content-Type: application/json",
        422: "unknown type, unknown field, missing or invalid field, `occurred_at` too far in "
        "the future, or an event Kafka refused",
        429: "over the key's rate (Retry-After)",
        500: "Kafka failed an event with an error a retry will not fix",
        503: "Kafka, the registry or the ingest database did not answer in time (Retry-After)",
    }
)
_RESULT_SCHEMA = {
    "type": "object",
    "required": ["id", "type", "topic", "partition", "offset", "duplicate"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "type": {"type": "string"},
        "topic": {"type": "string"},
        "partition": {"type": "integer", "minimum": 0},
        "offset": {"type": "integer", "minimum": 0},
        "duplicate": {
            "type": "boolean",
            "description": "true: accepted before, not produced again",
        },
    },
}
_BATCH_RESULT_SCHEMA = {
    "type": "object",
    "required": ["results"],
    "additionalProperties": False,
    "properties": {"results": {"type": "array", "items": _RESULT_SCHEMA}},
}
_RESULT_EXAMPLE = {
    "id": "0b6f1c1e-3f5e-4a57-9a39-5d0f6c2d9b11",
    "type": "order.created",
    "topic": "mohallamart.order.events",
    "partition": 2,
    "offset": 41,
    "duplicate": False,
}


_CATALOGUE_SCHEMA = {
    "type": "object",
    "required": ["event_types"],
    "properties": {
        "event_types": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "topic", "key_field", "postable", "schema", "example"],
            },
        }
    },
}


@router.post(
    "/events",
    status_code=202,
    summary="Ingest one event",
    description="202 once the broker acknowledged it; 200 with `duplicate: true` for an id "
    "already accepted (nothing is produced again). No string may contain the NUL character "
    "(U+0000): 422, as no store of the pipeline can hold it.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _EVENT_SCHEMA, "examples": _examples()}},
        }
    },
    responses={
        202: {
            "description": "accepted",
            "content": {"application/json": {"schema": _RESULT_SCHEMA, "example": _RESULT_EXAMPLE}},
        },
        200: json_answer("a duplicate of an accepted event", _RESULT_SCHEMA),
        **_ERRORS,
    },
)
async def post_event(request: Request, _: BearerDep) -> Response:
    endpoints: IngestEndpoints = request.app.state.endpoints
    status, body = await endpoints.single(request.headers, read_limited(request))
    return Response(body, status_code=status, media_type="application/json")


@router.post(
    "/events/batch",
    status_code=202,
    summary="Ingest up to 1,000 events, all or nothing",
    description="Every event is validated before any is written. 202 with one result per "
    "event, in order; 200 if every event was a duplicate.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["events"],
                        "additionalProperties": False,
                        "properties": {
                            "events": {
                                "type": "array",
                                "items": _EVENT_SCHEMA,
                                "minItems": 1,
                                "maxItems": 1000,
                            }
                        },
                    },
                    "examples": {
                        "two events": {
                            "value": {
                                "events": [
                                    {"type": n, "data": EVENT_TYPES[n].example}
                                    for n in ("user.registered", "order.created")
                                    if n in EVENT_TYPES
                                ]
                            }
                        }
                    },
                }
            },
        }
    },
    responses={
        202: {
            "description": "accepted",
            "content": {
                "application/json": {
                    "schema": _BATCH_RESULT_SCHEMA,
                    "example": {"results": [_RESULT_EXAMPLE]},
                }
            },
        },
        200: json_answer("every event a duplicate of an accepted one", _BATCH_RESULT_SCHEMA),
        **_ERRORS,
    },
)
async def post_batch(request: Request, _: BearerDep) -> Response:
    endpoints: IngestEndpoints = request.app.state.endpoints
    status, body = await endpoints.batch(request.headers, read_limited(request))
    return Response(body, status_code=status, media_type="application/json")


@router.get(
    "/event-types",
    summary="Every event type: topic, key, schema, example, postable",
    description="Public, like the OpenAPI document: it is the contract, not data.",
    responses={200: json_answer("the catalogue", _CATALOGUE_SCHEMA)},
)
async def event_types() -> Response:
    return _json(
        {
            "event_types": [
                {
                    "type": name,
                    "category": e.category,
                    "description": e.description,
                    "topic": e.topic.name,
                    "partitions": e.topic.partitions,
                    "key_field": f"data.{e.key_field}",
                    "subject": e.subject,
                    "postable": e.postable,
                    "schema": e.schema,
                    "example": {"type": name, "data": e.example},
                }
                for name, e in EVENT_TYPES.items()
            ]
        },
        200,
    )
