"""`mohallamart rebuild analytics` on the real stack (issue 16): the analytics store dropped while
a load runs, rebuilt from the by-key topic beside the live tables, a first run killed with
`kill -9` and resumed, then swapped in under the load; afterwards every window equals the SQL
oracle of `test_analytics.py`, and the rebuild wrote no record to any topic.

The analytics worker runs in a namespace and a database of its own, so the analytics tables it
writes (what the rebuild swaps) are this test's alone.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from confluent_kafka import Consumer, TopicPartition

from connectors.db import migrate
from tests.integration._pipeline import Pipeline
from tests.integration._support import poll, report
from tests.integration.test_analytics import (
    differences,
    heartbeats,
    make_load,
    observed,
    oracle,
    shuffled_within_grace,
    start_iso,
    term,
)

TABLES = (
    "analytics_sales, analytics_panes, analytics_sessions, analytics_late, analytics_watermarks, "
    "analytics_positions"
)


class _Db:
    """The test's own database, read as `observed` reads the pipeline's."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(sql, params or None).fetchall()  # type: ignore[arg-type]


def _ends(bootstrap: str, ns: str) -> dict[tuple[str, int], int]:
    """Every partition's end offset, of every topic of the namespace."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"tests-{uuid.uuid4()}"})
    try:
        meta = c.list_topics(timeout=10).topics
        out = {}
        for name, t in meta.items():
            if name.startswith(f"{ns}."):
                for p in t.partitions:
                    out[(name, p)] = c.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1]
        return out
    finally:
        c.close()


def test_analytics_dropped_under_load_is_rebuilt_resumed_after_kill_9_and_swapped_in(
    pipeline: Pipeline,
) -> None:
    settings = pipeline.settings
    name = f"rban{uuid.uuid4().hex[:8]}"
    dsn = urlunsplit(urlsplit(settings.postgres_dsn)._replace(path=f"/{name}"))
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    migrate(dsn)
    db = _Db(dsn)
    iso = start_iso(
        pipeline,
        "analytics-rb",
        ANALYTICS_TICK_IDLE_S="1000000",
        ANALYTICS_FLUSH_ITEMS="7",  # live writes in the middle of bundles: the cut-over meets one
        DATABASE_URL=dsn,
    )
    try:
        rng = random.Random(16)
        tag = uuid.uuid4().hex[:8]
        base = datetime(2025, 4, 14, 18, 0, tzinfo=UTC)
        load = make_load(tag, base, rng)
        events = shuffled_within_grace(load.events, rng)
        half = len(events) // 2
        # in small slices: the router forwards many bundles (the by-key records a rebuild folds)
        for i in range(0, half, 30):
            iso.write(events[i : min(i + 30, half)])
            time.sleep(0.3)
        by_key = f"{iso.ns}.analytics.by-key"

        def caught_up() -> bool:
            ends = {
                p: o for (t, p), o in _ends(settings.kafka_bootstrap, iso.ns).items() if t == by_key
            }
            got = dict(
                db.rows(
                    "SELECT stage_partition, applied_offset + 1 FROM "
                    "analytics_positions WHERE topic = %s",
                    by_key,
                )
            )
            return sum(ends.values()) > 0 and all(
                got.get(p, 0) >= o for p, o in ends.items() if o > 0
            )

        poll(caught_up, timeout=120, what="the window stage to apply the first half")
        # the store dropped (every analytics table, positions included)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {TABLES}")

        # a first rebuild, killed with kill -9 once it has saved a checkpoint; the worker is
        # stopped meanwhile, so any record a topic gains would be the rebuild's
        pipeline.workers.stop(iso.name)
        before = _ends(settings.kafka_bootstrap, iso.ns)
        total = sum(o for (t, _), o in before.items() if t == by_key)
        env = {**os.environ, **iso.env}
        cmd = [sys.executable, "-m", "mohallamart.cli", "rebuild", "analytics"]
        log = pipeline.workers.logdir / f"rebuild-analytics-{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(  # noqa: S603
                [*cmd, "--chunk", "1", "--checkpoint-s", "0"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:

            def checkpointed() -> bool:
                try:
                    r = db.rows(
                        "SELECT coalesce(sum(applied_offset + 1), 0) "
                        "FROM rebuild_analytics.analytics_positions"
                    )
                except psycopg.errors.UndefinedTable:
                    return False
                return int(r[0][0]) * 3 >= total

            poll(checkpointed, timeout=60, interval=0.02, what="the first run's checkpoints")
            assert proc.poll() is None, "the first run ended before it could be killed: " + (
                log.read_text()
            )
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
        first = log.read_text()
        assert "starting from the beginning" in first, first
        assert "cut-over" not in first, first
        assert _ends(settings.kafka_bootstrap, iso.ns) == before, "the rebuild wrote a record"
        assert db.rows("SELECT count(*) FROM analytics_sales") == [(0,)]

        # the worker back, a quarter of the load written while the same command resumes
        pipeline.workers.start(iso.name, "analytics", env=iso.env)
        third_quarter = (half + len(events)) // 2

        def under_load(part: list[Any], *args: str) -> str:
            """`rebuild analytics *args` while `part` is written to the topics."""
            errors: list[BaseException] = []

            def write() -> None:
                try:
                    for i in range(0, len(part), 10):
                        iso.write(part[i : i + 10])
                        time.sleep(0.2)
                except BaseException as exc:  # noqa: BLE001 - reported by the test
                    errors.append(exc)

            writer = threading.Thread(target=write)
            writer.start()
            try:
                # the live stage writing the load (the rebuild chases it, then pauses it)
                poll(
                    lambda: db.rows("SELECT 1 FROM analytics_positions LIMIT 1") or None,
                    timeout=90,
                    what="the window stage to write",
                )
                done = subprocess.run(  # noqa: S603
                    cmd + list(args), env=env, capture_output=True, text=True, timeout=300
                )
            finally:
                writer.join(120)
            assert not errors, errors
            text = done.stdout + done.stderr
            assert done.returncode == 0, text
            pause = re.search(r"resumed after a pause of ([0-9.]+) s", text)
            assert pause is not None, text
            assert float(pause.group(1)) <= 5.0, text
            return text

        text = under_load(events[half:third_quarter], "--force")
        assert "resuming from its checkpoint: by-key/" in text, text
        # the dropped rows, and only they: parity named them (only in the shadow); the shadow
        # stood exactly where the live stage did; --force swapped anyway
        listed = re.findall(r"^  analytics_\w+ .*: (.*)$", text, re.M)
        assert listed and set(listed) == {"only in rebuild_analytics"}, text
        assert "positions:" not in text, text
        assert db.rows(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'rebuild_analytics_previous'"
        ) == [(1,)]
        out = iso.cli("rebuild", "drop-old", "--store", "analytics")
        assert "rebuild_analytics_previous: dropped" in out, out

        # a rebuild of a store that is whole, under the last quarter of the load: no difference
        # at the live position (the stage writes every 7 items, in the middle of bundles), no
        # --force needed
        text = under_load(events[third_quarter:])
        assert "starting from the beginning" in text, text
        assert "differs" not in text and "only in" not in text and "positions:" not in text, text
        report(
            "rebuild analytics of a whole store under load: "
            + " | ".join(x for x in text.splitlines() if x.startswith(("cut-over", "  by-key")))
        )

        # every window closes; then the store equals the oracle, from the first event on
        watermark = base + timedelta(hours=3)
        iso.write(heartbeats(tag, watermark))
        want = oracle(dsn, load.events, watermark)
        sessions = {
            w.event["data"]["session_id"]
            for w in load.events
            if w.event["type"] == "analytics.tracked"
        }
        terms = {
            term(w.event["data"]["query"])
            for w in load.events
            if w.event["type"] == "analytics.tracked" and w.event["data"].get("query")
        }
        last: list[str] = []

        def same() -> bool:
            last[:] = differences(want, observed(db, load.shops, sessions, terms))  # type: ignore[arg-type]
            return not last

        try:
            poll(same, timeout=120, interval=0.5, what="the rebuilt windows to equal the oracle")
        except AssertionError:
            raise AssertionError(f"{len(last)} differences: " + "\n".join(last[:15])) from None
        assert sum(final for _, final in want.sales.values()) > 50

    finally:
        pipeline.workers.stop(iso.name)
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
