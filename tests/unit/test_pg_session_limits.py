"""A worker's PostgreSQL sessions are ended by the server when left idle inside a transaction
(a worker paused mid-transaction held the next owner's write for ever): the limit follows the
Kafka session timeout unless set, and reaches every connection the worker opens."""

from __future__ import annotations

import pytest

from connectors.db import limit_idle_transactions, session_options
from core.settings import Settings


def test_the_limit_is_the_session_timeout_at_least_5_s_unless_set() -> None:
    assert Settings(kafka_session_timeout_ms=10_000).pg_idle_in_transaction_ms == 10_000
    assert Settings(kafka_session_timeout_ms=3_000).pg_idle_in_transaction_ms == 5_000
    limited = Settings(worker_pg_idle_in_transaction_s=30)
    assert limited.pg_idle_in_transaction_ms == 30_000
    assert Settings(worker_pg_idle_in_transaction_s=0).pg_idle_in_transaction_ms == 0


def test_the_limit_joins_pgoptions_once_and_a_connection_with_options_keeps_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c application_name=x")
    limit_idle_transactions(5000)
    limit_idle_transactions(7000)  # set again: replaced, not added
    assert (
        session_options("plan_cache_mode=force_custom_plan")
        == "-c application_name=x -c idle_in_transaction_session_timeout=7000 "
        "-c plan_cache_mode=force_custom_plan"
    )
    limit_idle_transactions(0)
    assert session_options() == "-c application_name=x"
