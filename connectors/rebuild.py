"""The PostgreSQL side of a rebuild: shadow schemas of the projection tables, their checkpoints,
parity with the live tables, and the swap.

A rebuild writes the projection tables (`connectors.postgres.PROJECTION_TABLES`) of a schema of
its own, created like public's (columns, defaults, checks, keys, indexes with their names),
through the projections' own code (`PostgresProjections(schema=...)`). Its
`projection_positions` is its checkpoint, written in the same transaction as each chunk. The
swap moves public's projection tables to `rebuild_previous` and the shadow's to public, in one
transaction (each table's lock held until it commits); every other table (API keys, dedup
claims, the notification outbox, `job_runs`, redrive records) stays where it is.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg import sql

from connectors.cleanup import load_cutoffs
from connectors.postgres import PROJECTION_TABLES

__all__ = [
    "ANALYTICS_PREVIOUS",
    "ANALYTICS_SHADOW",
    "PREVIOUS",
    "SHADOW",
    "Difference",
    "create_shadow",
    "drop_schema",
    "hold",
    "shape_differs",
    "meta",
    "parity",
    "positions",
    "prune",
    "schemas",
    "swap",
    "swap_back",
]

SHADOW = "rebuild_shadow"
PREVIOUS = "rebuild_previous"
#: `rebuild analytics`: its shadow, and where a cut-over puts the analytics tables it replaced
ANALYTICS_SHADOW = "rebuild_analytics"
ANALYTICS_PREVIOUS = "rebuild_analytics_previous"
_SWAP = "rebuild_swap"
#: columns that hold when a row was written, not what the events say
_WALL_CLOCK = {
    "audit_log": ("recorded_at",),
    "projection_refusals": ("refused_at", "reason"),
    "analytics_sales": ("updated_at",),
    "analytics_panes": ("updated_at",),
    "analytics_sessions": ("updated_at",),
    "analytics_late": ("recorded_at",),
    "analytics_watermarks": ("updated_at",),
}
#: the positions tables: compared by the caller (the shadow must stand where the live tables do)
_POSITIONS = ("projection_positions", "analytics_positions")
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _ident(name: str) -> sql.Identifier:
    if not _NAME.match(name):
        raise ValueError(f"not a schema name of ours: {name!r}")
    return sql.Identifier(name)


async def schemas(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """The rebuild schemas that exist."""
    cur = await conn.execute(
        "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'rebuild\\_%%' ORDER BY nspname"
    )
    return [r[0] for r in await cur.fetchall()]


async def meta(conn: psycopg.AsyncConnection[Any], schema: str) -> dict[str, Any] | None:
    """What a shadow was made for ({"until": ..., "started_at": ...}), None if it is not one."""
    cur = await conn.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = %s "
        "AND table_name = 'rebuild_meta'",
        (schema,),
    )
    if await cur.fetchone() is None:
        return None
    cur = await conn.execute(
        sql.SQL("SELECT value FROM {}.rebuild_meta WHERE key = 'meta'").format(_ident(schema))
    )
    row = await cur.fetchone()
    return None if row is None else dict(row[0])


async def create_shadow(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    *,
    until: datetime | None,
    tables: Sequence[str] = PROJECTION_TABLES,
    store: str = "postgres",
) -> None:
    """Make `schema` with empty `tables` (the projection tables, or the analytics tables)
    shaped like public's (in one transaction)."""
    s = _ident(schema)
    async with conn.transaction():
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(s))
        for table in tables:
            t = sql.Identifier(table)
            await conn.execute(
                sql.SQL(
                    "CREATE TABLE {}.{} (LIKE public.{} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                    "INCLUDING GENERATED INCLUDING STORAGE)"
                ).format(s, t, t)
            )
        # keys and foreign keys (by name, pointing inside the schema), then the other indexes
        cur = await conn.execute(
            "SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid), c.contype "
            "FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid "
            "JOIN pg_namespace n ON n.oid = r.relnamespace "
            "WHERE n.nspname = 'public' AND r.relname = ANY(%s) AND c.contype IN ('p', 'u', 'f') "
            "ORDER BY c.contype DESC, 1, 2",
            (list(tables),),
        )
        constraints = await cur.fetchall()
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(s))
        for table, name, definition, _ in constraints:
            await conn.execute(
                sql.SQL("ALTER TABLE {}.{} ADD CONSTRAINT {} ").format(
                    s, sql.Identifier(table.removeprefix("public.")), sql.Identifier(name)
                )
                + sql.SQL(definition)  # PostgreSQL's own text
            )
        cur = await conn.execute(
            "SELECT indexdef FROM pg_indexes i WHERE schemaname = 'public' "
            "AND tablename = ANY(%s) AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
            "WHERE c.conname = i.indexname AND c.connamespace = 'public'::regnamespace)",
            (list(tables),),
        )
        for (definition,) in await cur.fetchall():
            moved = definition.replace(" ON public.", f" ON {schema}.", 1)
            await conn.execute(sql.SQL(moved))  # PostgreSQL's own text
        await conn.execute(
            sql.SQL("CREATE TABLE {}.rebuild_meta (key text PRIMARY KEY, value jsonb)").format(s)
        )
        value = {"until": until.isoformat() if until else None, "started_at": "now", "store": store}
        await conn.execute(
            sql.SQL(
                "INSERT INTO {}.rebuild_meta VALUES ('meta', jsonb_set(%s::jsonb, "
                "'{{started_at}}', to_jsonb(now())))"
            ).format(s),
            (orjson.dumps(value).decode(),),
        )


async def positions(conn: psycopg.AsyncConnection[Any], schema: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> next offset, of `schema`'s projection_positions."""
    cur = await conn.execute(
        sql.SQL("SELECT topic, partition, next_offset FROM {}.projection_positions").format(
            _ident(schema)
        )
    )
    return {(t, p): int(o) for t, p, o in await cur.fetchall()}


async def progress(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    """Each rebuild schema: what it is, how many records it has folded, and how many it is behind
    the live projections' positions (`mohallamart rebuild status`, the operator dashboard)."""
    live = await positions(conn, "public")
    live_windows = await _stage_positions(conn, "public")
    out = []
    for name in await schemas(conn):
        info = await meta(conn, name) or {}
        analytics = name.startswith(ANALYTICS_SHADOW)
        if analytics:
            # the window stage's by-key partitions, as offsets applied + 1
            at, theirs = await _stage_positions(conn, name), live_windows
        else:
            at, theirs = await positions(conn, name), live
        out.append(
            {
                "schema": name,
                "store": "analytics" if analytics else "postgres",
                "kind": "point in time"
                if info.get("until")
                else "previous"
                if name in (PREVIOUS, ANALYTICS_PREVIOUS)
                else "shadow",
                "until": info.get("until"),
                "started_at": info.get("started_at"),
                "records": sum(at.values()),
                "behind": sum(max(0, o - at.get(tp, 0)) for tp, o in theirs.items()),
                "live_records": sum(theirs.values()),
            }
        )
    return out


async def _stage_positions(
    conn: psycopg.AsyncConnection[Any], schema: str
) -> dict[tuple[str, int], int]:
    """A schema's window stage positions, as by-key records applied (offset + 1)."""
    cur = await conn.execute(
        "SELECT 1 FROM information_schema.tables WHERE table_schema = %s "
        "AND table_name = 'analytics_positions'",
        (schema,),
    )
    if await cur.fetchone() is None:
        return {}
    cur = await conn.execute(
        sql.SQL("SELECT topic, stage_partition, applied_offset FROM {}.analytics_positions").format(
            _ident(schema)
        )
    )
    return {(t, int(p)): int(o) + 1 for t, p, o in await cur.fetchall()}


@dataclass(frozen=True)
class Difference:
    table: str
    key: str
    what: str  # "only in <schema>", or "differs"


async def _shapes(
    conn: psycopg.AsyncConnection[Any], tables: Sequence[str]
) -> dict[str, tuple[list[str], list[str]]]:
    """table -> (its columns compared, its primary key's columns), of public, in one query."""
    cur = await conn.execute(
        "SELECT c.relname, array_agg(a.attname::text ORDER BY a.attnum), "
        "(SELECT array_agg(k.attname::text ORDER BY array_position(i.indkey, k.attnum)) "
        " FROM pg_index i JOIN pg_attribute k ON k.attrelid = i.indrelid "
        " AND k.attnum = ANY(i.indkey) WHERE i.indrelid = c.oid AND i.indisprimary) "
        "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
        "WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY(%s) "
        "AND a.attnum > 0 AND NOT a.attisdropped GROUP BY c.oid, c.relname",
        (list(tables),),
    )
    out = {}
    for table, cols, key in await cur.fetchall():
        skip = _WALL_CLOCK.get(table, ())
        out[table] = ([c for c in cols if c not in skip], list(key or cols))
    return out


async def parity(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    *,
    limit: int = 20,
    tables: Sequence[str] = PROJECTION_TABLES,
) -> tuple[dict[str, tuple[int, int]], list[Difference]]:
    """Compare `schema`'s projection tables with public's, entity by entity (a checksum of each
    row's columns, the wall-clock ones left out). Returns {table: (rows in public, rows in
    schema)} and up to `limit` differences per table. One query per table."""
    counts: dict[str, tuple[int, int]] = {}
    diffs: list[Difference] = []
    shapes = await _shapes(conn, tables)
    for table in tables:
        if table in _POSITIONS:
            continue  # compared by the caller: the shadow must stand where the live tables do
        cols, key = shapes[table]
        row = sql.SQL("md5(ROW({})::text)").format(
            sql.SQL(", ").join(sql.Identifier("t", c) for c in cols)
        )
        k = sql.SQL("concat_ws('/', {})").format(
            sql.SQL(", ").join(sql.Identifier("t", c) for c in key)
        )
        side = sql.SQL("SELECT {} AS k, {} AS h FROM {}.{} t")
        q = sql.SQL(
            "WITH a AS ({a}), b AS ({b}), d AS (SELECT COALESCE(a.k, b.k) AS k, a.h IS NULL "
            "AS only_b, b.h IS NULL AS only_a FROM a FULL JOIN b ON a.k = b.k "
            "WHERE a.h IS DISTINCT FROM b.h) "
            "SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b), "
            "(SELECT coalesce(json_agg(x), '[]') FROM (SELECT * FROM d ORDER BY k LIMIT %s) x)"
        ).format(
            a=side.format(k, row, sql.Identifier("public"), sql.Identifier(table)),
            b=side.format(k, row, _ident(schema), sql.Identifier(table)),
        )
        cur = await conn.execute(q, (limit,))
        found = await cur.fetchone()
        assert found is not None
        counts[table] = (int(found[0]), int(found[1]))
        for d in found[2]:
            # a: public's side, b: the schema's
            what = (
                "only in public"
                if d["only_a"]
                else f"only in {schema}"
                if d["only_b"]
                else "differs"
            )
            diffs.append(Difference(table, str(d["k"]), what))
    return counts, diffs


async def swap(
    conn: psycopg.AsyncConnection[Any],
    incoming: str,
    outgoing: str,
    *,
    tables: Sequence[str] = PROJECTION_TABLES,
    drop_incoming: bool | None = None,
) -> None:
    """Move public's `tables` to `outgoing` (made here) and `incoming`'s to public. Run inside
    the caller's transaction (the cut-over barrier's)."""
    out = _ident(outgoing)
    await conn.execute(sql.SQL("CREATE SCHEMA {}").format(out))
    for table in tables:
        t = sql.Identifier(table)
        await conn.execute(sql.SQL("ALTER TABLE public.{} SET SCHEMA {}").format(t, out))
        await conn.execute(
            sql.SQL("ALTER TABLE {}.{} SET SCHEMA public").format(_ident(incoming), t)
        )
    if incoming == SHADOW if drop_incoming is None else drop_incoming:
        # only its bookkeeping is left: gone with the swap
        await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(_ident(incoming)))


async def swap_back(conn: psycopg.AsyncConnection[Any]) -> None:
    """The rollback's swap: `rebuild_previous`'s tables to public, public's to
    `rebuild_previous` (inside the caller's transaction)."""
    await swap(conn, PREVIOUS, _SWAP)
    await conn.execute(sql.SQL("DROP SCHEMA {}").format(_ident(PREVIOUS)))
    await conn.execute(
        sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(_ident(_SWAP), _ident(PREVIOUS))
    )


async def drop_schema(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    if not schema.startswith("rebuild_"):
        raise ValueError(f"not a rebuild schema: {schema}")
    await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(_ident(schema)))


async def hold(conn: psycopg.AsyncConnection[Any], schema: str) -> bool:
    """Take `schema`'s rebuild lock for the life of `conn`'s session (False: another rebuild,
    rollback or drop has it)."""
    cur = await conn.execute(
        "SELECT pg_try_advisory_lock(hashtext('mohallamart-rebuild:' || %s))", (schema,)
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def shape_differs(
    conn: psycopg.AsyncConnection[Any], schema: str, tables: Sequence[str] = PROJECTION_TABLES
) -> list[str]:
    """The `tables` whose columns in `schema` are not public's (a migration since the shadow
    was made)."""
    cur = await conn.execute(
        "SELECT table_name, array_agg(column_name::text || ':' || data_type ORDER BY "
        "ordinal_position) FILTER (WHERE table_schema = 'public'), array_agg(column_name::text "
        "|| ':' || data_type ORDER BY ordinal_position) FILTER (WHERE table_schema = %s) "
        "FROM information_schema.columns WHERE table_schema IN ('public', %s) "
        "AND table_name = ANY(%s) GROUP BY table_name",
        (schema, schema, list(tables)),
    )
    return sorted(t for t, a, b in await cur.fetchall() if a != b)


async def prune(conn: psycopg.AsyncConnection[Any], schema: str) -> dict[str, int]:
    """Remove from `schema` what the recorded cleanup runs removed from public (sessions that
    expired, audit rows older than the cutoff): a shadow may have written them before the run
    was recorded."""
    cutoffs = await load_cutoffs(conn)
    removed: dict[str, int] = {}
    for table, column, cutoff in (
        ("sessions", "expires_at", cutoffs.sessions),
        ("audit_log", "occurred_at", cutoffs.audit_log),
    ):
        if cutoff is None:
            continue
        cur = await conn.execute(
            sql.SQL("DELETE FROM {}.{} WHERE {} < %s").format(
                _ident(schema), sql.Identifier(table), sql.Identifier(column)
            ),
            (cutoff,),
        )
        removed[table] = max(cur.rowcount, 0)
    return removed
