"""Destinations of the pipeline, each behind the same small sink contract."""

from connectors.base import ConnectorError, Sink

__all__ = ["ConnectorError", "Sink"]
