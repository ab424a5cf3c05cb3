"""Scheduled jobs on the real stack: a run recorded and applied once per (job, cutoff), whether
started twice by the operator command or by two scheduling workers; a replay of the cleanup
events removes nothing more and brings nothing back.

Cutoffs here are "now" (sessions) and "30 days ago" (logs), so every later run (this module run
again, `make run`'s daily schedule) has a later cutoff than any earlier one: a row a test creates
is never one an earlier run already covers.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.catalog import TOPICS
from streams.jobs import period_start, run_event_id
from tests.integration._cli import mohallamart
from tests.integration._pipeline import Pipeline, example, uid
from tests.integration._support import poll, report

pytestmark = pytest.mark.integration

#: a jobs worker that only applies runs (no scheduler)
MANUAL = {"JOBS_SCHEDULE_ENABLED": "false"}
#: two scheduling workers: expired sessions every 20 s (cutoff: the period's start), old logs
#: kept ten years (so they never touch this module's log rows)
EVERY_S = 20
SCHEDULED = {
    "JOBS_TICK_S": "0.5",
    "JOBS_EXPIRED_SESSIONS_EVERY_S": str(EVERY_S),
    "JOBS_EXPIRED_SESSIONS_KEEP_DAYS": "0",
    "LOG_RETENTION_DAYS": "3650",
}


def _ms(at: datetime) -> datetime:
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def jobs(pipeline: Pipeline) -> Iterator[Any]:
    """Start jobs workers for one test; stopped (by PID) when it ends."""
    started: list[str] = []

    def start(name: str, env: dict[str, str]) -> None:
        pipeline.workers.start(name, "jobs", env=env)
        started.append(name)

    yield start
    for name in started:
        pipeline.workers.stop(name)


def _sign_in(p: Pipeline, user: str, expires: datetime) -> dict[str, Any]:
    sess = uid("sess")
    data = example("user.signed_in", user_id=user, session_id=sess, expires_at=_iso(expires))
    return p.post("user.signed_in", data)


def _sessions(p: Pipeline, ids: list[str]) -> set[str]:
    rows = p.rows("SELECT session_id FROM sessions WHERE session_id = ANY(%s)", ids)
    return {r[0] for r in rows}


def _run(p: Pipeline, job: str, cutoff: datetime) -> tuple[Any, ...] | None:
    return p.row(
        "SELECT event_id, rows_removed, removed, repeats, triggered_by FROM job_runs "
        "WHERE job = %s AND cutoff = %s",
        job,
        cutoff,
    )


def _runs(p: Pipeline) -> list[tuple[Any, ...]]:
    return p.rows(
        "SELECT job, cutoff, event_id, triggered_by, rows_removed, removed FROM job_runs "
        "ORDER BY job, cutoff"
    )


def _cli_run(job: str, cutoff: datetime, n: int) -> list[subprocess.CompletedProcess[str]]:
    """`mohallamart jobs run` n times at once, as two operators (or a retry) would."""
    procs = [
        subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "mohallamart.cli", "jobs", "run", job, "--cutoff", _iso(cutoff)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


def _gauge(metrics: str, name: str, job: str) -> float | None:
    m = re.search(rf'^{name}\{{job="{job}"\}} (\S+)$', metrics, re.M)
    return float(m.group(1)) if m else None


def test_expired_sessions_run_twice_removes_once_and_a_replay_changes_nothing(
    pipeline: Pipeline, jobs: Any
) -> None:
    p = pipeline
    jobs("jobs-1", MANUAL)
    user = uid("usr")
    p.post("user.registered", example("user.registered", user_id=user, email=f"{user}@x.in"))
    cutoff = _ms(datetime.now(UTC))
    old1 = _sign_in(p, user, cutoff - timedelta(seconds=1))
    old2 = _sign_in(p, user, cutoff - timedelta(seconds=2))
    keep = _sign_in(p, user, cutoff + timedelta(hours=1))
    ids = [e["data"]["session_id"] for e in (old1, old2, keep)]
    out2 = p.post("user.signed_out", {"user_id": user, "session_id": ids[1], "reason": "LOGOUT"})
    p.wait_row(
        "SELECT ended_at FROM sessions WHERE session_id = %s",
        ids[1],
        until=lambda r: r[0] is not None,
        what="the signed-out session",
    )
    poll(lambda: _sessions(p, ids) == set(ids) or None, timeout=30, what="the three sessions")
    row = p.row("SELECT count(*) FROM sessions WHERE expires_at < %s", cutoff)
    before = int(row[0]) if row else 0
    assert before >= 2  # ours (and any session of another test that has expired)

    # the same period run twice at once (two operators): one run recorded, rows removed once
    for done in _cli_run("expired_sessions", cutoff, 2):
        assert done.returncode == 0, done.stdout + done.stderr
    poll(lambda: _run(p, "expired_sessions", cutoff), timeout=60, what="the run recorded")
    poll(
        lambda: (_run(p, "expired_sessions", cutoff) or (0, 0, 0, 0))[3] == 1 or None,
        timeout=60,
        what="the second copy applied (a repeat)",
    )
    event_id, removed_n, removed, _, by = _run(p, "expired_sessions", cutoff) or ()
    assert str(event_id) == run_event_id("expired_sessions", cutoff)
    assert by == "OPERATOR"
    assert removed_n == before and removed == {"sessions": before}
    assert _sessions(p, ids) == {ids[2]}
    copies = [
        r
        for h, _, r in p.records(TOPICS["cleanup"].name, keys=["expired_sessions"])
        if r and str(r["id"]) == run_event_id("expired_sessions", cutoff)
    ]
    assert len(copies) == 2  # two events on the topic, one run
    report(f"expired sessions, cutoff {_iso(cutoff)}: run twice, {before} removed once, 1 run")

    # /metrics: the run as recorded (the API reads job_runs; the worker after applying)
    api_metrics = p.http.get("/metrics").text
    row = p.row("SELECT count(*), max(cutoff) FROM job_runs WHERE job = 'expired_sessions'")
    assert row is not None
    assert _gauge(api_metrics, "mohallamart_job_runs", "expired_sessions") == row[0]
    assert _gauge(
        api_metrics, "mohallamart_job_last_cutoff_timestamp_seconds", "expired_sessions"
    ) == pytest.approx(row[1].timestamp())
    worker_metrics = p.workers.metrics("jobs-1")
    assert _gauge(worker_metrics, "mohallamart_job_runs", "expired_sessions") == row[0]

    # the sign-in and sign-out of a removed session delivered again: it stays removed
    again = {**old1, "data": {**old1["data"]}}
    again["data"]["expires_at"] = datetime.fromisoformat(again["data"]["expires_at"])
    p.produce([again, out2])
    p.caught_up("projections", ["user"], timeout=60)
    assert _sessions(p, ids) == {ids[2]}
    assert p.dead_letters(TOPICS["user"].name, out2["id"]) == []

    # replaying every cleanup event: nothing more removed, nothing back, still one run each
    runs = _runs(p)
    count_before = p.row("SELECT count(*) FROM sessions")
    p.workers.stop("jobs-1")
    reset = mohallamart("offsets", "reset", "--role", "jobs", "--to-earliest", "--execute")
    assert reset.returncode == 0, reset.stdout + reset.stderr
    p.workers.restart("jobs-1")
    p.caught_up("jobs", ["cleanup"], timeout=120)
    assert _runs(p) == runs
    assert p.row("SELECT count(*) FROM sessions") == count_before
    assert _sessions(p, ids) == {ids[2]}
    repeats = _run(p, "expired_sessions", cutoff)
    assert repeats is not None and repeats[3] >= 3  # the two copies applied again


def test_two_scheduling_workers_record_one_run_per_period(pipeline: Pipeline, jobs: Any) -> None:
    p = pipeline
    jobs("jobs-1", SCHEDULED)
    jobs("jobs-2", SCHEDULED)
    # the next period's cutoff, far enough ahead for the sessions to be projected first
    now = datetime.now(UTC)
    cutoff = period_start(now, EVERY_S) + timedelta(seconds=EVERY_S)
    if (cutoff - now).total_seconds() < 10:
        cutoff += timedelta(seconds=EVERY_S)
    user = uid("usr")
    p.post("user.registered", example("user.registered", user_id=user, email=f"{user}@x.in"))
    expiring = _sign_in(p, user, cutoff - timedelta(seconds=1))
    keep = _sign_in(p, user, cutoff + timedelta(hours=1))
    ids = [expiring["data"]["session_id"], keep["data"]["session_id"]]
    poll(lambda: _sessions(p, ids) == set(ids) or None, timeout=30, what="the two sessions")
    row = p.row("SELECT count(*) FROM sessions WHERE expires_at < %s", cutoff)
    before = int(row[0]) if row else 0
    assert datetime.now(UTC) < cutoff, "the sessions were counted before the period began"

    run = poll(lambda: _run(p, "expired_sessions", cutoff), timeout=EVERY_S + 60, what="the run")
    assert run[4] == "SCHEDULE"
    assert str(run[0]) == run_event_id("expired_sessions", cutoff)
    assert run[1] == before and run[2] == {"sessions": before}
    assert _sessions(p, ids) == {ids[1]}
    emitted = [
        r
        for _, _, r in p.records(TOPICS["cleanup"].name, keys=["expired_sessions"])
        if r and str(r["id"]) == run_event_id("expired_sessions", cutoff)
    ]
    # only the group's leader schedules: one event (a second after a leader change is applied
    # as a repeat, never as a second run)
    report(
        f"two scheduling workers, period {EVERY_S} s: the run of {_iso(cutoff)} produced "
        f"{len(emitted)} time(s), recorded once, {before} session(s) removed"
    )
    assert 1 <= len(emitted) <= 2
    assert p.rows(
        "SELECT count(*) FROM job_runs WHERE job = 'expired_sessions' AND cutoff = %s", cutoff
    ) == [(1,)]
    # an operator running the same period again: recorded already, nothing more removed
    done = mohallamart("jobs", "run", "expired_sessions", "--cutoff", _iso(cutoff))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "recorded already" in done.stdout
    again = _run(p, "expired_sessions", cutoff)
    assert again is not None and again[1:3] == run[1:3]
    assert _sessions(p, ids) == {ids[1]}


def test_old_logs_run_twice_removes_once(pipeline: Pipeline, jobs: Any) -> None:
    p = pipeline
    jobs("jobs-1", MANUAL)
    cutoff = _ms(datetime.now(UTC) - timedelta(days=30))
    old, new = uid("usr"), uid("usr")
    for user, at in ((old, cutoff - timedelta(seconds=1)), (new, cutoff + timedelta(minutes=1))):
        p.post(
            "user.registered",
            example("user.registered", user_id=user, email=f"{user}@x.in"),
            at=at,
        )

    def audit(user: str) -> int:
        row = p.row("SELECT count(*) FROM audit_log WHERE entity_id = %s", user)
        return int(row[0]) if row else 0

    poll(lambda: audit(old) == 1 and audit(new) == 1 or None, timeout=30, what="audit rows")
    row = p.row("SELECT count(*) FROM audit_log WHERE occurred_at < %s", cutoff)
    before = int(row[0]) if row else 0
    assert before >= 1

    first = mohallamart("jobs", "run", "old_logs", "--cutoff", _iso(cutoff))
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{before} rows removed" in first.stdout
    second = mohallamart("jobs", "run", "old_logs", "--cutoff", _iso(cutoff))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "recorded already" in second.stdout
    run = _run(p, "old_logs", cutoff)
    assert run is not None
    assert run[1] == before and run[2] == {"audit_log": before, "analytics": 0}
    assert run[3] == 1
    assert (audit(old), audit(new)) == (0, 1)
    # the users themselves stay: only the log is cleaned
    assert p.row("SELECT count(*) FROM users WHERE user_id IN (%s, %s)", old, new) == (2,)
    listing = mohallamart("jobs", "list")
    assert listing.returncode == 0 and _iso(cutoff)[:19] in listing.stdout
