"""Analytics windows (scope `read`), as the analytics role writes them.

- `GET /v1/analytics/shops/{shop_id}/sales?window=1m|1h|1d&from=&to=`: the windows starting in
  [from, to), each current or final. A `shop:S` key sees S's, admin every shop's; any other shop
  answers 404, as if it did not exist. Minutes are UTC minutes, hours and days Asia/Kolkata
  periods; each window's start and end are given in its zone.
- `GET /v1/analytics/trending?end=&limit=&by=units|orders&shop_id=`: the top products of the
  1-hour window ending at `end` (a multiple of 5 minutes; default: the window holding now), the
  sum of its twelve 5-minute panes. A `shop:S` key sees S's products only; admin any.
- `GET /v1/analytics/search-terms?end=&limit=`: the top search texts of that window, with their
  clicks (admin).
- `GET /v1/analytics/funnel?from=&to=&shop_id=`: per Asia/Kolkata day, the closed browsing
  sessions (of those that touched the shop): search -> purchase conversion, cart and checkout
  abandonment. A `shop:S` key sees S's, admin all (without `shop_id`: every session).
- `GET /v1/analytics/late?aggregate=&limit=`: the latest events that came after their window
  was final (admin).

`final`: the window stage's watermark (the lowest of its partitions') has passed the window's end
plus its grace: its values never change again.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BeforeValidator

from api.auth import Authenticator, key_problems
from api.deps import BearerDep
from api.problems import Problem, json_answer, problems
from api.reads import ReadSide, can_see, json_bytes, not_found
from connectors.analytics import read_funnel, read_late, read_top, read_watermark
from connectors.apikeys import ApiKey
from schemas.validate import FieldError

__all__ = ["router"]

router = APIRouter(prefix="/v1/analytics", tags=["analytics"])

_KOLKATA = ZoneInfo("Asia/Kolkata")
#: window -> (its zone, the default span read, the longest span one request may read)
_WINDOWS: dict[str, tuple[Any, timedelta, timedelta]] = {
    "1m": (UTC, timedelta(hours=1), timedelta(days=1)),
    "1h": (_KOLKATA, timedelta(days=1), timedelta(days=92)),
    "1d": (_KOLKATA, timedelta(days=31), timedelta(days=3 * 366)),
}


_INVALID = "a parameter breaks its rule (each named with its rule)"
_DB = "the key could not be checked, or the database did not answer (Retry-After)"
#: a report a shop key may read for its own shop (another shop: 404, as if it did not exist)
_SHOP_REPORT = {
    200: json_answer("the report"),
    **problems(
        {
            **key_problems("read", admin=True),
            404: "a shop this key may not see",
            422: _INVALID,
            503: _DB,
        }
    ),
}
#: a report for admin keys only
_ADMIN_REPORT = {
    200: json_answer("the report"),
    **problems({**key_problems("read", admin=True), 422: _INVALID, 503: _DB}),
}


_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _not_a_number(rule: str) -> BeforeValidator:
    """Pydantic reads a number as seconds since the epoch; these parameters are ISO 8601 only
    (as documented), so `?end=0` is refused rather than read as 1970."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and _NUMBER.fullmatch(value):
            raise ValueError(rule)
        return value

    return BeforeValidator(check)


#: an ISO 8601 time with its offset (numbers refused), or a day YYYY-MM-DD
Time = Annotated[
    datetime | None,
    _not_a_number("must be an ISO 8601 time with its offset, e.g. 2026-12-06T10:00:00+05:30"),
]
Day = Annotated[date | None, _not_a_number("must be a day, YYYY-MM-DD")]


def _invalid(field: str, rule: str) -> Problem:
    return Problem(
        422,
        "validation-error",
        "the request's parameters are invalid",
        errors=[FieldError(field, rule)],
    )


@router.get(
    "/shops/{shop_id}/sales",
    summary="A shop's sales per window: revenue, orders, items, AOV, cancelled and refunded",
    responses=_SHOP_REPORT,
)
async def shop_sales(
    shop_id: str,
    request: Request,
    _bearer: BearerDep,
    window: Annotated[Literal["1m", "1h", "1d"], Query(description="the window's length")] = "1h",
    start: Annotated[
        Time,
        Query(alias="from", description="the first window's start (with a zone offset)"),
    ] = None,
    end: Annotated[Time, Query(alias="to", description="windows starting before this")] = None,
) -> Response:
    auth: Authenticator = request.app.state.auth
    key = await auth.authenticate(request.headers.get("authorization"))
    auth.require(key, "read")
    if not can_see(key, shop=shop_id):
        raise not_found("shop", shop_id)
    zone, default_span, longest = _WINDOWS[window]
    for name, value in (("from", start), ("to", end)):
        if value is not None and value.tzinfo is None:
            raise _invalid(name, "must have a zone offset (e.g. 2026-12-06T10:00:00+05:30)")
    end = end or datetime.now(UTC)
    start = start or end - default_span
    if start >= end:
        raise _invalid("from", "must be before `to`")
    if end - start > longest:
        raise _invalid("to", f"at most {longest.days or 1} day(s) of {window} windows at once")
    reads: ReadSide = request.app.state.reads
    rows = await reads.sales(shop_id, window, start, end)
    for row in rows:
        row["window_start"] = row["window_start"].astimezone(zone)
        row["window_end"] = row["window_end"].astimezone(zone)
        del row["shop_id"], row["period"]
    body = {
        "shop_id": shop_id,
        "window": window,
        "zone": "UTC" if zone is UTC else "Asia/Kolkata",
        "from": start,
        "to": end,
        "windows": rows,
    }
    return Response(json_bytes(body), media_type="application/json")


_STEP = timedelta(minutes=5)
_HOUR = timedelta(hours=1)


async def _reader(request: Request, scope: str = "read") -> ApiKey:
    auth: Authenticator = request.app.state.auth
    key = await auth.authenticate(request.headers.get("authorization"))
    auth.require(key, scope)
    return key


def _admin_only(key: ApiKey) -> None:
    if key.principal != "admin":
        raise Problem(403, "forbidden", "this report needs an admin key")


async def _watermark(request: Request) -> datetime | None:
    reads: ReadSide = request.app.state.reads
    parts = request.app.state.settings.analytics_partitions
    return await reads.analytics(read_watermark, parts)  # type: ignore[no-any-return]


def _grace(request: Request, kind: str) -> timedelta:
    return timedelta(seconds=request.app.state.settings.analytics_grace_s[kind])


def _window_end(end: datetime | None) -> datetime:
    """The end of the 1-hour window asked for: a multiple of 5 minutes (UTC)."""
    if end is not None and end.tzinfo is None:
        raise _invalid("end", "must have a zone offset (e.g. 2026-12-06T10:00:00+05:30)")
    at = (end or datetime.now(UTC)).astimezone(UTC)
    floor = at.replace(second=0, microsecond=0) - timedelta(minutes=at.minute % 5)
    if end is not None:
        if floor != at:
            raise _invalid("end", "must be a multiple of 5 minutes (hopping windows)")
        return at
    return floor + _STEP  # the window holding now (its last pane still open)


async def _top(
    request: Request,
    aggregate: str,
    end: datetime | None,
    limit: int,
    order_by: str,
    shop_id: str | None,
) -> dict[str, Any]:
    stop = _window_end(end)
    start = stop - _HOUR
    reads: ReadSide = request.app.state.reads
    rows = await reads.analytics(read_top, aggregate, start, stop, order_by, limit, shop_id)
    wm = await _watermark(request)
    return {
        "window_start": start,
        "window_end": stop,
        "final": wm is not None and wm >= stop + _grace(request, aggregate),
        "rows": rows,
    }


@router.get(
    "/trending",
    summary="Trending products: units and orders over the last hour, every 5 minutes",
    responses=_SHOP_REPORT,
)
async def trending(
    request: Request,
    _bearer: BearerDep,
    end: Annotated[
        Time,
        Query(description="the window's end, a multiple of 5 minutes; default: holding now"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    by: Annotated[Literal["units", "orders"], Query(description="ranked by")] = "units",
    shop_id: Annotated[str | None, Query(description="one shop's products")] = None,
) -> Response:
    key = await _reader(request)
    if key.principal.startswith("shop:"):
        shop_id = shop_id or key.principal[5:]
    if shop_id is not None and not can_see(key, shop=shop_id):
        raise not_found("shop", shop_id)
    if shop_id is None and key.principal != "admin":
        raise Problem(403, "forbidden", "marketplace-wide trending needs an admin key")
    out = await _top(request, "trending", end, limit, by, shop_id)
    products = []
    for row in out.pop("rows"):
        shop, _, product = row["key"].partition("/")
        products.append(
            {"product_id": product, "shop_id": shop, "units": row["units"], "orders": row["orders"]}
        )
    body = {"by": by, "shop_id": shop_id, **out, "products": products}
    return Response(json_bytes(body), media_type="application/json")


@router.get(
    "/search-terms",
    summary="Top search terms over the last hour, every 5 minutes",
    responses=_ADMIN_REPORT,
)
async def search_terms(
    request: Request,
    _bearer: BearerDep,
    end: Annotated[
        Time,
        Query(description="the window's end, a multiple of 5 minutes; default: holding now"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> Response:
    _admin_only(await _reader(request))
    out = await _top(request, "search_terms", end, limit, "searches", None)
    terms = [
        {
            "term": row["key"],
            "searches": row["searches"],
            "clicks": row["clicks"],
            "click_through": round(row["clicks"] / row["searches"], 4) if row["searches"] else None,
        }
        for row in out.pop("rows")
    ]
    body = {**out, "terms": terms}
    return Response(json_bytes(body), media_type="application/json")


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@router.get(
    "/funnel",
    summary="Per day: browsing sessions, search -> purchase conversion, cart abandonment",
    responses=_SHOP_REPORT,
)
async def funnel(
    request: Request,
    _bearer: BearerDep,
    first: Annotated[
        Day, Query(alias="from", description="first Asia/Kolkata day (YYYY-MM-DD)")
    ] = None,
    last: Annotated[Day, Query(alias="to", description="last day, included")] = None,
    shop_id: Annotated[str | None, Query(description="sessions that touched this shop")] = None,
) -> Response:
    key = await _reader(request)
    if key.principal.startswith("shop:"):
        shop_id = shop_id or key.principal[5:]
    if shop_id is not None and not can_see(key, shop=shop_id):
        raise not_found("shop", shop_id)
    if shop_id is None and key.principal != "admin":
        raise Problem(403, "forbidden", "the marketplace's funnel needs an admin key")
    today = datetime.now(_KOLKATA).date()
    last = last or today
    first = first or last - timedelta(days=6)
    if first > last:
        raise _invalid("from", "must be on or before `to`")
    if (last - first).days > 366:
        raise _invalid("to", "at most 367 days at once")
    reads: ReadSide = request.app.state.reads
    rows = await reads.analytics(read_funnel, shop_id, first.isoformat(), last.isoformat())
    wm = await _watermark(request)
    s = request.app.state.settings
    closing = timedelta(seconds=s.analytics_session_gap_s) + _grace(request, "sessions")
    days = []
    for row in rows:
        day: date = row.pop("day")
        end = datetime.combine(day + timedelta(days=1), datetime.min.time(), _KOLKATA)
        days.append(
            {
                "day": day.isoformat(),
                **row,
                "search_conversion": _ratio(row["converted_sessions"], row["searched_sessions"]),
                "cart_abandonment": _ratio(row["abandoned_carts"], row["cart_sessions"]),
                # every session that began that day is closed, and none can begin any more
                "final": wm is not None and wm >= end + closing and row["open_sessions"] == 0,
            }
        )
        if key.principal.startswith("shop:"):
            # a session that touched the shop may have bought and browsed elsewhere: a shop
            # sees its sessions' flags, not their activity at other shops
            for k in ("purchases", "page_views", "avg_duration_s"):
                days[-1].pop(k, None)
    body = {
        "shop_id": shop_id,
        "zone": "Asia/Kolkata",
        "from": first.isoformat(),
        "to": last.isoformat(),
        "days": days,
    }
    return Response(json_bytes(body), media_type="application/json")


@router.get(
    "/late",
    summary="Events that came after their window was final (admin)",
    responses=_ADMIN_REPORT,
)
async def late_events(
    request: Request,
    _bearer: BearerDep,
    aggregate: Annotated[
        Literal["sales_1m", "sales_1h", "sales_1d", "trending", "search_terms", "sessions"] | None,
        Query(description="one window kind"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    _admin_only(await _reader(request))
    reads: ReadSide = request.app.state.reads
    rows = await reads.analytics(read_late, aggregate, limit)
    body = {"late": rows}
    return Response(json_bytes(body), media_type="application/json")
