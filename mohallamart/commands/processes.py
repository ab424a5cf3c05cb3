"""`mohallamart api`, `mohallamart worker --role R`: one process of the pipeline."""

from __future__ import annotations

import argparse
import sys

from mohallamart.commands._common import load_settings

__all__ = ["register"]


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = load_settings()
    uvicorn.run(
        "api.main:create_asgi_app",
        factory=True,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=not args.no_access_log,
        workers=args.workers,
    )
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from streams.app import run_worker

    # faust parses sys.argv itself: give it the worker command only.
    sys.argv = [sys.argv[0], "worker"]
    run_worker(args.role, load_settings(), web_port=args.web_port)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from streams.app import ROLES

    api = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    api.add_argument("--host", default=None, help="default: API_HOST")
    api.add_argument("--port", type=int, default=None, help="default: API_PORT")
    api.add_argument("--no-access-log", action="store_true", help="no line per request")
    api.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    api.set_defaults(func=_cmd_api)

    worker = sub.add_parser("worker", help="run one Faust worker of a role")
    worker.add_argument("--role", required=True, choices=sorted(ROLES))
    worker.add_argument(
        "--web-port",
        type=int,
        default=None,
        help="the worker's web port (/metrics); default: WORKER_WEB_PORT + the role's index, so "
        "one worker per role runs without settings; give each further process its own",
    )
    worker.set_defaults(func=_cmd_worker)
