"""The analytics windows in PostgreSQL (issue 15): what the analytics role writes and the API
reads. A shop's sales per window (`analytics_sales`, migration 0011); the 5-minute panes of
trending products and search terms, browsing sessions, late events and the window stage's
watermarks (migration 0012).

Writes are idempotent and final is final: a window's row takes the values it is given (never
added to), so the same window written again after a crash or a replay changes nothing; a row
that is final never changes again, so a late current value (a replay that had not caught up)
cannot overwrite a final result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from connectors.base import DependencyDown
from connectors.db import SESSION_LOST

__all__ = [
    "ANALYTICS_LOCK",
    "ANALYTICS_TABLES",
    "SALES_VALUES",
    "SESSION_COUNTS",
    "AnalyticsStore",
    "AnalyticsWrite",
    "next_stage_epoch",
    "stage_epoch",
    "stage_table",
    "LateRow",
    "PaneRow",
    "SalesWindow",
    "SessionRow",
    "read_funnel",
    "read_late",
    "read_sales",
    "read_top",
    "read_watermark",
    "write_late",
    "write_panes",
    "write_sales",
    "write_sessions",
    "write_positions",
    "read_positions",
    "write_watermarks",
]

#: the tables the window stage writes: what `mohallamart rebuild analytics` builds and swaps
ANALYTICS_TABLES = (
    "analytics_sales",
    "analytics_panes",
    "analytics_sessions",
    "analytics_late",
    "analytics_watermarks",
    "analytics_positions",
)
#: the analytics cut-over barrier ("mman"): every window stage write holds it shared until it
#: commits; `rebuild analytics` takes it exclusively, so the stage pauses between two writes
ANALYTICS_LOCK = 0x6D6D616E

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


#: a session's counts (the names `streams.funnel.session_values` adds)
SESSION_COUNTS = (
    "events",
    "page_views",
    "searches",
    "clicks",
    "add_to_cart",
    "remove_from_cart",
    "checkouts",
    "purchases",
)
PANE_VALUES = ("units", "orders", "searches", "clicks")


@dataclass(frozen=True)
class PaneRow:
    """One 5-minute pane of a hopping aggregate (trending, search_terms)."""

    aggregate: str
    key: str
    pane_ms: int
    values: Mapping[str, int]
    final: bool

    @property
    def shop_id(self) -> str | None:
        return self.key.partition("/")[0] if self.aggregate == "trending" else None


_PANES = (
    "INSERT INTO analytics_panes (aggregate, key, pane_start, shop_id, "
    + ", ".join(PANE_VALUES)
    + ", final) VALUES (%s, %s, %s, %s, "
    + ", ".join(["%s"] * len(PANE_VALUES))
    + ", %s) ON CONFLICT (aggregate, pane_start, key) DO UPDATE SET "
    + ", ".join(f"{v} = EXCLUDED.{v}" for v in PANE_VALUES)
    + ", final = EXCLUDED.final, updated_at = now() WHERE NOT analytics_panes.final"
)


async def write_panes(conn: psycopg.AsyncConnection[Any], panes: Sequence[PaneRow]) -> None:
    """Upsert panes (values set; a final pane never changes)."""
    if not panes:
        return
    rows = [
        (
            p.aggregate,
            p.key,
            _ts(p.pane_ms),
            p.shop_id,
            *(int(p.values.get(v, 0)) for v in PANE_VALUES),
            p.final,
        )
        for p in panes
    ]
    async with conn.cursor() as cur:
        await cur.executemany(_PANES, rows)


@dataclass(frozen=True)
class SessionRow:
    """One browsing session: open (current) or final."""

    session_id: str
    first_ms: int
    last_ms: int
    day: str  # ISO date, the Asia/Kolkata day of its first event
    values: Mapping[str, int]
    final: bool

    @property
    def shops(self) -> list[str]:
        return sorted(k[5:] for k in self.values if k.startswith("shop:"))


_SESSIONS = (
    "INSERT INTO analytics_sessions (session_id, first_at, last_at, day, shops, "
    + ", ".join(SESSION_COUNTS)
    + ", converted, abandoned_cart, abandoned_checkout, final) VALUES (%s, %s, %s, %s, %s, "
    + ", ".join(["%s"] * len(SESSION_COUNTS))
    + ", %s, %s, %s, %s) ON CONFLICT (session_id, first_at) DO UPDATE SET "
    "last_at = EXCLUDED.last_at, shops = EXCLUDED.shops, "
    + ", ".join(f"{v} = EXCLUDED.{v}" for v in SESSION_COUNTS)
    + ", converted = EXCLUDED.converted, abandoned_cart = EXCLUDED.abandoned_cart, "
    "abandoned_checkout = EXCLUDED.abandoned_checkout, final = EXCLUDED.final, "
    "updated_at = now() WHERE NOT analytics_sessions.final"
)


async def write_sessions(
    conn: psycopg.AsyncConnection[Any], changed: Sequence[str], sessions: Sequence[SessionRow]
) -> None:
    """Replace the open sessions of the session ids `changed` by `sessions` (open and final:
    an open session that grew or merged has a new row, its old one goes; a final row stays)."""
    if not changed and not sessions:
        return
    rows = []
    for s in sessions:
        v = s.values
        searched, purchased = v.get("searches", 0) > 0, v.get("purchases", 0) > 0
        rows.append(
            (
                s.session_id,
                _ts(s.first_ms),
                _ts(s.last_ms),
                s.day,
                s.shops,
                *(int(v.get(c, 0)) for c in SESSION_COUNTS),
                searched and purchased,
                v.get("add_to_cart", 0) > 0 and not purchased,
                v.get("checkouts", 0) > 0 and not purchased,
                s.final,
            )
        )
    async with conn.cursor() as cur:
        if changed:
            await cur.execute(
                "DELETE FROM analytics_sessions WHERE session_id = ANY(%s) AND NOT final",
                (list(changed),),
            )
        if rows:
            await cur.executemany(_SESSIONS, rows)


@dataclass(frozen=True)
class LateRow:
    id: str
    event_id: str
    event_type: str
    aggregate: str
    key: str
    start_ms: int
    end_ms: int
    event_ms: int
    watermark_ms: int


async def write_late(conn: psycopg.AsyncConnection[Any], late: Sequence[LateRow]) -> None:
    """Record late events (once each: by id)."""
    if not late:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO analytics_late (id, event_id, event_type, aggregate, key, window_start, "
            "window_end, occurred_at, watermark) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO NOTHING",
            [
                (
                    r.id,
                    r.event_id,
                    r.event_type,
                    r.aggregate,
                    r.key,
                    _ts(r.start_ms),
                    _ts(r.end_ms),
                    _ts(r.event_ms),
                    _ts(r.watermark_ms),
                )
                for r in late
            ],
        )


async def write_watermarks(
    conn: psycopg.AsyncConnection[Any], watermarks: Mapping[int, int]
) -> None:
    """Each window stage partition's watermark (never moved back)."""
    rows = [(p, _ts(wm)) for p, wm in watermarks.items() if wm >= 0]
    if not rows:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO analytics_watermarks (stage_partition, watermark) VALUES (%s, %s) "
            "ON CONFLICT (stage_partition) DO UPDATE SET watermark = EXCLUDED.watermark, "
            "updated_at = now() WHERE analytics_watermarks.watermark < EXCLUDED.watermark",
            rows,
        )


async def write_positions(
    conn: psycopg.AsyncConnection[Any],
    topic: str,
    positions: Mapping[int, tuple[int, Mapping[str, Any]]],
) -> None:
    """Each window stage partition's position (`analytics_positions`) in by-key `topic`, with
    its rows."""
    rows = [(topic, p, off, Jsonb(dict(routed))) for p, (off, routed) in sorted(positions.items())]
    if not rows:
        return
    async with conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO analytics_positions (topic, stage_partition, applied_offset, routed) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (topic, stage_partition) DO UPDATE SET "
            "applied_offset = EXCLUDED.applied_offset, routed = EXCLUDED.routed",
            rows,
        )


async def read_positions(
    conn: psycopg.AsyncConnection[Any], topic: str, schema: str = "public"
) -> dict[int, tuple[int, dict[str, list[int]]]]:
    """`schema`'s window stage positions in by-key `topic`: partition -> (applied offset,
    router positions)."""
    q = sql.SQL(
        "SELECT stage_partition, applied_offset, routed FROM {}.analytics_positions "
        "WHERE topic = %s"
    )
    cur = await conn.execute(q.format(sql.Identifier(schema)), (topic,))
    return {int(p): (int(o), dict(r)) for p, o, r in await cur.fetchall()}


async def read_watermark(conn: psycopg.AsyncConnection[Any], partitions: int) -> datetime | None:
    """The lowest watermark over the window stage's `partitions` (None until each has one):
    every window that ended (+ grace) before it is final."""
    async with conn.cursor() as cur:
        await cur.execute(
            "SELECT count(*), min(watermark) FROM analytics_watermarks WHERE stage_partition < %s",
            (partitions,),
        )
        row = await cur.fetchone()
    if row is None or row[0] < partitions:
        return None
    return row[1]  # type: ignore[no-any-return]


async def read_top(
    conn: psycopg.AsyncConnection[Any],
    aggregate: str,
    start: datetime,
    end: datetime,
    order_by: str,
    limit: int,
    shop_id: str | None = None,
) -> list[dict[str, Any]]:
    """The top `limit` keys of a hopping aggregate over the panes in [start, end), by the sum
    of `order_by` (then the key), each with its sums and whether every pane is final."""
    if order_by not in PANE_VALUES:
        raise ValueError(f"cannot order by {order_by!r}")
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT key, min(shop_id) AS shop_id, "
            + ", ".join(f"sum({v})::bigint AS {v}" for v in PANE_VALUES)
            + ", bool_and(final) AS final FROM analytics_panes "
            "WHERE aggregate = %s AND pane_start >= %s AND pane_start < %s "
            "AND (%s::text IS NULL OR shop_id = %s) "
            f"GROUP BY key ORDER BY sum({order_by}) DESC, key LIMIT %s",
            (aggregate, start, end, shop_id, shop_id, limit),
        )
        return list(await cur.fetchall())


async def read_funnel(
    conn: psycopg.AsyncConnection[Any], shop_id: str | None, first_day: str, last_day: str
) -> list[dict[str, Any]]:
    """Per Asia/Kolkata day in [first_day, last_day], the final sessions' funnel (of those that
    touched `shop_id`, if given): sessions, searched, converted (search -> purchase), with a
    cart, abandoned carts and checkouts, purchases, page views, average duration; and how many
    sessions of the day are still open (`open_sessions`: the day may still change)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT day, count(*) AS sessions, "
            "count(*) FILTER (WHERE searches > 0) AS searched_sessions, "
            "count(*) FILTER (WHERE converted) AS converted_sessions, "
            "count(*) FILTER (WHERE add_to_cart > 0) AS cart_sessions, "
            "count(*) FILTER (WHERE abandoned_cart) AS abandoned_carts, "
            "count(*) FILTER (WHERE abandoned_checkout) AS abandoned_checkouts, "
            "coalesce(sum(purchases), 0)::bigint AS purchases, "
            "coalesce(sum(page_views), 0)::bigint AS page_views, "
            "coalesce(avg(extract(epoch FROM last_at - first_at)), 0)::float AS avg_duration_s "
            "FROM analytics_sessions WHERE final AND day BETWEEN %s AND %s "
            "AND (%s::text IS NULL OR %s = ANY(shops)) GROUP BY day ORDER BY day",
            (first_day, last_day, shop_id, shop_id),
        )
        days = list(await cur.fetchall())
        await cur.execute(
            "SELECT day, count(*) AS open FROM analytics_sessions WHERE NOT final "
            "AND day BETWEEN %s AND %s AND (%s::text IS NULL OR %s = ANY(shops)) GROUP BY day",
            (first_day, last_day, shop_id, shop_id),
        )
        still_open = {r["day"]: int(r["open"]) for r in await cur.fetchall()}
    for d in days:
        d["open_sessions"] = still_open.get(d["day"], 0)
    return days


async def read_late(
    conn: psycopg.AsyncConnection[Any], aggregate: str | None, limit: int
) -> list[dict[str, Any]]:
    """The latest late events (of `aggregate`, if given), newest first."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT id::text, event_id, event_type, aggregate, key, window_start, window_end, "
            "occurred_at, watermark, recorded_at FROM analytics_late "
            "WHERE %s::text IS NULL OR aggregate = %s ORDER BY recorded_at DESC, id LIMIT %s",
            (aggregate, aggregate, limit),
        )
        return list(await cur.fetchall())


@dataclass
class AnalyticsWrite:
    """Everything one batch of the window stage writes, in one transaction."""

    sales: list[SalesWindow]
    panes: list[PaneRow]
    sessions_changed: list[str]
    sessions: list[SessionRow]
    late: list[LateRow]
    watermarks: dict[int, int]
    #: stage partition -> (its by-key offset applied, the router positions applied: source ->
    #: [offset, index]), recorded with the rows (`analytics_positions`)
    positions: dict[int, tuple[int, Mapping[str, Any]]] = field(default_factory=dict)


class AnalyticsStore:
    """The analytics role's PostgreSQL connection: one transaction per batch; PostgreSQL down is
    `DependencyDown` (retried, never a dead letter)."""

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout_s: float = 5.0,
        barrier: bool = True,
        positions_of: str | None = None,
    ) -> None:
        """`positions_of`: the by-key topic whose positions each write records (none if None)."""
        self._dsn = dsn
        self._topic = positions_of
        self._connect_timeout_s = connect_timeout_s
        self._barrier = barrier
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def write(self, w: AnalyticsWrite) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._dsn, connect_timeout=int(self._connect_timeout_s)
                )
            conn = self._conn
            async with conn.transaction():
                if self._barrier:
                    # a rebuild's cut-over waits for this write to commit, and this write waits
                    # for the cut-over (then writes the tables swapped in)
                    await conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (ANALYTICS_LOCK,))
                await write_sales(conn, w.sales)
                await write_panes(conn, w.panes)
                await write_sessions(conn, w.sessions_changed, w.sessions)
                await write_late(conn, w.late)
                await write_watermarks(conn, w.watermarks)
                if self._topic is not None:
                    await write_positions(conn, self._topic, w.positions)
        except SESSION_LOST as exc:
            dead, self._conn = self._conn, None
            if dead is not None:
                try:
                    await dead.close()
                except Exception:  # noqa: BLE001 - it is gone either way
                    pass
            raise DependencyDown(f"PostgreSQL: {type(exc).__name__}: {exc}".strip()) from exc


def stage_epoch(dsn: str, group: str) -> int:
    """The window stage's epoch for consumer group `group` (moved on by each replay)."""
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT epoch FROM analytics_epochs WHERE group_id = %s", (group,)
        ).fetchone()
    return 0 if row is None else int(row[0])


def next_stage_epoch(dsn: str, group: str) -> int:
    """Move `group`'s window stage to a new epoch and empty the analytics rows, in one
    transaction: the replay's start. The new epoch."""
    with psycopg.connect(dsn, connect_timeout=10) as conn, conn.transaction():
        conn.execute(
            "TRUNCATE analytics_sales, analytics_panes, analytics_sessions, analytics_late, "
            "analytics_watermarks, analytics_positions"
        )
        row = conn.execute(
            "INSERT INTO analytics_epochs (group_id, epoch) VALUES (%s, 1) ON CONFLICT "
            "(group_id) DO UPDATE SET epoch = analytics_epochs.epoch + 1 RETURNING epoch",
            (group,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def stage_table(epoch: int) -> str:
    """The window stage's table name in `epoch`."""
    return "analytics" if epoch == 0 else f"analytics-e{epoch}"
