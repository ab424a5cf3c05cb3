"""The HTTP surface: ingestion, reads, live updates, health and metrics."""

from api.main import create_app

__all__ = ["create_app"]
