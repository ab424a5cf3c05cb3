"""One smoke test per service of the local stack, each proving it is the real server."""

from __future__ import annotations

import smtplib
import uuid
from email.message import EmailMessage

import psycopg
import pytest
import redis
import typesense
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from core.settings import Settings
from mohallamart.stack import Stack
from mohallamart.stack.smtpd import read_messages
from tests.integration._support import poll

pytestmark = pytest.mark.integration


def _create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    futures[name].result(timeout=30)


def test_kafka_produces_and_consumes(stack: Stack, settings: Settings) -> None:
    topic = f"smoke-{uuid.uuid4().hex[:12]}"
    _create_topic(settings.kafka_bootstrap, topic)
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap, "acks": "all", "enable.idempotence": True}
    )
    delivered: list[tuple[int, int]] = []

    def on_delivery(err: KafkaError | None, msg: object) -> None:
        assert err is None, err
        delivered.append((msg.partition(), msg.offset()))  # type: ignore[attr-defined]

    for i in range(3):
        producer.produce(topic, key=f"k{i}", value=f"hello {i}", on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert [offset for _, offset in delivered] == [0, 1, 2]

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"smoke-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    got: list[tuple[bytes, bytes]] = []
    try:

        def read() -> bool:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append((msg.key(), msg.value()))
            return len(got) == 3

        poll(read, timeout=30, interval=0, what="3 messages back from Kafka")
    finally:
        consumer.close()
    assert got == [(f"k{i}".encode(), f"hello {i}".encode()) for i in range(3)]


_V1 = """{"type": "record", "name": "Smoke", "namespace": "test.smoke",
 "fields": [{"name": "id", "type": "string"}]}"""
_V2_COMPATIBLE = """{"type": "record", "name": "Smoke", "namespace": "test.smoke",
 "fields": [{"name": "id", "type": "string"},
            {"name": "note", "type": ["null", "string"], "default": null}]}"""
_V2_INCOMPATIBLE = """{"type": "record", "name": "Smoke", "namespace": "test.smoke",
 "fields": [{"name": "id", "type": "string"}, {"name": "qty", "type": "int"}]}"""


def test_registry_registers_fetches_and_refuses_incompatible(
    stack: Stack, settings: Settings
) -> None:
    client = SchemaRegistryClient({"url": settings.registry_url})
    subject = f"smoke-{uuid.uuid4().hex[:12]}-value"

    schema_id = client.register_schema(subject, Schema(_V1, "AVRO"))
    fetched = client.get_schema(schema_id)
    assert fetched.schema_type == "AVRO"
    assert '"Smoke"' in fetched.schema_str and '"id"' in fetched.schema_str

    # BACKWARD is the global rule: an optional field with a default is accepted ...
    assert client.test_compatibility(subject, Schema(_V2_COMPATIBLE, "AVRO")) is True
    client.register_schema(subject, Schema(_V2_COMPATIBLE, "AVRO"))
    # ... a new required field is refused (readers of the new schema could not read old data).
    assert client.test_compatibility(subject, Schema(_V2_INCOMPATIBLE, "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(_V2_INCOMPATIBLE, "AVRO"))
    assert refused.value.http_status_code == 409
    assert [v for v in client.get_versions(subject)] == [1, 2]


def test_postgres_creates_and_queries_a_table(stack: Stack, settings: Settings) -> None:
    table = f"smoke_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL)")
        try:
            conn.execute(f"INSERT INTO {table} VALUES (1, 'atta'), (2, 'dal')")
            rows = conn.execute(f"SELECT id, name FROM {table} ORDER BY id").fetchall()
            version = conn.execute("SHOW server_version").fetchone()
        finally:
            conn.execute(f"DROP TABLE {table}")
    assert rows == [(1, "atta"), (2, "dal")]
    assert version is not None and version[0].startswith("18")


def test_redis_set_get(stack: Stack, settings: Settings) -> None:
    client = redis.Redis.from_url(settings.redis_dsn)
    key = f"smoke:{uuid.uuid4().hex}"
    assert client.set(key, "chai", ex=60)
    assert client.get(key) == b"chai"
    assert 0 < client.ttl(key) <= 60
    assert client.info("server")["redis_version"]


def test_typesense_finds_a_misspelt_word(stack: Stack, settings: Settings) -> None:
    host, _, port = settings.typesense_base_url.split("://", 1)[1].partition(":")
    client = typesense.Client(
        {
            "nodes": [{"host": host, "port": port or "8108", "protocol": "http"}],
            "api_key": settings.typesense_api_key.get_secret_value(),
            "connection_timeout_seconds": 5,
        }
    )
    name = f"smoke_{uuid.uuid4().hex[:12]}"
    client.collections.create({"name": name, "fields": [{"name": "title", "type": "string"}]})
    try:
        client.collections[name].documents.import_(
            [{"id": "1", "title": "Basmati rice 5kg"}, {"id": "2", "title": "Toor dal 1kg"}],
            {"action": "upsert"},
        )
        result = client.collections[name].documents.search(
            {"q": "basmatti", "query_by": "title", "num_typos": 2}
        )
    finally:
        client.collections[name].delete()
    assert [h["document"]["id"] for h in result["hits"]] == ["1"]


def test_smtp_delivers_and_keeps_the_message(stack: Stack, settings: Settings) -> None:
    host, port = settings.smtp_address
    marker = uuid.uuid4().hex
    msg = EmailMessage()
    msg["From"] = "shop@mohallamart.test"
    msg["To"] = "customer@mohallamart.test"
    msg["Subject"] = f"Order confirmed {marker}"
    msg.set_content("Your order is confirmed.")
    with smtplib.SMTP(host, port, timeout=10) as smtp:
        smtp.send_message(msg)

    maildir = settings.stack_dir / "smtp" / "maildir"

    def find() -> object:
        return next(
            (m for m in read_messages(maildir) if m["Subject"] == f"Order confirmed {marker}"),
            None,
        )

    stored = poll(find, timeout=10, what="the email in the SMTP server's Maildir")
    assert stored["X-Smtp-Rcpt-To"] == "customer@mohallamart.test"  # type: ignore[index]
    assert "Your order is confirmed." in stored.get_payload()  # type: ignore[attr-defined]


def test_smtp_refuses_reserved_recipient(stack: Stack, settings: Settings) -> None:
    host, port = settings.smtp_address
    with smtplib.SMTP(host, port, timeout=10) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.sendmail("shop@mohallamart.test", ["nobody@reject.invalid"], "Subject: x\n\nx")
    code, _ = refused.value.recipients["nobody@reject.invalid"]
    assert code == 550


def test_providers_stand_in_answers_and_records_without_secrets(
    stack: Stack, settings: Settings
) -> None:
    import asyncio

    import httpx

    from connectors.provider import ProviderClient, ProviderRefused

    # the workers' default SMS endpoint is the stack's stand-in; the client the workers use
    url = settings.provider_endpoint("sms")
    assert url == f"http://{settings.stack_host}:{settings.stack_providers_port}/sms"
    to = f"+9199{uuid.uuid4().int % 10**8:08d}"
    payload = {"to": to, "title": "t", "body": "b", "message_id": "<m1@x>", "kind": "GENERIC"}

    async def send(key: str = "a-secret-key") -> None:
        client = ProviderClient("SMS provider", url, key)
        try:
            await client.send(payload)
        finally:
            await client.close()

    asyncio.run(send())
    base = settings.providers_stub_url
    (got,) = httpx.get(f"{base}/_requests", params={"to": to}).json()
    assert got["path"] == "/sms" and got["body"] == "b" and got["status"] == 202
    assert got["idempotency_key"] == "<m1@x>"
    assert got["auth"] is True  # the key reached it, and is not kept
    record = settings.stack_dir / "providers" / "requests.jsonl"
    lines = [x for x in record.read_text().splitlines() if to in x]
    assert len(lines) == 1 and "a-secret-key" not in record.read_text()

    # told to refuse the recipient for good: the client's permanent refusal; then restored
    assert httpx.post(f"{base}/_control", json={"to": to, "status": 400}).status_code == 200
    with pytest.raises(ProviderRefused):
        asyncio.run(send())
    httpx.post(f"{base}/_control", json={"to": to, "status": None})
    asyncio.run(send())
    # the workers' default: no key at all (the stand-in needs none)
    asyncio.run(send(key=""))
    got = httpx.get(f"{base}/_requests", params={"to": to}).json()
    assert [(r["status"], r["auth"]) for r in got] == [
        (202, True),
        (400, True),
        (202, True),
        (202, False),
    ]
