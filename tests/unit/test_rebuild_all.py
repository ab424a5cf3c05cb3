"""`mohallamart rebuild all`: once PostgreSQL is swapped in, Redis and Typesense (its views) are
rebuilt from it even when the analytics rebuild refuses its cut-over, and the command still
ends with the analytics rebuild's status (a refused analytics cut-over in the drill had left
Redis unrebuilt after the swap, 2 users missing)."""

from __future__ import annotations

import argparse

import pytest

from mohallamart.commands import rebuild


def test_a_refused_analytics_cut_over_still_rebuilds_redis_and_typesense(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[str] = []
    monkeypatch.setattr(rebuild, "_cmd_postgres", lambda _a: ran.append("postgres") or 0)
    monkeypatch.setattr(rebuild, "_cmd_analytics", lambda _a: ran.append("analytics") or 3)
    monkeypatch.setattr(rebuild, "_cmd_redis", lambda _a: ran.append("redis") or 0)
    monkeypatch.setattr(rebuild, "_cmd_search", lambda _a: ran.append("search") or 0)
    assert rebuild._cmd_all(argparse.Namespace(force=False)) == 3
    assert ran == ["postgres", "analytics", "redis", "search"]


def test_a_failed_postgres_rebuild_stops_there(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    monkeypatch.setattr(rebuild, "_cmd_postgres", lambda _a: ran.append("postgres") or 2)
    monkeypatch.setattr(rebuild, "_cmd_analytics", lambda _a: ran.append("analytics") or 0)
    assert rebuild._cmd_all(argparse.Namespace(force=False)) == 2
    assert ran == ["postgres"]
