"""`mohallamart topics ensure`, `mohallamart schemas register|check`: the event contract."""

from __future__ import annotations

import argparse
import json
import sys

from core.settings import PROJECT_ROOT
from mohallamart.commands._common import load_settings, out

__all__ = ["register"]


def _cmd_topics_ensure(args: argparse.Namespace) -> int:
    from connectors.topics import ensure_topics_ready
    from schemas.catalog import TOPICS

    settings = load_settings()
    created = ensure_topics_ready(
        settings.kafka_bootstrap,
        security=settings.kafka_security,
        replication=settings.kafka_replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
    )
    for t in TOPICS.values():
        state = "created" if t.name in created else "exists"
        out(f"{t.name:<36} {t.partitions:>2} partitions  key: {t.key:<16} {state}")
    return 0


def _cmd_schemas_register(args: argparse.Namespace) -> int:
    from schemas.catalog import EVENT_TYPES
    from schemas.registry import SchemaRegistry

    registry = SchemaRegistry(load_settings().registry_url)
    for event in EVENT_TYPES.values():
        out(f"{event.subject:<72} id {registry.register(event)}")
    return 0


def _cmd_schemas_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from schemas.catalog import EVENT_TYPES
    from schemas.compat import check_pair, resolve_base, schemas_at_ref
    from schemas.registry import RegistryError, SchemaRegistry

    repo = Path(args.repo).resolve()
    current = {
        name: json.loads((repo / "schemas" / "avro" / e.schema_file).read_text())
        for name, e in EVENT_TYPES.items()
    }
    problems = []
    checked = 0
    base = resolve_base(repo, args.base)
    if base is None:
        out("git: no base commit to compare with (not a git checkout, or no history)")
    else:
        old = schemas_at_ref(repo, base, {n: e.schema_file for n, e in EVENT_TYPES.items()})
        for name, schema in current.items():
            if name in old:
                checked += 1
                problems += check_pair(
                    EVENT_TYPES[name].subject, schema, old[name], f"git {base[:12]}"
                )
        out(f"git {base[:12]}: compared {len(old)} schema(s) that existed there")
    if not args.no_registry:
        registry = SchemaRegistry(load_settings().registry_url)
        seen = 0
        try:
            for name, schema in current.items():
                subject = EVENT_TYPES[name].subject
                latest = registry.latest(subject)
                if latest is None:
                    continue
                seen += 1
                checked += 1
                found = check_pair(subject, schema, latest, "registry")
                if not found and not registry.is_compatible(subject, schema):
                    from schemas.compat import Incompatibility

                    found = [
                        Incompatibility(
                            subject,
                            "(schema)",
                            "the registry's compatibility rule refuses it",
                            "registry",
                        )
                    ]
                problems += found
        except RegistryError as exc:
            out(f"registry: not checked ({exc}); use --no-registry to skip it on purpose")
            return 2
        out(f"registry: compared {seen} registered subject(s)")
    for p in problems:
        sys.stderr.write(f"incompatible: {p}\n")
    out(
        f"{len(current)} schema(s), {checked} comparison(s), {len(problems)} incompatibilit"
        f"{'y' if len(problems) == 1 else 'ies'}"
    )
    return 1 if problems else 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    topics = sub.add_parser("topics", help="the event topics")
    tsub = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    tsub.add_parser("ensure", help="create missing topics with their settings").set_defaults(
        func=_cmd_topics_ensure
    )

    schemas = sub.add_parser("schemas", help="the event contract")
    scsub = schemas.add_subparsers(dest="schemas_command", required=True, metavar="ACTION")
    scsub.add_parser("register", help="register every schema in the registry").set_defaults(
        func=_cmd_schemas_register
    )
    sc = scsub.add_parser("check", help="the compatibility gate (run in CI)")
    sc.add_argument(
        "--base",
        default=None,
        help="git ref to compare with (default: merge-base with origin/main or main)",
    )
    sc.add_argument("--no-registry", action="store_true", help="compare with git only")
    sc.add_argument("--repo", default=str(PROJECT_ROOT), help="the checkout (default: this one)")
    sc.set_defaults(func=_cmd_schemas_check)
