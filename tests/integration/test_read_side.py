"""The read side on the real stack: Typesense search, the Redis cache, the read API with its
principals, and live updates (SSE) with Last-Event-ID."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import redis

from connectors.redis_cache import ViewCache, cache_key
from connectors.views import View
from tests.integration._pipeline import Pipeline, example, order_created, uid
from tests.integration._readside import (
    Live,
    approved_shop,
    found_ids,
    listed_product,
    reader,
    search,
)
from tests.integration._support import poll, report

pytestmark = pytest.mark.integration


def _searchable(p: Pipeline, pid: str, **params: Any) -> bool:
    return pid in found_ids(p, **params)


def _product(p: Pipeline, pid: str) -> dict[str, Any] | None:
    r = p.http.get(f"/v1/products/{pid}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_a_product_is_searched_through_its_lifecycle(pipeline: Pipeline) -> None:
    p = pipeline
    shop = approved_shop(p)
    name = f"Malnad Honey {uid('x')[-6:]}"
    t0 = time.monotonic()
    pid = listed_product(p, shop, name=name, category="honey", price=34_000, stock=2)

    # found by a misspelt query ("Malnad" -> "Malnaad", "Honey" -> "Hony"), with facet counts
    misspelt = name.replace("Malnad", "Malnaad").replace("Honey", "Hony")
    poll(lambda: _searchable(p, pid, q=misspelt), timeout=30, what="the product to be searchable")
    report(f"time to searchable (API accept -> found): {time.monotonic() - t0:.3f} s")
    body = search(p, q=misspelt, shop=shop)
    assert body["found"] == 1 and body["hits"][0]["price_paise"] == 34_000
    assert {"value": "honey", "count": 1} in body["facets"]["category"]
    assert {"value": shop, "count": 1} in body["facets"]["shop_id"]
    # price range and distance filters
    assert pid in found_ids(p, q=name, min_price_paise=30_000, max_price_paise=35_000)
    assert pid not in found_ids(p, q=name, max_price_paise=20_000)
    assert pid in found_ids(p, q=name, near="12.93,77.58", radius_km=2, sort="distance")
    assert pid not in found_ids(p, q=name, near="19.07,72.87", radius_km=50)
    # autocomplete: a prefix with a typo
    r = p.http.get("/v1/search/autocomplete", params={"q": name.split()[0][:-1] + "x"})
    assert r.status_code == 200, r.text

    # sold out: leaves search; restocked: back
    p.post(
        "product.stock_set",
        {"product_id": pid, "shop_id": shop, "quantity": 0, "reason": "STOCKTAKE"},
    )
    poll(lambda: not _searchable(p, pid, q=name), timeout=30, what="out of stock -> not found")
    p.post(
        "product.stock_set",
        {"product_id": pid, "shop_id": shop, "quantity": 7, "reason": "CORRECTION"},
    )
    poll(lambda: _searchable(p, pid, q=name), timeout=30, what="back in stock -> found")

    # a price change: in search and in the cached read
    p.post(
        "product.updated",
        example(
            "product.updated",
            product_id=pid,
            shop_id=shop,
            name=name,
            category="honey",
            price_paise=31_000,
            mrp_paise=34_000,
        ),
    )
    poll(
        lambda: search(p, q=name, shop=shop)["hits"][0]["price_paise"] == 31_000,
        timeout=30,
        what="the new price in search",
    )
    poll(lambda: (_product(p, pid) or {}).get("price_paise") == 31_000, timeout=30, what="cache")
    assert _product(p, pid)["stock"] == 7  # type: ignore[index]

    # archived: gone from search and from the read API
    p.post("product.archived", {"product_id": pid, "shop_id": shop, "reason": "Season over"})
    poll(lambda: not _searchable(p, pid, q=name), timeout=30, what="archived -> not found")
    poll(lambda: _product(p, pid) is None, timeout=30, what="archived -> 404")
    r = p.http.get(f"/v1/products/{pid}/stock")
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"


def test_a_shop_that_is_not_approved_has_nothing_searchable(pipeline: Pipeline) -> None:
    p = pipeline
    shop = approved_shop(p, approve=False)
    name = f"Coorg Coffee {uid('x')[-6:]}"
    pid = listed_product(p, shop, name=name, category="coffee", stock=9)
    # the row is there and the search role has read past every product event: still not found
    poll(lambda: (_product(p, pid) or {}).get("status") == "PUBLISHED", timeout=30, what="row")
    p.caught_up("search", ["product", "shop", "shopkeeper"])
    assert not _searchable(p, pid, q=name)
    assert p.http.get(f"/v1/shops/{shop}").json()["approval_status"] == "PENDING"
    near = p.http.get("/v1/shops/near", params={"lat": 12.925, "lng": 77.5838, "radius_km": 1})
    assert shop not in [s["shop_id"] for s in near.json()["shops"]]
    # approved: the shop and its product become searchable
    p.post("shopkeeper.approved", example("shopkeeper.approved", shop_id=shop))
    poll(lambda: _searchable(p, pid, q=name), timeout=30, what="approved -> found")

    def shop_near() -> bool:
        r = p.http.get("/v1/shops/near", params={"lat": 12.925, "lng": 77.5838, "radius_km": 1})
        return shop in [s["shop_id"] for s in r.json()["shops"]]

    poll(shop_near, timeout=30, what="the approved shop near the point")


def test_a_read_never_returns_the_old_value_once_the_update_is_processed(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    shop = approved_shop(p)
    pid = listed_product(p, shop, name="Byadgi Chilli Powder", category="spices", price=5000)
    poll(lambda: _product(p, pid), timeout=30, what="the product")
    r = redis.Redis.from_url(p.settings.redis_dsn)
    stop = threading.Event()
    seen: list[int] = []

    def hammer() -> None:  # reads (and read-through fills) racing the updates
        with reader(p, p.key) as c:
            while not stop.is_set():
                r.delete(cache_key("product", pid))  # force a fill from PostgreSQL
                got = c.get(f"/v1/products/{pid}")
                if got.status_code == 200:
                    seen.append(got.json()["price_paise"])

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for price in range(5001, 5021):
            p.post(
                "product.updated",
                example(
                    "product.updated",
                    product_id=pid,
                    shop_id=shop,
                    price_paise=price,
                    name="Byadgi Chilli Powder",
                    category="spices",
                ),
            )
        p.wait_row(
            "SELECT price_paise FROM products WHERE product_id = %s",
            pid,
            until=lambda row: row[0] == 5020,
            what="the last price in PostgreSQL",
        )
        p.caught_up("cache", ["product"])
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert seen, "the racing reads saw nothing"
    # the cache role has processed the last update: every read from now on is the new value
    for _ in range(50):
        assert _product(p, pid)["price_paise"] == 5020  # type: ignore[index]

    # the racing reads deleted the view; a read fills it again, unless a Redis call of the API
    # timed out under load (it then leaves Redis alone for CACHE_DOWN_S): read until it is there
    def filled() -> bytes | None:
        _product(p, pid)
        return r.hget(cache_key("product", pid), "p")  # type: ignore[return-value]

    view = poll(filled, timeout=15, interval=0.5, what="the view filled again")
    assert orjson.loads(view)["price_paise"] == 5020


def test_a_stale_fill_never_overwrites_a_newer_cached_value(pipeline: Pipeline) -> None:
    """The compare-and-set itself, with the real Redis: what a fill that read PostgreSQL before an
    update would write, after the cache role wrote the update."""
    p = pipeline

    def view(ver: str, seq: int, price: int) -> View:
        return View("product", "prd_cas", (ver, f"{seq:020d}"), {"price_paise": price})

    async def run() -> tuple[list[bool], bytes | None]:
        cache = ViewCache(p.settings.redis_dsn, ttl_s=60)
        try:
            await cache.client.delete(cache_key("product", "prd_cas"))
            results = []
            results += await cache.put([view("0002", 1, 200)])  # the newer value, first
            results += await cache.put([view("0001", 1, 100)])  # an older fill: refused
            results += await cache.put([view("0002", 0, 100)])  # older stock version: refused
            results += await cache.put([view("0002", 1, 200)])  # the same: TTL only
            results += await cache.put([view("0002", 2, 190)])  # newer stock: applied
            return results, await cache.get("product", "prd_cas")
        finally:
            await cache.close()

    results, value = asyncio.run(run())
    assert results == [True, False, False, False, True]
    assert value is not None and orjson.loads(value) == {"price_paise": 190}


def test_keys_see_only_their_principal(pipeline: Pipeline, make_key: Any) -> None:
    p = pipeline
    shop, other_shop = approved_shop(p), approved_shop(p)
    u1, u2 = uid("usr"), uid("usr")
    for u in (u1, u2):
        p.post("user.registered", example("user.registered", user_id=u, email=f"{u}@example.in"))
    pid = listed_product(p, shop, name="Mysore Pak", category="sweets", stock=50)
    o1, o2 = uid("ord"), uid("ord")
    for o, u in ((o1, u1), (o2, u2)):
        ev = order_created(o, shop, {pid: 1})
        ev["data"]["user_id"] = u
        p.post_event(ev)
    p.wait_row(
        "SELECT count(*) FROM orders WHERE order_id = ANY(%s)",
        [o1, o2],
        until=lambda row: row[0] == 2,
        what="both orders",
    )
    user1 = reader(p, make_key(["read"], f"user:{u1}"))
    shop_key = reader(p, make_key(["read"], f"shop:{shop}"))
    other = reader(p, make_key(["read"], f"shop:{other_shop}"))

    poll(lambda: user1.get(f"/v1/users/{u1}").status_code == 200, timeout=30, what="own user")
    assert user1.get(f"/v1/users/{u1}").json()["email"] == f"{u1}@example.in"
    assert user1.get(f"/v1/orders/{o1}").json()["user_id"] == u1
    for path in (f"/v1/users/{u2}", f"/v1/orders/{o2}", "/v1/users/usr_nobody", "/v1/orders/x"):
        r = user1.get(path)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == 404
    # a shop key: its shop's orders, no users, not another shop's orders
    assert shop_key.get(f"/v1/orders/{o2}").json()["shop_id"] == shop
    assert shop_key.get(f"/v1/users/{u1}").status_code == 404
    assert other.get(f"/v1/orders/{o1}").status_code == 404
    # the catalogue is open to every read key
    assert other.get(f"/v1/shops/{shop}").status_code == 200
    poll(lambda: other.get(f"/v1/products/{pid}").status_code == 200, timeout=30, what="product")
    # an ingest-only key cannot read
    ingest_only = reader(p, make_key(["ingest"], "admin"))
    assert ingest_only.get(f"/v1/shops/{shop}").status_code == 403

    # live: another user's stream is 404; another user's order events never arrive
    r = user1.get("/v1/live", params={"user": u2})
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    with Live(p.api, make_key(["read"], f"user:{u1}"), {"order": [o1, o2]}) as stream:
        coords = p.http.post(
            "/v1/events",
            json=p.event(
                "order.cancelled", example("order.cancelled", order_id=o2, shop_id=shop, user_id=u2)
            ),
        ).json()
        p.post("order.cancelled", example("order.cancelled", order_id=o1, shop_id=shop, user_id=u1))
        got = stream.take(1)
        # the stream has gone past the other user's event (its partition's position is beyond
        # that offset) and did not deliver it
        deadline = time.monotonic() + 30
        while True:
            ids = [got[-1][0]] + [e[0] for e in list(stream.events.queue)]
            pos = [int(x) for x in ids[-1].split(".")]
            # offsets of the order topic come first in the position vector
            if pos[coords["partition"]] > coords["offset"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        seen = got + [stream.events.get_nowait() for _ in range(stream.events.qsize())]
        assert [e[2]["order_id"] for e in seen if e[1] == "order.cancelled"] == [o1]
        assert all(e[2]["user_id"] == u1 for e in seen)


def test_live_order_status_in_order_and_resume_with_last_event_id(pipeline: Pipeline) -> None:
    p = pipeline
    shop = approved_shop(p)
    pid = listed_product(p, shop, name="Filter Coffee Powder", category="coffee", stock=10)
    p.wait_row("SELECT 1 FROM inventory_movements WHERE product_id = %s", pid, what="stock")
    oid, user = uid("ord"), uid("usr")
    ev = order_created(oid, shop, {pid: 1})
    ev["data"]["user_id"] = user
    with Live(p.api, p.key, {"user": user}) as first:
        p.post_event(ev)  # -> PENDING, then the stock role's order.accepted -> PROCESSING
        got = first.take(2)
    assert [(e[1], e[2]["status"]) for e in got] == [
        ("order.created", "PENDING"),
        ("order.accepted", "PROCESSING"),
    ]
    last_id = got[-1][0]
    # while disconnected: completed, then refunded
    p.post(
        "order.status_changed",
        example(
            "order.status_changed",
            order_id=oid,
            shop_id=shop,
            user_id=user,
            from_status="PROCESSING",
            to_status="COMPLETED",
        ),
    )
    p.post(
        "order.refunded",
        example("order.refunded", order_id=oid, shop_id=shop, user_id=user, returned_items=[]),
    )
    p.wait_row(
        "SELECT status FROM orders WHERE order_id = %s",
        oid,
        until=lambda r: r[0] == "REFUNDED",
        what="refunded",
    )
    resumed = Live(p.api, p.key, {"user": user}, last_event_id=last_id)
    with resumed:
        missed = resumed.take(2)
        # then live again: the next event of this user is the next one received (no repeat)
        other = uid("ord")
        p.post(
            "order.cancelled",
            example("order.cancelled", order_id=other, shop_id=shop, user_id=user),
        )
        (nxt,) = resumed.take(1)
    assert [(e[1], e[2]["status"]) for e in missed] == [
        ("order.status_changed", "COMPLETED"),
        ("order.refunded", "REFUNDED"),
    ]
    assert (nxt[1], nxt[2]["order_id"]) == ("order.cancelled", other)
    assert all(e[2]["order_id"] == oid for e in missed)
    # a bad position is a 400 naming the header
    bad = reader(p, p.key).get(
        "/v1/live", params={"user": user}, headers={"Last-Event-ID": "1.2.x"}
    )
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["detail"]


def test_reindex_while_searching_never_answers_empty(pipeline: Pipeline) -> None:
    p = pipeline
    shop = approved_shop(p)
    tag = uid("x")[-6:]
    events = []
    t0 = datetime.now(UTC)
    for i in range(300):
        pid = f"prd_rx_{tag}_{i:04d}"
        created, published = (
            t0 + timedelta(milliseconds=2 * i),
            t0 + timedelta(milliseconds=2 * i + 1),
        )
        events.append(
            p.event(
                "product.created",
                example(
                    "product.created",
                    product_id=pid,
                    shop_id=shop,
                    name=f"Ragi Flour {tag} {i}",
                    category="flour",
                    price_paise=1000 + i,
                    initial_stock=3,
                ),
                at=created,
            )
        )
        # a version is (occurred_at, id): the publication must be later than the creation
        events.append(
            p.event("product.published", {"product_id": pid, "shop_id": shop}, at=published)
        )
    p.post_batch(events)
    poll(
        lambda: search(p, q="Ragi", shop=shop, per_page=1)["found"] == 300,
        timeout=60,
        what="300 products searchable",
    )

    stop = threading.Event()
    answers: list[tuple[int, int]] = []

    def query() -> None:
        with reader(p, p.key) as c:
            while not stop.is_set():
                r = c.get("/v1/search/products", params={"q": "Ragi", "shop": shop, "per_page": 1})
                answers.append((r.status_code, r.json().get("found", -1)))

    threads = [threading.Thread(target=query) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        out = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "mohallamart.cli", "search", "reindex", "--json"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert out.returncode == 0, out.stderr
    figures = orjson.loads(out.stdout[out.stdout.index("[") :])
    report(f"reindex: {figures}")
    assert {f["alias"] for f in figures} == {"products", "shops"}
    assert len(answers) > 10
    assert all(a == (200, 300) for a in answers), [a for a in answers if a != (200, 300)][:5]


def test_a_slow_live_client_is_disconnected_and_never_holds_up_the_others(
    pipeline: Pipeline,
) -> None:
    import socket

    p = pipeline
    shop = approved_shop(p)
    pid = listed_product(p, shop, name="Jaggery Cubes", category="sweeteners", stock=1)
    p.wait_row("SELECT 1 FROM inventory_movements WHERE product_id = %s", pid, what="stock")
    host, port = p.api.removeprefix("http://").split(":")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and it never reads
    slow.connect((host, int(port)))
    slow.sendall(
        f"GET /v1/live?product={pid} HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {p.key}\r\n\r\n".encode()
    )
    # more than the server's socket buffer can hold for it (up to 4 MiB) plus its queue
    n = 20_000
    with Live(p.api, p.key, {"product": pid}) as fast:
        time.sleep(0.5)  # let the slow client's subscription register before the burst
        p.post_batch(
            [
                p.event(
                    "product.stock_adjusted",
                    {"product_id": pid, "shop_id": shop, "delta": 1, "reason": "RESTOCK"},
                )
                for _ in range(n)
            ]
        )
        got = fast.take(n, timeout=120)
        if got[0][2]["reason"] == "INITIAL":  # the first stock, if the hub read it after we came
            got = got[1:] + fast.take(1)
    # the fast client got every change, in order
    assert [e[2]["stock"] for e in got] == list(range(2, n + 2))
    # the slow one was cut off: reading what reached its socket ends in EOF
    slow.settimeout(5)
    received, deadline = 0, time.monotonic() + 60
    while time.monotonic() < deadline and (chunk := slow.recv(65536)):
        received += len(chunk)
    eof = time.monotonic() < deadline
    slow.close()
    assert eof, "the slow client's connection was never closed"
    assert received < n * 200, "the slow client received everything: it was not slow"
    metrics = p.http.get("/metrics").text
    assert re.search(r"mohallamart_api_live_slow_disconnects_total [1-9]", metrics), metrics[-2000:]
