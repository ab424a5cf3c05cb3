"""The operators' routes (admin keys only): `GET /v1/events/{event_id}/trace`, one event's path
through the pipeline from the project's own records (`connectors.trace`); the dashboard's data
(`/v1/ops/overview`, its live stream `/v1/ops/stream`, the dead letters and their redrive); and
the dashboard itself at `/ops` (a page and its assets from the repository, no key in it)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path as FilePath
from typing import Annotated, Any

import orjson
import psycopg
from confluent_kafka import KafkaException
from fastapi import APIRouter, FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, Field, ValidationError

from api.auth import Authenticator, key_problems
from api.deps import BearerDep
from api.ops_monitor import OpsMonitor
from api.problems import Problem, json_answer, problems
from api.reads import ReadSide, json_bytes
from connectors.base import DependencyDown
from connectors.dlq import DlqError, list_dead_letters, redrive
from connectors.trace import KafkaLookup, scrub, trace
from schemas.codec import RegistryDecoder

__all__ = ["mount_assets", "page", "router"]

router = APIRouter(prefix="/v1", tags=["operators"])
page = APIRouter(include_in_schema=False)

ASSETS = FilePath(__file__).resolve().parent.parent / "static" / "ops"
#: the page loads nothing but its own assets and talks only to this API
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def _admin(request: Request, what: str) -> None:
    auth: Authenticator = request.app.state.auth
    key = await auth.authenticate(request.headers.get("authorization"))
    auth.require(key, "read")
    if key.principal != "admin":
        raise Problem(403, "forbidden", f"{what} needs an admin key")


_ADMIN = key_problems("read", admin=True)
_INVALID = "a parameter breaks its rule"
_SSE = {
    200: {
        "description": "the stream, until the client leaves",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **problems(_ADMIN),
}


def _lookup(request: Request) -> KafkaLookup:
    state = request.app.state
    found: KafkaLookup | None = getattr(state, "trace_kafka", None)
    if found is None:
        decoder = RegistryDecoder(state.registry.schema_by_id)
        found = state.trace_kafka = KafkaLookup(
            state.settings.kafka_bootstrap, decoder.decode, security=state.settings.kafka_security
        )
    return found


@router.get(
    "/events/{event_id}/trace",
    summary="One event's path: acknowledgement, projections, stock, cache, search, "
    "notifications, dead letters and redrives (admin)",
    responses={
        200: json_answer("the event's hops, in order"),
        **problems(
            {
                **_ADMIN,
                404: "no event of this id was acknowledged or derived",
                422: "not an event id (a UUID)",
                503: "the key could not be checked, or PostgreSQL, Kafka or the registry did "
                "not answer",
            }
        ),
    },
)
async def event_trace(
    request: Request,
    _bearer: BearerDep,
    event_id: Annotated[str, Path(description="the event's id (a UUID)")],
) -> Response:
    await _admin(request, "an event's trace")
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


# --- the dashboard's data -----------------------------------------------------------------------
@router.get(
    "/ops/overview",
    summary="Consumer lag per role and partition, rates, dependencies, dead letters, rebuilds "
    "(admin)",
    responses={200: json_answer("the overview"), **problems(_ADMIN)},
)
async def ops_overview(request: Request, _bearer: BearerDep) -> Response:
    await _admin(request, "the operators' overview")
    monitor: OpsMonitor = request.app.state.ops
    return Response(json_bytes(await monitor.snapshot()), media_type="application/json")


@router.get(
    "/ops/stream",
    summary="The overview as Server-Sent Events (`event: overview`), one every "
    "OPS_STREAM_EVERY_S (admin)",
    response_class=Response,
    responses=_SSE,
)
async def ops_stream(request: Request, _bearer: BearerDep) -> StreamingResponse:
    await _admin(request, "the operators' overview")
    monitor: OpsMonitor = request.app.state.ops

    async def frames() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        while not await request.is_disconnected():
            try:  # a key revoked meanwhile ends the stream (the check is cached for seconds)
                await _admin(request, "the operators' overview")
            except Problem as exc:
                yield b"event: error\ndata: " + orjson.dumps({"status": exc.status}) + b"\n\n"
                return
            snap = await monitor.snapshot()
            yield b"event: overview\ndata: " + orjson.dumps(snap) + b"\n\n"
            await asyncio.sleep(monitor.every_s)

    return StreamingResponse(
        frames(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _letters(request: Request) -> asyncio.Semaphore:
    state = request.app.state
    if getattr(state, "dlq_reads", None) is None:
        # reading the dead-letter topics takes a thread and a Kafka consumer: one at a time
        state.dlq_reads = asyncio.Semaphore(1)
    sem: asyncio.Semaphore = state.dlq_reads
    return sem


@router.get(
    "/ops/dead-letters",
    summary="Dead-letter records, newest first (admin); `status`: pending (default) or all; "
    "`limit`: 1-1000 (100)",
    responses={
        200: json_answer("the dead letters"),
        **problems(
            {
                **_ADMIN,
                422: _INVALID,
                503: "the key could not be checked, or the dead-letter topics could not be read",
            }
        ),
    },
)
async def ops_dead_letters(
    request: Request,
    _bearer: BearerDep,
    status: Annotated[str, Query(description="pending (not redriven yet) or all")] = "pending",
    limit: Annotated[str, Query(description="at most this many, 1-1000")] = "100",
) -> Response:
    await _admin(request, "the dead letters")  # before the parameters: 401/403 first
    if status not in ("pending", "all"):
        raise Problem(422, "validation-error", "status: pending or all")
    try:
        most = int(limit)
    except ValueError:
        most = 0
    if not 1 <= most <= 1000:
        raise Problem(422, "validation-error", "limit: a whole number from 1 to 1000")
    settings = request.app.state.settings
    try:
        async with _letters(request):
            letters = await asyncio.to_thread(list_dead_letters, settings)
    except DlqError as exc:
        raise Problem(
            503, "dependency-unavailable", "the dead-letter topics could not be read"
        ) from exc
    rows = [dl.as_dict() for dl in letters]
    if status == "pending":
        rows = [r for r in rows if r["status"] == "pending"]
    for r in rows:
        r["error"] = scrub(r["error"])
        r["detail"] = scrub(r["detail"])
    rows.sort(key=lambda r: r["first_failure"], reverse=True)
    body = {"total": len(rows), "dead_letters": rows[:most]}
    return Response(json_bytes(body), media_type="application/json")


class RedriveRequest(BaseModel):
    event_ids: list[str] = Field(min_length=1, max_length=100, description="events to redrive")


@router.post(
    "/ops/dead-letters/redrive",
    summary="Send pending dead-letter records back to the stage that failed them (admin)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": RedriveRequest.model_json_schema()}},
        }
    },
    responses={
        200: json_answer("what was redriven, and the redrive's log"),
        **problems(
            {
                **_ADMIN,
                422: 'the body is not {"event_ids": [1 to 100 event ids (UUIDs)]}',
                503: "the key could not be checked, or the redrive failed (Kafka or PostgreSQL)",
            }
        ),
    },
)
async def ops_redrive(request: Request, _bearer: BearerDep) -> Response:
    await _admin(request, "a redrive")  # before the body: 401/403 first
    try:
        body = RedriveRequest.model_validate_json(await request.body())
    except ValidationError as exc:
        raise Problem(
            422, "validation-error", 'the body must be {"event_ids": [1 to 100 event ids]}'
        ) from exc
    ids: set[str] = set()
    for raw in body.event_ids:
        try:
            ids.add(str(uuid.UUID(raw)))
        except ValueError:
            raise Problem(
                422, "validation-error", f"not an event id (a UUID): {raw[:64]!r}"
            ) from None
    settings = request.app.state.settings
    lines: list[str] = []
    try:
        async with _letters(request):
            counts: dict[str, Any] = await asyncio.to_thread(
                redrive, settings, event_ids=ids, echo=lines.append
            )
    except (DlqError, psycopg.OperationalError) as exc:
        raise Problem(
            503, "dependency-unavailable", f"the redrive failed: {type(exc).__name__}"
        ) from exc
    counts["log"] = [scrub(line) for line in lines[-100:]]
    return Response(json_bytes(counts), media_type="application/json")


# --- the dashboard --------------------------------------------------------------------------------
@page.get("/ops", response_class=HTMLResponse)
async def ops_page() -> Response:
    return HTMLResponse((ASSETS / "index.html").read_text(), headers=_PAGE_HEADERS)


def mount_assets(app: FastAPI) -> None:
    """The dashboard's script and style, served from the repository (no CDN); the page itself
    only at /ops, with its headers."""
    app.mount("/ops/assets", StaticFiles(directory=ASSETS / "assets"), name="ops-assets")
