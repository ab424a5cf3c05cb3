"""The ingestion API against the real stack: every postable example lands in Kafka and decodes
with confluent-kafka's own registry client and Avro deserializer; duplicates and conflicts."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from core.settings import Settings
from schemas.catalog import EVENT_TYPES, TOPICS
from schemas.partitioner import partition_for
from tests.integration._support import poll

pytestmark = pytest.mark.integration

POSTABLE = sorted(n for n, e in EVENT_TYPES.items() if e.postable)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def read_at(settings: Settings, topic: str, partition: int, offset: int) -> Any:
    """The record at (topic, partition, offset), as a Kafka message."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"test-read-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    consumer.assign([TopicPartition(topic, partition, offset)])
    try:
        msg = poll(
            lambda: _one(consumer), timeout=30, interval=0, what=f"{topic}/{partition}@{offset}"
        )
    finally:
        consumer.close()
    return msg


def _one(consumer: Consumer) -> Any:
    msg = consumer.poll(0.5)
    if msg is None or msg.error() is not None:
        return None
    return msg


def deserializer(settings: Settings) -> AvroDeserializer:
    client = SchemaRegistryClient({"url": settings.registry_url})
    return AvroDeserializer(
        client, conf={"subject.name.strategy": topic_record_subject_name_strategy}
    )


def to_avro_json(schema: Any, value: Any) -> Any:
    """An example's JSON as the Avro reader returns it (ISO timestamps become datetimes)."""
    if isinstance(schema, list):
        if value is None:
            return None
        branch = next(b for b in schema if b != "null")
        return to_avro_json(branch, value)
    if isinstance(schema, dict):
        t = schema.get("type")
        if schema.get("logicalType") == "timestamp-millis":
            return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
        if t == "record":
            return {
                f["name"]: to_avro_json(f["type"], value.get(f["name"], f.get("default")))
                for f in schema["fields"]
            }
        if t == "array":
            return [to_avro_json(schema["items"], v) for v in value]
        if t == "map":
            return {k: to_avro_json(schema["values"], v) for k, v in value.items()}
        if isinstance(t, (dict, list)):
            return to_avro_json(t, value)
    return value


def _named(schema: Any, names: dict[str, Any]) -> Any:
    """Inline references to named types, so `to_avro_json` can walk without a symbol table."""
    if isinstance(schema, str):
        return copy.deepcopy(names.get(schema, names.get(schema.rsplit(".", 1)[-1], schema)))
    if isinstance(schema, list):
        return [_named(s, names) for s in schema]
    if isinstance(schema, dict):
        if schema.get("type") in ("record", "enum"):
            names[schema["name"]] = schema
            if "namespace" in schema:
                names[f"{schema['namespace']}.{schema['name']}"] = schema
        out = dict(schema)
        if out.get("type") == "record":
            out["fields"] = [{**f, "type": _named(f["type"], names)} for f in schema["fields"]]
        elif out.get("type") == "array":
            out["items"] = _named(schema["items"], names)
        elif out.get("type") == "map":
            out["values"] = _named(schema["values"], names)
        elif isinstance(out.get("type"), (dict, list)):
            out["type"] = _named(out["type"], names)
        return out
    return schema


@pytest.mark.parametrize("type_name", POSTABLE)
def test_every_postable_example_lands_and_decodes(
    api: str, ingest_key: str, settings: Settings, type_name: str
) -> None:
    event = EVENT_TYPES[type_name]
    event_id = str(uuid.uuid4())
    occurred = "2026-11-23T10:15:30.123Z"
    body = {
        "type": type_name,
        "id": event_id,
        "occurred_at": occurred,
        "source": "test-suite",
        "trace_id": f"trace-{event_id[:8]}",
        "data": event.example,
    }
    r = httpx.post(f"{api}/v1/events", json=body, headers=_auth(ingest_key), timeout=15)
    assert r.status_code == 202, r.text
    res = r.json()
    assert res["id"] == event_id and res["type"] == type_name and res["duplicate"] is False
    assert res["topic"] == event.topic.name

    msg = read_at(settings, res["topic"], res["partition"], res["offset"])
    key = str(event.example[event.key_field])
    assert msg.key() == key.encode()  # a plain UTF-8 string
    # Java's murmur2 partitioner: the partition every producer (API, workers, redrive) picks.
    assert res["partition"] == partition_for(key, event.topic.partitions)
    ts_type, ts = msg.timestamp()
    assert ts == int(datetime.fromisoformat(occurred.replace("Z", "+00:00")).timestamp() * 1000)

    decoded = deserializer(settings)(
        msg.value(), SerializationContext(res["topic"], MessageField.VALUE)
    )
    assert str(decoded["id"]) == event_id  # fastavro reads the uuid logical type as a UUID
    assert decoded["type"] == type_name
    assert decoded["occurred_at"] == datetime(2026, 11, 23, 10, 15, 30, 123000, tzinfo=UTC)
    assert decoded["source"] == "test-suite"
    assert decoded["trace_id"] == f"trace-{event_id[:8]}"
    data_schema = next(f for f in _named(event.schema, {})["fields"] if f["name"] == "data")
    assert decoded["data"] == to_avro_json(data_schema["type"], event.example)


def test_every_topic_exists_with_replay_settings(api: str, settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    md = admin.list_topics(timeout=10)
    for topic in TOPICS.values():
        assert topic.name in md.topics, topic.name
        assert len(md.topics[topic.name].partitions) == topic.partitions
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t.name) for t in TOPICS.values()]
    for res, fut in admin.describe_configs(resources).items():
        assert fut.result(10)["retention.ms"].value == "-1", res.name


def test_batch_is_accepted_in_order_and_a_resend_is_all_duplicates(
    api: str, ingest_key: str, settings: Settings
) -> None:
    events = [
        {"type": name, "id": str(uuid.uuid4()), "data": EVENT_TYPES[name].example}
        for name in POSTABLE[:5]
    ]
    r = httpx.post(f"{api}/v1/events/batch", json={"events": events}, headers=_auth(ingest_key))
    assert r.status_code == 202, r.text
    results = r.json()["results"]
    assert [x["id"] for x in results] == [e["id"] for e in events]
    assert [x["type"] for x in results] == [e["type"] for e in events]
    assert not any(x["duplicate"] for x in results)

    again = httpx.post(f"{api}/v1/events/batch", json={"events": events}, headers=_auth(ingest_key))
    assert again.status_code == 200, again.text
    dup = again.json()["results"]
    assert all(x["duplicate"] for x in dup)
    assert [(x["topic"], x["partition"], x["offset"]) for x in dup] == [
        (x["topic"], x["partition"], x["offset"]) for x in results
    ]


def test_duplicate_id_answers_200_with_original_coordinates_and_409_on_other_body(
    api: str, ingest_key: str, settings: Settings
) -> None:
    name = POSTABLE[0]
    body = {"type": name, "id": str(uuid.uuid4()), "data": EVENT_TYPES[name].example}
    first = httpx.post(f"{api}/v1/events", json=body, headers=_auth(ingest_key))
    assert first.status_code == 202, first.text
    second = httpx.post(f"{api}/v1/events", json=body, headers=_auth(ingest_key))
    assert second.status_code == 200, second.text
    assert second.json() == {**first.json(), "duplicate": True}

    other = {**body, "source": "someone-else"}
    conflict = httpx.post(f"{api}/v1/events", json=other, headers=_auth(ingest_key))
    assert conflict.status_code == 409, conflict.text
    assert conflict.headers["content-type"] == "application/problem+json"
    assert conflict.json()["errors"] == [
        {"field": "id", "rule": "was already used for an event with a different body"}
    ]


def test_event_types_lists_every_type(api: str) -> None:
    r = httpx.get(f"{api}/v1/event-types")  # public: the contract, like /openapi.json
    assert r.status_code == 200
    listed = {t["type"]: t for t in r.json()["event_types"]}
    assert set(listed) == set(EVENT_TYPES)
    for name, t in listed.items():
        e = EVENT_TYPES[name]
        assert t["topic"] == e.topic.name
        assert t["key_field"] == f"data.{e.key_field}"
        assert t["postable"] is e.postable
        assert t["schema"]["fields"][0]["name"] == "id"
        assert t["example"] == {"type": name, "data": e.example}
    assert any(not t["postable"] for t in listed.values()), "derived types are listed too"


def test_openapi_has_an_example_for_every_postable_type(api: str) -> None:
    spec = httpx.get(f"{api}/openapi.json").json()
    body = spec["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["examples"]) == set(POSTABLE)


def test_health_ready_and_metrics(api: str, ingest_key: str) -> None:
    bad = httpx.post(
        f"{api}/v1/events", json={"type": "nope", "data": {}}, headers=_auth(ingest_key)
    )
    assert bad.status_code == 422
    assert httpx.get(f"{api}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    metrics = httpx.get(f"{api}/metrics").text
    assert 'mohallamart_api_requests_total{route="/v1/events",status="202"}' in metrics
    assert "mohallamart_ingest_events_total{type=" in metrics
    assert "mohallamart_produce_latency_seconds_bucket" in metrics
    assert 'mohallamart_ingest_rejects_total{reason="invalid"}' in metrics
