"""Destinations of the pipeline, each behind the same small sink contract; the database access
(migrations, API keys, ingest claims, the notification outbox) and the Kafka clients' settings
and topic creation."""

from connectors.base import ConnectorError, Sink

__all__ = ["ConnectorError", "Sink"]
