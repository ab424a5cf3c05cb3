"""Notifications under faults: a worker killed during a burst, the SMTP server down for 12 s."""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from core.settings import get_settings
from schemas.catalog import TOPICS
from streams.agents.workflows import derived_id
from tests.integration._cli import mohallamart
from tests.integration._pipeline import Pipeline, uid
from tests.integration._support import poll, report
from tests.integration.test_notifications import (
    _drained,
    _mails,
    _order,
    _order_event,
    _outbox,
    _phone,
    _register,
    _shop_with_product,
)

pytestmark = pytest.mark.integration


def test_kill_9_of_the_notifications_worker_during_a_burst_of_1000(pipeline: Pipeline) -> None:
    p = pipeline
    user, address, _ = _register(p, email_opt_in=True)
    p.wait_row("SELECT 1 FROM users WHERE user_id = %s", user, what="the user row")
    tag = uid("burst")
    events = [
        p.event(
            "notification.requested",
            {
                "user_id": user,
                "kind": "GENERIC",
                "channels": ["EMAIL"],
                "title": f"{tag} {i:04d}",
                "body": f"Message {i} of the burst",
                "params": {},
            },
        )
        for i in range(1000)
    ]
    p.post_batch(events)

    def sent() -> int:
        row = p.row(
            "SELECT count(*) FROM notification_outbox WHERE user_id = %s AND kind = 'GENERIC' "
            "AND status = 'SENT'",
            user,
        )
        return int(row[0]) if row else 0

    poll(lambda: sent() >= 200 or None, timeout=120, interval=0.05, what="200 emails sent")
    p.workers.kill9("notifications")
    at_kill = sent()
    p.workers.restart("notifications")
    poll(lambda: sent() == 1000 or None, timeout=240, interval=0.5, what="every email sent")
    p.caught_up("notifications", ["notification"], timeout=60)

    def burst() -> list[Any]:
        return [m for m in _mails(p, address) if m["Subject"].startswith(tag)]

    poll(
        lambda: len({m["Message-ID"] for m in burst()}) >= 1000 or None,
        timeout=60,
        what="every email of the burst in the Maildir",
    )
    ids = Counter(m["Message-ID"].strip() for m in burst())
    repeats = sum(n - 1 for n in ids.values())
    report(
        f"kill -9 during 1,000 emails: {at_kill} delivered at the kill, 1,000 distinct "
        f"Message-IDs afterwards, {repeats} repeated"
    )
    assert len(ids) == 1000
    # the email agent sends on EMAIL_POOL_SIZE connections at once: at most those were in flight
    assert repeats <= get_settings().email_pool_size
    assert {m["Subject"] for m in burst()} == {f"{tag} {i:04d}" for i in range(1000)}


@pytest.mark.restarts_stack
def test_smtp_down_for_12_s_email_waits_sms_and_push_keep_flowing(
    pipeline: Pipeline, providers: Any
) -> None:
    p = pipeline
    owner, _, _ = _register(p, push_opt_in=True)
    customer, address, _ = _register(p, email_opt_in=True, sms_opt_in=True)
    phone = _phone(p, customer)
    shop, pid = _shop_with_product(p, owner, stock=100)
    _drained(p)
    out = mohallamart("stack", "stop", "smtp")
    assert out.returncode == 0, out.stderr
    down_at = time.monotonic()
    orders: list[str] = []
    try:
        for _ in range(5):
            orders.append(_order(p, shop, pid, customer, 1))
        # SMS and push keep flowing while email waits
        poll(
            lambda: len(providers.sent("/sms", phone)) == 5 or None,
            timeout=60,
            what="the SMS while SMTP is down",
        )
        poll(lambda: len(providers.sent("/push", owner)) == 5 or None, timeout=60, what="push")
        sms_after = time.monotonic() - down_at

        def email_waits() -> bool:
            metrics = p.workers.metrics("notifications")
            return bool(
                re.search(
                    r'mohallamart_worker_dependency_down\{role="notifications",'
                    r'stage="notifications/deliver_email"\} 1\.0',
                    metrics,
                )
            )

        poll(email_waits, timeout=60, what="the email agent to wait for SMTP")
        assert not [m for m in _mails(p, address) if m["Subject"].startswith("Your order")]
        while time.monotonic() - down_at < 12:
            time.sleep(0.5)
    finally:
        out = mohallamart("stack", "start", "smtp")
        assert out.returncode == 0, out.stderr
    up_at = time.monotonic()
    subjects = {f"Your order {oid} is confirmed" for oid in orders}
    poll(
        lambda: subjects <= {m["Subject"] for m in _mails(p, address)} or None,
        timeout=90,
        interval=1,
        what="every email after SMTP is back",
    )
    report(
        f"SMTP down {up_at - down_at:.1f} s: 5 SMS + 5 push delivered {sms_after:.1f} s into "
        f"the outage; the 5 emails {time.monotonic() - up_at:.1f} s after SMTP returned"
    )
    for oid in orders:
        accepted = _order_event(p, "order.accepted", oid)
        assert _outbox(p, accepted["id"], "order_confirmed") == {"EMAIL": "SENT", "SMS": "SENT"}
        request = derived_id(accepted["id"], "order_confirmed")
        assert p.dead_letters(TOPICS["notification"].name, request) == []
    assert len([m for m in _mails(p, address) if m["Subject"] in subjects]) == 5


def test_a_notification_being_sent_by_one_worker_is_not_sent_by_another(
    settings: Any,
) -> None:
    """The outbox row of a message being sent belongs to the process that claimed it: another
    process (the partition's next owner after a rebalance, while the last one finishes its batch)
    is told to wait while the claim holds, and finds it settled afterwards; a claim older than
    the lease (its claimant crashed) is taken over."""
    import asyncio

    import psycopg

    from connectors.outbox import ClaimedElsewhere, Outbox

    event_id = str(uuid.uuid4())
    row = {
        "event_id": event_id,
        "channel": "EMAIL",
        "recipient": "someone@example.in",
        "user_id": uid("usr"),
        "kind": "GENERIC",
        "msg_id": f"<{event_id}.email@tests>",
        "trace_id": event_id,
    }
    key = {k: row[k] for k in ("event_id", "channel", "recipient")}

    async def run() -> list[Any]:
        seen: list[Any] = []
        async with await psycopg.AsyncConnection.connect(
            settings.postgres_dsn, autocommit=True
        ) as conn:
            seen.append(await Outbox.claim(conn, **row, owner="worker-a"))
            seen.append(await Outbox.claim(conn, **row, owner="worker-a"))  # its own: again
            try:
                await Outbox.claim(conn, **row, owner="worker-b")
                seen.append("claimed")
            except ClaimedElsewhere as exc:
                seen.append(str(exc))
            # a claim older than the lease is taken over (its claimant is gone)
            seen.append(await Outbox.claim(conn, **row, owner="worker-b", lease_s=0))
            await Outbox.settle(conn, **key, status="SENT")
            seen.append(await Outbox.claim(conn, **row, owner="worker-c"))  # settled: never again
        return seen

    seen = asyncio.run(run())
    assert seen[0] is True and seen[1] is True
    assert "being sent by another worker" in seen[2], seen[2]
    assert seen[3] is True
    assert seen[4] is False
