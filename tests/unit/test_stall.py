"""The worker watchdog's rule: a partition whose position has not moved past the limit while the
broker holds records beyond it is stuck; a caught-up partition, or one that moves, never is."""

from __future__ import annotations

from faust.types import TP

from streams.stall import StallWatch

A, B = TP("t.order.events", 0), TP("t.order.events", 1)


def test_a_partition_that_does_not_move_while_records_wait_is_stuck() -> None:
    w = StallWatch(limit_s=30, ask_every_s=10)
    assert w.observe(0, {A: 5, B: 7}) == {}
    assert w.observe(20, {A: 5, B: 9}) == {}  # B moved
    idle = w.observe(31, {A: 5, B: 9})
    assert set(idle) == {A}  # only A idle past the limit
    assert w.stuck(idle, {("t.order.events", 0): 12, ("t.order.events", 1): 9}) == [(A, 31)]


def test_caught_up_is_idle_but_never_stuck_and_the_broker_is_asked_sparingly() -> None:
    w = StallWatch(limit_s=30, ask_every_s=10)
    w.observe(0, {A: 5})
    idle = w.observe(40, {A: 5})
    assert w.stuck(idle, {("t.order.events", 0): 5}) == []  # nothing past the position
    assert w.observe(45, {A: 5}) == {}  # asked 5 s ago: not again yet
    assert set(w.observe(51, {A: 5})) == {A}


def test_a_position_unknown_past_the_limit_is_stuck_and_a_reset_starts_afresh() -> None:
    w = StallWatch(limit_s=30, ask_every_s=0)
    w.observe(0, {A: None})
    idle = w.observe(31, {A: None})
    assert w.stuck(idle, {}) == [(A, 31)]
    w.reset()
    assert w.observe(40, {A: None}) == {}
