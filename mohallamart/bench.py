"""`mohallamart bench ingest`: the ingestion API's speed beside raw confluent-kafka, same run.

After a warm-up (not measured), phases repeated `--runs` times (medians reported; the machine is
shared and noisy), a settling pause (`settle_s`) before the latency and saturation phases:
1. raw producer: confluent-kafka sending pre-encoded Avro events (the same payloads the API
   writes, same producer settings: acks=all, idempotent) — the ceiling;
2. API, single events at a fixed `--rate` (1,000 req/s): p50/p99 latency, from vegeta (a compiled
   load tool); beside it the raw producer's delivery latency at the same rate;
3. API, batched: `POST /v1/events/batch` of `--batch` events, `--concurrency` requests in flight;
4. API, single events at saturation: vegeta with no rate limit.
The load generator runs on the same machine as Kafka, PostgreSQL and the API: it takes CPU
from what it measures. Events are `analytics.tracked` with source "bench".
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from confluent_kafka import Producer

from core.errors import PipelineError
from core.settings import Settings
from mohallamart.stack.supervisor import Supervisor

__all__ = ["bench_key", "run_ingest_bench"]

_TYPE = "analytics.tracked"
_VEGETA = "github.com/tsenart/vegeta/v12@v12.12.0"


def _events(n: int, example: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        data = dict(example)
        data["session_id"] = f"bench-{i % 5000}"
        out.append({"type": _TYPE, "id": str(uuid.uuid4()), "source": "bench", "data": data})
    return out


def _vegeta(settings: Settings, echo: Callable[[str], None]) -> str:
    found = shutil.which("vegeta")
    if found:
        return found
    local = settings.stack_cache_dir / "bin" / "vegeta"
    if local.exists():
        return str(local)
    go = shutil.which("go")
    if go is None:
        raise PipelineError(
            "the benchmark needs vegeta (a compiled HTTP load tool): put it on PATH, or install "
            "Go so this command can build it (`go install " + _VEGETA + "`)"
        )
    echo(f"building vegeta with `go install {_VEGETA}` (once, ~30 s) ...")
    local.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(  # noqa: S603
        [go, "install", _VEGETA], check=True, env={**os.environ, "GOBIN": str(local.parent)}
    )
    return str(local)


class _Api:
    """An API process of our own, on a free port, for the benchmark's lifetime (supervised but
    never restarted: a restart would change what is measured)."""

    def __init__(
        self,
        settings: Settings,
        echo: Callable[[str], None],
        env: dict[str, str] | None = None,
    ) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = settings.stack_dir / "api-bench.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self._procs = Supervisor(echo=lambda line: None)
        self.proc = self._procs.start(
            "api",
            [
                sys.executable,
                "-m",
                "mohallamart.cli",
                "api",
                "--port",
                str(self.port),
                "--no-access-log",
            ],
            output=self.log,
            env={"LOG_LEVEL": "WARNING", **(env or {})},
        ).proc
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    echo(f"API ready on {self.url} (pid {self.proc.pid}, log {self.log})")
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        raise PipelineError(f"the API did not become ready; see {self.log}")

    def stop(self) -> None:
        self._procs.stop_all(timeout_s=20)


def bench_key(settings: Settings, name: str) -> tuple[str, str]:
    """(key id, secret) of an ingest key for a benchmark, its rate unlimited; revoke it after."""
    from connectors.apikeys import create_key

    rec, secret = create_key(
        settings.postgres_dsn,
        name=name,
        scopes=["ingest"],
        principal="admin",
        rate_per_s=10_000_000,
    )
    return rec.key_id, secret


def _raw_producer(settings: Settings) -> Producer:
    """The same librdkafka settings as the API's producer: the baseline differs only in code."""
    from connectors.kafka import producer_config

    return Producer(
        producer_config(
            settings.kafka_bootstrap,
            security=settings.kafka_security,
            delivery_timeout_ms=settings.ingest_delivery_timeout_ms,
            linger_ms=settings.ingest_linger_ms,
            max_message_bytes=settings.ingest_max_event_bytes,
        )
    )


def _encoded(settings: Settings, events: list[dict[str, Any]]) -> list[tuple[str, bytes, bytes]]:
    from schemas.catalog import EVENT_TYPES
    from schemas.codec import EventCodec
    from schemas.registry import SchemaRegistry
    from schemas.validate import Validator

    et = EVENT_TYPES[_TYPE]
    sid = SchemaRegistry(settings.registry_url).register(et)
    codec = EventCodec(et.schema)
    data_schema = next(f["type"] for f in et.schema["fields"] if f["name"] == "data")
    validator = Validator({**data_schema, "namespace": et.schema.get("namespace", "")})
    from datetime import UTC, datetime

    out = []
    now = datetime.now(UTC)
    for e in events:
        data, errors = validator.convert(e["data"])
        assert not errors, errors
        datum = {
            "id": e["id"],
            "type": _TYPE,
            "occurred_at": now,
            "source": "bench",
            "trace_id": "bench",
            "data": data,
        }
        out.append((et.topic.name, str(data[et.key_field]).encode(), codec.encode(sid, datum)))
    return out


def _warm(p: Producer, record: tuple[str, bytes, bytes]) -> None:
    """Connect and fetch metadata before the clock starts, as the API's long-lived producer has."""
    p.produce(record[0], record[2], record[1])
    p.flush(30)


def _raw_throughput(settings: Settings, records: list[tuple[str, bytes, bytes]]) -> float:
    p = _raw_producer(settings)
    _warm(p, records[0])
    t0 = time.perf_counter()
    for topic, key, value in records:
        while True:
            try:
                p.produce(topic, value, key)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    left = p.flush(60)
    if left:
        raise PipelineError(f"raw producer: {left} messages not delivered")
    return len(records) / (time.perf_counter() - t0)


def _raw_latency(
    settings: Settings, records: list[tuple[str, bytes, bytes]], rate: int
) -> dict[str, float]:
    p = _raw_producer(settings)
    _warm(p, records[0])
    lat: list[float] = []
    interval = 1.0 / rate
    start = time.perf_counter()
    for i, (topic, key, value) in enumerate(records):
        due = start + i * interval
        while (now := time.perf_counter()) < due:
            p.poll(min(0.0005, due - now))
        p.produce(topic, value, key, on_delivery=_latency_recorder(lat, time.perf_counter()))
        p.poll(0)
    p.flush(30)
    lat.sort()
    return {"p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[int(len(lat) * 0.99)] * 1000}


def _latency_recorder(into: list[float], sent: float) -> Callable[[Any, Any], None]:
    def record(err: Any, msg: Any) -> None:
        into.append(time.perf_counter() - sent)

    return record


async def _api_batched(
    url: str, key: str, bodies: list[bytes], concurrency: int, per: int
) -> float:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    queue = list(reversed(bodies))
    async with httpx.AsyncClient(
        timeout=60, limits=httpx.Limits(max_connections=concurrency)
    ) as client:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                r = await client.post(f"{url}/v1/events/batch", content=body, headers=headers)
                if r.status_code != 202:
                    raise PipelineError(f"batch answered {r.status_code}: {r.text[:300]}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(bodies) * per / (time.perf_counter() - t0)


def _vegeta_attack(
    vegeta: str, targets: Path, args: list[str], limit: int | None = None
) -> dict[str, Any]:
    cmd = [vegeta, "attack", "-format=json", f"-targets={targets}", "-timeout=30s", *args]
    if limit is not None:
        # Stop after exactly `limit` targets: feed them lazily from the file, once.
        cmd.append("-lazy")
    attack = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)  # noqa: S603
    report = subprocess.run(  # noqa: S603
        [vegeta, "report", "-type=json"], stdin=attack.stdout, capture_output=True, check=True
    )
    attack.wait()
    return json.loads(report.stdout)  # type: ignore[no-any-return]


def _batch_targets(
    path: Path, url: str, key: str, events: list[dict[str, Any]], batch: int
) -> None:
    header = {"Authorization": [f"Bearer {key}"], "Content-Type": ["application/json"]}
    with open(path, "wb") as f:
        for i in range(0, len(events), batch):
            body = orjson.dumps({"events": events[i : i + batch]})
            f.write(
                orjson.dumps(
                    {
                        "method": "POST",
                        "url": f"{url}/v1/events/batch",
                        "body": base64.b64encode(body).decode(),
                        "header": header,
                    }
                )
            )
            f.write(b"\n")


def _targets(path: Path, url: str, key: str, events: list[dict[str, Any]]) -> None:
    header = {"Authorization": [f"Bearer {key}"], "Content-Type": ["application/json"]}
    with open(path, "wb") as f:
        for e in events:
            f.write(
                orjson.dumps(
                    {
                        "method": "POST",
                        "url": f"{url}/v1/events",
                        "body": base64.b64encode(orjson.dumps(e)).decode(),
                        "header": header,
                    }
                )
            )
            f.write(b"\n")


def run_ingest_bench(
    settings: Settings,
    *,
    events: int,
    batch: int,
    concurrency: int,
    runs: int,
    rate: int,
    duration_s: int,
    saturation_workers: int,
    echo: Callable[[str], None],
    settle_s: float = 10.0,
) -> dict[str, Any]:
    from connectors.apikeys import revoke_key
    from connectors.db import migrate
    from connectors.topics import ensure_topics_ready
    from schemas.catalog import EVENT_TYPES

    example = EVENT_TYPES[_TYPE].example
    vegeta = _vegeta(settings, echo)
    migrate(settings.postgres_dsn)
    ensure_topics_ready(
        settings.kafka_bootstrap,
        security=settings.kafka_security,
        replication=settings.kafka_replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
    )
    key_id, key = bench_key(settings, "bench")
    api = _Api(settings, echo)
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} cores", "runs": runs}
    try:
        raw, batched, sat, fixed, raw_lat = [], [], [], [], []
        echo("warming up the API (connections, pools, caches) for ~5 s; not measured ...")
        with tempfile.TemporaryDirectory() as tmp:
            warm = Path(tmp) / "warm.jsonl"
            _batch_targets(warm, api.url, key, _events(5 * batch, example), batch)
            _vegeta_attack(
                vegeta, warm, ["-rate=0", "-max-workers=2", "-workers=2", "-duration=60s"], limit=5
            )
            _targets(warm, api.url, key, _events(2500, example))
            _vegeta_attack(vegeta, warm, ["-rate=500/s", "-duration=5s"])
        for run in range(1, runs + 1):
            tag = f"run {run}/{runs}:"
            echo(f"{tag} raw confluent-kafka producer, {events} events ...")
            raw.append(_raw_throughput(settings, _encoded(settings, _events(events, example))))
            echo(f"  {raw[-1]:,.0f} events/s")

            # Latency first, on a settled machine: measured right after a saturating phase it
            # reports how fast Kafka's and PostgreSQL's background work (log flushes, autovacuum,
            # checkpoints) catches up, not the API's latency at 1,000 req/s.
            time.sleep(settle_s)
            echo(f"{tag} API single events at {rate} req/s for {duration_s} s ...")
            with tempfile.TemporaryDirectory() as tmp:
                targets = Path(tmp) / "targets.jsonl"
                _targets(targets, api.url, key, _events(rate * duration_s + 100, example))
                rep = _vegeta_attack(
                    vegeta, targets, [f"-rate={rate}/s", f"-duration={duration_s}s"]
                )
            fixed.append(rep)
            echo(
                f"  p50 {rep['latencies']['50th'] / 1e6:.1f} ms, p99 "
                f"{rep['latencies']['99th'] / 1e6:.1f} ms, success {rep['success']:.3f}"
            )
            echo(f"{tag} raw producer delivery latency at {rate} msg/s ...")
            raw_lat.append(
                _raw_latency(
                    settings, _encoded(settings, _events(rate * min(duration_s, 10), example)), rate
                )
            )
            echo(f"  p50 {raw_lat[-1]['p50_ms']:.1f} ms, p99 {raw_lat[-1]['p99_ms']:.1f} ms")

            echo(f"{tag} API batched ({batch}/request, {concurrency} in flight) ...")
            with tempfile.TemporaryDirectory() as tmp:
                targets = Path(tmp) / "batches.jsonl"
                _batch_targets(targets, api.url, key, _events(events, example), batch)
                n_batches = -(-events // batch)
                rep = _vegeta_attack(
                    vegeta,
                    targets,
                    [
                        "-rate=0",
                        f"-max-workers={concurrency}",
                        f"-workers={concurrency}",
                        f"-duration={10 * duration_s}s",
                    ],
                    limit=n_batches,
                )
                if rep["status_codes"].get("202", 0) != n_batches:
                    raise PipelineError(f"batched run answered {rep['status_codes']}")
                batched.append(events / (rep["duration"] / 1e9))
            echo(f"  {batched[-1]:,.0f} events/s")

            time.sleep(settle_s)
            echo(
                f"{tag} API single events at saturation "
                f"({saturation_workers} connections, {duration_s} s) ..."
            )
            with tempfile.TemporaryDirectory() as tmp:
                targets = Path(tmp) / "targets.jsonl"
                _targets(targets, api.url, key, _events(6000 * duration_s, example))
                rep = _vegeta_attack(
                    vegeta,
                    targets,
                    [
                        "-rate=0",
                        f"-max-workers={saturation_workers}",
                        f"-workers={saturation_workers}",
                        f"-duration={duration_s}s",
                    ],
                )
            sat.append(rep)
            echo(
                f"  {rep['throughput']:,.0f} req/s accepted, success "
                f"{rep['success']:.3f}, p99 {rep['latencies']['99th'] / 1e6:.1f} ms"
            )
    finally:
        api.stop()
        revoke_key(settings.postgres_dsn, key_id)

    med = statistics.median
    results.update(
        {
            "raw_producer_events_per_s": med(raw),
            "api_batched_events_per_s": med(batched),
            "api_batched_vs_raw": med(batched) / med(raw),
            "api_single_saturation_req_per_s": med(r["throughput"] for r in sat),
            "api_single_saturation_success": min(r["success"] for r in sat),
            "api_single_saturation_p99_ms": med(r["latencies"]["99th"] / 1e6 for r in sat),
            "api_single_saturation_vs_raw": med(r["throughput"] for r in sat) / med(raw),
            "fixed_rate_req_per_s": rate,
            "api_fixed_rate_p50_ms": med(r["latencies"]["50th"] / 1e6 for r in fixed),
            "api_fixed_rate_p99_ms": med(r["latencies"]["99th"] / 1e6 for r in fixed),
            "api_fixed_rate_success": min(r["success"] for r in fixed),
            "raw_fixed_rate_p50_ms": med(r["p50_ms"] for r in raw_lat),
            "raw_fixed_rate_p99_ms": med(r["p99_ms"] for r in raw_lat),
            "all_runs": {
                "raw": raw,
                "batched": batched,
                "saturation": [r["throughput"] for r in sat],
                "fixed_p99_ms": [r["latencies"]["99th"] / 1e6 for r in fixed],
            },
        }
    )
    return results
