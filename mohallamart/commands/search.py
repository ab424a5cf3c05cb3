"""`mohallamart search reindex`: the Typesense search collections."""

from __future__ import annotations

import argparse
import json

from mohallamart.commands._common import load_settings, out, stop_on_sigterm

__all__ = ["register"]


def _cmd_search_reindex(args: argparse.Namespace) -> int:
    """Rebuild search collections from PostgreSQL, swapping each alias when its new collection
    is complete (search keeps answering from the old one meanwhile)."""
    import asyncio

    import psycopg

    from connectors.db import migrate
    from connectors.typesense import ALIASES, SearchIndex, reindex

    settings = load_settings()
    migrate(settings.postgres_dsn)
    aliases = list(ALIASES) if args.collection == "all" else [args.collection]

    async def run() -> list[dict[str, object]]:
        index = SearchIndex(
            settings.typesense_base_url,
            settings.typesense_api_key.get_secret_value(),
            prefix=settings.typesense_collection_prefix,
        )
        results = []
        try:
            async with await psycopg.AsyncConnection.connect(
                settings.postgres_dsn, autocommit=True
            ) as conn:
                for alias in aliases:
                    results.append(
                        await reindex(conn, index, alias, chunk=args.chunk, progress=out)
                    )
        finally:
            await index.close()
        return results

    stop_on_sigterm()
    results = asyncio.run(run())
    if args.json:
        out(json.dumps(results, indent=2))
    else:
        for r in results:
            out(
                f"{r['alias']}: {r['docs']:,} documents in {r['seconds']} s "
                f"({r['docs_per_s']} docs/s) -> {r['collection']}"
            )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    search = sub.add_parser("search", help="the Typesense search collections")
    ssub = search.add_subparsers(dest="search_command", required=True, metavar="ACTION")
    sr = ssub.add_parser(
        "reindex", help="rebuild from PostgreSQL into a new collection, then swap the alias"
    )
    sr.add_argument("--collection", choices=("products", "shops", "all"), default="all")
    sr.add_argument("--chunk", type=int, default=2000, help="documents per bulk import")
    sr.add_argument("--json", action="store_true", help="print the figures as JSON")
    sr.set_defaults(func=_cmd_search_reindex)
