"""`stack up | down | status | start | stop`: the local stack as one unit.

- `up` is idempotent: a service this checkout's stack started (its recorded PID is alive) is
  reused; a stranger on one of its ports is an error naming the port and its setting.
- `down` stops exactly the processes the stack recorded, by PID, in reverse start order.
- Data lives in `<STACK_DIR>/<service>/` and survives `down` and `up`.
- A STACK_DIR remembers its Kafka profile (`kafka-profile.json`: STACK_KAFKA_BROKERS,
  STACK_KAFKA_SECURITY). `up` refuses to start or reuse Kafka under another profile; `down`,
  `stop` and `status` act on the profile the STACK_DIR runs, so nothing it started is left
  behind.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from core.errors import StackError
from core.settings import Settings
from mohallamart.stack import kafka_cluster, process
from mohallamart.stack.services import Service, all_services

__all__ = ["ServiceStatus", "Stack", "UpResult"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    managed: bool  # False: configured externally, the stack leaves it alone
    pid: int | None
    healthy: bool
    log: str | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class UpResult:
    started: list[str]
    reused: list[str]
    external: list[str]
    seconds: float


class Stack:
    """The local stack of one checkout (its STACK_DIR)."""

    def __init__(self, settings: Settings, echo: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self._echo = echo or _log.info
        #: the Kafka profile the settings ask for, and the one the STACK_DIR runs (None: none
        #: yet, or Kafka is external)
        self.kafka_profile = kafka_cluster.KafkaProfile.of(settings)
        self.recorded_profile: kafka_cluster.KafkaProfile | None = None
        #: why `up` refuses Kafka here (the STACK_DIR runs another profile), else None
        self.profile_mismatch: str | None = None
        if settings.kafka_bootstrap_servers is None:
            self.recorded_profile = kafka_cluster.read_profile(settings.stack_dir)
        recorded = self.recorded_profile
        if recorded is not None and recorded != self.kafka_profile:
            self.profile_mismatch = self._mismatch(recorded)
            # down, stop and status act on the processes the STACK_DIR runs
            settings = settings.model_copy(
                update={
                    "stack_kafka_brokers": recorded.brokers,
                    "stack_kafka_security": recorded.security,
                }
            )
        self.services = {s.name: s for s in all_services(settings, self._echo)}

    def _mismatch(self, recorded: kafka_cluster.KafkaProfile) -> str:
        stack_dir = self.settings.stack_dir
        paths = " ".join(str(p) for p in kafka_cluster.kafka_paths(stack_dir, recorded))
        return (
            f"{stack_dir} runs Kafka with {recorded.describe()} (recorded in "
            f"{stack_dir / kafka_cluster.PROFILE_FILE}), but the settings ask for "
            f"{self.kafka_profile.describe()}. Set {recorded.describe()} (environment or .env; "
            f"`mohallamart stack up --brokers {recorded.brokers} --security {recorded.security}`)"
            f", or choose another STACK_DIR; to change this one's profile, stop it "
            f"(`mohallamart stack down`) and delete its Kafka data (all its topics): "
            f"rm -rf {paths}"
        )

    @staticmethod
    def _is_kafka(svc: Service) -> bool:
        return svc.url_setting == "KAFKA_BOOTSTRAP_SERVERS"

    # --- selection ----------------------------------------------------------------------------
    def _select(self, names: Iterable[str] | None, *, with_deps: bool) -> list[Service]:
        if not names:
            return list(self.services.values())
        wanted: set[str] = set()
        for name in names:
            if name not in self.services:
                hint = ""
                if (name == "kafka" or name.startswith("kafka-")) and self.profile_mismatch:
                    raise StackError(self.profile_mismatch)
                if name == "kafka" or name.startswith("kafka-"):
                    hint = (
                        f" (this STACK_DIR's Kafka profile: "
                        f"{(self.recorded_profile or self.kafka_profile).describe()}; "
                        f"`kafka` is the one-node profile's, kafka-controller-1..3 and "
                        f"kafka-broker-1..3 are STACK_KAFKA_BROKERS=3's)"
                    )
                raise StackError(
                    f"unknown service {name!r}; services are: {', '.join(self.services)}{hint}"
                )
            wanted.add(name)
        if with_deps:
            frontier = list(wanted)
            while frontier:
                for dep in self.services[frontier.pop()].depends_on:
                    if dep not in wanted:
                        wanted.add(dep)
                        frontier.append(dep)
        return [s for s in self.services.values() if s.name in wanted]

    # --- up -------------------------------------------------------------------------------------
    def up(self, names: Iterable[str] | None = None) -> UpResult:
        """Start what is not running (and what it depends on); wait until all are healthy."""
        t0 = time.monotonic()
        selected = self._select(names, with_deps=True)
        external = [s.name for s in selected if s.external]
        managed = [s for s in selected if not s.external]
        kafka = [s for s in managed if self._is_kafka(s)]
        problem = self.profile_mismatch or self.kafka_profile.problem()
        if kafka and problem:
            raise StackError(problem)
        reused = [s for s in managed if process.running(s.state) is not None]
        to_start = [s for s in managed if s not in reused]

        # Every check before anything starts: nothing half-up because of a late error.
        for svc in to_start:
            for port, setting in svc.ports():
                if process.port_in_use(self.settings.stack_host, port):
                    note = f"; {svc.port_note}" if svc.port_note else ""
                    raise StackError(
                        f"{svc.name}: port {port} on {self.settings.stack_host} is already in "
                        f"use by a process this stack did not start; stop that process or "
                        f"choose another port with {setting}=<port> (environment or .env)"
                        f"{note}"
                    )
        for svc in to_start:
            svc.preflight()
        if kafka and self.recorded_profile is None:
            kafka_cluster.write_profile(self.settings.stack_dir, self.kafka_profile)
            self.recorded_profile = self.kafka_profile
        for svc in to_start:
            if not svc.parallel_prepare:
                svc.prepare()
        # the Kafka nodes of the 3-broker profile each format their storage in a JVM: together
        parallel = [s for s in to_start if s.parallel_prepare]
        if parallel:
            with ThreadPoolExecutor(max_workers=len(parallel)) as pool:
                list(pool.map(lambda s: s.prepare(), parallel))

        launched: dict[str, float] = {}
        healthy: set[str] = set(external)
        pending = list(managed)
        timeout = self.settings.stack_start_timeout_s
        for svc in reused:
            self._echo(f"{svc.name}: already running (pid {process.running(svc.state).pid})")  # type: ignore[union-attr]
        while pending:
            progressed = False
            for svc in list(pending):
                if svc in to_start and svc.name not in launched:
                    if all(dep in healthy for dep in svc.depends_on):
                        rec = svc.launch()
                        launched[svc.name] = time.monotonic()
                        self._echo(f"{svc.name}: starting (pid {rec.pid}, log {svc.log})")
                        progressed = True
                    continue
                if process.running(svc.state) is None:
                    raise StackError(
                        f"{svc.name} exited during start; its log {svc.log} ends with:\n"
                        f"{process.log_tail(svc.log)}"
                    )
                if svc.healthy():
                    svc.after_healthy()
                    healthy.add(svc.name)
                    pending.remove(svc)
                    since = launched.get(svc.name)
                    took = f" in {time.monotonic() - since:.1f} s" if since else ""
                    self._echo(f"{svc.name}: healthy at {svc.address}{took}")
                    progressed = True
                    continue
                started_at = launched.get(svc.name, t0)
                if time.monotonic() - started_at > timeout * svc.start_timeout_factor:
                    raise StackError(
                        f"{svc.name} did not become healthy within {timeout:.0f} s "
                        f"(STACK_START_TIMEOUT_S); its log {svc.log} ends with:\n"
                        f"{process.log_tail(svc.log)}"
                    )
            if pending and not progressed:
                time.sleep(0.25)
        return UpResult(
            started=[s.name for s in to_start],
            reused=[s.name for s in reused],
            external=external,
            seconds=time.monotonic() - t0,
        )

    # --- down -----------------------------------------------------------------------------------
    def down(self, names: Iterable[str] | None = None) -> list[str]:
        """Stop the services the stack started (those named, or all), by their recorded PIDs.

        Dependents stop first (the registry before its database); the rest stop in parallel.
        """
        selected = [s for s in self._select(names, with_deps=False) if not s.external]
        live = {s.name: process.running(s.state) for s in selected}
        needed = {dep for s in selected if live[s.name] for dep in s.depends_on}
        waves = [
            [s for s in selected if s.name not in needed],
            [s for s in selected if s.name in needed],
        ]
        stopped: list[str] = []
        for wave in waves:
            running = [s for s in wave if live[s.name] is not None]
            for svc in wave:
                if live[svc.name] is None:
                    process.stop(svc.state)  # clears a stale record
            for svc in running:
                self._echo(f"{svc.name}: stopping (pid {live[svc.name].pid})")  # type: ignore[union-attr]
            with ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
                list(pool.map(lambda s: process.stop(s.state, sig=s.stop_signal), running))
            stopped.extend(s.name for s in running)
        return stopped

    # --- status ---------------------------------------------------------------------------------
    def status(self) -> list[ServiceStatus]:
        out: list[ServiceStatus] = []
        for svc in self.services.values():
            if svc.external:
                where = f"(external: {svc.url_setting or 'configured'})"
                out.append(ServiceStatus(svc.name, where, False, None, False, None))
                continue
            rec = process.running(svc.state)
            out.append(
                ServiceStatus(
                    name=svc.name,
                    address=svc.address,
                    managed=True,
                    pid=rec.pid if rec else None,
                    healthy=bool(rec) and svc.healthy(),
                    log=str(svc.log),
                )
            )
        return out
