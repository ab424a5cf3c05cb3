"""The worker app of a role, built without a broker: roles, topics, per-agent retry delays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from streams.app import ROLES, Runtime, worker_topics
from streams.reliability import RetryPolicy


def test_every_event_topic_has_a_dead_letter_and_a_redrive_topic() -> None:
    names = {t.name for t in worker_topics(Settings())}
    assert "mohallamart.order.events.dlq" in names
    assert "mohallamart.order.events.redrive" in names
    assert "mohallamart.stock.by-shop" in names
    for topic in ("by-key", "ticks", "windows", "late"):
        assert f"mohallamart.analytics.{topic}" in names


def test_the_worker_roles() -> None:
    assert set(ROLES) == {
        "projections",
        "stock",
        "cache",
        "search",
        "workflows",
        "notifications",
        "jobs",
        "analytics",
    }


@pytest.mark.parametrize(
    ("stage", "want"), [("reserve_stock", (0.5, 2.0)), ("route_stock_events", (1.0, 5.0, 15.0))]
)
def test_retry_delays_can_be_set_per_agent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str, want: tuple[float, ...]
) -> None:
    monkeypatch.setenv("WORKER_RETRY_DELAYS_BY_STAGE", '{"stock/reserve_stock": [0.5, 2]}')
    settings = Settings(worker_data_dir=tmp_path)
    runtime = Runtime(
        app=None,  # type: ignore[arg-type]  # a guard only keeps these
        role="stock",
        settings=settings,
        registry=None,  # type: ignore[arg-type]
        decoder=None,  # type: ignore[arg-type]
        policy=RetryPolicy(delays=settings.worker_retry_delays_s),
    )
    assert runtime.guard(stage).policy.delays == want


def test_a_rebalance_is_assigning_until_its_recovery_starts() -> None:
    """The watchdog's signal: rebalancing, recovery not started (a stuck worker sat there for
    minutes); once recovery runs, or the rebalance ended, it is not."""
    from types import SimpleNamespace

    from streams.transport import assigning

    def app(rebalancing: bool, in_recovery: bool) -> Any:
        recovery = SimpleNamespace(in_recovery=in_recovery)
        return SimpleNamespace(rebalancing=rebalancing, tables=SimpleNamespace(recovery=recovery))

    assert assigning(app(True, False))
    assert not assigning(app(True, True))
    assert not assigning(app(False, False))
