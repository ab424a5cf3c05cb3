"""`mohallamart check [--repair]`: does the Redis cache and the Typesense index agree with
PostgreSQL? (The jobs role runs the same check every SYNC_CHECK_EVERY_S, on its leader.)"""

from __future__ import annotations

import argparse
import json

from mohallamart.commands._common import load_settings, out, stop_on_sigterm

__all__ = ["register"]


def _cmd_check(args: argparse.Namespace) -> int:
    import asyncio
    import uuid

    from connectors.base import DependencyDown
    from connectors.db import DatabaseError, migrate
    from core.errors import PipelineError
    from streams.sync_check import (
        STORES,
        outcome_code,
        publish_drift,
        report_lines,
        run_check,
        summary,
    )

    settings = load_settings()
    migrate(settings.postgres_dsn)
    stores = STORES if args.store == "all" else (args.store,)
    stop_on_sigterm()
    check_id = str(uuid.uuid4())
    if not args.json:
        out(f"check {check_id}")
    try:
        check_id, reports = asyncio.run(
            run_check(
                settings,
                stores=stores,
                repair=args.repair,
                sample=args.sample,
                wait_s=args.wait,
                say=(lambda _line: None) if args.json else out,
                check_id=check_id,
            )
        )
    except (DependencyDown, DatabaseError) as exc:
        out(f"check {check_id}: not done: {exc}")
        return 4
    try:
        sent = (
            0 if args.no_events else publish_drift(settings, check_id, reports, trigger="OPERATOR")
        )
    except PipelineError as exc:
        out(f"check {check_id}: {exc}")
        return 4
    if args.json:
        out(json.dumps({**summary(check_id, reports), "events": sent}, indent=2, default=str))
    else:
        for line in report_lines(reports):
            out(line)
        if sent:
            out(f"{sent} ops.drift_detected event(s) produced (trace id {check_id})")
    return outcome_code(reports, repaired=args.repair)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser(
        "check",
        help="compare PostgreSQL with the Redis cache and the Typesense index (--repair: fix)",
        description=(
            "Compare every entity (a sample above --sample rows of a kind) of PostgreSQL with "
            "what Redis and Typesense hold. A difference counts as drift only once the store's "
            "role has caught up past it (lag is never drift). Exit status: 0 clean (or every "
            "drift repaired), 1 drift left, 3 differences not verifiable because a role is "
            "behind, 4 a store (or PostgreSQL, Kafka) could not be reached."
        ),
    )
    c.add_argument("--store", choices=("redis", "typesense", "all"), default="all")
    c.add_argument(
        "--repair", action="store_true", help="re-render drifted entities from PostgreSQL"
    )
    c.add_argument(
        "--sample",
        type=int,
        default=None,
        help="compare a sample of about this many entities of a kind above it; 0: every one "
        "(default SYNC_CHECK_SAMPLE)",
    )
    c.add_argument(
        "--wait",
        type=float,
        default=None,
        help="seconds to wait for a store's role to catch up (default SYNC_CHECK_WAIT_S)",
    )
    c.add_argument(
        "--no-events", action="store_true", help="do not produce ops.drift_detected events"
    )
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=_cmd_check)
