"""Helpers for integration tests: bounded polls instead of sleeps."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = ["api_process", "free_port", "poll", "report"]

T = TypeVar("T")


def poll(
    probe: Callable[[], T | None], *, timeout: float = 20.0, interval: float = 0.1, what: str = ""
) -> T:
    """Call `probe` until it returns something other than None/False; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value is not None and value is not False:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or probe}: {last_exc!r}")


_HANDED: set[int] = set()


def free_port() -> int:
    """A free port for a process of the test to listen on, below the kernel's ephemeral range:
    a port from that range (as binding port 0 gives) can be taken by any process's outgoing
    connection before ours binds it (CI once lost a worker to that), one below it cannot."""
    import random
    import socket
    from pathlib import Path

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(20_000, max(low, 30_000))
        if port in _HANDED:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))  # noqa: S104 - as the servers bind it
            except OSError:
                continue
        _HANDED.add(port)
        return port
    raise AssertionError("no free port below the ephemeral range")


def report(line: str) -> None:
    """A figure a test measured (shown with `pytest -s`, and in the log of the session)."""
    import logging

    logging.getLogger("tests.figures").warning("%s", line)


@contextlib.contextmanager
def api_process(env: dict[str, str], log_name: str) -> Iterator[str]:
    """An API process with `env`, logging to `<STACK_DIR>/<log_name>`, ready; its base URL.
    Stopped (by its PID) on the way out."""
    import httpx

    from core.settings import get_settings

    port = free_port()
    log = open(get_settings().stack_dir / log_name, "ab")  # noqa: SIM115
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "mohallamart.cli", "api", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        poll(
            lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200,
            timeout=90,
            interval=0.5,
            what=f"the API to be ready (log: {log.name})",
        )
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


#: every secret the session handed to a process or made (API keys, webhook secrets, provider
#: keys): `test_zz_no_secrets_in_logs.py` scans the session's logs for each
SECRETS_USED: set[str] = set()
