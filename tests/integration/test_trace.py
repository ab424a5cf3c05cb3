"""`GET /v1/events/{id}/trace`: one event's path, read from the project's own records."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.integration._pipeline import Pipeline, a_bug_refusing, example, order_created, uid
from tests.integration._support import poll

pytestmark = pytest.mark.integration


def _trace(p: Pipeline, event_id: str) -> dict[str, Any]:
    r = p.http.get(f"/v1/events/{event_id}/trace")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _hops(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [h for h in body["hops"] if h["hop"] == kind]


def test_an_order_is_traced_from_its_acknowledgement_to_its_stock_movement(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    shop, pid = uid("shop"), uid("prd")
    p.post("shop.created", example("shop.created", shop_id=shop))
    p.post(
        "product.created", example("product.created", product_id=pid, shop_id=shop, initial_stock=5)
    )
    p.wait_row("SELECT 1 FROM inventory_movements WHERE product_id = %s", pid, timeout=60)
    oid = uid("ord")
    ev = order_created(oid, shop, {pid: 2})
    # a client's W3C trace context: its trace id becomes the event's, and its derived events'
    trace_id = uuid.uuid4().hex
    r = p.http.post(
        "/v1/events", json=ev, headers={"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}
    )
    assert r.status_code == 202, r.text
    claim = p.wait_row(
        'SELECT topic, "partition", "offset" FROM ingest_claims WHERE event_id = %s '
        "AND status = 'done'",
        ev["id"],
        timeout=30,
    )

    def traced() -> dict[str, Any] | None:
        body = _trace(p, ev["id"])
        return body if _hops(body, "stock_movement") and _hops(body, "order_now") else None

    body = poll(traced, timeout=90, what="the order's stock movement and acceptance")
    assert body["type"] == "order.created" and body["trace_id"] == trace_id
    (ack,) = _hops(body, "acknowledged")
    assert (ack["topic"], ack["partition"], ack["offset"]) == claim
    (projected,) = _hops(body, "projected")
    assert projected["table"] == "orders" and projected["key"] == oid
    # the stock role's order.accepted moved the row on: this event's version is behind it
    assert projected["state"] == "superseded by a later event"
    (now,) = _hops(body, "order_now")
    assert now["status"] == "PROCESSING"
    (movement,) = _hops(body, "stock_movement")
    assert (movement["product_id"], movement["delta"], movement["stock_after"]) == (pid, -2, 3)
    # the derived movement is traced back to its cause
    derived = _trace(p, movement["derived_event_id"])
    (cause,) = _hops(derived, "derived")
    assert cause["cause_event_id"] == ev["id"] and cause["by"] == "stock"
    # hops come in time order (those without a time last)
    times = [h["at"] for h in body["hops"] if h["at"] is not None]
    assert times == sorted(times)


def test_a_registration_shows_its_row_cache_and_welcome_email(pipeline: Pipeline) -> None:
    p = pipeline
    user = uid("usr_trace")
    data = example("user.registered", user_id=user, email=f"{user}@example.in", phone=None)
    data["preferences"] = {**data["preferences"], "email_opt_in": True}
    ev = p.post("user.registered", data)

    def traced() -> dict[str, Any] | None:
        body = _trace(p, ev["id"])
        sent = [n for n in _hops(body, "notification") if n["status"] == "SENT"]
        cached = [c for c in _hops(body, "cached") if c["state"] == "this event's version"]
        return body if sent and cached else None

    body = poll(traced, timeout=120, what="the welcome email sent and the view cached")
    (projected,) = _hops(body, "projected")
    assert (projected["table"], projected["state"]) == ("users", "applied")
    email = [n for n in _hops(body, "notification") if n["channel"] == "EMAIL"][0]
    # addresses are masked: a trace is read by operators, not by the user
    assert email["recipient"] == f"{user[:1]}***@example.in"
    assert f"{user}@example.in" not in str(body)


def test_a_refused_event_shows_its_refusal_and_dead_letter(pipeline: Pipeline) -> None:
    p = pipeline
    # a product that was never created cannot be published: refused, dead-lettered
    ev = p.post("product.published", {"product_id": uid("prd_ghost"), "shop_id": uid("shop")})

    def traced() -> dict[str, Any] | None:
        body = _trace(p, ev["id"])
        return body if _hops(body, "refused") and _hops(body, "dead_lettered") else None

    body = poll(traced, timeout=90, what="the refusal and its dead letter")
    (refused,) = _hops(body, "refused")
    assert refused["error_class"] == "IllegalTransition"
    dead = _hops(body, "dead_lettered")
    assert all(d["topic"].endswith("product.events.dlq") for d in dead)
    assert any(d["stage"].startswith("projections/") for d in dead)


def test_an_event_redriven_after_the_fix_reads_as_applied_beside_its_old_refusal(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    # a bug (a trigger) refuses one product's row: dead-lettered, its refusal recorded
    boom = uid("prd_boom")
    with a_bug_refusing(p, boom):
        ev = p.post("product.created", example("product.created", product_id=boom))
        poll(
            lambda: _hops(_trace(p, ev["id"]), "dead_lettered") or None,
            timeout=90,
            what="the refused product's dead letter",
        )
    # fixed, then redriven: its row holds this event's version
    r = p.http.post("/v1/ops/dead-letters/redrive", json={"event_ids": [ev["id"]]})
    assert r.status_code == 200 and r.json()["redriven"] == 1, r.text
    p.wait_row("SELECT 1 FROM products WHERE product_id = %s", boom, timeout=60)
    body = _trace(p, ev["id"])
    assert _hops(body, "refused") and _hops(body, "redriven")
    (projected,) = _hops(body, "projected")
    assert projected["state"] == "applied", projected


def test_trace_answers_404_403_and_422(pipeline: Pipeline, make_key: Any) -> None:
    p = pipeline
    missing = p.http.get(f"/v1/events/{uuid.uuid4()}/trace")
    assert missing.status_code == 404, missing.text
    bad = p.http.get("/v1/events/not-a-uuid/trace")
    assert bad.status_code == 422, bad.text
    user_key = make_key(["read"], principal="user:u_trace")
    forbidden = p.http.get(
        f"/v1/events/{uuid.uuid4()}/trace", headers={"Authorization": f"Bearer {user_key}"}
    )
    assert forbidden.status_code == 403, forbidden.text


def test_an_order_and_a_tracked_event_show_the_analytics_windows_holding_them(
    pipeline: Pipeline,
) -> None:
    p = pipeline
    # the analytics role of the pipeline's own topics, for this test only
    p.workers.start("analytics-trace", "analytics")
    try:
        shop, pid = uid("shop"), uid("prd")
        p.post("shop.created", example("shop.created", shop_id=shop))
        p.post(
            "product.created",
            example("product.created", product_id=pid, shop_id=shop, initial_stock=9),
        )
        p.wait_row("SELECT 1 FROM inventory_movements WHERE product_id = %s", pid, timeout=60)
        ev = p.post_event(order_created(uid("ord"), shop, {pid: 3}, unit_paise=2500))
        session = uid("sess")
        tracked = p.post_event(
            p.event(
                "analytics.tracked",
                {"session_id": session, "kind": "PRODUCT_VIEW", "shop_id": shop, "user_id": None},
            )
        )

        def windows(event_id: str, n: int) -> dict[str, Any] | None:
            body = _trace(p, event_id)
            return body if len(_hops(body, "window")) >= n else None

        # the order counts once accepted: its acceptance's sales windows and trending pane
        body = poll(lambda: windows(ev["id"], 4), timeout=120, what="the order's analytics windows")
        got = {h["window"]: h for h in _hops(body, "window")}
        assert set(got) == {"sales_1m", "sales_1h", "sales_1d", "trending (5-minute pane)"}
        (now,) = _hops(body, "order_now")
        for kind in ("sales_1m", "sales_1h", "sales_1d"):
            h = got[kind]
            assert h["key"] == shop and h["via_event"] == now["moved_by_event"]
            assert h["values"]["revenue_paise"] == 7500 and h["values"]["orders"] == 1
        pane = got["trending (5-minute pane)"]
        assert pane["key"] == f"{shop}/{pid}" and pane["values"] == {"units": 3, "orders": 1}
        assert not _hops(body, "late")
        # a tracked event: the session holding it
        body = poll(
            lambda: windows(tracked["id"], 1), timeout=120, what="the tracked event's session"
        )
        (sess,) = _hops(body, "window")
        assert (sess["window"], sess["key"], sess["values"]) == ("sessions", session, {"events": 1})
        assert sess["final"] is False
    finally:
        p.workers.stop("analytics-trace")
