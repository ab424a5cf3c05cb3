"""Every Kafka client of the project honours the client security settings (issue 17): TLS and
SASL/SCRAM when KAFKA_SECURITY_PROTOCOL asks for them, nothing added under PLAINTEXT.

Per kind of client builder: librdkafka's producer, consumer and admin settings
(`connectors.kafka`), aiokafka's keyword arguments (`KafkaSecurity.aiokafka`, `GroupOffsets`),
and the faust app's `broker_credentials` as its aiokafka driver turns them into its consumer's
and producer's. A guard reads the source tree for every client constructed and fails when one
does not get the security (a planted one is found: the check can fail). The password never shows
in a repr, a log line or an error."""

from __future__ import annotations

import ast
import datetime as dt
import gc
import inspect
import logging
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiokafka
import faust
import pytest
from pydantic import SecretStr

from connectors.groups import GroupOffsets
from connectors.kafka import admin_config, consumer_config, producer_config
from core.settings import KafkaSecurity, Settings

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cr3t-SCRAM-pw"  # never to be seen anywhere but in a client's own settings

#: what the three builders returned before issue 17: under PLAINTEXT nothing may change
PRODUCER_PLAINTEXT = {
    "bootstrap.servers": "b1:9092,b2:9092",
    "acks": "all",
    "enable.idempotence": True,
    "max.in.flight.requests.per.connection": 5,
    "partitioner": "murmur2_random",
    "linger.ms": 2.0,
    "batch.num.messages": 10000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "message.max.bytes": 900_000 + 1024,
    "delivery.timeout.ms": 5000,
    "request.timeout.ms": 2500,
    "socket.keepalive.enable": True,
    "log_level": 3,
}


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA certificate (PEM), as the stack's SASL_SSL profile makes one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mohallamart-test-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path_factory.mktemp("kafka-secrets") / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def sasl(ca_file: Path) -> KafkaSecurity:
    return KafkaSecurity(
        protocol="SASL_SSL",
        mechanism="SCRAM-SHA-512",
        username="mohallamart",
        password=SecretStr(PASSWORD),
        ca_location=ca_file,
    )


def _settings(tmp_path: Path, **env: Any) -> Settings:
    return Settings(_env_file=None, worker_data_dir=tmp_path, **env)


def _sasl_settings(tmp_path: Path, ca_file: Path) -> Settings:
    return _settings(
        tmp_path,
        kafka_bootstrap_servers="b1:9092",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="mohallamart",
        kafka_sasl_password=PASSWORD,
        kafka_ssl_ca_location=str(ca_file),
    )


SASL_LIBRDKAFKA = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanisms": "SCRAM-SHA-512",
    "sasl.username": "mohallamart",
    "sasl.password": PASSWORD,
}


# --- librdkafka (confluent-kafka): the three builders -------------------------------------------
def test_plaintext_adds_nothing_to_the_librdkafka_settings() -> None:
    plain = KafkaSecurity()
    assert plain.librdkafka() == {}
    got = producer_config(
        "b1:9092,b2:9092",
        security=plain,
        delivery_timeout_ms=5000,
        linger_ms=2.0,
        max_message_bytes=900_000,
    )
    assert got == PRODUCER_PLAINTEXT
    assert consumer_config("b1:9092", "g", {"enable.auto.commit": False}, security=plain) == {
        "bootstrap.servers": "b1:9092",
        "group.id": "g",
        "enable.auto.commit": False,
    }
    assert admin_config("b1:9092", security=plain) == {"bootstrap.servers": "b1:9092"}
    assert admin_config("b1:9092", security=plain, log_level=0) == {
        "bootstrap.servers": "b1:9092",
        "log_level": 0,
    }


def test_sasl_ssl_adds_the_security_to_every_librdkafka_client(
    sasl: KafkaSecurity, ca_file: Path
) -> None:
    want = {**SASL_LIBRDKAFKA, "ssl.ca.location": str(ca_file)}
    producer = producer_config(
        "b1:9092,b2:9092",
        security=sasl,
        delivery_timeout_ms=5000,
        linger_ms=2.0,
        max_message_bytes=900_000,
    )
    assert producer == {**PRODUCER_PLAINTEXT, **want}
    consumer = consumer_config("b1:9092", "g", {"enable.auto.commit": False}, security=sasl)
    assert consumer == {
        "bootstrap.servers": "b1:9092",
        "group.id": "g",
        "enable.auto.commit": False,
        **want,
    }
    assert admin_config("b1:9092", security=sasl, log_level=3) == {
        "bootstrap.servers": "b1:9092",
        "log_level": 3,
        **want,
    }


def test_a_consumers_extra_settings_never_turn_the_security_off(sasl: KafkaSecurity) -> None:
    conf = consumer_config("b1:9092", "g", {"security.protocol": "PLAINTEXT"}, security=sasl)
    assert conf["security.protocol"] == "SASL_SSL"


def test_librdkafka_accepts_the_settings(sasl: KafkaSecurity) -> None:
    """The client is made (nothing is reached: no broker is asked before the first call)."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    conf = dict(log_level=0)
    Producer(
        {
            **producer_config(
                "127.0.0.1:1",
                security=sasl,
                delivery_timeout_ms=1000,
                linger_ms=1,
                max_message_bytes=1000,
            ),
            **conf,
        }
    )
    Consumer(consumer_config("127.0.0.1:1", "g", conf, security=sasl)).close()
    AdminClient(admin_config("127.0.0.1:1", security=sasl, log_level=0))


# --- aiokafka: the keyword arguments, and the clients built with them ---------------------------
def test_plaintext_adds_no_aiokafka_argument() -> None:
    assert KafkaSecurity().aiokafka() == {}


def test_sasl_ssl_aiokafka_arguments(sasl: KafkaSecurity) -> None:
    kw = sasl.aiokafka()
    ctx = kw.pop("ssl_context")
    assert kw == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "mohallamart",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    # the CA of `ca_location` is what the brokers' certificates are checked against
    cas = ctx.get_ca_certs()
    assert len(cas) == 1
    assert ((("commonName", "mohallamart-test-ca"),),) == cas[0]["subject"]


def test_other_protocols_aiokafka_arguments(ca_file: Path) -> None:
    plain_sasl = KafkaSecurity(
        protocol="SASL_PLAINTEXT", username="u", password=SecretStr(PASSWORD)
    ).aiokafka()
    assert "ssl_context" not in plain_sasl
    assert plain_sasl["security_protocol"] == "SASL_PLAINTEXT"
    tls = KafkaSecurity(protocol="SSL", ca_location=ca_file).aiokafka()
    assert set(tls) == {"security_protocol", "ssl_context"}
    assert tls["security_protocol"] == "SSL"


async def test_aiokafka_accepts_the_arguments(sasl: KafkaSecurity) -> None:
    """aiokafka checks them when a client is made (SASL_SSL needs a context, the mechanism must
    be one it knows); nothing is reached before `start`."""
    from aiokafka.admin import AIOKafkaAdminClient

    for make in (aiokafka.AIOKafkaConsumer, aiokafka.AIOKafkaProducer, AIOKafkaAdminClient):
        make(bootstrap_servers="127.0.0.1:1", **sasl.aiokafka())


class _Recorder:
    """Stands for an aiokafka client: records how it was made, answers without a broker."""

    made: list[tuple[str, dict[str, Any]]]

    def __init__(self, **kwargs: Any) -> None:
        self.made.append((type(self).__name__, kwargs))

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def list_consumer_groups(self) -> list[Any]:
        return [("mohallamart-projections", "consumer")]

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [{"topic": n, "error_code": 0, "partitions": [{"partition": 0}]} for n in names]

    async def end_offsets(self, tps: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(tps, 7)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    made: list[tuple[str, dict[str, Any]]] = []
    admin = type("Admin", (_Recorder,), {"made": made})
    consumer = type("Consumer", (_Recorder,), {"made": made})
    monkeypatch.setattr("connectors.groups.AIOKafkaAdminClient", admin)
    monkeypatch.setattr("connectors.groups.AIOKafkaConsumer", consumer)
    return made


@pytest.mark.parametrize("secure", [False, True])
async def test_group_offsets_clients_get_the_security(
    recorded: list[tuple[str, dict[str, Any]]], sasl: KafkaSecurity, secure: bool
) -> None:
    security = sasl if secure else KafkaSecurity()
    offsets = GroupOffsets("b1:9092", security=security, timeout_s=1.0)
    assert await offsets.groups("mohallamart-") == ["mohallamart-projections"]
    assert await offsets.ends(["t"]) == {("t", 0): 7}
    await offsets.close()
    assert [kind for kind, _ in recorded] == ["Admin", "Consumer"]
    for _, kwargs in recorded:
        assert kwargs["bootstrap_servers"] == "b1:9092"
        added = {k: v for k, v in kwargs.items() if k.startswith(("sasl", "security", "ssl"))}
        if not secure:
            assert added == {}  # aiokafka's defaults, as before
        else:
            assert added["security_protocol"] == "SASL_SSL"
            assert added["sasl_mechanism"] == "SCRAM-SHA-512"
            assert added["sasl_plain_username"] == "mohallamart"
            assert added["sasl_plain_password"] == PASSWORD
            assert isinstance(added["ssl_context"], ssl.SSLContext)


# --- faust: broker_credentials, and what its aiokafka driver makes of them -----------------------
def test_faust_credentials_per_protocol(sasl: KafkaSecurity, ca_file: Path) -> None:
    from faust.types.auth import AuthProtocol, SASLMechanism

    from streams.transport.credentials import broker_credentials

    assert broker_credentials(KafkaSecurity()) is None  # faust's default: nothing changes
    creds = broker_credentials(sasl)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol == AuthProtocol.SASL_SSL
    assert creds.mechanism == SASLMechanism.SCRAM_SHA_512
    assert creds.username == "mohallamart" and creds.password == PASSWORD
    assert isinstance(creds.ssl_context, ssl.SSLContext)
    # SASL_SSL with the system's CAs (no CA file) is still SASL_SSL, not SASL_PLAINTEXT
    system = broker_credentials(
        KafkaSecurity(protocol="SASL_SSL", username="u", password=SecretStr("p"))
    )
    assert isinstance(system, faust.SASLCredentials)
    assert system.protocol == AuthProtocol.SASL_SSL
    no_tls = broker_credentials(
        KafkaSecurity(protocol="SASL_PLAINTEXT", username="u", password=SecretStr("p"))
    )
    assert isinstance(no_tls, faust.SASLCredentials)
    assert no_tls.protocol == AuthProtocol.SASL_PLAINTEXT and no_tls.ssl_context is None
    tls = broker_credentials(KafkaSecurity(protocol="SSL", ca_location=ca_file))
    assert isinstance(tls, faust.SSLCredentials)
    assert tls.protocol == AuthProtocol.SSL


@pytest.fixture
def faust_clients(monkeypatch: pytest.MonkeyPatch) -> Callable[[faust.App], dict[str, Any]]:
    """The keyword arguments faust's aiokafka driver (through our `mohallamart://` transport)
    gives the aiokafka producer and the worker's consumer of an app. Reaches into faust's
    private factories: the point is to see what it really passes (topic creation goes through
    the producer's client)."""

    def build(app: faust.App) -> dict[str, Any]:
        made: list[tuple[str, dict[str, Any]]] = []
        monkeypatch.setattr(
            aiokafka, "AIOKafkaProducer", type("Producer", (_Recorder,), {"made": made})
        )
        monkeypatch.setattr(
            aiokafka, "AIOKafkaConsumer", type("Consumer", (_Recorder,), {"made": made})
        )
        # the aiokafka driver's factories (faust's types declare only the public protocol)
        app.producer._new_producer()  # type: ignore[attr-defined]
        thread = app.consumer._new_consumer_thread()  # type: ignore[attr-defined]
        thread._create_worker_consumer(app.transport)
        return dict(made)

    return build


async def test_the_worker_app_under_plaintext_is_unchanged(
    tmp_path: Path, faust_clients: Callable[[faust.App], dict[str, Any]]
) -> None:
    from streams.app import create_app

    app = create_app("projections", _settings(tmp_path, kafka_bootstrap_servers="b1:9092"))
    assert app.conf.broker_credentials is None
    for kind, kwargs in faust_clients(app).items():
        assert kwargs["security_protocol"] == "PLAINTEXT", kind
        assert not [k for k in kwargs if k.startswith("sasl") or k == "ssl_context"], kind


async def test_the_worker_app_connects_over_sasl_ssl_with_scram(
    tmp_path: Path, ca_file: Path, faust_clients: Callable[[faust.App], dict[str, Any]]
) -> None:
    from streams.app import create_app

    app = create_app("stock", _sasl_settings(tmp_path, ca_file))
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)
    clients = faust_clients(app)
    assert set(clients) == {"Producer", "Consumer"}
    for kind, kwargs in clients.items():
        assert kwargs["bootstrap_servers"] == ["b1:9092"], kind
        assert kwargs["security_protocol"] == "SASL_SSL", kind
        assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512", kind
        assert kwargs["sasl_plain_username"] == "mohallamart", kind
        assert kwargs["sasl_plain_password"] == PASSWORD, kind
        ctx = kwargs["ssl_context"]
        assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED, kind
    # our producer's own settings still apply on top (idempotent, acks=all), and a produce
    # request left unanswered is retried after 30 s, not waited on for faust's 20 minutes
    assert clients["Producer"]["enable_idempotence"] is True
    assert clients["Producer"]["request_timeout_ms"] == 30_000


# --- no client forgets it: the source tree, read -------------------------------------------------
SCANNED = ("api", "streams", "connectors", "mohallamart")
NOT_OURS = ROOT / "mohallamart" / "stack"  # the local stack's own admin client (its helper's)
LIBRDKAFKA = {"Producer", "Consumer", "AdminClient"}
AIOKAFKA = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "AIOKafkaClient"}
BUILDERS = {"producer_config", "consumer_config", "admin_config"}


def _client_kinds(tree: ast.AST) -> tuple[dict[str, str], dict[str, str]]:
    """(names bound to a client class -> its kind, module aliases -> their library)."""
    names: dict[str, str] = {}
    modules: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            for a in node.names:
                bound = a.asname or a.name
                if root == "confluent_kafka" and a.name in LIBRDKAFKA:
                    names[bound] = "librdkafka"
                elif root == "aiokafka" and a.name in AIOKAFKA:
                    names[bound] = "aiokafka"
                elif root == "faust" and a.name == "App":
                    names[bound] = "faust"
        elif isinstance(node, ast.Import):
            for a in node.names:
                root = a.name.split(".")[0]
                if root in ("confluent_kafka", "aiokafka", "faust"):
                    modules[a.asname or root] = root
    return names, modules


def _kind(call: ast.Call, names: dict[str, str], modules: dict[str, str]) -> str | None:
    f = call.func
    if isinstance(f, ast.Name):
        return names.get(f.id)
    if isinstance(f, ast.Attribute):
        root = f.value
        while isinstance(root, ast.Attribute):
            root = root.value
        lib = modules.get(root.id) if isinstance(root, ast.Name) else None
        if lib == "confluent_kafka" and f.attr in LIBRDKAFKA:
            return "librdkafka"
        if lib == "aiokafka" and f.attr in AIOKAFKA:
            return "aiokafka"
        if lib == "faust" and f.attr == "App":
            return "faust"
    return None


def _called(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        f = node.func
        return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    return None


def _given(value: ast.expr) -> bool:
    """A security passed on, not made up on the spot (`KafkaSecurity()` is PLAINTEXT)."""
    return _called(value) != "KafkaSecurity" and not (
        isinstance(value, ast.Constant) and value.value is None
    )


def _librdkafka_secured(expr: ast.AST, scope: ast.AST) -> bool:
    """The settings hold the security: a builder given `security=`, or `**x.librdkafka()`; a
    name is followed to its assignments in the enclosing function (every one must)."""
    for node in ast.walk(expr):
        if _called(node) in BUILDERS:
            assert isinstance(node, ast.Call)
            if any(k.arg == "security" and _given(k.value) for k in node.keywords):
                return True
        if _called(node) == "librdkafka":
            return True
    if isinstance(expr, ast.Name):
        values = [
            n.value
            for n in ast.walk(scope)
            if isinstance(n, ast.Assign | ast.AnnAssign)
            and n.value is not None
            and any(isinstance(t, ast.Name) and t.id == expr.id for t in _targets(n))
        ]
        return bool(values) and all(_librdkafka_secured(v, scope) for v in values)
    return False


def _targets(node: ast.Assign | ast.AnnAssign) -> list[ast.expr]:
    return list(node.targets) if isinstance(node, ast.Assign) else [node.target]


def _secured(kind: str, call: ast.Call, scope: ast.AST) -> bool:
    if kind == "librdkafka":
        conf = call.args[0] if call.args else None
        return conf is not None and _librdkafka_secured(conf, scope)
    if kind == "aiokafka":  # `**security.aiokafka()`
        return any(k.arg is None and _called(k.value) == "aiokafka" for k in call.keywords)
    return any(k.arg == "broker_credentials" and _given(k.value) for k in call.keywords)


def client_sites(source: str, where: str) -> list[tuple[str, str, bool]]:
    """Every Kafka client constructed in a module's source: (where, kind, gets the security).
    Code in string constants (a script a benchmark runs) is read too."""
    tree = ast.parse(source)
    names, modules = _client_kinds(tree)
    out: list[tuple[str, str, bool]] = []

    def visit(node: ast.AST, scope: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else scope
            if isinstance(child, ast.Call):
                kind = _kind(child, names, modules)
                if kind is not None:
                    out.append((f"{where}:{child.lineno}", kind, _secured(kind, child, inner)))
            if (
                isinstance(child, ast.Constant)
                and isinstance(child.value, str)
                and "\n" in child.value
                and any(
                    c in child.value for c in ("Producer(", "Consumer(", "AdminClient(", "App(")
                )
            ):
                try:
                    out.extend(client_sites(child.value, f"{where}:{child.lineno}(script)"))
                except SyntaxError:
                    pass  # prose, not code
            visit(child, inner)

    visit(tree, tree)
    return out


def _sources() -> Iterator[Path]:
    for pkg in SCANNED:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            if NOT_OURS not in f.parents:
                yield f


def test_every_kafka_client_gets_the_security() -> None:
    sites = [s for f in _sources() for s in client_sites(f.read_text(), str(f.relative_to(ROOT)))]
    forgot = [f"{where} ({kind})" for where, kind, ok in sites if not ok]
    assert forgot == [], "Kafka clients without the security settings:\n" + "\n".join(forgot)
    # the scan sees the clients at all: each kind, and about as many as there are
    kinds = {kind for _, kind, _ in sites}
    assert kinds == {"librdkafka", "aiokafka", "faust"}, kinds
    assert len(sites) >= 30, sites
    assert any("(script)" in where for where, _, _ in sites)  # the faust baseline's app


def test_a_planted_client_without_security_is_found() -> None:
    planted = (
        "import faust\n"
        "from confluent_kafka import Producer, Consumer\n"
        "from confluent_kafka.admin import AdminClient\n"
        "from aiokafka import AIOKafkaConsumer\n"
        "from connectors.kafka import admin_config, consumer_config, producer_config\n"
        "def f(s):\n"
        "    Producer({'bootstrap.servers': s.kafka_bootstrap})\n"  # 7
        "    Consumer(consumer_config(s.kafka_bootstrap, 'g'))\n"  # 8
        "    AdminClient(admin_config(s.kafka_bootstrap, security=KafkaSecurity()))\n"  # 9
        "    conf = producer_config(s.kafka_bootstrap, delivery_timeout_ms=1)\n"
        "    Producer(conf)\n"  # 11
        "    AIOKafkaConsumer(bootstrap_servers=s.kafka_bootstrap)\n"  # 12
        "    faust.App('x', broker='kafka://b:1')\n"  # 13
        "    faust.App('x', broker='kafka://b:1', broker_credentials=None)\n"  # 14
        "    Producer({'bootstrap.servers': 'b', **s.kafka_security.librdkafka()})\n"
        "    AdminClient(admin_config(s.kafka_bootstrap, security=s.kafka_security))\n"
        "    conf2 = consumer_config(s.kafka_bootstrap, 'g', security=s.kafka_security)\n"
        "    Consumer(conf2)\n"
        "    AIOKafkaConsumer(bootstrap_servers='b', **s.kafka_security.aiokafka())\n"
        "    faust.App('x', broker_credentials=broker_credentials(s.kafka_security))\n"
        "S = '''\n"
        "import faust\n"
        "app = faust.App('y', broker='kafka://b:1')\n"
        "'''\n"
    )
    sites = client_sites(planted, "planted.py")
    bad = sorted(where for where, _, ok in sites if not ok)
    assert bad == sorted(
        [f"planted.py:{n}" for n in (7, 8, 9, 11, 12, 13, 14)] + ["planted.py:21(script):3"]
    ), sites
    assert len(sites) == 13


@pytest.mark.parametrize(
    "target",
    [
        "connectors.kafka:producer_config",
        "connectors.kafka:consumer_config",
        "connectors.kafka:admin_config",
        "connectors.producer:EventProducer",
        "connectors.groups:GroupOffsets",
        "connectors.trace:KafkaLookup",
        "connectors.topics:ensure_topics",
        "connectors.topics:ensure_topics_ready",
        "connectors.topics:wait_topics_ready",
    ],
)
def test_the_connectors_require_the_security(target: str) -> None:
    """No default: a caller cannot forget it (mypy and the call itself refuse)."""
    import importlib

    module, name = target.split(":")
    param = inspect.signature(getattr(importlib.import_module(module), name)).parameters["security"]
    assert param.default is inspect.Parameter.empty
    assert param.kind is inspect.Parameter.KEYWORD_ONLY


# --- the password is never shown -----------------------------------------------------------------
def test_the_password_is_not_in_reprs(tmp_path: Path, ca_file: Path) -> None:
    from streams.transport.credentials import broker_credentials

    settings = _sasl_settings(tmp_path, ca_file)
    security = settings.kafka_security
    assert security.password is not None and security.password.get_secret_value() == PASSWORD
    shown = [
        repr(settings),
        str(settings),
        str(settings.model_dump()),
        settings.model_dump_json(),
        repr(security),
        str(security),
        repr(broker_credentials(security)),
    ]
    for text in shown:
        assert PASSWORD not in text


async def test_the_password_is_not_logged_when_the_worker_app_is_built(
    tmp_path: Path, ca_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from streams.app import create_app

    caplog.set_level(logging.DEBUG)
    app = create_app("projections", _sasl_settings(tmp_path, ca_file))
    assert PASSWORD not in repr(app.conf.broker_credentials)
    assert PASSWORD not in caplog.text


def test_a_failing_librdkafka_client_shows_no_password(
    sasl: KafkaSecurity, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens on port 1: librdkafka's own log lines (stderr) and our error name the
    broker, never the password."""
    from connectors.topics import TopicError, ensure_topics

    caplog.set_level(logging.DEBUG)
    with pytest.raises(TopicError) as failed:
        ensure_topics(
            "127.0.0.1:1", [], security=sasl, replication=1, min_insync_replicas=1, timeout_s=1.0
        )
    assert "127.0.0.1:1" in str(failed.value)
    out, err = capfd.readouterr()
    for text in (str(failed.value), repr(failed.value), out, err, caplog.text):
        assert PASSWORD not in text
    del failed  # its traceback holds the admin client, which would go on logging its retries
    gc.collect()


async def test_a_failing_aiokafka_client_shows_no_password(
    sasl: KafkaSecurity, caplog: pytest.LogCaptureFixture
) -> None:
    from connectors.base import DependencyDown

    caplog.set_level(logging.DEBUG)
    offsets = GroupOffsets("127.0.0.1:1", security=sasl, timeout_s=1.0)
    with pytest.raises(DependencyDown) as failed:
        await offsets.groups("mohallamart-")
    await offsets.close()
    for text in (str(failed.value), repr(failed.value), caplog.text):
        assert PASSWORD not in text
