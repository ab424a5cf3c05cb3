"""`streams.app.distrust_crashed_stores`, each call in a process of its own (as a worker): a
run that did not stop cleanly leaves its local table stores removed at the next start; a clean
stop (the marker removed) keeps them; a second worker on a folder in use exits and removes
nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from streams.reliability import EXIT_NOT_READY

START = """
import sys, time
from pathlib import Path
from streams.app import distrust_crashed_stores
running = distrust_crashed_stores(Path(sys.argv[1]), Path(sys.argv[2]))
print("started", flush=True)
if sys.argv[3] == "clean":
    running.unlink()  # what a clean stop does
elif sys.argv[3] == "hold":
    time.sleep(60)
"""


def _run(datadir: Path, tables: Path, end: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", START, str(datadir), str(tables), end],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _tables(tmp_path: Path) -> tuple[Path, Path]:
    datadir = tmp_path / "stock"
    tables = datadir / "v1" / "tables"
    tables.mkdir(parents=True)
    (tables / "stock-0.db").write_text("an entry\n")
    return datadir, tables


def test_a_run_that_did_not_stop_cleanly_leaves_its_stores_removed(tmp_path: Path) -> None:
    datadir, tables = _tables(tmp_path)
    first = _run(datadir, tables, "crash")  # ends without removing the marker
    assert first.returncode == 0, first.stderr
    assert (tables / "stock-0.db").exists()  # its own stores: nothing before it
    second = _run(datadir, tables, "clean")
    assert second.returncode == 0, second.stderr
    assert "did not stop cleanly" in second.stderr
    assert not tables.exists()


def test_a_clean_stop_keeps_the_stores(tmp_path: Path) -> None:
    datadir, tables = _tables(tmp_path)
    assert _run(datadir, tables, "clean").returncode == 0
    again = _run(datadir, tables, "clean")
    assert again.returncode == 0, again.stderr
    assert "did not stop cleanly" not in again.stderr
    assert (tables / "stock-0.db").exists()


def test_a_second_worker_on_a_folder_in_use_exits_and_removes_nothing(tmp_path: Path) -> None:
    datadir, tables = _tables(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", START, str(datadir), str(tables), "hold"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "started"
        second = _run(datadir, tables, "clean")
        assert second.returncode == EXIT_NOT_READY
        assert "is in use by another worker" in second.stderr
        assert (tables / "stock-0.db").exists()
    finally:
        holder.kill()
        holder.wait(10)
