"""Read endpoints (scope `read`): entities, stock, search, shops near a point, live updates.

Users and orders are filtered by the key's principal (`user:U` sees U and U's orders, `shop:S`
its shop's orders, `admin` everything); catalogue reads and search are open to every read key.
Anything a key may not see answers 404, exactly as if it did not exist.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from api.auth import Authenticator, key_problems
from api.deps import BearerDep
from api.live import LiveHub, SSEResponse, Subscription
from api.problems import Problem, json_answer, problems
from api.reads import ReadSide, can_see, json_bytes, not_found
from connectors.apikeys import ApiKey
from schemas.validate import FieldError

__all__ = ["router"]

_INVALID = "a parameter breaks its rule (each named with its rule)"

router = APIRouter(prefix="/v1", tags=["read"])

_KEYED = key_problems("read")
#: an entity's view: a key that may not see it answers 404, as if it did not exist
_ENTITY = {
    200: json_answer("the entity's view"),
    **problems({**_KEYED, 404: "no such entity (or not visible to this key)", 422: _INVALID}),
}
#: a search: Typesense down or its collections not built yet is a 503
_SEARCH = {
    200: json_answer("the hits"),
    **problems(
        {
            **_KEYED,
            422: _INVALID,
            503: "the key could not be checked, or search is unavailable or not built yet "
            "(Retry-After)",
        }
    ),
}


async def _reader(request: Request) -> tuple[ApiKey, ReadSide]:
    auth: Authenticator = request.app.state.auth
    key = await auth.authenticate(request.headers.get("authorization"))
    auth.require(key, "read")
    return key, request.app.state.reads


def _json(body: bytes) -> Response:
    return Response(body, media_type="application/json")


@router.get("/users/{user_id}", summary="A user (their own key, or admin)", responses=_ENTITY)
async def get_user(user_id: str, request: Request, _bearer: BearerDep) -> Response:
    key, reads = await _reader(request)
    if not can_see(key, user=user_id):
        raise not_found("user", user_id)
    body = await reads.view("user", user_id)
    if body is None:
        raise not_found("user", user_id)
    return _json(body)


@router.get(
    "/shops/near",
    summary="Approved shops within a radius, nearest first",
    responses=_SEARCH,
)
async def shops_near(
    request: Request,
    _bearer: BearerDep,
    lat: Annotated[float, Query(ge=-90, le=90)],
    lng: Annotated[float, Query(ge=-180, le=180)],
    radius_km: Annotated[float, Query(ge=0.001, le=100)] = 5.0,
    page: Annotated[int, Query(ge=1, le=1000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    _, reads = await _reader(request)
    result = await reads.search(
        "shops",
        {
            "q": "*",
            "query_by": "name",
            "filter_by": f"location:({_deg(lat)}, {_deg(lng)}, {_km(radius_km)} km)",
            "sort_by": f"location({_deg(lat)}, {_deg(lng)}):asc",
            "page": page,
            "per_page": per_page,
        },
    )
    shops = []
    for hit in result.get("hits", []):
        doc = dict(hit["document"])
        doc.pop("id", None)
        doc["distance_m"] = hit.get("geo_distance_meters", {}).get("location")
        shops.append(doc)
    return _json(
        json_bytes(
            {"found": result.get("found", 0), "page": page, "per_page": per_page, "shops": shops}
        )
    )


@router.get("/shops/{shop_id}", summary="A shop, with its approval status", responses=_ENTITY)
async def get_shop(shop_id: str, request: Request, _bearer: BearerDep) -> Response:
    _, reads = await _reader(request)
    body = await reads.view("shop", shop_id)
    if body is None:
        raise not_found("shop", shop_id)
    return _json(body)


async def _product(request: Request, product_id: str) -> bytes:
    _key, reads = await _reader(request)
    body = await reads.view("product", product_id)
    if body is None:  # unknown, or archived: out of the catalogue for every key
        raise not_found("product", product_id)
    return body


@router.get(
    "/products/{product_id}",
    summary="A product of the catalogue (archived: 404)",
    responses=_ENTITY,
)
async def get_product(product_id: str, request: Request, _bearer: BearerDep) -> Response:
    return _json(await _product(request, product_id))


@router.get("/products/{product_id}/stock", summary="A product's stock", responses=_ENTITY)
async def get_stock(product_id: str, request: Request, _bearer: BearerDep) -> Response:
    p = orjson.loads(await _product(request, product_id))
    return _json(
        json_bytes(
            {
                "product_id": p["product_id"],
                "shop_id": p["shop_id"],
                "stock": p["stock"],
                "in_stock": p["in_stock"],
                "sequence": p["stock_sequence"],
            }
        )
    )


@router.get(
    "/orders/{order_id}",
    summary="An order with its items (its user, its shop, admin)",
    responses=_ENTITY,
)
async def get_order(order_id: str, request: Request, _bearer: BearerDep) -> Response:
    key, reads = await _reader(request)
    order = await reads.order(order_id)
    if order is None or not can_see(key, user=order["user_id"], shop=order["shop_id"]):
        raise not_found("order", order_id)
    return _json(json_bytes(order))


# --- search ------------------------------------------------------------------------------------
def _tick(value: str) -> str:
    return "`" + value.replace("`", "") + "`"


#: `lat,lng` in decimal degrees
_POINT = re.compile(r"^-?[0-9]{1,3}(\.[0-9]+)?,-?[0-9]{1,3}(\.[0-9]+)?$")


def _deg(x: float) -> str:
    # fixed notation: Typesense does not read `5e-324` (a 422 for a valid request)
    return f"{x:.7f}"


def _km(x: float) -> str:
    return f"{x:.3f}"


def _near(near: str | None) -> tuple[float, float] | None:
    if near is None:
        return None
    try:
        if not _POINT.fullmatch(near):
            raise ValueError(near)
        lat_s, lng_s = near.split(",")
        lat, lng = float(lat_s), float(lng_s)
        if -90 <= lat <= 90 and -180 <= lng <= 180:
            return lat, lng
    except ValueError:
        pass
    raise Problem(
        422,
        "validation-error",
        "the request's parameters are invalid",
        errors=[FieldError("near", "must be `lat,lng` in degrees (-90..90, -180..180)")],
    )


@router.get(
    "/search/products",
    summary="Search published, in-stock products of approved shops",
    responses=_SEARCH,
)
async def search_products(
    request: Request,
    _bearer: BearerDep,
    q: Annotated[str, Query(max_length=200)] = "*",
    category: Annotated[str | None, Query(max_length=100)] = None,
    shop: Annotated[str | None, Query(max_length=64)] = None,
    min_price_paise: Annotated[int | None, Query(ge=0)] = None,
    max_price_paise: Annotated[int | None, Query(ge=0)] = None,
    near: Annotated[
        str | None, Query(description="`lat,lng`", json_schema_extra={"pattern": _POINT.pattern})
    ] = None,
    radius_km: Annotated[float, Query(ge=0.001, le=100)] = 5.0,
    sort: Literal["relevance", "price_asc", "price_desc", "distance"] = "relevance",
    page: Annotated[int, Query(ge=1, le=1000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    _, reads = await _reader(request)
    point = _near(near)
    filters = ["in_stock:=true", "status:=PUBLISHED"]
    if category:
        filters.append(f"category:={_tick(category)}")
    if shop:
        filters.append(f"shop_id:={_tick(shop)}")
    if min_price_paise is not None:
        filters.append(f"price_paise:>={min_price_paise}")
    if max_price_paise is not None:
        filters.append(f"price_paise:<={max_price_paise}")
    if point:
        filters.append(f"location:({_deg(point[0])}, {_deg(point[1])}, {_km(radius_km)} km)")
    if sort == "distance" and point is None:
        raise Problem(
            422,
            "validation-error",
            "the request's parameters are invalid",
            errors=[FieldError("sort", "`distance` needs `near=lat,lng`")],
        )
    sort_by = {
        "relevance": "_text_match:desc,updated_at:desc",
        "price_asc": "price_paise:asc",
        "price_desc": "price_paise:desc",
        "distance": f"location({_deg(point[0])}, {_deg(point[1])}):asc" if point else "",
    }[sort]
    result = await reads.search(
        "products",
        {
            "q": q.strip() or "*",
            "query_by": "name,category,description,shop_name",
            "num_typos": 2,
            "filter_by": " && ".join(filters),
            "sort_by": sort_by,
            "facet_by": "category,shop_id",
            "max_facet_values": 20,
            "page": page,
            "per_page": per_page,
        },
    )
    hits = []
    for hit in result.get("hits", []):
        doc = dict(hit["document"])
        doc.pop("id", None)
        if point and "location" in hit.get("geo_distance_meters", {}):
            doc["distance_m"] = hit["geo_distance_meters"]["location"]
        hits.append(doc)
    facets: dict[str, Any] = {
        f["field_name"]: [{"value": c["value"], "count": c["count"]} for c in f["counts"]]
        for f in result.get("facet_counts", [])
    }
    return _json(
        json_bytes(
            {
                "found": result.get("found", 0),
                "page": page,
                "per_page": per_page,
                "hits": hits,
                "facets": facets,
                "search_time_ms": result.get("search_time_ms"),
            }
        )
    )


@router.get(
    "/search/autocomplete",
    summary="Product name suggestions for a prefix (typo-tolerant)",
    responses=_SEARCH,
)
async def autocomplete(
    request: Request,
    _bearer: BearerDep,
    q: Annotated[str, Query(min_length=1, max_length=100)],
    limit: Annotated[int, Query(ge=1, le=20)] = 8,
) -> Response:
    _, reads = await _reader(request)
    result = await reads.search(
        "products",
        {
            "q": q,
            "query_by": "name",
            "prefix": "true",
            "num_typos": 2,
            "filter_by": "in_stock:=true && status:=PUBLISHED",
            "per_page": limit,
            "include_fields": "product_id,name,shop_id,category",
        },
    )
    suggestions = [
        {k: h["document"].get(k) for k in ("product_id", "name", "shop_id", "category")}
        for h in result.get("hits", [])
    ]
    return _json(json_bytes({"q": q, "suggestions": suggestions}))


# --- live updates ------------------------------------------------------------------------------
@router.get(
    "/live",
    summary="Server-Sent Events: order status, stock and new-order updates",
    description="Follow `user=` (that user's order status changes), `order=` (one order's), "
    "`shop=` (a shop's new orders) and `product=` (a product's stock), each repeatable. Each "
    "event's `id` is the stream's position; reconnect with `Last-Event-ID` to get exactly what "
    "was missed.",
    response_class=Response,
    responses={
        200: {
            "description": "the stream, until the client leaves",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **problems(
            {
                400: "a Last-Event-ID that is not a position this API sent",
                **_KEYED,
                404: "a user or shop this key may not see",
                410: "a Last-Event-ID older than the events this process keeps",
                422: _INVALID + "; at least one entity to follow",
                503: "the key could not be checked, or live updates are starting (Retry-After)",
            }
        ),
    },
)
async def live(
    request: Request,
    _bearer: BearerDep,
    user: Annotated[list[str] | None, Query()] = None,
    order: Annotated[list[str] | None, Query()] = None,
    shop: Annotated[list[str] | None, Query()] = None,
    product: Annotated[list[str] | None, Query()] = None,
    last_event_id: Annotated[
        str | None, Query(description="as the header, for clients that cannot set it")
    ] = None,
) -> Any:
    key, _reads = await _reader(request)
    hub: LiveHub = request.app.state.live
    users, orders = frozenset(user or ()), frozenset(order or ())
    shops, products = frozenset(shop or ()), frozenset(product or ())
    if not (users or orders or shops or products):
        raise Problem(
            422,
            "validation-error",
            "the request's parameters are invalid",
            errors=[FieldError("user|order|shop|product", "follow at least one entity")],
        )
    p = key.principal
    for u in users:
        if not can_see(key, user=u):
            raise not_found("user", u)
    for s in shops:
        if not can_see(key, shop=s):
            raise not_found("shop", s)
    sub = Subscription(
        users=users,
        orders=orders,
        shops=shops,
        products=products,
        only_user=p[5:] if p.startswith("user:") else None,
        only_shop=p[5:] if p.startswith("shop:") else None,
    )
    client = hub.subscribe(sub, request.headers.get("last-event-id") or last_event_id)
    return SSEResponse(hub, client, hub.settings.live_write_timeout_s)
