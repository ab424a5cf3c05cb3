"""`mohallamart run`: the stack, the API and one worker per role in the foreground; Ctrl-C stops
everything this run started."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable

from mohallamart.commands._common import load_settings, out

__all__ = ["register"]


def _prefixed(name: str) -> Callable[[str], None]:
    return lambda line: out(f"[{name}] {line}")


def _cmd_run(args: argparse.Namespace) -> int:
    """Stack, API and workers in the foreground; Ctrl-C stops everything this run started."""
    from mohallamart.stack import Stack
    from mohallamart.stack.supervisor import Supervisor
    from streams.app import ROLES

    settings = load_settings()
    stack = Stack(settings, echo=_prefixed("stack"))
    result = stack.up()
    commands = {"api": ["api"], **{role: ["worker", "--role", role] for role in ROLES}}
    # a process that exits on its own (a worker whose Kafka fetcher crashed ends itself) is
    # started again, as a deployment's supervisor would
    children = Supervisor(echo=_prefixed("run"))
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        for name, argv in commands.items():
            children.start(
                name, [sys.executable, "-m", "mohallamart.cli", *argv], output=_prefixed(name)
            )
        out(
            f"[run] API on http://{settings.api_host}:{settings.api_port} "
            f"(health: /health); Ctrl-C stops everything this run started"
        )
        children.run(stopping)
    finally:
        children.stop_all(timeout_s=20)
        if result.started:
            stack.down(result.started)
        if result.reused:
            out(f"[run] left running (not started by this run): {', '.join(result.reused)}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="stack, API and workers in the foreground (Ctrl-C stops all)")
    run.set_defaults(func=_cmd_run)
