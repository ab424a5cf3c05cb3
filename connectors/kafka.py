"""Kafka client configuration (librdkafka, through confluent-kafka), written in one place.

The API's producer, the dead-letter commands, the live-updates hub, offset resets and topic
creation build their clients' settings here, so what matters (acks, idempotence, the partitioner)
cannot drift between them. Each builder takes the client's security (`KafkaSecurity`: TLS, SASL)
as a required argument, so no client can forget it; PLAINTEXT adds no property. The settings
returned hold the SASL password in clear: never log them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.settings import KafkaSecurity

__all__ = ["admin_config", "consumer_config", "producer_config"]


def producer_config(
    bootstrap: str,
    *,
    security: KafkaSecurity,
    delivery_timeout_ms: int,
    linger_ms: float,
    max_message_bytes: int,
) -> dict[str, Any]:
    """librdkafka settings of every producer of events (the API, a dead-letter redrive, and the
    benchmark's baseline)."""
    return {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": True,
        "max.in.flight.requests.per.connection": 5,
        # Java-compatible murmur2 for keyed records: the same partition as aiokafka/Faust.
        "partitioner": "murmur2_random",
        "linger.ms": linger_ms,
        "batch.num.messages": 10000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "message.max.bytes": max_message_bytes + 1024,
        # The whole life of a record, retries included: shorter than a request's timeout.
        "delivery.timeout.ms": delivery_timeout_ms,
        "request.timeout.ms": min(30_000, max(1000, delivery_timeout_ms // 2)),
        "socket.keepalive.enable": True,
        "log_level": 3,
        **security.librdkafka(),
    }


def consumer_config(
    bootstrap: str,
    group_id: str,
    extra: Mapping[str, Any] | None = None,
    *,
    security: KafkaSecurity,
) -> dict[str, Any]:
    """librdkafka settings of a consumer: `group_id` is its group (a reader that assigns its
    partitions itself never joins it); `extra` adds librdkafka settings or overrides these (not
    the security's: an extra setting never turns it off)."""
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group_id,
        **(extra or {}),
        **security.librdkafka(),
    }


def admin_config(
    bootstrap: str, *, security: KafkaSecurity, log_level: int | None = None
) -> dict[str, Any]:
    """librdkafka settings of an admin client; `log_level` (syslog levels, 0 silences it) is
    librdkafka's own default when None."""
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap}
    if log_level is not None:
        conf["log_level"] = log_level
    conf.update(security.librdkafka())
    return conf
