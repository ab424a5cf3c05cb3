"""`mohallamart bench profile-workers`: where the projections worker's CPU goes, per event.

A fixed load (`--events` of the worker benchmark's realistic mix, 100,000 by default) is produced
to the benchmark's topics while the worker is stopped (SIGSTOP), then the worker is resumed under
py-spy (sampling every thread, CPU only: idle waits are not samples) until every row is visible.
Each sample is put in one bucket by the first frame, from the innermost out, that belongs to a
known part: PostgreSQL client (psycopg), decode (fastavro, schemas), apply (connectors/), the
runtime (streams/), offset commits, the Kafka client (aiokafka), faust's consumer loop (faust,
mode), the event loop (asyncio), other. CPU seconds / events = microseconds per event.

Beside it, the CPU seconds PostgreSQL and Kafka spent during the same run (their processes, read
from /proc), per event too: the worker's rows cost the database server CPU of its own.

`--history N` first loads N events of the same mix into the benchmark's database and topics
(not profiled), so the profiled run meets a database and a log that already hold a history.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import PipelineError
from core.settings import Settings

__all__ = ["BUCKETS", "bucket_of", "profile_workers"]

#: (bucket, what a frame's file path or name contains), checked from the innermost frame out
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("offset commit", ("commit",)),
    ("PostgreSQL client (psycopg)", ("/psycopg/", "/psycopg_pool/", "psycopg_binary")),
    ("decode (fastavro, schemas)", ("/fastavro/", "/schemas/")),
    ("apply (connectors)", ("/connectors/",)),
    ("runtime (streams)", ("/streams/",)),
    ("Kafka client (aiokafka)", ("/aiokafka/",)),
    ("faust consumer loop (faust, mode)", ("/faust/", "/mode/")),
    ("event loop (asyncio)", ("/asyncio/", "/selectors.py", "uvloop")),
)
OTHER = "other (stdlib, gc, logging)"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def bucket_of(stack: str) -> str:
    """The bucket of one py-spy raw stack ("a (f.py:1);b (g.py:2)", outermost first): offset
    commits wherever they sit in the stack, else the innermost frame of a known part."""
    frames = []
    for frame in stack.split(";"):
        m = _FRAME.match(frame.strip())
        frames.append((m["func"], m["file"]) if m else (frame, ""))
    if any("commit" in f and ("/faust/" in p or "/aiokafka/" in p) for f, p in frames):
        return "offset commit"
    for _func, path in reversed(frames):
        for name, marks in BUCKETS[1:]:
            if any(mark in path for mark in marks):
                return name
    return OTHER


def _read_raw(path: Path) -> Counter[str]:
    out: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out[bucket_of(stack)] += int(count)
    return out


def _cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes and their children."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


def _service_pids(settings: Settings) -> dict[str, list[int]]:
    import json

    out: dict[str, list[int]] = {}
    for name in ("postgres", "kafka"):
        f = settings.stack_dir / name / "process.json"
        if f.exists():
            out[name] = [int(json.loads(f.read_text())["pid"])]
    return out


def profile_workers(
    settings: Settings,
    *,
    events: int,
    history: int,
    rate_hz: int,
    echo: Callable[[str], None],
) -> dict[str, Any]:
    from connectors.topics import ensure_topics_ready
    from mohallamart.bench_workers import (
        BENCH_NAMESPACE,
        _dsn,
        _empty_databases,
        _encode,
        _fresh_databases,
        _mix,
        _produce,
        _wait_ready,
        _wait_rows,
        _Worker,
    )
    from schemas.catalog import topics_in

    events = max(10, events - events % 10)
    bench_topics = topics_in(BENCH_NAMESPACE)
    ensure_topics_ready(
        settings.kafka_bootstrap,
        list(bench_topics.values()),
        security=settings.kafka_security,
        replication=settings.kafka_replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
    )
    _fresh_databases(settings)
    _empty_databases(settings)
    worker = _Worker(settings, echo)
    dsn = _dsn(settings, "bench_worker")
    try:
        _wait_ready(settings, echo)
        if history:
            tag = f"h{uuid.uuid4().hex[:6]}"
            echo(f"history: {history:,} events first (not profiled) ...")
            t0 = time.monotonic()
            _produce(settings, _encode(settings, _mix(history, tag)))
            _wait_rows(dsn, tag, history // 10, 1800, echo)
            echo(f"history applied in {time.monotonic() - t0:.0f} s")
        tag = f"{uuid.uuid4().hex[:6]}"
        records = _encode(settings, _mix(events, tag))
        pid = worker.proc.pid
        os.kill(pid, signal.SIGSTOP)
        raw = Path(tempfile.mkstemp(prefix="profile-", suffix=".txt")[1])
        try:
            echo(f"producing {events:,} events while the worker is stopped ...")
            _produce(settings, records)
            # attached while the worker is stopped, so the run is sampled from its first record
            spy = subprocess.Popen(  # noqa: S603
                [
                    str(Path(sys.executable).with_name("py-spy")),
                    "record",
                    "--pid",
                    str(pid),
                    "--rate",
                    str(rate_hz),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--full-filenames",
                    "--output",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(1.0)
            services = _service_pids(settings)
            before = {name: _cpu_of(pids) for name, pids in services.items()}
            worker_before = _cpu_of([pid])
        finally:
            os.kill(pid, signal.SIGCONT)
        t0 = time.monotonic()
        _wait_rows(dsn, tag, events // 10, 900, echo)
        seconds = time.monotonic() - t0
        worker_cpu = _cpu_of([pid]) - worker_before
        servers = {name: _cpu_of(pids) - before[name] for name, pids in services.items()}
        spy.send_signal(signal.SIGINT)
        try:
            _, err = spy.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if not raw.exists() or raw.stat().st_size == 0:
            raise PipelineError(f"py-spy wrote no samples: {err.decode(errors='replace')[-500:]}")
        counts = _read_raw(raw)
        raw.unlink()
    finally:
        worker.stop()
    total = sum(counts.values())
    per_sample_us = 1e6 / rate_hz
    rows = [
        {
            "bucket": name,
            "samples": n,
            "share": n / total if total else 0.0,
            "us_per_event": n * per_sample_us / events,
        }
        for name, n in counts.most_common()
    ]
    return {
        "events": events,
        "history": history,
        "seconds": seconds,
        "events_per_s": events / seconds,
        "worker_cpu_s": worker_cpu,
        "worker_us_per_event": worker_cpu * 1e6 / events,
        "sampled_us_per_event": total * per_sample_us / events,
        "servers_us_per_event": {k: v * 1e6 / events for k, v in servers.items()},
        "buckets": rows,
    }


def render(result: dict[str, Any]) -> str:
    """The result as a Markdown table and a few lines."""
    lines = [
        f"{result['events']:,} events after a history of {result['history']:,}: "
        f"{result['events_per_s']:,.0f} events/s ({result['seconds']:.1f} s); worker CPU "
        f"{result['worker_us_per_event']:.0f} us/event (/proc), sampled "
        f"{result['sampled_us_per_event']:.0f} us/event (py-spy)",
        "",
        "| where | share | CPU us/event |",
        "| --- | --- | --- |",
    ]
    for row in result["buckets"]:
        lines.append(f"| {row['bucket']} | {row['share']:.1%} | {row['us_per_event']:.1f} |")
    for name, us in result["servers_us_per_event"].items():
        lines.append(f"| ({name} server, its own processes) | | {us:.1f} |")
    return "\n".join(lines)
