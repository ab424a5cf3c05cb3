"""`mohallamart stack up|down|status|start|stop`: the local stack of real services."""

from __future__ import annotations

import argparse
import json

from mohallamart.commands._common import load_settings, out

__all__ = ["register"]


def _cmd_stack_up(args: argparse.Namespace) -> int:
    from mohallamart.stack import Stack

    stack = Stack(load_settings(), echo=out)
    result = stack.up(args.services)
    out(
        f"stack up in {result.seconds:.1f} s: started {', '.join(result.started) or 'nothing'}; "
        f"reused {', '.join(result.reused) or 'nothing'}"
        + (f"; external {', '.join(result.external)}" if result.external else "")
    )
    return 0


def _cmd_stack_down(args: argparse.Namespace) -> int:
    from mohallamart.stack import Stack

    stopped = Stack(load_settings(), echo=out).down(args.services)
    out(f"stopped {', '.join(stopped) if stopped else 'nothing (no service of this stack ran)'}")
    return 0


def _cmd_stack_status(args: argparse.Namespace) -> int:
    from mohallamart.stack import Stack

    statuses = Stack(load_settings()).status()
    if args.json:
        out(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        out(f"{'service':<12} {'state':<10} {'pid':>8}  address")
        for s in statuses:
            state = (
                "external"
                if not s.managed
                else ("healthy" if s.healthy else ("unhealthy" if s.pid else "stopped"))
            )
            out(f"{s.name:<12} {state:<10} {s.pid or '-':>8}  {s.address}")
    managed = [s for s in statuses if s.managed]
    return 0 if all(s.healthy for s in managed) else 3


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from mohallamart.stack.services import SERVICE_NAMES

    services = SERVICE_NAMES

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
