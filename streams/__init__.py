"""Faust workers: one app per role, each its own consumer group and process."""

from streams.app import ROLES, create_app

__all__ = ["ROLES", "create_app"]
