"""Kafka's 3-broker profile of the local stack (STACK_KAFKA_BROKERS=3): its nodes, their
`server.properties`, the TLS and SCRAM material of its SASL_SSL mode, and the record of which
Kafka profile a STACK_DIR runs.

Layout (node i = 1..3, step = STACK_KAFKA_PORT_STEP):

- `kafka-controller-i`: node id i, KRaft controller only, PLAINTEXT on loopback at
  STACK_KAFKA_CONTROLLER_PORT + (i-1)*step. The quorum is static (`controller.quorum.voters`):
  three fixed voters need no dynamic membership, and the storage tool formats them without
  directory ids.
- `kafka-broker-i`: node id 3+i, broker only; clients at STACK_KAFKA_PORT + (i-1)*step, the
  brokers' own listener at STACK_KAFKA_INTERNAL_PORT + (i-1)*step. Both PLAINTEXT, or both
  SASL_SSL (SCRAM-SHA-512 over TLS) with STACK_KAFKA_SECURITY=sasl_ssl.

Secrets (SASL_SSL) live in `<STACK_DIR>/kafka-secrets/` (mode 0700, every file 0600 but the CA
certificate): the CA, one key and certificate per broker, the client's and the brokers'
SCRAM passwords. A broker's `server.properties` holds the brokers' password in its JAAS line and
is written 0600 in a 0700 folder. No password is ever on a command line: the storage tool reads
its `--add-scram` arguments from a Java argument file (`java @file`) in the secrets folder,
removed once it has run.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import SecretStr

from core.errors import StackError
from core.settings import STACK_KAFKA_USER, Settings

__all__ = [
    "BROKER_USER",
    "CLUSTER_ID_FILE",
    "PROFILE_FILE",
    "ClusterSecrets",
    "KafkaProfile",
    "Node",
    "broker_properties",
    "cluster_nodes",
    "controller_properties",
    "ensure_secrets",
    "kafka_paths",
    "read_profile",
    "scram_argfile_lines",
    "write_private_text",
    "write_profile",
]

#: the SCRAM user the brokers talk to each other as (SASL_SSL); its password never leaves the
#: stack's secrets folder
BROKER_USER = "kafka-broker"
#: `<STACK_DIR>/<this>`: which Kafka profile the STACK_DIR runs
PROFILE_FILE = "kafka-profile.json"
#: `<STACK_DIR>/<this>`: the 3-broker profile's cluster id (every node is formatted with it)
CLUSTER_ID_FILE = "kafka-cluster-id"
_SCRAM = "SCRAM-SHA-512"
_CERT_DAYS = 3650


@dataclass(frozen=True)
class KafkaProfile:
    """Which Kafka a STACK_DIR runs: 1 node or 3 controllers + 3 brokers, and their security."""

    brokers: int
    security: str

    @classmethod
    def of(cls, settings: Settings) -> KafkaProfile:
        return cls(settings.stack_kafka_brokers, settings.stack_kafka_security)

    def describe(self) -> str:
        return f"STACK_KAFKA_BROKERS={self.brokers}, STACK_KAFKA_SECURITY={self.security}"

    def problem(self) -> str | None:
        """Why the stack cannot run this profile, or None."""
        if self.brokers == 1 and self.security != "plaintext":
            return (
                f"STACK_KAFKA_SECURITY={self.security} runs with the 3-broker profile only: set "
                f"STACK_KAFKA_BROKERS=3 as well (`mohallamart stack up --brokers 3 --security "
                f"{self.security}`), or STACK_KAFKA_SECURITY=plaintext for the one-node Kafka"
            )
        return None

    def service_names(self) -> list[str]:
        if self.brokers == 1:
            return ["kafka"]
        return [f"kafka-controller-{i}" for i in (1, 2, 3)] + [
            f"kafka-broker-{i}" for i in (1, 2, 3)
        ]


def read_profile(stack_dir: Path) -> KafkaProfile | None:
    """The profile recorded in `stack_dir`, or None when it never ran Kafka. A STACK_DIR from
    before the record existed, with a formatted one-node Kafka, runs the one-node profile."""
    record = stack_dir / PROFILE_FILE
    try:
        data = json.loads(record.read_text())
        return KafkaProfile(int(data["brokers"]), str(data["security"]))
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StackError(
            f"{record} is not a Kafka profile record ({exc}); it says which Kafka profile "
            f"{stack_dir} runs: restore it, or delete it with the Kafka data folders"
        ) from exc
    if (stack_dir / "kafka" / "data" / "meta.properties").exists():
        return KafkaProfile(1, "plaintext")
    return None


def write_profile(stack_dir: Path, profile: KafkaProfile) -> None:
    stack_dir.mkdir(parents=True, exist_ok=True)
    (stack_dir / PROFILE_FILE).write_text(
        json.dumps({"brokers": profile.brokers, "security": profile.security}) + "\n"
    )


def kafka_paths(stack_dir: Path, profile: KafkaProfile) -> list[Path]:
    """Everything of a profile in `stack_dir` (data, logs, secrets, the record): what to delete
    to run another profile there."""
    names = [*profile.service_names(), PROFILE_FILE]
    if profile.brokers == 3:
        names += [CLUSTER_ID_FILE, "kafka-secrets"]
    return [stack_dir / n for n in names]


# --- nodes and their properties ------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One process of the 3-broker profile."""

    name: str
    role: Literal["controller", "broker"]
    index: int  # 1..3
    node_id: int
    port: int  # the controller listener, or the clients' listener of a broker
    internal_port: int | None  # a broker's listener for the other brokers


def cluster_nodes(settings: Settings) -> list[Node]:
    """The three controllers (node ids 1-3), then the three brokers (node ids 4-6). Raise
    StackError if two of their ports coincide."""
    s = settings
    step = s.stack_kafka_port_step
    nodes = [
        Node(
            f"kafka-controller-{i}",
            "controller",
            i,
            i,
            s.stack_kafka_controller_port + (i - 1) * step,
            None,
        )
        for i in (1, 2, 3)
    ] + [
        Node(
            f"kafka-broker-{i}",
            "broker",
            i,
            3 + i,
            s.stack_kafka_port + (i - 1) * step,
            s.stack_kafka_internal_port + (i - 1) * step,
        )
        for i in (1, 2, 3)
    ]
    ports = [p for n in nodes for p in (n.port, n.internal_port) if p is not None]
    if len(set(ports)) != len(ports) or max(ports) > 65535:
        raise StackError(
            f"the 3-broker Kafka profile's ports overlap or exceed 65535 ({sorted(ports)}): node "
            f"i listens on STACK_KAFKA_PORT, STACK_KAFKA_CONTROLLER_PORT and "
            f"STACK_KAFKA_INTERNAL_PORT + (i-1) x STACK_KAFKA_PORT_STEP; choose them further "
            f"apart"
        )
    return nodes


def _voters(settings: Settings, nodes: list[Node]) -> str:
    host = settings.stack_host
    return ",".join(f"{n.node_id}@{host}:{n.port}" for n in nodes if n.role == "controller")


#: topic defaults: a controller applies them to the topics it creates (CreateTopics is
#: forwarded to it in KRaft, auto-created topics too), a broker to its internal topics
_TOPIC_DEFAULTS = [
    "num.partitions=3",
    "default.replication.factor=3",
    "min.insync.replicas=2",
    # a replica that is not in sync never becomes leader: an acknowledged write is never lost
    "unclean.leader.election.enable=false",
]

#: fewer threads than Kafka's defaults: six JVMs share two cores on the development machine
_THREADS = [
    "num.network.threads=2",
    "num.io.threads=4",
    "background.threads=4",
]


def controller_properties(settings: Settings, node: Node, nodes: list[Node], data: Path) -> str:
    """A controller's `server.properties` (no secret in it)."""
    host = settings.stack_host
    return "\n".join(
        [
            "process.roles=controller",
            f"node.id={node.node_id}",
            f"controller.quorum.voters={_voters(settings, nodes)}",
            # loopback only; the controllers speak PLAINTEXT among themselves and to brokers
            f"listeners=CONTROLLER://{host}:{node.port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT",
            f"log.dirs={data}",
            *_TOPIC_DEFAULTS,
            *_THREADS,
            "",
        ]
    )


def broker_properties(
    settings: Settings,
    node: Node,
    nodes: list[Node],
    data: Path,
    secrets_: ClusterSecrets | None,
) -> str:
    """A broker's `server.properties`. With `secrets_` (SASL_SSL) it holds the brokers' SCRAM
    password in its JAAS line: write it 0600."""
    host = settings.stack_host
    protocol = "SASL_SSL" if secrets_ is not None else "PLAINTEXT"
    lines = [
        "process.roles=broker",
        f"node.id={node.node_id}",
        f"controller.quorum.voters={_voters(settings, nodes)}",
        "controller.listener.names=CONTROLLER",
        f"listeners=CLIENT://{host}:{node.port},INTERNAL://{host}:{node.internal_port}",
        f"advertised.listeners=CLIENT://{host}:{node.port},INTERNAL://{host}:{node.internal_port}",
        f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,CLIENT:{protocol},"
        f"INTERNAL:{protocol}",
        "inter.broker.listener.name=INTERNAL",
        f"log.dirs={data}",
        *_TOPIC_DEFAULTS,
        "offsets.topic.replication.factor=3",
        "offsets.topic.num.partitions=10",
        "transaction.state.log.replication.factor=3",
        "transaction.state.log.min.isr=2",
        "transaction.state.log.num.partitions=5",
        "share.coordinator.state.topic.replication.factor=3",
        "share.coordinator.state.topic.min.isr=2",
        # Our code creates every topic with its settings; auto-creation only serves ad-hoc
        # tools on the development stack.
        "auto.create.topics.enable=true",
        # Fast group formation and short session timeouts for the test profile.
        "group.initial.rebalance.delay.ms=0",
        "group.min.session.timeout.ms=1000",
        "group.consumer.min.session.timeout.ms=1000",
        "group.consumer.min.heartbeat.interval.ms=500",
        "log.segment.bytes=67108864",
        "num.replica.fetchers=1",
        *_THREADS,
    ]
    if secrets_ is not None:
        module = "org.apache.kafka.common.security.scram.ScramLoginModule"
        password = secrets_.broker_password().get_secret_value()
        lines += [
            f"sasl.enabled.mechanisms={_SCRAM}",
            f"sasl.mechanism.inter.broker.protocol={_SCRAM}",
            # the clients' listener checks SCRAM credentials; the brokers' also logs in with one
            f"listener.name.client.{_SCRAM.lower()}.sasl.jaas.config={module} required;",
            f"listener.name.internal.{_SCRAM.lower()}.sasl.jaas.config={module} required "
            f'username="{BROKER_USER}" password="{password}";',
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={secrets_.keystore(node.name)}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={secrets_.ca}",
            "ssl.client.auth=none",
            # brokers check each other's certificate and host name (127.0.0.1 is in its SAN)
            "ssl.endpoint.identification.algorithm=https",
        ]
    lines.append("")
    return "\n".join(lines)


# --- TLS and SCRAM material ------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSecrets:
    """The SASL_SSL profile's secrets folder (`Settings.stack_kafka_secrets_dir`)."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca-key.pem"

    def keystore(self, broker: str) -> Path:
        """A broker's private key (PKCS#8, unencrypted: the file's mode guards it) and its
        certificate chain, as Kafka's PEM key store reads them."""
        return self.folder / f"{broker}.pem"

    @property
    def client_password_file(self) -> Path:
        return self.folder / "client-password"

    @property
    def broker_password_file(self) -> Path:
        return self.folder / "broker-password"

    def client_password(self) -> SecretStr:
        return SecretStr(self.client_password_file.read_text().strip())

    def broker_password(self) -> SecretStr:
        return SecretStr(self.broker_password_file.read_text().strip())


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to a file only its owner can read, never readable by others meanwhile."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_private_text(path: Path, text: str) -> None:
    """A text file of mode 0600 (a broker's properties with its JAAS password)."""
    _write_private(path, text.encode())


def ensure_secrets(folder: Path, brokers: list[str], host: str) -> ClusterSecrets:
    """Make what is missing (idempotent): the folder (0700), a CA, a key and certificate per
    broker for `host`, 127.0.0.1 and localhost, the client's and the brokers' passwords."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    out = ClusterSecrets(folder)
    for pw in (out.client_password_file, out.broker_password_file):
        if not pw.exists():
            # URL-safe characters: nothing to quote in a JAAS line or the storage tool's syntax
            _write_private(pw, (secrets.token_urlsafe(32) + "\n").encode())

    now = dt.datetime.now(dt.UTC)
    pem = serialization.Encoding.PEM
    if not out.ca.exists() or not out.ca_key.exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MohallaMart local stack CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(
            out.ca_key,
            ca_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        out.ca.write_bytes(ca_cert.public_bytes(pem))
        out.ca.chmod(0o644)  # a certificate: public
        for broker in brokers:  # a new CA: every broker certificate is made again
            out.keystore(broker).unlink(missing_ok=True)
    ca_cert = x509.load_pem_x509_certificate(out.ca.read_bytes())
    ca_key_loaded = serialization.load_pem_private_key(out.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key_loaded, ec.EllipticCurvePrivateKey):
        raise StackError(f"{out.ca_key} is not the EC key the stack made: delete {folder}")

    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
    ]
    try:
        ip = ipaddress.ip_address(host)
        if str(ip) != "127.0.0.1":
            sans.append(x509.IPAddress(ip))
    except ValueError:
        if host != "localhost":
            sans.append(x509.DNSName(host))
    for broker in brokers:
        path = out.keystore(broker)
        if path.exists():
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, broker)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key_loaded, hashes.SHA256())
        )
        _write_private(
            path,
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            + cert.public_bytes(pem)
            + ca_cert.public_bytes(pem),
        )
    return out


def scram_argfile_lines(secrets_: ClusterSecrets) -> list[str]:
    """The storage tool's `--add-scram` arguments (the client's and the brokers' users), for a
    Java argument file: never on a command line."""
    users = (
        (STACK_KAFKA_USER, secrets_.client_password()),
        (BROKER_USER, secrets_.broker_password()),
    )
    lines: list[str] = []
    for user, password in users:
        lines += ["--add-scram", f"{_SCRAM}=[name={user},password={password.get_secret_value()}]"]
    return lines
