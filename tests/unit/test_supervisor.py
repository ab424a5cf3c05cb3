"""The process supervisor of `mohallamart run`, the tests' workers and the benchmarks: children
restarted after exiting on their own (1 s, doubling while they keep exiting), left down when
stopped on purpose, stopped newest first by PID, killed after the deadline."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from mohallamart.stack.supervisor import Child, Supervisor


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _until(check: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_child_that_exits_on_its_own_is_restarted_after_a_growing_delay(tmp_path: Path) -> None:
    said: list[str] = []
    exits: list[tuple[str, int]] = []
    sup = Supervisor(echo=said.append, on_exit=lambda c, code: exits.append((c.name, code)))
    first = sup.start("w", _py("import sys; sys.exit(3)"), output=tmp_path / "w.log")
    pid = first.pid
    try:
        _until(lambda: first.proc.poll() is not None)
        sup.poll()
        assert exits == [("w", 3)]
        assert said == [f"w started (pid {pid})", "w exited with 3; restarting in 1 s"]
        sup.poll()  # not due yet
        assert sup.children["w"].pid == pid
        time.sleep(1.05)
        sup.poll()
        assert sup.children["w"].pid != pid
        assert said[-1] == f"w started (pid {sup.children['w'].pid})"
        _until(lambda: not sup.children["w"].alive)
        sup.poll()  # exited again within a minute of its start: twice the delay
        assert said[-1] == "w exited with 3; restarting in 2 s"
        assert [(e.name, e.pid, e.code) for e in sup.unplanned][0] == ("w", pid, 3)
        assert len(sup.unplanned) == 2
    finally:
        sup.stop_all(timeout_s=5)


def test_a_child_stopped_or_killed_on_purpose_stays_down_until_started(tmp_path: Path) -> None:
    sup = Supervisor(echo=lambda line: None)
    sleeper = _py("import time; time.sleep(60)")
    try:
        sup.start("a", sleeper, output=tmp_path / "a.log")
        sup.start("b", sleeper, output=tmp_path / "b.log")
        sup.stop("a", timeout_s=5)
        sup.kill("b")
        sup.poll()
        assert not sup.children["a"].alive and not sup.children["b"].alive
        assert sup.unplanned == []
        again = sup.start("a", sleeper, output=tmp_path / "a.log")
        assert again.alive
    finally:
        sup.stop_all(timeout_s=5)


def test_stop_all_stops_every_child_and_kills_what_does_not_stop_in_time(tmp_path: Path) -> None:
    said: list[str] = []
    lines: list[str] = []
    sup = Supervisor(echo=said.append)
    stubborn = _py(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)"
    )
    polite: Child = sup.start("polite", _py("import time; time.sleep(60)"), output=lines.append)
    hard = sup.start("stubborn", stubborn, output=lines.append)
    _until(lambda: "ready" in lines)
    started = time.monotonic()
    sup.stop_all(timeout_s=1)
    assert time.monotonic() - started < 5
    assert not polite.alive and not hard.alive
    assert polite.proc.returncode == -15 and hard.proc.returncode == -9
    assert said[-1] == f"stubborn did not stop in time; killing pid {hard.pid}"
