"""`GET /v1/events/{event_id}/trace` (admin): one event's path through the pipeline, from the
project's own records (`connectors.trace`)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

import psycopg
from confluent_kafka import KafkaException
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from psycopg_pool import PoolTimeout

from api.auth import Authenticator
from api.deps import BearerDep
from api.problems import Problem
from api.reads import ReadSide, json_bytes
from connectors.base import DependencyDown
from connectors.trace import KafkaLookup, trace
from schemas.codec import RegistryDecoder

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["operators"])


def _lookup(request: Request) -> KafkaLookup:
    state = request.app.state
    found: KafkaLookup | None = getattr(state, "trace_kafka", None)
    if found is None:
        decoder = RegistryDecoder(state.registry.schema_by_id)
        found = state.trace_kafka = KafkaLookup(state.settings.kafka_bootstrap, decoder.decode)
    return found


@router.get(
    "/events/{event_id}/trace",
    summary="One event's path: acknowledgement, projections, stock, cache, search, "
    "notifications, dead letters and redrives (admin)",
)
async def event_trace(
    request: Request,
    _bearer: BearerDep,
    event_id: Annotated[str, Path(description="the event's id (a UUID)")],
) -> Response:
    auth: Authenticator = request.app.state.auth
    key = await auth.authenticate(request.headers.get("authorization"))
    auth.require(key, "read")
    if key.principal != "admin":
        raise Problem(403, "forbidden", "an event's trace needs an admin key")
    try:
        eid = str(uuid.UUID(event_id))
    except ValueError:
        raise Problem(
            422, "validation-error", f"not an event id (a UUID): {event_id[:64]!r}"
        ) from None
    reads: ReadSide = request.app.state.reads
    state = request.app.state
    if getattr(state, "traces", None) is None:
        # a trace reads Kafka for a second or more: two at a time, never the API's threads
        state.traces = asyncio.Semaphore(2)
    try:
        async with state.traces:
            body = await trace(
                reads.pool.connection,
                eid,
                kafka=_lookup(request),
                cache=reads.cache,
                index=reads.index,
            )
    except (DependencyDown, psycopg.OperationalError, KafkaException, OSError, PoolTimeout) as exc:
        raise Problem(
            503, "dependency-unavailable", f"the trace could not be read: {type(exc).__name__}"
        ) from exc
    if body is None:
        raise Problem(404, "not-found", f"no event {eid} was acknowledged or derived")
    return Response(json_bytes(body), media_type="application/json")
