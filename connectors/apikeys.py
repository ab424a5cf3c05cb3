"""API keys: created, listed and revoked by `mohallamart keys ...`; stored only as hashes.

A key looks like `mm_<key id>_<secret>`. The key id is public (listings, logs); the whole key is
shown once, at creation, and only its SHA-256 is kept (keys are 190 random bits, so a fast hash
is enough: there is nothing to brute-force).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from core.errors import PipelineError

__all__ = [
    "SCOPES",
    "ApiKey",
    "ApiKeyError",
    "create_key",
    "hash_key",
    "list_keys",
    "lookup_key",
    "revoke_key",
    "rotate_key",
]

SCOPES = ("ingest", "read", "admin")
_PRINCIPAL = re.compile(r"^(admin|shop:[A-Za-z0-9_.:-]+|user:[A-Za-z0-9_.:-]+)$")


class ApiKeyError(PipelineError):
    """A key could not be created, found or revoked."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    scopes: tuple[str, ...]
    principal: str
    rate_per_s: int | None
    created_at: datetime
    revoked_at: datetime | None
    #: a rotated key's end (it works until then, beside its successor); None: no end
    expires_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "scopes": list(self.scopes),
            "principal": self.principal,
            "rate_per_s": self.rate_per_s,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


_COLUMNS = "key_id, name, scopes, principal, rate_per_s, created_at, revoked_at, expires_at"
#: a key that works: not revoked, not past its end
_LIVE = "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"


def _row(row: tuple[Any, ...]) -> ApiKey:
    return ApiKey(row[0], row[1], tuple(row[2]), row[3], row[4], row[5], row[6], row[7])


def create_key(
    dsn: str, *, name: str, scopes: list[str], principal: str, rate_per_s: int | None = None
) -> tuple[ApiKey, str]:
    """Create a key; return it and the secret key string (shown once, never stored)."""
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ApiKeyError(f"scopes must be some of {', '.join(SCOPES)} (got {', '.join(scopes)})")
    if not _PRINCIPAL.match(principal):
        raise ApiKeyError("principal must be `admin`, `shop:<id>` or `user:<id>`")
    key_id = secrets.token_hex(4)
    key = f"mm_{key_id}_{secrets.token_urlsafe(24)}"
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"INSERT INTO api_keys (key_id, key_hash, name, scopes, principal, rate_per_s)"
            f" VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
            (key_id, hash_key(key), name, list(dict.fromkeys(scopes)), principal, rate_per_s),
        ).fetchone()
    assert row is not None
    return _row(row), key


def list_keys(dsn: str, *, include_revoked: bool = False) -> list[ApiKey]:
    where = "" if include_revoked else f" WHERE {_LIVE}"
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM api_keys{where} ORDER BY created_at"
        ).fetchall()
    return [_row(r) for r in rows]


def revoke_key(dsn: str, key_id: str) -> ApiKey:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = %s"
            f" RETURNING {_COLUMNS}",
            (key_id,),
        ).fetchone()
    if row is None:
        raise ApiKeyError(f"no API key with id {key_id!r} (see `mohallamart keys list`)")
    return _row(row)


def rotate_key(dsn: str, key_id: str, *, overlap_s: float) -> tuple[ApiKey, ApiKey, str]:
    """A new key like `key_id` (name, scopes, principal, rate), and the old one's end set to
    `overlap_s` from now (both work until then), in one transaction. Returns (old, new, the new
    secret, shown once)."""
    new_id = secrets.token_hex(4)
    secret = f"mm_{new_id}_{secrets.token_urlsafe(24)}"
    with psycopg.connect(dsn) as conn, conn.transaction():
        old = conn.execute(
            f"UPDATE api_keys SET expires_at = LEAST(coalesce(expires_at, 'infinity'), "
            f"now() + make_interval(secs => %s)) WHERE key_id = %s AND {_LIVE} "
            f"RETURNING {_COLUMNS}",
            (overlap_s, key_id),
        ).fetchone()
        if old is None:
            raise ApiKeyError(f"no live API key with id {key_id!r} (see `mohallamart keys list`)")
        row = conn.execute(
            f"INSERT INTO api_keys (key_id, key_hash, name, scopes, principal, rate_per_s) "
            f"SELECT %s, %s, name, scopes, principal, rate_per_s FROM api_keys "
            f"WHERE key_id = %s RETURNING {_COLUMNS}",
            (new_id, hash_key(secret), key_id),
        ).fetchone()
    assert row is not None
    return _row(old), _row(row), secret


async def lookup_key(conn: psycopg.AsyncConnection[Any], key: str) -> ApiKey | None:
    """The live key (not revoked, not past its end) matching `key`, or None."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM api_keys WHERE key_hash = %s AND {_LIVE}",
        (hash_key(key),),
    )
    row = await cur.fetchone()
    return _row(row) if row else None
