"""The one typed, frozen settings object, read from the environment and `.env`.

Every process (API, workers, operator tool, tests) reads its configuration here and nowhere else.
Connectors never see this object: they take plain constructor arguments.

A service URL left unset means "the local stack runs it": the stack starts the service on its
configured port and the effective URL points there. A URL that is set means "use this one": the
stack neither starts nor stops that service.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "ANALYTICS_WINDOWS",
    "PLACEHOLDER_SECRET",
    "PROJECT_ROOT",
    "STACK_KAFKA_USER",
    "KafkaSecurity",
    "Settings",
    "get_settings",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER_SECRET = "changethis"

Environment = Literal["development", "test", "production"]


#: the analytics role's window kinds (each has a grace in `Settings.analytics_grace_s`)
ANALYTICS_WINDOWS = ("sales_1m", "sales_1h", "sales_1d", "trending", "search_terms", "sessions")


#: the SCRAM user the stack's SASL_SSL profile creates for the project's clients
STACK_KAFKA_USER = "mohallamart"


@dataclass(frozen=True)
class KafkaSecurity:
    """A Kafka client's security, whichever client library reads it."""

    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str | None = None
    password: SecretStr | None = None  # a SecretStr: never in a repr, a log or an error
    ca_location: Path | None = None

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def librdkafka(self) -> dict[str, str]:
        """The librdkafka (confluent-kafka) properties: merged into every client's config."""
        if self.protocol == "PLAINTEXT":
            return {}
        conf = {"security.protocol": self.protocol}
        if self.sasl:
            conf["sasl.mechanisms"] = self.mechanism
            conf["sasl.username"] = self.username or ""
            conf["sasl.password"] = self.password.get_secret_value() if self.password else ""
        if self.tls and self.ca_location is not None:
            conf["ssl.ca.location"] = str(self.ca_location)
        return conf

    def aiokafka(self) -> dict[str, Any]:
        """The keyword arguments of an aiokafka client (AIOKafkaConsumer, AIOKafkaProducer,
        AIOKafkaAdminClient): merged into every one. Empty for PLAINTEXT: aiokafka's defaults.
        The dict holds the clear password, like `librdkafka()`'s: never log either."""
        if self.protocol == "PLAINTEXT":
            return {}
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl:
            kwargs["sasl_mechanism"] = self.mechanism
            kwargs["sasl_plain_username"] = self.username or ""
            kwargs["sasl_plain_password"] = (
                self.password.get_secret_value() if self.password else ""
            )
        return kwargs

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of an aiokafka (and so faust) client: the brokers' certificates
        checked against `ca_location` (the system's CAs when unset), host names checked, as
        `aiokafka.helpers.create_ssl_context` makes it and as librdkafka checks by default."""
        cafile = str(self.ca_location) if self.ca_location is not None else None
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)


class Settings(BaseSettings):
    """Configuration of every MohallaMart process. Field names are the environment variables."""

    model_config = SettingsConfigDict(
        env_file=os.environ.get("MOHALLAMART_ENV_FILE", ".env"),
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
    )

    environment: Environment = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- services: set a URL to use an external one; leave unset to run it in the local stack ---
    kafka_bootstrap_servers: str | None = None
    schema_registry_url: str | None = None
    database_url: SecretStr | None = None
    redis_url: SecretStr | None = None
    typesense_url: str | None = None
    typesense_api_key: SecretStr = SecretStr(PLACEHOLDER_SECRET)
    smtp_url: str | None = None
    #: how clients reach Kafka (librdkafka's names). Unset: the local stack's choice
    #: (STACK_KAFKA_SECURITY), plaintext unless it runs SASL_SSL
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = None
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    #: the CA (PEM) that signed the brokers' certificates; unset: the system's CAs
    kafka_ssl_ca_location: Path | None = None

    # --- the local stack (`mohallamart stack ...`) ---
    stack_dir: Path = PROJECT_ROOT / ".stack"
    stack_cache_dir: Path = Path.home() / ".cache" / "mohallamart"
    stack_host: str = "127.0.0.1"
    stack_kafka_port: int = Field(19092, ge=1, le=65535)
    stack_kafka_controller_port: int = Field(19093, ge=1, le=65535)
    stack_registry_port: int = Field(18081, ge=1, le=65535)
    stack_registry_management_port: int = Field(18082, ge=1, le=65535)
    stack_registry_db_port: int = Field(15433, ge=1, le=65535)
    stack_postgres_port: int = Field(15432, ge=1, le=65535)
    stack_redis_port: int = Field(16379, ge=1, le=65535)
    stack_typesense_port: int = Field(18108, ge=1, le=65535)
    stack_typesense_peering_port: int = Field(18107, ge=1, le=65535)
    stack_smtp_port: int = Field(11025, ge=1, le=65535)
    stack_providers_port: int = Field(18025, ge=1, le=65535)
    stack_kafka_heap_mb: int = Field(512, ge=128)
    #: Kafka nodes of the local stack: 1 (one node, broker and controller) or 3 (three
    #: controllers and three brokers on loopback, each with its ports and data folder). With 3
    #: (and KAFKA_BOOTSTRAP_SERVERS unset) KAFKA_REPLICATION_FACTOR defaults to 3 and
    #: KAFKA_MIN_INSYNC_REPLICAS to 2: every process reading these settings creates its topics
    #: so. A STACK_DIR keeps the profile it first ran (`<STACK_DIR>/kafka-profile.json`).
    stack_kafka_brokers: Literal[1, 3] = 1
    #: node i (1..3) of the 3-broker profile listens on each of its ports + (i-1) * this step
    stack_kafka_port_step: int = Field(100, ge=4, le=1000)
    #: the brokers' listener for the brokers themselves (3-broker profile)
    stack_kafka_internal_port: int = Field(19094, ge=1, le=65535)
    #: "sasl_ssl" (3-broker profile only): clients reach the brokers only over TLS with
    #: SASL/SCRAM-SHA-512 (user STACK_KAFKA_USER); the stack makes the CA, the certificates and
    #: the passwords in `<STACK_DIR>/kafka-secrets/` (mode 0700; ca.pem, client-password 0600)
    stack_kafka_security: Literal["plaintext", "sasl_ssl"] = "plaintext"
    stack_registry_heap_mb: int = Field(384, ge=128)
    stack_start_timeout_s: float = Field(120.0, gt=0)
    # Where to look for a JDK when JAVA_HOME is unset or too old (colon-separated folders).
    stack_jvm_dirs: str = "/usr/lib/jvm:/usr/lib64/jvm:/Library/Java/JavaVirtualMachines"
    kafka_version: str = "4.1.1"
    apicurio_version: str = "3.3.3"

    # --- API ---
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)

    # --- ingestion ---
    # A request waits at most this long; the producer gives up on a delivery sooner, so an answer
    # of 503 never turns into a late write.
    ingest_request_timeout_ms: int = Field(10_000, ge=1000)
    ingest_delivery_timeout_ms: int = Field(5_000, ge=500)
    ingest_linger_ms: float = Field(2.0, ge=0)
    ingest_max_batch: int = Field(1000, ge=1)
    ingest_max_body_bytes: int = Field(1_048_576, ge=1024)
    ingest_max_batch_body_bytes: int = Field(33_554_432, ge=1024)
    ingest_max_event_bytes: int = Field(900_000, ge=1024)
    ingest_default_rate_per_s: int = Field(1000, ge=1)
    ingest_rate_burst_s: float = Field(2.0, gt=0)
    ingest_dedup_retention_days: int = Field(7, ge=7)
    #: an `occurred_at` further than this ahead of the API's clock is refused (422). Kafka 4
    #: itself refuses a record more than `log.message.timestamp.after.max.ms` (1 h) ahead.
    ingest_max_clock_skew_s: float = Field(60.0, ge=0)
    auth_cache_s: float = Field(5.0, ge=0)
    db_pool_max: int = Field(10, ge=1)

    #: first part of every topic name (`<namespace>.<category>.events`); the worker benchmark
    #: runs in a namespace of its own so it never writes the pipeline's topics
    topic_namespace: str = Field("mohallamart", pattern=r"^[a-z][a-z0-9-]*$")
    #: copies of every topic the project creates (event, dead-letter, redrive, the workers' own
    #: and faust's changelogs), and how many must have a write before it is acknowledged
    #: (`acks=all`); a cluster of 3 brokers: 3 and 2. Topics that exist already are left as
    #: they are.
    kafka_replication_factor: int = Field(1, ge=1)
    kafka_min_insync_replicas: int = Field(1, ge=1)

    # --- workers (Faust) ---
    # The test profile shortens these so a killed worker is replaced in seconds, not a minute.
    kafka_session_timeout_ms: int = Field(10_000, ge=1000)
    kafka_heartbeat_interval_ms: int = Field(3_000, ge=100)
    kafka_rebalance_timeout_ms: int = Field(30_000, ge=1000)
    worker_data_dir: Path = PROJECT_ROOT / ".stack" / "workers"
    worker_web_host: str = "127.0.0.1"
    worker_web_port: int = Field(6066, ge=1, le=65535)
    #: Faust app ids are `<prefix>-<role>`: the roles' consumer groups and changelog topics
    worker_app_prefix: str = "mohallamart"
    #: where a role's consumer group starts when it has no committed offsets
    worker_offset_reset: Literal["earliest", "latest"] = "earliest"
    #: seconds between the attempts of a record that fails (then: the dead-letter topic)
    worker_retry_delays_s: tuple[float, ...] = (1.0, 5.0, 15.0)
    #: per stage (`<role>/<agent>`), e.g. {"stock/reserve_stock": [0.5, 2]}; others: the above
    worker_retry_delays_by_stage: dict[str, tuple[float, ...]] = Field(default_factory=dict)
    #: cap of the backoff while a dependency (PostgreSQL, the registry) is down
    worker_down_backoff_cap_s: float = Field(5.0, gt=0)
    #: how long a worker waits for Kafka's topic metadata to be ready (at start, and when a
    #: batch meets "not ready yet" errors) before it exits with status 78 naming the topics
    worker_not_ready_timeout_s: float = Field(60.0, gt=0)
    #: a worker in a rebalance whose table recovery has not started after this long exits, to
    #: be restarted by its supervisor (0: never)
    worker_stuck_rebalance_s: float = Field(120.0, ge=0)
    #: a worker with records waiting in a partition it reads (not paused on purpose) whose fetch
    #: position has not moved for this long logs its consumer's state and exits, to be
    #: restarted (0: never)
    worker_stuck_partition_s: float = Field(120.0, ge=0)
    #: a worker's PostgreSQL session left idle inside a transaction this long is ended by the
    #: server, its row locks released (None: the session timeout, at least 5 s; 0: never). A
    #: worker paused mid-transaction (SIGSTOP, a stalled VM, a long GC pause) otherwise holds
    #: its rows' locks until it resumes, and the next owner of its partitions waits on them
    #: (the drill's worker-pause row: the analytics worker that took over waited for ever)
    worker_pg_idle_in_transaction_s: float | None = Field(None, ge=0)
    #: records parked for a retry per partition (a failing record and those of its key behind
    #: it) before the partition pauses
    worker_max_parked: int = Field(1000, ge=1)
    worker_batch_size: int = Field(1000, ge=1)
    #: the longest a record waits for its batch to fill (latency at low rates)
    worker_batch_window_s: float = Field(0.02, gt=0)
    #: how often a worker commits its consumer group's offsets. Each commit goes through the
    #: consumer's thread and holds up its fetches meanwhile: at 1 s the projections' p99 at
    #: 1,000 events/s was 212-236 ms, at 5 s 122-135 ms (make bench-workers). A crash replays
    #: up to this much (every role is idempotent)
    worker_commit_interval_s: float = Field(5.0, gt=0)
    #: partitions of the stock role's by-shop topic (and its table's changelog)
    stock_partitions: int = Field(6, ge=1)
    #: how long an order waits for a product the stock role does not know yet, then: rejected
    stock_wait_unknown_product_s: float = Field(10.0, ge=0)

    # --- analytics windows (the analytics role; see streams/agents/analytics.py) ---
    #: partitions of the analytics role's by-key topic (and its table's changelog)
    analytics_partitions: int = Field(6, ge=1)
    #: grace per window kind, seconds: a window is final once the watermark passes its end +
    #: this; an event for a final window is late (reported, never counted)
    analytics_grace_s: dict[str, float] = Field(
        default_factory=lambda: {
            "sales_1m": 5.0,
            "sales_1h": 60.0,
            "sales_1d": 300.0,
            "trending": 30.0,
            "search_terms": 30.0,
            "sessions": 300.0,
        }
    )
    #: a browsing session ends after this long without activity
    analytics_session_gap_s: float = Field(1800.0, gt=0)
    #: a source partition quiet this long (wall time), read to its end, gets a tick
    analytics_tick_idle_s: float = Field(1.0, gt=0)
    #: the window stage writes its state at least every this many items (in the middle of a
    #: bundle if need be)
    analytics_flush_items: int = Field(5000, ge=1)
    #: drills only: end the analytics worker (status 137, as kill -9) once per data directory:
    #: "between-state-and-marker" after a window batch's journal record is written, half way
    #: through the checkpoint it forces (entries, marker); "router-after-forward" after the
    #: router forwarded a batch and before it recorded its clocks (the records come again:
    #: copies)
    analytics_fault: Literal["", "between-state-and-marker", "router-after-forward"] = ""

    # --- notifications ---
    email_from: str = "MohallaMart <no-reply@mohallamart.example>"
    #: SMTP connections the email agent keeps and sends on at once
    email_pool_size: int = Field(4, ge=1, le=64)
    #: SMS or push provider calls in flight at once (per channel agent)
    provider_concurrency: int = Field(8, ge=1, le=256)
    #: SMS and push providers (HTTP, see connectors/provider.py); unset: the local stack's
    #: stand-in (`/sms`, `/push`); `off`: the channel is not configured (skipped)
    sms_provider_url: str | None = None
    sms_provider_key: SecretStr = SecretStr("")
    push_provider_url: str | None = None
    push_provider_key: SecretStr = SecretStr("")

    # --- scheduled jobs (the jobs role; see streams/jobs.py) ---
    #: whether the jobs role's leader schedules runs (`mohallamart jobs run` works either way)
    jobs_schedule_enabled: bool = True
    #: how often the leader checks whether a period's run is due
    jobs_tick_s: float = Field(30.0, gt=0)
    #: expired sessions: removed once per period (a day), those expired this many days before
    #: the period began
    jobs_expired_sessions_every_s: int = Field(86_400, ge=1)
    jobs_expired_sessions_keep_days: int = Field(0, ge=0)
    #: old logs (audit log, analytics): removed once per period (a week, from Mondays 00:00 UTC)
    #: when older than the retention
    jobs_old_logs_every_s: int = Field(604_800, ge=1)
    log_retention_days: int = Field(90, ge=1)
    #: the data-sync check (connectors/drift.py): how often the jobs role's leader runs it (0:
    #: never; `mohallamart check` works either way), the rows of a kind above which it compares
    #: a sample of about that many, and how long it waits for a store's role to catch up before
    #: judging a difference (a role still behind then: unverified, never drift)
    sync_check_every_s: float = Field(300.0, ge=0)
    sync_check_sample: int = Field(20_000, ge=0)
    sync_check_wait_s: float = Field(30.0, ge=0)

    # --- read side (cache, search, read API, live updates) ---
    #: before every Typesense collection and alias name (the read benchmark uses its own)
    typesense_collection_prefix: str = Field("", pattern=r"^[a-z0-9_]*$")
    #: how long a view stays in Redis without being read through or rewritten
    cache_ttl_s: float = Field(600.0, gt=0)
    #: the read API's Redis timeout; after a failure it reads PostgreSQL for `cache_down_s`
    cache_timeout_ms: int = Field(100, ge=1)
    cache_down_s: float = Field(2.0, ge=0)
    #: a live-updates client is disconnected as too slow when this many events wait for it, or
    #: when one write to it does not complete within `live_write_timeout_s`
    live_client_queue: int = Field(10_000, ge=600)
    live_write_timeout_s: float = Field(5.0, gt=0)
    #: events each API process keeps per partition so reconnecting clients resume from memory
    live_buffer_per_partition: int = Field(5_000, ge=100)
    #: seconds between keep-alive comments on an idle live stream
    live_heartbeat_s: float = Field(15.0, gt=0)
    #: the operator dashboard (`/ops`): seconds between two snapshots of lag, rates and health
    ops_stream_every_s: float = Field(2.0, ge=0.5)

    # --- hardening (issue 17) ---
    #: browser origins allowed to call the API (comma-separated, e.g. `https://shop.example.in`);
    #: empty: none (no CORS header is ever sent, preflights are refused)
    cors_allow_origins: str = ""
    #: Clerk's webhook signing secret (`whsec_...`); unset: `/v1/webhooks/clerk` answers 404
    clerk_webhook_secret: SecretStr | None = None
    #: Twilio's auth token (signs the SMS status callbacks); unset: the callback answers 404
    twilio_auth_token: SecretStr | None = None
    #: the URL Twilio was given for status callbacks, as Twilio signs it (behind a proxy the API
    #: sees another); unset: the URL the request came to
    twilio_status_callback_url: str | None = None
    #: how long webhook receipts (replay protection) are kept
    webhook_receipt_days: int = Field(7, ge=1)
    #: our public URL of `/v1/webhooks/twilio/sms-status`: each SMS sent names it (with its
    #: message id) as `status_callback`, for a Twilio adapter to pass on as StatusCallback; unset:
    #: none named
    sms_status_callback_url: str | None = None

    # --- tracing (OpenTelemetry; see core/telemetry.py) ---
    #: an OTLP/HTTP collector (Jaeger, an OpenTelemetry Collector...): its base URL
    #: (`/v1/traces` is added), or the traces URL itself in the second; both unset or empty:
    #: no span is made (records still carry their `traceparent` header).
    otel_exporter_otlp_endpoint: str | None = None
    otel_exporter_otlp_traces_endpoint: str | None = None
    #: the SDK's sampler (`parentbased_always_on` by default; e.g. `parentbased_traceidratio`
    #: with a ratio in the second), and headers for the collector (`key=value,...`: its API key)
    otel_traces_sampler: str | None = None
    otel_traces_sampler_arg: str | None = None
    otel_exporter_otlp_headers: SecretStr | None = None

    @field_validator(
        "kafka_sasl_username", "kafka_sasl_password", "kafka_ssl_ca_location", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # docker compose passes `${VAR:-}` as an empty string: the same as not set
        return None if value == "" else value

    @field_validator("stack_kafka_brokers", mode="before")
    @classmethod
    def _brokers_from_text(cls, value: object) -> object:
        # the environment gives "3": a Literal of ints takes only the int
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
        return value

    @model_validator(mode="before")
    @classmethod
    def _three_brokers_replicate(cls, data: object) -> object:
        """With the local stack's 3-broker profile, topics get 3 copies and need 2 in sync
        unless KAFKA_REPLICATION_FACTOR / KAFKA_MIN_INSYNC_REPLICAS say otherwise."""
        if not isinstance(data, dict):
            return data
        given = {str(k).lower(): v for k, v in data.items()}
        if str(given.get("stack_kafka_brokers", "1")).strip() != "3" or given.get(
            "kafka_bootstrap_servers"
        ):
            return data
        out = dict(data)
        if "kafka_replication_factor" not in given:
            out["kafka_replication_factor"] = 3
        if "kafka_min_insync_replicas" not in given:
            try:
                rf = int(str(given.get("kafka_replication_factor", 3)))
            except (TypeError, ValueError):
                return out  # the field's own validation names the problem
            out["kafka_min_insync_replicas"] = min(2, rf)
        return out

    @model_validator(mode="after")
    def _refuse_placeholder_secrets(self) -> Settings:
        if self.environment == "production":
            if self.typesense_api_key.get_secret_value() == PLACEHOLDER_SECRET:
                raise ValueError(
                    "TYPESENSE_API_KEY is the development placeholder; set a real key "
                    "outside development"
                )
        if self.ingest_delivery_timeout_ms >= self.ingest_request_timeout_ms:
            raise ValueError(
                "INGEST_DELIVERY_TIMEOUT_MS must be shorter than INGEST_REQUEST_TIMEOUT_MS, so a "
                "request that timed out never becomes a late write"
            )
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            raise ValueError(
                "KAFKA_MIN_INSYNC_REPLICAS must be at most KAFKA_REPLICATION_FACTOR: a topic with "
                "fewer copies than that refuses every write"
            )
        if self.kafka_heartbeat_interval_ms * 3 > self.kafka_session_timeout_ms:
            raise ValueError(
                "KAFKA_HEARTBEAT_INTERVAL_MS must be at most a third of KAFKA_SESSION_TIMEOUT_MS"
            )
        if "*" in self.cors_origins:
            raise ValueError(
                "CORS_ALLOW_ORIGINS lists the browser origins allowed (https://shop.example.in); "
                "`*` would let every site call the API"
            )
        clerk = self.clerk_webhook_secret.get_secret_value() if self.clerk_webhook_secret else ""
        if clerk:
            import base64
            import binascii

            try:
                raw = base64.b64decode(clerk.removeprefix("whsec_") + "==", validate=False)
            except (binascii.Error, ValueError):
                raw = b""
            if not raw:
                raise ValueError(
                    "CLERK_WEBHOOK_SECRET must be the endpoint's signing secret from Clerk's "
                    "dashboard: `whsec_` followed by base64"
                )
        for name, url in (
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.otel_exporter_otlp_endpoint),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", self.otel_exporter_otlp_traces_endpoint),
        ):
            if url and url.strip() and not url.strip().startswith(("http://", "https://")):
                raise ValueError(
                    f"{name} must be an http:// or https:// URL (the OTLP/HTTP collector, e.g. "
                    f"http://localhost:4318), got {url[:100]!r}"
                )
        unknown = set(self.analytics_grace_s) - set(ANALYTICS_WINDOWS)
        missing = set(ANALYTICS_WINDOWS) - set(self.analytics_grace_s)
        if unknown or missing or any(v < 0 for v in self.analytics_grace_s.values()):
            raise ValueError(
                "ANALYTICS_GRACE_S needs a grace of 0 s or more for each window kind: "
                + ", ".join(ANALYTICS_WINDOWS)
            )
        return self

    # --- effective addresses: the configured service, else the local stack's ---
    @property
    def kafka_bootstrap(self) -> str:
        if self.kafka_bootstrap_servers:
            return self.kafka_bootstrap_servers
        step = self.stack_kafka_port_step
        return ",".join(
            f"{self.stack_host}:{self.stack_kafka_port + i * step}"
            for i in range(self.stack_kafka_brokers)
        )

    @property
    def stack_kafka_secrets_dir(self) -> Path:
        """Where the stack's SASL_SSL profile keeps its CA and the client's password."""
        return self.stack_dir / "kafka-secrets"

    @property
    def kafka_security(self) -> KafkaSecurity:
        """How every Kafka client of this process authenticates (no secret is logged by it)."""
        if self.kafka_security_protocol is not None:
            return KafkaSecurity(
                protocol=self.kafka_security_protocol,
                mechanism=self.kafka_sasl_mechanism,
                username=self.kafka_sasl_username,
                password=self.kafka_sasl_password,
                ca_location=self.kafka_ssl_ca_location,
            )
        if self.kafka_bootstrap_servers is None and self.stack_kafka_security == "sasl_ssl":
            secrets = self.stack_kafka_secrets_dir
            pw_file = secrets / "client-password"
            password = pw_file.read_text().strip() if pw_file.exists() else None
            return KafkaSecurity(
                protocol="SASL_SSL",
                mechanism="SCRAM-SHA-512",
                username=self.kafka_sasl_username or STACK_KAFKA_USER,
                password=SecretStr(password) if password else self.kafka_sasl_password,
                ca_location=secrets / "ca.pem",
            )
        return KafkaSecurity()

    @property
    def registry_url(self) -> str:
        return self.schema_registry_url or (
            f"http://{self.stack_host}:{self.stack_registry_port}/apis/ccompat/v7"
        )

    @property
    def pg_idle_in_transaction_ms(self) -> int:
        """`idle_in_transaction_session_timeout` of the workers' PostgreSQL sessions (0: none)."""
        limit = self.worker_pg_idle_in_transaction_s
        if limit is None:
            limit = max(5.0, self.kafka_session_timeout_ms / 1000)
        return int(limit * 1000)

    @property
    def postgres_dsn(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"postgresql://postgres@{self.stack_host}:{self.stack_postgres_port}/mohallamart"

    @property
    def redis_dsn(self) -> str:
        if self.redis_url is not None:
            return self.redis_url.get_secret_value()
        return f"redis://{self.stack_host}:{self.stack_redis_port}/0"

    @property
    def typesense_base_url(self) -> str:
        return self.typesense_url or f"http://{self.stack_host}:{self.stack_typesense_port}"

    @property
    def smtp_address(self) -> tuple[str, int]:
        """(host, port) of the SMTP relay: `smtp://host:port` in SMTP_URL, else the stack's."""
        if self.smtp_url:
            rest = self.smtp_url.split("://", 1)[-1].rsplit("@", 1)[-1]
            host, _, port = rest.partition(":")
            return host, int(port or 25)
        return self.stack_host, self.stack_smtp_port

    @property
    def providers_stub_url(self) -> str:
        return f"http://{self.stack_host}:{self.stack_providers_port}"

    @property
    def cors_origins(self) -> list[str]:
        """`cors_allow_origins` as a list (empty: CORS closed)."""
        return [o.strip().rstrip("/") for o in self.cors_allow_origins.split(",") if o.strip()]

    @property
    def otel_sdk_env(self) -> dict[str, str]:
        """The OpenTelemetry SDK's own variables these settings hold (from `.env` too): the SDK
        reads them from the process's environment only (`core.telemetry.setup` puts them
        there unless the environment has them already)."""
        out = {
            "OTEL_TRACES_SAMPLER": self.otel_traces_sampler,
            "OTEL_TRACES_SAMPLER_ARG": self.otel_traces_sampler_arg,
            "OTEL_EXPORTER_OTLP_HEADERS": None
            if self.otel_exporter_otlp_headers is None
            else self.otel_exporter_otlp_headers.get_secret_value(),
        }
        return {k: v for k, v in out.items() if v}

    @property
    def otel_traces_url(self) -> str | None:
        """Where spans are exported (OTLP/HTTP): the traces endpoint if set, else the endpoint
        with `/v1/traces` added; None (no span made) when neither is set."""
        explicit = (self.otel_exporter_otlp_traces_endpoint or "").strip()
        if explicit:
            return explicit
        base = (self.otel_exporter_otlp_endpoint or "").strip()
        return f"{base.rstrip('/')}/v1/traces" if base else None

    def provider_endpoint(self, channel: str) -> str | None:
        """Where the SMS or push provider is reached (`channel` "sms" or "push"): its URL
        setting, else the local stack's stand-in; None when the setting is `off`."""
        url = self.sms_provider_url if channel == "sms" else self.push_provider_url
        if url is None:
            return f"{self.providers_stub_url}/{channel}"
        return None if url.strip().lower() in ("", "off", "none") else url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
