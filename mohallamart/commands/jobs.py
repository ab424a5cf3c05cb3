"""`mohallamart jobs run|list`: the scheduled cleanup jobs (run by the jobs role)."""

from __future__ import annotations

import argparse

from mohallamart.commands._common import load_settings, out, zoned_time

__all__ = ["register"]


def _cmd_jobs_run(args: argparse.Namespace) -> int:
    from streams.jobs import run_now

    ok, cutoff = zoned_time("--cutoff", args.cutoff)
    if not ok:
        return 2
    return run_now(load_settings(), args.job, cutoff=cutoff, wait_s=args.wait, echo=out)


def _cmd_jobs_list(args: argparse.Namespace) -> int:
    from streams.jobs import list_runs

    return list_runs(load_settings(), args.limit, echo=out)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    jobs = sub.add_parser("jobs", help="the scheduled cleanup jobs (run by the jobs role)")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    jr = jsub.add_parser("run", help="run a job now: its cleanup event, for the current period")
    jr.add_argument("job", choices=("expired_sessions", "old_logs"))
    jr.add_argument(
        "--cutoff", default=None, help="ISO 8601 time with a zone (default: the current period's)"
    )
    jr.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait for the jobs role to record the run (0: do not wait)",
    )
    jr.set_defaults(func=_cmd_jobs_run)
    jl = jsub.add_parser("list", help="the recorded runs, latest first")
    jl.add_argument("--limit", type=int, default=20)
    jl.set_defaults(func=_cmd_jobs_list)
