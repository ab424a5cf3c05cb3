"""The analytics windows in PostgreSQL (issue 15): what the analytics role writes and the API
reads. A shop's sales per window (`analytics_sales`, migration 0011).

Writes are idempotent and final is final: a window's row takes the values it is given (never
added to), so the same window written again after a crash or a replay changes nothing; a row
that is final never changes again, so a late current value (a replay that had not caught up)
cannot overwrite a final result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

__all__ = ["SALES_VALUES", "SalesWindow", "read_sales", "write_sales"]

#: the values a sales window holds (the names `streams.sales` contributes)
SALES_VALUES = (
    "revenue_paise",
    "orders",
    "items",
    "cancelled_paise",
    "cancelled_orders",
    "refunded_paise",
)


@dataclass(frozen=True)
class SalesWindow:
    """One shop's sales in one window: current, or final."""

    period: str  # "1m", "1h", "1d"
    shop_id: str
    start_ms: int
    end_ms: int
    values: Mapping[str, int]
    final: bool


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


_UPSERT = (
    "INSERT INTO analytics_sales (period, shop_id, window_start, window_end, "
    + ", ".join(SALES_VALUES)
    + ", final) VALUES (%s, %s, %s, %s, "
    + ", ".join(["%s"] * len(SALES_VALUES))
    + ", %s) ON CONFLICT (shop_id, period, window_start) DO UPDATE SET "
    + ", ".join(f"{v} = EXCLUDED.{v}" for v in SALES_VALUES)
    + ", window_end = EXCLUDED.window_end, final = EXCLUDED.final, updated_at = now() "
    "WHERE NOT analytics_sales.final"
)


async def write_sales(conn: psycopg.AsyncConnection[Any], windows: Sequence[SalesWindow]) -> None:
    """Upsert `windows` (in the caller's transaction): each row takes the values given; a final
    row is never changed."""
    if not windows:
        return
    rows = [
        (
            w.period,
            w.shop_id,
            _ts(w.start_ms),
            _ts(w.end_ms),
            *(int(w.values.get(v, 0)) for v in SALES_VALUES),
            w.final,
        )
        for w in windows
    ]
    async with conn.cursor() as cur:
        await cur.executemany(_UPSERT, rows)


async def read_sales(
    conn: psycopg.AsyncConnection[Any],
    shop_id: str | None,
    period: str,
    start: datetime,
    end: datetime,
) -> list[dict[str, Any]]:
    """The sales windows of `shop_id` (every shop: None) and `period` starting in [start, end),
    by shop and start, each with its average order value (null without orders)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT shop_id, period, window_start, window_end, "
            + ", ".join(SALES_VALUES)
            + ", CASE WHEN orders > 0 THEN revenue_paise / orders END AS aov_paise, final "
            "FROM analytics_sales WHERE period = %s AND window_start >= %s AND window_start < %s "
            "AND (%s::text IS NULL OR shop_id = %s) ORDER BY shop_id, window_start",
            (period, start, end, shop_id, shop_id),
        )
        return list(await cur.fetchall())
