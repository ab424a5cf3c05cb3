"""`stack up` reuses, `status` reports, `down` stops by PID, data survives `down` and `up`,
and `run` serves the API until Ctrl-C, stopping exactly what it started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid

import httpx
import psutil
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from core.settings import Settings, get_settings
from mohallamart.stack import Stack
from mohallamart.stack.services import service_names
from streams.app import ROLES
from tests.integration._cli import mohallamart
from tests.integration._support import poll, report

pytestmark = pytest.mark.integration

#: the session's services: Kafka as the profile runs it (STACK_KAFKA_BROKERS: `kafka`, or
#: kafka-controller-1..3 and kafka-broker-1..3)
SERVICES = set(service_names(get_settings().stack_kafka_brokers))


def _status() -> list[dict[str, object]]:
    res = mohallamart("stack", "status", "--json")
    return list(json.loads(res.stdout))


def test_status_lists_every_service_healthy(stack: Stack) -> None:
    res = mohallamart("stack", "status")
    assert res.returncode == 0, res.stdout + res.stderr
    statuses = _status()
    assert {s["name"] for s in statuses} == SERVICES
    for s in statuses:
        assert s["healthy"] is True, s
        assert isinstance(s["pid"], int) and psutil.pid_exists(s["pid"]), s
        assert s["address"]


def test_up_twice_reuses_the_running_services(stack: Stack) -> None:
    before = {s["name"]: s["pid"] for s in _status()}
    res = mohallamart("stack", "up")
    assert res.returncode == 0, res.stderr
    assert "started nothing" in res.stdout
    for name in SERVICES:
        assert f"{name}: already running" in res.stdout
    assert {s["name"]: s["pid"] for s in _status()} == before


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for a parent (here PID 1) to reap it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_run(n: int) -> int:
    """A port p with p .. p+n-1 all free (a worker of role i serves on WORKER_WEB_PORT + i)."""
    for _ in range(100):
        base = _free_port()
        try:
            socks = []
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise AssertionError(f"no {n} consecutive free ports")


def test_run_serves_health_and_ctrl_c_stops_what_it_started(stack: Stack) -> None:
    api_port, web_port = _free_port(), _free_run(len(ROLES))
    env = {**os.environ, "API_PORT": str(api_port), "WORKER_WEB_PORT": str(web_port)}
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "mohallamart.cli", "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")))  # type: ignore[union-attr]
    reader.start()
    children: list[int] = []
    try:

        def healthy() -> dict[str, object] | None:
            r = httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=5)
            return r.json() if r.status_code == 200 else None  # type: ignore[no-any-return]

        body = poll(healthy, timeout=90, interval=0.5, what="the API's /health to answer 200")
        assert body["status"] == "ok"
        assert all(check["ok"] for check in body["checks"].values())  # type: ignore[attr-defined]
        try:
            poll(
                lambda: sum("Worker]: Ready" in line for line in lines) >= len(ROLES),
                timeout=90,
                what="a worker of every role to be ready",
            )
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}; the output's last lines:\n{''.join(lines[-60:])}"
            ) from None

        def started(name: str) -> list[int]:
            head = f"[run] {name} started (pid "
            return [int(x[len(head) :].rstrip(")\n")) for x in lines if x.startswith(head)]

        children = [
            int(line.rsplit("(pid ", 1)[1].rstrip(")\n"))
            for line in lines
            if line.startswith("[run] ") and " started (pid " in line
        ]
        # the API and one worker per role (a worker that ended itself meanwhile, e.g. expelled
        # from its group on a loaded machine, was started again: said on the output)
        run_lines = [x for x in lines if x.startswith("[run] ")]
        names = {x[len("[run] ") :].split(" started (pid ")[0] for x in run_lines if "(pid " in x}
        assert names == {"api", *ROLES}, "".join(run_lines)
        exits = [x.strip() for x in run_lines if " exited with " in x]
        if exits:
            report(f"run: workers that ended themselves and were started again: {exits}")

        # a worker that dies is started again, as a supervisor would
        before = started("workflows")
        os.kill(before[-1], signal.SIGKILL)
        again = poll(
            lambda: started("workflows")[len(before) :] or None,
            timeout=30,
            what="`run` to start the killed workflows worker again",
        )
        said = "".join(x for x in lines if x.startswith("[run]"))
        assert "[run] workflows exited with -9; restarting" in said, said
        assert _alive(again[0])
        children.append(again[0])
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:  # a failed assertion: stop it as Ctrl-C would, then harder
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pid in children:  # what `run` could not stop (never by name)
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
        reader.join(10)
    for pid in children:
        assert not _alive(pid)
    # The stack was already up: `run` reused it and leaves it running.
    assert any("left running" in line for line in lines), lines
    assert all(s["healthy"] for s in _status())


@pytest.mark.restarts_stack
def test_down_stops_everything_and_up_keeps_topics_and_schemas(
    stack: Stack, settings: Settings
) -> None:
    topic = f"persist-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "acks": "all"})
    for i in range(5):
        producer.produce(topic, value=f"m{i}".encode())
    assert producer.flush(30) == 0
    registry = SchemaRegistryClient({"url": settings.registry_url})
    subject = f"{topic}-value"
    schema = Schema(
        '{"type":"record","name":"Persist","fields":[{"name":"n","type":"int"}]}', "AVRO"
    )
    schema_id = registry.register_schema(subject, schema)

    pids = [int(s["pid"]) for s in _status()]  # type: ignore[call-overload]
    res = mohallamart("stack", "down")
    assert res.returncode == 0, res.stderr
    for pid in pids:
        assert not _alive(pid), f"pid {pid} still running after `stack down`"
    assert all(s["pid"] is None for s in _status())

    res = mohallamart("stack", "up")
    assert res.returncode == 0, res.stdout + res.stderr

    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"persist-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    try:

        def read() -> bool:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
            return len(got) == 5

        poll(read, timeout=60, interval=0, what="the 5 messages after down and up")
    finally:
        consumer.close()
    assert got == [f"m{i}".encode() for i in range(5)]
    fresh = SchemaRegistryClient({"url": settings.registry_url})
    assert '"Persist"' in fresh.get_schema(schema_id).schema_str
    assert fresh.get_latest_version(subject).schema_id == schema_id
