"""`mohallamart drill [ROW ...]`: faults during a continuous load through the API, each row
verified by `mohallamart.drill.verify`, reported as Markdown.

The drill owns what it breaks: it starts the local stack (the profile the settings name:
STACK_KAFKA_BROKERS=3 for the Kafka rows), an API process and the workers (two of the stateful
roles, so the pause row has someone to fail over to), under a supervisor that restarts a process
that exits on its own, as a deployment would. Every process is stopped by its PID at the end.
Loopback only; every row is bounded in time.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from core.settings import Settings
from mohallamart.drill.load import Catalogue, Ledger, Load, envelope, one_shot
from mohallamart.drill.verify import Verdict, Verifier

__all__ = ["ROWS", "Drill", "RowResult", "markdown"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RowResult:
    row: str
    fault: str
    cycles: int = 0
    notes: list[str] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    verdict: Verdict | None = None
    skipped: str = ""
    acked: int = 0
    failed: str = ""
    took_s: float = 0.0  # the row's wall time, its verification included


@dataclass(frozen=True)
class Row:
    name: str
    fault: str
    run: Callable[[Drill, RowResult], None]
    brokers: int = 1  # Kafka brokers the row needs


class Drill:
    """The stack, the API, the workers, the load and the verifier of one drill run."""

    def __init__(self, settings: Settings, *, short: bool, say: Callable[[str], None]) -> None:
        from mohallamart.stack import Stack
        from mohallamart.stack.supervisor import Supervisor

        self.settings, self.short, self.say = settings, short, say
        self.stack = Stack(settings, echo=lambda line: say(f"[stack] {line}"))
        self.logdir = settings.stack_dir / "drill"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.children = Supervisor(echo=lambda line: say(f"[drill] {line}"))
        self.catalogue = Catalogue.make()
        self.ledger = Ledger()
        self.api_port = _free_port()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.load: Load | None = None
        self.verifier = Verifier(settings, self.catalogue, self.ledger)
        self.session_s = settings.kafka_session_timeout_ms / 1000
        self._started: list[str] = []
        #: what must never be in a log: the drill's API key, the Kafka client password
        self.secrets: list[str] = []

    # --- processes -------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.children.start(
            name,
            [sys.executable, "-m", "mohallamart.cli", *argv],
            output=self.logdir / f"{name}.log",
            env=env,
        )

    def worker(self, name: str, role: str, env: dict[str, str] | None = None) -> None:
        datadir = self.logdir / "worker-data" / name
        self._spawn(
            name,
            ["worker", "--role", role, "--web-port", str(_free_port())],
            {"WORKER_DATA_DIR": str(datadir), **(env or {})},
        )

    def kill9(self, name: str) -> None:
        """kill -9 one of the drill's processes, then start it again as it was started (a
        deployment's supervisor restarts a process that died)."""
        child = self.children.children[name]
        self.children.kill(name, signal.SIGKILL)
        self.children.start(name, child.argv, output=child.output, env=child.env)

    def start(self) -> None:
        from connectors.apikeys import create_key
        from connectors.db import migrate
        from streams.app import ROLES, STATEFUL_ROLES

        result = self.stack.up()
        self._started = result.started
        migrate(self.settings.postgres_dsn)
        _key, secret = create_key(
            self.settings.postgres_dsn,
            name=f"drill-{self.catalogue.tag}",
            scopes=["ingest", "read"],
            principal="admin",
            rate_per_s=100_000,
        )
        self._spawn("api", ["api", "--port", str(self.api_port), "--no-access-log"])
        for role in ROLES:
            self.worker(role, role)
            if role in STATEFUL_ROLES:
                self.worker(f"{role}-2", role)
        self.children.watch()
        self._wait_ready()
        self.secrets.append(secret)
        password = self.settings.kafka_security.password
        if password is not None:
            self.secrets.append(password.get_secret_value())
        self.load = Load(self.api, secret, self.catalogue, self.ledger)
        for ev in self.catalogue.seed_events():
            status = one_shot(self.load, ev)
            if status not in (200, 202):
                why = self.load.failures[-1] if self.load.failures else ""
                raise RuntimeError(
                    f"seeding the drill failed: {ev['type']} answered {status} {why}"
                )
        self.verifier.wait_settled(120)
        self.load.start()
        self.say(f"[drill] load started: about {self.load.rate:.0f} events/s through {self.api}")

    def _wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.api}/readyz", timeout=3).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the drill's API did not become ready within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.load is not None:
            self.load.stop()
        self.children.stop_all(timeout_s=30)
        if self._started:
            self.stack.down(self._started)

    # --- helpers for rows -------------------------------------------------------------------------
    #: how long a probe waits: past the workers' stuck-commit watchdog and a restart (a stall the
    #: watchdog ends shows as a long recovery, not as none)
    PROBE_S = 180.0

    def probe_analytics(self, timeout_s: float = PROBE_S) -> float:
        """Seconds until every drill shop's 1-minute sales windows count an order more than
        when asked (the load keeps posting orders of every shop): with an analytics worker
        stopped, the shops of its partitions move again only once the other worker has taken
        them over. The analytics role's recovery, as a dashboard reader sees it."""
        from mohallamart.drill.verify import query

        sql = (
            "SELECT shop_id, COALESCE(sum(orders), 0) FROM analytics_sales "
            "WHERE period = '1m' AND shop_id = ANY(%s) GROUP BY shop_id"
        )
        shops = list(self.catalogue.shops)
        t0 = time.monotonic()
        before: dict[str, int] | None = None
        while time.monotonic() - t0 < timeout_s:
            try:
                rows = query(self.settings.postgres_dsn, sql, shops)
                now = {str(shop): int(n) for shop, n in rows}
            except Exception:  # noqa: BLE001 - PostgreSQL may be the fault: asked again
                time.sleep(0.2)
                continue
            if before is None:
                before = now
            elif all(now.get(shop, 0) > before.get(shop, 0) for shop in shops):
                return time.monotonic() - t0
            time.sleep(0.2)
        return float("inf")

    def probe(self, timeout_s: float = PROBE_S) -> float:
        """Seconds until an order posted now is accepted (PROCESSING): the pipeline's recovery."""
        assert self.load is not None
        shop = next(iter(self.catalogue.shops))
        ev = self.load.order(
            shop,
            [
                {
                    "product_id": self.catalogue.shops[shop][0],
                    "quantity": 1,
                    "unit_price_paise": 5000,
                }
            ],
        )
        t0 = time.monotonic()
        one_shot(self.load, ev, give_up_s=timeout_s)
        oid = ev["data"]["order_id"]
        from mohallamart.drill.verify import query

        while time.monotonic() - t0 < timeout_s:
            try:
                got = query(
                    self.settings.postgres_dsn, "SELECT status FROM orders WHERE order_id = %s", oid
                )
                if got and got[0][0] == "PROCESSING":
                    return time.monotonic() - t0
            except Exception:  # noqa: BLE001 - PostgreSQL may be the fault: asked again
                pass
            time.sleep(0.2)
        return float("inf")

    def service(self, name: str) -> Any:
        return self.stack.services[name]

    def kill9_service(self, name: str) -> None:
        from mohallamart.stack import process

        rec = process.running(self.service(name).state)
        if rec is not None:
            os.kill(rec.pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while process.running(self.service(name).state) is not None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} (pid {rec.pid}) still alive after SIGKILL")
                time.sleep(0.1)

    def brokers(self) -> dict[int, str]:
        from mohallamart.stack.services import KafkaBroker

        return {
            s.node.node_id: s.name
            for s in self.stack.services.values()
            if isinstance(s, KafkaBroker)
        }

    def controllers(self) -> dict[int, str]:
        from mohallamart.stack.services import KafkaController

        return {
            s.node.node_id: s.name
            for s in self.stack.services.values()
            if isinstance(s, KafkaController)
        }

    def partition_leader(self, topic: str, partition: int = 0) -> int:
        from confluent_kafka.admin import AdminClient

        from connectors.kafka import admin_config

        admin = AdminClient(
            admin_config(self.settings.kafka_bootstrap, security=self.settings.kafka_security)
        )
        md = admin.list_topics(topic, timeout=10)
        return int(md.topics[topic].partitions[partition].leader)

    def quorum_leader(self) -> int | None:
        """The active KRaft controller (Kafka's own metadata quorum tool)."""
        from mohallamart.stack import fetch
        from mohallamart.stack.services import KafkaController

        ctrl = [s for s in self.stack.services.values() if isinstance(s, KafkaController)]
        if not ctrl:
            return None
        svc = ctrl[0]
        libs = fetch.fetch_kafka(
            self.settings.stack_cache_dir, self.settings.kafka_version, svc.jdk.home, self.say
        )
        alive = ",".join(f"{s.host}:{s.port}" for s in ctrl if s.healthy())
        proc = subprocess.run(  # noqa: S603 - our JDK and Kafka's own tool
            [
                str(svc.jdk.java),
                "-cp",
                f"{libs}/*",
                "org.apache.kafka.tools.MetadataQuorumCommand",
                "--bootstrap-controller",
                alive,
                "describe",
                "--status",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        m = re.search(r"LeaderId:\s*(\d+)", proc.stdout)
        return int(m.group(1)) if m else None

    def outage(self) -> float:
        return 10.0 if self.short else 30.0


# --- the rows ----------------------------------------------------------------------------------


def _row_leader(d: Drill, r: RowResult) -> None:
    from schemas.catalog import TOPICS

    topic = TOPICS["order"].name
    for _ in range(1 if d.short else 5):
        leader = d.partition_leader(topic)
        name = d.brokers()[leader]
        d.kill9_service(name)
        r.notes.append(f"{name} (leader of {topic}/0) killed")
        time.sleep(3)
        d.stack.up([name])
        r.recovery_s.append(d.probe())
        r.cycles += 1


def _row_controller(d: Drill, r: RowResult) -> None:
    for _ in range(1 if d.short else 3):
        leader = d.quorum_leader()
        controllers = d.controllers()
        name = controllers.get(leader) if leader is not None else None
        if name is None:
            name = sorted(controllers.values())[r.cycles % len(controllers)]
            r.notes.append(f"active controller unknown: {name} killed")
        else:
            r.notes.append(f"{name} (the active controller) killed")
        d.kill9_service(name)
        time.sleep(3)
        d.stack.up([name])
        r.recovery_s.append(d.probe())
        r.cycles += 1


def _row_isr(d: Drill, r: RowResult) -> None:
    assert d.load is not None
    names = sorted(d.brokers().values())[1:]
    d.stack.down(names)
    stopped = time.monotonic()
    # an event posted now: refused (503), never acknowledged, while the ISR is below 2
    ev = envelope(
        "product.stock_adjusted",
        {
            "product_id": d.catalogue.products[0],
            "shop_id": next(iter(d.catalogue.shops)),
            "delta": 1,
            "reason": "RESTOCK",
        },
    )
    with d.load.client() as client:
        first = client.post("/v1/events", json=ev).status_code
    time.sleep(d.outage())
    answered = d.load.statuses(stopped + 1.0)  # requests sent after the stop took effect
    d.stack.up(names)
    ok = answered[200] + answered[202]
    r.notes.append(
        f"{' and '.join(names)} stopped {d.outage():.0f} s: a direct post answered {first}; "
        f"the load got {answered[503]} x 503, {ok} x 2xx"
    )
    if ok or first in (200, 202):
        r.failed = "an event was acknowledged while the ISR was below min.insync.replicas"
    r.recovery_s.append(d.probe())
    r.cycles += 1


def _row_worker_kill(d: Drill, r: RowResult) -> None:
    from streams.app import ROLES

    roles = list(ROLES)
    joined = []
    for cycle in range(1 if d.short else 5):
        # meanwhile a worker joins one role and leaves again (its group rebalances twice)
        extra = roles[cycle % len(roles)]
        d.worker(f"{extra}-x", extra)
        joined.append(extra)
        time.sleep(2)
        for role in roles:
            d.kill9(role)
        time.sleep(2)
        r.recovery_s.append(d.probe())
        d.children.stop(f"{extra}-x", timeout_s=30)
        r.cycles += 1
    r.notes.append(
        f"a worker of every role killed (-9) {r.cycles} times, each started again; meanwhile a "
        f"worker joined and left {', '.join(joined)}"
    )


def _row_worker_pause(d: Drill, r: RowResult) -> None:
    pause_s = 3 * d.session_s
    exits_before = len(d.children.unplanned)
    for name in ("stock", "analytics"):
        child = d.children.children[name]
        child.proc.send_signal(signal.SIGSTOP)
        paused = time.monotonic()
        try:
            took = d.probe() if name == "stock" else d.probe_analytics()
            time.sleep(max(0.0, paused + pause_s - time.monotonic()))
        finally:
            child.proc.send_signal(signal.SIGCONT)
        r.recovery_s.append(took)
        r.notes.append(
            f"{name} paused {pause_s:.0f} s (session {d.session_s:.0f} s), resumed; its "
            f"partitions' work went on after {took:.1f} s"
        )
        r.cycles += 1
    log = (d.logdir / "stock.log").read_text(errors="replace")
    r.notes.append(
        f"fenced batches logged by the resumed stock worker: "
        f"{log.count('not a member of its group')}"
    )
    # a worker expelled while it held partitions ends (75) and restores its tables from the
    # changelogs when started again (`streams.transport.fence`)
    ended = [f"{e.name} ({e.code})" for e in d.children.unplanned[exits_before:]]
    r.notes.append(f"ended and started again after resuming: {', '.join(ended) or 'none'}")


#: where Debian's libfaketime puts its library (`apt-get install libfaketime`)
FAKETIME_LIBS = (
    Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"),
    Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1"),
    Path("/usr/lib/faketime/libfaketimeMT.so.1"),
)


def _row_clock(d: Drill, r: RowResult) -> None:
    lib = next((p for p in FAKETIME_LIBS if p.exists()), None)
    if lib is None:
        r.skipped = "libfaketime is not installed (apt-get install libfaketime)"
        return
    name = "stock-2"
    d.children.stop(name, timeout_s=30)
    # wall clock 10 min ahead; the monotonic clock left alone (asyncio's timers run on it)
    skew = {
        "LD_PRELOAD": str(lib),
        "FAKETIME": "+10m",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_DONT_RESET": "1",
    }
    d.worker(name, "stock", skew)
    time.sleep(12 if d.short else 60)
    r.recovery_s.append(d.probe())
    d.children.stop(name, timeout_s=30)
    d.worker(name, "stock")
    r.notes.append(
        f"{name} ran {12 if d.short else 60} s with its wall clock 10 min ahead (libfaketime), "
        "then restarted with the true time"
    )
    r.cycles += 1


def _dependency(name: str) -> Callable[[Drill, RowResult], None]:
    def run(d: Drill, r: RowResult) -> None:
        d.stack.down([name])
        time.sleep(d.outage())
        d.stack.up([name])
        r.notes.append(f"{name} down {d.outage():.0f} s")
        r.recovery_s.append(d.probe(timeout_s=180))
        r.cycles += 1

    return run


def _row_poison(d: Drill, r: RowResult) -> None:
    from confluent_kafka import Producer

    from connectors.kafka import producer_config
    from schemas.catalog import TOPICS

    topic = TOPICS["order"].name
    producer = Producer(
        producer_config(
            d.settings.kafka_bootstrap,
            security=d.settings.kafka_security,
            delivery_timeout_ms=30_000,
            linger_ms=0,
            max_message_bytes=1_000_000,
        )
    )
    producer.produce(topic, key=f"poison-{d.catalogue.tag}".encode(), value=b"\x00not avro")
    producer.flush(30)
    r.notes.append(f"a record that is not Avro written to {topic}")
    r.recovery_s.append(d.probe())
    r.cycles += 1


def _row_duplicate(d: Drill, r: RowResult) -> None:
    assert d.load is not None
    shop = next(iter(d.catalogue.shops))
    ev = d.load.order(
        shop,
        [{"product_id": d.catalogue.shops[shop][1], "quantity": 1, "unit_price_paise": 5000}],
    )
    first, second = one_shot(d.load, ev), one_shot(d.load, ev)
    r.notes.append(f"the same order posted twice: {first} then {second}")
    if second != 200:
        r.failed = f"the repeat answered {second}, not 200 (duplicate)"
    r.cycles += 1


def _row_rebuild(d: Drill, r: RowResult) -> None:
    # the tables an earlier cut-over kept (a drill run before on this stack) are dropped first,
    # as the rebuild asks an operator to
    subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "mohallamart.cli", "rebuild", "drop-old", "--store", "all"],
        capture_output=True,
        timeout=300,
    )
    t0 = time.monotonic()
    proc = subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "mohallamart.cli", "rebuild", "all"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    r.notes.append(
        f"rebuild all under load: exit {proc.returncode} in {time.monotonic() - t0:.0f} s"
    )
    if proc.returncode != 0:
        r.failed = f"rebuild all failed: {proc.stdout[-500:]}{proc.stderr[-500:]}"
    r.recovery_s.append(d.probe())
    r.cycles += 1


ROWS: dict[str, Row] = {
    r.name: r
    for r in [
        Row("leader", "leader broker kill -9 + restart", _row_leader, brokers=3),
        Row("controller", "active controller kill -9 + restart", _row_controller, brokers=3),
        Row("isr", "ISR below min.insync.replicas (2 brokers stopped)", _row_isr, brokers=3),
        Row("worker-kill", "a worker of each role kill -9", _row_worker_kill),
        Row(
            "worker-pause",
            "stock and analytics workers SIGSTOPped past the session",
            _row_worker_pause,
        ),
        Row("clock", "a stock worker's clock 10 min ahead", _row_clock),
        Row("postgres", "PostgreSQL down", _dependency("postgres")),
        Row("redis", "Redis down", _dependency("redis")),
        Row("typesense", "Typesense down", _dependency("typesense")),
        Row("smtp", "SMTP down", _dependency("smtp")),
        Row("poison", "a poison record", _row_poison),
        Row("duplicate", "the same event twice", _row_duplicate),
        Row("rebuild", "a full rebuild under load", _row_rebuild),
    ]
}


def run_rows(d: Drill, names: list[str]) -> list[RowResult]:
    assert d.load is not None
    results = []
    for name in names:
        row = ROWS[name]
        r = RowResult(name, row.fault)
        results.append(r)
        if d.settings.stack_kafka_brokers < row.brokers:
            r.skipped = f"needs STACK_KAFKA_BROKERS={row.brokers}"
            d.say(f"[drill] {name}: skipped ({r.skipped})")
            continue
        d.say(f"[drill] {name}: {row.fault} ...")
        began = time.monotonic()
        failures = len(d.load.failures)
        d.load.resume()
        time.sleep(2 if d.short else 10)
        try:
            row.run(d, r)
        except Exception as exc:  # noqa: BLE001 - the row fails, the drill goes on
            r.failed = f"{type(exc).__name__}: {exc}"
        if r.skipped:
            d.say(f"[drill] {name}: skipped ({r.skipped})")
            continue
        time.sleep(2)
        d.load.pause()
        if not r.failed and any(s == float("inf") for s in r.recovery_s):
            # the work the fault stopped never went on within the probe's bound
            r.failed = "no recovery: a probe timed out (see the workers' logs)"
        answered = d.load.failures[failures:]
        if answered and not r.failed:
            # an answer that is neither an acknowledgement nor "retry" (503, 429): the client
            # gives the event up, although it may have been written (a 500 after the produce)
            r.failed = f"{len(answered)} events answered neither 2xx nor 503/429: {answered[0]}"
        r.verdict = d.verifier.verify()
        r.acked = len(d.ledger.acked)
        r.took_s = time.monotonic() - began
        d.say(f"[drill] {name}: {_line(r)} (row {r.took_s:.0f} s)")
    return results


def _line(r: RowResult) -> str:
    if r.skipped:
        return f"skipped: {r.skipped}"
    v = r.verdict
    lost = sum(s.lost for s in v.stores) if v else "?"
    doubled = sum(s.doubled or 0 for s in v.stores) if v else "?"
    rec = f"{max(r.recovery_s):.1f} s" if r.recovery_s else "-"
    return f"lost {lost}, doubled {doubled}, recovery {rec}" + (
        f"; FAILED: {r.failed}" if r.failed else ""
    )


def markdown(results: list[RowResult], *, settings: Settings, command: str, seconds: float) -> str:
    """The report: a table of rows, then each row's stores."""
    out = [
        f"Drill: `{command}` on {settings.stack_kafka_brokers} broker(s) "
        f"(RF {settings.kafka_replication_factor}, "
        f"min ISR {settings.kafka_min_insync_replicas}), session timeout "
        f"{settings.kafka_session_timeout_ms / 1000:.0f} s; {seconds:.0f} s in all.",
        "",
        "Every row verifies every event acknowledged since the drill began: lost and doubled "
        "are totals so far; a row fails on what it added (or on its own check).",
        "",
        "| row | fault | cycles | acked so far | lost | doubled | repeats | recovery (max) "
        "| settled | result |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    before = (0, 0)
    for r in results:
        if r.skipped:
            out.append(
                f"| {r.row} | {r.fault} | 0 | - | - | - | - | - | - | skipped: {r.skipped} |"
            )
            continue
        v = r.verdict
        lost = sum(s.lost for s in v.stores) if v else 0
        doubled = sum(s.doubled or 0 for s in v.stores) if v else 0
        repeats = sum(s.repeats or 0 for s in v.stores) if v else "?"
        rec = f"{max(r.recovery_s):.1f} s" if r.recovery_s else "-"
        settled = f"{v.settled_s:.0f} s" if v else "-"
        ok = not r.failed and v is not None and (lost, doubled) <= before
        before = (lost, doubled)
        out.append(
            f"| {r.row} | {r.fault} | {r.cycles} | {r.acked:,} | {lost} | {doubled} | {repeats} "
            f"| {rec} | {settled} | {'pass' if ok else 'FAIL'} |"
        )
    out.append("")
    for r in results:
        if r.skipped or r.verdict is None:
            continue
        out.append(
            f"**{r.row}**: " + "; ".join(r.notes + ([f"FAILED: {r.failed}"] if r.failed else []))
        )
        for s in r.verdict.stores:
            twice = "n/a" if s.doubled is None else str(s.doubled)
            repeats = "" if s.repeats is None else f", repeats {s.repeats}"
            detail = f" ({'; '.join(s.detail[:3])})" if s.detail else ""
            out.append(
                f"- {s.store}: {s.checked:,} checked, lost {s.lost}, "
                f"doubled {twice}{repeats}{detail}"
            )
        out.append("")
    return "\n".join(out)


def secrets_in_logs(d: Drill) -> list[str]:
    """Files among the drill's logs and the stack's that contain one of its secrets (the file,
    never the secret)."""
    found = []
    logs = [*d.logdir.glob("*.log"), *d.settings.stack_dir.glob("*/*.log")]
    for path in logs:
        try:
            text = path.read_bytes()
        except OSError:
            continue
        for secret in d.secrets:
            if secret and secret.encode() in text:
                found.append(str(path))
                break
    return found


def run(
    settings: Settings,
    names: list[str],
    *,
    short: bool,
    say: Callable[[str], None],
    report: Path | None,
    command: str,
) -> int:
    d = Drill(settings, short=short, say=say)
    t0 = time.monotonic()
    try:
        d.start()
        results = run_rows(d, names)
    finally:
        d.stop()
    leaked = secrets_in_logs(d)
    text = markdown(results, settings=settings, command=command, seconds=time.monotonic() - t0)
    security = settings.kafka_security.protocol
    text += (
        f"\nKafka clients (API, workers, drill) over {security}. Logs scanned for the drill's API "
        f"key and the Kafka password: "
        + (f"FOUND in {', '.join(leaked)}" if leaked else "found in none")
        + f" ({len(list(d.logdir.glob('*.log')))} process logs and the stack's).\n"
    )
    say(text)
    if report is not None:
        report.write_text(text + "\n")
    bad = [
        r
        for r in results
        if not r.skipped and (r.failed or r.verdict is None or not r.verdict.clean)
    ]
    # the last line a CI log's tail shows: which rows failed and why
    say(
        f"drill: {len(results)} rows, "
        + (
            "failed: " + "; ".join(f"{r.row} ({r.failed or 'stores not clean'})" for r in bad)
            if bad
            else "none failed"
        )
        + ("; a secret in a log" if leaked else "")
    )
    return 1 if bad or leaked else 0
