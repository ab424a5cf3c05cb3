"""The worker watchdog's rule: a partition whose position has not moved past the limit while the
broker holds records beyond it, at two asks in a row, is stuck; a caught-up partition, one that
moves, or one whose records came just before one ask, never is."""

from __future__ import annotations

from faust.types import TP

from streams.stall import CommitWatch, StallWatch

A, B = TP("t.order.events", 0), TP("t.order.events", 1)
ENDS = {("t.order.events", 0): 12, ("t.order.events", 1): 9}


def test_a_partition_that_does_not_move_while_records_wait_is_stuck_at_the_second_ask() -> None:
    w = StallWatch(limit_s=30, ask_every_s=10)
    assert w.observe(0, {A: 5, B: 7}) == {}
    assert w.observe(20, {A: 5, B: 9}) == {}  # B moved
    idle = w.observe(31, {A: 5, B: 9})
    assert set(idle) == {A}  # only A idle past the limit
    assert w.stuck(idle, ENDS) == []  # a suspect at its first ask
    assert w.observe(35, {A: 5, B: 9}) == {}  # asked 4 s ago: not again yet
    idle = w.observe(41, {A: 5, B: 9})
    assert w.stuck(idle, ENDS) == [(A, 41)]


def test_caught_up_is_idle_but_never_stuck_nor_records_fetched_between_two_asks() -> None:
    w = StallWatch(limit_s=30, ask_every_s=10)
    w.observe(0, {A: 5})
    assert w.stuck(w.observe(40, {A: 5}), {("t.order.events", 0): 5}) == []  # nothing waits
    # a record arrives just before an ask: a suspect; fetched before the next: never stuck
    assert w.stuck(w.observe(51, {A: 5}), {("t.order.events", 0): 6}) == []
    assert w.observe(55, {A: 6}) == {}  # it moved: idle no more
    assert w.stuck(w.observe(90, {A: 6}), {("t.order.events", 0): 6}) == []


def test_a_position_unknown_past_the_limit_is_stuck_and_a_reset_starts_afresh() -> None:
    w = StallWatch(limit_s=30, ask_every_s=0)
    w.observe(0, {A: None})
    assert w.stuck(w.observe(31, {A: None}), {}) == []
    assert w.stuck(w.observe(32, {A: None}), {}) == [(A, 32)]
    w.reset()
    assert w.observe(40, {A: None}) == {}


def test_a_commit_that_does_not_move_while_records_were_fetched_past_it_is_stuck() -> None:
    a, b = TP("mohallamart.order.events", 3), TP("mohallamart.order.events", 4)
    w = CommitWatch(limit_s=45)
    # a: fetched to 20880, committed 20828 and not moving; b: committing as it goes
    assert w.observe(0.0, {a: (20880, 20828), b: (100, 90)}, exempt=set()) == []
    assert w.observe(30.0, {a: (20880, 20828), b: (140, 130)}, exempt=set()) == []
    stuck = w.observe(46.0, {a: (20880, 20828), b: (180, 170)}, exempt=set())
    assert stuck == [(a, 46.0)]


def test_a_caught_up_parked_or_moving_partition_is_not_stuck() -> None:
    a = TP("mohallamart.product.events", 0)
    w = CommitWatch(limit_s=45)
    # caught up (nothing fetched past the commit), however long
    assert w.observe(0.0, {a: (500, 500)}, exempt=set()) == []
    assert w.observe(100.0, {a: (500, 500)}, exempt=set()) == []
    # a record parked for a retry holds the commit, as it should
    assert w.observe(101.0, {a: (900, 500)}, exempt={a}) == []
    assert w.observe(200.0, {a: (900, 500)}, exempt={a}) == []
    # the commit moves: the clock starts again
    assert w.observe(201.0, {a: (900, 500)}, exempt=set()) == []
    assert w.observe(240.0, {a: (950, 600)}, exempt=set()) == []
    assert w.observe(280.0, {a: (990, 600)}, exempt=set()) == []
    assert w.observe(286.0, {a: (990, 600)}, exempt=set()) == [(a, 46.0)]
