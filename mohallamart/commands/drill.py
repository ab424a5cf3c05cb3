"""`mohallamart drill [ROW ...]`: faults during a continuous load, a verifier per row, a Markdown
report (`mohallamart.drill`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mohallamart.commands._common import load_settings, out, stop_on_sigterm

__all__ = ["register"]


def _cmd_drill(args: argparse.Namespace) -> int:
    from mohallamart.drill.runner import ROWS, run

    names = args.rows or list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        out(f"unknown row(s) {', '.join(unknown)}; rows are: {', '.join(ROWS)}")
        return 2
    command = "mohallamart drill " + " ".join(sys.argv[2:])
    stop_on_sigterm()  # SIGTERM as Ctrl-C: the processes the drill started are stopped
    return run(
        load_settings(),
        names,
        short=args.short,
        say=out,
        report=Path(args.report) if args.report else None,
        command=command.strip(),
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from mohallamart.drill.runner import ROWS

    d = sub.add_parser(
        "drill",
        help="faults during a continuous load; per row: lost, doubled, repeats per store",
        description=(
            "Starts the local stack (its profile: STACK_KAFKA_BROKERS=3 for the Kafka rows), an "
            "API and the workers, posts a continuous load through the API, and for each row "
            "applies its fault, then verifies every acknowledged event in every store. Rows: "
            + "; ".join(f"{r.name}: {r.fault}" for r in ROWS.values())
            + ". Exit status 1 when a row lost or doubled anything or failed."
        ),
    )
    d.add_argument("rows", nargs="*", metavar="ROW", help="default: every row")
    d.add_argument("--short", action="store_true", help="one cycle per row, 10 s outages (CI)")
    d.add_argument("--report", default=None, help="also write the Markdown report to this file")
    d.set_defaults(func=_cmd_drill)
