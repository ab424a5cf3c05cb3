"""`mohallamart analytics replay`: the analytics windows again, from the role's own topic."""

from __future__ import annotations

import argparse

from mohallamart.commands._common import load_settings, out

__all__ = ["register"]


def _cmd_replay(args: argparse.Namespace) -> int:
    from streams.offsets import replay_windows

    replay_windows(load_settings(), execute=args.execute, echo=out)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    analytics = sub.add_parser("analytics", help="the analytics windows (the analytics role)")
    asub = analytics.add_subparsers(dest="analytics_command", required=True, metavar="ACTION")
    rp = asub.add_parser(
        "replay",
        help="empty the windows and replay them from the by-key topic (analytics workers stopped)",
    )
    rp.add_argument("--execute", action="store_true", help="do it (default: show the plan)")
    rp.set_defaults(func=_cmd_replay)
