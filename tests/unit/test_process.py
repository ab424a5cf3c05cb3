"""Stack processes are stopped by their recorded PID, and a stranger is never touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

from mohallamart.stack import process

_SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_spawn_records_and_stop_stops(tmp_path: Path) -> None:
    rec = process.spawn(tmp_path / "svc", _SLEEPER, log=tmp_path / "svc" / "svc.log")
    assert process.running(tmp_path / "svc") == rec
    assert process.stop(tmp_path / "svc", timeout=5) is True
    assert process.running(tmp_path / "svc") is None
    assert not (tmp_path / "svc" / "process.json").exists()
    assert "--- started" in (tmp_path / "svc" / "svc.log").read_text()


def test_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    stranger = subprocess.Popen(_SLEEPER)
    try:
        state = tmp_path / "svc"
        state.mkdir()
        # A record whose PID now belongs to another process (its start time differs).
        (state / "process.json").write_text(
            json.dumps({"pid": stranger.pid, "create_time": 1.0, "argv": ["old"]})
        )
        assert process.running(state) is None
        assert process.stop(state) is False
        assert psutil.Process(stranger.pid).is_running()
    finally:
        stranger.kill()
        stranger.wait()


def test_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert process.port_in_use("127.0.0.1", s.getsockname()[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert not process.port_in_use("127.0.0.1", free)
