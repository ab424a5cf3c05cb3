"""The drill's load: a client posting events through the API without pause, and the ledger of
what the API acknowledged (the verifier's truth).

Like a well-behaved client, each poster retries an event answered 503 or 429 (or a connection
error) with the same id until it is acknowledged (202, or 200 "duplicate": the same event
accepted before); so every event the ledger holds was acknowledged, and nothing the load made is
given up. Every answer is counted by status, with the time it came, so a row can ask what was
answered while its fault lasted.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

__all__ = ["Catalogue", "Ledger", "Load", "envelope"]

#: an order's lines: its products and quantities
Items = dict[str, int]


def envelope(type_: str, data: dict[str, Any], *, id: str | None = None) -> dict[str, Any]:
    """An event as a client posts it (only what the API requires, plus its id)."""
    at = datetime.now(UTC)
    return {
        "id": id or str(uuid.uuid4()),
        "type": type_,
        "occurred_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "source": "drill",
        "data": data,
    }


@dataclass
class Catalogue:
    """The drill's shops, products (each with a large initial stock: no order is refused for
    want of stock) and the one customer whose emails are counted."""

    tag: str
    shops: dict[str, list[str]]
    initial: int
    user: str  # receives the drill's email notifications (counted)
    email: str
    quiet: str  # places the orders, every notification off (order emails are not counted)

    @classmethod
    def make(cls, shops: int = 8, products: int = 5, initial: int = 1_000_000) -> Catalogue:
        tag = f"drill{uuid.uuid4().hex[:8]}"
        catalogue = {
            f"shop_{tag}_{s}": [f"prd_{tag}_{s}_{i}" for i in range(products)] for s in range(shops)
        }
        user = f"usr_{tag}"
        return cls(tag, catalogue, initial, user, f"{user}@example.in", f"usr_{tag}_quiet")

    @property
    def products(self) -> list[str]:
        return [pid for pids in self.shops.values() for pid in pids]

    def seed_events(self) -> list[dict[str, Any]]:
        """The user (email only) and the products, before the load."""
        out = [
            envelope(
                "user.registered",
                {
                    "user_id": user,
                    "name": "Drill Customer",
                    "email": f"{user}@example.in",
                    "preferences": {
                        "email_opt_in": opt_in,
                        "sms_opt_in": False,
                        "push_opt_in": False,
                    },
                },
            )
            for user, opt_in in ((self.user, True), (self.quiet, False))
        ]
        for shop, pids in self.shops.items():
            for pid in pids:
                out.append(
                    envelope(
                        "product.created",
                        {
                            "product_id": pid,
                            "shop_id": shop,
                            "name": f"Drill item {pid[-3:]}",
                            "category": "staples",
                            "price_paise": 5000,
                            "unit": "1 kg",
                            "initial_stock": self.initial,
                        },
                    )
                )
        return out


@dataclass
class Ledger:
    """Every event the API acknowledged, by what it means for the stores."""

    orders: dict[str, Items] = field(default_factory=dict)
    #: product -> the stock movements its acknowledged events make (the product's creation one)
    movements: Counter[str] = field(default_factory=Counter)
    #: product -> the stock every acknowledged event leads to
    stock: dict[str, int] = field(default_factory=dict)
    #: the titles of the acknowledged email notifications (one email each)
    emails: set[str] = field(default_factory=set)
    #: order -> (shop, occurred_at in ms, total in paise, units): the analytics oracle's input
    sales: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ev: dict[str, Any]) -> None:
        data = ev["data"]
        with self._lock:
            if ev["id"] in self.acked:
                return  # the same event twice (a duplicate the API recognised): counted once
            self.acked.add(ev["id"])
            kind = ev["type"]
            if kind == "product.created":
                self.stock[data["product_id"]] = int(data["initial_stock"])
                self.movements[data["product_id"]] += 1
            elif kind == "order.created":
                items = {line["product_id"]: int(line["quantity"]) for line in data["items"]}
                self.orders[data["order_id"]] = items
                at = datetime.fromisoformat(ev["occurred_at"].replace("Z", "+00:00"))
                self.sales[data["order_id"]] = (
                    data["shop_id"],
                    int(at.timestamp() * 1000),
                    int(data["total_paise"]),
                    sum(items.values()),
                )
                for pid, q in items.items():
                    self.stock[pid] -= q
                    self.movements[pid] += 1
            elif kind == "product.stock_adjusted":
                self.stock[data["product_id"]] += int(data["delta"])
                self.movements[data["product_id"]] += 1
            elif kind == "notification.requested":
                self.emails.add(data["title"])

    def sales_snapshot(self) -> dict[str, tuple[str, int, int, int]]:
        with self._lock:
            return dict(self.sales)

    def snapshot(self) -> tuple[dict[str, Items], dict[str, int], Counter[str], set[str]]:
        with self._lock:
            return dict(self.orders), dict(self.stock), Counter(self.movements), set(self.emails)


@dataclass
class Answer:
    sent: float  # time.monotonic() when the request was sent
    at: float  # ... and when its answer came
    status: int  # 0: no answer (connection refused, timeout)


class Load:
    """`threads` posters, each posting one event at a time, about `rate` events/s in all."""

    def __init__(
        self,
        api: str,
        key: str,
        catalogue: Catalogue,
        ledger: Ledger,
        *,
        rate: float = 150.0,
        threads: int = 6,
        seed: int = 17,
    ) -> None:
        self.api, self.key, self.catalogue, self.ledger = api, key, catalogue, ledger
        self.rate, self.threads = rate, threads
        self.rng = random.Random(seed)
        self.answers: list[Answer] = []
        self._answers_lock = threading.Lock()
        self._stop = threading.Event()
        self._run = threading.Event()
        self._run.set()
        self._idle = [threading.Event() for _ in range(threads)]
        self._posters: list[threading.Thread] = []
        self._n = 0
        self.failures: list[str] = []

    # --- what is posted ------------------------------------------------------------------------
    def next_event(self) -> dict[str, Any]:
        """An order (most), a restock or an email notification."""
        rng, cat = self.rng, self.catalogue
        self._n += 1
        roll = rng.random()
        shop = rng.choice(list(cat.shops))
        if roll < 0.8:
            pids = rng.sample(cat.shops[shop], rng.randint(1, min(3, len(cat.shops[shop]))))
            lines = [
                {"product_id": pid, "quantity": rng.randint(1, 3), "unit_price_paise": 5000}
                for pid in pids
            ]
            return self.order(shop, lines)
        if roll < 0.95:
            return envelope(
                "product.stock_adjusted",
                {
                    "product_id": rng.choice(cat.shops[shop]),
                    "shop_id": shop,
                    "delta": 1,
                    "reason": "RESTOCK",
                },
            )
        return envelope(
            "notification.requested",
            {
                "user_id": cat.user,
                "kind": "GENERIC",
                "channels": ["EMAIL"],
                "title": f"{cat.tag} message {self._n:07d}",
                "body": "A drill message",
                "params": {},
            },
        )

    def order(self, shop: str, lines: list[dict[str, Any]]) -> dict[str, Any]:
        oid = f"ord_{self.catalogue.tag}_{uuid.uuid4().hex[:12]}"
        total = sum(line["quantity"] * line["unit_price_paise"] for line in lines)
        return envelope(
            "order.created",
            {
                "order_id": oid,
                "user_id": self.catalogue.quiet,
                "shop_id": shop,
                "items": lines,
                "total_paise": total,
                "payment_method": "COD",
                "delivery_address": {
                    "recipient_name": "Drill Customer",
                    "phone": "+919845012345",
                    "line1": "Flat 1, 1st Cross",
                    "locality": "Jayanagar",
                    "city": "Bengaluru",
                    "state": "Karnataka",
                    "pincode": "560011",
                },
            },
        )

    # --- posting -------------------------------------------------------------------------------
    def post(self, client: httpx.Client, ev: dict[str, Any], *, give_up_s: float = 600) -> int:
        """Post `ev` until it is acknowledged (returns 202 or 200) or `give_up_s` passes (the
        last status; the event is then not in the ledger)."""
        deadline = time.monotonic() + give_up_s
        delay = 0.2
        status = 0
        text = ""
        while True:
            sent = time.monotonic()
            try:
                r = client.post("/v1/events", json=ev)
                status, text = r.status_code, r.text
            except httpx.HTTPError:
                status = 0
            with self._answers_lock:
                self.answers.append(Answer(sent, time.monotonic(), status))
            if status in (200, 202):
                self.ledger.record(ev)
                return status
            if status not in (0, 429, 503) or time.monotonic() > deadline or self._stop.is_set():
                if status not in (0, 429, 503):
                    self.failures.append(f"{ev['type']} {ev['id']}: {status} {text[:300]}")
                return status
            time.sleep(delay)
            delay = min(2.0, delay * 2)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.api, headers={"Authorization": f"Bearer {self.key}"}, timeout=15
        )

    def _poster(self, i: int) -> None:
        every = self.threads / self.rate
        with self.client() as client:
            while not self._stop.is_set():
                if not self._run.is_set():
                    self._idle[i].set()
                    self._run.wait(0.5)
                    continue
                self._idle[i].clear()
                t0 = time.monotonic()
                with self._answers_lock:
                    ev = self.next_event()
                self.post(client, ev)
                time.sleep(max(0.0, every - (time.monotonic() - t0)))
        self._idle[i].set()

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._poster, args=(i,), daemon=True, name=f"drill-{i}")
            t.start()
            self._posters.append(t)

    def pause(self, timeout_s: float = 700) -> None:
        """Stop posting new events; returns once every poster has its last one acknowledged."""
        self._run.clear()
        for idle in self._idle:
            idle.wait(timeout_s)

    def resume(self) -> None:
        self._run.set()

    def stop(self) -> None:
        self._stop.set()
        self._run.set()
        for t in self._posters:
            t.join(30)

    def statuses(self, since: float, until: float | None = None) -> Counter[int]:
        """The answers to requests sent between `since` and `until` (monotonic), by status."""
        with self._answers_lock:
            return Counter(
                a.status
                for a in self.answers
                if a.sent >= since and (until is None or a.sent <= until)
            )

    def rate_now(self, seconds: float = 5.0) -> float:
        now = time.monotonic()
        got = self.statuses(now - seconds)
        return (got[200] + got[202]) / seconds


def one_shot(load: Load, ev: dict[str, Any], give_up_s: float = 120) -> int:
    """Post one event (retried as the load does) from the caller's thread."""
    with load.client() as client:
        return load.post(client, ev, give_up_s=give_up_s)


#: for typing the rows' callbacks
Poster = Callable[[dict[str, Any]], int]
