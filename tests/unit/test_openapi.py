"""The OpenAPI document says what the API does (tests/integration/test_schemathesis.py checks it
against the running API): each postable type's body as the validator takes it, every error as a
problem document of a documented status; and the defects that run found, each pinned here.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import jsonschema_rs
import pytest
from starlette.testclient import TestClient

from api.auth import Authenticator
from api.ingest import Ingestor
from api.main import create_app
from api.problems import PROBLEM_JSON, Problem
from connectors.apikeys import ApiKey
from schemas.catalog import EVENT_TYPES
from schemas.fastpath import Reject, compile_fast
from schemas.jsonschema import event_json_schema
from schemas.validate import NUL_RULE, Validator

POSTABLE = sorted(n for n, e in EVENT_TYPES.items() if e.postable)
SPEC: dict[str, Any] = create_app().openapi()


def _data_schema(name: str) -> tuple[Any, str]:
    schema = EVENT_TYPES[name].schema
    (data,) = [f for f in schema["fields"] if f["name"] == "data"]
    return data["type"], schema.get("namespace", "")


# --- the request bodies -------------------------------------------------------------------------


@pytest.mark.parametrize("name", POSTABLE)
def test_each_example_is_valid_by_its_documented_schema(name: str) -> None:
    body = {"type": name, "data": EVENT_TYPES[name].example}
    assert jsonschema_rs.validator_for(
        event_json_schema(EVENT_TYPES[name]), validate_formats=True
    ).is_valid(body)


@pytest.mark.parametrize("name", POSTABLE)
def test_the_document_refuses_what_the_validator_refuses(name: str) -> None:
    """A few mutations of the example: what the validator refuses, the document refuses too
    (so a negative case of the document is one the API refuses)."""
    doc = jsonschema_rs.validator_for(event_json_schema(EVENT_TYPES[name]), validate_formats=True)
    schema, ns = _data_schema(name)
    validator = Validator({**schema, "namespace": ns} if "namespace" not in schema else schema)
    example = EVENT_TYPES[name].example
    for field_name in list(example):
        for value in (None, 1.5, "", [], {}, "x" * 10_000):
            data = {**copy.deepcopy(example), field_name: value}
            _, errors = validator.convert(data, "data")
            if errors:
                assert not doc.is_valid({"type": name, "data": data}), (field_name, value)
        data = copy.deepcopy(example)
        del data[field_name]
        _, errors = validator.convert(data, "data")
        assert doc.is_valid({"type": name, "data": data}) == (not errors), field_name


def test_the_ingest_body_is_one_of_the_postable_types() -> None:
    body = SPEC["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    assert [b["properties"]["type"]["const"] for b in body["schema"]["oneOf"]] == POSTABLE
    assert set(body["examples"]) == set(POSTABLE)


# --- the answers ----------------------------------------------------------------------------------


def test_every_error_is_a_problem_document_and_every_keyed_route_documents_401() -> None:
    for path, ops in SPEC["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            for status, answer in op["responses"].items():
                if int(status) >= 400 and path not in ("/health", "/readyz"):
                    assert list(answer["content"]) == [PROBLEM_JSON], (where, status)
            if op.get("security"):
                assert {"401", "403", "503"} <= set(op["responses"]), where
            if op.get("parameters") or op.get("requestBody"):
                assert "422" in op["responses"], where
    assert "HTTPValidationError" not in SPEC.get("components", {}).get("schemas", {})


# --- defects the property-based run found ---------------------------------------------------------


class _Auth(Authenticator):
    """Knows one key, `good` (every scope, admin)."""

    def __init__(self) -> None:
        pass

    async def authenticate(self, authorization: str | None) -> ApiKey:
        if authorization != "Bearer good":
            raise Problem(401, "invalid-api-key", "unknown", headers={"WWW-Authenticate": "Bearer"})
        return ApiKey(
            "k1", "t", ("ingest", "read", "admin"), "admin", None, datetime.now(UTC), None
        )


def _client() -> TestClient:
    app = create_app()
    app.state.auth = _Auth()  # no lifespan: nothing connects; these answers need none of it
    return TestClient(app)


@pytest.mark.parametrize(
    "url",
    [
        "/v1/analytics/late?aggregate=AAA&limit=0.5",
        "/v1/shops/near?lat=true&lng=true",
        "/v1/search/autocomplete?q=&limit=0.5",
        "/v1/notifications?limit=0.5",
    ],
)
def test_a_request_without_a_key_is_401_whatever_its_parameters(url: str) -> None:
    """It was 422: FastAPI checked the parameters before the route looked at the key."""
    c = _client()
    r = c.get(url)
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    assert c.get(url, headers={"Authorization": "Bearer good"}).status_code == 422


@pytest.mark.parametrize(
    "url, field",
    [
        ("/v1/analytics/trending?end=0", "end"),
        ("/v1/analytics/search-terms?end=1.5e9", "end"),
        ("/v1/analytics/shops/s1/sales?to=0.5", "to"),
        ("/v1/analytics/funnel?to=0", "to"),
    ],
)
def test_a_number_is_not_a_time(url: str, field: str) -> None:
    """It was read as seconds since 1970 (pydantic's lax datetime): `?end=0` answered 200."""
    r = _client().get(url, headers={"Authorization": "Bearer good"})
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]


def test_a_string_with_nul_is_refused_at_the_door_naming_the_field() -> None:
    """It was accepted (202), then dead-lettered by the projections: PostgreSQL's jsonb and text
    cannot hold U+0000."""
    ingestor = Ingestor(None, None, None, max_event_bytes=900_000, request_timeout_s=5)  # type: ignore[arg-type]
    data = copy.deepcopy(EVENT_TYPES["order.created"].example)
    data["delivery_address"]["city"] = "Bengaluru\x00"
    with pytest.raises(Problem) as refused:
        ingestor.validate(
            [{"type": "order.created", "data": data, "source": "pos\x00"}],
            batch=False,
            source="t",
            trace_id="t",
        )
    assert refused.value.status == 422
    assert [(e.field, e.rule) for e in refused.value.errors] == [
        ("source", NUL_RULE),
        ("data.delivery_address.city", NUL_RULE),
    ]


def test_the_fast_path_hands_nul_to_the_validator() -> None:
    schema, ns = _data_schema("analytics.tracked")
    fast = compile_fast(schema, ns)
    data = copy.deepcopy(EVENT_TYPES["analytics.tracked"].example)
    fast(bytearray(), data)
    for bad in ({**data, "session_id": "s\x00"}, {**data, "properties": {"k\x00": "v"}}):
        with pytest.raises(Reject):
            fast(bytearray(), bad)
    _, errors = Validator({**schema, "namespace": ns}).convert(
        {**data, "properties": {"k\x00": "v"}}, "data"
    )
    assert [e.rule for e in errors] == [NUL_RULE]


class _Reads:
    """Records the search parameters the routes send Typesense."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def search(self, alias: str, params: dict[str, Any]) -> dict[str, Any]:
        self.sent.append(params)
        return {"found": 0, "hits": []}


def test_coordinates_reach_the_search_engine_in_fixed_notation() -> None:
    """`radius_km=5e-324` (valid by the document) reached Typesense as `5e-324 km`: a 422."""
    app = create_app()
    app.state.auth, app.state.reads = _Auth(), _Reads()
    c = TestClient(app)
    key = {"Authorization": "Bearer good"}
    assert c.get("/v1/shops/near?lat=1e-300&lng=-180&radius_km=0.001", headers=key).is_success
    assert c.get("/v1/shops/near?lat=0&lng=0&radius_km=5e-324", headers=key).status_code == 422
    assert c.get("/v1/search/products?near=12.9,77.58&sort=distance", headers=key).is_success
    assert c.get("/v1/search/products?near=%201,2", headers=key).status_code == 422
    sent = [p["filter_by"] for p in app.state.reads.sent]
    assert sent[0] == "location:(0.0000000, -180.0000000, 0.001 km)"
    assert sent[1].endswith("location:(12.9000000, 77.5800000, 5.000 km)")
