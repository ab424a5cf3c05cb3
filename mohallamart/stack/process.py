"""Processes the stack owns: started detached, recorded by PID, stopped by that PID only.

A record is `<state>/<service>/process.json` with the PID and the process's start time, so a
recycled PID never makes a stranger look like ours.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = [
    "ProcessRecord",
    "log_tail",
    "port_in_use",
    "read_record",
    "running",
    "spawn",
    "stop",
]


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    create_time: float
    argv: list[str]


def _record_path(state: Path) -> Path:
    return state / "process.json"


def read_record(state: Path) -> ProcessRecord | None:
    try:
        data = json.loads(_record_path(state).read_text())
        return ProcessRecord(int(data["pid"]), float(data["create_time"]), list(data["argv"]))
    except (OSError, ValueError, KeyError):
        return None


def running(state: Path) -> ProcessRecord | None:
    """The record of this service's process if that very process is alive, else None."""
    rec = read_record(state)
    if rec is None:
        return None
    try:
        proc = psutil.Process(rec.pid)
        if abs(proc.create_time() - rec.create_time) > 1.0:
            return None  # the PID was recycled: not ours
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    return rec


def spawn(
    state: Path,
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> ProcessRecord:
    """Start `argv` in a session of its own, output appended to `log`, and record its PID."""
    state.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with open(log, "ab") as out:
        out.write(f"\n--- started {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ---\n".encode())
        out.flush()
        proc = subprocess.Popen(  # noqa: S603 - argv is built by the stack, never from input
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,  # Ctrl-C in the terminal that ran `stack up` must not reach it
            user=user,
        )
    # Read its start time before anything can reap it (it is our child: until reaped, even an
    # already-dead one is still there to read).
    try:
        created = psutil.Process(proc.pid).create_time()
    except psutil.NoSuchProcess:
        created = 0.0  # gone already: `running` will say so, and `up` shows its log
    # Reap it when it exits, so a long-lived starter (the test session, `run`) leaves no zombie.
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    rec = ProcessRecord(proc.pid, created, list(argv))
    _record_path(state).write_text(
        json.dumps({"pid": rec.pid, "create_time": rec.create_time, "argv": rec.argv})
    )
    return rec


def stop(state: Path, *, sig: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """Stop the recorded process (and what it spawned in its session). True if one was running."""
    rec = running(state)
    if rec is None:
        _record_path(state).unlink(missing_ok=True)
        return False
    try:
        proc = psutil.Process(rec.pid)
        proc.send_signal(sig)
        if not _wait_gone(proc, timeout):
            proc.kill()
            _wait_gone(proc, 10)
    except psutil.NoSuchProcess:
        pass
    # Children left in the session we created (its id is our PID) go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(rec.pid, signal.SIGKILL)
    _record_path(state).unlink(missing_ok=True)
    return True


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """True once the process has exited (a zombie counts: its parent, not us, reaps it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def port_in_use(host: str, port: int) -> bool:
    """True if something listens on host:port or holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def log_tail(log: Path, lines: int = 20) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return "(no log yet)"
    return "\n".join(text.splitlines()[-lines:])
