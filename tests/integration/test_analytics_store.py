"""The analytics windows' PostgreSQL store (connectors/analytics.py) on the stack's PostgreSQL:
a window's row takes the values it is given (writing it again changes nothing), a final row
never changes again, and reads give each window's average order value."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from connectors.analytics import SalesWindow, read_sales, write_sales
from connectors.db import SESSION_LOST, limit_idle_transactions, migrate
from core.settings import Settings
from mohallamart.stack import Stack

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)
MIN = 60_000


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def test_a_window_is_written_idempotently_and_a_final_row_never_changes(
    stack: Stack, settings: Settings
) -> None:
    migrate(settings.postgres_dsn)
    shop = f"shop_{uuid.uuid4().hex[:8]}"
    start = _ms(T0)

    def window(revenue: int, orders: int, *, final: bool, at: int = start) -> SalesWindow:
        values = {"revenue_paise": revenue, "orders": orders, "items": 2 * orders}
        return SalesWindow("1m", shop, at, at + MIN, values, final)

    async def run() -> list[list[dict[str, Any]]]:
        seen = []
        async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as conn:

            async def write(*ws: SalesWindow) -> None:
                async with conn.transaction():
                    await write_sales(conn, ws)
                seen.append(await read_sales(conn, shop, "1m", T0, T0 + timedelta(hours=1)))

            await write(window(500, 1, final=False))
            await write(window(900, 2, final=False), window(100, 1, final=False, at=start + MIN))
            await write(window(900, 2, final=False))  # the same again: nothing changes
            await write(window(1_200, 3, final=True))
            await write(window(1_500, 4, final=False))  # a replay's stale current value
            await write(window(7, 7, final=True))  # a second final: never applied
        return seen

    seen = asyncio.run(run())
    first = [(r["revenue_paise"], r["orders"], r["aov_paise"], r["final"]) for r in seen[0]]
    assert first == [(500, 1, 500, False)]
    assert [(r["revenue_paise"], r["final"]) for r in seen[1]] == [(900, False), (100, False)]
    assert seen[2] == seen[1]
    for rows in seen[3:]:
        r = rows[0]
        assert (r["revenue_paise"], r["orders"], r["items"], r["aov_paise"], r["final"]) == (
            1_200,
            3,
            6,
            400,
            True,
        )
        assert r["window_start"] == T0 and r["window_end"] == T0 + timedelta(minutes=1)


def test_the_api_reads_a_shops_sales_windows_in_their_zone(
    api: str, settings: Settings, make_key: Any
) -> None:
    import httpx

    migrate(settings.postgres_dsn)
    shop, other = (f"shop_{uuid.uuid4().hex[:8]}" for _ in range(2))
    hour = 3_600_000
    # 10:30 UTC is 16:00 IST: the IST hour 16:00-17:00
    start = _ms(T0 + timedelta(minutes=30))

    async def seed() -> None:
        async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as conn:
            async with conn.transaction():
                await write_sales(
                    conn,
                    [
                        SalesWindow(
                            "1h",
                            shop,
                            start,
                            start + hour,
                            {"revenue_paise": 900, "orders": 2},
                            True,
                        ),
                        SalesWindow(
                            "1h", shop, start + hour, start + 2 * hour, {"revenue_paise": 50}, False
                        ),
                        SalesWindow("1h", other, start, start + hour, {"orders": 1}, False),
                    ],
                )

    asyncio.run(seed())
    span = {"window": "1h", "from": "2026-12-06T15:00:00+05:30", "to": "2026-12-06T20:00:00+05:30"}

    def get(key: str, shop_id: str = shop, **params: str) -> httpx.Response:
        return httpx.get(
            f"{api}/v1/analytics/shops/{shop_id}/sales",
            params={**span, **params},
            headers={"Authorization": f"Bearer {key}"},
        )

    for key in (make_key(["read"]), make_key(["read"], principal=f"shop:{shop}")):
        r = get(key)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["shop_id"], body["window"], body["zone"]) == (shop, "1h", "Asia/Kolkata")
        got = [
            (w["window_start"], w["revenue_paise"], w["orders"], w["aov_paise"], w["final"])
            for w in body["windows"]
        ]
        assert got == [
            ("2026-12-06T16:00:00+05:30", 900, 2, 450, True),
            ("2026-12-06T17:00:00+05:30", 50, 0, None, False),
        ]
    # another shop's key: as if the shop did not exist
    assert get(make_key(["read"], principal=f"shop:{other}")).status_code == 404
    bad = get(make_key(["read"]), window="5m")
    assert bad.status_code == 422
    naive = get(make_key(["read"]), **{"from": "2026-12-06T10:00:00"})
    assert naive.status_code == 422 and "zone offset" in naive.text
    wide = get(make_key(["read"]), window="1m", **{"from": "2026-12-04T00:00:00+05:30"})
    assert wide.status_code == 422 and "at most 1 day" in wide.text


def test_a_worker_paused_mid_transaction_does_not_hold_the_next_owners_write_for_ever(
    stack: Stack, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker stopped inside its transaction (SIGSTOP, a stalled VM) keeps its rows locked
    until it resumes: the worker that took its partitions over waited on them (the drill's
    worker-pause row, until its probe gave up). A worker's sessions are limited
    (`connectors.db.limit_idle_transactions`, as `streams.app.run_worker` sets them): the
    server ends the paused one's session, and the next owner's write of the same window goes
    through."""
    migrate(settings.postgres_dsn)
    shop = f"shop_{uuid.uuid4().hex[:8]}"
    window = SalesWindow("1m", shop, _ms(T0), _ms(T0) + MIN, {"orders": 1}, False)

    async def write(orders: int) -> None:
        w = SalesWindow(
            window.period, shop, window.start_ms, window.end_ms, {"orders": orders}, False
        )
        # the next owner waits on the lock at most 30 s (the test's bound, not a worker's)
        async with (
            await psycopg.AsyncConnection.connect(
                settings.postgres_dsn, options="-c statement_timeout=30000"
            ) as conn,
            conn.transaction(),
        ):
            await write_sales(conn, [w])

    asyncio.run(write(1))
    monkeypatch.setenv("PGOPTIONS", "")  # put back after the test
    limit_idle_transactions(2000)
    paused = psycopg.connect(settings.postgres_dsn)  # the worker paused mid-transaction
    try:
        paused.execute(
            "UPDATE analytics_sales SET orders = 2 WHERE shop_id = %s AND period = '1m'", (shop,)
        )
        # ... stopped here, its transaction open; the next owner writes the same window
        began = time.monotonic()
        asyncio.run(write(3))
        waited = time.monotonic() - began
        # the server ended the paused session: resumed, it learns so (and its writer maps
        # that to a dependency to reconnect to, `connectors.db.SESSION_LOST`)
        with pytest.raises(SESSION_LOST):
            paused.execute("SELECT 1")
    finally:
        paused.close()

    async def orders() -> int:
        async with await psycopg.AsyncConnection.connect(settings.postgres_dsn) as conn:
            rows = await read_sales(conn, shop, "1m", T0, T0 + timedelta(minutes=1))
        return int(rows[0]["orders"])

    assert asyncio.run(orders()) == 3  # the next owner's write, not the paused one's
    assert waited < 15, f"the next owner waited {waited:.1f} s on the paused worker's lock"
