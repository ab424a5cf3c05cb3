"""Two rules of the ingestion API on the real stack: `occurred_at` may not be ahead of the API's
clock by more than INGEST_MAX_CLOCK_SKEW_S (60 s), and a body must be sent as
`Content-Type: application/json`. A refused request writes nothing and leaves its ids free: the
corrected request is accepted (202), not answered as a duplicate, and lands once.

Also: a record the broker itself refuses (Kafka 4: a timestamp over an hour ahead) is a 422
naming the event, never a 503, and leaves its id free too.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from core.settings import Settings
from schemas.catalog import EVENT_TYPES, TOPICS
from tests.integration._support import api_process

pytestmark = pytest.mark.integration

ORDERS = EVENT_TYPES["order.created"].topic.name
SKEW_RULE = "must not be more than 60 s in the future (the API's clock: "


def _order(at: datetime | str | None = None, id: str | None = None) -> dict[str, Any]:
    data = copy.deepcopy(EVENT_TYPES["order.created"].example)
    data["order_id"] = f"ord_{uuid.uuid4().hex[:12]}"
    event: dict[str, Any] = {"id": id or str(uuid.uuid4()), "type": "order.created", "data": data}
    if at is not None:
        event["occurred_at"] = (
            at if isinstance(at, str) else at.isoformat(timespec="milliseconds")
        ).replace("+00:00", "Z")
    return event


def _post(
    api: str, key: str, body: Any, *, path: str = "/v1/events", content_type: str | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    return httpx.post(f"{api}{path}", content=orjson.dumps(body), headers=headers, timeout=30)


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# --- what landed in Kafka -------------------------------------------------------------------------


def _ends(settings: Settings) -> dict[int, int]:
    """The order topic's end offsets, per partition."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "rules-probe"})
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(ORDERS, p), timeout=10)[1]
            for p in range(TOPICS["order"].partitions)
        }
    finally:
        c.close()


def _event_id(value: bytes) -> str:
    """The envelope's first field, `id`, read straight from the Confluent wire format (magic
    byte, 4-byte schema id, then the Avro record: a string is a zigzag varint length and UTF-8)."""
    pos, shift, n = 5, 0, 0
    while True:
        b = value[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    length = (n >> 1) ^ -(n & 1)
    return value[pos : pos + length].decode()


def _landed(settings: Settings, since: dict[int, int], ids: set[str]) -> dict[str, int]:
    """How many records of the order topic written after `since` carry each of `ids`."""
    until = _ends(settings)
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"rules-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    counts = dict.fromkeys(ids, 0)
    try:
        todo = {p for p in until if until[p] > since[p]}
        c.assign([TopicPartition(ORDERS, p, since[p]) for p in todo])
        while todo:
            msg = c.poll(10)
            assert msg is not None, f"timed out reading {ORDERS}"
            if msg.error():
                continue
            p, off = msg.partition(), msg.offset()
            assert p is not None and off is not None
            if off >= until[p] - 1:
                todo.discard(p)
            if off >= until[p]:
                continue
            value = msg.value()
            if value:
                event_id = _event_id(value)
                if event_id in counts:
                    counts[event_id] += 1
    finally:
        c.close()
    return counts


# --- occurred_at ahead of the API's clock ---------------------------------------------------------


def test_occurred_at_30_s_ahead_is_accepted(api: str, ingest_key: str) -> None:
    r = _post(
        api,
        ingest_key,
        _order(datetime.now(UTC) + timedelta(seconds=30)),
        content_type="application/json",
    )
    assert r.status_code == 202, r.text


def test_occurred_at_in_the_past_is_accepted(api: str, ingest_key: str) -> None:
    for at in ("2025-01-01T00:00:00Z", "2025-01-01T05:30:00+05:30"):
        r = _post(api, ingest_key, _order(at), content_type="application/json")
        assert r.status_code == 202, r.text


@pytest.mark.parametrize("ahead", [timedelta(minutes=2), timedelta(hours=2)], ids=["2 min", "2 h"])
def test_occurred_at_too_far_ahead_is_422_naming_it_and_the_id_stays_free(
    api: str, ingest_key: str, settings: Settings, ahead: timedelta
) -> None:
    since = _ends(settings)
    event = _order(datetime.now(UTC) + ahead)
    body = _problem(_post(api, ingest_key, event, content_type="application/json"), 422)
    assert body["type"] == "/problems/validation-error"
    (error,) = body["errors"]
    assert error["field"] == "occurred_at"
    assert error["rule"].startswith(SKEW_RULE), error
    clock = datetime.fromisoformat(error["rule"][len(SKEW_RULE) : -1])
    assert abs(clock - datetime.now(UTC)) < timedelta(seconds=30)

    fixed = {**event, "occurred_at": datetime.now(UTC).isoformat()}
    r = _post(api, ingest_key, fixed, content_type="application/json")
    assert r.status_code == 202, r.text
    assert r.json()["duplicate"] is False
    assert _landed(settings, since, {event["id"]}) == {event["id"]: 1}


def test_a_batch_names_the_event_too_far_ahead_and_writes_nothing(
    api: str, ingest_key: str, settings: Settings
) -> None:
    since = _ends(settings)
    events = [_order() for _ in range(5)]
    events[3]["occurred_at"] = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    body = _problem(
        _post(
            api,
            ingest_key,
            {"events": events},
            path="/v1/events/batch",
            content_type="application/json",
        ),
        422,
    )
    assert [e["field"] for e in body["errors"]] == ["events[3].occurred_at"]
    assert body["errors"][0]["rule"].startswith(SKEW_RULE)
    assert "nothing was written" in body["detail"]

    del events[3]["occurred_at"]
    r = _post(
        api,
        ingest_key,
        {"events": events},
        path="/v1/events/batch",
        content_type="application/json",
    )
    assert r.status_code == 202, r.text
    assert [x["duplicate"] for x in r.json()["results"]] == [False] * 5
    ids = {e["id"] for e in events}
    assert _landed(settings, since, ids) == dict.fromkeys(ids, 1)


# --- a record the broker refuses ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lenient_api(api_env: dict[str, str], settings: Settings) -> Iterator[str]:
    """A second API process that lets a day of clock skew through its own check, so the record
    reaches Kafka and Kafka refuses it (log.message.timestamp.after.max.ms, 1 h)."""
    env = {**api_env, "INGEST_MAX_CLOCK_SKEW_S": "86400"}
    with api_process(env, "api-under-test-lenient.log") as base:
        yield base


def test_a_record_kafka_refuses_is_422_not_503_and_the_id_stays_free(
    lenient_api: str, ingest_key: str, settings: Settings
) -> None:
    since = _ends(settings)
    event = _order(datetime.now(UTC) + timedelta(hours=2))
    body = _problem(_post(lenient_api, ingest_key, event, content_type="application/json"), 422)
    assert body["type"] == "/problems/refused-by-kafka"
    assert [e["field"] for e in body["errors"]] == ["occurred_at"]
    assert "refused by Kafka" in body["errors"][0]["rule"]
    assert "Retry-After" not in body

    fixed = {**event, "occurred_at": datetime.now(UTC).isoformat()}
    r = _post(lenient_api, ingest_key, fixed, content_type="application/json")
    assert r.status_code == 202, r.text
    assert r.json()["duplicate"] is False
    assert _landed(settings, since, {event["id"]}) == {event["id"]: 1}


# --- Content-Type ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/batch"])
def test_json_sent_as_text_plain_is_415_and_the_id_stays_free(
    api: str, ingest_key: str, settings: Settings, path: str
) -> None:
    since = _ends(settings)
    event = _order()
    body: Any = event if path == "/v1/events" else {"events": [event]}
    problem = _problem(_post(api, ingest_key, body, path=path, content_type="text/plain"), 415)
    assert problem["type"] == "/problems/unsupported-media-type"
    assert problem["errors"] == [{"field": "Content-Type", "rule": "must be application/json"}]

    r = _post(api, ingest_key, body, path=path, content_type="application/json")
    assert r.status_code == 202, r.text
    assert _landed(settings, since, {event["id"]}) == {event["id"]: 1}


def test_json_with_a_charset_is_accepted(api: str, ingest_key: str) -> None:
    for content_type in ("application/json; charset=utf-8", "Application/JSON;charset=UTF-8"):
        r = _post(api, ingest_key, _order(), content_type=content_type)
        assert r.status_code == 202, r.text


@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/batch"])
def test_a_body_without_content_type_is_415(api: str, ingest_key: str, path: str) -> None:
    body: Any = _order() if path == "/v1/events" else {"events": [_order()]}
    r = _post(api, ingest_key, body, path=path)
    assert "content-type" not in r.request.headers
    problem = _problem(r, 415)
    assert problem["errors"] == [{"field": "Content-Type", "rule": "must be application/json"}]
