"""Helpers for integration tests: bounded polls instead of sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["free_port", "poll", "report"]

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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def report(line: str) -> None:
    """A figure a test measured (shown with `pytest -s`, and in the log of the session)."""
    import logging

    logging.getLogger("tests.figures").warning("%s", line)
