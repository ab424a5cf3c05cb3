"""The data-sync check: drift made behind the pipeline's back (a Redis value changed, a Redis key
deleted, a Typesense document altered) is reported, by `mohallamart check` and by the jobs role's
monitor (with an `ops.drift_detected` event per entity), and repaired by `check --repair`; a
role that is behind (paused) is never reported as drift."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis

from connectors.redis_cache import cache_key
from schemas.catalog import TOPICS
from tests.integration._cli import mohallamart
from tests.integration._pipeline import Pipeline, example, uid
from tests.integration._readside import approved_shop, listed_product
from tests.integration._support import poll

pytestmark = pytest.mark.integration


@pytest.fixture
def rds(pipeline: Pipeline) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(pipeline.settings.redis_dsn)
    yield client
    client.close()


@pytest.fixture
def ts(pipeline: Pipeline) -> Iterator[httpx.Client]:
    s = pipeline.settings
    client = httpx.Client(
        base_url=s.typesense_base_url,
        headers={"X-TYPESENSE-API-KEY": s.typesense_api_key.get_secret_value()},
        timeout=10,
    )
    yield client
    client.close()


def _ts_doc(ts: httpx.Client, pid: str) -> dict[str, Any] | None:
    r = ts.get(f"/collections/products/documents/{pid}")
    return None if r.status_code == 404 else dict(r.json())


def _cached(rds: redis.Redis, kind: str, i: str) -> dict[str, Any] | None:
    p = rds.hget(cache_key(kind, i), "p")
    return None if not p else dict(orjson.loads(p))


def _written(p: Pipeline, rds: redis.Redis, ts: httpx.Client, user: str, pids: list[str]) -> None:
    """Wait until the cache and search roles have written what the test's events made (a
    Typesense restarted by an earlier test may still be replaying its log: minutes)."""
    poll(lambda: _cached(rds, "user", user) is not None, timeout=60, what="the user's view cached")
    for pid in pids:
        poll(
            lambda pid=pid: (_cached(rds, "product", pid) or {}).get("status") == "PUBLISHED",
            timeout=60,
            what=f"{pid}'s published view cached",
        )
        poll(lambda pid=pid: _ts_doc(ts, pid) is not None, timeout=300, what=f"{pid} indexed")


def _check(*args: str) -> tuple[int, dict[str, Any]]:
    r = mohallamart("check", "--json", *args, timeout=300)
    assert r.returncode in (0, 1, 3), r.stdout + r.stderr
    return r.returncode, json.loads(r.stdout)


def _drift(report: dict[str, Any], ids: set[str]) -> set[tuple[str, str, str, str]]:
    return {
        (d["store"], d["kind"], d["entity_id"], d["problem"])
        for s in report["stores"]
        for d in s["drift"]
        if d["entity_id"] in ids
    }


def _scene(p: Pipeline, rds: redis.Redis, ts: httpx.Client) -> tuple[str, list[str]]:
    shop = approved_shop(p)
    user = uid("usr_sync")
    p.post("user.registered", example("user.registered", user_id=user, email=f"{user}@ex.in"))
    pids = [listed_product(p, shop, name=f"Toor Dal {i}", stock=9) for i in range(3)]
    _written(p, rds, ts, user, pids)
    return user, pids


def test_drift_behind_the_pipelines_back_is_reported_and_repaired(
    pipeline: Pipeline, rds: redis.Redis, ts: httpx.Client
) -> None:
    p = pipeline
    user, pids = _scene(p, rds, ts)
    ours = {user, *pids}
    before = _check("--no-events")[1]
    assert _drift(before, ours) == set(), before

    # behind the pipeline's back: a cached value changed, a cached key deleted, a document altered
    view = _cached(rds, "product", pids[0])
    assert view is not None
    rds.hset(cache_key("product", pids[0]), "p", orjson.dumps({**view, "price_paise": 1}))
    assert rds.delete(cache_key("user", user)) == 1
    doc = _ts_doc(ts, pids[1])
    assert doc is not None
    r = ts.patch(f"/collections/products/documents/{pids[1]}", json={"name": "Tampered"})
    assert r.status_code in (200, 201), r.text

    code, found = _check()
    assert code == 1
    assert _drift(found, ours) == {
        ("redis", "product", pids[0], "DIFFERENT"),
        ("redis", "user", user, "MISSING"),
        ("typesense", "product", pids[1], "DIFFERENT"),
    }, found
    details = {d["entity_id"]: d["detail"] for s in found["stores"] for d in s["drift"]}
    assert "price_paise" in details[pids[0]] and "name" in details[pids[1]]
    # one ops.drift_detected per drifted entity, by the operator's check
    events = p.events_of(TOPICS["ops"].name, "ops.drift_detected", ours)
    assert {(e["data"]["store"], e["data"]["entity_id"]) for e in events} == {
        ("REDIS", pids[0]),
        ("REDIS", user),
        ("TYPESENSE", pids[1]),
    }
    assert {e["data"]["detected_by"] for e in events} == {"OPERATOR"}

    code, repaired = _check("--repair", "--no-events")
    assert _drift(repaired, ours) == _drift(found, ours)
    # what users read is PostgreSQL's again
    row = p.row("SELECT price_paise, name FROM products WHERE product_id = %s", pids[0])
    assert row is not None
    assert (_cached(rds, "product", pids[0]) or {}).get("price_paise") == row[0]
    assert (_cached(rds, "user", user) or {}).get("user_id") == user
    assert (_ts_doc(ts, pids[1]) or {}).get("name") == doc["name"]
    after = _check("--no-events")[1]
    assert _drift(after, ours) == set(), after


def test_the_monitor_reports_drift_and_a_paused_role_is_never_drift(
    pipeline: Pipeline, rds: redis.Redis, ts: httpx.Client
) -> None:
    p = pipeline
    user, pids = _scene(p, rds, ts)
    p.workers.start(
        "jobs-sync",
        "jobs",
        env={
            "SYNC_CHECK_EVERY_S": "2",
            "SYNC_CHECK_WAIT_S": "5",
            "JOBS_SCHEDULE_ENABLED": "false",
        },
    )
    try:
        # the monitor: drift behind the pipeline's back -> an event, and the gauge
        rds.hset(cache_key("product", pids[2]), "p", b'{"product_id": "tampered"}')

        def reported() -> list[dict[str, Any]] | None:
            return p.events_of(TOPICS["ops"].name, "ops.drift_detected", [pids[2]]) or None

        events = poll(reported, timeout=90, what="the monitor's ops.drift_detected")
        assert events[0]["data"]["store"] == "REDIS"
        assert events[0]["data"]["problem"] == "DIFFERENT"
        assert events[0]["data"]["detected_by"] == "SCHEDULE"
        assert events[0]["source"] == "mohallamart-jobs"
        gauge = _gauge(p.workers.metrics("jobs-sync"), "redis", "product", "DIFFERENT")
        assert gauge is not None and gauge >= 1
        mohallamart("check", "--store", "redis", "--repair", "--no-events")
        assert (_cached(rds, "product", pids[2]) or {}).get("product_id") == pids[2]

        # a paused cache role: a product changed meanwhile differs in Redis, but is lag
        cache = p.workers.supervisor.children["cache"]
        cache.proc.send_signal(signal.SIGSTOP)
        try:
            p.post(
                "product.updated",
                example(
                    "product.updated",
                    product_id=pids[0],
                    shop_id=(_cached(rds, "product", pids[0]) or {})["shop_id"],
                    name="Toor Dal (new price)",
                    price_paise=9900,
                    mrp_paise=9900,
                ),
            )
            p.wait_row(
                "SELECT 1 FROM products WHERE product_id = %s AND price_paise = 9900",
                pids[0],
                timeout=60,
                what="the projections to apply the update",
            )
            r = mohallamart("check", "--store", "redis", "--wait", "3", "--json", "--no-events")
            assert r.returncode == 3, r.stdout + r.stderr
            paused = json.loads(r.stdout)
            assert _drift(paused, {pids[0]}) == set()
            assert paused["stores"][0]["unverified"] >= 1
            assert paused["stores"][0]["behind"] >= 1
            # the monitor too: a whole cycle after the update, it holds the difference as
            # unverified, and reports no drift for it
            updated = time.time()
            poll(
                lambda: _last_check(p.workers.metrics("jobs-sync")) > updated + 6,
                timeout=90,
                what="a whole monitor cycle after the update",
            )
            assert _unverified(p.workers.metrics("jobs-sync")) >= 1
        finally:
            cache.proc.send_signal(signal.SIGCONT)
        poll(
            lambda: (_cached(rds, "product", pids[0]) or {}).get("price_paise") == 9900,
            timeout=60,
            what="the resumed cache role to write the update",
        )
        poll(
            lambda: _unverified(p.workers.metrics("jobs-sync")) == 0,
            timeout=60,
            what="a monitor cycle after the role caught up",
        )
        assert p.events_of(TOPICS["ops"].name, "ops.drift_detected", [pids[0]]) == []
    finally:
        p.workers.stop("jobs-sync")


def _gauge(metrics: str, store: str, kind: str, problem: str) -> float | None:
    labels = f'kind="{kind}",problem="{problem}",store="{store}"'
    m = re.search(rf"^mohallamart_drift_entities\{{{labels}\}} (\S+)$", metrics, re.M)
    return float(m.group(1)) if m else None


def _unverified(metrics: str) -> float:
    m = re.search(r'^mohallamart_drift_unverified_entities\{store="redis"\} (\S+)$', metrics, re.M)
    return float(m.group(1)) if m else -1.0


def _last_check(metrics: str) -> float:
    m = re.search(r"^mohallamart_drift_last_check_timestamp_seconds (\S+)$", metrics, re.M)
    return float(m.group(1)) if m else 0.0
