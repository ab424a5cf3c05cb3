"""`mohallamart bench scale-out`: one projections worker against three in one consumer group, on
the same events, for CPU per event and for workers left idle while their partitions lag.

The acceptance point it measures: N workers of the projections role (3 by default) use at most
1.15x the CPU per event of one worker, and no worker sits idle while its partitions lag.

Each run (A: one worker; B: `--workers` workers; alternated `--runs` times, medians reported):

1. a scratch database of its own (`bench_scale`) is dropped, created and migrated, then a
   checkpoint; a consumer group of its own, its committed offsets set to the current end of
   every topic the role reads (so a new group never reads the benchmark topics' history; its
   offset reset is `earliest`, so nothing produced after that is ever skipped);
2. real `mohallamart worker --role projections` processes start; once the group is stable with
   every worker in it and each worker has used < 5% CPU for two seconds in a row, the workers
   are stopped (SIGSTOP), `--events` events of the worker benchmark's mix (encoded once, the same
   records every run) are produced to the benchmark's topics, and each worker's CPU is read;
3. the workers resume (SIGCONT); once every row is visible, the wall time and each worker's CPU
   are read again. CPU = user + system of each worker process and its children: its start-up and
   the production of the events are outside the two readings;
4. once a second meanwhile: each worker's CPU% and the lag of its partitions (the end offsets of
   the load minus the group's committed offsets; the workers commit every second here, so lag
   is at most a second stale). Idle while lagging = lag > 0 and CPU < 5% for >= 3 consecutive
   samples, counted per worker;
5. per worker: the event partitions assigned and the records it handled (its /metrics page).

The benchmark's topics, database and groups are its own (`mohallamart-bench.*`, `bench_scale`,
`mohallamart-bench-scale-*`): the pipeline never sees them. Each run's group and its faust topic
are deleted after it, the scratch database at the end. Everything runs on the machine it
measures (2 cores here): wall time shares it with PostgreSQL, Kafka and whatever else runs; CPU
time per event does not depend on that much.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from confluent_kafka import (
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from core.errors import PipelineError
from core.settings import Settings
from mohallamart.stack.supervisor import Supervisor

__all__ = [
    "CPU_RATIO_LIMIT",
    "RunFigures",
    "ScaleResult",
    "Summary",
    "WorkerFigures",
    "idle_while_lagging",
    "lowest_cpu_while_lagging",
    "records_total",
    "render",
    "run_scale_bench",
    "summarize",
]

#: the acceptance point: N workers' CPU per event at most this multiple of one worker's
CPU_RATIO_LIMIT = 1.15
#: a worker under this CPU% in a one-second sample is idle
IDLE_CPU_PCT = 5.0
#: consecutive idle samples with lag that make one "idle while lagging" episode
IDLE_RUN_S = 3
_DB = "bench_scale"
#: the topics the projections role reads (streams.agents.projections.CATEGORIES)
_CATEGORIES = ("user", "shop", "shopkeeper", "product", "order")
_RECORDS = re.compile(r'^mohallamart_worker_records_total\{([^}]*)\}\s+([0-9.eE+-]+)$')


# --- the figures, and what is computed from them (pure) -------------------------------------
@dataclass(frozen=True)
class WorkerFigures:
    """One worker in one run."""

    name: str
    partitions: dict[str, int]  # event topic category -> partitions assigned
    records: int | None  # records it handled in the run (its /metrics), None if unreadable
    cpu_s: float  # user + system, the process and its children, from resume to every row
    idle_lagging: int  # episodes: lag > 0 and CPU < 5% for >= 3 consecutive samples
    idle_lagging_s: int  # samples in those episodes (one a second)
    samples: int  # samples with a lag reading
    lowest_cpu_lagging: float | None  # the lowest CPU% of a sample with lag (None: never lagged)


@dataclass(frozen=True)
class RunFigures:
    """One run: one group of workers consuming the same `events`."""

    label: str  # "A1", "B1", ...
    events: int
    wall_s: float  # from the workers' resume to every row visible
    workers: tuple[WorkerFigures, ...]
    servers_cpu_s: dict[str, float]  # the stack's PostgreSQL and Kafka over the same interval
    unstable_samples: int  # samples taken while the group was not stable (a rebalance)
    #: CPU seconds the rest of the machine used meanwhile (every CPU's busy time less the
    #: workers', the stack's PostgreSQL and Kafka, and this process): the competing load
    others_cpu_s: float

    @property
    def cpu_s(self) -> float:
        return sum(w.cpu_s for w in self.workers)

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s / self.events * 1e6

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s

    @property
    def idle_lagging(self) -> int:
        return sum(w.idle_lagging for w in self.workers)

    @property
    def others_cores(self) -> float:
        return self.others_cpu_s / self.wall_s


@dataclass(frozen=True)
class Summary:
    """Medians of the runs of each kind and the ratios the acceptance point reads."""

    one_cpu_us_per_event: float
    many_cpu_us_per_event: float
    cpu_ratio: float  # many / one: the acceptance figure
    one_events_per_s: float
    many_events_per_s: float
    throughput_ratio: float  # many / one
    idle_lagging: int  # episodes over every run, every worker
    #: many / one of each pair (an A and the B right after it: the nearest in time and load)
    pair_cpu_ratios: tuple[float, ...]
    one_servers_us_per_event: dict[str, float]
    many_servers_us_per_event: dict[str, float]

    @property
    def met(self) -> bool:
        return self.cpu_ratio <= CPU_RATIO_LIMIT and self.idle_lagging == 0


@dataclass(frozen=True)
class ScaleResult:
    cores: int | None
    load_average: tuple[float, float, float]  # at the start: what else the machine was doing
    load_average_end: tuple[float, float, float]
    events: int
    workers: int
    partitions: dict[str, int]  # the projections' topics, category -> partitions
    one: tuple[RunFigures, ...]
    many: tuple[RunFigures, ...]
    summary: Summary = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "summary", summarize(self.one, self.many))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for kind in ("one", "many"):
            for run, figures in zip(out[kind], getattr(self, kind), strict=True):
                run["cpu_us_per_event"] = figures.cpu_us_per_event
                run["events_per_s"] = figures.events_per_s
        out["summary"]["met"] = self.summary.met
        return out


def idle_while_lagging(
    samples: Sequence[tuple[float, int | None]],
    *,
    idle_pct: float = IDLE_CPU_PCT,
    min_run: int = IDLE_RUN_S,
) -> tuple[int, int]:
    """(episodes, samples in them) of one worker's one-second samples (CPU%, lag of its
    partitions): an episode is `min_run` or more consecutive samples with lag > 0 and CPU under
    `idle_pct`. A sample without a lag reading (None: the group was rebalancing, or Kafka did
    not answer) neither ends nor extends a run."""
    episodes = seconds = streak = 0

    def close() -> None:
        nonlocal episodes, seconds, streak
        if streak >= min_run:
            episodes += 1
            seconds += streak
        streak = 0

    for cpu, lag in samples:
        if lag is None:
            continue
        if lag > 0 and cpu < idle_pct:
            streak += 1
        else:
            close()
    close()
    return episodes, seconds


def lowest_cpu_while_lagging(samples: Sequence[tuple[float, int | None]]) -> float | None:
    """The lowest CPU% among the samples with lag > 0 (how near the idle threshold a worker
    came while it had work); None if it never lagged."""
    lagging = [cpu for cpu, lag in samples if lag]
    return min(lagging) if lagging else None


def _median_servers(runs: Sequence[RunFigures]) -> dict[str, float]:
    names = sorted({n for r in runs for n in r.servers_cpu_s})
    return {
        n: statistics.median(r.servers_cpu_s.get(n, 0.0) / r.events * 1e6 for r in runs)
        for n in names
    }


def summarize(one: Sequence[RunFigures], many: Sequence[RunFigures]) -> Summary:
    """Medians of each kind's runs; the ratios are of the medians."""
    if not one or not many:
        raise ValueError("summarize needs at least one run of each kind")
    med = statistics.median
    one_cpu = med(r.cpu_us_per_event for r in one)
    many_cpu = med(r.cpu_us_per_event for r in many)
    one_rate = med(r.events_per_s for r in one)
    many_rate = med(r.events_per_s for r in many)
    return Summary(
        one_cpu_us_per_event=one_cpu,
        many_cpu_us_per_event=many_cpu,
        cpu_ratio=many_cpu / one_cpu,
        one_events_per_s=one_rate,
        many_events_per_s=many_rate,
        throughput_ratio=many_rate / one_rate,
        idle_lagging=sum(r.idle_lagging for r in (*one, *many)),
        pair_cpu_ratios=tuple(
            b.cpu_us_per_event / a.cpu_us_per_event for a, b in zip(one, many, strict=False)
        ),
        one_servers_us_per_event=_median_servers(one),
        many_servers_us_per_event=_median_servers(many),
    )


def records_total(metrics: str, role: str = "projections") -> int:
    """Records a worker of `role` has handled (every stage, every outcome), from its /metrics."""
    total = 0.0
    for line in metrics.splitlines():
        m = _RECORDS.match(line.strip())
        if m and f'role="{role}"' in m[1]:
            total += float(m[2])
    return int(total)


def _worker_cell(w: WorkerFigures) -> str:
    records = f"{w.records:,}" if w.records is not None else "?"
    low = "-" if w.lowest_cpu_lagging is None else f"{w.lowest_cpu_lagging:.0f}%"
    return (
        f"{w.name} {sum(w.partitions.values())}p {records} rec {w.cpu_s:.1f}s "
        f"idle-lagging {w.idle_lagging} (min CPU while lagging {low})"
    )


def render(res: ScaleResult) -> list[str]:
    """The figures as the command prints them."""
    s = res.summary
    n = res.workers
    runs = [r for pair in zip(res.one, res.many, strict=False) for r in pair]
    load = "/".join(f"{x:.1f}" for x in res.load_average)
    load_end = "/".join(f"{x:.1f}" for x in res.load_average_end)
    lines = [
        f"== scale-out, projections role: 1 worker vs {n} in one group ({res.cores} cores, "
        f"load average {load} at the start, {load_end} at the end; {res.events:,} events; "
        f"medians of {len(res.one)} runs each)",
        "run  workers  wall s  events/s   CPU s  CPU us/event  other load (cores)  per worker: "
        "partitions, records, CPU s, idle-while-lagging episodes",
    ]
    for r in runs:
        lines.append(
            f"{r.label:<4} {len(r.workers):>7} {r.wall_s:>7.1f} {r.events_per_s:>9,.0f} "
            f"{r.cpu_s:>7.1f} {r.cpu_us_per_event:>13.1f} {r.others_cores:>19.2f}  "
            + " | ".join(_worker_cell(w) for w in r.workers)
            + (f"  ({r.unstable_samples} samples while rebalancing)" if r.unstable_samples else "")
        )
    verdict = "met" if s.cpu_ratio <= CPU_RATIO_LIMIT else "NOT met"
    lines.append(
        f"CPU per event (the workers' processes): 1 worker {s.one_cpu_us_per_event:.1f} us, "
        f"{n} workers {s.many_cpu_us_per_event:.1f} us: {n} / 1 = {s.cpu_ratio:.3f}x "
        f"(acceptance <= {CPU_RATIO_LIMIT:.2f}x: {verdict})"
    )
    pairs = ", ".join(
        f"{b.label}/{a.label} {x:.3f}"
        for a, b, x in zip(res.one, res.many, s.pair_cpu_ratios, strict=False)
    )
    lines.append(
        f"  per pair (each A beside the B run right after it, the nearest in time and machine "
        f"load): {pairs}; median {statistics.median(s.pair_cpu_ratios):.3f}x. CPU time per "
        "event rises when other processes load the cores (caches, preemptions): compare runs "
        "of similar other load"
    )
    lines.append(
        f"throughput (wall time until every row is visible): 1 worker "
        f"{s.one_events_per_s:,.0f} events/s, {n} workers {s.many_events_per_s:,.0f} events/s: "
        f"{s.throughput_ratio:.2f}x"
    )
    per_run = "; ".join(
        f"{r.label} " + ", ".join(f"{w.name} {w.idle_lagging}" for w in r.workers) for r in runs
    )
    lines.append(
        f"idle while lagging (lag > 0 and CPU < {IDLE_CPU_PCT:.0f}% for >= {IDLE_RUN_S} s), "
        f"episodes per worker: {per_run} ({'met' if s.idle_lagging == 0 else 'NOT met'})"
    )
    if s.one_servers_us_per_event:
        servers = ", ".join(
            f"{name} {s.one_servers_us_per_event[name]:.1f} -> "
            f"{s.many_servers_us_per_event.get(name, 0.0):.1f} us"
            for name in s.one_servers_us_per_event
        )
        lines.append(
            f"not in the figure, for context: the stack's servers per event, 1 -> {n} workers: "
            f"{servers} (PostgreSQL includes the benchmark's own row polling)"
        )
    busiest = max(res.partitions.values())
    parts = ", ".join(f"{c} {p}" for c, p in res.partitions.items())
    rest = (res.cores or 1) - 1
    more = "the second core" if rest == 1 else f"the other {rest} cores"
    lines.append(
        f"why: a worker is one Python process (about one core at most), so on {res.cores} cores "
        f"{n} workers can at best add {more}, less what PostgreSQL, Kafka "
        f"and other processes take (against busy processes, {n} runnable workers also get {n} "
        "scheduler shares instead of one: CPU taken, not capacity gained); once the cores are "
        "saturated, more workers only add work. More cores or machines: a core per worker and "
        "throughput growing with the workers up to the partitions (a partition is read by one "
        f"worker of a group: {parts}; so at most {busiest} projections workers have work), "
        "PostgreSQL needing cores of its own too; each role is its own consumer group and "
        "scales on its own."
    )
    return lines


# --- processes and Kafka ----------------------------------------------------------------------
def _tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its descendants, the exited ones that
    were waited for included."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _machine_busy_s() -> float:
    """CPU seconds every CPU of the machine has been busy (steal included: time the hypervisor
    gave to another guest is not ours either)."""
    import psutil

    t = psutil.cpu_times()
    # guest time is counted in user already
    return float(
        t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        + getattr(t, "steal", 0.0)
    )


def _own_cpu_s() -> float:
    """This process's CPU seconds (its children, the workers, are counted on their own)."""
    t = os.times()
    return t.user + t.system


def _dsn(settings: Settings) -> str:
    return settings.postgres_dsn.rsplit("/", 1)[0] + f"/{_DB}"


def _recreate_database(settings: Settings) -> None:
    from connectors.db import migrate

    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {_DB}")
    migrate(_dsn(settings))
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        # no checkpoint of the last run's writes in the middle of this one
        conn.execute("CHECKPOINT")


def _drop_database(settings: Settings) -> None:
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {_DB} WITH (FORCE)")


def _committed(admin: AdminClient, group: str) -> dict[tuple[str, int], int]:
    """The group's committed offsets (partitions without one left out)."""
    req = [ConsumerGroupTopicPartitions(group)]
    res = admin.list_consumer_group_offsets(req, request_timeout=5)[group].result()
    return {
        (str(tp.topic), int(tp.partition)): int(tp.offset)
        for tp in res.topic_partitions or []
        if tp.offset >= 0
    }


def _assignment(admin: AdminClient, group: str) -> tuple[bool, dict[str, set[tuple[str, int]]]]:
    """(stable, client id -> the partitions it holds)."""
    desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
    stable = str(desc.state).rsplit(".", 1)[-1] == "STABLE"
    out: dict[str, set[tuple[str, int]]] = {}
    for m in desc.members:
        tps = m.assignment.topic_partitions if m.assignment else []
        out[str(m.client_id)] = {(str(tp.topic), int(tp.partition)) for tp in tps}
    return stable, out


@dataclass
class _Worker:
    name: str  # "w1": also its Kafka client id's suffix
    client_id: str
    pid: int
    port: int
    tmp: tempfile.TemporaryDirectory[str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metrics_records(w: _Worker) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics", timeout=10) as resp:  # noqa: S310
            return records_total(resp.read().decode())
    except OSError:
        return None


class _Sampler:
    """Once a second, per worker: CPU% and the lag of its event partitions (None while the group
    is not stable or Kafka does not answer)."""

    def __init__(
        self,
        admin: AdminClient,
        group: str,
        workers: list[_Worker],
        starts: dict[tuple[str, int], int],
        ends: dict[tuple[str, int], int],
    ) -> None:
        self.admin, self.group, self.workers = admin, group, workers
        self.starts, self.ends = starts, ends
        self.samples: dict[str, list[tuple[float, int | None]]] = {w.name: [] for w in workers}
        self.partitions: dict[str, set[tuple[str, int]]] = {w.name: set() for w in workers}
        self.unstable = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scale-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def latest(self) -> str:
        cells = []
        for w in self.workers:
            s = self.samples[w.name]
            if s:
                cpu, lag = s[-1]
                cells.append(f"{w.name} CPU {cpu:.0f}% lag {'?' if lag is None else f'{lag:,}'}")
        return ", ".join(cells)

    def _lags(self) -> dict[str, int | None]:
        try:
            stable, held = _assignment(self.admin, self.group)
            committed = _committed(self.admin, self.group)
        except KafkaException:
            return {w.name: None for w in self.workers}
        if not stable:
            self.unstable += 1
            return {w.name: None for w in self.workers}
        out: dict[str, int | None] = {}
        for w in self.workers:
            mine = {tp for tp in held.get(w.client_id, set()) if tp in self.ends}
            self.partitions[w.name] = mine
            out[w.name] = sum(
                max(0, self.ends[tp] - committed.get(tp, self.starts[tp])) for tp in mine
            )
        return out

    def _loop(self) -> None:
        last = {w.name: _tree_cpu_s(w.pid) for w in self.workers}
        t_last = time.monotonic()
        while not self._stop.wait(max(0.0, t_last + 1.0 - time.monotonic())):
            lags = self._lags()
            now = time.monotonic()
            for w in self.workers:
                cpu = _tree_cpu_s(w.pid)
                pct = (cpu - last[w.name]) / max(1e-3, now - t_last) * 100
                last[w.name] = cpu
                self.samples[w.name].append((pct, lags[w.name]))
            t_last = now


def _ensure_read_topics(settings: Settings) -> list[str]:
    """The topics the projections role reads in the benchmark's namespace (its event topics
    and their redrive topics), created if missing; their names."""
    from connectors.dlq import redrive_topic
    from connectors.topics import ensure_topics_ready
    from mohallamart.bench_workers import BENCH_NAMESPACE
    from schemas.catalog import Topic, topics_in

    bench = topics_in(BENCH_NAMESPACE)
    event = [bench[c] for c in _CATEGORIES]
    redrive = [Topic(t.category, redrive_topic(t.name), t.partitions, t.key) for t in event]
    ensure_topics_ready(
        settings.kafka_bootstrap,
        [*bench.values(), *redrive],
        security=settings.kafka_security,
        replication=settings.kafka_replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
    )
    return [t.name for t in (*event, *redrive)]


def _start_at_end(settings: Settings, admin: AdminClient, group: str, topics: list[str]) -> None:
    """Commit the group's offsets at the current end of `topics`: a new group starts there
    whatever its offset reset (the benchmark topics keep every earlier run's events)."""
    from mohallamart.bench_workers import _high_watermarks

    ends = _high_watermarks(settings, topics)
    tps = [TopicPartition(t, p, off) for (t, p), off in sorted(ends.items())]
    admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)])[group].result()


def _start_workers(
    settings: Settings, procs: Supervisor, prefix: str, n: int, echo: Callable[[str], None]
) -> list[_Worker]:
    from mohallamart.bench_workers import BENCH_NAMESPACE

    workers = []
    for i in range(1, n + 1):
        name, port = f"w{i}", _free_port()
        tmp = tempfile.TemporaryDirectory(prefix="bench-scale-")
        log = settings.stack_dir / f"worker-bench-scale-{name}.log"
        env = {
            "DATABASE_URL": _dsn(settings),
            "WORKER_APP_PREFIX": prefix,
            "WORKER_OFFSET_RESET": "earliest",
            "TOPIC_NAMESPACE": BENCH_NAMESPACE,
            "WORKER_DATA_DIR": tmp.name,
            "LOG_LEVEL": "WARNING",
            # faust reads its client id from the environment: it names the worker in the
            # group's member list, so partitions and lag are attributed to a process
            "BROKER_CLIENT_ID": f"{prefix}-{name}",
            # lag is read from committed offsets: committed every second they are at most a
            # second behind (the default 5 s would show a worker done with its partitions as
            # idle with lag for up to 5 s)
            "WORKER_COMMIT_INTERVAL_S": "1",
            # the workers are stopped (SIGSTOP) while the load is produced: no heartbeats
            "KAFKA_SESSION_TIMEOUT_MS": "60000",
        }
        argv = [sys.executable, "-m", "mohallamart.cli", "worker", "--role", "projections"]
        child = procs.start(name, [*argv, "--web-port", str(port)], output=log, env=env)
        workers.append(_Worker(name, f"{prefix}-{name}", child.pid, port, tmp))
        echo(f"  {name} started (pid {child.pid}, log {log})")
    return workers


def _check_alive(procs: Supervisor, settings: Settings) -> None:
    for child in procs.children.values():
        if not child.alive:
            log = settings.stack_dir / f"worker-bench-scale-{child.name}.log"
            raise PipelineError(
                f"the benchmark's worker {child.name} (pid {child.pid}) exited with "
                f"{child.proc.returncode}: see {log}"
            )


def _wait_stable(
    settings: Settings,
    procs: Supervisor,
    admin: AdminClient,
    group: str,
    workers: list[_Worker],
    event_tps: set[tuple[str, int]],
) -> dict[str, set[tuple[str, int]]]:
    """Until the group is stable with every worker holding partitions and every event partition
    held; returns the assignment by client id."""
    deadline = time.monotonic() + 180
    want = {w.client_id for w in workers}
    last: Any = None
    while time.monotonic() < deadline:
        _check_alive(procs, settings)
        try:
            stable, held = _assignment(admin, group)
            last = (stable, {k: len(v) for k, v in held.items()})
            covered = set().union(*held.values()) if held else set()
            if (
                stable
                and set(held) == want
                and all(held.values())
                and event_tps <= covered
            ):
                return held
        except KafkaException as exc:
            last = exc
        time.sleep(0.5)
    raise PipelineError(
        f"the group {group} was not stable with {len(workers)} workers within 180 s "
        f"(last seen: {last})"
    )


def _wait_idle(workers: list[_Worker], echo: Callable[[str], None]) -> float:
    """Until every worker has used < 5% CPU in two consecutive seconds (its start-up done);
    returns the seconds waited (at most 60, with a warning)."""
    t0 = time.monotonic()
    last = {w.name: _tree_cpu_s(w.pid) for w in workers}
    calm = 0
    while time.monotonic() - t0 < 60:
        time.sleep(1.0)
        now = {w.name: _tree_cpu_s(w.pid) for w in workers}
        busy = [w.name for w in workers if (now[w.name] - last[w.name]) * 100 >= IDLE_CPU_PCT]
        last = now
        calm = 0 if busy else calm + 1
        if calm >= 2:
            return time.monotonic() - t0
    echo(f"  warning: a worker still used >= {IDLE_CPU_PCT:.0f}% CPU after 60 s; measuring")
    return time.monotonic() - t0


def _wait_rows(
    settings: Settings,
    procs: Supervisor,
    tag: str,
    events: int,
    sampler: _Sampler,
    echo: Callable[[str], None],
) -> float:
    """Until every row of the load is visible (polled every 0.2 s); the time it was seen."""
    from mohallamart.bench_workers import _counts

    units = events // 10
    want = (units, units, 2 * units)
    deadline = time.monotonic() + 900
    last_echo = time.monotonic()
    while time.monotonic() < deadline:
        got = _counts(_dsn(settings), tag)
        if got == want:
            return time.monotonic()
        if time.monotonic() - last_echo >= 5:
            _check_alive(procs, settings)
            echo(f"  ... {sum(got):,} of {sum(want):,} rows; {sampler.latest()}")
            last_echo = time.monotonic()
        time.sleep(0.2)
    raise PipelineError(f"the rows did not all appear within 900 s: {_counts(_dsn(settings), tag)}")


def _wait_committed(
    admin: AdminClient, group: str, ends: dict[tuple[str, int], int], echo: Callable[[str], None]
) -> None:
    """Until the group has committed the end of the load on every partition (at most 30 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            committed = _committed(admin, group)
            if all(committed.get(tp, -1) >= end for tp, end in ends.items()):
                return
        except KafkaException:
            pass
        time.sleep(0.5)
    echo("  warning: the group had not committed the end of the load after 30 s")


def _cleanup_group(
    admin: AdminClient, group: str, prefix: str, echo: Callable[[str], None]
) -> None:
    """Delete the run's group and the topics faust made for it (`<prefix>-...`)."""
    for _ in range(20):
        try:
            admin.delete_consumer_groups([group], request_timeout=10)[group].result()
            break
        except KafkaException as exc:
            if exc.args and getattr(exc.args[0], "code", lambda: None)() == (
                KafkaError.GROUP_ID_NOT_FOUND
            ):
                break  # the run ended before the group existed
            time.sleep(1.0)  # members still leaving
    else:
        echo(f"  note: consumer group {group} left behind (not empty yet)")
    try:
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{prefix}-")]
        if names:
            for fut in admin.delete_topics(names, operation_timeout=30).values():
                fut.result()
    except KafkaException as exc:
        echo(f"  note: the run's faust topics were not deleted: {exc}")


def _signal_all(workers: list[_Worker], sig: int) -> None:
    for w in workers:
        try:
            os.kill(w.pid, sig)
        except ProcessLookupError:
            pass


def _one_run(
    settings: Settings,
    *,
    label: str,
    n: int,
    records: list[tuple[str, bytes, bytes]],
    events: int,
    tag: str,
    read_topics: list[str],
    event_topics: dict[str, str],
    echo: Callable[[str], None],
) -> RunFigures:
    from connectors.kafka import admin_config
    from mohallamart.bench_workers import _high_watermarks, _produce
    from mohallamart.profile_workers import _service_pids

    admin = AdminClient(admin_config(settings.kafka_bootstrap, security=settings.kafka_security))
    prefix = f"mohallamart-bench-scale-{uuid.uuid4().hex[:8]}-{label.lower()}"
    group = f"{prefix}-projections"
    echo(f"run {label}: {n} worker{'s' if n > 1 else ''}, {events:,} events (group {group})")
    _recreate_database(settings)
    _start_at_end(settings, admin, group, read_topics)
    procs = Supervisor(echo=lambda line: None)  # never polled: a restart would change the run
    workers: list[_Worker] = []
    stopped = False
    try:
        workers = _start_workers(settings, procs, prefix, n, echo)
        starts = _high_watermarks(settings, list(event_topics))
        held = _wait_stable(settings, procs, admin, group, workers, set(starts))
        idle_s = _wait_idle(workers, echo)
        echo(
            "  group stable: "
            + ", ".join(
                f"{w.name} {len([tp for tp in held[w.client_id] if tp in starts])} partitions"
                for w in workers
            )
            + f"; idle after {idle_s:.0f} s"
        )
        before_records = {w.name: _metrics_records(w) for w in workers}
        _signal_all(workers, signal.SIGSTOP)
        stopped = True
        t_prod = time.monotonic()
        _produce(settings, records)
        ends = _high_watermarks(settings, list(event_topics))
        loaded = sum(ends[tp] - starts[tp] for tp in ends)
        if loaded != events:
            raise PipelineError(f"{loaded:,} records landed in the topics, {events:,} produced")
        echo(
            f"  workers stopped (SIGSTOP) while {events:,} events were produced "
            f"({time.monotonic() - t_prod:.1f} s); resuming"
        )
        services = _service_pids(settings)
        servers0 = {k: sum(_tree_cpu_s(p) for p in pids) for k, pids in services.items()}
        cpu0 = {w.name: _tree_cpu_s(w.pid) for w in workers}
        busy0, own0 = _machine_busy_s(), _own_cpu_s()
        sampler = _Sampler(admin, group, workers, starts, ends)
        t0 = time.monotonic()
        _signal_all(workers, signal.SIGCONT)
        stopped = False
        sampler.start()
        try:
            t1 = _wait_rows(settings, procs, tag, events, sampler, echo)
            cpu1 = {w.name: _tree_cpu_s(w.pid) for w in workers}
            servers1 = {k: sum(_tree_cpu_s(p) for p in pids) for k, pids in services.items()}
            busy1, own1 = _machine_busy_s(), _own_cpu_s()
            _wait_committed(admin, group, ends, echo)
        finally:
            sampler.stop()
        figures = []
        for w in workers:
            episodes, seconds = idle_while_lagging(sampler.samples[w.name])
            after = _metrics_records(w)
            before = before_records[w.name]
            mine = sampler.partitions[w.name] or {tp for tp in held[w.client_id] if tp in ends}
            by_cat: dict[str, int] = {}
            for topic, _p in sorted(mine):
                cat = event_topics[topic]
                by_cat[cat] = by_cat.get(cat, 0) + 1
            figures.append(
                WorkerFigures(
                    name=w.name,
                    partitions=by_cat,
                    records=None if after is None or before is None else after - before,
                    cpu_s=cpu1[w.name] - cpu0[w.name],
                    idle_lagging=episodes,
                    idle_lagging_s=seconds,
                    samples=sum(1 for _, lag in sampler.samples[w.name] if lag is not None),
                    lowest_cpu_lagging=lowest_cpu_while_lagging(sampler.samples[w.name]),
                )
            )
        run = RunFigures(
            label=label,
            events=events,
            wall_s=t1 - t0,
            workers=tuple(figures),
            servers_cpu_s={k: servers1[k] - servers0[k] for k in servers0},
            unstable_samples=sampler.unstable,
            others_cpu_s=max(
                0.0,
                (busy1 - busy0)
                - sum(cpu1[k] - cpu0[k] for k in cpu0)
                - sum(servers1[k] - servers0[k] for k in servers0)
                - (own1 - own0),
            ),
        )
        echo(
            f"  every row visible after {run.wall_s:.1f} s: {run.events_per_s:,.0f} events/s; "
            f"workers' CPU {run.cpu_s:.1f} s = {run.cpu_us_per_event:.1f} us/event; other "
            f"load {run.others_cores:.2f} cores"
        )
        echo("  " + " | ".join(_worker_cell(f) for f in figures))
        return run
    finally:
        if stopped:
            _signal_all(workers, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        procs.stop_all(timeout_s=30)
        for w in workers:
            w.tmp.cleanup()
        _cleanup_group(admin, group, prefix, echo)


def run_scale_bench(
    settings: Settings,
    *,
    events: int,
    runs: int,
    workers: int,
    echo: Callable[[str], None],
) -> ScaleResult:
    """Runs A (one worker) and B (`workers` workers) alternately, `runs` times each."""
    import logging

    from mohallamart.bench_workers import BENCH_NAMESPACE, _encode, _mix
    from schemas.catalog import topics_in

    if workers < 2:
        raise PipelineError("--workers: at least 2 (run A is the single worker)")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per registry request
    events = max(10, events - events % 10)
    load = os.getloadavg()
    bench = topics_in(BENCH_NAMESPACE)
    event_topics = {bench[c].name: c for c in _CATEGORIES}
    read_topics = _ensure_read_topics(settings)
    tag = f"scale{uuid.uuid4().hex[:6]}"
    echo(f"encoding {events:,} events of the worker benchmark's mix (the same records every run)")
    records = _encode(settings, _mix(events, tag))
    one: list[RunFigures] = []
    many: list[RunFigures] = []
    try:
        for i in range(1, runs + 1):
            common: dict[str, Any] = {
                "records": records,
                "events": events,
                "tag": tag,
                "read_topics": read_topics,
                "event_topics": event_topics,
                "echo": echo,
            }
            echo(f"-- pair {i}/{runs}")
            one.append(_one_run(settings, label=f"A{i}", n=1, **common))
            many.append(_one_run(settings, label=f"B{i}", n=workers, **common))
    finally:
        _drop_database(settings)
    end = os.getloadavg()
    return ScaleResult(
        cores=os.cpu_count(),
        load_average=(load[0], load[1], load[2]),
        load_average_end=(end[0], end[1], end[2]),
        events=events,
        workers=workers,
        partitions={c: bench[c].partitions for c in _CATEGORIES},
        one=tuple(one),
        many=tuple(many),
    )
