"""`mohallamart rebuild postgres|analytics|redis|search|all|status|rollback|drop-old|discard`:
stores rebuilt from the topics (PostgreSQL's projections, the analytics windows) or from
PostgreSQL (Redis, Typesense); PostgreSQL, analytics and Typesense beside the live ones, then
swapped in; Redis in place, by versioned writes."""

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


def _cmd_analytics(args: argparse.Namespace) -> int:
    import asyncio

    from connectors.db import migrate
    from mohallamart.rebuild import RebuildFailed
    from mohallamart.rebuild_analytics import rebuild_analytics

    settings = load_settings()
    migrate(settings.postgres_dsn)
    stop_on_sigterm()
    try:
        return asyncio.run(
            rebuild_analytics(
                settings,
                cutover=not args.no_cutover,
                force=args.force,
                chunk=args.chunk,
                checkpoint_s=args.checkpoint_s,
                say=out,
                cutover_within_s=args.within,
                show=args.show,
            )
        )
    except RebuildFailed as exc:
        out(f"rebuild analytics: {exc}")
        return 1
    except KeyboardInterrupt:
        out("\nrebuild analytics: stopped; the same command continues from the checkpoint")
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

    from connectors.rebuild import progress

    settings = load_settings()

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(
            settings.postgres_dsn, autocommit=True
        ) as c:
            found = await progress(c)
            if not found:
                out("no rebuild schema")
            for r in found:
                whose = (
                    "the live window stage" if r["store"] == "analytics" else "the live projections"
                )
                what = (
                    f"as of {r['until']}"
                    if r["until"]
                    else "the tables the last cut-over put aside"
                    if r["kind"] == "previous"
                    else f"shadow started {r['started_at'] or '?'}"
                )
                out(f"{r['schema']}: {what}; {r['behind']:,} records behind {whose}")

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
    import asyncio

    import psycopg

    from connectors.rebuild import ANALYTICS_PREVIOUS, PREVIOUS, schemas

    async def found() -> list[str]:
        async with await psycopg.AsyncConnection.connect(
            load_settings().postgres_dsn, autocommit=True
        ) as c:
            return await schemas(c)

    wanted = {"postgres": (PREVIOUS,), "analytics": (ANALYTICS_PREVIOUS,)}.get(
        args.store, (PREVIOUS, ANALYTICS_PREVIOUS)
    )
    old = [s for s in asyncio.run(found()) if s in wanted]
    if not old:
        out(f"no tables put aside by a cut-over ({args.store})")
        return 0
    return max(_drop(s) for s in old)


def _cmd_discard(args: argparse.Namespace) -> int:
    from connectors.rebuild import SHADOW

    return _drop(args.schema or SHADOW)


def _cmd_search(args: argparse.Namespace) -> int:
    from mohallamart.commands.search import _cmd_search_reindex

    return _cmd_search_reindex(argparse.Namespace(collection="all", chunk=2000, json=False))


def _cmd_redis(args: argparse.Namespace) -> int:
    import asyncio

    import psycopg

    from connectors.base import DependencyDown
    from mohallamart.rebuild import rebuild_redis

    settings = load_settings()
    stop_on_sigterm()
    try:
        asyncio.run(rebuild_redis(settings, drop=args.drop, chunk=args.chunk, say=out))
    except (DependencyDown, psycopg.Error, OSError) as exc:
        out(f"rebuild redis: {type(exc).__name__}: {str(exc)[:300]}")
        return 4
    except KeyboardInterrupt:
        out("\nrebuild redis: stopped; what was written stays (run it again to finish)")
        return 130
    return 0


def _cmd_all(args: argparse.Namespace) -> int:
    out(
        "rebuild all: PostgreSQL and the analytics windows from the topics, then Redis and "
        "Typesense from PostgreSQL"
    )
    pg = argparse.Namespace(
        until=None, no_cutover=False, force=args.force, chunk=20000, within=600.0, show=20
    )
    code = _cmd_postgres(pg)
    if code != 0:
        out(f"rebuild all: PostgreSQL ended with {code}; Redis and Typesense not rebuilt")
        return code
    an = argparse.Namespace(
        no_cutover=False, force=args.force, chunk=5000, checkpoint_s=10.0, within=600.0, show=20
    )
    analytics = _cmd_analytics(an)
    if analytics != 0:
        # Redis and Typesense are views of PostgreSQL, swapped in above: they are rebuilt from
        # it all the same (a refused analytics cut-over had left them unrebuilt after the swap)
        out(
            f"rebuild all: analytics ended with {analytics}; Redis and Typesense are rebuilt "
            "from PostgreSQL all the same"
        )
    code = _cmd_redis(argparse.Namespace(drop=False, chunk=2000))
    if code != 0:
        return code
    return _cmd_search(argparse.Namespace()) or analytics


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
    pg.add_argument("--chunk", type=int, default=20000, help="records per chunk (checkpoint)")
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
    rd = rsub.add_parser(
        "redis",
        help="every cached view, rendered from PostgreSQL (versioned writes: no pause, never "
        "older than what the cache role wrote)",
    )
    rd.add_argument(
        "--drop", action="store_true", help="delete every cached view first (reads fall back)"
    )
    rd.add_argument("--chunk", type=int, default=2000, help="views rendered per round trip")
    rd.set_defaults(func=_cmd_redis)
    an = rsub.add_parser(
        "analytics",
        help="the analytics windows, from the window stage's topic, into a shadow; then cut over",
        description=(
            "Fold the retained by-key topic (the router's output) from the beginning (or the "
            "checkpoint) with the window stage's own code into the schema rebuild_analytics, "
            "catch up with the live stage, pause it between two writes, check parity and swap "
            "the tables. Nothing is sent. Ctrl-C or kill -9: the same command continues."
        ),
    )
    an.add_argument("--no-cutover", action="store_true", help="build and catch up, no swap")
    an.add_argument("--force", action="store_true", help="swap even when parity finds differences")
    an.add_argument("--chunk", type=int, default=5000, help="by-key records per chunk")
    an.add_argument(
        "--checkpoint-s",
        type=float,
        default=10.0,
        help="seconds between saves of the fold's state (what a resume starts from)",
    )
    an.add_argument(
        "--show", type=int, default=20, help="differences listed per table by the parity check"
    )
    an.add_argument(
        "--within",
        type=float,
        default=600.0,
        help="seconds to get within 1,000 records of the live stage before giving up",
    )
    an.set_defaults(func=_cmd_analytics)
    al = rsub.add_parser(
        "all",
        help="PostgreSQL and analytics from the topics (cut over), then Redis and Typesense",
    )
    al.add_argument(
        "--force", action="store_true", help="swap PostgreSQL and analytics even without parity"
    )
    al.set_defaults(func=_cmd_all)
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
    do = rsub.add_parser(
        "drop-old", help="drop the tables the last cut-over put aside (no rollback after it)"
    )
    do.add_argument(
        "--store",
        choices=("postgres", "analytics", "all"),
        default="postgres",
        help="whose: the projections' (rebuild_previous, the default), the analytics "
        "tables' (rebuild_analytics_previous), or both",
    )
    do.set_defaults(func=_cmd_drop_old)
    di = rsub.add_parser("discard", help="drop a shadow (or a point-in-time copy) not swapped in")
    di.add_argument("--schema", default=None, help="rebuild_shadow by default")
    di.set_defaults(func=_cmd_discard)
