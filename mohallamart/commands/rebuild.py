"""`mohallamart rebuild postgres|search|status|rollback|drop-old|discard`: stores rebuilt from
the topics (PostgreSQL) or from PostgreSQL (Typesense), beside the live ones, then swapped in."""

from __future__ import annotations

import argparse

from mohallamart.commands._common import load_settings, out, stop_on_sigterm, zoned_time

__all__ = ["register"]


def _cmd_postgres(args: argparse.Namespace) -> int:
    import asyncio

    from connectors.db import migrate
    from mohallamart.rebuild import RebuildFailed, rebuild_postgres

    ok, until = zoned_time("--until", args.until)
    if not ok:
        return 2
    settings = load_settings()
    migrate(settings.postgres_dsn)
    stop_on_sigterm()
    try:
        return asyncio.run(
            rebuild_postgres(
                settings,
                until=until,
                cutover=not args.no_cutover,
                force=args.force,
                chunk=args.chunk,
                say=out,
                cutover_within_s=args.within,
                show=args.show,
            )
        )
    except RebuildFailed as exc:
        out(f"rebuild: {exc}")
        return 1
    except KeyboardInterrupt:
        out("\nrebuild: stopped; the same command continues from the checkpoint")
        return 130


def _cmd_rollback(args: argparse.Namespace) -> int:
    import asyncio

    from mohallamart.rebuild import RebuildFailed, rollback_postgres

    settings = load_settings()
    stop_on_sigterm()
    try:
        return asyncio.run(rollback_postgres(settings, force=args.force, say=out))
    except RebuildFailed as exc:
        out(f"rebuild rollback: {exc}")
        return 1
    except KeyboardInterrupt:
        out("\nrebuild rollback: stopped; nothing swapped, the same command continues")
        return 130


def _cmd_status(args: argparse.Namespace) -> int:
    import asyncio

    import psycopg

    from connectors.rebuild import meta, positions, schemas

    settings = load_settings()

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(
            settings.postgres_dsn, autocommit=True
        ) as c:
            live = await positions(c, "public")
            found = await schemas(c)
            if not found:
                out("no rebuild schema")
            for name in found:
                info = await meta(c, name) or {}
                at = await positions(c, name)
                behind = sum(max(0, o - at.get(tp, 0)) for tp, o in live.items())
                what = (
                    f"as of {info['until']}"
                    if info.get("until")
                    else "the tables the last cut-over put aside"
                    if name == "rebuild_previous"
                    else f"shadow started {info.get('started_at', '?')}"
                )
                out(f"{name}: {what}; {behind:,} records behind the live projections")

    asyncio.run(run())
    return 0


def _drop(schema: str) -> int:
    import asyncio

    from mohallamart.rebuild import RebuildFailed, drop

    try:
        asyncio.run(drop(load_settings(), schema))
    except RebuildFailed as exc:
        out(f"rebuild: {exc}: not dropped")
        return 1
    out(f"{schema}: dropped")
    return 0


def _cmd_drop_old(args: argparse.Namespace) -> int:
    from connectors.rebuild import PREVIOUS

    return _drop(PREVIOUS)


def _cmd_discard(args: argparse.Namespace) -> int:
    from connectors.rebuild import SHADOW

    return _drop(args.schema or SHADOW)


def _cmd_search(args: argparse.Namespace) -> int:
    from mohallamart.commands.search import _cmd_search_reindex

    return _cmd_search_reindex(argparse.Namespace(collection="all", chunk=2000, json=False))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rb = sub.add_parser(
        "rebuild",
        help="rebuild a store from the topics beside the live one, then swap it in",
    )
    rsub = rb.add_subparsers(dest="rebuild_command", required=True, metavar="STORE|ACTION")
    pg = rsub.add_parser(
        "postgres",
        help="the projection tables, from the topics, into a shadow schema; then cut over",
        description=(
            "Read the projections' topics from the beginning (or the checkpoint) with the "
            "projections' own code into the schema rebuild_shadow, catch up with the live "
            "projections, pause them between two batches, check parity and swap the tables. "
            "Ctrl-C or kill -9: the same command continues from the checkpoint."
        ),
    )
    pg.add_argument(
        "--until",
        default=None,
        help="a point-in-time copy (ISO 8601 with a zone) in rebuild_asof_<time>; never swapped",
    )
    pg.add_argument("--no-cutover", action="store_true", help="build and catch up, but do not swap")
    pg.add_argument("--force", action="store_true", help="swap even when parity finds differences")
    pg.add_argument("--chunk", type=int, default=5000, help="records per chunk (checkpoint)")
    pg.add_argument(
        "--show", type=int, default=20, help="differences listed per table by the parity check"
    )
    pg.add_argument(
        "--within",
        type=float,
        default=600.0,
        help="seconds to get within 1,000 records of the live projections before giving up",
    )
    pg.set_defaults(func=_cmd_postgres)
    se = rsub.add_parser(
        "search",
        help="the Typesense collections, from PostgreSQL, into new ones; then swap the aliases",
    )
    se.set_defaults(func=_cmd_search)
    st = rsub.add_parser("status", help="the rebuild schemas and how far behind each is")
    st.set_defaults(func=_cmd_status)
    rl = rsub.add_parser(
        "rollback",
        help="bring the tables the last cut-over put aside up to date and swap them back",
    )
    rl.add_argument("--force", action="store_true", help="swap even without parity")
    rl.set_defaults(func=_cmd_rollback)
    do = rsub.add_parser("drop-old", help="drop the tables the last cut-over put aside")
    do.set_defaults(func=_cmd_drop_old)
    di = rsub.add_parser("discard", help="drop a shadow (or a point-in-time copy) not swapped in")
    di.add_argument("--schema", default=None, help="rebuild_shadow by default")
    di.set_defaults(func=_cmd_discard)
