"""API -> Kafka -> workers -> PostgreSQL: projections, lifecycles, stock, dead letters."""

from __future__ import annotations

import concurrent.futures
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from schemas.catalog import TOPICS
from streams.reliability import DLQ_HEADERS
from tests.integration._cli import mohallamart
from tests.integration._pipeline import Pipeline, a_bug_refusing, example, order_created, uid
from tests.integration._support import poll

ORDERS, PRODUCTS, USERS = (TOPICS[c].name for c in ("order", "product", "user"))


def _product(p: Pipeline, shop: str, stock: int, **over: Any) -> str:
    pid = uid("prd")
    p.post(
        "product.created",
        example("product.created", product_id=pid, shop_id=shop, initial_stock=stock, **over),
    )
    p.wait_row(
        "SELECT stock FROM products WHERE product_id = %s",
        pid,
        until=lambda r: r[0] == stock,
        what=f"{pid} with stock {stock}",
    )
    return pid


def _order(
    p: Pipeline,
    shop: str,
    *items: tuple[str, int],
    oid: str | None = None,
    at: datetime | None = None,
) -> str:
    oid = oid or uid("ord")
    p.post_event(order_created(oid, shop, dict(items), at=at))
    return oid


def _refused_by_both_roles(p: Pipeline, event_id: str) -> None:
    """The rows and the stock both refuse an order event outside the lifecycle."""
    poll(
        lambda: (
            {h["x-stage"] for h in p.dead_letters(ORDERS, event_id)}
            == {"projections/persist_orders", "stock/reserve_stock"}
        ),
        timeout=30,
        what=f"both roles' refusals of {event_id}",
    )


def _status(p: Pipeline, oid: str, want: str, timeout: float = 30) -> tuple[Any, ...]:
    return p.wait_row(  # type: ignore[no-any-return]
        "SELECT status, status_reason, refund_paise FROM orders WHERE order_id = %s",
        oid,
        until=lambda r: r[0] == want,
        timeout=timeout,
        what=f"order {oid} {want}",
    )


def _stock(p: Pipeline, pid: str) -> int:
    r = p.row("SELECT stock FROM products WHERE product_id = %s", pid)
    assert r is not None
    return int(r[0])


def _audit(p: Pipeline, kind: str, key: str) -> list[tuple[Any, ...]]:
    return p.rows(
        "SELECT from_status, to_status, event_type FROM audit_log "
        "WHERE entity_type = %s AND entity_id = %s ORDER BY occurred_at, recorded_at",
        kind,
        key,
    )


def _dlq(p: Pipeline, topic: str, event_id: str, timeout: float = 30) -> dict[str, str]:
    return poll(  # type: ignore[no-any-return]
        lambda: (p.dead_letters(topic, event_id) or [None])[0],
        timeout=timeout,
        interval=0.5,
        what=f"dead-letter record of {event_id}",
    )


# --- projections ---------------------------------------------------------------------------
def test_users_sessions_shops_and_shopkeepers_are_projected(pipeline: Pipeline) -> None:
    p = pipeline
    user, sess, shop = uid("usr"), uid("sess"), uid("shop")
    p.post("user.registered", example("user.registered", user_id=user))
    p.post("user.updated", example("user.updated", user_id=user, name="Priya Rao"))
    p.post(
        "user.preferences_changed",
        example("user.preferences_changed", user_id=user, sms_opt_in=False),
    )
    # a session that has not expired (an expired one is not written once a cleanup has run)
    expires = (datetime.now(UTC) + timedelta(days=7)).isoformat().replace("+00:00", "Z")
    p.post(
        "user.signed_in",
        example("user.signed_in", user_id=user, session_id=sess, expires_at=expires),
    )
    p.post("shop.created", example("shop.created", shop_id=shop))
    p.post("shop.updated", example("shop.updated", shop_id=shop, delivery_radius_m=5000))
    p.post("shopkeeper.applied", example("shopkeeper.applied", shop_id=shop))
    p.post("shopkeeper.approved", example("shopkeeper.approved", shop_id=shop))
    row = p.wait_row(
        "SELECT name, preferences, status FROM users WHERE user_id = %s",
        user,
        until=lambda r: r[0] == "Priya Rao" and r[1]["sms_opt_in"] is False,
    )
    assert row[2] == "ACTIVE"
    p.wait_row(
        "SELECT ended_at FROM sessions WHERE session_id = %s", sess, until=lambda r: r[0] is None
    )
    p.post("user.signed_out", example("user.signed_out", user_id=user, session_id=sess))
    assert (
        p.wait_row(
            "SELECT end_reason FROM sessions WHERE session_id = %s",
            sess,
            until=lambda r: r[0] is not None,
        )[0]
        == "LOGOUT"
    )
    assert p.wait_row(
        "SELECT delivery_radius_m FROM shops WHERE shop_id = %s", shop, until=lambda r: r[0] == 5000
    )
    assert (
        p.wait_row(
            "SELECT status, decided_by FROM shopkeepers WHERE shop_id = %s",
            shop,
            until=lambda r: r[0] == "APPROVED",
        )[1]
        == "usr_9001"
    )
    assert _audit(p, "shopkeeper", shop) == [
        (None, "PENDING", "shopkeeper.applied"),
        ("PENDING", "APPROVED", "shopkeeper.approved"),
    ]
    p.post("user.deleted", example("user.deleted", user_id=user))
    p.wait_row(
        "SELECT status FROM users WHERE user_id = %s", user, until=lambda r: r[0] == "DELETED"
    )
    # a deleted user stays deleted: a later update is refused, and dead-lettered with its reason
    late = p.post("user.updated", example("user.updated", user_id=user, name="Back"))
    headers = _dlq(p, USERS, late["id"])
    assert headers["x-error-message"] == f"user.updated: user {user} is deleted"
    assert p.row("SELECT name FROM users WHERE user_id = %s", user) == ("Priya Rao",)


def test_product_lifecycle_and_an_illegal_transition(pipeline: Pipeline) -> None:
    p = pipeline
    shop, category = uid("shop"), uid("cat").replace("_", "-")
    pid = _product(p, shop, 5, category=category)
    assert p.row("SELECT 1 FROM categories WHERE category = %s", category) == (1,)
    # Draft -> Archived is not in the table: dead-lettered, the row untouched
    bad = p.post("product.archived", example("product.archived", product_id=pid, shop_id=shop))
    headers = _dlq(p, PRODUCTS, bad["id"])
    assert headers["x-error-class"] == "IllegalTransition"
    assert headers["x-error-message"] == (
        "product.archived is not allowed when the entity is DRAFT (allowed from: PUBLISHED)"
    )
    assert headers["x-stage"] == "projections/persist_products"
    assert p.row("SELECT status FROM products WHERE product_id = %s", pid) == ("DRAFT",)
    for t, want in [
        ("product.published", "PUBLISHED"),
        ("product.archived", "ARCHIVED"),
        ("product.moved_to_draft", "DRAFT"),
        ("product.published", "PUBLISHED"),
        ("product.moved_to_draft", "DRAFT"),
    ]:
        p.post(t, example(t, product_id=pid, shop_id=shop))
        p.wait_row(
            "SELECT status FROM products WHERE product_id = %s",
            pid,
            until=lambda r, want=want: r[0] == want,
            what=f"{pid} {want}",
        )
    p.post(
        "product.updated",
        example("product.updated", product_id=pid, shop_id=shop, price_paise=3100),
    )
    p.wait_row(
        "SELECT price_paise FROM products WHERE product_id = %s", pid, until=lambda r: r[0] == 3100
    )
    assert [r[:2] for r in _audit(p, "product", pid)] == [
        (None, "DRAFT"),
        ("DRAFT", "PUBLISHED"),
        ("PUBLISHED", "ARCHIVED"),
        ("ARCHIVED", "DRAFT"),
        ("DRAFT", "PUBLISHED"),
        ("PUBLISHED", "DRAFT"),
    ]


# --- orders and stock ---------------------------------------------------------------------
def test_order_lifecycle_every_step(pipeline: Pipeline) -> None:
    p = pipeline
    shop = uid("shop")
    a, b = _product(p, shop, 10), _product(p, shop, 3)

    # created -> Processing (accepted, stock reserved) -> Completed -> Refunded (only returns)
    o1 = _order(p, shop, (a, 4), (b, 1))
    _status(p, o1, "PROCESSING")
    p.wait_row("SELECT stock FROM products WHERE product_id = %s", a, until=lambda r: r[0] == 6)
    p.post(
        "order.status_changed",
        example(
            "order.status_changed",
            order_id=o1,
            shop_id=shop,
            from_status="PROCESSING",
            to_status="COMPLETED",
        ),
    )
    _status(p, o1, "COMPLETED")
    p.post(
        "order.refunded",
        example(
            "order.refunded",
            order_id=o1,
            shop_id=shop,
            refund_paise=2000,
            returned_items=[{"product_id": a, "quantity": 2}],
        ),
    )
    assert _status(p, o1, "REFUNDED")[2] == 2000
    p.wait_row("SELECT stock FROM products WHERE product_id = %s", a, until=lambda r: r[0] == 8)
    assert _stock(p, b) == 2  # not returned: the refund did not say it came back
    assert p.rows(
        "SELECT product_id, returned_quantity FROM order_items WHERE order_id = %s ORDER BY line",
        o1,
    ) == [(a, 2), (b, 0)]
    assert [r[:2] for r in _audit(p, "order", o1)] == [
        (None, "PENDING"),
        ("PENDING", "PROCESSING"),
        ("PROCESSING", "COMPLETED"),
        ("COMPLETED", "REFUNDED"),
    ]

    # Processing -> Cancelled: stock returned
    o2 = _order(p, shop, (b, 2))
    _status(p, o2, "PROCESSING")
    p.wait_row("SELECT stock FROM products WHERE product_id = %s", b, until=lambda r: r[0] == 0)
    p.post("order.cancelled", example("order.cancelled", order_id=o2, shop_id=shop))
    _status(p, o2, "CANCELLED")
    p.wait_row("SELECT stock FROM products WHERE product_id = %s", b, until=lambda r: r[0] == 2)

    # not enough stock -> Rejected with the reason; nothing reserved
    o3 = _order(p, shop, (a, 1), (b, 3))
    reason = _status(p, o3, "REJECTED")[1]
    assert reason == f"INSUFFICIENT_STOCK: {b}: 3 requested, 2 in stock"
    assert (_stock(p, a), _stock(p, b)) == (8, 2)

    # a product not yet known is waited for: created meanwhile -> accepted
    late = uid("prd")
    o4 = _order(p, shop, (late, 1))
    p.post(
        "product.created",
        example("product.created", product_id=late, shop_id=shop, initial_stock=2),
    )
    _status(p, o4, "PROCESSING")
    # never known -> Rejected after the wait
    o5 = _order(p, shop, (uid("prd_never"), 1))
    assert _status(p, o5, "REJECTED")[1].startswith("UNKNOWN_PRODUCT")
    # Pending (waiting) -> Cancelled: nothing reserved, nothing returned
    o6 = _order(p, shop, (uid("prd_never"), 1))
    p.post("order.cancelled", example("order.cancelled", order_id=o6, shop_id=shop))
    _status(p, o6, "CANCELLED")

    # every change is a movement; they sum to the stock
    for pid in (a, b, late):
        total = p.row("SELECT sum(delta) FROM inventory_movements WHERE product_id = %s", pid)
        assert total is not None and total[0] == _stock(p, pid)
    # b reached zero once, then rose from zero once
    assert len(p.events_of(PRODUCTS, "product.out_of_stock", [b])) == 1
    assert len(p.events_of(PRODUCTS, "product.back_in_stock", [b])) == 1


def test_illegal_order_transitions_are_dead_lettered(pipeline: Pipeline) -> None:
    p = pipeline
    shop = uid("shop")
    a = _product(p, shop, 5)
    oid = _order(p, shop, (a, 1))
    _status(p, oid, "PROCESSING")
    refund = p.post(
        "order.refunded",
        example(
            "order.refunded",
            order_id=oid,
            shop_id=shop,
            returned_items=[{"product_id": a, "quantity": 1}],
        ),
    )
    headers = _dlq(p, ORDERS, refund["id"])
    _refused_by_both_roles(p, refund["id"])
    assert headers["x-error-message"] == (
        "order.refunded is not allowed when the entity is PROCESSING (allowed from: COMPLETED)"
    )
    for name in DLQ_HEADERS:
        assert headers[name], name
    assert headers["x-original-topic"] == ORDERS
    # the record at those coordinates is the event that was refused
    part, off = int(headers["x-original-partition"]), int(headers["x-original-offset"])
    assert any(ev and str(ev["id"]) == refund["id"] for _, _, ev in p.records(ORDERS, keys=[oid]))
    assert part >= 0 and off >= 0
    # untouched: no refund, no stock back
    assert _status(p, oid, "PROCESSING")[2] is None
    assert _stock(p, a) == 4


def test_same_event_twice_one_effect_and_an_older_event_changes_nothing(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    shop = uid("shop")
    a = _product(p, shop, 10)
    oid = uid("ord")
    ev = Pipeline.event(
        "order.created",
        example(
            "order.created",
            order_id=oid,
            shop_id=shop,
            total_paise=2000,
            delivery_fee_paise=0,
            items=[{"product_id": a, "quantity": 2, "unit_price_paise": 1000, "name": "x"}],
        ),
    )
    assert p.http.post("/v1/events", json=ev).status_code == 202
    again = p.http.post("/v1/events", json=ev)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    _status(p, oid, "PROCESSING")
    # the same record delivered again (as after a crash): produced again, byte for byte
    ((_, value, _),) = [r for r in p.records(ORDERS, keys=[oid]) if r[2]["type"] == "order.created"]
    prod = Producer(
        {"bootstrap.servers": p.settings.kafka_bootstrap, "partitioner": "murmur2_random"}
    )
    prod.produce(ORDERS, key=oid.encode(), value=value)
    assert prod.flush(10) == 0
    marker = _order(p, shop, (a, 1))  # after the copy, in the same shop's stream
    _status(p, marker, "PROCESSING")
    p.wait_row("SELECT stock FROM products WHERE product_id = %s", a, until=lambda r: r[0] == 7)
    assert p.row(
        "SELECT count(*), sum(delta) FROM inventory_movements WHERE order_id = %s", oid
    ) == (1, -2)
    assert len(_audit(p, "order", oid)) == 2
    assert p.row("SELECT count(*) FROM order_items WHERE order_id = %s", oid) == (1,)
    assert len(p.events_of(ORDERS, "order.accepted", [oid])) == 1

    # an older update after a newer one: no change
    now = datetime.now(UTC)
    p.post(
        "product.updated",
        example("product.updated", product_id=a, shop_id=shop, price_paise=5000),
        at=now,
    )
    p.wait_row(
        "SELECT price_paise FROM products WHERE product_id = %s", a, until=lambda r: r[0] == 5000
    )
    p.post(
        "product.updated",
        example("product.updated", product_id=a, shop_id=shop, price_paise=1),
        at=now - timedelta(minutes=5),
    )
    p.post(
        "product.published",
        example("product.published", product_id=a, shop_id=shop),
        at=now + timedelta(seconds=1),
    )
    p.wait_row(
        "SELECT status FROM products WHERE product_id = %s", a, until=lambda r: r[0] == "PUBLISHED"
    )
    assert p.row("SELECT price_paise FROM products WHERE product_id = %s", a) == (5000,)


def test_a_routed_copy_forwarded_again_long_after_is_not_applied_twice(
    pipeline: Pipeline,
) -> None:
    """The stock role's router is at-least-once: after a rebalance or a crash it forwards again
    every record since its last commit, and a busy product may have had many adjustments since
    (the scale-out load once doubled 36 restocks of one product this way)."""
    from confluent_kafka import Consumer, TopicPartition

    from streams.app import stock_by_shop_topic

    p = pipeline
    shop = uid("shop")
    a = _product(p, shop, 10)
    adjust = [
        Pipeline.event(
            "product.stock_adjusted",
            example("product.stock_adjusted", product_id=a, shop_id=shop, delta=1),
        )
        for _ in range(40)
    ]
    p.post_batch(adjust)
    p.wait_row("SELECT stock FROM products WHERE product_id = %s", a, until=lambda r: r[0] == 50)
    # the first adjustment as the router wrote it to the by-shop topic, written there again
    topic = stock_by_shop_topic(p.settings)
    c = Consumer(
        {
            "bootstrap.servers": p.settings.kafka_bootstrap,
            "group.id": f"tests-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    first = None
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        highs = {}
        for n in parts:
            low, high = c.get_watermark_offsets(TopicPartition(topic, n), timeout=10)
            if high > low:
                highs[n] = high
        c.assign([TopicPartition(topic, n, 0) for n in highs])
        while highs and first is None:
            msg = c.poll(10)
            assert msg is not None, f"timed out reading {topic}"
            if msg.error():
                continue
            if msg.offset() >= highs.get(msg.partition(), 0) - 1:
                highs.pop(msg.partition(), None)
            if (
                msg.key() == shop.encode()
                and (msg.value() or b"")
                and str(p.decoder.decode(msg.value())["id"]) == str(adjust[0]["id"])
            ):
                first = msg
    finally:
        c.close()
    assert first is not None, "the first adjustment is not in the by-shop topic"
    prod = Producer({"bootstrap.servers": p.settings.kafka_bootstrap})
    prod.produce(
        topic,
        key=first.key(),
        value=first.value(),
        partition=first.partition(),
        headers=first.headers(),
    )
    assert prod.flush(10) == 0
    after = p.post(
        "product.stock_adjusted",
        example("product.stock_adjusted", product_id=a, shop_id=shop, delta=1),
    )
    # the adjustment after the copy, in the same partition: its movement projected
    p.wait_row(
        "SELECT count(*) FROM inventory_movements WHERE cause_event_id = %s",
        after["id"],
        until=lambda r: r[0] == 1,
    )
    assert _stock(p, a) == 51, "the copy was applied again"
    chain = p.rows(
        "SELECT sequence, stock_after FROM inventory_movements WHERE product_id = %s "
        "ORDER BY sequence",
        a,
    )
    assert chain == [(n, 10 + n - 1) for n in range(1, 43)]


def test_hundred_concurrent_orders_for_ten_units_with_two_stock_workers(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    assert p.workers.alive("stock-1") and p.workers.alive("stock-2")
    admin = AdminClient({"bootstrap.servers": p.settings.kafka_bootstrap})
    described = admin.describe_consumer_groups(["mohallamart-stock"], request_timeout=10)
    group = described["mohallamart-stock"].result()
    assert len(group.members) == 2, "two stock workers share the stock role's partitions"
    shop = uid("shop")
    a = _product(p, shop, 10)
    orders = [uid("ord") for _ in range(100)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda o: _order(p, shop, (a, 1), oid=o), orders))
    poll(
        lambda: (
            p.row(
                "SELECT count(*) FROM orders WHERE order_id = ANY(%s) AND status <> 'PENDING'",
                orders,
            )
            == (100,)
        ),
        timeout=60,
        what="100 orders decided",
    )
    counts = dict(
        p.rows(
            "SELECT status, count(*) FROM orders WHERE order_id = ANY(%s) GROUP BY status", orders
        )
    )
    assert counts == {"PROCESSING": 10, "REJECTED": 90}
    reasons = p.rows(
        "SELECT DISTINCT status_reason FROM orders WHERE order_id = ANY(%s) "
        "AND status = 'REJECTED'",
        orders,
    )
    assert reasons == [(f"INSUFFICIENT_STOCK: {a}: 1 requested, 0 in stock",)]
    p.wait_row("SELECT stock FROM products WHERE product_id = %s", a, until=lambda r: r[0] == 0)
    assert p.row(
        "SELECT count(*), sum(delta) FROM inventory_movements WHERE product_id = %s "
        "AND reason = 'ORDER_RESERVED'",
        a,
    ) == (10, -10)
    assert p.row("SELECT sum(delta) FROM inventory_movements WHERE product_id = %s", a) == (0,)
    assert len(p.events_of(PRODUCTS, "product.out_of_stock", [a])) == 1


# --- the reliability mechanism ---------------------------------------------------------------
def test_undecodable_bytes_are_dead_lettered_and_the_partition_flows(pipeline: Pipeline) -> None:
    # the product topic, read by both roles (the README's analytics consumer reads the order
    # topic from its start, and our topics hold only valid Avro unless someone writes around
    # the API, as this test does)
    p = pipeline
    shop, pid = uid("shop"), uid("prd")
    prod = Producer(
        {"bootstrap.servers": p.settings.kafka_bootstrap, "partitioner": "murmur2_random"}
    )
    garbage = b"\x00\x00\x00\x00\x07not avro at all " + uuid.uuid4().bytes
    prod.produce(PRODUCTS, key=pid.encode(), value=garbage)
    assert prod.flush(10) == 0
    # after it, the same key: both roles go on (the row, and the stock role's first movement)
    p.post("product.created", example("product.created", product_id=pid, shop_id=shop))
    p.wait_row("SELECT 1 FROM inventory_movements WHERE product_id = %s", pid, what="movement")
    letters = poll(
        lambda: (
            [(h, v) for h, v, _ in p.records(f"{PRODUCTS}.dlq", keys=[pid]) if v == garbage] or None
        ),
        timeout=30,
        what="the garbage's letter",
    )
    assert len(letters) == 1, "one dead letter, not one per role"
    headers = letters[0][0]
    assert headers["x-original-topic"] == PRODUCTS
    assert headers["x-stage"] == "projections/decode"
    assert headers["x-error-class"] in ("UndecodableRecord", "UnknownSchema")
    assert headers["x-attempts"] == "1"
    assert int(headers["x-original-offset"]) >= 0
    assert headers["x-first-failure-time"]


def test_dead_letters_are_listed_and_redriven_once(pipeline: Pipeline) -> None:
    p = pipeline
    shop = uid("shop")
    a = _product(p, shop, 5)
    oid = _order(p, shop, (a, 1))
    _status(p, oid, "PROCESSING")

    # 1. a bug refuses one product's row (a trigger): its batch is split, the record retried
    #    (0.3, 0.6, 1.2 s in the test profile), then dead-lettered; the others are applied
    boom, fine = uid("prd_boom"), [uid("prd") for _ in range(3)]
    with a_bug_refusing(p, boom):
        created = [
            Pipeline.event(
                "product.created",
                example("product.created", product_id=pid, shop_id=shop, initial_stock=3),
            )
            for pid in [fine[0], boom, *fine[1:]]
        ]
        p.post_batch(created)
        bug = _dlq(p, PRODUCTS, created[1]["id"])
        assert bug["x-error-class"] == "RaiseException"
        assert bug["x-attempts"] == "4"
        assert bug["x-stage"] == "projections/persist_products"
        assert f"a bug refuses {boom}" in bug["x-error-message"]
        for pid in fine:
            p.wait_row(
                "SELECT stock FROM products WHERE product_id = %s", pid, until=lambda r: r[0] == 3
            )

    # 2. archived while Draft: refused; later superseded by a newer, legal archive
    stale = p.post("product.archived", example("product.archived", product_id=a, shop_id=shop))
    # 3. refunded before completion: refused by both roles; superseded once it is completed
    early = p.post(
        "order.refunded",
        example(
            "order.refunded",
            order_id=oid,
            shop_id=shop,
            returned_items=[{"product_id": a, "quantity": 1}],
        ),
    )
    # 4. a stock adjustment below zero: refused by the stock role; it can never succeed
    neg = p.post(
        "product.stock_adjusted",
        example("product.stock_adjusted", product_id=a, shop_id=shop, delta=-100),
    )
    _dlq(p, PRODUCTS, stale["id"])
    _refused_by_both_roles(p, early["id"])
    neg_headers = _dlq(p, PRODUCTS, neg["id"])
    assert neg_headers["x-stage"] == "stock/reserve_stock"
    assert "negative" in neg_headers["x-error-message"]

    listed = mohallamart("dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    pending = {d["event_id"] for d in json.loads(listed.stdout) if d["status"] == "pending"}
    assert {created[1]["id"], stale["id"], early["id"], neg["id"]} <= pending

    p.post(
        "order.status_changed",
        example("order.status_changed", order_id=oid, shop_id=shop, to_status="COMPLETED"),
    )
    _status(p, oid, "COMPLETED")
    p.post("product.published", example("product.published", product_id=a, shop_id=shop))
    p.post("product.archived", example("product.archived", product_id=a, shop_id=shop))
    p.wait_row(
        "SELECT status FROM products WHERE product_id = %s", a, until=lambda r: r[0] == "ARCHIVED"
    )

    ids = [created[1]["id"], stale["id"], early["id"], neg["id"]]
    out = mohallamart("dlq", "redrive", *[x for i in ids for x in ("--id", i)])
    assert out.returncode == 0, out.stderr
    assert f"{stale['id']} superseded" in out.stdout
    assert f"{early['id']} superseded" in out.stdout
    assert "redriven 2, superseded 3" in out.stdout
    # the fixed one applies now, with the stock its movements recorded meanwhile
    assert p.wait_row("SELECT status, stock FROM products WHERE product_id = %s", boom) == (
        "DRAFT",
        3,
    )
    # the superseded refund changed nothing; the order stays Completed, no stock came back
    assert _status(p, oid, "COMPLETED")[2] is None
    assert _stock(p, a) == 4
    # the one that still fails is back in the dead-letter topic once, marked as redriven once
    again = poll(
        lambda: (
            [h for h in p.dead_letters(PRODUCTS, neg["id"]) if h["x-redrive-count"] == "1"] or None
        ),
        timeout=30,
        what="refusal",
    )
    assert len(again) == 1
    # a second redrive sends nothing again: each letter is redriven at most once, no loop
    out = mohallamart("dlq", "redrive", *[x for i in ids[:3] for x in ("--id", i)])
    assert "redriven 0, superseded 0" in out.stdout
    listed = json.loads(mohallamart("dlq", "list", "--json").stdout)
    mine = sorted((d["redrive_count"], d["status"]) for d in listed if d["event_id"] == neg["id"])
    assert mine == [(0, "redriven"), (1, "pending")]
