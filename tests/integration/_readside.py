"""Helpers for the read-side tests: a catalogue to search, reads with a key, an SSE client."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.integration._pipeline import Pipeline, example, uid

__all__ = ["Live", "approved_shop", "listed_product", "reader", "search"]


def approved_shop(
    p: Pipeline, *, approve: bool = True, lat: float = 12.925, lng: float = 77.5838
) -> str:
    shop = uid("shop")
    p.post("shop.created", example("shop.created", shop_id=shop, lat=lat, lng=lng))
    p.post("shopkeeper.applied", example("shopkeeper.applied", shop_id=shop))
    if approve:
        p.post("shopkeeper.approved", example("shopkeeper.approved", shop_id=shop))
    return shop


def listed_product(
    p: Pipeline,
    shop: str,
    *,
    name: str,
    category: str = "dairy",
    price: int = 2600,
    stock: int = 5,
    publish: bool = True,
) -> str:
    pid = uid("prd")
    p.post(
        "product.created",
        example(
            "product.created",
            product_id=pid,
            shop_id=shop,
            name=name,
            category=category,
            price_paise=price,
            mrp_paise=price,
            initial_stock=stock,
        ),
    )
    if publish:
        p.post("product.published", {"product_id": pid, "shop_id": shop})
    return pid


def reader(p: Pipeline, key: str) -> httpx.Client:
    return httpx.Client(base_url=p.api, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def search(p: Pipeline, **params: Any) -> dict[str, Any]:
    r = p.http.get("/v1/search/products", params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def found_ids(p: Pipeline, **params: Any) -> list[str]:
    return [h["product_id"] for h in search(p, **params)["hits"]]


@dataclass
class Live:
    """An SSE client in a thread: events as (id, event, data) in a queue."""

    base: str
    key: str
    params: dict[str, Any]
    last_event_id: str | None = None
    events: queue.Queue[tuple[str, str, dict[str, Any]]] = field(default_factory=queue.Queue)
    status: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Live:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "the live stream did not answer"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(20)

    def _run(self) -> None:
        import orjson

        headers = {"Authorization": f"Bearer {self.key}"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        # the test API sends a keep-alive every second (LIVE_HEARTBEAT_S): the loop checks _stop
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "GET", f"{self.base}/v1/live", params=self.params, headers=headers
            ) as resp,
        ):
            self.status = resp.status_code
            self._ready.set()
            if resp.status_code != 200:
                return
            ev: dict[str, str] = {}
            lines = resp.iter_lines()
            while not self._stop.is_set():
                try:
                    line = next(lines)
                except (StopIteration, httpx.HTTPError):
                    return
                if line == "":
                    if "data" in ev and "event" in ev:
                        self.events.put((ev.get("id", ""), ev["event"], orjson.loads(ev["data"])))
                    ev = {}
                elif not line.startswith(":"):
                    name, _, value = line.partition(":")
                    ev[name] = value.removeprefix(" ")

    def take(self, n: int, timeout: float = 30) -> list[tuple[str, str, dict[str, Any]]]:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            assert left > 0, f"got {len(out)} of {n} live events: {out}"
            with contextlib.suppress(queue.Empty):
                out.append(self.events.get(timeout=min(left, 1)))
        return out


@contextlib.contextmanager
def live(p: Pipeline, key: str, **params: Any) -> Iterator[Live]:
    with Live(p.api, key, params) as client:
        yield client
