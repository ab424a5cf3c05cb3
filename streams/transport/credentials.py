"""faust's `broker_credentials` for a Kafka client's security: what its aiokafka driver turns
into the consumer's, producer's and topic creation's connection (TLS, SASL/SCRAM)."""

from __future__ import annotations

import faust
from faust.types.auth import CredentialsT

from core.settings import KafkaSecurity

__all__ = ["broker_credentials"]


def broker_credentials(security: KafkaSecurity) -> CredentialsT | None:
    """faust's `broker_credentials` setting: None for PLAINTEXT (faust's default, nothing
    changes); SASL (SASL_SSL or SASL_PLAINTEXT) with its mechanism, user and password, over TLS
    for SASL_SSL; TLS alone for SSL. faust's SASL credentials say SASL_SSL only when they carry a
    TLS context: one is always given for SASL_SSL (the system's CAs when no CA file is set)."""
    if security.protocol == "PLAINTEXT":
        return None
    if security.sasl:
        return faust.SASLCredentials(
            username=security.username or "",
            password=security.password.get_secret_value() if security.password else "",
            mechanism=security.mechanism,
            ssl_context=security.ssl_context() if security.tls else None,
        )
    return faust.SSLCredentials(security.ssl_context())
