"""`GET /health`: is every dependency of the pipeline reachable? `GET /metrics`: Prometheus."""

from __future__ import annotations

import asyncio
import logging
import smtplib
import time
from collections.abc import Awaitable, Callable

import httpx
import psycopg
import redis.asyncio as aioredis
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import SettingsDep
from api.problems import json_answer
from connectors.cleanup import job_summary, publish_job_metrics
from connectors.kafka import admin_config
from core.settings import Settings

__all__ = ["dependencies", "router"]

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])

_TIMEOUT_S = 3.0


async def _kafka(s: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(admin_config(s.kafka_bootstrap, security=s.kafka_security, log_level=0))
    md = await asyncio.to_thread(admin.list_topics, timeout=_TIMEOUT_S)
    if not md.brokers:
        raise RuntimeError("no broker in metadata")


async def _registry(s: Settings) -> None:
    async with httpx.AsyncClient(timeout=_TIMEOUT_S) as client:
        r = await client.get(f"{s.registry_url}/subjects")
        r.raise_for_status()


async def _postgres(s: Settings) -> None:
    async with await psycopg.AsyncConnection.connect(
        s.postgres_dsn, connect_timeout=int(_TIMEOUT_S)
    ) as conn:
        await conn.execute("SELECT 1")


async def _redis(s: Settings) -> None:
    client = aioredis.from_url(s.redis_dsn, socket_timeout=_TIMEOUT_S)
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _typesense(s: Settings) -> None:
    async with httpx.AsyncClient(timeout=_TIMEOUT_S) as client:
        r = await client.get(f"{s.typesense_base_url}/health")
        r.raise_for_status()


async def _smtp(s: Settings) -> None:
    host, port = s.smtp_address

    def check() -> None:
        with smtplib.SMTP(host, port, timeout=_TIMEOUT_S) as smtp:
            smtp.noop()

    await asyncio.to_thread(check)


_CHECKS: dict[str, Callable[[Settings], Awaitable[None]]] = {
    "kafka": _kafka,
    "schema_registry": _registry,
    "postgres": _postgres,
    "redis": _redis,
    "typesense": _typesense,
    "smtp": _smtp,
}


async def _run(
    name: str, check: Callable[[Settings], Awaitable[None]], s: Settings
) -> dict[str, object]:
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(check(s), timeout=_TIMEOUT_S + 1)
        return {"ok": True, "ms": round((time.monotonic() - t0) * 1000, 1)}
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        # The exception's type only: messages can carry connection strings.
        return {"ok": False, "error": type(exc).__name__}


async def dependencies(settings: Settings) -> dict[str, dict[str, object]]:
    """Each dependency: {"ok": True, "ms": ...} or {"ok": False, "error": <exception type>}."""
    names = list(_CHECKS)
    results = await asyncio.gather(*(_run(n, _CHECKS[n], settings) for n in names))
    return dict(zip(names, results, strict=True))


_CHECK = {
    "type": "object",
    "required": ["ok"],
    "properties": {
        "ok": {"type": "boolean"},
        "ms": {"type": "number"},
        "error": {"type": "string", "description": "the exception's type"},
    },
}


def _status(*values: str) -> dict[str, object]:
    return {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": list(values)},
            "checks": {"type": "object", "additionalProperties": _CHECK},
        },
    }


@router.get(
    "/health",
    responses={
        200: json_answer("every dependency answers", _status("ok")),
        503: json_answer("some dependency does not answer", _status("degraded")),
    },
)
async def health(settings: SettingsDep) -> JSONResponse:
    """200 when every dependency answers, else 503 naming the ones that do not."""
    checks = await dependencies(settings)
    ok = all(r["ok"] for r in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "degraded", "checks": checks}, status_code=200 if ok else 503
    )


@router.get(
    "/healthz",
    responses={200: json_answer("the process is up", _status("ok") | {"required": ["status"]})},
)
async def healthz() -> JSONResponse:
    """The process is up."""
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    responses={
        200: json_answer("ready", _status("ready")),
        503: {
            **json_answer("not ready yet", _status("not ready")),
            "headers": {"Retry-After": {"schema": {"type": "string"}}},
        },
    },
)
async def readyz(request: Request, settings: SettingsDep) -> JSONResponse:
    """Ready to ingest: Kafka and the registry answer, topics exist, schemas are registered."""
    results = await asyncio.gather(
        _run("kafka", _kafka, settings), _run("schema_registry", _registry, settings)
    )
    checks: dict[str, dict[str, object]] = {"kafka": results[0], "schema_registry": results[1]}
    tasks = getattr(request.app.state, "startup_tasks", [])
    checks["startup"] = {"ok": all(t.done() and not t.cancelled() for t in tasks)}
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse(
        {"status": "ready" if ok else "not ready", "checks": checks},
        status_code=200 if ok else 503,
        headers=None if ok else {"Retry-After": "5"},
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus' text format",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request) -> Response:
    reads = getattr(request.app.state, "reads", None)
    if reads is not None:  # the scheduled jobs' runs, as recorded (whichever worker ran them)
        try:
            async with asyncio.timeout(1.0), reads.pool.connection() as conn:
                publish_job_metrics(await job_summary(conn))
        except Exception as exc:  # noqa: BLE001 - the rest of the metrics still answer
            log.warning("/metrics: job runs not read: %s", type(exc).__name__)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
