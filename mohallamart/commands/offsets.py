"""`mohallamart offsets reset`: consumer-group offsets of the worker roles."""

from __future__ import annotations

import argparse

from mohallamart.commands._common import load_settings, out, zoned_time

__all__ = ["register"]


def _cmd_worker_reset_offsets(args: argparse.Namespace) -> int:
    from streams.offsets import reset_offsets

    ok, to = zoned_time("--to-datetime", args.to_datetime)
    if not ok:
        return 2
    reset_offsets(load_settings(), args.role, to=to, execute=args.execute, echo=out)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from streams.app import ROLES

    offsets = sub.add_parser("offsets", help="consumer-group offsets of the worker roles")
    osub = offsets.add_subparsers(dest="offsets_command", required=True, metavar="ACTION")
    orr = osub.add_parser(
        "reset",
        help="move a role's group to the beginning or to a time (its workers stopped)",
    )
    orr.add_argument("--role", required=True, choices=sorted(ROLES))
    where = orr.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-earliest", action="store_true", help="the start of every partition")
    where.add_argument("--to-datetime", default=None, help="ISO 8601 time with a zone")
    orr.add_argument("--execute", action="store_true", help="move them (default: show the plan)")
    orr.set_defaults(func=_cmd_worker_reset_offsets)
