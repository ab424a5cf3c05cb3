"""`mohallamart bench analytics`: the analytics role (every window kind on) beside (a) a plain
confluent-kafka consumer doing the same aggregation and the same PostgreSQL and topic writes,
and (b) faust's own tumbling table doing only the 1-minute per-shop revenue; the same events,
the same run, medians of `--runs`.

1. Throughput. Each run writes `--events` events (a third order events: accepted, some refunded
   or cancelled; two thirds `analytics.tracked` of browsing sessions with searches) over two hours
   of event time to the event topics of a namespace of its own, then one event per source
   partition two hours later (every window that can close closes). Each contender reads them
   from the start:
   - the role: a real `mohallamart worker --role analytics` (ticks off: event time only),
     started and warmed up on a first heartbeat before the load is written; timed from the
     first write to the moment every window stage partition's watermark (in PostgreSQL) is the
     last heartbeat's: everything routed, aggregated and written;
   - (a) one confluent-kafka consumer in this process: decode, `streams.analytics`'s
     contributions and windows (one stage holding every key: no re-keying, no changelog), the
     same rows through the same `AnalyticsStore` (its own database) and the final results on a
     topic, per batch of 1,000; timed until it has read the last heartbeat of every partition;
   - (b) a faust app (faust's own transport and windowed table, `tumbling(60)` on the stream's
     event time): `table[shop] += revenue` for each `order.accepted` of the order topic; timed
     from its first record to its last (events/s of the records it reads).
2. Final-result latency: the role with ticks on, fed `order.accepted` events of `--shops` shops
   at `--rate` per second with the current time for `--latency-s` seconds; a consumer of the
   final results topic notes when each 1-minute window's final arrives: latency = arrival -
   (window end + grace), p50 and p99.
"""

from __future__ import annotations

import os
import random
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
from confluent_kafka.admin import AdminClient

from connectors.kafka import admin_config, consumer_config
from core.errors import PipelineError
from core.settings import Settings
from mohallamart.stack.supervisor import Supervisor

__all__ = ["run_analytics_bench"]

PARTS = 6
_DBS = ("bench_analytics", "bench_analytics_baseline")
_TABLES = (
    "analytics_sales, analytics_panes, analytics_sessions, analytics_late, analytics_watermarks, "
    "analytics_positions"
)


def _dsn(settings: Settings, db: str) -> str:
    return settings.postgres_dsn.rsplit("/", 1)[0] + f"/{db}"


def _fresh_databases(settings: Settings) -> None:
    from connectors.db import migrate

    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        for db in _DBS:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                conn.execute(f"CREATE DATABASE {db}")
    for db in _DBS:
        migrate(_dsn(settings, db))
        with psycopg.connect(_dsn(settings, db), autocommit=True) as conn:
            conn.execute(f"TRUNCATE {_TABLES}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _key_for(prefix: str, partition: int) -> str:
    from schemas.partitioner import partition_for

    n = 0
    while partition_for(f"{prefix}{n}", PARTS) != partition:
        n += 1
    return f"{prefix}{n}"


class _Load:
    """Pre-encoded records: (category, key, value, timestamp ms)."""

    def __init__(self, settings: Settings) -> None:
        from schemas.catalog import EVENT_TYPES
        from schemas.codec import EventCodec
        from schemas.registry import SchemaRegistry
        from schemas.validate import compile_schema

        self.types = EVENT_TYPES
        self.registry = SchemaRegistry(settings.registry_url)
        self.codecs: dict[str, tuple[int, EventCodec, Any]] = {}
        self.compile = compile_schema
        self.EventCodec = EventCodec

    def encode(
        self, type_: str, key: str, at: datetime, data: dict[str, Any]
    ) -> tuple[str, str, bytes, int]:
        et = self.types[type_]
        if type_ not in self.codecs:
            self.codecs[type_] = (
                self.registry.register(et),
                self.EventCodec(et.schema),
                self.compile(et.schema),
            )
        sid, codec, validator = self.codecs[type_]
        eid = str(uuid.uuid4())
        datum, errors = validator.convert(
            {
                "id": eid,
                "type": type_,
                "occurred_at": at.isoformat(timespec="milliseconds"),
                "source": "bench",
                "trace_id": eid,
                "data": data,
            }
        )
        if errors:
            raise PipelineError(f"the benchmark's {type_} does not validate: {errors}")
        return et.category, key, codec.encode(sid, datum), int(at.timestamp() * 1000)


def _order_data(oid: str, shop: str, rng: random.Random) -> dict[str, Any]:
    items = [
        {"product_id": f"prd_{shop}_{p}", "quantity": rng.randint(1, 3), "stock_after": 9}
        for p in rng.sample(range(20), rng.randint(1, 3))
    ]
    return {
        "order_id": oid,
        "shop_id": shop,
        "user_id": "usr_bench",
        "items": items,
        "total_paise": rng.randint(50, 5000) * 10,
        "cause_event_id": str(uuid.uuid4()),
    }


def _events(
    load: _Load, n: int, start: datetime, rng: random.Random
) -> list[tuple[str, str, bytes, int]]:
    """`n` events over 2 hours of event time from `start`, in time order."""
    span_ms = 2 * 3_600_000
    shops = [f"shop_b{i}" for i in range(50)]
    words = ["atta", "rice", "milk", "paneer", "dal", "ghee", "sugar", "tea", "soap", "oil"]
    out: list[tuple[int, tuple[str, str, bytes, int]]] = []
    n_orders = n // 3 // 2 * 2
    for _ in range(n_orders // 2):
        at = start + timedelta(milliseconds=rng.randrange(span_ms))
        oid = f"ord_b{uuid.uuid4().hex[:12]}"
        data = _order_data(oid, rng.choice(shops), rng)
        out.append((0, load.encode("order.accepted", oid, at, data)))
        later = at + timedelta(seconds=rng.uniform(10, 600))
        d = {"order_id": oid, "shop_id": data["shop_id"], "user_id": "usr_bench"}
        if rng.random() < 0.5:
            out.append(
                (
                    1,
                    load.encode(
                        "order.refunded",
                        oid,
                        later,
                        {**d, "refund_paise": 100, "reason": "DAMAGED"},
                    ),
                )
            )
        else:
            out.append(
                (
                    1,
                    load.encode(
                        "order.status_changed",
                        oid,
                        later,
                        {
                            **d,
                            "from_status": "PROCESSING",
                            "to_status": "COMPLETED",
                            "changed_by": "usr_bench",
                        },
                    ),
                )
            )
    kinds = ["PAGE_VIEW", "PRODUCT_VIEW", "SEARCH", "SEARCH_RESULT_CLICKED", "ADD_TO_CART"]
    sessions = [f"sess_b{uuid.uuid4().hex[:10]}" for _ in range(max(1, (n - len(out)) // 8))]
    while len(out) < n:
        s = rng.choice(sessions)
        kind = rng.choice(kinds)
        tracked: dict[str, Any] = {"session_id": s, "kind": kind, "shop_id": rng.choice(shops)}
        if kind.startswith("SEARCH"):
            tracked["query"] = f"{rng.choice(words)} {rng.choice(words)}"
        at = start + timedelta(milliseconds=rng.randrange(span_ms))
        out.append((0, load.encode("analytics.tracked", s, at, tracked)))
    out.sort(key=lambda x: (x[1][3], x[0]))
    return [r for _, r in out]


def _heartbeats(load: _Load, at: datetime) -> list[tuple[str, str, bytes, int]]:
    out = []
    for p in range(PARTS):
        oid = _key_for(f"ord_hb{uuid.uuid4().hex[:6]}_", p)
        out.append(
            load.encode(
                "order.status_changed",
                oid,
                at,
                {
                    "order_id": oid,
                    "shop_id": "shop_hb",
                    "user_id": "usr_bench",
                    "from_status": "PROCESSING",
                    "to_status": "COMPLETED",
                    "changed_by": "usr_bench",
                },
            )
        )
        sid = _key_for(f"sess_hb{uuid.uuid4().hex[:6]}_", p)
        out.append(load.encode("analytics.tracked", sid, at, {"session_id": sid, "kind": "OTHER"}))
    return out


def _write(settings: Settings, ns: str, records: list[tuple[str, str, bytes, int]]) -> None:
    from connectors.kafka import producer_config
    from schemas.partitioner import partition_for

    p = Producer(
        producer_config(
            settings.kafka_bootstrap,
            security=settings.kafka_security,
            delivery_timeout_ms=60_000,
            linger_ms=5,
            max_message_bytes=1 << 20,
        )
    )
    failed: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    for category, key, value, ts in records:
        while True:
            try:
                p.produce(
                    f"{ns}.{category}.events",
                    key=key.encode(),
                    value=value,
                    partition=partition_for(key, PARTS),
                    timestamp=ts,
                    on_delivery=delivered,
                )
                break
            except BufferError:
                p.poll(0.05)
    if p.flush(120) or failed:
        raise PipelineError(
            f"the benchmark's producer could not deliver every event ({failed[:3]})"
        )


def _wait_topics(settings: Settings, names: list[str], timeout_s: float = 90) -> None:
    """Until the worker has created `names` and each partition has a leader."""
    from connectors.topics import wait_topics_ready
    from schemas.catalog import Topic

    admin = AdminClient(admin_config(settings.kafka_bootstrap, security=settings.kafka_security))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        meta = admin.list_topics(timeout=5).topics
        if all(t in meta and len(meta[t].partitions) > 0 for t in names):
            wait_topics_ready(
                settings.kafka_bootstrap,
                [Topic("bench", t, len(meta[t].partitions), "") for t in names],
                security=settings.kafka_security,
                timeout_s=60,
            )
            return
        time.sleep(0.2)
    raise PipelineError(f"topics {names} not created within {timeout_s} s")


class _Role:
    """An analytics worker of the benchmark's own (namespace, group, database, data directory)."""

    def __init__(self, settings: Settings, ns: str, db: str, ticks: bool) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.log = settings.stack_dir / "worker-bench-analytics.log"
        env = {
            "DATABASE_URL": _dsn(settings, db),
            "WORKER_APP_PREFIX": ns,
            "TOPIC_NAMESPACE": ns,
            "WORKER_DATA_DIR": self.tmp.name,
            "LOG_LEVEL": "WARNING",
            "WORKER_COMMIT_INTERVAL_S": "1",
        }
        if not ticks:
            env["ANALYTICS_TICK_IDLE_S"] = "1000000000"
        self._procs = Supervisor(echo=lambda line: None)
        self.proc = self._procs.start(
            "analytics",
            [
                sys.executable,
                "-m",
                "mohallamart.cli",
                "worker",
                "--role",
                "analytics",
                "--web-port",
                str(_free_port()),
            ],
            output=self.log,
            env=env,
        ).proc

    def stop(self) -> None:
        self._procs.stop_all(timeout_s=30)
        self.tmp.cleanup()


def _watermarks_at(dsn: str, at_ms: int) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM analytics_watermarks WHERE watermark >= %s",
            (datetime.fromtimestamp(at_ms / 1000, UTC),),
        ).fetchone()
    return row is not None and int(row[0]) >= PARTS


def _wait(
    cond: Callable[[], bool], timeout_s: float, what: str, echo: Callable[[str], None]
) -> float:
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    while time.monotonic() < deadline:
        if cond():
            return time.monotonic()
        if time.monotonic() - last > 10:
            echo(f"  ... waiting for {what}")
            last = time.monotonic()
        time.sleep(0.05)
    raise PipelineError(f"timed out after {timeout_s} s waiting for {what}")


def _cpu_s(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _role_run(
    settings: Settings, n: int, seed: int, echo: Callable[[str], None]
) -> tuple[str, float, float, int]:
    """One run of the role: (namespace, events/s, CPU us per event, events written)."""
    ns = f"mohallamart-bench-an{uuid.uuid4().hex[:8]}"
    load = _Load(settings)
    rng = random.Random(seed)
    t0_event = datetime(2025, 6, 1, 6, 0, tzinfo=UTC) + timedelta(days=seed)
    warm_at = t0_event - timedelta(minutes=1)
    events = _events(load, n, t0_event, rng)
    end_at = t0_event + timedelta(hours=4)
    records = [*events, *_heartbeats(load, end_at)]
    dsn = _dsn(settings, "bench_analytics")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {_TABLES}")
    role = _Role(settings, ns, "bench_analytics", ticks=False)
    try:
        _wait_topics(
            settings, [f"{ns}.order.events", f"{ns}.analytics.events", f"{ns}.analytics.by-key"]
        )
        _write(settings, ns, _heartbeats(load, warm_at))
        _wait(
            lambda: _watermarks_at(dsn, int(warm_at.timestamp() * 1000)),
            120,
            "the role to warm up",
            echo,
        )
        cpu0 = _cpu_s(role.proc.pid)
        t0 = time.monotonic()
        _write(settings, ns, records)
        t1 = _wait(
            lambda: _watermarks_at(dsn, int(end_at.timestamp() * 1000)),
            600,
            "the role to aggregate the load",
            echo,
        )
        cpu = _cpu_s(role.proc.pid) - cpu0
    finally:
        role.stop()
    return ns, len(records) / (t1 - t0), cpu / len(records) * 1e6, len(records)


def _baseline_run(settings: Settings, ns: str, echo: Callable[[str], None]) -> tuple[float, int]:
    """(a): a plain confluent-kafka consumer, the same aggregation and writes: events/s."""
    import asyncio

    from connectors.analytics import AnalyticsStore, AnalyticsWrite
    from connectors.kafka import producer_config
    from schemas.codec import EventCodec, RegistryDecoder
    from schemas.outputs import ANALYTICS_WINDOW
    from schemas.registry import SchemaRegistry
    from streams.agents.analytics import final_datum, rows_of
    from streams.analytics import ROUTED, StagePartition, contributions, window_kinds

    registry = SchemaRegistry(settings.registry_url)
    decoder = RegistryDecoder(registry.schema_by_id)
    kinds = window_kinds(settings.analytics_grace_s, settings.analytics_session_gap_s)
    topics = [f"{ns}.order.events", f"{ns}.analytics.events"]
    sources = [f"{t}:{p}" for t in topics for p in range(PARTS)]
    part = StagePartition(kinds, sources)
    orders: dict[str, Any] = {}
    store = AnalyticsStore(_dsn(settings, "bench_analytics_baseline"))
    out_topic = f"{ns}.analytics.windows-baseline"
    sid = registry.register_subject(f"{out_topic}-value", ANALYTICS_WINDOW.schema)
    codec = EventCodec(ANALYTICS_WINDOW.schema)
    producer = Producer(
        producer_config(
            settings.kafka_bootstrap,
            security=settings.kafka_security,
            delivery_timeout_ms=60_000,
            linger_ms=5,
            max_message_bytes=1 << 20,
        )
    )
    c = Consumer(
        consumer_config(
            settings.kafka_bootstrap,
            f"{ns}-baseline",
            {"enable.auto.commit": False, "fetch.wait.max.ms": 10},
            security=settings.kafka_security,
        )
    )
    ends = {}
    for t in topics:
        for p in range(PARTS):
            ends[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
    c.assign([TopicPartition(t, p, 0) for t, p in ends])
    left = {tp for tp, end in ends.items() if end > 0}
    total = sum(ends.values())
    loop = asyncio.new_event_loop()
    t0 = time.monotonic()
    try:
        while left:
            batch = c.consume(1000, timeout=1)
            for m in batch:
                if m.error() is not None:
                    continue
                tp = (str(m.topic()), int(m.partition() or 0))
                source = f"{tp[0]}:{tp[1]}"
                value = m.value()
                sid_in = decoder.schema_id(value)
                if decoder.needs(sid_in):
                    decoder.load(sid_in)
                if decoder.type_of(sid_in) in ROUTED:
                    ev = decoder.decode(value)
                    oid = str(ev["data"].get("order_id") or "")
                    state = orders.get(oid) if oid else None
                    new, out = contributions(ev, state)
                    if oid:
                        orders[oid] = new
                    at = int(ev["occurred_at"].timestamp() * 1000)
                    seen = part.sources.get(source, -1)
                    for cb in out:
                        part.apply(
                            {
                                "a": cb.aggregate,
                                "k": cb.key,
                                "t": cb.at_ms,
                                "v": cb.values,
                                "w": seen,
                                "s": source,
                                "e": str(ev["id"]),
                                "y": ev["type"],
                            }
                        )
                    part.apply({"m": source, "w": at})
                else:
                    part.apply({"m": source, "w": m.timestamp()[1]})
                if (m.offset() or 0) >= ends[tp] - 1:
                    left.discard(tp)
            finals = part.close()
            _, dirty, cells, changed = part.take_changes()
            w = AnalyticsWrite([], [], [], [], [], {0: part.watermark})
            rows_of(kinds, part, dirty, changed, cells, finals, w)
            loop.run_until_complete(store.write(w))
            for f in finals:
                producer.produce(
                    out_topic,
                    key=f"{f.window}:{f.key}".encode(),
                    value=codec.encode(sid, final_datum(f)),
                )
            producer.flush(30)
        dt = time.monotonic() - t0
    finally:
        c.close()
        loop.run_until_complete(store.close())
        loop.close()
    return total / dt, total


_FAUST_APP = r"""
import os, sys, time
import faust
from core.settings import get_settings
from schemas.codec import RegistryDecoder
from schemas.registry import SchemaRegistry
from streams.transport.credentials import broker_credentials

topic_name, expected, done_file, bootstrap, registry_url, app_id, datadir = sys.argv[1:8]
expected = int(expected)
decoder = RegistryDecoder(SchemaRegistry(registry_url).schema_by_id)
# the security as the parent's (the same environment and .env): never on the command line
app = faust.App(app_id, broker=";".join(f"kafka://{s}" for s in bootstrap.split(",")),
                broker_credentials=broker_credentials(get_settings().kafka_security),
                store="memory://", datadir=datadir,
                topic_partitions=6, web_enabled=False, consumer_auto_offset_reset="earliest")
revenue = app.Table("revenue", default=int).tumbling(60, expires=3600).relative_to_stream()
topic = app.topic(topic_name, key_type=bytes, value_type=bytes, key_serializer="raw",
                  value_serializer="raw")
seen = [0, None]

@app.agent(topic)
async def count(stream):
    async for event in stream.events():
        if seen[1] is None:
            seen[1] = time.monotonic()
        value = event.value
        sid = decoder.schema_id(value)
        if decoder.needs(sid):
            decoder.load(sid)
        if decoder.type_of(sid) == "order.accepted":
            ev = decoder.decode(value)
            revenue[ev["data"]["shop_id"]] += int(ev["data"]["total_paise"])
        seen[0] += 1
        if seen[0] == expected:
            with open(done_file, "w") as f:
                f.write(f"{seen[0]} {time.monotonic() - seen[1]}\n")

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
"""


def _faust_run(settings: Settings, ns: str, echo: Callable[[str], None]) -> tuple[float, int]:
    """(b): faust's own tumbling table, 1-minute revenue per shop: events/s of the order topic."""
    topic = f"{ns}.order.events"
    c = Consumer(
        consumer_config(settings.kafka_bootstrap, f"{ns}-probe", security=settings.kafka_security)
    )
    try:
        expected = sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(PARTS)
        )
    finally:
        c.close()
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "faust_tumbling.py"
        script.write_text(_FAUST_APP)
        done = Path(tmp) / "done"
        log = settings.stack_dir / "bench-faust-tumbling.log"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(script),
                    topic,
                    str(expected),
                    str(done),
                    settings.kafka_bootstrap,
                    settings.registry_url,
                    f"{ns}-faust",
                    tmp,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:

            def finished() -> bool:
                if proc.poll() is not None and not done.exists():
                    raise PipelineError(f"the faust baseline exited ({proc.returncode}): see {log}")
                return done.exists()

            _wait(finished, 600, "faust's tumbling table to read the order topic", echo)
            time.sleep(0.1)
            n, seconds = done.read_text().split()
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return int(n) / float(seconds), int(n)


def _latency(
    settings: Settings, rate: int, seconds: float, shops: int, echo: Callable[[str], None]
) -> list[float]:
    """Finals' arrival after their 1-minute window's end + grace, live, ticks on."""
    import io

    import fastavro

    ns = f"mohallamart-bench-an{uuid.uuid4().hex[:8]}"
    load = _Load(settings)
    rng = random.Random(7)
    grace_ms = int(settings.analytics_grace_s["sales_1m"] * 1000)
    dsn = _dsn(settings, "bench_analytics")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {_TABLES}")
    role = _Role(settings, ns, "bench_analytics", ticks=True)
    arrivals: list[float] = []
    stop = threading.Event()
    try:
        out_topic = f"{ns}.analytics.windows"
        _wait_topics(settings, [f"{ns}.order.events", out_topic])

        def listen() -> None:
            c = Consumer(
                consumer_config(
                    settings.kafka_bootstrap,
                    f"{ns}-latency",
                    {"auto.offset.reset": "earliest", "fetch.wait.max.ms": 10},
                    security=settings.kafka_security,
                )
            )
            c.subscribe([out_topic])
            schemas: dict[int, Any] = {}
            while not stop.is_set():
                m = c.poll(0.1)
                if m is None or m.error() is not None:
                    continue
                now = time.time() * 1000
                v = m.value() or b"\0\0\0\0\0"
                sid = int.from_bytes(v[1:5], "big")
                if sid not in schemas:
                    schemas[sid] = fastavro.parse_schema(load.registry.schema_by_id(sid))
                rec: Any = fastavro.schemaless_reader(io.BytesIO(v[5:]), schemas[sid])
                if rec["aggregate"] == "sales_1m" and rec["key"].startswith("shop_l"):
                    end = rec["window_end"].timestamp() * 1000
                    arrivals.append((now - end - grace_ms) / 1000)
            c.close()

        listener = threading.Thread(target=listen, daemon=True)
        listener.start()
        from connectors.kafka import producer_config
        from schemas.partitioner import partition_for

        p = Producer(
            producer_config(
                settings.kafka_bootstrap,
                security=settings.kafka_security,
                delivery_timeout_ms=30_000,
                linger_ms=2,
                max_message_bytes=1 << 20,
            )
        )
        t_end = time.monotonic() + seconds
        sent = 0
        t_start = time.monotonic()
        echo(f"latency: {rate}/s for {seconds:.0f} s")
        while time.monotonic() < t_end:
            due = int((time.monotonic() - t_start) * rate)
            while sent < due:
                oid = f"ord_l{uuid.uuid4().hex[:12]}"
                data = _order_data(oid, f"shop_l{rng.randrange(shops)}", rng)
                cat, key, value, ts = load.encode("order.accepted", oid, datetime.now(UTC), data)
                p.produce(
                    f"{ns}.{cat}.events",
                    key=key.encode(),
                    value=value,
                    partition=partition_for(key, PARTS),
                    timestamp=ts,
                )
                sent += 1
            p.poll(0)
            time.sleep(0.005)
        p.flush(30)
        # the finals of the minutes that ended during the load come a grace + a tick later
        time.sleep(settings.analytics_grace_s["sales_1m"] + 5)
    finally:
        stop.set()
        role.stop()
    return arrivals


def run_analytics_bench(
    settings: Settings,
    *,
    events: int = 60_000,
    runs: int = 3,
    rate: int = 200,
    latency_s: float = 70.0,
    shops: int = 200,
    echo: Callable[[str], None] = lambda _l: None,
) -> dict[str, Any]:
    _fresh_databases(settings)
    role_r, base_r, faust_r, cpu = [], [], [], []
    for i in range(runs):
        echo(f"run {i + 1} of {runs}: the role")
        ns, r, c_us, n = _role_run(settings, events, i + 1, echo)
        role_r.append(r)
        cpu.append(c_us)
        echo(f"  the role: {r:,.0f} events/s ({n:,} events, {c_us:.0f} us CPU each)")
        with psycopg.connect(_dsn(settings, "bench_analytics_baseline"), autocommit=True) as conn:
            conn.execute(f"TRUNCATE {_TABLES}")
        b, _ = _baseline_run(settings, ns, echo)
        base_r.append(b)
        echo(f"  (a) plain confluent-kafka: {b:,.0f} events/s")
        f, fn = _faust_run(settings, ns, echo)
        faust_r.append(f)
        echo(f"  (b) faust tumbling table: {f:,.0f} events/s ({fn:,} order events)")
    lat = _latency(settings, rate, latency_s, shops, echo)
    lat.sort()

    def pct(q: float) -> float:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")

    role_m = statistics.median(role_r)
    return {
        "machine": f"{os.cpu_count()} cores",
        "runs": runs,
        "events": events,
        "role_runs": role_r,
        "baseline_runs": base_r,
        "faust_runs": faust_r,
        "role_events_per_s": role_m,
        "baseline_events_per_s": statistics.median(base_r),
        "faust_events_per_s": statistics.median(faust_r),
        "role_vs_baseline": role_m / statistics.median(base_r),
        "role_vs_faust": role_m / statistics.median(faust_r),
        "role_cpu_us_per_event": statistics.median(cpu),
        "latency_finals": len(lat),
        "latency_p50_s": pct(0.5),
        "latency_p99_s": pct(0.99),
        "latency_rate_per_s": rate,
    }
