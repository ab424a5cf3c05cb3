"""Kafka "not ready yet" in a worker: retried with refreshed metadata, never a dead letter; a
worker still not ready after its deadline exits with status 78 naming the topics."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    LeaderNotAvailableError,
    NotLeaderForPartitionError,
    UnknownTopicOrPartitionError,
)
from faust.exceptions import PartitionsMismatch

from schemas.catalog import record_defaults
from streams.reliability import is_dependency_down, is_not_ready

_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from faust.exceptions import PartitionsMismatch
    from streams.reliability import Guard, Record, RetryPolicy

    class Consumer:
        def __init__(self):
            self.paused = set()
        def pause_partitions(self, tps):
            self.paused |= set(tps)
        def resume_partitions(self, tps):
            self.paused -= set(tps)

    class App:
        def __init__(self):
            self.consumer = Consumer()

    FAILS = int(sys.argv[1])
    calls, refreshes = [], []

    async def refresh():
        refreshes.append(1)

    async def handler(records):
        calls.append(len(records))
        if len(calls) <= FAILS:
            raise PartitionsMismatch(
                "The source topic 'by-shop' for table 'stock' has 6 partitions, but the "
                "changelog topic 'stock-changelog' has 0 partitions."
            )
        return []

    async def main():
        app = App()
        guard = Guard(app, role="stock", stage="reserve_stock", decoder=None,
                      policy=RetryPolicy(delays=(0.01,), down_initial_s=0.01, down_cap_s=0.05,
                                         not_ready_s=0.5),
                      refresh_metadata=refresh)
        async def dead_letter(*a, **kw):
            print("DEAD LETTER", flush=True)
        guard.dead_letter = dead_letter
        rec = Record("by-shop", 3, 7, b"k", b"v", {}, 0, event={"type": "product.created"})
        await guard._run([rec], handler)
        print(f"settled after {len(calls)} calls, {len(refreshes)} refreshes, "
              f"paused now {sorted(app.consumer.paused)}", flush=True)

    asyncio.run(main())
    """
)


def _run(fails: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-c", _SCRIPT, str(fails)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_not_ready_is_retried_with_refreshed_metadata_then_applied() -> None:
    out = _run(fails=3)
    assert out.returncode == 0, out.stderr
    assert "DEAD LETTER" not in out.stdout
    assert "settled after 4 calls, 3 refreshes, paused now []" in out.stdout


def test_still_not_ready_after_the_deadline_exits_78_naming_the_topics() -> None:
    out = _run(fails=10_000)
    assert out.returncode == 78, (out.stdout, out.stderr)
    assert "DEAD LETTER" not in out.stdout
    assert "stock/reserve_stock: Kafka not ready after 0.5 s reading by-shop" in out.stderr
    assert "changelog topic 'stock-changelog' has 0 partitions" in out.stderr


def test_kafka_errors_are_classified() -> None:
    mismatch = PartitionsMismatch("source 6, changelog 0")
    for exc in (mismatch, UnknownTopicOrPartitionError(), LeaderNotAvailableError()):
        assert is_not_ready(exc) and not is_dependency_down(exc), exc
    assert is_not_ready(NotLeaderForPartitionError())
    for exc in (KafkaConnectionError(), KafkaTimeoutError()):
        assert is_dependency_down(exc) and not is_not_ready(exc), exc
    assert not is_not_ready(ValueError("a record's fault"))
    assert not is_dependency_down(ValueError("a record's fault"))


def test_left_out_preferences_read_as_their_documented_defaults() -> None:
    got = record_defaults("user.registered", "preferences")
    assert got == {
        "email_opt_in": True,
        "sms_opt_in": True,
        "push_opt_in": True,
        "language": "en",
        "back_in_stock_alerts": True,
        "default_location": None,
    }
    got["language"] = "kn"  # a fresh copy each time: a caller cannot change the defaults
    assert record_defaults("user.registered", "preferences")["language"] == "en"
