"""The analytics role (issue 15) against an independent oracle, on the real stack.

Each test runs an analytics worker in a namespace of its own (its topics, consumer group and
changelogs), so event time is the test's: the events are written to its topics with times in the
past and ticks are off (`ANALYTICS_TICK_IDLE_S` huge), so windows close when the test's events
move every source partition's watermark, never by the wall clock. The quiet-shop test turns
ticks on and works in wall time.

The oracle is SQL over the events as written (temporary tables, GROUP BY), not the role's code:
sales by shop per UTC minute and Asia/Kolkata hour and day, trending products and search terms
per 5-minute pane and per 1-hour window, sessions as islands of events less than 30 minutes
apart. It excludes exactly the events sent after their window's final result was observed.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.kafka import producer_config
from connectors.topics import wait_topics_ready
from schemas.catalog import EVENT_TYPES, Topic
from schemas.codec import EventCodec
from schemas.partitioner import partition_for
from schemas.validate import compile_schema
from tests.integration._pipeline import UNPLANNED, Pipeline, example
from tests.integration._support import poll

PARTS = 6
GAP = timedelta(minutes=30)
#: the role's default graces (seconds)
GRACE = {"sales_1m": 5, "sales_1h": 60, "sales_1d": 300, "trending": 30, "search_terms": 30}
SESSION_GRACE = timedelta(seconds=300)
HOUR_MS = 3_600_000
PANE_MS = 300_000
KINDS = ("PAGE_VIEW", "PRODUCT_VIEW", "SHOP_VIEW", "SEARCH", "SEARCH_RESULT_CLICKED")
COUNT_OF = {
    "PAGE_VIEW": "page_views",
    "PRODUCT_VIEW": "page_views",
    "SHOP_VIEW": "page_views",
    "SEARCH": "searches",
    "SEARCH_RESULT_CLICKED": "clicks",
    "ADD_TO_CART": "add_to_cart",
    "REMOVE_FROM_CART": "remove_from_cart",
    "CHECKOUT_STARTED": "checkouts",
    "PURCHASE": "purchases",
}
QUERIES = ["Atta", "atta ", "  Basmati   Rice", "basmati rice", "milk", "MILK", "paneer", "dal"]


def term(query: str) -> str:
    """A search text as the role counts it (for picking the test's rows, not for the oracle)."""
    return re.sub(r"\s+", " ", query.strip().lower())


def window_id(aggregate: str, key: str, start_ms: int) -> str:
    """A final result's id as analytics teams compute it: UUIDv5 (the README's namespace) of
    `window|<aggregate>|<key>|<start ms>`."""
    ns = uuid.UUID("5b0d7d0e-9a1f-5c3e-8e55-6d6f68616c6c")
    return str(uuid.uuid5(ns, f"window|{aggregate}|{key}|{start_ms}"))


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


@dataclass
class Written:
    """One event the test wrote: its topic category, key and envelope."""

    category: str
    key: str
    event: dict[str, Any]

    @property
    def at(self) -> datetime:
        return datetime.fromisoformat(self.event["occurred_at"])

    @property
    def partition(self) -> int:
        return partition_for(self.key, PARTS)


@dataclass
class Iso:
    """An analytics worker in a namespace of its own, and a writer to its topics."""

    pipeline: Pipeline
    name: str
    ns: str
    env: dict[str, str]
    producer: Producer = field(init=False)
    codecs: dict[str, tuple[int, EventCodec]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.producer = Producer(
            producer_config(
                self.pipeline.settings.kafka_bootstrap,
                security=self.pipeline.settings.kafka_security,
                delivery_timeout_ms=10_000,
                linger_ms=5,
                max_message_bytes=1 << 20,
            )
        )

    def write(self, events: list[Written]) -> None:
        failed: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(f"{msg.topic()}/{msg.partition()}: {err}")

        for w in events:
            et = EVENT_TYPES[w.event["type"]]
            if et.name not in self.codecs:
                self.codecs[et.name] = (self.pipeline.registry.register(et), EventCodec(et.schema))
            sid, codec = self.codecs[et.name]
            datum, errors = compile_schema(et.schema).convert({**w.event, "trace_id": "tests"})
            assert not errors, errors
            self.producer.produce(
                f"{self.ns}.{w.category}.events",
                key=w.key.encode(),
                value=codec.encode_fastavro(sid, datum),
                partition=w.partition,
                timestamp=_ms(w.at),
                on_delivery=delivered,
            )
            self.producer.poll(0)
        assert self.producer.flush(30) == 0
        assert not failed, f"{len(failed)} events not delivered, first: {failed[:3]}"

    def topic(self, suffix: str) -> list[tuple[bytes | None, Any]]:
        """Every record of one of the namespace's topics: (key, decoded value)."""
        name = f"{self.ns}.{suffix}"
        c = Consumer(
            {
                "bootstrap.servers": self.pipeline.settings.kafka_bootstrap,
                "group.id": f"tests-{uuid.uuid4()}",
                "enable.auto.commit": False,
            }
        )
        out: list[tuple[bytes | None, Any]] = []
        try:
            meta = c.list_topics(name, timeout=10).topics[name]
            highs = {}
            for p in meta.partitions:
                low, high = c.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                if high > low:
                    highs[p] = (low, high)
            c.assign([TopicPartition(name, p, low) for p, (low, _) in highs.items()])
            left = {p: high for p, (_, high) in highs.items()}
            while left:
                m = c.poll(10)
                assert m is not None, f"timed out reading {name}"
                if m.error():
                    continue
                if (m.offset() or 0) >= left.get(m.partition(), 1 << 62) - 1:
                    left.pop(m.partition(), None)
                out.append((m.key(), m.value()))
        finally:
            c.close()
        return out

    def cli(self, *args: str) -> str:
        import os

        env = {**os.environ, **self.env, "WORKER_DATA_DIR": str(self.datadir.parent)}
        done = subprocess.run(
            [sys.executable, "-m", "mohallamart.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    @property
    def datadir(self) -> Any:
        return self.pipeline.workers.logdir / "worker-data" / self.name / "analytics"


def start_iso(pipeline: Pipeline, role_name: str, **env: str) -> Iso:
    ns = f"t{uuid.uuid4().hex[:10]}"
    full = {"TOPIC_NAMESPACE": ns, "WORKER_APP_PREFIX": ns, **env}
    name = f"{role_name}-{ns}"  # a data directory of its own (its local table stores)
    pipeline.workers.start(name, "analytics", env=full)
    iso = Iso(pipeline, name, ns, full)
    admin = AdminClient({"bootstrap.servers": pipeline.settings.kafka_bootstrap})
    wanted = [f"{ns}.order.events", f"{ns}.analytics.events", f"{ns}.analytics.by-key"]

    def created() -> bool:
        meta = admin.list_topics(timeout=5).topics
        return all(t in meta and len(meta[t].partitions) == PARTS for t in wanted)

    poll(created, timeout=60, what=f"the analytics worker to create its topics ({ns})")
    # and each partition has a leader (a record written before may be refused, not retried)
    wait_topics_ready(
        pipeline.settings.kafka_bootstrap,
        [Topic("analytics", t, PARTS, "") for t in wanted],
        security=pipeline.settings.kafka_security,
        timeout_s=60,
    )
    return iso


# --- the load ---------------------------------------------------------------------------------
def tracked(at: datetime, session: str, kind: str, **data: Any) -> Written:
    d = {"session_id": session, "kind": kind, "user_id": None, **data}
    return Written("analytics", session, Pipeline.event("analytics.tracked", d, at=at))


def order_event(type_: str, at: datetime, oid: str, shop: str, **data: Any) -> Written:
    d = example(type_, order_id=oid, shop_id=shop, **data)
    return Written("order", oid, Pipeline.event(type_, d, at=at))


@dataclass
class Load:
    """The events of the oracle test, by what they are."""

    base: datetime
    shops: list[str]
    events: list[Written] = field(default_factory=list)
    journeys: dict[str, str] = field(default_factory=dict)  # session id -> what it is


def make_load(tag: str, base: datetime, rng: random.Random) -> Load:
    shops = [f"shop_{tag}_{i}" for i in range(4)]
    load = Load(base, shops)
    span = 40 * 60  # seconds of event time
    for n in range(300):
        oid = f"ord_{tag}_{n}"
        shop = rng.choice(shops)
        at = base + timedelta(seconds=rng.uniform(0, span), milliseconds=rng.randrange(1000))
        products = rng.sample(range(5), rng.randint(1, 3))
        items = [
            {"product_id": f"prd_{shop}_{p}", "quantity": rng.randint(1, 4), "stock_after": 7}
            for p in products
        ]
        total = rng.randint(50, 5000) * 10
        accepted = order_event(
            "order.accepted",
            at,
            oid,
            shop,
            items=items,
            total_paise=total,
            user_id=f"usr_{tag}",
            cause_event_id=str(uuid.uuid4()),
        )
        load.events.append(accepted)
        later = at + timedelta(seconds=rng.uniform(20, 600))
        roll = rng.random()
        if roll < 0.2:
            amount = rng.randint(1, total // 10) * 10
            load.events.append(
                order_event(
                    "order.refunded", later, oid, shop, user_id=f"usr_{tag}", refund_paise=amount
                )
            )
        elif roll < 0.3:
            load.events.append(
                order_event("order.cancelled", later, oid, shop, user_id=f"usr_{tag}")
            )
    for n in range(80):
        session = f"sess_{tag}_{n}"
        at = base + timedelta(seconds=rng.uniform(0, span))
        for _ in range(rng.randint(2, 8)):
            kind = rng.choice(KINDS)
            extra: dict[str, Any] = {"shop_id": rng.choice(shops)}
            if kind in ("SEARCH", "SEARCH_RESULT_CLICKED"):
                extra["query"] = f"{rng.choice(QUERIES)} {tag}"
            load.events.append(tracked(at, session, kind, **extra))
            at += timedelta(seconds=rng.uniform(5, 900))
    # scripted journeys
    t = base + timedelta(minutes=5)
    s = f"sess_{tag}_converts"
    load.journeys[s] = "converts"
    shop = shops[0]
    for i, (kind, extra) in enumerate(
        [
            ("PAGE_VIEW", {"page": "/"}),
            ("SEARCH", {"query": f"Atta {tag}"}),
            ("SEARCH_RESULT_CLICKED", {"query": f"atta {tag}", "product_id": f"prd_{shop}_0"}),
            ("ADD_TO_CART", {"product_id": f"prd_{shop}_0", "quantity": 1}),
            ("CHECKOUT_STARTED", {}),
            ("PURCHASE", {"order_id": f"ord_{tag}_j"}),
        ]
    ):
        load.events.append(tracked(t + timedelta(minutes=2 * i), s, kind, shop_id=shop, **extra))
    s = f"sess_{tag}_abandons"
    load.journeys[s] = "abandons"
    load.events.append(tracked(t, s, "PRODUCT_VIEW", shop_id=shop))
    load.events.append(tracked(t + timedelta(minutes=1), s, "ADD_TO_CART", shop_id=shop))
    load.events.append(tracked(t + timedelta(minutes=3), s, "CHECKOUT_STARTED", shop_id=shop))
    s = f"sess_{tag}_bridged"
    load.journeys[s] = "bridged"
    load.events.append(tracked(t, s, "PAGE_VIEW"))
    load.events.append(tracked(t + timedelta(minutes=32), s, "PAGE_VIEW"))
    # 4 minutes behind its partition (within the session grace of 5): bridges the two
    load.events.append(tracked(t + timedelta(minutes=28), s, "PRODUCT_VIEW"))
    return load


def shuffled_within_grace(events: list[Written], rng: random.Random) -> list[Written]:
    """In event-time order, each displaced by up to 4.5 s (less than the smallest grace, 5 s),
    except that an order's events keep their order; the bridging event goes last of its
    session."""

    def jitter(w: Written) -> float:
        if w.event["data"].get("session_id", "").endswith("_bridged") and w.at.minute == 33:
            return 245.0  # sent after the session's later half (4 minutes behind it)
        return rng.uniform(0, 4.5)

    return sorted(events, key=lambda w: _ms(w.at) + jitter(w) * 1000)


def heartbeats(tag: str, at: datetime) -> list[Written]:
    """One event per source partition at `at`: every partition's watermark moves there."""
    out = []
    for p in range(PARTS):
        n = 0
        while partition_for(f"ord_hb_{tag}_{p}_{n}", PARTS) != p:
            n += 1
        oid = f"ord_hb_{tag}_{p}_{n}"
        out.append(
            Written(
                "order",
                oid,
                Pipeline.event(
                    "order.status_changed",
                    example("order.status_changed", order_id=oid, shop_id=f"shop_hb_{tag}"),
                    at=at,
                ),
            )
        )
        n = 0
        while partition_for(f"sess_hb_{tag}_{p}_{n}", PARTS) != p:
            n += 1
        out.append(tracked(at, f"sess_hb_{tag}_{p}_{n}", "OTHER"))
    return out


# --- the oracle: SQL over the events counted ----------------------------------------------------
_SETUP = """
CREATE TEMP TABLE o_accepted (order_id text, shop_id text, at timestamptz, total bigint, items int);
CREATE TEMP TABLE o_items (order_id text, key text, at timestamptz, units int);
CREATE TEMP TABLE o_refunds (order_id text, shop_id text, at timestamptz, amount bigint);
CREATE TEMP TABLE o_cancels (order_id text, shop_id text, at timestamptz);
CREATE TEMP TABLE o_tracked (session_id text, at timestamptz, kind text, query text, shop_id text);
"""
_TRUNC = {
    "1m": "date_trunc('minute', at)",
    "1h": "date_trunc('hour', at AT TIME ZONE 'Asia/Kolkata') AT TIME ZONE 'Asia/Kolkata'",
    "1d": "date_trunc('day', at AT TIME ZONE 'Asia/Kolkata') AT TIME ZONE 'Asia/Kolkata'",
}
_NEXT = {"1m": "interval '1 minute'", "1h": "interval '1 hour'", "1d": "interval '1 day'"}
_SALES = """
WITH c AS (
  SELECT shop_id, at, total AS revenue, 1 AS orders, items, 0::bigint AS cancelled,
         0 AS cancelled_orders, 0::bigint AS refunded FROM o_accepted
  UNION ALL
  SELECT r.shop_id, r.at, -least(r.amount, a.total), 0, 0, 0, 0, least(r.amount, a.total)
  FROM o_refunds r JOIN o_accepted a USING (order_id)
  UNION ALL
  SELECT x.shop_id, x.at, -a.total, 0, 0, a.total, 1, 0
  FROM o_cancels x JOIN o_accepted a USING (order_id)
)
SELECT shop_id, {trunc} AS start, sum(revenue), sum(orders), sum(items), sum(cancelled),
       sum(cancelled_orders), sum(refunded)
FROM c GROUP BY 1, 2
"""
_PANES = """
SELECT 'trending', key, to_timestamp(floor(extract(epoch FROM at) / 300) * 300), sum(units),
       count(*), 0, 0 FROM o_items GROUP BY 1, 2, 3
UNION ALL
SELECT 'search_terms', lower(regexp_replace(btrim(query), '\\s+', ' ', 'g')),
       to_timestamp(floor(extract(epoch FROM at) / 300) * 300), 0, 0,
       count(*) FILTER (WHERE kind = 'SEARCH'), count(*) FILTER (WHERE kind <> 'SEARCH')
FROM o_tracked WHERE query IS NOT NULL AND kind IN ('SEARCH', 'SEARCH_RESULT_CLICKED')
GROUP BY 1, 2, 3
"""
_SESSIONS = """
WITH t AS (
  SELECT *, CASE WHEN lag(at) OVER w IS NULL OR at - lag(at) OVER w >= interval '30 minutes'
                 THEN 1 ELSE 0 END AS new
  FROM o_tracked WINDOW w AS (PARTITION BY session_id ORDER BY at)
), i AS (
  SELECT *, sum(new) OVER (PARTITION BY session_id ORDER BY at ROWS UNBOUNDED PRECEDING) AS n
  FROM t
)
SELECT session_id, min(at), max(at), count(*),
  count(*) FILTER (WHERE kind IN ('PAGE_VIEW', 'PRODUCT_VIEW', 'SHOP_VIEW')),
  count(*) FILTER (WHERE kind = 'SEARCH'),
  count(*) FILTER (WHERE kind = 'SEARCH_RESULT_CLICKED'),
  count(*) FILTER (WHERE kind = 'ADD_TO_CART'),
  count(*) FILTER (WHERE kind = 'REMOVE_FROM_CART'),
  count(*) FILTER (WHERE kind = 'CHECKOUT_STARTED'),
  count(*) FILTER (WHERE kind = 'PURCHASE'),
  coalesce(array_agg(shop_id ORDER BY shop_id) FILTER (WHERE shop_id IS NOT NULL), '{}')
FROM i GROUP BY session_id, n
"""
SESSION_COLS = (
    "events",
    "page_views",
    "searches",
    "clicks",
    "add_to_cart",
    "remove_from_cart",
    "checkouts",
    "purchases",
)
SALES_COLS = (
    "revenue_paise",
    "orders",
    "items",
    "cancelled_paise",
    "cancelled_orders",
    "refunded_paise",
)


@dataclass
class Expected:
    sales: dict[tuple[str, str, int], tuple[tuple[int, ...], bool]]
    panes: dict[tuple[str, str, int], tuple[int, ...]]
    sessions: dict[tuple[str, int], tuple[int, tuple[int, ...], tuple[str, ...], bool]]
    finals: dict[tuple[str, str, int], dict[str, int]]


def oracle(dsn: str, counted: list[Written], watermark: datetime) -> Expected:
    """What every window should hold, by SQL over `counted`; final: the watermark (every
    source partition's) passed its end + grace."""
    wm = _ms(watermark)
    with psycopg.connect(dsn) as conn:
        conn.execute(_SETUP)
        for w in counted:
            d, t = w.event["data"], w.event["type"]
            if t == "order.accepted":
                conn.execute(
                    "INSERT INTO o_accepted VALUES (%s, %s, %s, %s, %s)",
                    (
                        d["order_id"],
                        d["shop_id"],
                        w.at,
                        d["total_paise"],
                        sum(i["quantity"] for i in d["items"]),
                    ),
                )
                for i in d["items"]:
                    conn.execute(
                        "INSERT INTO o_items VALUES (%s, %s, %s, %s)",
                        (d["order_id"], f"{d['shop_id']}/{i['product_id']}", w.at, i["quantity"]),
                    )
            elif t == "order.refunded":
                conn.execute(
                    "INSERT INTO o_refunds VALUES (%s, %s, %s, %s)",
                    (d["order_id"], d["shop_id"], w.at, d["refund_paise"]),
                )
            elif t == "order.cancelled":
                conn.execute(
                    "INSERT INTO o_cancels VALUES (%s, %s, %s)", (d["order_id"], d["shop_id"], w.at)
                )
            elif t == "analytics.tracked":
                conn.execute(
                    "INSERT INTO o_tracked VALUES (%s, %s, %s, %s, %s)",
                    (d["session_id"], w.at, d["kind"], d.get("query"), d.get("shop_id")),
                )
        sales: dict[tuple[str, str, int], tuple[tuple[int, ...], bool]] = {}
        finals: dict[tuple[str, str, int], dict[str, int]] = {}
        for period, trunc in _TRUNC.items():
            rows = conn.execute(
                f"SELECT s.*, s.start + {_NEXT[period]} FROM ({_SALES.format(trunc=trunc)}) s"
            ).fetchall()
            for shop, start, *values, end in rows:
                kind = f"sales_{period}"
                final = _ms(end) + GRACE[kind] * 1000 <= wm
                sales[(period, shop, _ms(start))] = (tuple(int(v) for v in values), final)
                if final:
                    finals[(kind, shop, _ms(start))] = {
                        c: int(v) for c, v in zip(SALES_COLS, values, strict=True) if int(v)
                    }
        panes = {
            (agg, key, _ms(pane)): tuple(int(v) for v in values)
            for agg, key, pane, *values in conn.execute(_PANES).fetchall()
        }
        # hopping windows: the sums of the 12 panes of each window holding a pane with data
        for agg in ("trending", "search_terms"):
            starts = {
                (key, pane - k * PANE_MS) for (a, key, pane) in panes if a == agg for k in range(12)
            }
            for key, start in starts:
                if start + HOUR_MS + GRACE[agg] * 1000 > wm:
                    continue
                total = [0, 0, 0, 0]
                for p in range(start, start + HOUR_MS, PANE_MS):
                    for i, v in enumerate(panes.get((agg, key, p), (0, 0, 0, 0))):
                        total[i] += v
                names = ("units", "orders") if agg == "trending" else ("searches", "clicks")
                vals = dict(zip(("units", "orders", "searches", "clicks"), total, strict=True))
                finals[(agg, key, start)] = {n: vals[n] for n in names if vals[n]}
        sessions = {}
        for sid, first, last, *counts, named in conn.execute(_SESSIONS).fetchall():
            final = _ms(last) + _ms_td(GAP + SESSION_GRACE) <= wm
            shops = tuple(sorted(set(named)))
            sessions[(sid, _ms(first))] = (_ms(last), tuple(counts), shops, final)
            if final:
                got = {c: int(v) for c, v in zip(SESSION_COLS, counts, strict=True) if v}
                got["duration_ms"] = _ms(last) - _ms(first)
                for shop in named:
                    got[f"shop:{shop}"] = got.get(f"shop:{shop}", 0) + 1
                finals[("sessions", sid, _ms(first))] = got
    return Expected(sales, panes, sessions, finals)


def _ms_td(td: timedelta) -> int:
    return int(td.total_seconds() * 1000)


def observed(p: Pipeline, shops: list[str], sessions: set[str], terms: set[str]) -> Expected:
    """What the role wrote to PostgreSQL for these shops and sessions (finals: empty)."""
    sales = {
        (period, shop, _ms(start)): (tuple(int(v) for v in values), final)
        for period, shop, start, *values, final in p.rows(
            "SELECT period, shop_id, window_start, " + ", ".join(SALES_COLS) + ", final "
            "FROM analytics_sales WHERE shop_id = ANY(%s)",
            shops,
        )
    }
    prefixes = [f"{s}/%" for s in shops]
    panes = {
        (agg, key, _ms(pane)): tuple(int(v) for v in values)
        for agg, key, pane, *values in p.rows(
            "SELECT aggregate, key, pane_start, units, orders, searches, clicks "
            "FROM analytics_panes WHERE key LIKE ANY(%s) "
            "OR (aggregate = 'search_terms' AND key = ANY(%s))",
            prefixes,
            sorted(terms),
        )
    }
    found = {}
    for sid, first, last, final, *rest in p.rows(
        "SELECT session_id, first_at, last_at, final, " + ", ".join(SESSION_COLS) + ", shops "
        "FROM analytics_sessions WHERE session_id = ANY(%s)",
        sorted(sessions),
    ):
        *counts, shops_ = rest
        found[(sid, _ms(first))] = (_ms(last), tuple(counts), tuple(sorted(shops_)), final)
    return Expected(sales, panes, found, {})


def differences(want: Expected, got: Expected) -> list[str]:
    out = []
    for name in ("sales", "panes", "sessions"):
        w, g = getattr(want, name), getattr(got, name)
        for k in sorted(set(w) | set(g), key=str):
            if w.get(k) != g.get(k):
                out.append(f"{name} {k}: expected {w.get(k)}, found {g.get(k)}")
    return out


def final_records(
    iso: Iso, keys: set[str]
) -> tuple[dict[tuple[str, str, int], dict[str, int]], dict[str, int]]:
    """The final results of `keys` on the output topic: (aggregate, key, start) -> values, and
    how many records each id has (every copy must be the same)."""
    import io

    import fastavro

    schemas: dict[int, Any] = {}
    out: dict[tuple[str, str, int], dict[str, int]] = {}
    copies: dict[str, int] = {}
    for _, value in iso.topic("analytics.windows"):
        assert value is not None and value[0] == 0
        sid = int.from_bytes(value[1:5], "big")
        if sid not in schemas:
            schemas[sid] = fastavro.parse_schema(iso.pipeline.registry.schema_by_id(sid))
        rec: Any = fastavro.schemaless_reader(io.BytesIO(value[5:]), schemas[sid])
        if rec["key"] not in keys:
            continue
        k = (rec["aggregate"], rec["key"], _ms(rec["window_start"]))
        assert str(rec["id"]) == window_id(*k)
        if k in out:
            assert out[k] == dict(rec["values"]), f"a duplicate of {k} differs"
        out[k] = dict(rec["values"])
        copies[str(rec["id"])] = copies.get(str(rec["id"]), 0) + 1
    return out, copies


def late_records(iso: Iso, event_ids: set[str]) -> set[tuple[str, str, str]]:
    """(event id, aggregate, key) of the late-event records of `event_ids`, each id checked."""
    import io

    import fastavro

    ns = uuid.UUID("5b0d7d0e-9a1f-5c3e-8e55-6d6f68616c6c")
    schemas: dict[int, Any] = {}
    out = set()
    for _, value in iso.topic("analytics.late"):
        assert value is not None
        sid = int.from_bytes(value[1:5], "big")
        if sid not in schemas:
            schemas[sid] = fastavro.parse_schema(iso.pipeline.registry.schema_by_id(sid))
        rec: Any = fastavro.schemaless_reader(io.BytesIO(value[5:]), schemas[sid])
        if rec["event_id"] in event_ids:
            key = (rec["event_id"], rec["aggregate"], rec["key"])
            assert str(rec["id"]) == str(uuid.uuid5(ns, "late|" + "|".join(key)))
            out.add(key)
    return out


# --- the tests ------------------------------------------------------------------------------------
@dataclass
class Loaded:
    iso: Iso
    load: Load
    tag: str
    watermark: datetime
    late: list[Written] = field(default_factory=list)

    @property
    def sessions(self) -> set[str]:
        return {
            w.event["data"]["session_id"]
            for w in self.load.events
            if w.event["type"] == "analytics.tracked"
        }

    @property
    def terms(self) -> set[str]:
        return {
            term(w.event["data"]["query"])
            for w in self.load.events
            if w.event["type"] == "analytics.tracked" and w.event["data"].get("query")
        }

    def observed(self) -> Expected:
        return observed(self.iso.pipeline, self.load.shops, self.sessions, self.terms)


@pytest.fixture(scope="module")
def loaded(pipeline: Pipeline) -> Iterator[Loaded]:
    """An out-of-order load (each event displaced within the smallest grace) written to an
    analytics worker's own topics (its window stage writing its state every 7 items, in the
    middle of bundles), the worker killed with SIGKILL after a third, then ended by
    the two drills (the router after forwarding, the window stage between a batch's state and
    its marker); then one event per source partition 3 hours later, which closes every window
    of the load that can close."""
    rng = random.Random(15)
    tag = uuid.uuid4().hex[:8]
    # the window stage writes its state every 7 items: in the middle of most bundles, so the
    # crashes below land between a bundle's items too
    iso = start_iso(
        pipeline, "analytics-iso", ANALYTICS_TICK_IDLE_S="1000000", ANALYTICS_FLUSH_ITEMS="7"
    )
    base = datetime(2025, 3, 10, 18, 0, tzinfo=UTC)  # 23:30 IST: the load spans a day's end
    load = make_load(tag, base, rng)
    events = shuffled_within_grace(load.events, rng)
    third = len(events) // 3
    try:
        iso.write(events[:third])
        pipeline.wait_row(
            "SELECT 1 FROM analytics_sales WHERE shop_id = ANY(%s)",
            load.shops,
            timeout=90,
            what="the analytics worker to write its first windows",
        )
        pipeline.workers.kill9(iso.name)
        # started again at once, the dead member still in the group (as `make run`'s
        # supervisor restarts a worker after 1 s)
        pipeline.workers.restart(iso.name)
        half = third + third // 2
        iso.write(events[third:half])
        # drills: the router ended after forwarding a batch, before recording it (it forwards
        # the same records again: copies); then the window stage ended between a batch's state
        # and its marker
        for point, chunk in (
            ("router-after-forward", events[half : 2 * third]),
            ("between-state-and-marker", events[2 * third : 2 * third + 100]),
        ):
            pipeline.workers.stop(iso.name)
            iso.env["ANALYTICS_FAULT"] = point
            pipeline.workers.start(iso.name, "analytics", env=iso.env)
            iso.write(chunk)
            fired = iso.datadir / f"analytics-fault-{point}"
            poll(fired.exists, timeout=90, what=f"the drill {point} to end the analytics worker")
            pipeline.workers.stop(iso.name)  # its supervisor's restart, if it came already
        iso.env.pop("ANALYTICS_FAULT")
        pipeline.workers.start(iso.name, "analytics", env=iso.env)
        iso.write(events[2 * third + 100 :])
        watermark = base + timedelta(hours=3)
        iso.write(heartbeats(tag, watermark))
        yield Loaded(iso, load, tag, watermark)
    finally:
        pipeline.workers.stop(iso.name)
        # its exit (and restart) by the drill was planned: not reported as a fault
        for line in [x for x in UNPLANNED if f"worker {iso.name} " in x and "with 137" in x]:
            UNPLANNED.remove(line)


def _agree(ld: Loaded, want: Expected, timeout: float = 120) -> None:
    last: list[str] = []

    def same() -> bool:
        last[:] = differences(want, ld.observed())
        return not last

    try:
        poll(same, timeout=timeout, interval=0.5, what="the windows to equal the oracle")
    except AssertionError:
        raise AssertionError(f"{len(last)} differences, first: " + "\n".join(last[:15])) from None


def _keys(want: Expected) -> set[str]:
    return {k for (_, k, _) in want.finals}


def test_every_window_and_final_record_equals_a_sql_oracle_after_two_crashes(
    loaded: Loaded, pipeline: Pipeline
) -> None:
    want = oracle(pipeline.settings.postgres_dsn, loaded.load.events, loaded.watermark)
    # the load is not trivial: windows of every kind, final and still open
    assert sum(final for _, final in want.sales.values()) > 100
    assert any(not final for _, final in want.sales.values())
    assert {agg for agg, _, _ in want.finals} == {
        "sales_1m",
        "sales_1h",
        "sales_1d",
        "trending",
        "search_terms",
        "sessions",
    }
    _agree(loaded, want)

    def complete() -> Any:
        r = final_records(loaded.iso, _keys(want))
        return r if r[0] == want.finals else None

    got, copies = poll(
        complete,
        timeout=30,
        what="the final records to equal the oracle's final windows",
    )
    assert got == want.finals
    assert set(copies) and all(n >= 1 for n in copies.values())


def test_scripted_journeys_give_the_expected_sessions(loaded: Loaded) -> None:
    tag = loaded.tag
    rows = {
        sid: (events, searches, purchases, converted, cart, checkout, final)
        for sid, events, searches, purchases, converted, cart, checkout, final in (
            loaded.iso.pipeline.rows(
                "SELECT session_id, events, searches, purchases, converted, abandoned_cart, "
                "abandoned_checkout, final FROM analytics_sessions WHERE session_id = ANY(%s)",
                list(loaded.load.journeys),
            )
        )
    }
    # browse -> search -> click -> add to cart -> checkout -> purchase: converted, nothing left
    assert rows[f"sess_{tag}_converts"] == (6, 1, 1, True, False, False, True)
    # added to cart, checkout started, nothing bought: both abandoned
    assert rows[f"sess_{tag}_abandons"] == (3, 0, 0, False, True, True, True)
    # two halves 32 minutes apart, bridged by an event that came 4 minutes late: one session
    bridged = loaded.iso.pipeline.rows(
        "SELECT events, last_at - first_at FROM analytics_sessions WHERE session_id = %s",
        f"sess_{tag}_bridged",
    )
    assert bridged == [(3, timedelta(minutes=32))]


def test_late_events_are_reported_and_change_no_final_result(
    loaded: Loaded, pipeline: Pipeline
) -> None:
    want = oracle(pipeline.settings.postgres_dsn, loaded.load.events, loaded.watermark)
    _agree(loaded, want)
    before, _ = final_records(loaded.iso, _keys(want))
    shop, tag, base = loaded.load.shops[1], loaded.tag, loaded.load.base
    # sent after the final results of their windows were observed
    order = order_event(
        "order.accepted",
        base + timedelta(minutes=2),
        f"ord_{tag}_late",
        shop,
        items=[
            {"product_id": f"prd_{shop}_1", "quantity": 3, "stock_after": 1},
            {"product_id": f"prd_{shop}_2", "quantity": 1, "stock_after": 1},
        ],
        total_paise=999_00,
        user_id=f"usr_{tag}",
        cause_event_id=str(uuid.uuid4()),
    )
    search = tracked(
        base + timedelta(minutes=3), f"sess_{tag}_late", "SEARCH", query=f"milk {tag}", shop_id=shop
    )
    loaded.late = [order, search]
    loaded.iso.write(loaded.late)
    oid, sid = order.event["id"], search.event["id"]
    term_ = term(f"milk {tag}")
    # one report per event and window it missed: each of the order's products its own
    expected = {
        (oid, "sales_1m", shop),
        (oid, "sales_1h", shop),
        (oid, "sales_1d", shop),
        (oid, "trending", f"{shop}/prd_{shop}_1"),
        (oid, "trending", f"{shop}/prd_{shop}_2"),
        (sid, "sessions", f"sess_{tag}_late"),
        (sid, "search_terms", term_),
    }
    poll(
        lambda: (
            set(
                pipeline.rows(
                    "SELECT event_id, aggregate, key FROM analytics_late WHERE event_id = ANY(%s)",
                    [oid, sid],
                )
            )
            == expected
        ),
        timeout=60,
        what="the late events to be recorded",
    )
    # nothing they would have added is counted: every window as the oracle (without them) says
    assert differences(want, loaded.observed()) == []
    after, _ = final_records(loaded.iso, _keys(want))
    assert after == before
    assert late_records(loaded.iso, {oid, sid}) == expected
    listed = pipeline.http.get("/v1/analytics/late", params={"limit": 1000}).json()["late"]
    assert {(x["event_id"], x["aggregate"], x["key"]) for x in listed} >= expected


def test_a_replay_into_empty_tables_gives_the_same_windows_and_only_duplicate_finals(
    loaded: Loaded, pipeline: Pipeline
) -> None:
    want = oracle(pipeline.settings.postgres_dsn, loaded.load.events, loaded.watermark)
    _agree(loaded, want)
    before, copies_before = final_records(loaded.iso, _keys(want))
    pipeline.workers.stop(loaded.iso.name)
    plan = loaded.iso.cli("analytics", "replay", "--execute")
    assert "start the analytics role to replay" in plan
    assert pipeline.rows(
        "SELECT count(*) FROM analytics_sales WHERE shop_id = ANY(%s)", loaded.load.shops
    ) == [(0,)]
    pipeline.workers.restart(loaded.iso.name)
    _agree(loaded, want)

    def again() -> Any:
        r = final_records(loaded.iso, _keys(want))
        return r if all(r[1].get(i, 0) > n for i, n in copies_before.items()) else None

    after, copies_after = poll(
        again,
        timeout=60,
        what="the replay's final records",
    )
    # the same records by id (each id's copies identical), nothing else
    assert after == before == want.finals
    assert set(copies_after) == set(copies_before)
    if loaded.late:
        ids = [w.event["id"] for w in loaded.late]
        poll(
            lambda: (
                len(pipeline.rows("SELECT 1 FROM analytics_late WHERE event_id = ANY(%s)", ids))
                == 7
            ),
            timeout=30,
            what="the replay to report the same late events",
        )


def test_a_quiet_shops_last_minute_is_final_within_grace_plus_5_s_and_a_replay_closes_it_alike(
    pipeline: Pipeline,
) -> None:
    """Ticks on (the default): the one order of a shop, then nothing anywhere: its minute is
    final within its grace (5 s) + 5 s of wall time after the minute ends; a replay gives the
    same final result, closed by the same tick (the replay writes no tick of its own)."""
    iso = start_iso(pipeline, "analytics-quiet")
    tag = uuid.uuid4().hex[:8]
    shop = f"shop_{tag}_quiet"
    try:
        now = datetime.now(UTC)
        order = order_event(
            "order.accepted",
            now,
            f"ord_{tag}_q",
            shop,
            items=[{"product_id": f"prd_{tag}", "quantity": 2, "stock_after": 5}],
            total_paise=12_300,
            user_id=f"usr_{tag}",
            cause_event_id=str(uuid.uuid4()),
        )
        iso.write([order])
        start = now.replace(second=0, microsecond=0)
        end = start + timedelta(minutes=1)
        row = pipeline.wait_row(
            "SELECT revenue_paise, orders, items, now() FROM analytics_sales "
            "WHERE shop_id = %s AND period = '1m' AND final",
            shop,
            timeout=90,
            what="the quiet shop's minute to be final",
        )
        seen_at = datetime.now(UTC)
        assert row[:3] == (12_300, 1, 2)
        late_by = (seen_at - (end + timedelta(seconds=GRACE["sales_1m"]))).total_seconds()
        assert late_by <= 5, f"final {late_by:.1f} s after end + grace"
        ticks_before = [v for _, v in iso.topic("analytics.ticks")]
        closing = [t for t in ticks_before if t is not None]
        pipeline.workers.stop(iso.name)
        iso.cli("analytics", "replay", "--execute")
        pipeline.workers.restart(iso.name)
        pipeline.wait_row(
            "SELECT 1 FROM analytics_sales WHERE shop_id = %s AND period = '1m' AND final "
            "AND revenue_paise = 12300",
            shop,
            timeout=60,
            what="the replay's final minute",
        )
        wid = window_id("sales_1m", shop, _ms(start))

        def replayed() -> Any:
            r = final_records(iso, {shop})
            return r if r[1].get(wid, 0) >= 2 else None

        finals, copies = poll(replayed, timeout=30, what="the replay's final record")
        # the same record twice (live, replay), nothing else for the shop's minutes
        assert copies[wid] == 2
        assert {k: v for k, v in finals.items() if k[0] == "sales_1m"} == {
            ("sales_1m", shop, _ms(start)): {"revenue_paise": 12_300, "orders": 1, "items": 2}
        }
        # the tick that closed it (the first granting end + grace) was there before the replay
        due = _ms(end) + GRACE["sales_1m"] * 1000
        granted = [json.loads(t)["watermark"] for t in closing]
        assert any(due <= g <= due + 5_000 for g in granted), granted[-5:]
        # the ticks up to the one that closed it are as they were: the replay read them, it
        # wrote none (later ticks are the live router's, for later times)
        after = [v for _, v in iso.topic("analytics.ticks")]
        assert after[: len(closing)] == closing
    finally:
        pipeline.workers.stop(iso.name)
