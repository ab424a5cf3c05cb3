"""The analytics windows' PostgreSQL store (connectors/analytics.py) on the stack's PostgreSQL:
a window's row takes the values it is given (writing it again changes nothing), a final row
never changes again, and reads give each window's average order value."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from connectors.analytics import SalesWindow, read_sales, write_sales
from connectors.db import migrate
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
