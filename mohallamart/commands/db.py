"""`mohallamart db migrate`: the application database."""

from __future__ import annotations

import argparse

from mohallamart.commands._common import load_settings, out

__all__ = ["register"]


def _cmd_db_migrate(args: argparse.Namespace) -> int:
    from connectors.db import migrate

    applied = migrate(load_settings().postgres_dsn)
    out(f"applied {', '.join(applied)}" if applied else "database is up to date")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = sub.add_parser("db", help="the application database")
    dsub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    dsub.add_parser("migrate", help="apply pending migrations").set_defaults(func=_cmd_db_migrate)
