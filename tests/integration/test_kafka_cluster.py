"""The local stack's 3-broker Kafka profile (STACK_KAFKA_BROKERS=3) with SASL_SSL (and without it,
with CLUSTER_VARIANTS=sasl_ssl,plaintext).

Each variant brings up only the profile's six Kafka processes, in a STACK_DIR of its own and on
ports of its own (29092.. and 29392..), never the session's stack. The project's topic code
creates a topic with the profile's replication (3 copies, 2 in sync, from the settings alone);
the project's producer settings (acks=all, idempotent) write to it with the stack's client
credentials; one broker stopped (by its PID, as `stack stop kafka-broker-2` does) the writes
go on; two stopped, every write is refused (NOT_ENOUGH_REPLICAS); both started again (on their
data), the writes go on; every acknowledged record is read back, once. SASL_SSL: a wrong
password, a PLAINTEXT client, a TLS client without SASL and one without the stack's CA are all
refused, and no password is in any process's command line or in the logs. Everything the test
started is stopped by PID.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]

from connectors.kafka import consumer_config, producer_config
from connectors.topics import ensure_topics, wait_topics_ready
from core.settings import Settings
from mohallamart.stack import Stack
from schemas.catalog import Topic
from tests.integration._support import poll, report

pytestmark = pytest.mark.integration

#: each variant's first ports; node i adds (i-1) x 100: 29092..29294 and 29392..29594
PORTS = {"sasl_ssl": 29092, "plaintext": 29392}
KAFKA = [f"kafka-controller-{i}" for i in (1, 2, 3)] + [f"kafka-broker-{i}" for i in (1, 2, 3)]
PARTITIONS = 3


@dataclass
class Cluster:
    settings: Settings
    stack: Stack
    up_seconds: float

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka_bootstrap

    def client(self, **extra: Any) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "log_level": 0,
            **self.settings.kafka_security.librdkafka(),
            **extra,
        }

    def pids(self) -> dict[str, int]:
        return {s.name: s.pid for s in self.stack.status() if s.pid is not None}


# The SASL_SSL variant only: replication and the ISR rule do not depend on the listener, and the
# plaintext listener is the session stack's own (about a minute less in CI: each variant
# starts six Kafka processes). `CLUSTER_VARIANTS=sasl_ssl,plaintext` runs both.
VARIANTS = os.environ.get("CLUSTER_VARIANTS", "sasl_ssl").split(",")


@pytest.fixture(scope="module", params=VARIANTS)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    security = request.param
    base = PORTS[security]
    stack_dir = tmp_path_factory.mktemp(f"kafka3-{security}")
    assert str(stack_dir).startswith("/tmp/")
    settings = Settings(
        _env_file=None,
        stack_dir=stack_dir,
        stack_kafka_brokers=3,
        stack_kafka_security=security,
        stack_kafka_port=base,
        stack_kafka_controller_port=base + 1,
        stack_kafka_internal_port=base + 2,
        stack_kafka_port_step=100,
        # the stack's own, never an external cluster or another client security
        kafka_bootstrap_servers=None,
        kafka_security_protocol=None,
    )
    stack = Stack(settings, echo=lambda line: report(f"[kafka3 {security}] {line}"))
    started: list[str] = []
    try:
        result = stack.up(KAFKA)
        started = result.started
        report(f"[kafka3 {security}] stack up (6 Kafka processes, cold) in {result.seconds:.1f} s")
        yield Cluster(settings, stack, result.seconds)
    finally:
        pids = [s.pid for s in stack.status() if s.pid is not None]
        stack.down(KAFKA)
        assert set(started) <= set(KAFKA)
        for pid in pids:
            assert not _alive(pid), f"process {pid} of the test's Kafka still runs"
        for archive in stack_dir.rglob("jvm.jsa"):  # ~45 MB each; the logs stay for a look
            archive.unlink()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _produce(cluster: Cluster, topic: str, phase: str, n: int) -> list[str]:
    """`n` records through the project's producer settings (acks=all, idempotent); the values
    acknowledged. Any record not acknowledged fails the test."""
    conf = producer_config(
        cluster.bootstrap,
        security=cluster.settings.kafka_security,
        delivery_timeout_ms=30_000,
        linger_ms=5,
        max_message_bytes=1_000_000,
    )
    producer = Producer({**conf, "log_level": 0})
    acked: list[str] = []
    failed: list[str] = []

    def done(err: KafkaError | None, msg: Any) -> None:
        value = msg.value().decode()
        (failed.append(f"{value}: {err}") if err is not None else acked.append(value))

    for i in range(n):
        producer.produce(topic, key=f"k{i}", value=f"{phase}-{i}", on_delivery=done)
    assert producer.flush(40) == 0, "records still waiting after 40 s"
    assert not failed, f"{phase}: {len(failed)} records refused, e.g. {failed[:3]}"
    return acked


def _refused(cluster: Cluster, topic: str, n: int) -> list[str]:
    """Try `n` acks=all writes without retries; the errors (a record acknowledged fails)."""
    producer = Producer(
        cluster.client(
            **{
                "acks": "all",
                "enable.idempotence": False,
                "retries": 0,
                "message.timeout.ms": 15_000,
            }
        )
    )
    errors: list[str] = []
    acked: list[str] = []

    def done(err: KafkaError | None, msg: Any) -> None:
        (errors.append(err.name()) if err is not None else acked.append(msg.value().decode()))

    for i in range(n):
        producer.produce(topic, key=f"k{i}", value=f"refused-{i}", on_delivery=done)
    producer.flush(30)
    assert not acked, f"acknowledged with one broker of three: {acked[:5]}"
    return errors


def _isr(cluster: Cluster, topic: str) -> dict[int, tuple[list[int], list[int]]]:
    md = AdminClient(cluster.client()).list_topics(topic, timeout=10)
    parts = md.topics[topic].partitions
    return {p: (sorted(pm.replicas), sorted(pm.isrs)) for p, pm in parts.items()}


def _read_all(cluster: Cluster, topic: str) -> list[str]:
    conf = consumer_config(
        cluster.bootstrap,
        f"tests-kafka3-{uuid.uuid4().hex[:8]}",
        {"enable.auto.commit": False, "log_level": 0},
        security=cluster.settings.kafka_security,
    )
    consumer = Consumer(conf)
    ends: dict[int, int] = {}
    for p in range(PARTITIONS):
        ends[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    values: list[str] = []
    deadline = time.monotonic() + 60
    positions = dict.fromkeys(ends, 0)
    try:
        while any(positions[p] < ends[p] for p in ends) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            value, partition, offset = msg.value(), msg.partition(), msg.offset()
            assert value is not None and partition is not None and offset is not None
            values.append(value.decode())
            positions[partition] = offset + 1
    finally:
        consumer.close()
    return values


def test_writes_survive_one_broker_and_stop_at_two(cluster: Cluster) -> None:
    t0 = time.monotonic()
    settings = cluster.settings
    # the profile alone sets the replication every topic of the project gets
    assert (settings.kafka_replication_factor, settings.kafka_min_insync_replicas) == (3, 2)
    topic = Topic("tests", f"tests-kafka3-{uuid.uuid4().hex[:8]}.events", PARTITIONS, "id")
    created = ensure_topics(
        cluster.bootstrap,
        [topic],
        security=settings.kafka_security,
        replication=settings.kafka_replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
    )
    assert created == [topic.name]
    wait_topics_ready(cluster.bootstrap, [topic], security=settings.kafka_security, timeout_s=60)
    for replicas, isr in _isr(cluster, topic.name).values():
        assert replicas == [4, 5, 6] and isr == [4, 5, 6]
    res = ConfigResource(ConfigResource.Type.TOPIC, topic.name)
    admin = AdminClient(cluster.client())  # held: its futures die with it
    found = admin.describe_configs([res])[res].result(15)
    assert found["min.insync.replicas"].value == "2"
    assert found["unclean.leader.election.enable"].value == "false"

    acked = _produce(cluster, topic.name, "all-up", 100)

    before = cluster.pids()
    assert set(before) == set(KAFKA)
    assert cluster.stack.down(["kafka-broker-2"]) == ["kafka-broker-2"]
    after = cluster.pids()
    assert not _alive(before["kafka-broker-2"])
    assert after == {n: p for n, p in before.items() if n != "kafka-broker-2"}, "only broker 2"
    acked += _produce(cluster, topic.name, "one-down", 100)

    assert cluster.stack.down(["kafka-broker-3"]) == ["kafka-broker-3"]
    poll(
        lambda: all(isr == [4] for _, isr in _isr(cluster, topic.name).values()),
        timeout=30,
        what="the ISR of every partition down to broker 1 (node 4)",
    )
    errors = _refused(cluster, topic.name, 20)
    assert errors and set(errors) <= {"NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND"}, (
        errors
    )

    # `stack start`: the same processes, on their data
    result = cluster.stack.up(["kafka-broker-2", "kafka-broker-3"])
    assert sorted(result.started) == ["kafka-broker-2", "kafka-broker-3"]
    assert sorted(result.reused) == [f"kafka-controller-{i}" for i in (1, 2, 3)]  # their deps
    poll(
        lambda: all(len(isr) >= 2 for _, isr in _isr(cluster, topic.name).values()),
        timeout=60,
        what="two replicas in sync again on every partition",
    )
    acked += _produce(cluster, topic.name, "back", 100)

    values = _read_all(cluster, topic.name)
    missing = set(acked) - set(values)
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {sorted(missing)[:5]}"
    twice = {v for v in acked if values.count(v) > 1}
    assert not twice, f"acknowledged records read twice: {sorted(twice)[:5]}"
    report(
        f"[kafka3 {settings.stack_kafka_security}] {len(acked)} records acknowledged and read "
        f"back; flow {time.monotonic() - t0:.1f} s after an up of {cluster.up_seconds:.1f} s"
    )


@pytest.mark.parametrize("cluster", ["sasl_ssl"], indirect=True)
def test_sasl_ssl_refuses_every_other_client_and_shows_no_password(cluster: Cluster) -> None:
    settings = cluster.settings
    secrets = settings.stack_kafka_secrets_dir
    assert (secrets.stat().st_mode & 0o777) == 0o700
    for name in ("client-password", "broker-password", "ca-key.pem", "kafka-broker-1.pem"):
        assert ((secrets / name).stat().st_mode & 0o777) == 0o600, name
    for i in (1, 2, 3):
        props = settings.stack_dir / f"kafka-broker-{i}" / "server.properties"
        assert (props.stat().st_mode & 0o777) == 0o600
    good = cluster.client()
    assert good["security.protocol"] == "SASL_SSL"
    md = AdminClient(good).list_topics(timeout=10)
    assert sorted(md.brokers) == [4, 5, 6]

    def errors_of(conf: dict[str, Any], want: str, seconds: float = 8) -> set[str]:
        """The client's errors until `want` is among them (a refused TLS handshake can report a
        transport error first: CI saw `_TRANSPORT` before `_SSL`)."""
        seen: set[str] = set()
        producer = Producer({**conf, "error_cb": lambda e: seen.add(e.name())})
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and want not in seen:
            producer.poll(0.2)
        return seen

    bad_password = {**good, "sasl.password": "not-the-password"}
    assert "_AUTHENTICATION" in errors_of(bad_password, "_AUTHENTICATION")
    no_ca = {k: v for k, v in good.items() if k != "ssl.ca.location"}
    assert "_SSL" in errors_of(no_ca, "_SSL")  # the brokers' certificates are the stack CA's
    plaintext: dict[str, Any] = {"bootstrap.servers": cluster.bootstrap, "log_level": 0}
    tls_only = {**plaintext, "security.protocol": "SSL", "ssl.ca.location": good["ssl.ca.location"]}
    for conf in (plaintext, tls_only):
        with pytest.raises(KafkaException):
            AdminClient(conf).list_topics(timeout=5)

    passwords = [
        (secrets / "client-password").read_text().strip(),
        (secrets / "broker-password").read_text().strip(),
    ]
    assert all(len(p) >= 32 for p in passwords)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        assert not any(p in line for p in passwords), f"a password in the argv of {proc.pid}"
    for log in Path(settings.stack_dir).rglob("*.log"):
        text = log.read_text(errors="replace")
        assert not any(p in text for p in passwords), f"a password in {log}"
    leftover = [p.name for p in secrets.iterdir() if p.name.endswith(".args")]
    assert not leftover, f"the storage tool's argument files were left: {leftover}"
