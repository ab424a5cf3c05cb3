"""Build the Faust app of one worker role.

Each role (projections, stock, cache, search, workflows, notifications, jobs, analytics) is its
own consumer group and process, so a dependency that is down pauses only the role that needs
it. Several processes of one role share its partitions (give each its own WORKER_DATA_DIR and
web port).
Every role runs `at_least_once`; its agents make their effects idempotent and go through the one
reliability mechanism (`streams.reliability.Guard`).
"""

from __future__ import annotations

import fcntl
import gc
import importlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from connectors.base import DependencyDown
from connectors.groups import GroupOffsets
from connectors.topics import TopicError, ensure_topics, wait_topics_ready
from core import telemetry
from core.settings import Settings
from schemas.catalog import TOPICS, Topic
from schemas.codec import RegistryDecoder
from schemas.registry import SchemaRegistry
from streams import transport
from streams.reliability import (
    EXIT_NOT_READY,
    RetryPolicy,
    dead_letter_topic,
    exit_worker,
    parked_partitions,
    redrive_topic,
)
from streams.runtime import Runtime
from streams.stall import CommitWatch, StallWatch
from streams.transport.credentials import broker_credentials

__all__ = ["ROLES", "STATEFUL_ROLES", "Runtime", "create_app", "run_worker", "worker_topics"]

log = logging.getLogger(__name__)

#: the largest record of a table's changelog (its topic's `max.message.bytes`, the producer's
#: request size)
CHANGELOG_MAX_BYTES = 16 * 1024 * 1024

#: how long a worker's produce request waits for its answer (and the broker for the in-sync
#: replicas) before it is retried
PRODUCER_REQUEST_TIMEOUT_S = 30.0

#: role -> the agent modules it runs (each named as its role); each has `install(runtime)`.
ROLES: dict[str, tuple[str, ...]] = {
    "projections": ("streams.agents.projections",),
    "stock": ("streams.agents.stock",),
    "cache": ("streams.agents.cache",),
    "search": ("streams.agents.search",),
    "workflows": ("streams.agents.workflows",),
    "notifications": ("streams.agents.notifications",),
    "jobs": ("streams.agents.jobs",),
    "analytics": ("streams.agents.analytics",),
}
#: the roles whose state is in changelog-backed tables: fenced (`streams.transport.fence`)
STATEFUL_ROLES = frozenset({"stock", "analytics"})


def stock_by_shop_topic(settings: Settings) -> str:
    """The stock role's topic: stock-affecting events re-keyed by shop id."""
    return f"{settings.topic_namespace}.stock.by-shop"


def worker_topics(settings: Settings) -> list[Topic]:
    """The topics the workers need besides the event topics: per event topic a dead-letter and a
    redrive topic, and the stock role's by-shop topic."""
    out: list[Topic] = []
    for t in TOPICS.values():
        out.append(Topic(t.category, dead_letter_topic(t.name), t.partitions, t.key))
        out.append(Topic(t.category, redrive_topic(t.name), t.partitions, t.key))
    out.append(Topic("stock", stock_by_shop_topic(settings), settings.stock_partitions, "shop id"))
    from schemas.outputs import ANALYTICS_LATE, ANALYTICS_WINDOW
    from streams.agents.analytics import by_key_topic, ticks_topic

    ns = settings.topic_namespace
    # the analytics role's: contributions by aggregate and key (retained: a replay of the
    # windows reads it again), the ticks (retained: replays apply the same), its outputs
    parts = settings.analytics_partitions
    out.append(Topic("analytics", by_key_topic(ns), parts, "aggregate:key"))
    out.append(Topic("analytics", ticks_topic(ns), 1, "source partition"))
    out.append(Topic("analytics", ANALYTICS_WINDOW.topic(ns), parts, "aggregate:key"))
    out.append(Topic("analytics", ANALYTICS_LATE.topic(ns), parts, "aggregate:key"))
    from streams.agents.notifications import CHANNELS, channel_topic

    for channel in CHANNELS:  # the notifications role's per-channel topics (keyed like requests)
        name = channel_topic(settings.topic_namespace, channel)
        parts = TOPICS["notification"].partitions
        out.append(Topic("notification", name, parts, "user id"))
        out.append(Topic("notification", redrive_topic(name), parts, "user id"))
    return out


def create_app(role: str, settings: Settings) -> faust.App:
    """The Faust app for `role`, configured from `settings`, its agents installed."""
    if role not in ROLES:
        raise ValueError(f"unknown worker role {role!r}; roles are: {', '.join(ROLES)}")
    datadir = settings.worker_data_dir / role
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.worker_app_prefix}-{role}",
        broker=transport.broker_url(settings.kafka_bootstrap),
        # TLS and SASL of its consumer, producer and topic creation (None: PLAINTEXT)
        broker_credentials=broker_credentials(settings.kafka_security),
        # take_events in bulk (streams.transport.stream)
        Stream=transport.Stream,
        # restored from its changelog without a paused worker's late records (the fence)
        Table=transport.Table,
        # RocksDB through rocksdict (faust picks it when python-rocksdb is absent)
        store="rocksdb://",
        processing_guarantee="at_least_once",
        topic_replication_factor=settings.kafka_replication_factor,
        topic_allow_declare=True,
        topic_partitions=settings.stock_partitions,
        datadir=str(datadir),
        broker_session_timeout=settings.kafka_session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval_ms / 1000,
        broker_rebalance_timeout=settings.kafka_rebalance_timeout_ms / 1000,
        broker_commit_interval=settings.worker_commit_interval_s,
        # each agent's stream buffer: when one agent's fills while it writes a batch, faust's
        # consumer loop stops delivering to every agent (4,096 by default)
        stream_buffer_maxsize=65_536,
        consumer_auto_offset_reset=settings.worker_offset_reset,
        producer_acks=-1,
        producer_linger_ms=5,
        # a table's batch record (the analytics window stage's marker carries every window
        # that changed, all of a 5-minute boundary's) may exceed Kafka's default 1 MB
        producer_max_request_size=CHANGELOG_MAX_BYTES,
        # a produce request's wait, the client's and the broker's for the in-sync replicas
        # (faust's default: 20 minutes). Seen in the full drill: one request never answered
        # held an analytics worker's every delivery (its router, window stage and ticks) until
        # its watchdog ended it 2 minutes later. The producer is idempotent, so a request timed
        # out is retried (never expired) and written once.
        producer_request_timeout=PRODUCER_REQUEST_TIMEOUT_S,
        web_host=settings.worker_web_host,
        web_port=settings.worker_web_port + list(ROLES).index(role),
        web_enabled=True,
        autodiscover=False,
    )
    if role in STATEFUL_ROLES:
        # a worker paused past its session writes no state it no longer owns
        transport.install_fence(app, settings.kafka_session_timeout_ms / 1000)
    registry = SchemaRegistry(settings.registry_url)
    runtime = Runtime(
        app=app,
        role=role,
        settings=settings,
        registry=registry,
        decoder=RegistryDecoder(registry.schema_by_id),
        policy=RetryPolicy(
            delays=tuple(settings.worker_retry_delays_s),
            down_cap_s=settings.worker_down_backoff_cap_s,
            not_ready_s=settings.worker_not_ready_timeout_s,
            max_parked=settings.worker_max_parked,
        ),
    )

    @app.task  # type: ignore[untyped-decorator]  # faust's decorators are untyped
    async def _settle_memory() -> None:
        # Everything built at start (faust, aiokafka, the codecs) never becomes garbage: out of
        # the collector's sight, and collections rarer, so a full collection does not pause a
        # batch (p99 from API to row) as the heap grows.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)

    stuck_since: list[float | None] = [None]
    limit_s = settings.worker_stuck_partition_s
    watch = StallWatch(limit_s, ask_every_s=min(30.0, max(5.0, limit_s / 3)))
    commits = CommitWatch(limit_s)
    broker_ends = GroupOffsets(
        settings.kafka_bootstrap, security=settings.kafka_security, timeout_s=5.0
    )

    @app.timer(5.0)  # type: ignore[untyped-decorator]
    async def _watchdog() -> None:
        # aiokafka's fetcher can crash (seen once: KeyError in fetched_records while partitions
        # were paused and sought back many times a second). faust logs "Fetcher Crashed" and
        # the process stays up consuming nothing. A worker that cannot consume ends instead,
        # so its supervisor restarts it; its uncommitted records come again (at least once,
        # applied idempotently), as after kill -9.
        crash = transport.fetcher_crash(app)
        if crash is not None:
            exit_worker(70, f"the Kafka fetcher crashed ({crash}): exiting to be restarted")
        # Seen once in CI: an analytics worker restarted after a crash joined its group, opened
        # one table partition, logged Ready and then nothing for 7 minutes: no recovery, no
        # record consumed, its agents paused. A rebalance that has not reached its recovery
        # after WORKER_STUCK_REBALANCE_S ends the worker the same way.
        limit = settings.worker_stuck_rebalance_s
        now = time.monotonic()
        if not transport.assigning(app):
            stuck_since[0] = None
        elif stuck_since[0] is None:
            stuck_since[0] = now
        elif limit and now - stuck_since[0] > limit and not app.should_stop:
            try:
                log.error("stuck in a rebalance: the consumer's state\n%s", transport.diagnose(app))
            except Exception as exc:  # noqa: BLE001 - the exit matters more than the picture
                log.error("stuck in a rebalance; the consumer's state not readable: %r", exc)
            exit_worker(
                70,
                f"stuck in a rebalance for {now - stuck_since[0]:.0f} s, its recovery not "
                "started: exiting to be restarted",
            )
        # A worker that is up, not rebalancing, with records waiting in a partition it reads
        # (nothing paused it: no dependency down, nothing parked) whose fetch position has not
        # moved for WORKER_STUCK_PARTITION_S consumes nothing: seen in CI after a restart, the
        # worker Ready and then silent for minutes. It logs its consumer's state (as on SIGUSR1)
        # and ends, to be restarted; the records come again from the committed offsets. Whether
        # records wait is asked of the broker (the consumer's own end offsets come with its
        # fetches, and a consumer that fetches nothing has none), at most every 30 s, and a
        # partition must be found so at two asks in a row (streams.stall).
        if not watch.limit_s:
            return
        try:
            await _stall_check(now)
        except Exception:  # noqa: BLE001 - nothing may escape a faust timer (it ends the app)
            log.warning("the stall watchdog could not look this time", exc_info=True)

    async def _stall_check(now: float) -> None:
        if transport.settling(app) or app.should_stop:
            watch.reset()
            commits.reset()
            return
        await _commit_check(now)
        positions = transport.stream_positions(app)
        if positions is None:
            watch.reset()
            return
        idle = watch.observe(now, positions)
        if not idle:
            return
        try:
            ends = await broker_ends.ends({tp.topic for tp in idle})
        except DependencyDown:
            return  # Kafka itself is down: not this worker's stall
        stuck = watch.stuck(idle, ends)
        if stuck:
            tp, seconds = stuck[0]
            try:
                state = transport.diagnose(app)
            except Exception as exc:  # noqa: BLE001 - the exit matters more than the picture
                state = f"(not readable: {exc!r})"
            log.error("stuck: the consumer's state\n%s", state)
            exit_worker(
                70,
                f"{len(stuck)} partition(s) with records waiting and nothing fetched for "
                f"{seconds:.0f} s (e.g. {tp.topic}/{tp.partition}): exiting to be restarted",
            )

    async def _commit_check(now: float) -> None:
        if not transport.coordinator_known(app):
            commits.reset()  # the commits wait for Kafka's group coordinator: not a stall
            return
        stuck = commits.observe(now, transport.commit_positions(app), parked_partitions())
        if not stuck:
            return
        try:
            await broker_ends.ends({tp.topic for tp, _ in stuck})
        except DependencyDown:
            commits.reset()  # Kafka itself is down: commits wait for it, not a stall
            return
        tp, seconds = stuck[0]
        try:
            state = transport.diagnose(app)
        except Exception as exc:  # noqa: BLE001 - the exit matters more than the picture
            state = f"(not readable: {exc!r})"
        log.error("stuck: the consumer's state\n%s", state)
        exit_worker(
            70,
            f"{len(stuck)} partition(s) fetched past a committed offset that has not moved for "
            f"{seconds:.0f} s, nothing parked or paused (e.g. {tp.topic}/{tp.partition}): "
            "exiting to be restarted",
        )

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    for module in ROLES[role]:
        importlib.import_module(module).install(runtime)
    return app


def run_worker(role: str, settings: Settings, web_port: int | None = None) -> None:
    """Run one worker of `role` in the foreground until SIGINT/SIGTERM."""
    from connectors.db import limit_idle_transactions, migrate

    try:
        transport.check_faust()  # before anything: faust provides what the transport relies on
    except transport.TransportMismatch as exc:
        exit_worker(EXIT_NOT_READY, f"worker {role} cannot start: {exc}")
    if role != "stock":  # the stock role alone never touches PostgreSQL
        migrate(settings.postgres_dsn)  # the tables, before the first batch
        if role != "search":
            # the search role's transactions hold a shared lock over a Typesense call (up to
            # its 5 s timeout): ended, the write would only be retried; paused, that lock holds
            # up no other worker (a rebuild's cut-over alone)
            limit_idle_transactions(settings.pg_idle_in_transaction_ms)
    if web_port is not None:
        settings = settings.model_copy(
            update={"worker_web_port": web_port - list(ROLES).index(role)}
        )
    app = create_app(role, settings)
    # Every topic the worker uses exists, with its partition count and a leader for each
    # partition, before the consumer fetches its first metadata: faust's own topics too (they
    # would otherwise be created while the consumer starts, and read as 0 partitions until the
    # next metadata refresh, minutes later: the stock table's check then failed every record).
    topics = [*TOPICS.values(), *worker_topics(settings), *_faust_topics(app)]
    try:
        ensure_topics(
            settings.kafka_bootstrap,
            topics,
            security=settings.kafka_security,
            replication=settings.kafka_replication_factor,
            min_insync_replicas=settings.kafka_min_insync_replicas,
        )
        wait_topics_ready(
            settings.kafka_bootstrap,
            topics,
            security=settings.kafka_security,
            timeout_s=settings.worker_not_ready_timeout_s,
        )
    except TopicError as exc:
        exit_worker(EXIT_NOT_READY, f"worker {role} cannot start: {exc}")
    running = distrust_crashed_stores(settings.worker_data_dir / role, Path(app.conf.tabledir))
    # a span per record each stage processes, when an OTLP endpoint is configured
    telemetry.setup(f"mohallamart-{role}", settings.otel_traces_url, sdk_env=settings.otel_sdk_env)
    try:
        transport.run_app(app, settings.log_level.lower(), clean_stop=running)
    finally:
        telemetry.shutdown()  # the last spans flushed (at most 5 s)


#: the data folders' locks, held for the process's life (see `distrust_crashed_stores`)
_LOCKS: list[int] = []


def distrust_crashed_stores(datadir: Path, tabledir: Path) -> Path:
    """A worker's local table stores are trusted only after a clean stop. faust writes a table
    entry to the local store (RocksDB) at once and to its changelog later: a worker that ended
    without a clean stop (kill -9, a crash, a drill) can leave entries the changelog never got,
    and faust restores only the changelog's newer records over them. Another worker that took
    its partitions meanwhile wrote its own history, and the mix decided the same stock twice
    (two movements with one sequence number, found by the 20,000-event kill -9 test). So
    the file `RUNNING` marks a run in progress (`run_app` removes it after a clean stop); found
    at start, it means the last run did not stop cleanly, and the local stores are removed: the
    tables are restored from their changelogs alone. The file is locked while the worker runs
    (another worker on the same folder exits instead). Returns the marker's path."""
    running = datadir / "RUNNING"
    # held while this process lives (the kernel drops it at exit, however the process ends):
    # a second worker started on the same folder by mistake must not remove a live one's stores
    lock = os.open(running, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held = running.read_text(encoding="utf-8").strip()
        exit_worker(EXIT_NOT_READY, f"{datadir} is in use by another worker ({held})")
    _LOCKS.append(lock)
    last = running.read_text(encoding="utf-8").strip()
    if last and tabledir.exists():
        log.warning(
            "the last run in %s did not stop cleanly (%s): removing its local table stores, "
            "restored from their changelogs",
            datadir,
            last,
        )
        shutil.rmtree(tabledir)
    os.ftruncate(lock, 0)
    os.pwrite(lock, f"pid {os.getpid()} started at {time.time():.3f}\n".encode(), 0)
    return running


def _faust_topics(app: faust.App) -> list[Topic]:
    """The topics faust creates for itself: each table's changelog (compacted, as many
    partitions as the table) and the group's leader-election topic (faust's own naming)."""
    out = [
        Topic(
            "internal",
            table.changelog_topic.get_topic_name(),
            table.partitions or app.conf.topic_partitions,
            "table key",
            config={"cleanup.policy": "compact", "max.message.bytes": str(CHANGELOG_MAX_BYTES)},
        )
        for table in app.tables.values()
    ]
    out.append(Topic("internal", f"{app.conf.id}-__assignor-__leader", 1, "", config={}))
    return out
