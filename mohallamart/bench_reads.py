"""`mohallamart bench reads`: the read side, each figure beside a baseline measured in the same run.

Runs its own API and workers (projections, stock, cache, search) in a sandbox of their own on the
running stack: topics `mohallamart-bench-reads.*`, database `bench_reads`, Redis database 1,
Typesense collections prefixed `bench_`; the pipeline's data is never touched.

1. seed: an approved shop and `--products` published products, posted to the API; waits until
   PostgreSQL and Typesense hold them all;
2. time to searchable (`--samples` products, one at a time): API acknowledgement -> the product
   found in Typesense (polled every 5 ms);
3. read latency, warm cache: `GET /v1/products/{id}` over 1,000 products read once before, at
   `--rate` req/s for `--duration` s (vegeta); baseline: `GET /healthz` of the same API at the
   same rate (the HTTP floor), and the raw Redis read from Python;
4. search latency: `GET /v1/search/products?q=...` (a mix of words, some misspelt) at
   `--search-rate`; baseline: the same queries straight to Typesense at the same rate;
5. reindex: `--runs` full reindexes of the products (new collection + alias swap), docs/s;
   baseline: a bulk import of the same documents into a scratch collection, without PostgreSQL;
6. idle live clients: `--clients` SSE connections held by the one API process; its RSS before and
   after, and how long one stock change takes to reach all of them;
7. notification bursts: `--notifications` `notification.requested` events for one user, EMAIL
   only, then SMS only, posted at once; messages/s from the first post until the outbox holds
   every one SENT. Baseline, in the same run: a raw client sending the same messages to the same
   servers: the stack's SMTP server over EMAIL_POOL_SIZE smtplib connections in threads (the
   sender the worker uses, without Kafka, PostgreSQL or the outbox), and the SMS provider
   stand-in with httpx, PROVIDER_CONCURRENCY requests in flight. `--runs` bursts of each, each
   beside its own raw run: medians (one burst alone moved 0.60-0.78x between runs).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import psycopg
import redis

from core.errors import PipelineError
from core.settings import Settings
from mohallamart.bench import _Api, _vegeta, _vegeta_attack
from mohallamart.stack.supervisor import Supervisor

__all__ = ["run_reads_bench"]

_DB = "bench_reads"
_NAMESPACE = "mohallamart-bench-reads"
_PREFIX = "bench_"
_WORDS = ("Rice", "Atta", "Dal", "Ghee", "Paneer", "Masala", "Biscuit", "Honey", "Tea", "Coffee")
_MISSPELT = ("Ryce", "Aata", "Daal", "Ghe", "Panir", "Masaala", "Biscit", "Hony", "Tee", "Cofee")


def _dsn(settings: Settings) -> str:
    return settings.postgres_dsn.rsplit("/", 1)[0] + f"/{_DB}"


def _redis_url(settings: Settings) -> str:
    return settings.redis_dsn.rsplit("/", 1)[0] + "/1"


def _ms(ns: float) -> float:
    return round(ns / 1e6, 2)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class _Sandbox:
    """The benchmark's API and workers, on a scratch database, Redis db, topics and collections."""

    def __init__(self, settings: Settings, echo: Callable[[str], None]) -> None:
        self.settings, self.echo = settings, echo
        self.tmp = tempfile.TemporaryDirectory()
        self.env = {
            "DATABASE_URL": _dsn(settings),
            "REDIS_URL": _redis_url(settings),
            "TOPIC_NAMESPACE": _NAMESPACE,
            "WORKER_APP_PREFIX": f"mohallamart-bench-reads-{uuid.uuid4().hex[:8]}",
            "WORKER_OFFSET_RESET": "latest",
            "TYPESENSE_COLLECTION_PREFIX": _PREFIX,
            "LOG_LEVEL": "WARNING",
            "LIVE_HEARTBEAT_S": "30",
        }
        # supervised but never restarted: a restart would change what is measured
        self.workers = Supervisor(echo=lambda line: None)
        self.api: _Api | None = None

    def prepare(self) -> None:
        from connectors.db import migrate

        with psycopg.connect(self.settings.postgres_dsn, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (_DB,)).fetchone():
                conn.execute(f"DROP DATABASE {_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {_DB}")
        migrate(_dsn(self.settings))
        redis.Redis.from_url(_redis_url(self.settings)).flushdb()
        s = self.settings
        headers = {"X-TYPESENSE-API-KEY": s.typesense_api_key.get_secret_value()}
        with httpx.Client(base_url=s.typesense_base_url, headers=headers, timeout=30) as ts:
            for a in ts.get("/aliases").json().get("aliases", []):
                if a["name"].startswith(_PREFIX):
                    ts.delete(f"/aliases/{a['name']}")
            for c in ts.get("/collections").json():
                if c["name"].startswith(_PREFIX):
                    ts.delete(f"/collections/{c['name']}")

    def start(self) -> None:
        import socket

        for role in ("projections", "stock", "cache", "search", "notifications"):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            log = self.settings.stack_dir / f"worker-bench-reads-{role}.log"
            proc = self.workers.start(
                role,
                [
                    sys.executable,
                    "-m",
                    "mohallamart.cli",
                    "worker",
                    "--role",
                    role,
                    "--web-port",
                    str(port),
                ],
                output=log,
                env={**self.env, "WORKER_DATA_DIR": f"{self.tmp.name}/{role}"},
            )
            self.echo(f"{role} worker started (pid {proc.pid}, log {log.name})")
        self.api = _Api(self.settings, self.echo, env=self.env)

    def stop(self) -> None:
        if self.api is not None:
            self.api.stop()
        self.workers.stop_all(timeout_s=30)
        self.tmp.cleanup()


def _key(settings: Settings) -> str:
    from connectors.apikeys import create_key

    _, secret = create_key(
        _dsn(settings),
        name="bench-reads",
        scopes=["ingest", "read"],
        principal="admin",
        rate_per_s=10_000_000,
    )
    return secret


class _Clock:
    """Strictly increasing event times (a version is (occurred_at, id))."""

    def __init__(self) -> None:
        self.last = datetime.now(UTC)

    def next(self) -> str:
        self.last = max(datetime.now(UTC), self.last + timedelta(milliseconds=1))
        return self.last.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _event(clock: _Clock, type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": type_,
        "occurred_at": clock.next(),
        "source": "bench",
        "data": data,
    }


def _product_events(clock: _Clock, shop: str, pid: str, i: int) -> list[dict[str, Any]]:
    from schemas.catalog import EVENT_TYPES

    word = _WORDS[i % len(_WORDS)]
    data = {
        **EVENT_TYPES["product.created"].example,
        "product_id": pid,
        "shop_id": shop,
        "name": f"{word} {pid[-6:]}",
        "category": word.lower(),
        "price_paise": 1000 + i % 5000,
        "initial_stock": 50,
    }
    return [
        _event(clock, "product.created", data),
        _event(clock, "product.published", {"product_id": pid, "shop_id": shop}),
    ]


def _typesense(settings: Settings) -> httpx.Client:
    return httpx.Client(
        base_url=settings.typesense_base_url,
        headers={"X-TYPESENSE-API-KEY": settings.typesense_api_key.get_secret_value()},
        timeout=30,
    )


def _found(ts: httpx.Client, shop: str) -> int:
    r = ts.get(
        f"/collections/{_PREFIX}products/documents/search",
        params={"q": "*", "filter_by": f"shop_id:={shop}", "per_page": 1},
    )
    return int(r.json().get("found", 0)) if r.status_code == 200 else 0


def _seed(
    settings: Settings, api: httpx.Client, clock: _Clock, n: int, echo: Callable[[str], None]
) -> tuple[str, list[str], float, float]:
    from schemas.catalog import EVENT_TYPES

    shop = f"shop_bench_{uuid.uuid4().hex[:8]}"
    ex = EVENT_TYPES
    setup = [
        _event(clock, "shop.created", {**ex["shop.created"].example, "shop_id": shop}),
        _event(clock, "shopkeeper.applied", {**ex["shopkeeper.applied"].example, "shop_id": shop}),
        _event(
            clock, "shopkeeper.approved", {**ex["shopkeeper.approved"].example, "shop_id": shop}
        ),
    ]
    pids = [f"prd_bench_{i:06d}_{uuid.uuid4().hex[:6]}" for i in range(n)]
    events = setup
    for i, pid in enumerate(pids):
        events += _product_events(clock, shop, pid, i)
    t0 = time.monotonic()
    for i in range(0, len(events), 1000):
        r = api.post("/v1/events/batch", json={"events": events[i : i + 1000]})
        if r.status_code != 202:
            raise PipelineError(f"seeding failed: {r.status_code} {r.text[:300]}")
    echo(f"seed: {len(events):,} events posted in {time.monotonic() - t0:.1f} s")
    # when the projections had every product (PostgreSQL), when search had them (Typesense)
    projected_at: float | None = None
    with _typesense(settings) as ts, psycopg.connect(_dsn(settings), autocommit=True) as conn:
        deadline = time.monotonic() + 600
        last = 0.0
        while (got := _found(ts, shop)) < n:
            now = time.monotonic()
            if projected_at is None:
                # searchable in PostgreSQL's eyes: published, in stock (its stock is the stock
                # role's INITIAL movement, projected), of an approved shop
                row = conn.execute(
                    "SELECT count(*) FROM products p JOIN shopkeepers k USING (shop_id) "
                    "WHERE p.shop_id = %s AND p.status = 'PUBLISHED' AND p.stock > 0 "
                    "AND k.status = 'APPROVED'",
                    (shop,),
                ).fetchone()
                if row is not None and row[0] >= n:
                    projected_at = now
            if now > deadline:
                raise PipelineError(f"only {got} of {n} products became searchable in 600 s")
            if now - last > 2:
                echo(f"seed: {got:,} of {n:,} products searchable")
                last = now
            time.sleep(0.05)
    done = time.monotonic()
    seconds = done - t0
    behind = done - (projected_at if projected_at is not None else done)
    echo(
        f"seed: {n:,} products searchable after {seconds:.1f} s ({n / seconds:,.0f} products/s), "
        f"{behind:.2f} s after the projections had them all"
    )
    return shop, pids, seconds, behind


def _raw_email(settings: Settings, msgs: list[Any]) -> float:
    """Seconds for a raw client to send `msgs` over EMAIL_POOL_SIZE smtplib connections."""
    import smtplib
    from concurrent.futures import ThreadPoolExecutor

    host, port = settings.smtp_address
    pool = settings.email_pool_size
    shares = [msgs[i::pool] for i in range(pool)]

    def send(share: list[Any]) -> None:
        with smtplib.SMTP(host, port, timeout=10) as smtp:
            for m in share:
                smtp.send_message(m)

    t0 = time.monotonic()
    with ThreadPoolExecutor(pool) as ex:
        list(ex.map(send, shares))
    return time.monotonic() - t0


async def _raw_sms(settings: Settings, payloads: list[dict[str, Any]]) -> float:
    """Seconds for httpx to post `payloads` to the SMS provider, PROVIDER_CONCURRENCY at once."""
    url = settings.provider_endpoint("sms")
    if url is None:
        raise PipelineError("the SMS provider is off (SMS_PROVIDER_URL=off)")
    key = settings.sms_provider_key.get_secret_value()
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    gate = asyncio.Semaphore(settings.provider_concurrency)
    async with httpx.AsyncClient(timeout=10, headers=auth) as http:

        async def one(body: dict[str, Any]) -> None:
            async with gate:
                r = await http.post(url, json=body, headers={"Idempotency-Key": body["message_id"]})
                r.raise_for_status()

        t0 = time.monotonic()
        await asyncio.gather(*map(one, payloads))
        return time.monotonic() - t0


def _notification_bursts(
    settings: Settings,
    api: httpx.Client,
    clock: _Clock,
    n: int,
    echo: Callable[[str], None],
    runs: int = 3,
) -> dict[str, Any]:
    """Phase 7 (see the module's text): `runs` bursts per channel, medians."""
    from schemas.catalog import EVENT_TYPES

    user = f"usr_bench_{uuid.uuid4().hex[:8]}"
    data = {
        **EVENT_TYPES["user.registered"].example,
        "user_id": user,
        "email": f"{user}@example.in",
        "phone": "+919800000001",
    }
    data["preferences"] = {
        **data["preferences"],
        "email_opt_in": True,
        "sms_opt_in": True,
        "push_opt_in": False,
    }
    r = api.post("/v1/events", json=_event(clock, "user.registered", data))
    if r.status_code != 202:
        raise PipelineError(f"registering the bench's user failed: {r.status_code} {r.text[:200]}")
    out: dict[str, Any] = {"messages": n}
    with psycopg.connect(_dsn(settings), autocommit=True) as conn:
        deadline = time.monotonic() + 60
        while not conn.execute("SELECT 1 FROM users WHERE user_id = %s", (user,)).fetchone():
            if time.monotonic() > deadline:
                raise PipelineError("the bench's user was not projected within 60 s")
            time.sleep(0.05)
        # the welcome email of the registration goes first, not counted
        time.sleep(1)
        for channel in ("EMAIL", "SMS"):
            runs_ = [
                _burst(settings, api, clock, conn, user, data, channel, n, k, runs, echo)
                for k in range(runs)
            ]
            res = {
                "pipeline_per_s": statistics.median(r[0] for r in runs_),
                "raw_client_per_s": statistics.median(r[1] for r in runs_),
                "ratio_to_raw": statistics.median(r[2] for r in runs_),
                "ratios": [r[2] for r in runs_],
            }
            out[channel.lower()] = res
            echo(f"  {channel}, medians of {runs}: {res}")
    return out


def _burst(
    settings: Settings,
    api: httpx.Client,
    clock: _Clock,
    conn: psycopg.Connection[Any],
    user: str,
    data: dict[str, Any],
    channel: str,
    n: int,
    k: int,
    runs: int,
    echo: Callable[[str], None],
) -> tuple[float, float, float]:
    """One burst of `n` messages on `channel` through the pipeline, then the raw client sending
    the same messages: (pipeline messages/s, raw messages/s, ratio)."""
    from connectors.email import EmailSender

    tag = f"burst-{channel.lower()}-{uuid.uuid4().hex[:6]}"
    events = [
        _event(
            clock,
            "notification.requested",
            {
                "user_id": user,
                "kind": "GENERIC",
                "channels": [channel],
                "title": f"{tag} {i:05d}",
                "body": f"Message {i} of the burst",
                "params": {},
            },
        )
        for i in range(n)
    ]

    def sent() -> int:
        row = conn.execute(
            "SELECT count(*) FROM notification_outbox WHERE user_id = %s "
            "AND kind = 'GENERIC' AND channel = %s AND status = 'SENT'",
            (user, channel),
        ).fetchone()
        return int(row[0]) if row else 0

    before = sent()
    echo(f"notifications: a burst of {n:,} {channel} messages (run {k + 1} of {runs}) ...")
    t0 = time.monotonic()
    for i in range(0, n, 1000):
        r = api.post("/v1/events/batch", json={"events": events[i : i + 1000]})
        if r.status_code != 202:
            raise PipelineError(f"posting the burst failed: {r.status_code}")
    deadline = t0 + 600
    while (got := sent() - before) < n:
        if time.monotonic() > deadline:
            raise PipelineError(f"only {got} of {n} {channel} messages sent in 600 s")
        time.sleep(0.05)
    took = time.monotonic() - t0
    if channel == "EMAIL":
        host, port = settings.smtp_address
        sender = EmailSender(host, port, settings.email_from)
        msgs = [
            sender.build(
                to=data["email"],
                subject=f"{tag}-raw {i:05d}",
                text=f"Message {i} of the burst",
                html=f"<p>Message {i} of the burst</p>",
                message_id=f"<{uuid.uuid4()}@bench.mohallamart>",
            )
            for i in range(n)
        ]
        raw = _raw_email(settings, msgs)
    else:
        payloads = [
            {
                "to": data["phone"],
                "title": f"{tag}-raw {i:05d}",
                "body": f"Message {i} of the burst",
                "message_id": f"<{uuid.uuid4()}@bench.mohallamart>",
                "kind": "GENERIC",
            }
            for i in range(n)
        ]
        raw = asyncio.run(_raw_sms(settings, payloads))
    echo(f"  pipeline {n / took:,.0f}/s, raw client {n / raw:,.0f}/s: {raw / took:.2f}x")
    return round(n / took, 1), round(n / raw, 1), round(raw / took, 2)


def _time_to_searchable(
    settings: Settings, api: httpx.Client, clock: _Clock, shop: str, samples: int
) -> list[float]:
    out = []
    with _typesense(settings) as ts:
        for i in range(samples):
            pid = f"prd_tts_{uuid.uuid4().hex[:10]}"
            r = api.post("/v1/events/batch", json={"events": _product_events(clock, shop, pid, i)})
            acked = time.monotonic()
            assert r.status_code == 202, r.text
            while True:
                got = ts.get(f"/collections/{_PREFIX}products/documents/{pid}")
                if got.status_code == 200:
                    out.append(time.monotonic() - acked)
                    break
                if time.monotonic() - acked > 60:
                    raise PipelineError(f"{pid} was not searchable after 60 s")
                time.sleep(0.005)
            time.sleep(0.2)
    return out


def _targets(path: Path, urls: list[str], headers: dict[str, list[str]]) -> None:
    with open(path, "wb") as f:
        for url in urls:
            f.write(orjson.dumps({"method": "GET", "url": url, "header": headers}) + b"\n")


def _attack(vegeta: str, targets: Path, rate: int, duration: int) -> dict[str, Any]:
    rep = _vegeta_attack(vegeta, targets, [f"-rate={rate}/s", f"-duration={duration}s"])
    lat = rep["latencies"]
    return {
        "requests": rep["requests"],
        "success": rep["success"],
        "p50_ms": _ms(lat["50th"]),
        "p90_ms": _ms(lat["90th"]),
        "p99_ms": _ms(lat["99th"]),
        "max_ms": _ms(lat["max"]),
        "status_codes": rep.get("status_codes", {}),
    }


def _raw_redis_p99(settings: Settings, keys: list[str], n: int = 5000) -> dict[str, float]:
    from connectors.redis_cache import cache_key

    r = redis.Redis.from_url(_redis_url(settings))
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        r.hget(cache_key("product", keys[i % len(keys)]), "p")
        lat.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(_pct(lat, 0.5), 3), "p99_ms": round(_pct(lat, 0.99), 3)}


async def _reindex_runs(
    settings: Settings, runs: int, echo: Callable[[str], None]
) -> list[dict[str, Any]]:
    from connectors.typesense import SearchIndex, reindex

    index = SearchIndex(
        settings.typesense_base_url, settings.typesense_api_key.get_secret_value(), prefix=_PREFIX
    )
    out = []
    try:
        async with await psycopg.AsyncConnection.connect(_dsn(settings), autocommit=True) as conn:
            for i in range(runs):
                res = await reindex(conn, index, "products", progress=echo)
                echo(f"reindex run {i + 1}: {res['docs']:,} docs, {res['docs_per_s']:,} docs/s")
                out.append(res)
    finally:
        await index.close()
    return out


async def _raw_import(settings: Settings, runs: int) -> list[float]:
    """The same documents, read once from PostgreSQL, bulk-imported into a scratch collection."""
    from connectors.typesense import ALIASES, SearchIndex
    from connectors.views import searchable_chunk

    index = SearchIndex(
        settings.typesense_base_url, settings.typesense_api_key.get_secret_value(), prefix=_PREFIX
    )
    docs: list[dict[str, Any]] = []
    async with await psycopg.AsyncConnection.connect(_dsn(settings), autocommit=True) as conn:
        after = ""
        while chunk := await searchable_chunk(conn, "products", after, 2000):
            docs += chunk
            after = str(chunk[-1]["id"])
    rates = []
    try:
        for _ in range(runs):
            name = f"scratch_{uuid.uuid4().hex[:8]}"
            await index.create_collection(name, ALIASES["products"])
            t0 = time.monotonic()
            for i in range(0, len(docs), 2000):
                await index.upsert(name, docs[i : i + 2000])
            rates.append(len(docs) / (time.monotonic() - t0))
            await index.drop_collection(name)
    finally:
        await index.close()
    return rates


async def _idle_clients(
    url: str,
    key: str,
    product: str,
    n: int,
    api_pid: int,
    post_change: Callable[[], None],
    echo: Callable[[str], None],
) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    proc = psutil.Process(api_pid)
    rss_before = proc.memory_info().rss
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    request = (
        f"GET /v1/live?product={product} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {key}\r\n\r\n"
    ).encode()
    failed = 0
    t0 = time.monotonic()
    for i in range(n):
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                failed += 1
                writer.close()
                continue
            conns.append((reader, writer))
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            failed += 1
        if (i + 1) % 1000 == 0:
            echo(f"live: {len(conns):,} clients connected ({failed} refused)")
    connect_s = time.monotonic() - t0
    await asyncio.sleep(2)
    rss_after = proc.memory_info().rss
    async with httpx.AsyncClient() as client:
        lat = []
        for _ in range(20):
            t = time.perf_counter()
            await client.get(f"{url}/healthz")
            lat.append((time.perf_counter() - t) * 1000)

    async def first_event(reader: asyncio.StreamReader) -> float:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line.startswith(b"event: product.stock_changed"):
                return time.monotonic()

    t_post = time.monotonic()
    await asyncio.to_thread(post_change)
    waits = [asyncio.create_task(first_event(r)) for r, _ in conns]
    done, pending = await asyncio.wait(waits, timeout=60)
    got = [task.result() - t_post for task in done if task.exception() is None]
    for task in pending:
        task.cancel()
    for _, w in conns:
        w.close()
    return {
        "clients_held": len(conns),
        "refused": failed,
        "connect_s": round(connect_s, 1),
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_after_mb": round(rss_after / 2**20, 1),
        "kb_per_client": round((rss_after - rss_before) / max(1, len(conns)) / 1024, 1),
        "healthz_p50_ms_while_held": round(_pct(lat, 0.5), 2),
        "one_change_reached": len(got),
        "fanout_all_s": round(max(got), 3) if got else None,
        "fanout_median_s": round(statistics.median(got), 3) if got else None,
    }


def run_reads_bench(
    settings: Settings,
    *,
    products: int = 20_000,
    samples: int = 20,
    rate: int = 500,
    search_rate: int = 100,
    duration: int = 10,
    runs: int = 3,
    clients: int = 5000,
    notifications: int = 1000,
    echo: Callable[[str], None] = print,  # noqa: T202
    json_path: str | None = None,
) -> dict[str, Any]:
    vegeta = _vegeta(settings, echo)
    box = _Sandbox(settings, echo)
    box.prepare()
    key = _key(settings)
    figures: dict[str, Any] = {"products": products}
    box.start()
    try:
        assert box.api is not None
        api = httpx.Client(
            base_url=box.api.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )
        clock = _Clock()
        # the search worker builds its collections at start; wait for them
        with _typesense(settings) as ts:
            deadline = time.monotonic() + 120
            while ts.get(f"/aliases/{_PREFIX}products").status_code != 200:
                if time.monotonic() > deadline:
                    raise PipelineError("the search worker did not create its collections")
                time.sleep(0.5)
        shop, pids, seed_s, behind_s = _seed(settings, api, clock, products, echo)
        # a burst: 2 events per product posted in batches, until every product is searchable
        figures["seed_burst"] = {
            "seconds": round(seed_s, 1),
            "products_per_s": round(products / seed_s, 1),
            "searchable_behind_projections_s": round(behind_s, 2),
        }

        tts = _time_to_searchable(settings, api, clock, shop, samples)
        figures["time_to_searchable_s"] = {
            "median": round(statistics.median(tts), 3),
            "p90": round(_pct(tts, 0.9), 3),
            "max": round(max(tts), 3),
            "samples": len(tts),
        }
        echo(f"time to searchable: {figures['time_to_searchable_s']}")

        hot = pids[:1000]
        for pid in hot:  # warm the cache (read-through fills)
            api.get(f"/v1/products/{pid}")
        headers = {"Authorization": [f"Bearer {key}"]}
        tmp = Path(tempfile.mkdtemp())
        _targets(tmp / "reads", [f"{box.api.url}/v1/products/{p}" for p in hot], headers)
        _targets(tmp / "floor", [f"{box.api.url}/healthz"], {})
        figures["read_warm"] = _attack(vegeta, tmp / "reads", rate, duration)
        figures["read_floor_healthz"] = _attack(vegeta, tmp / "floor", rate, duration)
        figures["read_raw_redis"] = _raw_redis_p99(settings, hot)
        figures["read_p99_ratio_to_floor"] = round(
            figures["read_warm"]["p99_ms"] / figures["read_floor_healthz"]["p99_ms"], 2
        )
        echo(f"reads (warm cache) at {rate}/s: {figures['read_warm']}")
        echo(
            f"  floor (/healthz): {figures['read_floor_healthz']}; raw Redis: "
            f"{figures['read_raw_redis']}"
        )

        queries = [w for pair in zip(_WORDS, _MISSPELT, strict=True) for w in pair]
        _targets(
            tmp / "search", [f"{box.api.url}/v1/search/products?q={q}" for q in queries], headers
        )
        ts_headers = {"X-TYPESENSE-API-KEY": [settings.typesense_api_key.get_secret_value()]}
        params = (
            "query_by=name,category,description,shop_name&num_typos=2"
            "&filter_by=in_stock:%3Dtrue%20%26%26%20status:%3DPUBLISHED"
            "&facet_by=category,shop_id&max_facet_values=20&per_page=20"
        )
        _targets(
            tmp / "search_raw",
            [
                f"{settings.typesense_base_url}/collections/{_PREFIX}products/documents/search"
                f"?q={q}&{params}"
                for q in queries
            ],
            ts_headers,
        )
        figures["search"] = _attack(vegeta, tmp / "search", search_rate, duration)
        figures["search_raw_typesense"] = _attack(vegeta, tmp / "search_raw", search_rate, duration)
        figures["search_p99_ratio_to_raw"] = round(
            figures["search"]["p99_ms"] / figures["search_raw_typesense"]["p99_ms"], 2
        )
        echo(f"search at {search_rate}/s: {figures['search']}")
        echo(f"  raw Typesense: {figures['search_raw_typesense']}")

        ri = asyncio.run(_reindex_runs(settings, runs, echo))
        raw = asyncio.run(_raw_import(settings, runs))
        figures["reindex"] = {
            "docs": ri[-1]["docs"],
            "docs_per_s_median": statistics.median(r["docs_per_s"] for r in ri),
            "runs": [r["docs_per_s"] for r in ri],
            "raw_import_docs_per_s_median": round(statistics.median(raw), 1),
        }
        figures["reindex"]["ratio_to_raw"] = round(
            figures["reindex"]["docs_per_s_median"]
            / figures["reindex"]["raw_import_docs_per_s_median"],
            2,
        )
        echo(f"reindex: {figures['reindex']}")

        follow = pids[0]

        def change() -> None:
            r = api.post(
                "/v1/events",
                json=_event(
                    clock,
                    "product.stock_adjusted",
                    {"product_id": follow, "shop_id": shop, "delta": 1, "reason": "RESTOCK"},
                ),
            )
            assert r.status_code == 202, r.text

        figures["live_idle_clients"] = asyncio.run(
            _idle_clients(box.api.url, key, follow, clients, box.api.proc.pid, change, echo)
        )
        echo(f"live: {figures['live_idle_clients']}")

        figures["notification_bursts"] = _notification_bursts(
            settings, api, clock, notifications, echo, runs
        )
    finally:
        box.stop()
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2))
    return figures
