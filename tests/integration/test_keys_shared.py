"""API keys across several API processes (issue 17): a key's rate limit is one bucket for all of
them (Redis), a revocation bites in every one, and a rotated key keeps working beside its
successor for its overlap, then ends."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from core.settings import Settings
from tests.integration._pipeline import Pipeline, example
from tests.integration._support import SECRETS_USED, api_process, poll

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def second_api(api: str, api_env: dict[str, str]) -> Iterator[str]:
    """Another API process beside the session's, on the same stores."""
    with api_process(api_env, "api-second.log") as base:
        yield base


def _post(base: str, key: str) -> httpx.Response:
    ev = Pipeline.event(
        "analytics.tracked", example("analytics.tracked", session_id="sess_keys_shared")
    )
    return httpx.post(f"{base}/v1/events", json=ev, headers={"Authorization": f"Bearer {key}"})


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mohallamart.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_keys_rate_is_one_bucket_across_api_processes(
    api: str, second_api: str, make_rated_key: Any
) -> None:
    # 1 event/s with a burst of 2 s: two events, whichever process takes them, then 429
    key = make_rated_key(1)
    assert _post(api, key).status_code == 202
    assert _post(second_api, key).status_code == 202
    r = _post(api, key)
    assert r.status_code == 429, r.text  # each process alone would still have had a token
    assert r.headers["Retry-After"] == "1"
    assert r.json()["type"] == "/problems/rate-limited"


def test_a_revocation_bites_in_every_process_and_a_rotated_key_ends_after_its_overlap(
    api: str, second_api: str, settings: Settings, make_rated_key: Any
) -> None:
    old = make_rated_key(1000)
    old_id = old.split("_")[1]
    rotated = json.loads(_cli("keys", "rotate", old_id, "--overlap", "4s", "--json"))
    new = rotated["key"]
    SECRETS_USED.add(new)
    assert rotated["record"]["key_id"] != old_id and rotated["old"]["expires_at"]
    # both work in both processes during the overlap
    for base in (api, second_api):
        assert _post(base, old).status_code == 202
        assert _post(base, new).status_code == 202
    # then the old one ends everywhere; its successor works on
    for base in (api, second_api):
        poll(
            lambda b=base: _post(b, old).status_code == 401,
            timeout=30,
            what="the rotated key to end",
        )
        assert _post(base, new).status_code == 202
    # a revocation: both processes refuse the key (within AUTH_CACHE_S)
    _cli("keys", "revoke", rotated["record"]["key_id"])
    for base in (api, second_api):
        poll(
            lambda b=base: _post(b, new).status_code == 401,
            timeout=30,
            what="the revoked key to be refused",
        )


@pytest.fixture
def make_rated_key(settings: Settings) -> Any:
    from connectors.apikeys import create_key
    from connectors.db import migrate

    migrate(settings.postgres_dsn)

    def make(rate: int) -> str:
        _, secret = create_key(
            settings.postgres_dsn,
            name="tests-shared",
            scopes=["ingest"],
            principal="admin",
            rate_per_s=rate,
        )
        SECRETS_USED.add(secret)
        return secret

    return make
