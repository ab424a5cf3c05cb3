"""A newcomer's first minutes: `mohallamart run` on a fresh stack, events posted at once.

A fresh stack is one where no topic, consumer group, table or document of the pipeline exists
yet. Here it is a fresh namespace on the session's servers: its own topics and schema subjects
(`TOPIC_NAMESPACE`), consumer groups (`WORKER_APP_PREFIX`), PostgreSQL database, Redis database
and Typesense collections, started by the README's own `run` command (which reuses the running
servers and stops only what it started). As soon as `/readyz` answers, the README's example
events are posted, then every postable type with only its required fields; every role must apply
every one of them within 30 s, and no dead-letter topic may get a record: none of these events
breaks a lifecycle rule.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import redis
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.redis_cache import cache_key
from core.settings import Settings
from mohallamart.stack import Stack
from schemas.catalog import EVENT_TYPES, record_defaults
from tests.integration._support import free_port, poll

README = Path(__file__).resolve().parents[2] / "README.md"
APPLIED_WITHIN_S = 30.0

#: what each role reads, by event category (its consumer group must commit past all of it)
ROLE_READS = {
    "projections": ("user", "shop", "shopkeeper", "product", "order"),
    "stock": ("product", "order"),
    "cache": ("user", "shop", "shopkeeper", "product"),
    "search": ("shop", "shopkeeper", "product", "search"),
    "workflows": ("user", "shopkeeper", "product", "order"),
    "notifications": ("notification",),
    "jobs": ("cleanup",),
    "analytics": ("order", "analytics"),
}


def readme_examples() -> list[dict[str, Any]]:
    """The bodies of the README's `curl` examples of the ingestion API, in order."""
    import json

    text = README.read_text()
    section = text[text.index("## Ingestion API") : text.index("### For analytics teams")]
    return [json.loads(m) for m in re.findall(r"-d '(\{.*\})'", section)]


def minimal(type_: str, **over: Any) -> dict[str, Any]:
    """The type's example with every optional field (one with a default) left out, at every
    depth, then `over` applied."""

    def strip(value: Any, avro_type: Any) -> Any:
        record = _record(avro_type)
        if record is not None and isinstance(value, dict):
            return {
                f["name"]: strip(value[f["name"]], f["type"])
                for f in record["fields"]
                if "default" not in f and f["name"] in value
            }
        items = _items(avro_type)
        if items is not None and isinstance(value, list):
            return [strip(v, items) for v in value]
        return value

    et = EVENT_TYPES[type_]
    data_field = next(f for f in et.schema["fields"] if f["name"] == "data")
    data = strip(copy.deepcopy(et.example), data_field["type"])
    data.update(over)
    return data


def _record(t: Any) -> dict[str, Any] | None:
    if isinstance(t, dict) and t.get("type") == "record":
        return t
    return None


def _items(t: Any) -> Any:
    if isinstance(t, dict) and t.get("type") == "array":
        return t["items"]
    return None


def _free_port_run(n: int) -> int:
    """The first of `n` consecutive free ports (the workers' web ports), below the kernel's
    ephemeral range: a port taken from that range (as binding port 0 does) can be handed to any
    process's outgoing connection before the worker binds it, seconds later (seen once in CI:
    the notifications worker could not bind its web port and started too late)."""
    import random

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(50):
        base = random.randrange(20_000, max(low, 30_000) - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("0.0.0.0", p))  # noqa: S104 - as the workers bind it
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no {n} consecutive free ports")


@dataclass
class FreshRun:
    """`mohallamart run` in a namespace of its own, and how to read what it wrote."""

    ns: str
    api: str
    dsn: str
    redis_url: str
    bootstrap: str
    env: dict[str, str]
    log: Path

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def log_tail(self) -> str:
        return self.log.read_bytes()[-4000:].decode("utf-8", "replace")


@pytest.fixture(scope="module")
def fresh(
    stack: Stack, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FreshRun]:
    ns = f"fresh{uuid.uuid4().hex[:8]}"
    parts = urlsplit(settings.postgres_dsn)
    dsn = urlunsplit(parts._replace(path=f"/{ns}"))
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{ns}"')
    rparts = urlsplit(settings.redis_dsn)
    redis_url = urlunsplit(rparts._replace(path=f"/{1 + int(ns[5:], 16) % 15}"))
    redis.Redis.from_url(redis_url).flushdb()
    workdir = tmp_path_factory.mktemp(ns)
    api_port = free_port()
    env = {
        **os.environ,
        "TOPIC_NAMESPACE": ns,
        "WORKER_APP_PREFIX": ns,
        "DATABASE_URL": dsn,
        "REDIS_URL": redis_url,
        "TYPESENSE_COLLECTION_PREFIX": f"{ns}_",
        "API_PORT": str(api_port),
        "WORKER_WEB_PORT": str(_free_port_run(7)),
        "WORKER_DATA_DIR": str(workdir / "workers"),
        "LOG_LEVEL": "INFO",
    }
    log = settings.stack_dir / "tests" / f"run-{ns}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "mohallamart.cli", "run"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    run = FreshRun(
        ns, f"http://127.0.0.1:{api_port}", dsn, redis_url, settings.kafka_bootstrap, env, log
    )
    try:
        yield run
    finally:
        proc.send_signal(signal.SIGTERM)  # run stops what it started (here: API and workers)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{ns}" WITH (FORCE)')
        redis.Redis.from_url(redis_url).flushdb()
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
        mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(ns)]
        if mine:
            for f in admin.delete_topics(mine, operation_timeout=30).values():
                f.result(30)
        _drop_collections(settings.typesense_base_url, settings, ns)


def _drop_collections(base: str, settings: Settings, ns: str) -> None:
    key = settings.typesense_api_key.get_secret_value()
    h = {"X-TYPESENSE-API-KEY": key}
    with httpx.Client(base_url=base, headers=h, timeout=10) as c:
        for a in c.get("/aliases").json().get("aliases", []):
            if a["name"].startswith(f"{ns}_"):
                c.delete(f"/aliases/{a['name']}")
        for col in c.get("/collections").json():
            if col["name"].startswith(f"{ns}_"):
                c.delete(f"/collections/{col['name']}")


def _cli(run: FreshRun, *args: str) -> str:
    out = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "mohallamart.cli", *args],
        env=run.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def _committed(run: FreshRun, role: str) -> dict[tuple[str, int], int]:
    admin = AdminClient({"bootstrap.servers": run.bootstrap})
    fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(f"{run.ns}-{role}")])
    res = list(fut.values())[0].result(timeout=10)
    return {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions}


def _ends(run: FreshRun, topics: list[str]) -> dict[tuple[str, int], int]:
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": run.bootstrap, "group.id": f"tests-{uuid.uuid4()}"})
    try:
        out = {}
        meta = c.list_topics(timeout=10).topics
        for t in topics:
            for p in meta[t].partitions:
                out[(t, p)] = c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
        return out
    finally:
        c.close()


def _behind(run: FreshRun) -> list[str]:
    """Every (role, topic partition) whose group has not committed past the records now there."""
    out = []
    for role, categories in ROLE_READS.items():
        topics = [f"{run.ns}.{c}.events" for c in categories]
        got = _committed(run, role)
        for tp, end in _ends(run, topics).items():
            if end > 0 and got.get(tp, -1) < end:
                out.append(f"{role}: {tp[0]}/{tp[1]} at {got.get(tp, -1)} of {end}")
    return out


def _dead_letters(run: FreshRun) -> list[str]:
    """Every record of the namespace's dead-letter topics: 'topic: error class: message'."""
    admin = AdminClient({"bootstrap.servers": run.bootstrap})
    dlqs = [
        t
        for t in admin.list_topics(timeout=10).topics
        if t.startswith(run.ns) and t.endswith(".dlq")
    ]
    ends = _ends(run, dlqs)
    if not any(ends.values()):
        return []
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": run.bootstrap, "group.id": f"tests-{uuid.uuid4()}"})
    out: list[str] = []
    try:
        wanted = {tp: end for tp, end in ends.items() if end > 0}
        c.assign([TopicPartition(t, p, 0) for (t, p) in wanted])
        while wanted:
            msg = c.poll(10)
            assert msg is not None, "timed out reading the dead-letter topics"
            if msg.error():
                continue
            h = {k: (v or b"").decode() for k, v in (msg.headers() or [])}
            fields = ("x-stage", "x-error-class", "x-error-message")
            out.append(": ".join([msg.topic(), *(h.get(f, "") for f in fields)]))
            tp = (msg.topic(), msg.partition())
            if msg.offset() >= wanted.get(tp, 0) - 1:
                wanted.pop(tp, None)
    finally:
        c.close()
    return out


def test_a_fresh_stack_applies_every_event_posted_as_soon_as_it_is_ready(fresh: FreshRun) -> None:
    poll(
        lambda: httpx.get(f"{fresh.api}/readyz", timeout=5).status_code == 200,
        timeout=180,
        interval=0.2,
        what=f"the fresh run's API to be ready (log {fresh.log})",
    )
    # the README's way to a key (the last line printed is the secret)
    key = (
        _cli(fresh, "keys", "create", "--name", "me", "--scopes", "ingest,read,admin")
        .strip()
        .splitlines()[-1]
    )
    http = httpx.Client(base_url=fresh.api, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    posted: list[str] = []
    t0 = time.monotonic()

    def post(body: dict[str, Any]) -> dict[str, Any]:
        r = http.post("/v1/events", json=body)
        assert r.status_code == 202, f"{body['type']}: {r.status_code} {r.text}"
        posted.append(body["type"])
        return r.json()

    for body in readme_examples():
        post(body)

    # every postable type with only its required fields, in an order its lifecycles allow
    sfx = uuid.uuid4().hex[:6]
    u, owner, gone = f"usr_min_{sfx}", f"usr_minown_{sfx}", f"usr_mingone_{sfx}"
    shop, shop2, sk, sk2 = (
        f"shop_min_{sfx}",
        f"shop_minrej_{sfx}",
        f"sk_min_{sfx}",
        f"sk_minrej_{sfx}",
    )
    prd, prd3, sess = f"prd_min_{sfx}", f"prd_minarc_{sfx}", f"sess_min_{sfx}"
    o1, o2, o3 = f"ord_min_{sfx}", f"ord_mincan_{sfx}", f"ord_minrej_{sfx}"
    name = f"Minimal Millet {sfx}"
    expires = (datetime.now(UTC) + timedelta(days=1)).isoformat(timespec="milliseconds")
    first = [
        ("user.registered", minimal("user.registered", user_id=u, email=f"{u}@example.in")),
        ("user.registered", minimal("user.registered", user_id=owner, email=f"{owner}@example.in")),
        ("user.registered", minimal("user.registered", user_id=gone, email=f"{gone}@example.in")),
        ("user.updated", minimal("user.updated", user_id=u, email=f"{u}@example.in")),
        ("user.preferences_changed", minimal("user.preferences_changed", user_id=u)),
        (
            "user.signed_in",
            minimal("user.signed_in", user_id=u, session_id=sess, expires_at=expires),
        ),
        ("user.signed_out", minimal("user.signed_out", user_id=u, session_id=sess)),
        ("user.deleted", minimal("user.deleted", user_id=gone)),
        ("shop.created", minimal("shop.created", shop_id=shop, owner_user_id=owner)),
        ("shop.updated", minimal("shop.updated", shop_id=shop, owner_user_id=owner)),
        (
            "shopkeeper.applied",
            minimal("shopkeeper.applied", shop_id=shop, shopkeeper_id=sk, user_id=owner),
        ),
        (
            "shopkeeper.approved",
            minimal("shopkeeper.approved", shop_id=shop, shopkeeper_id=sk, user_id=owner),
        ),
        ("shop.created", minimal("shop.created", shop_id=shop2, owner_user_id=owner)),
        (
            "shopkeeper.applied",
            minimal("shopkeeper.applied", shop_id=shop2, shopkeeper_id=sk2, user_id=owner),
        ),
        (
            "shopkeeper.rejected",
            minimal("shopkeeper.rejected", shop_id=shop2, shopkeeper_id=sk2, user_id=owner),
        ),
        ("product.created", minimal("product.created", product_id=prd, shop_id=shop, name=name)),
        ("product.updated", minimal("product.updated", product_id=prd, shop_id=shop, name=name)),
        ("product.published", minimal("product.published", product_id=prd, shop_id=shop)),
        (
            "product.stock_set",
            minimal("product.stock_set", product_id=prd, shop_id=shop, quantity=10),
        ),
        (
            "product.stock_adjusted",
            minimal("product.stock_adjusted", product_id=prd, shop_id=shop, delta=5),
        ),
        (
            "product.stock_alert_requested",
            minimal("product.stock_alert_requested", product_id=prd, shop_id=shop, user_id=u),
        ),
        ("product.created", minimal("product.created", product_id=prd3, shop_id=shop)),
        ("product.published", minimal("product.published", product_id=prd3, shop_id=shop)),
        ("product.archived", minimal("product.archived", product_id=prd3, shop_id=shop)),
        (
            "product.moved_to_draft",
            minimal("product.moved_to_draft", product_id=prd3, shop_id=shop),
        ),
    ]
    line = [{"product_id": prd, "quantity": 1, "unit_price_paise": 2600}]
    for oid in (o1, o2):
        first.append(
            (
                "order.created",
                minimal(
                    "order.created",
                    order_id=oid,
                    shop_id=shop,
                    user_id=u,
                    items=line,
                    total_paise=2600,
                ),
            )
        )
    too_many = [{"product_id": prd, "quantity": 1000, "unit_price_paise": 2600}]
    first.append(
        (
            "order.created",
            minimal(
                "order.created",
                order_id=o3,
                shop_id=shop,
                user_id=u,
                items=too_many,
                total_paise=2_600_000,
            ),
        )
    )
    first += [
        ("notification.requested", minimal("notification.requested", user_id=u)),
        ("analytics.tracked", minimal("analytics.tracked", session_id=sess)),
        ("search.reindex_requested", minimal("search.reindex_requested")),
        (
            "cleanup.expired_sessions",
            minimal("cleanup.expired_sessions", cutoff="2026-11-01T00:00:00Z"),
        ),
        ("cleanup.old_logs", minimal("cleanup.old_logs", cutoff="2026-08-01T00:00:00Z")),
    ]
    for type_, data in first:
        post({"type": type_, "data": data})

    def status(oid: str) -> str | None:
        r = http.get(f"/v1/orders/{oid}")
        return r.json()["status"] if r.status_code == 200 else None

    def wait(probe: Any, what: str) -> Any:
        left = APPLIED_WITHIN_S - (time.monotonic() - t0)
        return poll(probe, timeout=max(left, 0.5), interval=0.2, what=f"{what} (log {fresh.log})")

    # the judged order events go once the stock role has accepted the orders
    wait(lambda: status(o1) == "PROCESSING" and status(o2) == "PROCESSING", "both orders accepted")
    post(
        {
            "type": "order.status_changed",
            "data": minimal(
                "order.status_changed", order_id=o1, shop_id=shop, user_id=u, to_status="COMPLETED"
            ),
        }
    )
    post(
        {
            "type": "order.cancelled",
            "data": minimal("order.cancelled", order_id=o2, shop_id=shop, user_id=u),
        }
    )
    wait(lambda: status(o1) == "COMPLETED", "the order completed")
    post(
        {
            "type": "order.refunded",
            "data": minimal(
                "order.refunded", order_id=o1, shop_id=shop, user_id=u, refund_paise=2600
            ),
        }
    )

    postable = {n for n, et in EVENT_TYPES.items() if et.postable}
    assert postable <= set(posted), f"not posted: {sorted(postable - set(posted))}"

    # what users read
    wait(lambda: status("ord_1001") == "PROCESSING", "the README's order accepted (stock reserved)")
    wait(
        lambda: http.get("/v1/products/prd_3001/stock").json().get("stock") == 38,
        "prd_3001's stock 40 - 2",
    )
    wait(
        lambda: status(o1) == "REFUNDED" and status(o2) == "CANCELLED",
        "the minimal orders' lifecycle",
    )
    rejected = wait(
        lambda: (r := http.get(f"/v1/orders/{o3}")).json().get("status") == "REJECTED" and r.json(),
        "the order over the stock rejected",
    )
    assert rejected["status_reason_code"] == "INSUFFICIENT_STOCK"
    assert rejected["status_reason"].startswith("INSUFFICIENT_STOCK: ")
    assert prd in rejected["status_reason"]
    user = wait(
        lambda: (r := http.get(f"/v1/users/{owner}")).status_code == 200 and r.json(),
        "a user registered without preferences",
    )
    assert user["preferences"] == record_defaults("user.registered", "preferences")
    for who in ("usr_1001", u):
        wait(
            lambda who=who: any(
                n["kind"] == "WELCOME" and n["channel"] == "EMAIL" and n["status"] == "SENT"
                for n in http.get("/v1/notifications", params={"user_id": who}).json()[
                    "notifications"
                ]
            ),
            f"{who}'s welcome email sent",
        )
    wait(
        lambda: (
            [
                h["product_id"]
                for h in http.get("/v1/search/products", params={"q": name}).json()["hits"]
            ]
            == [prd]
        ),
        "the minimal product searchable",
    )
    r = redis.Redis.from_url(fresh.redis_url)
    wait(lambda: r.exists(cache_key("product", prd)) == 1, "the minimal product's cached view")
    cutoffs = {datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 23, tzinfo=UTC)}
    wait(
        lambda: (
            {c for (c,) in fresh.rows("SELECT cutoff FROM job_runs WHERE job = 'expired_sessions'")}
            >= cutoffs
        ),
        "both cleanup runs of expired_sessions recorded",
    )
    behind: list[str] = []

    def caught_up() -> bool:
        behind[:] = _behind(fresh)
        return not behind

    try:
        wait(caught_up, "every role to commit every record posted")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nbehind: {behind}\n{fresh.log_tail()}") from None
    assert _dead_letters(fresh) == [], fresh.log_tail()
    assert "PartitionsMismatch" not in fresh.log.read_text(errors="replace")


def test_keys_scopes_and_principal_as_the_readme_says(fresh: FreshRun) -> None:
    import json

    poll(
        lambda: httpx.get(f"{fresh.api}/readyz", timeout=5).status_code == 200,
        timeout=180,
        interval=0.2,
        what="the fresh run's API to be ready",
    )
    made = json.loads(
        _cli(fresh, "keys", "create", "--name", "pos", "--scopes", "ingest", "--json")
    )
    assert made["principal"] == "admin" and made["scopes"] == ["ingest"]
    assert made["key"].startswith(f"mm_{made['key_id']}_")
    reader = (
        _cli(fresh, "keys", "create", "--name", "r", "--scopes", "read").strip().splitlines()[-1]
    )

    def status(key: str, method: str, path: str, **kw: Any) -> int:
        h = {"Authorization": f"Bearer {key}"}
        return httpx.request(method, f"{fresh.api}{path}", headers=h, timeout=10, **kw).status_code

    body = {"type": "search.reindex_requested", "data": {"collection": "products"}}
    assert status(reader, "POST", "/v1/events", json=body) == 403  # ingest scope
    assert status(made["key"], "GET", "/v1/users/usr_1001") == 403  # read scope
    assert status(reader, "GET", "/v1/notifications", params={"user_id": "usr_1001"}) == 403
