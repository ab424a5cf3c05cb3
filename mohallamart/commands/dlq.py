"""`mohallamart dlq list|redrive`: dead-letter records."""

from __future__ import annotations

import argparse
import json

from mohallamart.commands._common import load_settings, out

__all__ = ["register"]


def _cmd_dlq_list(args: argparse.Namespace) -> int:
    from connectors.db import migrate
    from connectors.dlq import list_dead_letters

    settings = load_settings()
    migrate(settings.postgres_dsn)
    letters = [dl.as_dict() for dl in list_dead_letters(settings, args.topic)]
    if args.pending:
        letters = [dl for dl in letters if dl["status"] == "pending"]
    if args.json:
        out(json.dumps(letters, indent=2))
        return 0
    out(f"{len(letters)} dead-letter record(s)")
    for dl in letters:
        out(
            f"{dl['dlq']}  {dl['status']:<10} {dl['event_type']:<24} {dl['event_id']:<36} "
            f"{dl['stage']:<32} {dl['error']}"
        )
    return 0


def _cmd_dlq_redrive(args: argparse.Namespace) -> int:
    from connectors.db import migrate
    from connectors.dlq import redrive

    settings = load_settings()
    migrate(settings.postgres_dsn)
    counts = redrive(
        settings, event_ids=None if args.all else set(args.id), topic=args.topic, echo=out
    )
    out(f"redriven {counts['redriven']}, superseded {counts['superseded']}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = sub.add_parser("dlq", help="dead-letter records: list them, redrive them")
    dlsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dl = dlsub.add_parser("list", help="every dead-letter record, with its headers and status")
    dl.add_argument("--topic", default=None, help="one event topic (default: all)")
    dl.add_argument("--pending", action="store_true", help="only those not redriven yet")
    dl.add_argument("--json", action="store_true")
    dl.set_defaults(func=_cmd_dlq_list)
    dr = dlsub.add_parser("redrive", help="send records back to the stage that failed them")
    which = dr.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every pending record")
    which.add_argument("--id", action="append", default=[], help="an event id (repeatable)")
    dr.add_argument("--topic", default=None, help="one event topic (default: all)")
    dr.set_defaults(func=_cmd_dlq_redrive)
