"""`mohallamart bench workers`: the projections worker, topic -> PostgreSQL, beside a plain
confluent-kafka consumer doing the same upserts at the same batch size, in the same run.

Both write scratch databases of their own on the stack's PostgreSQL (`bench_worker`,
`bench_baseline`, recreated by each run), so the figures do not depend on what the main database
holds. The worker is a real `mohallamart worker --role projections` process with a consumer group
of its own that starts at the end of the topics.

1. throughput (`--runs` times, medians): `--events` events of a realistic mix (per 10: a user
   registered; a product created, updated, published; two orders created, accepted, completed),
   produced straight to the event topics; events/s until every row is visible. The baseline then
   reads the same records (same offsets) with confluent-kafka, `consume(batch)` -> the same
   `PostgresProjections.write_batch`, and is timed the same way;
2. latency: `user.registered` events posted to the API at each `--rate` (1,000 and 500/s by
   default; vegeta) for `--duration` s;
   per event, from the API's acknowledgement (vegeta's timestamp + latency) to the commit time of
   its row (`pg_xact_commit_timestamp`, PostgreSQL runs with track_commit_timestamp=on): first
   the worker alone, then (the worker stopped) the baseline consuming live, each after a 3 s
   warm-up, so neither takes CPU from the other's measurement.
Everything runs on the machine it measures (2 cores here): the generator takes CPU too.
The benchmark's worker and API run in a topic namespace of their own (`mohallamart-bench.*`):
the pipeline's topics, groups and database never see its events.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer, TopicPartition

from connectors.kafka import consumer_config
from core.errors import PipelineError
from core.settings import Settings
from mohallamart.stack.supervisor import Supervisor

__all__ = ["run_workers_bench"]

_DBS = ("bench_worker", "bench_baseline")
BENCH_NAMESPACE = "mohallamart-bench"
_TABLES = (
    "users",
    "sessions",
    "shops",
    "shopkeepers",
    "categories",
    "products",
    "orders",
    "order_items",
    "inventory_movements",
    "audit_log",
)


def _dsn(settings: Settings, db: str) -> str:
    base = settings.postgres_dsn
    return base.rsplit("/", 1)[0] + f"/{db}"


def _fresh_databases(settings: Settings) -> None:
    from connectors.db import migrate

    migrate(settings.postgres_dsn)  # the API keys of the latency phase live there
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        for db in _DBS:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone()
            if not exists:
                conn.execute(f"CREATE DATABASE {db}")
    for db in _DBS:
        migrate(_dsn(settings, db))
    _empty_databases(settings)


def _empty_databases(settings: Settings) -> None:
    """Every run starts from empty tables, then a checkpoint: runs comparable, and no
    checkpoint of the previous run's writes in the middle of the next measurement."""
    for db in _DBS:
        with psycopg.connect(_dsn(settings, db), autocommit=True) as conn:
            conn.execute(f"TRUNCATE {', '.join(_TABLES)}")
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def _mix(n: int, tag: str) -> list[dict[str, Any]]:
    """`n` events (a multiple of 10), in an order every lifecycle accepts."""
    from schemas.catalog import EVENT_TYPES

    def ex(t: str, **over: Any) -> dict[str, Any]:
        return {**EVENT_TYPES[t].example, **over}

    t0 = datetime.now(UTC)
    out: list[dict[str, Any]] = []

    def add(t: str, at_ms: int, data: dict[str, Any]) -> None:
        eid = str(uuid.uuid4())
        out.append(
            {
                "id": eid,
                "type": t,
                "occurred_at": t0 + timedelta(milliseconds=at_ms),
                "source": "bench",
                "trace_id": eid,
                "data": data,
            }
        )

    for u in range(n // 10):
        user, shop, prd = f"bench-{tag}-u{u}", f"bench-{tag}-s{u % 50}", f"bench-{tag}-p{u}"
        add("user.registered", u, ex("user.registered", user_id=user))
        add("product.created", u, ex("product.created", product_id=prd, shop_id=shop))
        add(
            "product.updated",
            u + 1,
            ex("product.updated", product_id=prd, shop_id=shop, price_paise=2700 + u % 100),
        )
        add("product.published", u + 2, ex("product.published", product_id=prd, shop_id=shop))
        for k in range(2):
            oid = f"bench-{tag}-o{u}-{k}"
            items = [
                {
                    "product_id": prd,
                    "quantity": 1 + k,
                    "unit_price_paise": 2600,
                    "name": "Nandini Toned Milk",
                }
            ]
            add(
                "order.created",
                u,
                ex(
                    "order.created",
                    order_id=oid,
                    shop_id=shop,
                    user_id=user,
                    items=items,
                    total_paise=2600 * (1 + k),
                    delivery_fee_paise=0,
                ),
            )
            add(
                "order.accepted",
                u + 1,
                ex(
                    "order.accepted",
                    order_id=oid,
                    shop_id=shop,
                    user_id=user,
                    total_paise=2600 * (1 + k),
                    cause_event_id=out[-1]["id"],
                    items=[{"product_id": prd, "quantity": 1 + k, "stock_after": 10}],
                ),
            )
            add(
                "order.status_changed",
                u + 2,
                ex(
                    "order.status_changed",
                    order_id=oid,
                    shop_id=shop,
                    user_id=user,
                    from_status="PROCESSING",
                    to_status="COMPLETED",
                ),
            )
    return out


def _encode(
    settings: Settings, events: list[dict[str, Any]], namespace: str = BENCH_NAMESPACE
) -> list[tuple[str, bytes, bytes]]:
    from schemas.catalog import EVENT_TYPES, topics_in
    from schemas.codec import EventCodec
    from schemas.registry import SchemaRegistry

    registry = SchemaRegistry(settings.registry_url)
    codecs: dict[str, tuple[int, EventCodec]] = {}
    topics = topics_in(namespace)
    out = []
    for ev in events:
        et = EVENT_TYPES[ev["type"]]
        if et.name not in codecs:
            codecs[et.name] = (registry.register(et), EventCodec(et.schema))
        sid, codec = codecs[et.name]
        out.append(
            (
                topics[et.category].name,
                str(ev["data"][et.key_field]).encode(),
                codec.encode_fastavro(sid, ev),
            )
        )
    return out


def _producer(settings: Settings) -> Producer:
    from connectors.kafka import producer_config

    return Producer(
        producer_config(
            settings.kafka_bootstrap,
            security=settings.kafka_security,
            delivery_timeout_ms=30_000,
            linger_ms=5,
            max_message_bytes=1 << 20,
        )
    )


def _produce(settings: Settings, records: list[tuple[str, bytes, bytes]]) -> None:
    p = _producer(settings)
    for topic, key, value in records:
        while True:
            try:
                p.produce(topic, key=key, value=value)
                break
            except BufferError:
                p.poll(0.05)
    if p.flush(60):
        raise PipelineError("the benchmark's producer could not deliver every event")


def _high_watermarks(settings: Settings, topics: list[str]) -> dict[tuple[str, int], int]:
    c = Consumer(
        consumer_config(settings.kafka_bootstrap, "bench-probe", security=settings.kafka_security)
    )
    try:
        out = {}
        meta = c.list_topics(timeout=10)
        for t in topics:
            for p in meta.topics[t].partitions:
                out[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
        return out
    finally:
        c.close()


def _counts(dsn: str, tag: str) -> tuple[int, int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM users WHERE user_id LIKE %(p)s), "
            "(SELECT count(*) FROM products WHERE product_id LIKE %(p)s AND status = 'PUBLISHED'), "
            "(SELECT count(*) FROM orders WHERE order_id LIKE %(p)s AND status = 'COMPLETED')",
            {"p": f"bench-{tag}-%"},
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def _wait_rows(
    dsn: str, tag: str, units: int, timeout_s: float, echo: Callable[[str], None]
) -> float:
    want = (units, units, 2 * units)
    deadline = time.monotonic() + timeout_s
    last_echo = time.monotonic()
    while time.monotonic() < deadline:
        got = _counts(dsn, tag)
        if got == want:
            return time.monotonic()
        if time.monotonic() - last_echo > 5:
            echo(f"  ... {sum(got):,} of {sum(want):,} rows")
            last_echo = time.monotonic()
        time.sleep(0.02)
    raise PipelineError(f"rows did not all appear within {timeout_s} s: {_counts(dsn, tag)}")


class _Worker:
    """A projections worker of the benchmark's own: own group, own database, starts at the end
    (supervised but never restarted: a restart would change what is measured)."""

    def __init__(self, settings: Settings, echo: Callable[[str], None]) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.tmp = tempfile.TemporaryDirectory()
        self.log = settings.stack_dir / "worker-bench.log"
        env = {
            "DATABASE_URL": _dsn(settings, "bench_worker"),
            "WORKER_APP_PREFIX": f"mohallamart-bench-{uuid.uuid4().hex[:8]}",
            "WORKER_OFFSET_RESET": "latest",
            "TOPIC_NAMESPACE": BENCH_NAMESPACE,
            "WORKER_DATA_DIR": self.tmp.name,
            "LOG_LEVEL": "WARNING",
        }
        self._procs = Supervisor(echo=lambda line: None)
        self.proc = self._procs.start(
            "projections",
            [
                sys.executable,
                "-m",
                "mohallamart.cli",
                "worker",
                "--role",
                "projections",
                "--web-port",
                str(port),
            ],
            output=self.log,
            env=env,
        ).proc
        echo(f"projections worker started (pid {self.proc.pid}, log {self.log})")

    def stop(self) -> None:
        self._procs.stop_all(timeout_s=30)
        self.tmp.cleanup()


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _wait_ready(settings: Settings, echo: Callable[[str], None]) -> None:
    """The worker starts at the end of the topics: send probes until one becomes a row."""
    deadline = time.monotonic() + 120
    tag = f"probe{uuid.uuid4().hex[:6]}"
    n = 0
    while time.monotonic() < deadline:
        probe = _mix(10, f"{tag}{n}")[:1]
        _produce(settings, _encode(settings, probe))
        t_end = time.monotonic() + 2
        while time.monotonic() < t_end:
            with psycopg.connect(_dsn(settings, "bench_worker")) as conn:
                if conn.execute(
                    "SELECT 1 FROM users WHERE user_id LIKE %s", (f"bench-{tag}%",)
                ).fetchone():
                    echo("the worker is consuming")
                    return
            time.sleep(0.1)
        n += 1
    raise PipelineError("the benchmark's worker did not start consuming within 120 s")


def _baseline(
    settings: Settings,
    starts: dict[tuple[str, int], int],
    ends: dict[tuple[str, int], int] | None,
    batch: int,
    within_s: float,
    done: Callable[[], bool] | None = None,
) -> float:
    """A plain confluent-kafka consumer: decode, `PostgresProjections.write_batch` per topic's
    share of each `consume(batch)`; until `ends` (or `done()`). Returns the seconds it took."""
    from connectors.postgres import PostgresProjections
    from schemas.codec import RegistryDecoder
    from schemas.registry import SchemaRegistry

    registry = SchemaRegistry(settings.registry_url)
    decoder = RegistryDecoder(registry.schema_by_id)
    sink = PostgresProjections(_dsn(settings, "bench_baseline"))
    c = Consumer(
        consumer_config(
            settings.kafka_bootstrap,
            f"bench-baseline-{uuid.uuid4().hex[:8]}",
            {"enable.auto.commit": False, "fetch.wait.max.ms": int(within_s * 1000)},
            security=settings.kafka_security,
        )
    )
    remaining = (
        {tp for tp, end in ends.items() if end > starts.get(tp, 0)} if ends is not None else set()
    )

    async def run() -> float:
        started = time.monotonic()
        c.assign([TopicPartition(t, p, off) for (t, p), off in starts.items()])
        while True:
            if ends is not None and not remaining:
                break
            if done is not None and done():
                break
            msgs = c.consume(batch, timeout=within_s)
            by_topic: dict[str, list[dict[str, Any]]] = {}
            for m in msgs:
                if m.error():
                    continue
                topic, part, off = str(m.topic()), int(m.partition() or 0), int(m.offset() or 0)
                ev = decoder.decode(m.value())
                by_topic.setdefault(topic, []).append(ev)
                if ends is not None and off >= ends[(topic, part)] - 1:
                    remaining.discard((topic, part))
            for events in by_topic.values():
                await sink.write_batch(events)
            if msgs:
                c.commit(asynchronous=True)
        await sink.close()
        return time.monotonic() - started

    try:
        return asyncio.run(run())
    finally:
        c.close()


def _parse_ts(text: str) -> float:
    """vegeta's RFC 3339 timestamp (nanoseconds) as epoch seconds."""
    m = re.match(r"(.*T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", text)
    if m is None:
        raise PipelineError(f"unexpected vegeta timestamp {text!r}")
    base, frac, tz = m.groups()
    frac = (frac or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{base}.{frac}{'+00:00' if tz == 'Z' else tz}").timestamp()


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _latencies(dsn: str, acks: dict[str, float]) -> list[float]:
    return [ms for _, ms in _latencies_by_ack(dsn, acks)]


def _attack(
    vegeta: str,
    url: str,
    key: str,
    rate: int,
    duration_s: int,
    echo: Callable[[str], None],
    measured: bool = True,
) -> dict[str, float]:
    """`user.registered` events at `rate` for `duration_s` through the API: user id -> the
    time the API acknowledged it (vegeta's send time + latency)."""
    from mohallamart.bench import _targets

    tag = uuid.uuid4().hex[:6]
    user_data = _mix(10, "x")[0]["data"]
    evs: list[dict[str, Any]] = [
        {
            "id": str(uuid.uuid4()),
            "type": "user.registered",
            "source": "bench",
            "data": {**user_data, "user_id": f"bench-{tag}-lat{i}"},
        }
        for i in range(rate * duration_s + 100)
    ]
    by_id = {e["id"]: e["data"]["user_id"] for e in evs}
    if not measured:
        echo(f"warming up at {rate}/s for {duration_s} s; not measured ...")
    with tempfile.TemporaryDirectory() as tmp:
        targets = Path(tmp) / "targets.jsonl"
        out = Path(tmp) / "results.bin"
        _targets(targets, url, key, evs)
        subprocess.run(  # noqa: S603
            [
                vegeta,
                "attack",
                "-format=json",
                f"-targets={targets}",
                "-timeout=30s",
                f"-rate={rate}/s",
                f"-duration={duration_s}s",
                f"-output={out}",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        encoded = subprocess.run(  # noqa: S603
            [vegeta, "encode", "--to=json", str(out)], check=True, capture_output=True
        ).stdout
    acks: dict[str, float] = {}
    for line in encoded.splitlines():
        r = json.loads(line)
        if r.get("code") != 202:
            continue
        body = json.loads(base64.b64decode(r["body"]))
        acks[by_id[body["id"]]] = _parse_ts(r["timestamp"]) + r["latency"] / 1e9
    return acks


def _latencies_by_ack(dsn: str, acks: dict[str, float]) -> list[tuple[float, float]]:
    """(ack time, ms from ack to the row's commit) of each user that is a row."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT user_id, extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM users "
            "WHERE user_id = ANY(%s)",
            (list(acks),),
        ).fetchall()
    return sorted((acks[uid], (float(ts) - acks[uid]) * 1000) for uid, ts in rows)


def _by_second(pairs: list[tuple[float, float]]) -> list[float]:
    if not pairs:
        return []
    t0 = pairs[0][0]
    buckets: dict[int, list[float]] = {}
    for at, ms in pairs:
        buckets.setdefault(int(at - t0), []).append(ms)
    return [round(_percentile(v, 0.99), 1) for _, v in sorted(buckets.items())]


def _wait_latencies(dsn: str, acks: dict[str, float]) -> list[float]:
    deadline = time.monotonic() + 120
    while True:
        lat = _latencies(dsn, acks)
        if len(lat) == len(acks):
            return lat
        if time.monotonic() > deadline:
            raise PipelineError(f"only {len(lat)} of {len(acks)} events became rows in 120 s")
        time.sleep(0.5)


def run_workers_bench(
    settings: Settings,
    *,
    events: int,
    runs: int,
    rates: list[int],
    duration_s: int,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    import logging

    from connectors.apikeys import revoke_key
    from connectors.topics import ensure_topics_ready
    from mohallamart.bench import _Api, _vegeta, bench_key
    from schemas.catalog import topics_in

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per registry request
    events = max(10, events - events % 10)
    batch, within = settings.worker_batch_size, settings.worker_batch_window_s
    bench_topics = topics_in(BENCH_NAMESPACE)
    topics = [bench_topics[c].name for c in ("user", "shop", "shopkeeper", "product", "order")]
    ensure_topics_ready(
        settings.kafka_bootstrap,
        list(bench_topics.values()),
        security=settings.kafka_security,
        replication=settings.kafka_replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
    )
    with psycopg.connect(settings.postgres_dsn) as conn:
        tct = conn.execute("SHOW track_commit_timestamp").fetchone()
    if not tct or tct[0] != "on":
        raise PipelineError(
            "PostgreSQL runs without track_commit_timestamp=on (the latency phase reads commit "
            "times): restart the stack's PostgreSQL (`mohallamart stack stop postgres && "
            "mohallamart stack start postgres`) or set it on your server"
        )
    _fresh_databases(settings)
    worker = _Worker(settings, echo)
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores",
        "runs": runs,
        "events": events,
        "batch": batch,
        "within_s": within,
    }
    w_rates: list[float] = []
    b_rates: list[float] = []
    # CPU per event: the worker process (psutil) and this process while the baseline runs
    w_cpu: list[float] = []
    b_cpu: list[float] = []
    lw: dict[int, list[float]] = {}
    lw_seconds: dict[int, list[tuple[float, float]]] = {}
    lb: dict[int, list[float]] = {}
    try:
        _wait_ready(settings, echo)
        for run in range(1, runs + 1):
            _empty_databases(settings)
            tag = f"{uuid.uuid4().hex[:6]}"
            mix = _mix(events, tag)
            records = _encode(settings, mix)
            starts = _high_watermarks(settings, topics)
            echo(f"run {run}/{runs}: {events:,} events -> projections worker ...")
            cpu0 = _cpu_s(worker.proc.pid)
            t0 = time.monotonic()
            _produce(settings, records)
            t1 = _wait_rows(_dsn(settings, "bench_worker"), tag, events // 10, 600, echo)
            w_rates.append(events / (t1 - t0))
            w_cpu.append((_cpu_s(worker.proc.pid) - cpu0) / events * 1e6)
            echo(f"  worker: {w_rates[-1]:,.0f} events/s ({t1 - t0:.1f} s)")
            ends = _high_watermarks(settings, topics)
            echo(f"run {run}/{runs}: the same records -> plain confluent-kafka consumer ...")
            cpu0 = time.process_time()
            took = _baseline(settings, starts, ends, batch, within)
            b_cpu.append((time.process_time() - cpu0) / events * 1e6)
            if _counts(_dsn(settings, "bench_baseline"), tag) != (
                events // 10,
                events // 10,
                events // 5,
            ):
                raise PipelineError("the baseline did not write every row")
            b_rates.append(events / took)
            echo(
                f"  baseline: {b_rates[-1]:,.0f} events/s ({took:.1f} s); CPU per event: "
                f"worker {w_cpu[-1]:.0f} us, baseline {b_cpu[-1]:.0f} us"
            )

        # --- latency at fixed rates, through the API: the worker alone, then the baseline
        # alone (the worker stopped), so neither takes CPU from the other's measurement -------
        vegeta = _vegeta(settings, echo)
        key_id, key = bench_key(settings, "bench-workers")
        _empty_databases(settings)
        api = _Api(settings, echo, env={"TOPIC_NAMESPACE": BENCH_NAMESPACE})
        try:
            for r in rates:
                _attack(vegeta, api.url, key, r, 3, echo, measured=False)
                time.sleep(2)
                echo(f"latency, worker: {r} user.registered/s to the API for {duration_s} s ...")
                acks = _attack(vegeta, api.url, key, r, duration_s, echo)
                lw[r] = _wait_latencies(_dsn(settings, "bench_worker"), acks)
                lw_seconds[r] = _latencies_by_ack(_dsn(settings, "bench_worker"), acks)
            worker.stop()
            user_topic = bench_topics["user"].name
            stop_base = threading.Event()
            base = threading.Thread(
                target=_baseline,
                args=(
                    settings,
                    _high_watermarks(settings, [user_topic]),
                    None,
                    batch,
                    within,
                    stop_base.is_set,
                ),
                daemon=True,
            )
            base.start()
            for r in rates:
                _attack(vegeta, api.url, key, r, 3, echo, measured=False)
                time.sleep(2)
                echo(f"latency, baseline: {r} user.registered/s for {duration_s} s ...")
                base_acks = _attack(vegeta, api.url, key, r, duration_s, echo)
                lb[r] = _wait_latencies(_dsn(settings, "bench_baseline"), base_acks)
            stop_base.set()
            base.join(30)
        finally:
            api.stop()
            revoke_key(settings.postgres_dsn, key_id)
    finally:
        worker.stop()

    med = statistics.median
    results.update(
        {
            "worker_events_per_s": med(w_rates),
            "baseline_events_per_s": med(b_rates),
            "worker_vs_baseline": med(w_rates) / med(b_rates),
            "worker_runs": w_rates,
            "baseline_runs": b_rates,
            "worker_cpu_us_per_event": med(w_cpu),
            "baseline_cpu_us_per_event": med(b_cpu),
            "runtime_adds_cpu_us_per_event": med(w_cpu) - med(b_cpu),
            "latency": [
                {
                    "rate_per_s": r,
                    "events": len(lw[r]),
                    "worker_p50_ms": _percentile(lw[r], 0.5),
                    "worker_p90_ms": _percentile(lw[r], 0.9),
                    "worker_p99_ms": _percentile(lw[r], 0.99),
                    "worker_max_ms": max(lw[r]),
                    # p99 of each second of the run: a steady tail, or one pause?
                    "worker_p99_by_second_ms": _by_second(lw_seconds[r]),
                    "baseline_p50_ms": _percentile(lb[r], 0.5) if lb.get(r) else None,
                    "baseline_p99_ms": _percentile(lb[r], 0.99) if lb.get(r) else None,
                }
                for r in rates
            ],
        }
    )
    return results
