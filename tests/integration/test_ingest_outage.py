"""Kafka stopped: the API answers 503 within its timeout and writes nothing late; after Kafka is
back the same request gets 202 and the event is in its topic exactly once."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition

from core.settings import Settings
from schemas.catalog import EVENT_TYPES
from schemas.codec import EventCodec
from tests.integration._cli import mohallamart
from tests.integration._support import poll

pytestmark = pytest.mark.integration

KAFKA3_BROKERS = [f"kafka-broker-{i}" for i in (1, 2, 3)]


def _ids_in_partition(settings: Settings, topic: str, partition: int) -> list[str]:
    codec = EventCodec(EVENT_TYPES["order.created"].schema)
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": "outage-probe",
            "enable.auto.commit": False,
        }
    )
    try:
        _, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        c.assign([TopicPartition(topic, partition, 0)])
        ids: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            if msg.key() is not None:
                try:
                    ids.append(str(codec.decode(msg.value())["id"]))
                except Exception:  # noqa: BLE001 - other types on the topic
                    pass
            if msg.offset() >= high - 1:
                return ids
        raise AssertionError(f"could not read {topic}/{partition} to its end ({high})")
    finally:
        c.close()


@pytest.mark.restarts_stack
def test_kafka_down_answers_503_then_the_retry_lands_exactly_once(
    api: str, ingest_key: str, settings: Settings, api_env: dict[str, str]
) -> None:
    data = dict(EVENT_TYPES["order.created"].example, order_id=f"ord_{uuid.uuid4().hex[:10]}")
    body = {"type": "order.created", "id": str(uuid.uuid4()), "data": data}
    headers = {"Authorization": f"Bearer {ingest_key}"}
    timeout_s = int(api_env["INGEST_REQUEST_TIMEOUT_MS"]) / 1000

    # every broker of the profile the session runs (STACK_KAFKA_BROKERS)
    brokers = ["kafka"] if settings.stack_kafka_brokers == 1 else KAFKA3_BROKERS
    for name in brokers:
        res = mohallamart("stack", "stop", name)
        assert res.returncode == 0, res.stderr
    try:
        t0 = time.monotonic()
        r = httpx.post(f"{api}/v1/events", json=body, headers=headers, timeout=60)
        took = time.monotonic() - t0
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["type"] == "/problems/kafka-unavailable"
        assert r.headers["Retry-After"].isdigit()
        assert took <= timeout_s + 1, f"answered after {took:.1f} s"
        ready = httpx.get(f"{api}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["checks"]["kafka"]["ok"] is False
    finally:
        for name in brokers:
            res = mohallamart("stack", "start", name)
            assert res.returncode == 0, res.stdout + res.stderr

    def retry() -> httpx.Response | None:
        r = httpx.post(f"{api}/v1/events", json=body, headers=headers, timeout=60)
        assert r.status_code in (202, 503), r.text
        return r if r.status_code == 202 else None

    accepted = poll(retry, timeout=90, interval=1, what="the retry to be accepted")
    res_body = accepted.json()
    assert res_body["duplicate"] is False
    ids = _ids_in_partition(settings, res_body["topic"], res_body["partition"])
    assert ids.count(body["id"]) == 1, f"{ids.count(body['id'])} copies of the event"
