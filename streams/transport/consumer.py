"""What agents and the runtime ask of faust's consumer beyond its public API, in one place."""

from __future__ import annotations

import asyncio
import gc
import inspect
import weakref
from typing import Any

import faust
from faust.streams import _current_event
from faust.types import TP, AppT

__all__ = [
    "AppPositions",
    "hold",
    "release",
    "committed_offset",
    "assigning",
    "commit_positions",
    "coordinator_known",
    "diagnose",
    "start_offset",
    "stream_positions",
    "fetcher_crash",
    "highwater",
    "in_partition_of",
    "refresh_metadata",
    "seek",
    "settling",
]


def committed_offset(app: AppT, tp: TP) -> int | None:
    """The next offset to read of `tp`, as the group last committed it (None: not known)."""
    consumer: Any = app.consumer
    value = consumer._committed_offset.get(tp)
    return None if value is None else int(value)


def start_offset(app: AppT, tp: TP) -> int | None:
    """Where the group's processing of `tp` stands: its committed offset, or, for a partition
    the group has never committed, the first offset this consumer fetched of it (nothing
    before it was processed here; None: not fetched yet). A worker whose first commits failed
    in a rebalance (a broker killed seconds after a fresh start) was handed, in its next
    generation, records past some it had fetched and never processed, and took them for the
    partition's first: two orders' `order.created` were skipped for 10 minutes, their
    `order.accepted` dead-lettered, and no watchdog looked at a partition without a committed
    offset (the drill's leader row in CI)."""
    committed = committed_offset(app, tp)
    if committed is not None:
        return committed
    first = getattr(app.consumer, "__dict__", {}).get("_mm_first_offset", {}).get(tp)
    return None if first is None else int(first)


async def seek(app: AppT, tp: TP, offset: int) -> None:
    """Seek on the consumer's own thread. faust runs aiokafka in a thread of its own, and its
    `Consumer.seek` calls aiokafka from the caller's thread: aiokafka's `seek_to` then deletes
    the partition's fetched records while that thread iterates over them in `fetched_records`
    (a KeyError that crashes the fetcher: the worker stays up and consumes nothing) and sets a
    future of the other thread's loop. `seek_wait` runs the seek on the consumer thread."""
    consumer: Any = app.consumer
    thread = getattr(consumer, "_thread", None)
    if thread is None:  # a consumer without a thread of its own
        await consumer.seek(tp, offset)
        return
    await thread.seek_wait({tp: offset})


async def refresh_metadata(app: AppT) -> None:
    """Fetch the cluster's metadata again, on the consumer's own thread (aiokafka is not
    thread-safe). A topic created after the consumer last fetched metadata reads as 0
    partitions until the next refresh (5 min by default), which faust's table check takes for a
    partition mismatch."""
    consumer: Any = app.consumer
    thread = consumer._thread
    client = thread._ensure_consumer()._client

    async def _refresh() -> None:
        await client.force_metadata_update()

    await thread.call_thread(_refresh)


def fetcher_crash(app: AppT) -> str | None:
    """Why the app's Kafka fetcher crashed, or None while it runs (faust only logs the crash and
    the process stays up consuming nothing)."""
    fetcher = getattr(app, "_fetcher", None)
    if fetcher is not None and fetcher.crashed and not app.should_stop:
        return repr(fetcher.crash_reason)
    return None


def in_partition_of(event: faust.EventT[Any]) -> None:
    """Make table reads and writes from here on go to `event`'s partition (faust takes the
    partition of a table key from the event being processed, a context variable)."""
    _current_event.set(weakref.ref(event))


class AppPositions:
    """A faust app's partition positions, as `streams.transport.continuity` needs them."""

    def __init__(self, app: AppT) -> None:
        self.app = app

    def generation(self) -> int | None:
        value = self.app.consumer_generation_id
        return None if value is None else int(value)

    def committed(self, tp: TP) -> int | None:
        return start_offset(self.app, tp)

    def sought(self) -> bool:
        # a consumer that does not say (not the transport's own) is taken as sought
        consumer: Any = self.app.consumer
        if not hasattr(type(consumer), "sought_generation"):
            return True
        return bool(consumer.sought_generation == self.generation())

    async def seek(self, tp: TP, offset: int) -> None:
        await seek(self.app, tp, offset)


def hold(event: faust.EventT[Any]) -> None:
    """Keep faust from acknowledging `event` (its `take()` acks every event of a batch in a
    finally): marked as acked without its offset recorded, it holds the partition's commit at
    its offset (see `driver.Consumer._new_offset`) and comes again after a restart."""
    event.message.acked = True


def release(app: AppT, event: faust.EventT[Any]) -> None:
    """Acknowledge an event held by `hold` now that it is settled: its offset counts again."""
    event.message.acked = False
    app.consumer.ack(event.message)


def highwater(app: AppT, tp: TP) -> int | None:
    """The end offset of `tp` as the consumer's last fetch saw it (None: not known yet)."""
    try:
        value = app.consumer.highwater(tp)
    except Exception:  # noqa: BLE001 - not assigned, or no fetch yet: not known
        return None
    return None if value is None else int(value)


def assigning(app: AppT) -> bool:
    """Whether the app is in a rebalance whose table recovery has not started: a state that
    lasts seconds (the group's join and sync, the stores opened). A worker seen stuck there for
    minutes, agents paused and nothing logged, consumed nothing until it was stopped."""
    recovery = getattr(app.tables, "recovery", None)
    return bool(app.rebalancing) and not (recovery is not None and recovery.in_recovery)


def settling(app: AppT) -> bool:
    """Whether the app is rebalancing or its tables are recovering (a table read then may see
    a partition's state not yet restored)."""
    recovery = getattr(app.tables, "recovery", None)
    return bool(app.rebalancing or (recovery is not None and recovery.in_recovery))


def diagnose(app: AppT) -> str:
    """The consumer's state, for a worker that seems to consume nothing (logged on SIGUSR1):
    the group generation, flow control and rebalance, each assigned partition's committed and
    fetch positions and end offset, which partitions faust counts active, paused or buffered,
    what aiokafka has paused, how many records wait in the agents' queues, and where every
    task of the event loop waits."""

    consumer: Any = app.consumer
    recovery = getattr(app.tables, "recovery", None)
    lines = [
        f"generation {app.consumer_generation_id}, rebalancing {bool(app.rebalancing)}, "
        f"in recovery {bool(recovery is not None and recovery.in_recovery)}, "
        f"flow active {app.flow_control.is_active()}, "
        f"can resume flow {consumer.can_resume_flow.is_set()}, "
        f"unacked {len(consumer._unacked_messages)}"
    ]
    active = set(consumer._active_partitions or ())
    paused = set(consumer._paused_partitions)
    buffered = set(getattr(consumer, "_buffered_partitions", ()))
    kafka_paused: set[Any] = set()
    positions: dict[Any, Any] = {}
    thread = getattr(consumer, "_thread", None)
    inner = getattr(thread, "_consumer", None)
    if inner is not None:
        kafka_paused = {TP(t.topic, t.partition) for t in inner.paused()}
        assignment: Any = getattr(inner._subscription.subscription, "assignment", None)
        for t in getattr(assignment, "tps", ()):
            state = assignment.state_value(t)
            where = state.position if state.has_valid_position else None
            positions[TP(t.topic, t.partition)] = f"{where} ({state._status.name.lower()})"
        fetched = getattr(getattr(inner, "_fetcher", None), "_records", None) or {}
        lines.append(f"  aiokafka holds fetched records of {len(fetched)} partitions")
    for tp in sorted(consumer.assignment()):
        pending = len(consumer._acked.get(tp, ()))
        lines.append(
            f"  {tp.topic}/{tp.partition}: committed {consumer._committed_offset.get(tp)}, "
            f"fetch position {positions.get(tp)}, end {highwater(app, tp)}, acked pending "
            f"{pending}, {'active' if tp in active else 'NOT active'}"
            + (", paused" if tp in paused else "")
            + (", buffered" if tp in buffered else "")
            + (", paused in aiokafka" if tp in kafka_paused else "")
        )
    # the lowest records not acknowledged of each partition: whether an agent holds them
    # (acked set, offset not recorded: `hold`) or has them in hand, and of which generation
    lowest: dict[Any, list[Any]] = {}
    for m in list(consumer._unacked_messages):
        lowest.setdefault(m.tp, []).append(m)
    for tp, messages in sorted(lowest.items()):
        shown = ", ".join(
            f"{m.offset} (acked flag {m.acked}, refcount {m.refcount}, generation "
            f"{m.generation_id})"
            for m in sorted(messages, key=lambda m: m.offset)[:3]
        )
        lines.append(f"  not acknowledged in {tp.topic}/{tp.partition}: {shown}")
    for channel in list(getattr(app.topics, "_topics", ())):
        queue = getattr(channel, "_queue", None)
        if queue is not None and queue.qsize():
            lines.append(f"  queue of {channel}: {queue.qsize()} records")
    for task in asyncio.all_tasks():
        lines.append(f"  task {task.get_name()}: {' > '.join(_awaiting(task.get_coro()))}")
    # the consumer's own thread (aiokafka's coordinator: heartbeats, joins, the rebalance
    # callbacks; the method queue faust's calls wait in), read from this one: a snapshot
    thread_loop = getattr(thread, "thread_loop", None)
    if thread_loop is not None:
        for _ in range(3):  # its set of tasks may change while read
            try:
                tasks = list(asyncio.all_tasks(thread_loop))
                break
            except RuntimeError:
                tasks = []
        for task in tasks:
            lines.append(
                f"  consumer thread task {task.get_name()}: "
                f"{' > '.join(_awaiting(task.get_coro()))}"
            )
    return "\n".join(lines)


def _awaiting(coro: Any, depth: int = 32) -> list[str]:
    """Where a coroutine waits: each frame of its chain of awaits, outermost first, through the
    async generators it iterates (an agent's `async for` over its batches), the coroutines an
    awaitable wraps (faust's actor) and the tasks it awaits."""
    out: list[str] = []
    while coro is not None and depth:
        depth -= 1
        frame = next(
            (f for a in ("cr_frame", "ag_frame", "gi_frame") if (f := getattr(coro, a, None))),
            None,
        )
        if frame is not None:
            out.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
        nxt = next(
            (n for a in ("cr_await", "ag_await", "gi_yieldfrom") if (n := getattr(coro, a, None))),
            None,
        )
        if nxt is None and frame is None and type(coro).__name__ in _STEPS:
            # `await agen.__anext__()`, `await future`, `await awaitable` (a coroutine's
            # `__await__()`): the step object names none of what it steps; it refers to it
            nxt = next(
                (
                    r
                    for r in gc.get_referents(coro)
                    if inspect.isasyncgen(r)
                    or inspect.iscoroutine(r)
                    or isinstance(r, asyncio.Future)
                ),
                None,
            )
        elif nxt is None and isinstance(coro, asyncio.Task):
            nxt = coro.get_coro()
        elif nxt is None and isinstance(coro, asyncio.Future) and frame is None:
            out.append("a future" + (" (done)" if coro.done() else ""))
        coro = nxt
    return out or ["?"]


#: the objects an await steps through that have no frame of their own: what `async for` awaits
#: on an async generator, what `await` on a future (a task) awaits, a coroutine's `__await__()`
_STEPS = ("async_generator_asend", "async_generator_athrow", "FutureIter", "coroutine_wrapper")


def coordinator_known(app: AppT) -> bool:
    """Whether the consumer knows its group's coordinator. While it does not (brokers down, the
    offsets topic below its in-sync replicas), aiokafka's commits wait for one: the commits
    stand still by Kafka's doing, not this worker's (a workflows worker was ended as stuck
    while two of three brokers were down in the drill's isr row)."""
    thread = getattr(app.consumer, "_thread", None)
    coordinator = getattr(getattr(thread, "_consumer", None), "_coordinator", None)
    return coordinator is None or getattr(coordinator, "coordinator_id", None) is not None


def commit_positions(app: AppT) -> dict[TP, tuple[int | None, int | None]]:
    """Each assigned partition the agents read and nothing paused: (its fetch position, its
    committed offset), for the commit watchdog (`streams.stall.CommitWatch`); an agent's full
    queue does not exempt a partition (a healthy agent drains it in seconds)."""
    consumer: Any = app.consumer
    changelogs = {t.changelog_topic.get_topic_name() for t in app.tables.values()}
    paused = set(consumer._paused_partitions)
    thread = getattr(consumer, "_thread", None)
    inner = getattr(thread, "_consumer", None)
    assignment: Any = None
    if inner is not None:
        assignment = getattr(inner._subscription.subscription, "assignment", None)
    out: dict[TP, tuple[int | None, int | None]] = {}
    for t in list(getattr(assignment, "tps", ())):
        tp = TP(t.topic, t.partition)
        if t.topic in changelogs or tp in paused:
            continue
        state = assignment.state_value(t)
        if state is None or state.paused:
            continue
        try:  # aiokafka's state, read from this thread while the consumer's may reset it
            pos: int | None = state.position if state.has_valid_position else None
        except AssertionError:
            pos = None
        out[tp] = (pos, start_offset(app, tp))
    return out


def stream_positions(app: AppT) -> dict[TP, int | None] | None:
    """Each assigned partition the agents read: its fetch position, or its committed offset
    before the first fetch (None: neither known). None while the worker holds partitions back on
    purpose (a dependency down, records parked: paused partitions other than its tables'
    changelogs), or an agent's queue is full (faust's back-pressure): then a partition that
    does not move is waiting as it should."""
    consumer: Any = app.consumer
    changelogs = {t.changelog_topic.get_topic_name() for t in app.tables.values()}
    held = {tp for tp in consumer._paused_partitions if tp.topic not in changelogs}
    if held or getattr(consumer, "_buffered_partitions", None):
        return None
    thread = getattr(consumer, "_thread", None)
    inner = getattr(thread, "_consumer", None)
    assignment: Any = None
    if inner is not None:
        assignment = getattr(inner._subscription.subscription, "assignment", None)
    out: dict[TP, int | None] = {}
    for t in list(getattr(assignment, "tps", ())):
        if t.topic in changelogs:
            continue
        state = assignment.state_value(t)
        if state is None or state.paused:
            continue
        tp = TP(t.topic, t.partition)
        try:  # aiokafka's state, read from this thread while the consumer's may reset it
            pos: int | None = state.position if state.has_valid_position else None
        except AssertionError:
            pos = None
        out[tp] = pos if pos is not None else committed_offset(app, tp)
    return out
