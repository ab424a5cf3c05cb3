"""Redis, then Typesense, stopped for 12 s each during a load: nothing lost, the projections
never pause, reads keep answering, and afterwards the cache and search agree with PostgreSQL."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import httpx
import orjson
import pytest
import redis

from connectors.redis_cache import cache_key
from schemas.catalog import TOPICS
from tests.integration._cli import mohallamart
from tests.integration._pipeline import Pipeline, example, uid
from tests.integration._readside import approved_shop
from tests.integration._support import poll, report

pytestmark = pytest.mark.integration


class _Load:
    """Posts, every 0.3 s, two new published products and a price change of an earlier one."""

    def __init__(self, p: Pipeline, shop: str) -> None:
        self.p, self.shop = p, shop
        self.products: list[str] = []
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        p, n = self.p, 0
        while not self.stop.is_set():
            batch = []
            for _ in range(2):
                pid = uid("prd_out")
                batch.append(
                    p.event(
                        "product.created",
                        example(
                            "product.created",
                            product_id=pid,
                            shop_id=self.shop,
                            name=f"Sona Masoori Rice {pid[-4:]}",
                            category="rice",
                            price_paise=6000,
                            initial_stock=20,
                        ),
                    )
                )
                batch.append(
                    p.event("product.published", {"product_id": pid, "shop_id": self.shop})
                )
                self.products.append(pid)
            if len(self.products) > 4:
                n += 1
                old = self.products[n % (len(self.products) - 2)]
                batch.append(
                    p.event(
                        "product.updated",
                        example(
                            "product.updated",
                            product_id=old,
                            shop_id=self.shop,
                            name=f"Sona Masoori Rice {old[-4:]}",
                            category="rice",
                            price_paise=6000 + n,
                        ),
                    )
                )
            r = p.http.post("/v1/events/batch", json={"events": batch})
            if r.status_code != 202:
                self.errors.append(r.text)
            time.sleep(0.3)


def _gauges(metrics: str, role: str) -> list[float]:
    return [
        float(v)
        for v in re.findall(
            rf'mohallamart_worker_dependency_down\{{role="{role}",[^}}]*\}} ([0-9.]+)', metrics
        )
    ]


def _outage(p: Pipeline, load: _Load, service: str, role: str, check: Any) -> None:
    """Stop `service` for 12 s while the load runs; meanwhile the projections keep applying
    (rows of products posted during the outage appear) and never report a dependency down,
    while `role` does (it waits, partitions paused, rather than dead-lettering)."""
    out = mohallamart("stack", "stop", service)
    assert out.returncode == 0, out.stderr
    down_at = time.monotonic()
    try:
        first = len(load.products)
        waited = False
        while time.monotonic() - down_at < 12:
            check()
            assert max(_gauges(p.workers.metrics("projections"), "projections"), default=0) == 0
            waited = waited or max(_gauges(p.workers.metrics(role), role), default=0) == 1
            time.sleep(1)
        assert waited, f"the {role} role never reported {service} down"
        during = load.products[first:]
        assert during, "the load posted nothing during the outage"
        p.wait_row(
            "SELECT count(*) FROM products WHERE product_id = ANY(%s) AND status = 'PUBLISHED'",
            during[:-2],
            until=lambda r: r[0] == len(during) - 2,
            timeout=15,
            what=f"the projections to keep applying while {service} is down",
        )
    finally:
        out = mohallamart("stack", "start", service)
        assert out.returncode == 0, out.stderr


@pytest.mark.restarts_stack
def test_redis_then_typesense_down_for_12_s_during_a_load(pipeline: Pipeline) -> None:
    p = pipeline
    shop = approved_shop(p)
    load = _Load(p, shop)
    load.thread.start()
    try:
        poll(lambda: len(load.products) >= 6, timeout=30, what="the load to start")
        known = load.products[0]
        poll(
            lambda: p.http.get(f"/v1/products/{known}").status_code == 200,
            timeout=30,
            what="a product to be readable",
        )

        def reads_answer() -> None:  # from PostgreSQL while Redis is down
            r = p.http.get(f"/v1/products/{known}")
            assert r.status_code == 200, r.text

        _outage(p, load, "redis", "cache", reads_answer)

        def search_says_unavailable() -> None:
            r = p.http.get("/v1/search/products", params={"q": "rice", "shop": shop})
            assert r.status_code in (200, 503), r.text
            if r.status_code == 503:
                assert r.headers["content-type"] == "application/problem+json"
            reads_answer()

        _outage(p, load, "typesense", "search", search_says_unavailable)
    finally:
        load.stop.set()
        load.thread.join(30)
    assert load.errors == []
    products = list(load.products)
    recovered_at = time.monotonic()

    # afterwards: every product in PostgreSQL, and the cache and search agree with it
    p.wait_row(
        "SELECT count(*) FROM products WHERE product_id = ANY(%s)",
        products,
        until=lambda r: r[0] == len(products),
        timeout=60,
        what="every product in PostgreSQL",
    )
    rows = {
        pid: price
        for pid, price in p.rows(
            "SELECT product_id, price_paise FROM products WHERE product_id = ANY(%s) "
            "AND status = 'PUBLISHED' AND stock > 0",
            products,
        )
    }
    assert len(rows) == len(products)
    r = redis.Redis.from_url(p.settings.redis_dsn)

    def cache_agrees() -> bool:
        for pid, price in rows.items():
            raw = r.hget(cache_key("product", pid), "p")
            if raw is None or orjson.loads(raw)["price_paise"] != price:
                return False
        return True

    poll(cache_agrees, timeout=90, interval=1, what="the cache to agree with PostgreSQL")
    s = p.settings
    ts = httpx.Client(
        base_url=s.typesense_base_url,
        headers={"X-TYPESENSE-API-KEY": s.typesense_api_key.get_secret_value()},
    )

    def search_agrees() -> bool:
        found: dict[str, int] = {}
        page = 1
        while True:
            body = ts.get(
                "/collections/products/documents/search",
                params={
                    "q": "*",
                    "filter_by": f"shop_id:={shop}",
                    "per_page": 250,
                    "page": page,
                },
            ).json()
            found.update({h["document"]["id"]: h["document"]["price_paise"] for h in body["hits"]})
            if len(body["hits"]) < 250:
                return found == rows
            page += 1

    poll(search_agrees, timeout=90, interval=1, what="search to agree with PostgreSQL")
    report(
        f"outage test: {len(products)} products posted; cache and search agreed with "
        f"PostgreSQL {time.monotonic() - recovered_at:.1f} s after the load stopped"
    )
    assert max(_gauges(p.workers.metrics("cache"), "cache"), default=0) == 0
    assert max(_gauges(p.workers.metrics("search"), "search"), default=0) == 0
    # nothing was dead-lettered on the way
    assert p.records(f"{TOPICS['product'].name}.dlq", keys=products) == []
