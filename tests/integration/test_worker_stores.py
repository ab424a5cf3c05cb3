"""A worker's local table stores after a crash: faust writes a table entry to the local store at
once and to its changelog later, so a worker that did not stop cleanly may hold entries the
changelog never got; another worker that took its partitions meanwhile wrote its own history,
and the mix decided the same stock twice (two movements with one sequence number in the
20,000-event kill -9 test). After such an end the stores are removed and the tables restored
from their changelogs alone; after a clean stop they are kept."""

from __future__ import annotations

from pathlib import Path

from tests.integration._pipeline import Pipeline
from tests.integration._support import poll
from tests.integration.test_analytics import start_iso


def _since(log: Path, offset: int) -> str:
    return log.read_bytes()[offset:].decode("utf-8", "replace")


def _restarted(pipeline: Pipeline, name: str, log: Path) -> str:
    """Start the worker again; what it logged until it was ready."""
    start = log.stat().st_size
    pipeline.workers.restart(name)
    poll(lambda: "Worker ready" in _since(log, start), timeout=60, what=f"{name} to be ready")
    return _since(log, start)


def test_a_worker_killed_restores_its_tables_from_the_changelogs_and_a_clean_stop_keeps_them(
    pipeline: Pipeline,
) -> None:
    iso = start_iso(pipeline, "stores", ANALYTICS_TICK_IDLE_S="1000000")
    role_dir = iso.datadir
    running, tables = role_dir / "RUNNING", role_dir / "v1" / "tables"
    log = pipeline.workers.log_of(iso.name)
    try:
        poll(lambda: "Worker ready" in _since(log, 0), timeout=60, what="the worker to be ready")
        poll(lambda: running.exists() and tables.is_dir(), timeout=30, what="its table stores")
        # killed: what its stores hold is not trusted
        pipeline.workers.kill9(iso.name)
        assert running.exists()
        left = tables / "left-by-the-killed-run"
        left.write_text("an entry the changelog never got\n")
        assert "did not stop cleanly" in _restarted(pipeline, iso.name, log)
        assert not left.exists()
        # stopped cleanly: its stores are kept
        pipeline.workers.stop(iso.name)
        assert not running.exists()
        kept = tables / "kept-after-a-clean-stop"
        kept.write_text("x\n")
        assert "did not stop cleanly" not in _restarted(pipeline, iso.name, log)
        assert kept.exists() and running.exists()
    finally:
        pipeline.workers.stop(iso.name)
