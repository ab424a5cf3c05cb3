"""The read side's views and search documents, rendered from projection rows built by hand (the
columns the queries in connectors/views.py select): no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from connectors.views import _product, _product_doc, _shop, _shop_doc, _user, affected
from schemas.catalog import EVENT_TYPES

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
V1 = uuid.UUID("00000000-0000-4000-8000-000000000001")
V2 = uuid.UUID("ffffffff-0000-4000-8000-000000000002")


def ev(type_: str, **data: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": type_,
        "occurred_at": T0,
        "trace_id": "t",
        "data": {**EVENT_TYPES[type_].example, **data},
    }


# --- rows as the queries return them -----------------------------------------------------------
def user_row(**over: Any) -> dict[str, Any]:
    """SELECT * FROM users"""
    return {
        "user_id": "u1",
        "name": "Asha",
        "email": "asha@example.com",
        "phone": "+919800000001",
        "role": "CUSTOMER",
        "preferences": {"language": "hi"},
        "status": "ACTIVE",
        "deleted_reason": None,
        "created_at": T0,
        "updated_at": T0,
        "version_at": T0,
        "version_id": V1,
        **over,
    }


def shop_row(**over: Any) -> dict[str, Any]:
    """SELECT s.*, k.status AS approval_status, k.version_at AS k_version_at,
    k.version_id AS k_version_id FROM shops s LEFT JOIN shopkeepers k"""
    return {
        "shop_id": "s1",
        "owner_user_id": "u9",
        "name": "Sharma General Store",
        "description": "Groceries",
        "category": "grocery",
        "phone": "+919800000009",
        "address": {"line1": "12 MG Road", "locality": "Indiranagar", "city": "Bengaluru"},
        "lat": 12.97,
        "lng": 77.64,
        "delivery_radius_m": 3000,
        "accepting_orders": True,
        "created_at": T0,
        "updated_at": T0,
        "version_at": T0,
        "version_id": V1,
        "approval_status": "APPROVED",
        "k_version_at": T0,
        "k_version_id": V2,
        **over,
    }


def product_row(**over: Any) -> dict[str, Any]:
    """SELECT * FROM products"""
    return {
        "product_id": "p1",
        "shop_id": "s1",
        "name": "Toned milk 500 ml",
        "description": "Pouch",
        "category": "dairy",
        "price_paise": 2600,
        "mrp_paise": 2800,
        "unit": "pouch",
        "image_url": "https://img.example/p1.jpg",
        "status": "PUBLISHED",
        "stock": 5,
        "stock_seq": 3,
        "created_at": T0,
        "updated_at": T0,
        "version_at": T0,
        "version_id": V1,
        **over,
    }


def product_doc_row(**over: Any) -> dict[str, Any]:
    """The product search query's columns: the product's, its shop's name and place, and the
    shopkeeper's approval."""
    row = {
        k: v
        for k, v in product_row().items()
        if k not in ("stock_seq", "created_at", "version_at", "version_id")
    }
    return {
        **row,
        "shop_name": "Sharma General Store",
        "lat": 12.97,
        "lng": 77.64,
        "approval_status": "APPROVED",
        **over,
    }


def shop_doc_row(**over: Any) -> dict[str, Any]:
    """SELECT s.*, k.status AS approval_status"""
    row = shop_row(**over)
    del row["k_version_at"], row["k_version_id"]
    return row


# --- which views a batch changes -----------------------------------------------------------------
def test_entity_events_name_the_views_they_change() -> None:
    events = [
        ev("user.registered", user_id="u1"),
        ev("user.updated", user_id="u2"),
        ev("user.deleted", user_id="u3"),
        ev("user.preferences_changed", user_id="u1"),
        ev("shop.created", shop_id="s1"),
        ev("shop.updated", shop_id="s2"),
        ev("shopkeeper.applied", shop_id="s3"),
        ev("shopkeeper.approved", shop_id="s1"),
        ev("shopkeeper.rejected", shop_id="s4"),
        ev("product.created", product_id="p1"),
        ev("product.published", product_id="p2"),
        ev("product.stock_changed", product_id="p3"),
        ev("product.archived", product_id="p1"),
    ]
    assert affected(events) == {
        "user": {"u1", "u2", "u3"},
        "shop": {"s1", "s2", "s3", "s4"},
        "product": {"p1", "p2", "p3"},
    }


def test_sign_ins_orders_and_other_events_change_no_view() -> None:
    events = [
        ev("user.signed_in", user_id="u1"),
        ev("user.signed_out", user_id="u2"),
        ev("order.created", user_id="u3", shop_id="s1"),
        ev("order.accepted", user_id="u3", shop_id="s1"),
        ev("order.cancelled", user_id="u3", shop_id="s1"),
        ev("notification.requested", user_id="u4"),
        ev("analytics.tracked"),
    ]
    assert affected(events) == {"user": set(), "shop": set(), "product": set()}
    assert affected([]) == {"user": set(), "shop": set(), "product": set()}


def test_a_product_event_names_the_product_not_its_shop() -> None:
    assert affected([ev("product.updated", product_id="p1", shop_id="s1")]) == {
        "user": set(),
        "shop": set(),
        "product": {"p1"},
    }


# --- search documents ----------------------------------------------------------------------------
def test_a_published_product_in_stock_of_an_approved_shop_is_searchable() -> None:
    doc = _product_doc(product_doc_row())
    assert doc == {
        "id": "p1",
        "product_id": "p1",
        "shop_id": "s1",
        "shop_name": "Sharma General Store",
        "name": "Toned milk 500 ml",
        "description": "Pouch",
        "category": "dairy",
        "price_paise": 2600,
        "mrp_paise": 2800,
        "unit": "pouch",
        "image_url": "https://img.example/p1.jpg",
        "status": "PUBLISHED",
        "stock": 5,
        "in_stock": True,
        "updated_at": int(T0.timestamp()),
        "location": [12.97, 77.64],
    }


@pytest.mark.parametrize(
    "over",
    [
        {"status": "DRAFT"},
        {"status": "ARCHIVED"},
        {"stock": 0},
        {"approval_status": "PENDING"},
        {"approval_status": "REJECTED"},
        {"approval_status": None},  # no shopkeeper application at all
    ],
)
def test_a_product_is_not_searchable_unless_published_in_stock_and_approved(
    over: dict[str, Any],
) -> None:
    assert _product_doc(product_doc_row(**over)) is None


def test_a_products_missing_details_get_search_defaults() -> None:
    doc = _product_doc(
        product_doc_row(
            description=None,
            category=None,
            unit=None,
            image_url=None,
            mrp_paise=None,
            shop_name=None,
        )
    )
    assert doc is not None
    assert (doc["description"], doc["category"], doc["unit"], doc["image_url"]) == (
        "",
        "uncategorised",
        "",
        "",
    )
    assert doc["shop_name"] == ""
    assert "mrp_paise" not in doc


@pytest.mark.parametrize(
    ("lat", "lng", "location"),
    [
        (12.97, 77.64, [12.97, 77.64]),
        (0.0, 0.0, [0.0, 0.0]),  # a real place, not "unknown"
        (None, 77.64, None),
        (12.97, None, None),
        (None, None, None),
    ],
)
def test_a_search_document_has_a_location_only_when_both_coordinates_are_known(
    lat: float | None, lng: float | None, location: list[float] | None
) -> None:
    for doc in (
        _product_doc(product_doc_row(lat=lat, lng=lng)),
        _shop_doc(shop_doc_row(lat=lat, lng=lng)),
    ):
        assert doc is not None
        assert doc.get("location") == location


def test_an_approved_shop_is_searchable() -> None:
    doc = _shop_doc(shop_doc_row())
    assert doc == {
        "id": "s1",
        "shop_id": "s1",
        "name": "Sharma General Store",
        "description": "Groceries",
        "category": "grocery",
        "locality": "Indiranagar",
        "city": "Bengaluru",
        "accepting_orders": True,
        "approval_status": "APPROVED",
        "updated_at": int(T0.timestamp()),
        "delivery_radius_m": 3000,
        "location": [12.97, 77.64],
    }


@pytest.mark.parametrize("approval", ["PENDING", "REJECTED", None])
def test_a_shop_is_not_searchable_until_its_shopkeeper_is_approved(approval: str | None) -> None:
    assert _shop_doc(shop_doc_row(approval_status=approval)) is None


def test_a_shops_missing_details_get_search_defaults() -> None:
    doc = _shop_doc(
        shop_doc_row(description=None, category=None, address={}, delivery_radius_m=None)
    )
    assert doc is not None
    assert (doc["description"], doc["category"], doc["locality"], doc["city"]) == (
        "",
        "uncategorised",
        "",
        "",
    )
    assert "delivery_radius_m" not in doc


# --- views and their versions ------------------------------------------------------------------
#: (occurred_at, event id) versions in increasing order, as PostgreSQL orders them
VERSIONS = [
    (datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC), V2),
    (datetime(2001, 9, 9, 1, 46, 39, 999999, tzinfo=UTC), V2),  # 10**15 - 1 microseconds
    (datetime(2001, 9, 9, 1, 46, 40, tzinfo=UTC), V1),  # 10**15 microseconds: one digit more
    (T0, V1),
    (T0, uuid.UUID("00000000-0000-4000-8000-000000000010")),
    (T0, uuid.UUID("0000000a-0000-4000-8000-000000000000")),
    (T0, V2),
    (T0 + timedelta(microseconds=1), V1),
    (T0 + timedelta(seconds=1), V1),
    (datetime(2286, 11, 20, 17, 46, 40, tzinfo=UTC), V1),  # 10**16 microseconds
]


def test_a_users_version_orders_as_its_event_version() -> None:
    assert VERSIONS == sorted(VERSIONS)
    versions = [_user(user_row(version_at=at, version_id=vid)).version for at, vid in VERSIONS]
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)
    assert all(len(v) == 1 for v in versions)
    assert len({len(v[0]) for v in versions}) == 1  # fixed width


def test_a_user_view() -> None:
    view = _user(user_row())
    assert (view.kind, view.id, view.owner, view.gone) == ("user", "u1", "u1", False)
    assert view.doc == {
        "user_id": "u1",
        "name": "Asha",
        "email": "asha@example.com",
        "phone": "+919800000001",
        "role": "CUSTOMER",
        "preferences": {"language": "hi"},
        "status": "ACTIVE",
        "created_at": T0,
        "updated_at": T0,
    }
    assert orjson.loads(view.payload())["updated_at"] == "2026-11-23T10:00:00+00:00"


def test_a_deleted_user_is_gone() -> None:
    assert _user(user_row(status="DELETED")).gone


def test_a_shops_version_orders_by_the_shop_then_its_shopkeeper() -> None:
    shop_versions = [
        _shop(shop_row(version_at=at, version_id=vid)).version[0] for at, vid in VERSIONS
    ]
    keeper_versions = [
        _shop(shop_row(k_version_at=at, k_version_id=vid)).version[1] for at, vid in VERSIONS
    ]
    assert shop_versions == sorted(shop_versions)
    assert keeper_versions == sorted(keeper_versions)
    # the shop's own version does not move with its shopkeeper's, and the other way round
    assert len({_shop(shop_row(k_version_at=at)).version[0] for at, _ in VERSIONS}) == 1
    assert len({_shop(shop_row(version_at=at)).version[1] for at, _ in VERSIONS}) == 1


def test_a_shop_without_a_shopkeeper_application_shows_approval_none() -> None:
    bare = _shop(shop_row(approval_status=None, k_version_at=None, k_version_id=None))
    assert bare.doc["approval_status"] == "NONE"
    assert (bare.kind, bare.id, bare.owner, bare.gone) == ("shop", "s1", "s1", False)
    # the application, when it comes, is a newer rendering
    applied = _shop(shop_row(approval_status="PENDING", k_version_at=VERSIONS[0][0]))
    assert applied.doc["approval_status"] == "PENDING"
    assert bare.version[1] < applied.version[1]
    assert bare.version[0] == applied.version[0]


def test_a_products_version_orders_by_the_product_then_its_stock_sequence() -> None:
    entity = [
        _product(product_row(version_at=at, version_id=vid)).version[0] for at, vid in VERSIONS
    ]
    assert entity == sorted(entity)
    sequences = [0, 1, 2, 9, 10, 11, 99, 100, 10**12, 10**19]
    stock = [_product(product_row(stock_seq=s)).version[1] for s in sequences]
    assert stock == sorted(stock)
    assert len({len(s) for s in stock}) == 1  # fixed width: "9" is not after "10"


def test_a_product_view() -> None:
    view = _product(product_row(stock=0, stock_seq=4))
    assert (view.kind, view.id, view.owner, view.gone) == ("product", "p1", "s1", False)
    assert view.doc["stock"] == 0 and view.doc["in_stock"] is False
    assert view.doc["stock_sequence"] == 4
    assert _product(product_row(stock=2)).doc["in_stock"] is True


@pytest.mark.parametrize(
    ("status", "gone"), [("ARCHIVED", True), ("DRAFT", False), ("PUBLISHED", False)]
)
def test_only_an_archived_product_is_gone(status: str, gone: bool) -> None:
    assert _product(product_row(status=status)).gone is gone
