"""The operator dashboard (`/ops`) in a real browser (Debian's Chromium through Playwright): the
admin key entered once and never put in a URL, live lag per role, one event's trace by id, a
dead letter redriven from its button until it settles, and a shop's revenue chart drawn from the
analytics tables."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration._pipeline import Pipeline, a_bug_refusing, example, order_created, uid
from tests.integration._readside import approved_shop, listed_product
from tests.integration._support import poll, report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOT = Path(__file__).resolve().parents[2] / ".stack" / "tests" / "dashboard.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            "the dashboard's test needs Debian's chromium (`apt-get install chromium`; "
            ".ci/run installs it)"
        )
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def test_the_ops_routes_need_an_admin_key(pipeline: Pipeline, make_key: Any) -> None:
    user = make_key(["read"], principal="user:u_dash")
    for path in ("/v1/ops/overview", "/v1/ops/stream", "/v1/ops/dead-letters"):
        r = httpx.get(pipeline.api + path, timeout=10)
        assert r.status_code == 401, (path, r.text)
        r = httpx.get(pipeline.api + path, headers={"Authorization": f"Bearer {user}"}, timeout=10)
        assert r.status_code == 403, (path, r.text)
    for headers, status in (({}, 401), ({"Authorization": f"Bearer {user}"}, 403)):
        # the key is judged before the body: a bad body without a key is still a 401
        r = httpx.post(
            pipeline.api + "/v1/ops/dead-letters/redrive",
            headers=headers,
            json={"event_ids": "not a list"},
            timeout=10,
        )
        assert r.status_code == status, r.text
    bad = pipeline.http.get("/v1/ops/dead-letters", params={"limit": "0"})
    assert bad.status_code == 422, bad.text
    bad = pipeline.http.post("/v1/ops/dead-letters/redrive", json={"event_ids": ["x"]})
    assert bad.status_code == 422 and "UUID" in bad.text, bad.text
    page = httpx.get(pipeline.api + "/ops", timeout=10)
    assert page.status_code == 200 and "MohallaMart" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_the_stream_sends_overviews_with_lag_per_role(pipeline: Pipeline) -> None:
    with httpx.stream(
        "GET",
        pipeline.api + "/v1/ops/stream",
        headers={"Authorization": f"Bearer {pipeline.key}"},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        snapshots = []
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "overview":
                snapshots.append(json.loads(line[6:]))
            if len(snapshots) == 2:
                break
    assert snapshots[0]["at"] <= snapshots[1]["at"]
    body = snapshots[1]
    roles = {r["role"]: r for r in body["roles"]}
    assert {"projections", "stock", "cache", "search", "workflows", "notifications"} <= set(roles)
    assert all(r["partitions"] for r in roles.values())
    assert all(d["ok"] for d in body["dependencies"].values()), body["dependencies"]
    assert body["errors"] == []


def test_the_dashboard_traces_redrives_and_charts_revenue(pipeline: Pipeline, browser: Any) -> None:
    p = pipeline
    # the analytics role of the pipeline's own topics, for this test only
    p.workers.start("analytics-dashboard", "analytics")
    try:
        _dashboard(p, browser)
    finally:
        p.workers.stop("analytics-dashboard")


def _dashboard(p: Pipeline, browser: Any) -> None:
    # an order that gets its stock (order.accepted: revenue in the shop's hour)
    shop = approved_shop(p)
    product = listed_product(p, shop, name="Dashboard Dal", stock=10)
    p.wait_row("SELECT 1 FROM products WHERE product_id = %s", product, timeout=60)
    oid = uid("ord")
    order = p.post_event(order_created(oid, shop, {product: 3}, unit_paise=4150))
    p.wait_row(
        "SELECT 1 FROM orders WHERE order_id = %s AND status = 'PROCESSING'", oid, timeout=60
    )
    # a dead letter: a bug (a trigger) refuses one product's row until it is fixed
    boom = uid("prd_boom")
    with a_bug_refusing(p, boom):
        bad = p.post("product.created", example("product.created", product_id=boom, shop_id=shop))
        poll(
            lambda: (
                p.dead_letters(p.settings.topic_namespace + ".product.events", bad["id"]) or None
            ),
            timeout=90,
            what="the refused product to be dead-lettered",
        )
    p.wait_row(
        "SELECT 1 FROM analytics_sales WHERE shop_id = %s AND period = '1h' AND revenue_paise > 0",
        shop,
        timeout=120,
        what="the analytics role to count the order's revenue",
    )

    context = browser.new_context(viewport={"width": 1300, "height": 1000})
    page = context.new_page()
    urls: list[str] = []
    page.on("request", lambda req: urls.append(req.url))
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.goto(p.api + "/ops")
        page.fill("#key", p.key)
        page.click("#key-form button")
        # live: every role's lag, from the stream
        page.wait_for_selector("#live.on", timeout=30_000)
        for role in ("projections", "stock", "cache", "search", "workflows", "notifications"):
            page.wait_for_selector(f"#lag tr[data-role='{role}']", timeout=30_000)
        page.wait_for_selector("#deps li[data-dependency='postgres'].up", timeout=30_000)

        # one event's trace by id
        page.fill("#trace-id", order["id"])
        page.click("#trace-form button")
        page.wait_for_selector("#trace li[data-hop='acknowledged']", timeout=30_000)
        page.wait_for_selector("#trace li[data-hop='stock_movement']", timeout=30_000)
        assert oid in page.inner_text("#trace")

        # the dead letter, redriven from its button, settles (its row applied)
        page.click("#dlq-refresh")
        poll(
            lambda: not page.inner_text("#dlq-note").startswith("reading") or None,
            timeout=60,
            what="the dead letters to be listed again",
        )
        row = f"#dlq tr[data-event-id='{bad['id']}']"
        page.wait_for_selector(row, timeout=60_000)
        page.click(f"{row} button.redrive")
        page.wait_for_selector(f"{row} .state.settled", timeout=90_000)
        assert page.inner_text(f"{row} .state") == "settled: applied"
        p.wait_row("SELECT 1 FROM products WHERE product_id = %s", boom, timeout=10)

        # the shop's revenue per hour, drawn from the analytics tables
        page.fill("#revenue-shop", shop)
        page.click("#revenue-form button")
        page.wait_for_selector("#revenue-chart rect.bar", timeout=30_000)
        values = [
            int(v)
            for v in page.eval_on_selector_all(
                "#revenue-chart rect.bar", "bars => bars.map(b => b.dataset.value)"
            )
        ]
        assert sum(values) == 3 * 4150, values
        assert "₹124.50" in page.inner_text("#revenue-chart")

        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        report(f"dashboard: screenshot at {SCREENSHOT}")

        # the key: in this tab's session storage, in no URL the page asked for
        stored = page.evaluate("sessionStorage.getItem('mohallamart-admin-key')")
        assert stored == p.key
        assert urls and not [u for u in urls if p.key in u]
        assert not problems, problems
    except BaseException:
        failed = SCREENSHOT.with_name("dashboard-failed.png")
        page.screenshot(path=str(failed), full_page=True)
        report(f"dashboard: the page as the test failed: {failed}")
        raise
    finally:
        context.close()
