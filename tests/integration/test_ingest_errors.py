"""Every error of the ingestion API, with its exact status and problem body; none writes a thing.

After all of them, every topic's end offsets are what they were before.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from core.settings import Settings
from schemas.catalog import EVENT_TYPES
from tests.integration._writes import end_offsets, written_by_the_api
from tests.integration.conftest import _key

pytestmark = pytest.mark.integration


def _order(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(EVENT_TYPES["order.created"].example)
    data["order_id"] = f"ord_{uuid.uuid4().hex[:10]}"
    for path, value in changes.items():
        target: Any = data
        parts = path.split("__")
        for p in parts[:-1]:
            target = target[int(p)] if p.isdigit() else target[p]
        if value is _DELETE:
            del target[parts[-1]]
        else:
            target[int(parts[-1]) if parts[-1].isdigit() else parts[-1]] = value
    return {"type": "order.created", "data": data}


_DELETE = object()


@dataclass
class Case:
    name: str
    status: int
    slug: str
    body: Any = None  # JSON-able, or bytes sent as they are
    path: str = "/v1/events"
    key: str = "ingest"  # ingest | read | none | bogus | slow
    errors: list[dict[str, str]] | None = None  # exact list, when given
    rule_contains: tuple[str, str] | None = None  # (field, text) for long rules
    headers: dict[str, str] = field(default_factory=dict)
    repeat: int = 1  # send this many times; the last answer is checked


def _big_analytics() -> dict[str, Any]:
    data = copy.deepcopy(EVENT_TYPES["analytics.tracked"].example)
    data["properties"] = {f"p{i}": "x" * 900 for i in range(1000)}  # ~0.9 MB: under 1 MiB
    return {"type": "analytics.tracked", "data": data}


def _cases(conflict_id: str) -> list[Case]:
    good = _order()
    return [
        Case("malformed JSON", 400, "malformed-json", body=b'{"type": "order.created", '),
        Case(
            "unknown type",
            422,
            "validation-error",
            body={"type": "order.teleported", "data": {}},
            rule_contains=("type", "must be a known event type (GET /v1/event-types): "),
        ),
        Case(
            "derived type",
            422,
            "validation-error",
            body={"type": "order.accepted", "data": EVENT_TYPES["order.accepted"].example},
            errors=[
                {
                    "field": "type",
                    "rule": "is derived by the workers and cannot be posted by clients",
                }
            ],
        ),
        Case(
            "unknown field in data",
            422,
            "validation-error",
            body=_order(coupon="DIWALI50"),
            errors=[{"field": "data.coupon", "rule": "unknown field"}],
        ),
        Case(
            "unknown envelope field",
            422,
            "validation-error",
            body={**good, "priority": "high"},
            errors=[{"field": "priority", "rule": "unknown field"}],
        ),
        Case(
            "missing field",
            422,
            "validation-error",
            body=_order(user_id=_DELETE),
            errors=[{"field": "data.user_id", "rule": "is required"}],
        ),
        Case(
            "missing data",
            422,
            "validation-error",
            body={"type": "order.created"},
            errors=[{"field": "data", "rule": "is required"}],
        ),
        Case(
            "nested item quantity",
            422,
            "validation-error",
            body=_order(items__1__quantity=0),
            errors=[{"field": "data.items[1].quantity", "rule": "must be >= 1"}],
        ),
        Case(
            "negative paise",
            422,
            "validation-error",
            body=_order(total_paise=-5),
            errors=[{"field": "data.total_paise", "rule": "must be >= 0"}],
        ),
        Case(
            "money as a float string",
            422,
            "validation-error",
            body=_order(total_paise="417.00"),
            errors=[{"field": "data.total_paise", "rule": "must be an integer"}],
        ),
        Case(
            "enum symbol",
            422,
            "validation-error",
            body=_order(payment_method="BITCOIN"),
            rule_contains=("data.payment_method", "must be one of "),
        ),
        Case(
            "empty items",
            422,
            "validation-error",
            body=_order(items=[]),
            errors=[{"field": "data.items", "rule": "must have at least 1 item"}],
        ),
        Case(
            "bad id",
            422,
            "validation-error",
            body={**good, "id": "not-a-uuid"},
            errors=[{"field": "id", "rule": "must be a UUID"}],
        ),
        Case(
            "naive occurred_at",
            422,
            "validation-error",
            body={**good, "occurred_at": "2026-11-23T10:00:00"},
            errors=[
                {"field": "occurred_at", "rule": "must be an ISO 8601 timestamp with a timezone"}
            ],
        ),
        Case(
            "batch with one bad event",
            422,
            "validation-error",
            path="/v1/events/batch",
            body={"events": [_order(), _order(), _order(), _order(items__0__quantity=0), _order()]},
            errors=[{"field": "events[3].data.items[0].quantity", "rule": "must be >= 1"}],
        ),
        Case(
            "batch missing events",
            422,
            "validation-error",
            path="/v1/events/batch",
            body={"evnts": []},
            errors=[
                {"field": "evnts", "rule": "unknown field"},
                {"field": "events", "rule": "is required"},
            ],
        ),
        Case(
            "batch over 1,000",
            413,
            "batch-too-large",
            path="/v1/events/batch",
            body={"events": [_order() for _ in range(1001)]},
            errors=[{"field": "events", "rule": "must have at most 1000 items"}],
        ),
        Case(
            "body over 1 MiB",
            413,
            "body-too-large",
            body={**good, "data": {**good["data"], "note": "x" * 1_100_000}},
        ),
        Case(
            "event too large for Kafka",
            413,
            "event-too-large",
            body=_big_analytics(),
            rule_contains=("(event)", "must encode to at most 900000 bytes"),
        ),
        Case("no key", 401, "unauthenticated", body=good, key="none"),
        Case("unknown key", 401, "invalid-api-key", body=good, key="bogus"),
        Case("key without ingest scope", 403, "missing-scope", body=good, key="read"),
        Case("over the key's rate", 429, "rate-limited", body=b"{", key="slow", repeat=4),
        Case(
            "same id, other body",
            409,
            "id-conflict",
            body={**_order(), "id": conflict_id},
            errors=[{"field": "id", "rule": "was already used for an event with a different body"}],
        ),
    ]


def test_every_error_has_its_status_and_problem_and_writes_nothing(
    api: str, ingest_key: str, read_key: str, settings: Settings
) -> None:
    slow_key = _key(settings, "tests-slow", ["ingest"], rate_per_s=1)
    keys: dict[str, Callable[[], dict[str, str]]] = {
        "ingest": lambda: {"Authorization": f"Bearer {ingest_key}"},
        "read": lambda: {"Authorization": f"Bearer {read_key}"},
        "slow": lambda: {"Authorization": f"Bearer {slow_key}"},
        "bogus": lambda: {"Authorization": "Bearer mm_00000000_not-a-real-key"},
        "none": lambda: {},
    }
    conflict_id = str(uuid.uuid4())
    # the id the conflict case reuses: an event no worker derives anything from (an order would
    # be rejected by the stock role, its product unknown, ~10 s later - STOCK_WAIT_UNKNOWN_
    # PRODUCT_S - and its order.rejected and notification would land while the cases run, when
    # a test before this one has started the workers)
    tracked = {
        "type": "analytics.tracked",
        "id": conflict_id,
        "data": copy.deepcopy(EVENT_TYPES["analytics.tracked"].example),
    }
    first = httpx.post(f"{api}/v1/events", json=tracked, headers=keys["ingest"]())
    assert first.status_code == 202, first.text

    before = end_offsets(settings)
    failures = []
    with httpx.Client(timeout=30) as client:
        for case in _cases(conflict_id):
            content = case.body if isinstance(case.body, bytes) else orjson.dumps(case.body)
            headers = {"Content-Type": "application/json", **keys[case.key](), **case.headers}
            for _ in range(case.repeat):
                r = client.post(f"{api}{case.path}", content=content, headers=headers)
            problem = _check(case, r)
            if problem:
                failures.append(f"{case.name}: {problem}")
    assert not failures, "\n".join(failures)
    # what the API wrote meanwhile: nothing. (Workers a test before this one started may still
    # be writing derived events, a notification's channel copy say: theirs are not the API's.)
    ids, sources = set(), set()
    for case in _cases(conflict_id):
        bodies = case.body.get("events", [case.body]) if isinstance(case.body, dict) else []
        for b in bodies if isinstance(bodies, list) else []:
            if isinstance(b, dict):
                ids.add(str(b.get("id", "")))
                if b.get("source"):
                    sources.add(str(b["source"]))
    ids.discard("")
    written = written_by_the_api(settings, before, end_offsets(settings), ids, sources)
    assert not written, f"an error case wrote to a topic: {written[:5]}"


def _check(case: Case, r: httpx.Response) -> str | None:
    if r.status_code != case.status:
        return f"status {r.status_code} != {case.status}: {r.text[:300]}"
    if r.headers.get("content-type") != "application/problem+json":
        return f"content-type {r.headers.get('content-type')}"
    body = r.json()
    if body.get("type") != f"/problems/{case.slug}" or body.get("status") != case.status:
        return f"problem {body.get('type')}/{body.get('status')} != {case.slug}/{case.status}"
    if not body.get("title") or not body.get("detail"):
        return f"no title/detail: {body}"
    if case.errors is not None and body.get("errors") != case.errors:
        return f"errors {body.get('errors')} != {case.errors}"
    if case.rule_contains is not None:
        fld, text = case.rule_contains
        if not any(e["field"] == fld and text in e["rule"] for e in body.get("errors", [])):
            return f"no error on {fld} containing {text!r}: {body.get('errors')}"
    if case.status in (401,) and "WWW-Authenticate" not in r.headers:
        return "401 without WWW-Authenticate"
    if case.status in (429, 503) and not r.headers.get("Retry-After", "").isdigit():
        return f"{case.status} without Retry-After"
    return None
