"""`mohallamart keys create|list|revoke|rotate`: API keys (stored only as hashes)."""

from __future__ import annotations

import argparse
import json

from mohallamart.commands._common import load_settings, out

__all__ = ["register"]


def _keys_dsn() -> str:
    """The database, migrated: a key can be made before the API has ever started."""
    from connectors.db import migrate

    dsn = load_settings().postgres_dsn
    migrate(dsn)
    return dsn


def _cmd_keys_create(args: argparse.Namespace) -> int:
    from connectors.apikeys import create_key

    key, secret = create_key(
        _keys_dsn(),
        name=args.name,
        scopes=[s.strip() for s in args.scopes.split(",") if s.strip()],
        principal=args.principal,
        rate_per_s=args.rate,
    )
    if args.json:
        out(json.dumps({**key.as_dict(), "key": secret}))
    else:
        out(
            f"created key {key.key_id} ({key.name}; scopes {','.join(key.scopes)}; "
            f"principal {key.principal})"
        )
        out("the key, shown this once (only its hash is stored):")
        out(secret)
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from connectors.apikeys import list_keys

    keys = list_keys(_keys_dsn(), include_revoked=args.all)
    if args.json:
        out(json.dumps([k.as_dict() for k in keys], indent=2))
        return 0
    out(f"{'key id':<10} {'name':<20} {'scopes':<18} {'principal':<20} {'rate/s':>7}  state")
    for k in keys:
        state = (
            f"revoked {k.revoked_at:%Y-%m-%d %H:%M}"
            if k.revoked_at
            else f"active until {k.expires_at:%Y-%m-%d %H:%M:%S %Z} (rotated)"
            if k.expires_at
            else "active"
        )
        out(
            f"{k.key_id:<10} {k.name[:20]:<20} {','.join(k.scopes):<18} {k.principal[:20]:<20} "
            f"{k.rate_per_s or 'default':>7}  {state}"
        )
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    from connectors.apikeys import revoke_key

    key = revoke_key(_keys_dsn(), args.key_id)
    out(f"revoked {key.key_id} ({key.name})")
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration_s(text: str) -> float | None:
    """`90`, `90s`, `15m`, `24h`, `7d` -> seconds (None: not a duration)."""
    t = text.strip().lower()
    unit = _UNITS.get(t[-1:], None)
    number = t[:-1] if unit else t
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        return None
    return value if value >= 0 else None


def _cmd_keys_rotate(args: argparse.Namespace) -> int:
    from connectors.apikeys import rotate_key

    overlap = _duration_s(args.overlap)
    if overlap is None:
        out(f"--overlap: not a duration: {args.overlap!r} (e.g. 90s, 15m, 24h, 7d)")
        return 2
    old, new, secret = rotate_key(_keys_dsn(), args.key_id, overlap_s=overlap)
    if args.json:
        out(json.dumps({"key": secret, "record": new.as_dict(), "old": old.as_dict()}, indent=2))
        return 0
    until = f"{old.expires_at:%Y-%m-%d %H:%M:%S %Z}" if old.expires_at else "now"
    out(
        f"rotated {old.key_id} ({old.name}): it works until {until}; its successor is "
        f"{new.key_id}, with the same scopes, principal and rate. The new key (shown once):"
    )
    out(secret)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="API keys (stored only as hashes)")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kc = ksub.add_parser("create", help="create a key and print it once")
    kc.add_argument("--name", required=True, help="who or what uses it")
    kc.add_argument("--scopes", required=True, help="comma-separated: ingest,read,admin")
    kc.add_argument("--principal", default="admin", help="admin | shop:<id> | user:<id>")
    kc.add_argument(
        "--rate",
        type=int,
        default=None,
        help="events per second (default: INGEST_DEFAULT_RATE_PER_S)",
    )
    kc.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    kc.set_defaults(func=_cmd_keys_create)
    kl = ksub.add_parser("list", help="list keys (never the secrets)")
    kl.add_argument("--all", action="store_true", help="include revoked keys")
    kl.add_argument("--json", action="store_true")
    kl.set_defaults(func=_cmd_keys_list)
    kr = ksub.add_parser("revoke", help="revoke a key by its id")
    kr.add_argument("key_id")
    kr.set_defaults(func=_cmd_keys_revoke)
    ko = ksub.add_parser(
        "rotate",
        help="a new key like this one; the old one keeps working for an overlap, then ends",
    )
    ko.add_argument("key_id")
    ko.add_argument(
        "--overlap", default="24h", help="how long the old key still works: 90s, 15m, 24h, 7d"
    )
    ko.add_argument("--json", action="store_true", help="print the new key and records as JSON")
    ko.set_defaults(func=_cmd_keys_rotate)
