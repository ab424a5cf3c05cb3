"""PostgreSQL: versioned migrations, applied by `mohallamart db migrate` and at process start.

Migrations are `connectors/migrations/NNNN_name.sql`, applied in order, each in its own
transaction, under an advisory lock so concurrent starters never race.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg

from connectors.base import DependencyDown
from core.errors import PipelineError

__all__ = ["DatabaseError", "MIGRATIONS_DIR", "migrate"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_LOCK_ID = 0x6D6D6967  # "mmig"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class DatabaseError(PipelineError):
    """PostgreSQL could not be reached or a migration failed."""


#: a PostgreSQL session gone: refused, dropped, or ended by the server because it sat idle in a
#: transaction (`limit_idle_transactions`: the worker was paused); reconnect and retry
SESSION_LOST: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.errors.IdleInTransactionSessionTimeout,
    OSError,
)


def limit_idle_transactions(ms: int) -> None:
    """This process's PostgreSQL sessions from now on: one left idle inside a transaction for
    `ms` is ended by the server and its locks released (0: no limit). A worker paused
    mid-transaction otherwise holds its rows' locks until it resumes, and the worker that took
    its partitions over waits on them. Through libpq's PGOPTIONS, which every connection this
    process opens reads (`session_options` for one that passes options of its own)."""
    options = re.sub(
        r"-c\s*idle_in_transaction_session_timeout=\S+", "", os.environ.get("PGOPTIONS", "")
    ).split()
    if ms > 0:
        options += ["-c", f"idle_in_transaction_session_timeout={ms}"]
    os.environ["PGOPTIONS"] = " ".join(options)


def session_options(*extra: str) -> str:
    """libpq `options` for a connection that sets its own: `extra` (each `name=value`) after
    this process's PGOPTIONS (given, `options` overrides PGOPTIONS)."""
    return " ".join([os.environ.get("PGOPTIONS", "").strip(), *(f"-c {e}" for e in extra)]).strip()


def _migrations() -> list[tuple[int, str, Path]]:
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise DatabaseError(f"migration file {path.name} is not named NNNN_name.sql")
        found.append((int(m.group(1)), m.group(2), path))
    return found


def _applied(conn: psycopg.Connection) -> set[int]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def migrate(dsn: str) -> list[str]:
    """Apply every migration not applied yet; return the names applied."""
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DatabaseError(
            "PostgreSQL not reachable (DATABASE_URL, or the local stack's postgres: "
            "`mohallamart stack up postgres`)"
        ) from exc
    applied: list[str] = []
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            done = _applied(conn)
            for version, name, path in _migrations():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (version, name),
                    )
                applied.append(f"{version:04d}_{name}")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return applied


class PgReader:
    """One autocommit connection, reopened after a failure; a failure to reach PostgreSQL is
    reported as DependencyDown."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.AsyncConnection[Any] | None = None

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self.dsn, autocommit=True, connect_timeout=5
                )
            yield self._conn
        except SESSION_LOST as exc:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
            raise DependencyDown(f"PostgreSQL: {type(exc).__name__}: {exc}".strip()) from exc
