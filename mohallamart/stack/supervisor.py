"""Child processes kept running in the foreground: `mohallamart run`'s API and workers, the tests'
workers, the benchmarks' API and workers.

A child that exits on its own (a worker ends itself when it cannot go on, e.g. its Kafka fetcher
crashed) is started again, as a deployment's supervisor would (compose's `restart:
unless-stopped`): after 1 s, doubling up to 30 s while it keeps exiting within a minute of its
start. Each such exit is recorded in `unplanned`. A child stopped on purpose stays down until it
is started again. Children are stopped by the PID this supervisor started them with, never by
name: `stop_all` sends SIGTERM to each, newest first, then waits for them against one deadline
and kills those still running.

Restarts happen while someone calls `poll`: `run` (a loop in the foreground, until an event is
set) or `watch` (a thread of its own). A supervisor nobody polls only starts and stops (the
benchmarks: a restart would change what they measure).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

__all__ = ["Child", "Exit", "Supervisor"]

_log = logging.getLogger(__name__)

#: where a child's output goes: appended to a file, or each line handed to a function
Output = Path | Callable[[str], None]


@dataclass
class Child:
    """One named child: how it is started, and its current process."""

    name: str
    argv: list[str]
    env: dict[str, str]  # over the supervisor's own environment
    output: Output
    proc: subprocess.Popen[bytes]
    started_at: float  # time.monotonic()
    backoff_s: float = 0.5  # the delay before the last restart (doubled on a quick exit)
    due: float | None = None  # a restart is scheduled for then
    down: bool = False  # stopped on purpose: not restarted

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass(frozen=True)
class Exit:
    """A child that exited on its own, started again `restart_in_s` later."""

    name: str
    pid: int
    code: int
    at: datetime
    restart_in_s: float


@dataclass
class Supervisor:
    """Named children, started and stopped by PID, restarted when they exit on their own.

    `echo` gets a line per start, unplanned exit and kill ("<name> started (pid N)", "<name>
    exited with C; restarting in S s", "<name> did not stop in time; killing pid N");
    `on_exit(child, code)` is called for each unplanned exit, before its restart is scheduled."""

    echo: Callable[[str], None] = _log.info
    on_exit: Callable[[Child, int], None] | None = None
    children: dict[str, Child] = field(default_factory=dict)
    unplanned: list[Exit] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _closing: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None

    # --- starting ---------------------------------------------------------------------------
    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        output: Output,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        """Start `argv` as the child `name` (in a session of its own: a Ctrl-C in the terminal
        reaches only the supervisor, which stops the children in order)."""
        with self._lock:
            old = self.children.get(name)
            if old is not None and old.alive:
                raise ValueError(f"{name} is running already (pid {old.pid})")
            proc, at = self._spawn(argv, env, output)
            child = self.children[name] = Child(name, list(argv), dict(env or {}), output, proc, at)
        self.echo(f"{name} started (pid {child.pid})")
        return child

    def _spawn(
        self, argv: Sequence[str], env: Mapping[str, str] | None, output: Output
    ) -> tuple[subprocess.Popen[bytes], float]:
        stdout: IO[bytes] | int = subprocess.PIPE
        if isinstance(output, Path):
            output.parent.mkdir(parents=True, exist_ok=True)
            stdout = open(output, "ab")  # noqa: SIM115 - the child has its own copy once started
        try:
            # stdin is inherited, not subprocess.DEVNULL: workers started with DEVNULL took
            # ~1 s from the API's acknowledgement to the row at 1,000 events/s (p50 1,047 to
            # 1,131 ms in three benchmark runs) against ~25 ms with stdin inherited, even when
            # that is /dev/null too (README, "Worker benchmark"). Nothing here reads stdin.
            proc = subprocess.Popen(  # noqa: S603 - argv is built by our own commands
                list(argv),
                stdout=stdout,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        finally:
            if not isinstance(stdout, int):
                stdout.close()
        if not isinstance(output, Path):
            threading.Thread(target=_pump, args=(proc.stdout, output), daemon=True).start()
        return proc, time.monotonic()

    def _respawn(self, child: Child) -> None:
        child.proc, child.started_at = self._spawn(child.argv, child.env, child.output)
        child.due = None
        self.echo(f"{child.name} started (pid {child.pid})")

    # --- supervising ------------------------------------------------------------------------
    def poll(self) -> None:
        """One look at every child: start again those whose restart is due, schedule a restart
        for those that exited on their own."""
        with self._lock:
            now = time.monotonic()
            for child in list(self.children.values()):
                if child.down:
                    continue
                if child.due is not None:
                    if now >= child.due:
                        self._respawn(child)
                    continue
                code = child.proc.poll()
                if code is None:
                    continue
                quick = now - child.started_at < 60
                child.backoff_s = min(30.0, child.backoff_s * 2) if quick else 1.0
                child.due = now + child.backoff_s
                self.unplanned.append(
                    Exit(child.name, child.pid, code, datetime.now(UTC), child.backoff_s)
                )
                if self.on_exit is not None:
                    self.on_exit(child, code)
                self.echo(f"{child.name} exited with {code}; restarting in {child.backoff_s:.0f} s")

    def run(self, stopping: threading.Event, interval_s: float = 0.5) -> None:
        """Supervise in the foreground until `stopping` is set."""
        while not stopping.is_set():
            self.poll()
            stopping.wait(interval_s)

    def watch(self, interval_s: float = 0.5) -> None:
        """Supervise from a thread of its own until `stop_all` (once: later calls do nothing)."""
        with self._lock:
            if self._watcher is not None:
                return
            self._watcher = threading.Thread(
                target=self._watch, args=(interval_s,), name="supervisor", daemon=True
            )
            self._watcher.start()

    def _watch(self, interval_s: float) -> None:
        while not self._closing.wait(interval_s):
            try:
                self.poll()
            except Exception:  # the next look tries again; the thread must not end
                _log.exception("supervisor: a look at the children failed")

    # --- stopping ---------------------------------------------------------------------------
    def _down(self, name: str) -> subprocess.Popen[bytes]:
        with self._lock:
            child = self.children[name]
            child.down, child.due = True, None
            return child.proc

    def stop(self, name: str, timeout_s: float = 30.0) -> None:
        """Stop one child (SIGTERM, SIGKILL after `timeout_s`); it stays down."""
        proc = self._down(name)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.echo(f"{name} did not stop in time; killing pid {proc.pid}")
                proc.kill()
                proc.wait()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to one child and wait for it to exit; it stays down."""
        proc = self._down(name)
        proc.send_signal(sig)  # nothing if it has exited already (its PID may be another's)
        proc.wait(10)

    def stop_all(self, timeout_s: float = 20.0) -> None:
        """Stop every child, newest first: SIGTERM to each, then SIGKILL to those still running
        after `timeout_s`."""
        self._closing.set()
        with self._lock:
            children = list(reversed(self.children.values()))
            procs = [(c.name, self._down(c.name)) for c in children]
        for _name, proc in procs:
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout_s
        for name, proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.echo(f"{name} did not stop in time; killing pid {proc.pid}")
                proc.kill()
                proc.wait()


def _pump(stream: IO[bytes], line: Callable[[str], None]) -> None:
    for raw in iter(stream.readline, b""):
        line(raw.decode("utf-8", "replace").rstrip())
