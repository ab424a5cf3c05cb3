"""Event-time windows (streams/windows.py) against a brute-force oracle: periods in the right
zone, each final result once and equal to a GROUP BY of the events that were not late, late
events reported and changing nothing, sessions merging when an event bridges two."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime

import pytest

from streams.windows import (
    MINUTE_MS,
    Final,
    Hopping,
    Late,
    Sessions,
    Tumbling,
    Watermarks,
    Windows,
)

H = 60 * MINUTE_MS


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def test_minutes_are_utc_hours_and_days_are_kolkata_calendar_periods() -> None:
    t = ms("2026-12-06T10:15:42+00:00")
    assert Tumbling("1m", "minute", 0).bounds(t) == (
        ms("2026-12-06T10:15:00+00:00"),
        ms("2026-12-06T10:16:00+00:00"),
    )
    # 10:15 UTC is 15:45 IST: the hour 15:00-16:00 IST
    assert Tumbling("1h", "hour", 0).bounds(t) == (
        ms("2026-12-06T09:30:00+00:00"),
        ms("2026-12-06T10:30:00+00:00"),
    )
    # 20:00 UTC on the 6th is 01:30 IST on the 7th: the 7th's day
    assert Tumbling("1d", "day", 0).bounds(ms("2026-12-06T20:00:00+00:00")) == (
        ms("2026-12-06T18:30:00+00:00"),
        ms("2026-12-07T18:30:00+00:00"),
    )


def test_a_final_result_once_when_the_watermark_passes_end_plus_grace_and_late_is_reported() -> (
    None
):
    w = Windows(Tumbling("1m", "minute", grace_ms=10_000))
    t0 = ms("2026-12-06T10:00:00+00:00")
    assert w.add("shop_a", t0 + 1_000, {"orders": 1, "revenue_paise": 500}) is None
    assert w.add("shop_a", t0 + 59_000, {"orders": 1, "revenue_paise": 300}) is None
    assert w.advance(t0 + MINUTE_MS + 9_999) == []  # within grace: still current
    assert w.current("shop_a") == {t0: {"orders": 2, "revenue_paise": 800}}
    assert w.advance(t0 + MINUTE_MS + 10_000) == [
        Final("1m", "shop_a", t0, t0 + MINUTE_MS, {"orders": 2, "revenue_paise": 800})
    ]
    assert w.advance(t0 + MINUTE_MS + 20_000) == []  # once
    late = w.add("shop_a", t0 + 30_000, {"orders": 1, "revenue_paise": 100})
    assert late == Late("1m", "shop_a", t0, t0 + MINUTE_MS, t0 + 30_000, t0 + MINUTE_MS + 20_000)
    assert w.current("shop_a") == {}
    assert w.advance(t0 + 10 * MINUTE_MS) == []  # the late event changed no final result


def test_the_watermark_is_the_minimum_over_the_source_partitions() -> None:
    marks = Watermarks(["orders:0", "orders:1"])
    assert marks.current == -1
    marks.observe("orders:0", 5_000)
    assert marks.current == -1  # partition 1 has said nothing yet
    marks.observe("orders:1", 3_000)
    marks.observe("orders:1", 2_000)  # never back
    assert marks.current == 3_000


@pytest.mark.parametrize(
    "kind",
    [
        Tumbling("1m", "minute", grace_ms=5_000),
        Tumbling("1h", "hour", grace_ms=60_000),
        Hopping("trending", size_ms=H, step_ms=5 * MINUTE_MS, grace_ms=30_000),
    ],
)
@pytest.mark.parametrize("seed", range(5))
def test_shuffled_events_equal_a_group_by_of_those_not_late(
    kind: Tumbling | Hopping, seed: int
) -> None:
    rnd = random.Random(seed)
    t0 = ms("2026-12-06T09:00:00+00:00")
    # events in event-time order, then shuffled within and beyond grace on arrival
    events = sorted(
        (t0 + rnd.randrange(0, 3 * H), rnd.choice(["a", "b", "c"]), rnd.randrange(1, 5))
        for _ in range(600)
    )
    arrival = sorted(events, key=lambda e: e[0] + rnd.gauss(0, 4 * MINUTE_MS))
    w = Windows(kind)
    marks = Watermarks(["p0"])
    finals: list[Final] = []
    on_time: list[tuple[int, str, int]] = []
    late = 0
    for t, key, n in arrival:
        if w.add(key, t, {"items": n, "events": 1}) is None:
            on_time.append((t, key, n))
        else:
            late += 1
        marks.observe("p0", t)
        finals += w.advance(marks.current)
    finals += w.advance(t0 + 10 * H)  # everything closes
    assert 0 < late < len(events)
    # the oracle: a GROUP BY window of the events that were not late
    want: dict[tuple[str, int], dict[str, int]] = defaultdict(lambda: {"items": 0, "events": 0})
    for t, key, n in on_time:
        if isinstance(kind, Tumbling):
            starts = [kind.bounds(t)[0]]
        else:
            starts = [s for s, _ in kind.windows_of_pane(kind.pane(t))]
        for s in starts:
            want[(key, s)]["items"] += n
            want[(key, s)]["events"] += 1
    got = {(f.key, f.start_ms): dict(f.values) for f in finals}
    assert len(got) == len(finals), "a window's final result emitted twice"
    assert got == dict(want)


def test_sessions_close_after_the_gap_and_an_event_bridging_two_merges_them() -> None:
    gap = 30 * MINUTE_MS
    w = Windows(Sessions("sessions", gap_ms=gap, grace_ms=0))
    t0 = ms("2026-12-06T09:00:00+00:00")
    w.add("s1", t0, {"page_views": 1})
    w.add("s1", t0 + 40 * MINUTE_MS, {"searches": 1})
    assert sorted(w.current("s1")) == [t0, t0 + 40 * MINUTE_MS]  # 40 min apart: two sessions
    w.add("s1", t0 + 20 * MINUTE_MS, {"add_to_cart": 1})  # late in arrival, bridges them
    assert list(w.current("s1")) == [t0]
    assert w.advance(t0 + 40 * MINUTE_MS + gap - 1) == []
    (final,) = w.advance(t0 + 40 * MINUTE_MS + gap)
    assert final == Final(
        "sessions",
        "s1",
        t0,
        t0 + 40 * MINUTE_MS + gap,
        {"page_views": 1, "searches": 1, "add_to_cart": 1, "duration_ms": 40 * MINUTE_MS},
    )
    assert isinstance(w.add("s1", t0 + 50 * MINUTE_MS, {"page_views": 1}), Late)


@pytest.mark.parametrize("seed", range(8))
def test_shuffled_session_events_equal_gap_splitting_of_those_not_late(seed: int) -> None:
    rnd = random.Random(seed)
    gap = 30 * MINUTE_MS
    kind = Sessions("sessions", gap_ms=gap, grace_ms=2 * MINUTE_MS)
    t0 = ms("2026-12-06T09:00:00+00:00")
    events = sorted((t0 + rnd.randrange(0, 6 * H), f"s{rnd.randrange(6)}") for _ in range(300))
    arrival = sorted(events, key=lambda e: e[0] + rnd.gauss(0, 10 * MINUTE_MS))
    w = Windows(kind)
    high = -1
    finals: list[Final] = []
    on_time: dict[str, list[int]] = defaultdict(list)
    for t, key in arrival:
        if w.add(key, t, {"events": 1}) is None:
            on_time[key].append(t)
        high = max(high, t)
        finals += w.advance(high)
    finals += w.advance(t0 + 20 * H)
    # the oracle: per key, the on-time events split where two are a gap or more apart
    want = set()
    for key, times in on_time.items():
        times.sort()
        first = prev = times[0]
        n = 1
        for t in times[1:]:
            if t - prev >= gap:
                want.add((key, first, prev, n))
                first, n = t, 0
            prev = t
            n += 1
        want.add((key, first, prev, n))
    got = {(f.key, f.start_ms, f.end_ms - gap, f.values["events"]) for f in finals}
    assert len(got) == len(finals)
    assert got == want


def _stage_run(
    per_source: dict[str, list[tuple[str, int, str, int, int]]],
    kind: Tumbling | Sessions,
    rnd: random.Random,
) -> tuple[set[tuple[str, int, int, tuple[tuple[str, int], ...]]], set[tuple[str, int]]]:
    """One window stage reading `per_source` (each source partition's items in its order: a
    ("rec", t, key, n, seen) or a ("mark", wm, "", 0, 0)), merged in a random interleaving."""
    w = Windows(kind)
    marks = Watermarks(per_source)
    cursors = {s: 0 for s in per_source}
    finals: list[Final] = []
    late: set[tuple[str, int]] = set()
    while cursors:
        source = rnd.choice(sorted(cursors))
        what, t, key, n, seen = per_source[source][cursors[source]]
        cursors[source] += 1
        if cursors[source] == len(per_source[source]):
            del cursors[source]
        if what == "rec":
            if w.add(key, t, {"items": n}, seen_ms=seen) is not None:
                late.add((key, t))
            marks.observe(source, t)
        else:
            marks.observe(source, t)
        finals += w.advance(marks.current)
    finals += w.advance(1 << 60)
    got = {(f.key, f.start_ms, f.end_ms, tuple(sorted(f.values.items()))) for f in finals}
    assert len(got) == len(finals), "a final result emitted twice"
    return got, late


@pytest.mark.parametrize(
    "kind",
    [
        Tumbling("1m", "minute", grace_ms=5_000),
        Sessions("sessions", gap_ms=30 * MINUTE_MS, grace_ms=MINUTE_MS),
    ],
)
@pytest.mark.parametrize("seed", range(4))
def test_what_counts_does_not_depend_on_how_source_partitions_interleave(
    kind: Tumbling | Sessions, seed: int
) -> None:
    """Three source partitions routed by key into two stages, each source's watermark also
    broadcast (a mark after each of its records) to both: two random interleavings give the
    same final results and the same late events in every stage."""
    rnd = random.Random(seed)
    t0 = ms("2026-12-06T09:00:00+00:00")
    stages: dict[int, dict[str, list[tuple[str, int, str, int, int]]]] = {0: {}, 1: {}}
    for source in ("orders:0", "orders:1", "orders:2"):
        events = sorted(
            (t0 + rnd.randrange(0, 2 * H), rnd.choice("abcdef"), rnd.randrange(1, 4))
            for _ in range(150)
        )
        arrival = sorted(events, key=lambda e: e[0] + rnd.gauss(0, 3 * MINUTE_MS))
        high = -1
        for stage in stages.values():
            stage[source] = []
        for t, key, n in arrival:
            stage_of_key = ord(key) % 2
            stages[stage_of_key][source].append(("rec", t, key, n, high))
            high = max(high, t)
            for s in (0, 1):
                if s != stage_of_key:
                    stages[s][source].append(("mark", high, "", 0, 0))
    for stage in stages.values():
        first = _stage_run(stage, kind, random.Random(seed * 7 + 1))
        second = _stage_run(stage, kind, random.Random(seed * 7 + 2))
        assert first == second
        assert first[1], "some events were late"


@pytest.mark.parametrize(
    "kind",
    [
        Tumbling("1d", "day", grace_ms=MINUTE_MS),
        Hopping("trending", size_ms=H, step_ms=5 * MINUTE_MS, grace_ms=30_000),
        Sessions("sessions", gap_ms=30 * MINUTE_MS, grace_ms=5 * MINUTE_MS),
    ],
)
def test_a_restart_from_the_saved_state_gives_the_same_results(
    kind: Tumbling | Hopping | Sessions,
) -> None:
    """The state saved (through JSON, as the changelog record carries it) at random points and
    restored: the same final results and late events as a run that never stopped."""
    import json

    rnd = random.Random(11)
    t0 = ms("2026-12-06T09:00:00+00:00")
    events = sorted((t0 + rnd.randrange(0, 30 * H), rnd.choice("ab")) for _ in range(400))
    arrival = sorted(events, key=lambda e: e[0] + rnd.gauss(0, 8 * MINUTE_MS))

    def run(restart_at: set[int]) -> tuple[list[Final], list[Late]]:
        w = Windows(kind)
        high = -1
        finals: list[Final] = []
        lates: list[Late] = []
        for i, (t, key) in enumerate(arrival):
            if i in restart_at:
                w = Windows.restore(kind, json.loads(json.dumps(w.state())))
            late = w.add(key, t, {"n": 1}, seen_ms=high)
            if late is not None:
                lates.append(late)
            high = max(high, t)
            finals += w.advance(high)
        return finals + w.advance(1 << 60), lates

    assert run(set(rnd.sample(range(len(arrival)), 25))) == run(set())


def test_the_router_stamps_the_watermark_before_each_record_and_marks_each_new_second() -> None:
    from streams.windows import SourceClock

    clock = SourceClock(mark_every_ms=1_000)
    assert clock.stamp(5_200) == (-1, 5_200)  # the first record: a mark
    assert clock.stamp(5_900) == (5_200, None)  # the same second
    assert clock.stamp(4_000) == (5_900, None)  # out of order: the watermark stays
    assert clock.stamp(6_100) == (5_900, 6_100)  # a new second
    assert clock.grant(6_050) is None and clock.grant(9_000) == 9_000
    # a replay of the same records stamps and marks the same
    again = SourceClock(mark_every_ms=1_000)
    assert [again.stamp(t) for t in (5_200, 5_900, 4_000, 6_100)] == [
        (-1, 5_200),
        (5_200, None),
        (5_900, None),
        (5_900, 6_100),
    ]


def test_a_tick_only_for_a_quiet_partition_read_to_its_end() -> None:
    from streams.windows import tick_due

    base = {"now_ms": 100_000, "watermark_ms": 50_000, "idle_ms": 5_000, "lateness_ms": 10_000}
    assert tick_due(**base, last_record_ms=96_000, caught_up=True) is None  # not quiet yet
    assert tick_due(**base, last_record_ms=90_000, caught_up=False) is None  # still reading
    assert tick_due(**base, last_record_ms=90_000, caught_up=True) == 90_000
    ahead = {**base, "watermark_ms": 95_000}  # its events ran ahead of the clock: no tick
    assert tick_due(**ahead, last_record_ms=90_000, caught_up=True) is None
