"""The 3-broker Kafka profile of the local stack, without starting anything: its nodes, their
properties, the SASL_SSL secrets (and that no password reaches a command line), the profile a
STACK_DIR remembers, and the replication the profile gives every topic the project creates."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.errors import StackError
from core.settings import Settings
from mohallamart.stack import Stack, fetch, kafka_cluster, services
from mohallamart.stack.java import Jdk
from mohallamart.stack.kafka_cluster import KafkaProfile


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "stack_dir": tmp_path / "stack",
        "stack_kafka_brokers": 3,
        "kafka_bootstrap_servers": None,
        "kafka_security_protocol": None,
    }
    return Settings(_env_file=None, **{**base, **kw})


def _props(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key not in out, f"{key} twice"
            out[key] = value
    return out


# --- nodes and properties ------------------------------------------------------------------


def test_three_controllers_and_three_brokers_with_their_ids_and_ports(tmp_path: Path) -> None:
    nodes = kafka_cluster.cluster_nodes(_settings(tmp_path))
    got = [(n.name, n.role, n.node_id, n.port, n.internal_port) for n in nodes]
    assert got == [
        ("kafka-controller-1", "controller", 1, 19093, None),
        ("kafka-controller-2", "controller", 2, 19193, None),
        ("kafka-controller-3", "controller", 3, 19293, None),
        ("kafka-broker-1", "broker", 4, 19092, 19094),
        ("kafka-broker-2", "broker", 5, 19192, 19194),
        ("kafka-broker-3", "broker", 6, 19292, 19294),
    ]
    moved = kafka_cluster.cluster_nodes(
        _settings(
            tmp_path,
            stack_kafka_port=29092,
            stack_kafka_controller_port=29093,
            stack_kafka_internal_port=29094,
            stack_kafka_port_step=10,
        )
    )
    assert [n.port for n in moved] == [29093, 29103, 29113, 29092, 29102, 29112]


def test_ports_that_overlap_are_refused_naming_the_settings(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="STACK_KAFKA_PORT_STEP"):
        kafka_cluster.cluster_nodes(_settings(tmp_path, stack_kafka_internal_port=19192))


def test_controller_properties(tmp_path: Path) -> None:
    s = _settings(tmp_path, stack_kafka_security="sasl_ssl")
    nodes = kafka_cluster.cluster_nodes(s)
    props = _props(kafka_cluster.controller_properties(s, nodes[1], nodes, tmp_path / "d"))
    assert props["process.roles"] == "controller"
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:19093,2@127.0.0.1:19193,3@127.0.0.1:19293"
    )
    assert props["listeners"] == "CONTROLLER://127.0.0.1:19193"
    # the controllers stay PLAINTEXT on loopback, in the SASL_SSL profile too
    assert props["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT"
    # a controller creates the topics (CreateTopics is forwarded to it): its defaults count
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["unclean.leader.election.enable"] == "false"
    assert props["log.dirs"] == str(tmp_path / "d")
    assert not any("sasl" in k or "password" in v for k, v in props.items())


def test_broker_properties_plaintext(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    nodes = kafka_cluster.cluster_nodes(s)
    props = _props(kafka_cluster.broker_properties(s, nodes[4], nodes, tmp_path / "d", None))
    assert props["process.roles"] == "broker"
    assert props["node.id"] == "5"
    assert props["controller.quorum.voters"].count("@") == 3
    assert props["listeners"] == "CLIENT://127.0.0.1:19192,INTERNAL://127.0.0.1:19194"
    assert props["advertised.listeners"] == props["listeners"]
    assert props["listener.security.protocol.map"] == (
        "CONTROLLER:PLAINTEXT,CLIENT:PLAINTEXT,INTERNAL:PLAINTEXT"
    )
    assert props["inter.broker.listener.name"] == "INTERNAL"
    assert props["controller.listener.names"] == "CONTROLLER"
    for key, value in {
        "default.replication.factor": "3",
        "min.insync.replicas": "2",
        "offsets.topic.replication.factor": "3",
        "transaction.state.log.replication.factor": "3",
        "transaction.state.log.min.isr": "2",
        "unclean.leader.election.enable": "false",
        # the one-node profile's test-friendly group settings
        "group.initial.rebalance.delay.ms": "0",
        "group.min.session.timeout.ms": "1000",
        "group.consumer.min.session.timeout.ms": "1000",
    }.items():
        assert props[key] == value, key
    assert not any(k.startswith(("sasl.", "ssl.")) for k in props)


def test_broker_properties_sasl_ssl(tmp_path: Path) -> None:
    s = _settings(tmp_path, stack_kafka_security="sasl_ssl")
    nodes = kafka_cluster.cluster_nodes(s)
    brokers = [n.name for n in nodes if n.role == "broker"]
    secrets = kafka_cluster.ensure_secrets(s.stack_kafka_secrets_dir, brokers, s.stack_host)
    props = _props(kafka_cluster.broker_properties(s, nodes[3], nodes, tmp_path / "d", secrets))
    assert props["listener.security.protocol.map"] == (
        "CONTROLLER:PLAINTEXT,CLIENT:SASL_SSL,INTERNAL:SASL_SSL"
    )
    assert props["listeners"] == "CLIENT://127.0.0.1:19092,INTERNAL://127.0.0.1:19094"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert props["ssl.keystore.type"] == "PEM"
    assert props["ssl.keystore.location"] == str(s.stack_kafka_secrets_dir / "kafka-broker-1.pem")
    assert props["ssl.truststore.location"] == str(s.stack_kafka_secrets_dir / "ca.pem")
    jaas = props["listener.name.internal.scram-sha-512.sasl.jaas.config"]
    assert f'username="{kafka_cluster.BROKER_USER}"' in jaas
    assert secrets.broker_password().get_secret_value() in jaas
    client_jaas = props["listener.name.client.scram-sha-512.sasl.jaas.config"]
    assert "password" not in client_jaas  # the clients' listener only checks credentials
    assert secrets.client_password().get_secret_value() not in str(props)


# --- secrets --------------------------------------------------------------------------------


def test_secrets_are_private_and_made_once(tmp_path: Path) -> None:
    from cryptography import x509

    folder = tmp_path / "secrets"
    brokers = ["kafka-broker-1", "kafka-broker-2", "kafka-broker-3"]
    made = kafka_cluster.ensure_secrets(folder, brokers, "127.0.0.1")
    assert (folder.stat().st_mode & 0o777) == 0o700
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes.pop("ca.pem") == 0o644
    assert modes == dict.fromkeys(
        ["ca-key.pem", "client-password", "broker-password", *(f"{b}.pem" for b in brokers)], 0o600
    )
    client, broker = made.client_password(), made.broker_password()
    assert len(client.get_secret_value()) >= 32 and client != broker
    assert client.get_secret_value() not in repr(client)
    ca = x509.load_pem_x509_certificate(made.ca.read_bytes())
    for b in brokers:
        pem = made.keystore(b).read_bytes()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, as Kafka reads it
        cert = x509.load_pem_x509_certificates(pem)[0]
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
        assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    kafka_cluster.ensure_secrets(folder, brokers, "127.0.0.1")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_no_password_on_any_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Kafka process of the SASL_SSL profile, prepared and launched with the JVM and the
    storage tool replaced by recorders: no password in any argv; the SCRAM users reach the
    storage tool in an argument file of mode 0600, removed after the run."""
    s = _settings(tmp_path, stack_kafka_security="sasl_ssl")
    libs = tmp_path / "libs"
    libs.mkdir()
    monkeypatch.setattr(fetch, "fetch_kafka", lambda *a, **k: libs)
    argvs: list[list[str]] = []
    argfiles: dict[str, tuple[int, str]] = {}

    def fake_run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        argvs.append(list(argv))
        for arg in argv:
            if arg.startswith("@"):
                path = Path(arg[1:])
                argfiles[path.name] = (path.stat().st_mode & 0o777, path.read_text())
        return subprocess.CompletedProcess(argv, 0, "", "")

    def fake_spawn(state: Path, argv: list[str], **kw: Any) -> Any:
        argvs.append(list(argv))
        assert not kw.get("env"), "nothing secret (nor anything else) through the environment"
        return None

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(services, "spawn", fake_spawn)
    nodes = [svc for svc in services.all_services(s) if svc.name.startswith("kafka-")]
    assert len(nodes) == 6
    for svc in nodes:
        svc._jdk = Jdk(Path("/opt/jdk"), 25)  # type: ignore[attr-defined]
        svc.prepare()
        svc.launch()
    secrets = kafka_cluster.ClusterSecrets(s.stack_kafka_secrets_dir)
    passwords = [
        p.get_secret_value() for p in (secrets.client_password(), secrets.broker_password())
    ]
    assert len(argvs) == 12  # a format and a launch per node
    for argv in argvs:
        line = " ".join(argv)
        assert not any(p in line for p in passwords), line
    # the controllers' storage gets both SCRAM users, through a file only its owner reads
    assert sorted(argfiles) == [f".format-kafka-controller-{i}.args" for i in (1, 2, 3)]
    for mode, text in argfiles.values():
        assert mode == 0o600
        assert '"SCRAM-SHA-512=[name=mohallamart,password=' in text
        assert f"name={kafka_cluster.BROKER_USER}," in text
        assert all(p in text for p in passwords)
    assert not list(secrets.folder.glob("*.args")), "an argument file was left behind"
    for svc in nodes:
        props = svc.state / "server.properties"
        assert (props.stat().st_mode & 0o777) == 0o600
        assert (svc.state.stat().st_mode & 0o777) == 0o700
        assert passwords[0] not in props.read_text()  # the client's stays in the secrets folder


def test_a_failed_format_hides_the_passwords(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _settings(tmp_path, stack_kafka_security="sasl_ssl")
    monkeypatch.setattr(fetch, "fetch_kafka", lambda *a, **k: tmp_path)

    def echoing_run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        text = Path(argv[-1][1:]).read_text()  # a tool that prints its arguments back
        password = (s.stack_kafka_secrets_dir / "broker-password").read_text().strip()
        return subprocess.CompletedProcess(
            argv, 1, f"bad arguments: {text}", f"password {password} too short"
        )

    monkeypatch.setattr(subprocess, "run", echoing_run)
    controller = next(x for x in services.all_services(s) if x.name == "kafka-controller-1")
    controller._jdk = Jdk(Path("/opt/jdk"), 25)  # type: ignore[attr-defined]
    with pytest.raises(StackError) as exc:
        controller.prepare()
    secrets = kafka_cluster.ClusterSecrets(s.stack_kafka_secrets_dir)
    assert "formatting Kafka's storage" in str(exc.value)
    assert "too short" in str(exc.value)  # the tool's words, not its secrets
    for password in (secrets.client_password(), secrets.broker_password()):
        assert password.get_secret_value() not in str(exc.value)


# --- the profile a STACK_DIR runs ------------------------------------------------------------


def test_service_names_follow_the_profile(tmp_path: Path) -> None:
    one = services.service_names(1)
    three = services.service_names(3)
    assert "kafka" in one and not any(n.startswith("kafka-") for n in one)
    kafka3 = [n for n in three if n.startswith("kafka")]
    assert kafka3 == [f"kafka-controller-{i}" for i in (1, 2, 3)] + [
        f"kafka-broker-{i}" for i in (1, 2, 3)
    ]
    stack = Stack(_settings(tmp_path))
    assert list(stack.services) == three
    broker = stack.services["kafka-broker-2"]
    assert set(broker.depends_on) == {f"kafka-controller-{i}" for i in (1, 2, 3)}
    assert stack.services["kafka-controller-1"].depends_on == ()
    assert list(Stack(_settings(tmp_path / "other", stack_kafka_brokers=1)).services) == one


def test_another_profile_on_the_same_stack_dir_is_refused(tmp_path: Path) -> None:
    three = _settings(tmp_path, stack_kafka_security="sasl_ssl")
    kafka_cluster.write_profile(three.stack_dir, KafkaProfile(3, "sasl_ssl"))
    one = _settings(tmp_path, stack_kafka_brokers=1)
    stack = Stack(one)
    with pytest.raises(StackError) as exc:
        stack.up()
    message = str(exc.value)
    assert "STACK_KAFKA_BROKERS=3, STACK_KAFKA_SECURITY=sasl_ssl" in message
    assert "STACK_KAFKA_BROKERS=1" in message
    assert "--brokers 3 --security sasl_ssl" in message
    assert str(three.stack_dir / "kafka-secrets") in message  # what to delete to switch
    assert not list(three.stack_dir.rglob("process.json")), "something was started"
    # status, stop and down act on what the STACK_DIR runs: nothing is left behind
    assert "kafka-broker-2" in stack.services and "kafka" not in stack.services
    assert stack.down(["kafka-broker-2"]) == []
    # the same profile but another security is another profile too
    with pytest.raises(StackError, match="STACK_KAFKA_SECURITY=sasl_ssl"):
        Stack(_settings(tmp_path)).up(["kafka-broker-1"])
    # a service of no profile of this STACK_DIR says which profile it runs
    with pytest.raises(StackError, match="kafka-broker-1..3 are STACK_KAFKA_BROKERS=3's"):
        Stack(three).down(["kafka"])


def test_a_stack_dir_from_before_the_record_runs_the_one_node_profile(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    (s.stack_dir / "kafka" / "data").mkdir(parents=True)
    (s.stack_dir / "kafka" / "data" / "meta.properties").write_text("version=1\n")
    assert kafka_cluster.read_profile(s.stack_dir) == KafkaProfile(1, "plaintext")
    with pytest.raises(StackError, match="runs Kafka with STACK_KAFKA_BROKERS=1"):
        Stack(s).up()
    (s.stack_dir / kafka_cluster.PROFILE_FILE).write_text("not json")
    with pytest.raises(StackError, match="not a Kafka profile record"):
        Stack(s)


def test_sasl_ssl_needs_three_brokers(tmp_path: Path) -> None:
    s = _settings(tmp_path, stack_kafka_brokers=1, stack_kafka_security="sasl_ssl")
    with pytest.raises(StackError, match="STACK_KAFKA_BROKERS=3"):
        Stack(s).up(["kafka"])
    assert not (s.stack_dir / kafka_cluster.PROFILE_FILE).exists()


def test_the_cli_option_is_the_setting(tmp_path: Path) -> None:
    """`stack up --brokers 3` on a STACK_DIR that runs one node: refused, naming both."""
    stack_dir = tmp_path / "stack"
    kafka_cluster.write_profile(stack_dir, KafkaProfile(1, "plaintext"))
    res = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "mohallamart.cli",
            "stack",
            "up",
            "--brokers",
            "3",
            "kafka-broker-1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "STACK_DIR": str(stack_dir), "MOHALLAMART_ENV_FILE": "/dev/null"},
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "runs Kafka with STACK_KAFKA_BROKERS=1" in res.stderr
    assert "ask for STACK_KAFKA_BROKERS=3" in res.stderr


# --- the replication every topic gets --------------------------------------------------------


def test_the_profile_sets_the_replication_of_the_projects_topics(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert (s.kafka_replication_factor, s.kafka_min_insync_replicas) == (3, 2)
    one = _settings(tmp_path, stack_kafka_brokers=1)
    assert (one.kafka_replication_factor, one.kafka_min_insync_replicas) == (1, 1)
    # explicit settings win; an external cluster brings its own
    own = _settings(tmp_path, kafka_replication_factor=3, kafka_min_insync_replicas=1)
    assert (own.kafka_replication_factor, own.kafka_min_insync_replicas) == (3, 1)
    rf1 = _settings(tmp_path, kafka_replication_factor=1)
    assert (rf1.kafka_replication_factor, rf1.kafka_min_insync_replicas) == (1, 1)
    ext = _settings(tmp_path, kafka_bootstrap_servers="kafka:9092")
    assert (ext.kafka_replication_factor, ext.kafka_min_insync_replicas) == (1, 1)


def test_the_profile_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACK_KAFKA_BROKERS", "3")
    monkeypatch.setenv("STACK_KAFKA_SECURITY", "sasl_ssl")
    monkeypatch.delenv("KAFKA_REPLICATION_FACTOR", raising=False)
    monkeypatch.delenv("KAFKA_MIN_INSYNC_REPLICAS", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("KAFKA_SECURITY_PROTOCOL", raising=False)
    s = Settings(_env_file=None)
    assert s.stack_kafka_brokers == 3
    assert (s.kafka_replication_factor, s.kafka_min_insync_replicas) == (3, 2)
    assert s.kafka_bootstrap == "127.0.0.1:19092,127.0.0.1:19192,127.0.0.1:19292"
    assert s.kafka_security.protocol == "SASL_SSL"
    assert s.kafka_security.ca_location == s.stack_kafka_secrets_dir / "ca.pem"


def test_a_worker_creates_every_topic_with_the_profiles_replication(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Event, dead-letter, redrive, ticks and faust's changelog topics alike: 3 copies, 2 in
    sync; and faust itself would create a topic with 3 copies."""
    import streams.app as worker

    s = _settings(tmp_path, worker_data_dir=tmp_path / "workers")
    calls: list[dict[str, Any]] = []

    class Stop(Exception):
        pass

    def fake_ensure(bootstrap: str, topics: Any, **kw: Any) -> list[str]:
        calls.append({"topics": [t.name for t in topics], **kw})
        raise Stop

    monkeypatch.setattr(worker, "ensure_topics", fake_ensure)
    with pytest.raises(Stop):
        worker.run_worker("stock", s)  # the stock role never touches PostgreSQL
    (call,) = calls
    assert (call["replication"], call["min_insync_replicas"]) == (3, 2)
    names = call["topics"]
    assert any(n.endswith("-changelog") for n in names)
    assert any(n.endswith(".dlq") for n in names) and any(n.endswith(".redrive") for n in names)
    assert worker.create_app("stock", s).conf.topic_replication_factor == 3
