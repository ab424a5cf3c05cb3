"""Build the FastAPI application and the clients it holds for its lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from api.auth import Authenticator, RateLimiter
from api.fastpath import IngestFastPath
from api.ingest import Ingestor
from api.live import LiveHub
from api.metrics import RequestMetrics
from api.ops_monitor import OpsMonitor
from api.problems import install_handlers
from api.reads import ReadSide
from api.routes import analytics, events, health, notifications, ops, reads, webhooks
from api.routes.events import IngestEndpoints
from connectors.claims import ClaimStore
from connectors.db import migrate
from connectors.producer import EventProducer
from connectors.ratelimit import SharedBuckets
from connectors.topics import ensure_topics_ready
from connectors.webhooks import expire as expire_receipts
from core import telemetry
from core.settings import Settings, get_settings
from schemas.catalog import EVENT_TYPES
from schemas.registry import SchemaRegistry

__all__ = ["create_app", "create_asgi_app"]

_log = logging.getLogger("mohallamart.api")


async def _keep_trying(
    what: str, fn: object, *args: object, every_s: float = 5.0, done: asyncio.Event | None = None
) -> None:
    """Run a start-up task until it succeeds; the API serves meanwhile (readyz says not ready)."""
    while True:
        try:
            await asyncio.to_thread(fn, *args)  # type: ignore[arg-type]
            _log.info("%s: done", what)
            if done is not None:
                done.set()
            return
        except Exception as exc:  # noqa: BLE001 - retried; the type is enough (no secrets)
            _log.warning("%s failed (%s); retrying in %.0f s", what, type(exc).__name__, every_s)
            await asyncio.sleep(every_s)


async def _expire_claims(
    claims: ClaimStore, days: int, pool: AsyncConnectionPool, receipt_days: int
) -> None:
    while True:
        with contextlib.suppress(Exception):
            n = await claims.expire(days)
            if n:
                _log.info("expired %d ingest dedup claims older than %d days", n, days)
        with contextlib.suppress(Exception):
            async with pool.connection() as conn:
                n = await expire_receipts(conn, receipt_days)
            if n:
                _log.info("expired %d webhook receipts older than %d days", n, receipt_days)
        await asyncio.sleep(3600)


def _lifespan(settings: Settings):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # spans of the ingest requests, when an OTLP endpoint is configured (core.telemetry)
        telemetry.setup("mohallamart-api", settings.otel_traces_url, sdk_env=settings.otel_sdk_env)
        await asyncio.to_thread(migrate, settings.postgres_dsn)
        pool: AsyncConnectionPool = AsyncConnectionPool(
            settings.postgres_dsn,
            min_size=2,
            max_size=settings.db_pool_max,
            open=False,
            # Every statement here is one self-contained write: no COMMIT round trip after it.
            # psycopg prepares a statement server-side after `prepare_threshold` runs, and
            # PostgreSQL then keeps the generic plan it made at that moment until an ANALYZE.
            # Made while ingest_claims was near empty, that plan (a hash join over a sequential
            # scan) ran the first minute of a fresh database at a fifth of the speed; planning
            # every run instead cost more CPU than this machine had at 1,000 req/s. So: plan
            # each run while the table is young, prepare once it has grown.
            kwargs={"autocommit": True, "prepare_threshold": 1000},
            # a connection broken by a PostgreSQL restart is replaced at checkout, not handed
            # to a request (which then answered 503 once per pooled connection)
            check=AsyncConnectionPool.check_connection,
            # psycopg_pool doubles its reconnection delay without a cap while PostgreSQL is down
            # (1, 2, 4, 8, 16 s ...): after a 20 s outage the API answered 503 for up to 10 s
            # more. Giving up an attempt after 5 s makes the next request start a fresh one.
            reconnect_timeout=5.0,
            timeout=settings.ingest_request_timeout_ms / 2000,
        )
        await pool.open(wait=False)
        producer = EventProducer(
            settings.kafka_bootstrap,
            security=settings.kafka_security,
            delivery_timeout_ms=settings.ingest_delivery_timeout_ms,
            linger_ms=settings.ingest_linger_ms,
            max_message_bytes=settings.ingest_max_event_bytes,
        )
        producer.start(asyncio.get_running_loop())
        registry = SchemaRegistry(settings.registry_url)
        claims = ClaimStore(pool, stale_after_s=settings.ingest_request_timeout_ms / 1000 * 3)
        app.state.settings = settings
        app.state.registry = registry
        app.state.ingestor = Ingestor(
            registry,
            producer,
            claims,
            max_event_bytes=settings.ingest_max_event_bytes,
            request_timeout_s=settings.ingest_request_timeout_ms / 1000,
            max_clock_skew_s=settings.ingest_max_clock_skew_s,
        )
        app.state.auth = Authenticator(pool, settings.auth_cache_s)
        # one bucket per key for every API process (Redis); per process while Redis is down
        buckets = SharedBuckets(settings.redis_dsn, timeout_s=settings.cache_timeout_ms / 1000)
        app.state.limiter = RateLimiter(
            settings.ingest_default_rate_per_s, settings.ingest_rate_burst_s, buckets
        )
        app.state.endpoints = IngestEndpoints(
            app.state.auth, app.state.limiter, app.state.ingestor, settings
        )
        app.state.reads = ReadSide(settings, pool)
        app.state.ops = OpsMonitor(settings, pool, health.dependencies)
        app.state.live = LiveHub(settings)
        app.state.live.start(asyncio.get_running_loop())
        topics = app.state.ingestor.topics_ready
        create_topics = partial(  # created, and each partition served: no write before that
            ensure_topics_ready,
            settings.kafka_bootstrap,
            security=settings.kafka_security,
            replication=settings.kafka_replication_factor,
            min_insync_replicas=settings.kafka_min_insync_replicas,
        )
        try:  # usually done here, before the first request; else retried in the background
            await asyncio.wait_for(asyncio.to_thread(create_topics, timeout_s=3.0), 5.0)
            topics.set()
        except Exception as exc:  # noqa: BLE001 - retried below; the type is enough
            _log.warning("creating topics at start failed (%s); retrying", type(exc).__name__)
        tasks = [
            asyncio.create_task(_keep_trying("creating topics", create_topics, done=topics)),
            asyncio.create_task(
                _keep_trying(
                    "registering schemas", registry.register_all, list(EVENT_TYPES.values())
                )
            ),
            asyncio.create_task(
                _expire_claims(
                    claims,
                    settings.ingest_dedup_retention_days,
                    pool,
                    settings.webhook_receipt_days,
                )
            ),
        ]
        app.state.startup_tasks = tasks[:2]
        # Long-lived start-up objects leave the cyclic GC's view, and young-generation
        # collections run less often: full collections were the API's latency spikes.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.to_thread(app.state.live.stop)
            await app.state.reads.close()
            await app.state.ops.close()
            await buckets.close()
            await asyncio.to_thread(producer.close)
            await pool.close()
            await asyncio.to_thread(telemetry.shutdown)  # the last spans flushed

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="MohallaMart event pipeline",
        version="0.1.0",
        description="Ingestion and read API of the MohallaMart event pipeline. Every event is "
        "validated against its Avro schema and published to Kafka in the Confluent wire format.",
        lifespan=_lifespan(settings),
    )
    install_handlers(app)
    app.include_router(health.router)
    app.include_router(events.router)
    app.include_router(reads.router)
    app.include_router(notifications.router)
    app.include_router(analytics.router)
    app.include_router(ops.router)
    app.include_router(ops.page)
    app.include_router(webhooks.router)
    ops.mount_assets(app)
    app.add_middleware(RequestMetrics)
    return app


def create_asgi_app(settings: Settings | None = None) -> ASGIApp:
    """What uvicorn serves: the FastAPI app behind the ingest fast path (see api.fastpath),
    behind CORS when browser origins are allowed (`CORS_ALLOW_ORIGINS`; none by default: no
    CORS header is ever sent, and a preflight is refused)."""
    settings = settings or get_settings()
    app: ASGIApp = IngestFastPath(create_app(settings))
    origins = settings.cors_origins
    if origins:
        # outermost, so the fast path's answers carry the headers too
        app = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "traceparent",
                "X-Trace-Id",
                "Last-Event-ID",
            ],
            expose_headers=["Retry-After", "Location"],
            max_age=600,
        )
    return app
