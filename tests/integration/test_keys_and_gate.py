"""API keys through their command (printed once, stored as a hash, revocable), and the
compatibility gate against the real registry."""

from __future__ import annotations

import hashlib
import json
import uuid

import httpx
import psycopg
import pytest

from core.settings import Settings
from schemas.catalog import EVENT_TYPES
from tests.integration._cli import mohallamart
from tests.integration._support import poll

pytestmark = pytest.mark.integration


def test_key_is_printed_once_stored_as_a_hash_and_revocable(api: str, settings: Settings) -> None:
    name = f"pos-terminal-{uuid.uuid4().hex[:6]}"
    res = mohallamart(
        "keys", "create", "--name", name, "--scopes", "ingest,read", "--principal", "shop:shop_201"
    )
    assert res.returncode == 0, res.stderr
    secret = res.stdout.strip().splitlines()[-1]
    assert secret.startswith("mm_")
    key_id = secret.split("_")[1]

    listing = mohallamart("keys", "list", "--json")
    assert secret not in listing.stdout
    rec = next(k for k in json.loads(listing.stdout) if k["key_id"] == key_id)
    assert rec["name"] == name and rec["scopes"] == ["ingest", "read"]
    assert rec["principal"] == "shop:shop_201"
    with psycopg.connect(settings.postgres_dsn) as conn:
        stored = conn.execute(
            "SELECT key_hash FROM api_keys WHERE key_id = %s", (key_id,)
        ).fetchone()
        dump = conn.execute("SELECT string_agg(t::text, ' ') FROM api_keys t").fetchone()
    assert stored is not None and bytes(stored[0]) == hashlib.sha256(secret.encode()).digest()
    assert dump is not None and secret not in dump[0]

    headers = {"Authorization": f"Bearer {secret}"}

    def post() -> int:
        data = dict(EVENT_TYPES["analytics.tracked"].example, session_id=f"s-{uuid.uuid4().hex}")
        body = {"type": "analytics.tracked", "data": data}
        return httpx.post(f"{api}/v1/events", json=body, headers=headers).status_code

    assert post() == 202
    assert mohallamart("keys", "revoke", key_id).returncode == 0
    poll(lambda: post() == 401, timeout=15, what="the revoked key to be refused")
    assert mohallamart("keys", "create", "--name", "x", "--scopes", "fly").returncode == 1


def test_gate_passes_this_checkout_against_registry_and_git(api: str) -> None:
    # The API registered every schema at start, so the registry side compares all of them.
    res = mohallamart("schemas", "check")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"registry: compared {len(EVENT_TYPES)} registered subject(s)" in res.stdout


def test_registry_refuses_an_incompatible_version_of_a_real_subject(
    api: str, settings: Settings
) -> None:
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    event = EVENT_TYPES["order.created"]
    schema = json.loads(json.dumps(event.schema))
    data = next(f for f in schema["fields"] if f["name"] == "data")
    data["type"]["fields"].append({"name": "loyalty_points", "type": "long"})
    client = SchemaRegistryClient({"url": settings.registry_url})
    assert client.test_compatibility(event.subject, Schema(json.dumps(schema), "AVRO")) is False
