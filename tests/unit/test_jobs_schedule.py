"""The scheduled jobs' periods, cutoffs, run ids and the runs refused (streams/jobs.py,
connectors/cleanup.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.cleanup import CutoffRefused, check_run
from streams.jobs import due, period_start, run_data, run_event_id

DAY, WEEK = 86_400, 604_800


def test_a_daily_period_starts_at_midnight_utc() -> None:
    now = datetime(2026, 11, 23, 17, 5, 9, tzinfo=UTC)
    assert period_start(now, DAY) == datetime(2026, 11, 23, tzinfo=UTC)
    assert period_start(datetime(2026, 11, 23, tzinfo=UTC), DAY) == datetime(
        2026, 11, 23, tzinfo=UTC
    )


def test_a_weekly_period_starts_on_monday() -> None:
    # 2026-11-23 is a Monday; the 29th a Sunday
    for day in range(23, 30):
        now = datetime(2026, 11, day, 23, 59, tzinfo=UTC)
        assert period_start(now, WEEK) == datetime(2026, 11, 23, tzinfo=UTC)
    assert period_start(datetime(2026, 11, 30, tzinfo=UTC), WEEK) == datetime(
        2026, 11, 30, tzinfo=UTC
    )


def test_cutoffs() -> None:
    now = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    assert due("expired_sessions", now, DAY, 0) == (datetime(2026, 11, 25, tzinfo=UTC),) * 2
    start, cutoff = due("expired_sessions", now, DAY, 7)
    assert cutoff == start - timedelta(days=7)
    start, cutoff = due("old_logs", now, WEEK, 90)
    assert start == datetime(2026, 11, 23, tzinfo=UTC)
    assert cutoff == datetime(2026, 8, 25, tzinfo=UTC)


def test_one_run_id_per_job_and_cutoff() -> None:
    a = datetime(2026, 11, 23, tzinfo=UTC)
    # every worker and the operator command derive the same id for one period
    assert run_event_id("expired_sessions", a) == run_event_id("expired_sessions", a)
    assert run_event_id("expired_sessions", a) != run_event_id("old_logs", a)
    assert run_event_id("expired_sessions", a) != run_event_id(
        "expired_sessions", a + timedelta(milliseconds=1)
    )
    # the same instant in another zone is the same cutoff
    ist = a.astimezone(datetime.now().astimezone().tzinfo)
    assert run_event_id("old_logs", ist) == run_event_id("old_logs", a)


def test_run_data() -> None:
    a = datetime(2026, 11, 23, tzinfo=UTC)
    assert run_data("expired_sessions", a, "SCHEDULE") == {
        "job": "expired_sessions",
        "cutoff": a,
        "triggered_by": "SCHEDULE",
    }
    assert run_data("old_logs", a, "OPERATOR")["targets"] == ["AUDIT_LOG", "ANALYTICS"]


def test_a_run_after_its_own_time_or_dated_ahead_is_refused() -> None:
    now = datetime(2026, 11, 23, 12, tzinfo=UTC)

    def run(cutoff: datetime, at: datetime) -> dict[str, Any]:
        return {"occurred_at": at, "data": {"job": "expired_sessions", "cutoff": cutoff}}

    check_run(run(now - timedelta(days=1), now), now)  # the usual: a cutoff before the run
    check_run(run(now, now), now)
    with pytest.raises(CutoffRefused, match="CUTOFF_AFTER_EVENT"):
        check_run(run(now + timedelta(days=365), now), now)
    with pytest.raises(CutoffRefused, match="EVENT_IN_FUTURE"):
        check_run(run(now + timedelta(days=1), now + timedelta(days=2)), now)


def test_run_ids_count_whole_milliseconds() -> None:
    a = datetime(2026, 11, 23, 0, 0, 0, 999_999, tzinfo=UTC)
    assert run_event_id("old_logs", a) == run_event_id("old_logs", a.replace(microsecond=999_000))
