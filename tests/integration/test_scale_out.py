"""Scale-out under load: each of three roles (projections, stock, notifications) runs two workers;
twice during a 12,000-event load a third worker joins each role (the first time the
fixture's worker of the role leaves, the second time the one that joined) and, once the group has
rebalanced onto three, one of the others leaves (a graceful stop, as a deployment scales in).
Every row, stock movement and email is there exactly once, and no worker logs offsets as
skipped. A revocation hands a partition over only after the batches in flight on it are settled
and committed (faust waits for every record taken to be acknowledged before it commits and
gives the partition up), so the next owner starts where the last one ended."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from schemas.catalog import TOPICS
from tests.integration._pipeline import Pipeline, example, order_created, uid
from tests.integration._support import poll, report
from tests.integration.test_notifications import _mails

pytestmark = pytest.mark.integration

ORDERS, PRODUCTS = TOPICS["order"].name, TOPICS["product"].name
#: role -> (the fixture's worker that leaves and comes back, the one that stays)
ROLES = {
    "projections": "projections",
    "stock": "stock-1",
    "notifications": "notifications",
}
CYCLES = 2
EVENTS = 12_000
EMAILS = 600
ORDERS_N = 9_000
#: what a worker logs when its consumer would jump over offsets (streams.transport.driver)
SKIPPED = "skipped by the consumer"


def _members(admin: AdminClient, group: str) -> tuple[str, int, bool]:
    """(state, members, every member has partitions)."""
    desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    members = list(desc.members)
    assigned = all(m.assignment and m.assignment.topic_partitions for m in members)
    return str(desc.state).rsplit(".", 1)[-1], len(members), assigned


def _wait_members(p: Pipeline, admin: AdminClient, role: str, n: int) -> None:
    group = f"{p.settings.worker_app_prefix}-{role}"
    seen: list[Any] = []

    def stable() -> bool:
        seen[:] = [_members(admin, group)]
        state, count, assigned = seen[0]
        return bool(state == "STABLE" and count == n and assigned)

    try:
        poll(stable, timeout=120, interval=0.5, what=f"{group} stable with {n} members")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: last seen {seen}\n{p.workers.describe(role)}") from None


def test_workers_join_and_leave_twice_during_a_12000_event_load(pipeline: Pipeline) -> None:
    p = pipeline
    admin = AdminClient({"bootstrap.servers": p.settings.kafka_bootstrap})
    rng = random.Random(20_000)
    # -- the load: products, one customer's emails, orders, restocks -------------------------
    catalogue = {uid("shop"): [uid("prd") for _ in range(10)] for _ in range(20)}
    initial = 100_000
    first = [
        Pipeline.event(
            "product.created",
            example("product.created", product_id=pid, shop_id=shop, initial_stock=initial),
        )
        for shop, pids in catalogue.items()
        for pid in pids
    ]
    expected = {pid: initial for pids in catalogue.values() for pid in pids}
    movements = len(expected)
    user = uid("usr")
    address = f"{user}@example.in"
    data = example("user.registered", user_id=user, email=address, phone=None)
    data["preferences"] = {
        **data["preferences"],
        "email_opt_in": True,
        "sms_opt_in": False,
        "push_opt_in": False,
    }
    first.append(Pipeline.event("user.registered", data))
    tag = uid("scale")
    load: list[dict[str, Any]] = [
        Pipeline.event(
            "notification.requested",
            {
                "user_id": user,
                "kind": "GENERIC",
                "channels": ["EMAIL"],
                "title": f"{tag} {i:05d}",
                "body": f"Message {i} of the scale-out load",
                "params": {},
            },
        )
        for i in range(EMAILS)
    ]
    orders: dict[str, dict[str, int]] = {}
    n_orders = ORDERS_N
    for _ in range(n_orders):
        shop = rng.choice(list(catalogue))
        items = {pid: rng.randint(1, 3) for pid in rng.sample(catalogue[shop], rng.randint(1, 3))}
        oid = uid("ord")
        orders[oid] = items
        load.append(order_created(oid, shop, items, unit_paise=500))
        for pid, q in items.items():
            expected[pid] -= q
        movements += len(items)
    restocks = EVENTS - len(first) - len(load)
    for _ in range(restocks):
        shop = rng.choice(list(catalogue))
        pid = rng.choice(catalogue[shop])
        load.append(
            Pipeline.event(
                "product.stock_adjusted",
                example("product.stock_adjusted", product_id=pid, shop_id=shop, delta=1),
            )
        )
        expected[pid] += 1
        movements += 1
    rng.shuffle(load)
    assert len(first) + len(load) == EVENTS

    # -- two workers per role ---------------------------------------------------------------
    stays = {"projections": "projections-b", "stock": "stock-2", "notifications": "notifications-b"}
    started_here = ["projections-b", "notifications-b"]
    extra = {role: f"{role}-x" for role in ROLES}
    logs = {}
    for role, name in ROLES.items():
        if stays[role] in started_here:
            p.workers.start_like(stays[role], name)
    names = [*ROLES.values(), *stays.values(), *extra.values()]
    try:
        for role in ROLES:
            _wait_members(p, admin, role, 2)
        p.post_batch(first)
        p.wait_row(
            "SELECT count(*) FROM products WHERE product_id = ANY(%s)",
            list(expected),
            until=lambda r: r[0] == len(expected),
            timeout=60,
            what="the products",
        )
        # the logs from here on: what the workers say during the load
        for name in names:
            if name in (*ROLES.values(), *stays.values()):
                log = p.workers.log_of(name)
                logs[name] = (log, log.stat().st_size)

        # -- the load, posted by a thread of its own, about 1,000 events a second -----------
        posted = threading.Event()
        failure: list[BaseException] = []

        def post() -> None:
            try:
                for i in range(0, len(load), 1000):
                    p.post_batch(load[i : i + 1000])
                    time.sleep(0.5)
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                failure.append(exc)
            finally:
                posted.set()

        started = time.monotonic()
        poster = threading.Thread(target=post, daemon=True)
        poster.start()
        # each cycle: a third worker joins every role; once each group is stable with three
        # members, one of the two older ones leaves (a graceful stop)
        timeline: list[str] = []
        for cycle in range(1, CYCLES + 1):
            joining = extra if cycle % 2 else ROLES
            leaving = ROLES if cycle % 2 else extra
            for role in ROLES:
                if cycle % 2:
                    p.workers.start_like(joining[role], ROLES[role])
                else:
                    p.workers.restart(joining[role])
                if joining[role] not in logs:
                    log = p.workers.log_of(joining[role])
                    logs[joining[role]] = (log, log.stat().st_size if log.exists() else 0)
            for role in ROLES:
                _wait_members(p, admin, role, 3)
            for role in ROLES:
                p.workers.stop(leaving[role])
            for role in ROLES:
                _wait_members(p, admin, role, 2)
            timeline.append(
                f"cycle {cycle} done at {time.monotonic() - started:.0f} s "
                f"({'still posting' if not posted.is_set() else 'load posted'})"
            )
        poster.join(300)
        assert not failure, failure
        posted_s = time.monotonic() - started

        # -- every row, movement and email, exactly once --------------------------------------
        every = list(orders)
        poll(
            lambda: (
                p.row(
                    "SELECT count(*) FROM orders WHERE order_id = ANY(%s) "
                    "AND status = 'PROCESSING'",
                    every,
                )
                == (len(every),)
            ),
            timeout=300,
            interval=1,
            what="every order accepted",
        )
        pids = list(expected)
        poll(
            lambda: (
                p.row("SELECT count(*) FROM inventory_movements WHERE product_id = ANY(%s)", pids)
                == (movements,)
            ),
            timeout=180,
            interval=1,
            what="every movement",
        )

        def sent() -> int:
            row = p.row(
                "SELECT count(*) FROM notification_outbox WHERE user_id = %s AND kind = 'GENERIC' "
                "AND status = 'SENT'",
                user,
            )
            return int(row[0]) if row else 0

        poll(lambda: sent() == EMAILS, timeout=180, interval=1, what="every email sent")
        settled_s = time.monotonic() - started

        # the stock role's figure (products.stock, its latest stock_after) is what was posted,
        # and each product's movements form one chain: sequences 1..n, each stock_after the
        # previous plus its delta (a record applied twice or missed by the stock table across a
        # handover breaks the chain even where the end figure happens to come out right)
        def stock_now() -> dict[str, int]:
            rows = p.rows("SELECT product_id, stock FROM products WHERE product_id = ANY(%s)", pids)
            return {str(k): int(v) for k, v in rows}

        try:
            poll(lambda: stock_now() == expected, timeout=30, interval=1, what="stock")
        except AssertionError:
            pass
        broken: dict[str, str] = {}
        chains: dict[str, list[tuple[int, int, int]]] = {}
        for pid, seq, delta, after in p.rows(
            "SELECT product_id, sequence, delta, stock_after FROM inventory_movements "
            "WHERE product_id = ANY(%s) ORDER BY product_id, sequence",
            pids,
        ):
            chains.setdefault(str(pid), []).append((int(seq), int(delta), int(after)))
        for pid, chain in chains.items():
            level = 0
            for n, (seq, delta, after) in enumerate(chain, start=1):
                if seq != n or after != level + delta:
                    broken[pid] = f"movement {n}: sequence {seq}, {level}{delta:+d} -> {after}"
                    break
                level = after
        sums = {
            str(k): int(v)
            for k, v in p.rows(
                "SELECT product_id, sum(delta) FROM inventory_movements "
                "WHERE product_id = ANY(%s) GROUP BY product_id",
                pids,
            )
        }
        table = stock_now()
        off_table = {k: (table.get(k), v) for k, v in expected.items() if table.get(k) != v}
        off_sums = {k: (sums.get(k), v) for k, v in expected.items() if sums.get(k) != v}
        per = Counter(
            r[0]
            for r in p.rows(
                "SELECT reason FROM inventory_movements WHERE order_id = ANY(%s)", every
            )
        )
        assert per["ORDER_RESERVED"] == sum(len(i) for i in orders.values())
        assert p.row("SELECT count(*) FROM order_items WHERE order_id = ANY(%s)", every) == (
            sum(len(i) for i in orders.values()),
        )
        accepted = {str(ev["id"]) for ev in p.events_of(ORDERS, "order.accepted", every)}
        assert len(accepted) == len(orders)

        def emails() -> list[Any]:
            return [m for m in _mails(p, address) if m["Subject"].startswith(tag)]

        poll(
            lambda: len(emails()) >= EMAILS or None,
            timeout=60,
            what="every email in the Maildir",
        )
        ids = Counter(m["Message-ID"].strip() for m in emails())
        repeats = sum(n - 1 for n in ids.values())
        assert len(ids) == EMAILS and repeats == 0, f"{len(ids)} emails, {repeats} repeated"
        assert {m["Subject"] for m in emails()} == {f"{tag} {i:05d}" for i in range(EMAILS)}
        assert [h for h, _, _ in p.records(f"{ORDERS}.dlq", keys=every)] == []
        assert [h for h, _, _ in p.records(f"{PRODUCTS}.dlq", keys=pids)] == []
        # nothing skipped: no worker of these roles logged a jump over offsets
        said = {
            name: log.read_bytes()[size:].decode("utf-8", "replace")
            for name, (log, size) in logs.items()
        }
        skipped = {name: text.count(SKIPPED) for name, text in said.items() if SKIPPED in text}
        assert skipped == {}, skipped
        assert (off_table, off_sums, dict(list(broken.items())[:5])) == ({}, {}, {}), (
            f"{len(off_table)} products' stock and {len(off_sums)} products' movement sums "
            f"differ from what was posted (product: (found, expected)); {len(broken)} "
            "products' movements do not chain"
        )
        report(
            f"scale-out: {EVENTS:,} events, {CYCLES} join/leave cycles on 3 roles; load posted "
            f"in {posted_s:.0f} s, every table and email settled after {settled_s:.0f} s "
            f"({'; '.join(timeline)}); {len(ids):,} emails, {repeats} repeated"
        )
    finally:
        # back to the fixture's workers: the originals running, the extras stopped
        for name in ROLES.values():
            if not p.workers.alive(name):
                p.workers.restart(name)
        for name in [*extra.values(), *started_here]:
            if name in p.workers.supervisor.children and p.workers.alive(name):
                p.workers.stop(name)
