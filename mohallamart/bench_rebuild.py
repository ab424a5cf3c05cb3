"""`mohallamart bench rebuild` (`make bench-rebuild`): each rebuild beside a raw baseline of
the same work, in the same run, medians of `--runs`.

The events (`--events`, 1,000,000 by default; the workers benchmark's realistic mix, each 10: a
user registered; a product created, updated, published; two orders created, accepted,
completed; and 50 approved shops per 100,000) go to topics of a namespace of their own
(`mohallamart-benchrb-<tag>.*`, deleted at the end), and every store written is a scratch one: the
database `bench_rebuild`, Redis databases 3 and 4, Typesense collections named `benchrb_*`. The
pipeline's own topics and stores never see them.

1. **PostgreSQL.** Ours: `mohallamart rebuild postgres --until <far future>` (a subprocess, as
   an operator runs it: the plain consumer, the projections' own code, checkpoints), its events/s
   as it prints them. Raw: a plain confluent-kafka consumer reads and decodes the same records,
   then `COPY`s the rows the rebuild produced into empty tables of the same shape (no apply
   logic). Ratio: ours / raw, events/s.
2. **Redis.** Ours: `mohallamart rebuild redis --drop` from the rebuilt tables (rendering each
   view, compare-and-set writes). Raw: pipelined `HSET` + `PEXPIRE` of the same views, rendered
   beforehand. Views/s.
3. **Typesense.** Ours: `mohallamart rebuild search` (new collections from PostgreSQL, aliases
   swapped). Raw: the same documents, read beforehand, imported in bulk into fresh collections.
   Documents/s.

Everything runs on the machine it measures (2 cores here).
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition

from connectors.kafka import admin_config, consumer_config
from core.errors import PipelineError
from core.settings import Settings

__all__ = ["run_rebuild_bench"]

Say = Callable[[str], None]
_DB = "bench_rebuild"
_ASOF = "rebuild_asof_21000101t000000z"
_UNTIL = "2100-01-01T00:00:00+00:00"
_REDIS_OURS, _REDIS_RAW = 3, 4
_SEARCH_PREFIX = "benchrb_"


def _dsn(settings: Settings, db: str) -> str:
    return settings.postgres_dsn.rsplit("/", 1)[0] + f"/{db}"


def _redis_dsn(settings: Settings, index: int) -> str:
    base = settings.redis_dsn.split("?", 1)[0]
    head, _, last = base.rpartition("/")
    return f"{head}/{index}" if last.isdigit() else f"{base.rstrip('/')}/{index}"


def _env(settings: Settings, namespace: str, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "TOPIC_NAMESPACE": namespace,
        "WORKER_APP_PREFIX": namespace,
        "DATABASE_URL": _dsn(settings, _DB),
        **extra,
    }
    return env


def _cli(args: list[str], env: dict[str, str], say: Say) -> str:
    proc = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "mohallamart.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=7200,
        check=False,
    )
    if proc.returncode != 0:
        raise PipelineError(
            f"`mohallamart {' '.join(args)}` ended with {proc.returncode}: "
            f"{(proc.stdout + proc.stderr)[-2000:]}"
        )
    return proc.stdout


# --- the events -------------------------------------------------------------------------------
def _shops(tag: str, at: Any) -> list[dict[str, Any]]:
    from schemas.catalog import EVENT_TYPES

    out = []
    for s in range(50):
        shop = f"bench-{tag}-s{s}"
        for step, t in enumerate(("shop.created", "shopkeeper.applied", "shopkeeper.approved")):
            eid = str(uuid.uuid4())
            out.append(
                {
                    "id": eid,
                    "type": t,
                    "occurred_at": at + timedelta(milliseconds=step),
                    "source": "bench",
                    "trace_id": eid,
                    "data": {**EVENT_TYPES[t].example, "shop_id": shop},
                }
            )
    return out


def _initial_stock(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each product's first stock movement, as the stock role derives it from its creation (the
    projections keep a product's stock from these; a product without stock is not searchable)."""
    out = []
    for ev in events:
        if ev["type"] != "product.created":
            continue
        d = ev["data"]
        eid = str(uuid.uuid4())
        out.append(
            {
                "id": eid,
                "type": "product.stock_changed",
                "occurred_at": ev["occurred_at"] + timedelta(milliseconds=1),
                "source": "bench",
                "trace_id": ev["trace_id"],
                "data": {
                    "product_id": d["product_id"],
                    "shop_id": d["shop_id"],
                    "delta": d["initial_stock"],
                    "stock_after": d["initial_stock"],
                    "reason": "INITIAL",
                    "order_id": None,
                    "cause_event_id": ev["id"],
                    "cause_type": "product.created",
                    "sequence": 1,
                },
            }
        )
    return out


def _load(settings: Settings, namespace: str, events: int, say: Say) -> int:

    from connectors.topics import ensure_topics
    from mohallamart.bench_workers import _encode, _mix, _produce
    from schemas.catalog import topics_in

    ensure_topics(
        settings.kafka_bootstrap,
        list(topics_in(namespace).values()),
        security=settings.kafka_security,
        replication=settings.kafka_replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
    )
    step = 100_000
    total = 0
    started = time.monotonic()
    for first in range(0, events, step):
        n = min(step, events - first)
        n -= n % 10
        tag = f"{namespace[-8:]}-{first // step}"
        batch = _shops(tag, datetime.now(UTC)) + _mix(n, tag)
        batch += _initial_stock(batch)
        _produce(settings, _encode(settings, batch, namespace))
        total += len(batch)
        mixed = min(events, first + step)
        say(
            f"bench rebuild: {total:,} events produced ({mixed:,}/{events:,} of the mix, with "
            f"the shops' events and each product's first stock movement; "
            f"{time.monotonic() - started:.0f} s)"
        )
    return total


def _drop_topics(settings: Settings, namespace: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(admin_config(settings.kafka_bootstrap, security=settings.kafka_security))
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{namespace}.")]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            try:
                fut.result()
            except Exception:  # noqa: BLE001, S110 - best effort: the figures are printed
                pass


# --- PostgreSQL ----------------------------------------------------------------------------------
def _fresh_db(settings: Settings) -> None:
    from connectors.db import migrate

    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {_DB}")
    migrate(_dsn(settings, _DB))


def _ours_postgres(settings: Settings, namespace: str, say: Say) -> tuple[float, int]:
    dsn = _dsn(settings, _DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {_ASOF} CASCADE")
        conn.execute("CHECKPOINT")
    t0 = time.monotonic()
    out = _cli(
        ["rebuild", "postgres", "--until", _UNTIL],
        _env(settings, namespace),
        say,
    )
    wall = time.monotonic() - t0
    final = [line for line in out.splitlines() if "events applied" in line][-1]
    m = re.search(r"([\d,]+)/[\d,]+ records, ([\d,]+) events applied, ([\d,]+) events/s", final)
    if m is None:
        raise PipelineError(f"the rebuild's last progress line was not understood: {final}")
    records = int(m[1].replace(",", ""))
    say(f"  rebuild postgres: {records:,} records in {wall:.1f} s wall (process start included)")
    # the rate the rebuild prints: events folded per second of folding (the shadow's creation
    # and the process's start excluded, as the raw baseline's table creation is)
    return float(m[3].replace(",", "")), records


def _rows_of_rebuild(settings: Settings) -> dict[str, bytes]:
    from connectors.postgres import PROJECTION_TABLES

    out = {}
    with psycopg.connect(_dsn(settings, _DB)) as conn:
        for table in PROJECTION_TABLES:
            buf = bytearray()
            with conn.cursor().copy(f"COPY {_ASOF}.{table} TO STDOUT (FORMAT binary)") as copy:
                for chunk in copy:
                    buf += chunk
            out[table] = bytes(buf)
    return out


def _raw_postgres(settings: Settings, namespace: str, rows: dict[str, bytes]) -> tuple[float, int]:
    from connectors.postgres import PROJECTION_TABLES
    from schemas.catalog import topics_in
    from schemas.codec import RegistryDecoder
    from schemas.registry import SchemaRegistry

    dsn = _dsn(settings, _DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS bench_raw CASCADE")
        conn.execute("CREATE SCHEMA bench_raw")
        for table in PROJECTION_TABLES:
            conn.execute(f"CREATE TABLE bench_raw.{table} (LIKE public.{table} INCLUDING ALL)")
        conn.execute("CHECKPOINT")
    decoder = RegistryDecoder(SchemaRegistry(settings.registry_url).schema_by_id)
    topics = [
        t.name
        for c, t in topics_in(namespace).items()
        if c in ("user", "shop", "shopkeeper", "product", "order")
    ]
    consumer = Consumer(
        consumer_config(
            settings.kafka_bootstrap,
            f"bench-raw-{uuid.uuid4()}",
            {"enable.auto.commit": False, "fetch.max.bytes": 52_428_800},
            security=settings.kafka_security,
        )
    )
    t0 = time.monotonic()
    records = 0
    try:
        meta = consumer.list_topics(timeout=10).topics
        ends: dict[tuple[str, int], int] = {}
        assign = []
        for t in topics:
            for p in meta[t].partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)
                if high > low:
                    ends[(t, p)] = high
                    assign.append(TopicPartition(t, p, low))
        consumer.assign(assign)
        while ends:
            for msg in consumer.consume(10_000, timeout=0.1):
                if msg.error():
                    continue
                decoder.decode(msg.value())
                records += 1
                key = (str(msg.topic()), int(msg.partition() or 0))
                if key in ends and (msg.offset() or 0) >= ends[key] - 1:
                    del ends[key]
    finally:
        consumer.close()
    with psycopg.connect(dsn) as conn:
        for table in PROJECTION_TABLES:
            with conn.cursor().copy(f"COPY bench_raw.{table} FROM STDIN (FORMAT binary)") as copy:
                copy.write(rows[table])
        conn.commit()
    wall = time.monotonic() - t0
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA bench_raw CASCADE")
    return records / wall, records


def _into_public(settings: Settings) -> None:
    """The rebuilt rows become the scratch database's live tables (Redis and Typesense are
    rendered from those)."""
    from connectors.postgres import PROJECTION_TABLES

    with psycopg.connect(_dsn(settings, _DB)) as conn:
        conn.execute("SET session_replication_role = replica")  # no foreign-key order needed
        for table in PROJECTION_TABLES:
            conn.execute(f"TRUNCATE public.{table} CASCADE")
            conn.execute(f"INSERT INTO public.{table} SELECT * FROM {_ASOF}.{table}")
        conn.commit()


# --- Redis ---------------------------------------------------------------------------------------
def _ours_redis(settings: Settings, namespace: str) -> tuple[float, int]:
    env = _env(settings, namespace, REDIS_URL=_redis_dsn(settings, _REDIS_OURS))
    out = _cli(["rebuild", "redis", "--drop"], env, print)
    m = re.search(r"([\d,]+) views rendered in ([\d.]+) s", out)
    if m is None:
        raise PipelineError(f"`rebuild redis` printed no figures: {out[-500:]}")
    views = int(m[1].replace(",", ""))
    return views / float(m[2]), views


async def _views(settings: Settings) -> list[tuple[str, dict[str, Any]]]:
    from connectors.redis_cache import cache_key
    from connectors.views import KINDS, load_views

    tables = {
        "user": ("users", "user_id"),
        "shop": ("shops", "shop_id"),
        "product": ("products", "product_id"),
    }
    out = []
    async with await psycopg.AsyncConnection.connect(_dsn(settings, _DB)) as conn:
        for kind in KINDS:
            table, col = tables[kind]
            cur = await conn.execute(f"SELECT {col} FROM {table}")  # noqa: S608
            ids = [r[0] for r in await cur.fetchall()]
            for i in range(0, len(ids), 5000):
                for v in (await load_views(conn, kind, ids[i : i + 5000])).values():
                    fields: dict[str, Any] = {"p": b"" if v.gone else v.payload()}
                    fields.update({f"v{n}": x for n, x in enumerate(v.version, start=1)})
                    out.append((cache_key(kind, v.id), fields))
    return out


def _raw_redis(settings: Settings, views: list[tuple[str, dict[str, Any]]]) -> tuple[float, int]:
    import redis

    client = redis.Redis.from_url(_redis_dsn(settings, _REDIS_RAW))
    ttl_ms = int(settings.cache_ttl_s * 1000)
    try:
        client.flushdb()
        t0 = time.monotonic()
        for i in range(0, len(views), 2000):
            pipe = client.pipeline(transaction=False)
            for key, fields in views[i : i + 2000]:
                pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
                pipe.pexpire(key, ttl_ms)
            pipe.execute()
        wall = time.monotonic() - t0
        client.flushdb()
    finally:
        client.close()
    return len(views) / wall, len(views)


# --- Typesense -----------------------------------------------------------------------------------
def _ours_search(settings: Settings, namespace: str) -> tuple[float, int]:
    """`rebuild search` is `search reindex --collection all`; its figures as JSON."""
    import json

    env = _env(settings, namespace, TYPESENSE_COLLECTION_PREFIX=_SEARCH_PREFIX)
    out = _cli(["search", "reindex", "--collection", "all", "--json"], env, print)
    found = json.loads(out[out.index("[") :])
    docs = sum(int(r["docs"]) for r in found)
    seconds = sum(float(r["seconds"]) for r in found)
    if seconds <= 0:
        raise PipelineError(f"`search reindex` printed no figures: {out[-500:]}")
    return docs / seconds, docs


async def _documents(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    from connectors.typesense import ALIASES
    from connectors.views import searchable_chunk

    out: dict[str, list[dict[str, Any]]] = {}
    async with await psycopg.AsyncConnection.connect(_dsn(settings, _DB)) as conn:
        for alias in ALIASES:
            docs: list[dict[str, Any]] = []
            after = ""
            while chunk := await searchable_chunk(conn, alias, after, 2000):
                docs += chunk
                after = str(chunk[-1]["id"])
            out[alias] = docs
    return out


async def _raw_search(
    settings: Settings, docs: dict[str, list[dict[str, Any]]]
) -> tuple[float, int]:
    from connectors.typesense import ALIASES, SearchIndex

    index = SearchIndex(
        settings.typesense_base_url,
        settings.typesense_api_key.get_secret_value(),
        prefix=_SEARCH_PREFIX + "raw_",
    )
    total = 0
    try:
        names = {alias: f"{alias}_{time.time_ns()}" for alias in docs}
        for alias in docs:  # created before the clock starts, as `reindex` times its imports
            await index.create_collection(names[alias], ALIASES[alias])
        t0 = time.monotonic()
        for alias, items in docs.items():
            for i in range(0, len(items), 2000):
                await index.upsert(names[alias], items[i : i + 2000])
            total += len(items)
        wall = time.monotonic() - t0
        for name in names.values():
            await index.drop_collection(name)
    finally:
        await index.close()
    return total / wall, total


async def _drop_search(settings: Settings) -> None:
    from connectors.typesense import SearchIndex

    index = SearchIndex(
        settings.typesense_base_url, settings.typesense_api_key.get_secret_value(), prefix=""
    )
    try:
        resp = await index.request("GET", "/collections")
        for c in resp.json():
            if str(c.get("name", "")).startswith(_SEARCH_PREFIX):
                await index.drop_collection(c["name"])
        resp = await index.request("GET", "/aliases")
        for a in resp.json().get("aliases", []):
            if str(a.get("name", "")).startswith(_SEARCH_PREFIX):
                await index.request("DELETE", f"/aliases/{a['name']}")
    finally:
        await index.close()


# --- the run -------------------------------------------------------------------------------------
def run_rebuild_bench(
    settings: Settings, *, events: int = 1_000_000, runs: int = 3, say: Say = print
) -> dict[str, Any]:
    main_db = _redis_dsn(settings, 0).rsplit("/", 1)[0] + "/"
    if any(settings.redis_dsn.split("?")[0].rstrip("/") == main_db + str(i) for i in (3, 4)):
        raise PipelineError("REDIS_URL uses database 3 or 4, the benchmark's scratch databases")
    namespace = f"mohallamart-benchrb-{uuid.uuid4().hex[:8]}"
    say(
        f"bench rebuild: {events:,} events into {namespace}.*, {runs} runs of each, "
        f"on {os.cpu_count()} cores"
    )
    results: dict[str, dict[str, list[float]]] = {
        k: {"ours": [], "raw": []} for k in ("postgres", "redis", "search")
    }
    counts: dict[str, int] = {}
    try:
        _fresh_db(settings)
        counts["events"] = _load(settings, namespace, events, say)
        rows: dict[str, bytes] = {}
        for run in range(1, runs + 1):
            ours, n = _ours_postgres(settings, namespace, say)
            if not rows:
                rows = _rows_of_rebuild(settings)
            raw, m = _raw_postgres(settings, namespace, rows)
            results["postgres"]["ours"].append(ours)
            results["postgres"]["raw"].append(raw)
            counts["records"] = n
            say(
                f"postgres run {run}: rebuild {ours:,.0f} events/s ({n:,}), "
                f"raw {raw:,.0f} ({m:,}): {ours / raw:.2f}x"
            )
        _into_public(settings)
        views = asyncio.run(_views(settings))
        docs = asyncio.run(_documents(settings))
        counts["views"] = len(views)
        counts["documents"] = sum(len(d) for d in docs.values())
        for run in range(1, runs + 1):
            ours, n = _ours_redis(settings, namespace)
            raw, m = _raw_redis(settings, views)
            results["redis"]["ours"].append(ours)
            results["redis"]["raw"].append(raw)
            say(
                f"redis run {run}: rebuild {ours:,.0f} views/s ({n:,}), "
                f"raw HSET {raw:,.0f} ({m:,}): {ours / raw:.2f}x"
            )
        for run in range(1, runs + 1):
            ours, n = _ours_search(settings, namespace)
            raw, m = asyncio.run(_raw_search(settings, docs))
            results["search"]["ours"].append(ours)
            results["search"]["raw"].append(raw)
            say(
                f"search run {run}: rebuild {ours:,.0f} docs/s ({n:,}), "
                f"raw import {raw:,.0f} ({m:,}): {ours / raw:.2f}x"
            )
    finally:
        _drop_topics(settings, namespace)
        asyncio.run(_drop_search(settings))
    goals = {"postgres": 0.7, "redis": 0.5, "search": 0.8}
    units = {"postgres": "events/s", "redis": "views/s", "search": "documents/s"}
    summary: dict[str, Any] = {"counts": counts}
    say("")
    say(f"| store | rebuild ({'median of ' + str(runs)}) | raw baseline | ratio | goal |")
    say("| --- | --- | --- | --- | --- |")
    for store, r in results.items():
        ours, raw = statistics.median(r["ours"]), statistics.median(r["raw"])
        ratios = [o / w for o, w in zip(r["ours"], r["raw"], strict=True)]
        ratio = statistics.median(ratios)
        summary[store] = {"ours": ours, "raw": raw, "ratio": ratio, "goal": goals[store]}
        say(
            f"| {store} | {ours:,.0f} {units[store]} | {raw:,.0f} {units[store]} | "
            f"{ratio:.2f}x | >= {goals[store]}x {'met' if ratio >= goals[store] else 'NOT met'} |"
        )
    say(
        f"({counts.get('records', 0):,} records folded into {counts.get('views', 0):,} views and "
        f"{counts.get('documents', 0):,} search documents)"
    )
    return summary
