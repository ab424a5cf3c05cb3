"""Analytics windows (scope `read`): a shop's sales per window.

`GET /v1/analytics/shops/{shop_id}/sales?window=1m|1h|1d&from=&to=`: the windows starting in
[from, to), each current or final. A `shop:S` key sees S's, admin every shop's; any other shop
answers 404, as if it did not exist. Minutes are UTC minutes, hours and days Asia/Kolkata
periods; each window's start and end are given in its zone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api.auth import Authenticator
from api.deps import BearerDep
from api.problems import Problem
from api.reads import ReadSide, can_see, json_bytes, not_found
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
)
async def shop_sales(
    shop_id: str,
    request: Request,
    _bearer: BearerDep,
    window: Annotated[Literal["1m", "1h", "1d"], Query(description="the window's length")] = "1h",
    start: Annotated[
        datetime | None,
        Query(alias="from", description="the first window's start (with a zone offset)"),
    ] = None,
    end: Annotated[
        datetime | None, Query(alias="to", description="windows starting before this")
    ] = None,
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
