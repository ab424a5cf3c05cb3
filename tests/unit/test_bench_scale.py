"""The scale-out benchmark's pure parts: the idle-while-lagging detector, the medians and ratios
the acceptance point reads, the records count from a worker's /metrics, and the report."""

from __future__ import annotations

import pytest

from mohallamart.bench_scale import (
    CPU_RATIO_LIMIT,
    RunFigures,
    ScaleResult,
    WorkerFigures,
    idle_while_lagging,
    lowest_cpu_while_lagging,
    records_total,
    render,
    summarize,
)


def _worker(name: str, cpu_s: float, idle_lagging: int = 0) -> WorkerFigures:
    return WorkerFigures(
        name=name,
        partitions={"user": 2, "order": 2},
        records=1000,
        cpu_s=cpu_s,
        idle_lagging=idle_lagging,
        idle_lagging_s=3 * idle_lagging,
        samples=10,
        lowest_cpu_lagging=80.0,
    )


def _run(label: str, wall_s: float, *cpu_s: float, idle: int = 0) -> RunFigures:
    return RunFigures(
        label=label,
        events=100_000,
        wall_s=wall_s,
        workers=tuple(_worker(f"w{i}", c, idle if i == 1 else 0) for i, c in enumerate(cpu_s, 1)),
        servers_cpu_s={"postgres": 2.0, "kafka": 1.0},
        unstable_samples=0,
        others_cpu_s=wall_s * 0.5,
    )


# --- idle while lagging ------------------------------------------------------------------------
def test_three_idle_seconds_with_lag_are_one_episode() -> None:
    samples: list[tuple[float, int | None]] = [(90.0, 500), (1.0, 400), (2.0, 400), (0.0, 400)]
    assert idle_while_lagging(samples) == (1, 3)


def test_two_idle_seconds_with_lag_are_not_an_episode() -> None:
    samples: list[tuple[float, int | None]] = [(1.0, 400), (2.0, 400), (80.0, 300), (1.0, 300)]
    assert idle_while_lagging(samples) == (0, 0)


def test_idle_without_lag_is_not_counted() -> None:
    """A worker done with its partitions is idle with nothing to do: not a fault."""
    samples: list[tuple[float, int | None]] = [(0.5, 0)] * 10
    assert idle_while_lagging(samples) == (0, 0)


def test_busy_with_lag_is_not_counted() -> None:
    samples: list[tuple[float, int | None]] = [(99.0, 10_000)] * 10
    assert idle_while_lagging(samples) == (0, 0)


def test_the_threshold_is_strictly_below_5_percent() -> None:
    assert idle_while_lagging([(5.0, 10)] * 3) == (0, 0)
    assert idle_while_lagging([(4.9, 10)] * 3) == (1, 3)


def test_each_run_of_idle_seconds_is_its_own_episode() -> None:
    idle: list[tuple[float, int | None]] = [(0.0, 7)] * 4
    busy: list[tuple[float, int | None]] = [(60.0, 7)]
    assert idle_while_lagging([*idle, *busy, *idle[:3]]) == (2, 7)


def test_a_missing_lag_reading_neither_ends_nor_extends_a_run() -> None:
    samples: list[tuple[float, int | None]] = [(0.0, 9), (0.0, None), (0.0, 9), (0.0, 9)]
    assert idle_while_lagging(samples) == (1, 3)
    assert idle_while_lagging([(0.0, 9), (0.0, None), (0.0, 9)]) == (0, 0)


def test_the_lowest_cpu_while_lagging_ignores_samples_without_lag() -> None:
    samples: list[tuple[float, int | None]] = [(2.0, 0), (30.0, 5), (12.0, 9), (1.0, None)]
    assert lowest_cpu_while_lagging(samples) == 12.0
    assert lowest_cpu_while_lagging([(2.0, 0), (0.0, None)]) is None


# --- medians and ratios ------------------------------------------------------------------------
def test_summary_takes_medians_of_each_kind_and_the_ratio_of_the_medians() -> None:
    # one worker: 5.0, 6.0, 9.0 s of CPU for 100,000 events -> median 60 us/event
    one = [_run("A1", 10.0, 5.0), _run("A2", 8.0, 6.0), _run("A3", 20.0, 9.0)]
    # three workers: totals 6.3, 6.6, 7.5 s -> median 66 us/event
    many = [
        _run("B1", 12.5, 2.1, 2.1, 2.1),
        _run("B2", 20.0, 2.2, 2.2, 2.2),
        _run("B3", 10.0, 2.5, 2.5, 2.5),
    ]
    s = summarize(one, many)
    assert s.one_cpu_us_per_event == pytest.approx(60.0)
    assert s.many_cpu_us_per_event == pytest.approx(66.0)
    assert s.cpu_ratio == pytest.approx(1.1)
    assert s.one_events_per_s == pytest.approx(10_000.0)  # 100,000 / 10 s, the median wall
    assert s.many_events_per_s == pytest.approx(8_000.0)  # 100,000 / 12.5 s
    assert s.throughput_ratio == pytest.approx(0.8)
    # each A beside the B after it: 6.3/5.0, 6.6/6.0, 7.5/9.0
    assert s.pair_cpu_ratios == pytest.approx((1.26, 1.1, 7.5 / 9.0))
    assert s.one_servers_us_per_event == {"kafka": 10.0, "postgres": 20.0}
    assert s.met


def test_the_acceptance_fails_above_the_limit_or_with_an_idle_worker() -> None:
    one = [_run("A1", 10.0, 5.0)]
    over = summarize(one, [_run("B1", 10.0, 2.0, 2.0, 2.0)])  # 6.0 / 5.0 = 1.2
    assert over.cpu_ratio == pytest.approx(1.2) and over.cpu_ratio > CPU_RATIO_LIMIT
    assert not over.met
    idle = summarize(one, [_run("B1", 10.0, 1.8, 1.8, 1.8, idle=1)])
    assert idle.cpu_ratio <= CPU_RATIO_LIMIT
    assert idle.idle_lagging == 1 and not idle.met


def test_summarize_needs_both_kinds() -> None:
    with pytest.raises(ValueError):
        summarize([], [_run("B1", 10.0, 1.0)])


# --- /metrics and the report -------------------------------------------------------------------
METRICS = """\
# HELP mohallamart_worker_records_total Records handled, by outcome
# TYPE mohallamart_worker_records_total counter
mohallamart_worker_records_total{outcome="applied",role="projections",stage="users"} 2000.0
mohallamart_worker_records_total{outcome="applied",role="projections",stage="orders"} 1.2e+04
mohallamart_worker_records_total{outcome="dead_lettered",role="projections",stage="orders"} 3.0
mohallamart_worker_records_total{outcome="applied",role="stock",stage="reserve"} 99.0
# HELP mohallamart_worker_records_created Records handled, by outcome
mohallamart_worker_records_created{outcome="applied",role="projections",stage="users"} 1.7e+09
"""


def test_records_total_sums_every_stage_and_outcome_of_the_role() -> None:
    assert records_total(METRICS) == 14_003
    assert records_total(METRICS, role="stock") == 99
    assert records_total("") == 0


def test_the_report_names_the_acceptance_figure_and_every_run() -> None:
    res = ScaleResult(
        cores=2,
        load_average=(3.0, 2.5, 2.0),
        load_average_end=(3.5, 2.6, 2.0),
        events=100_000,
        workers=3,
        partitions={"user": 6, "shop": 3, "shopkeeper": 3, "product": 6, "order": 6},
        one=(_run("A1", 10.0, 5.0),),
        many=(_run("B1", 12.5, 1.8, 1.8, 1.8),),
    )
    text = "\n".join(render(res))
    assert "3 / 1 = 1.080x (acceptance <= 1.15x: met)" in text
    assert "1 worker 10,000 events/s, 3 workers 8,000 events/s: 0.80x" in text
    assert "A1 w1 0; B1 w1 0, w2 0, w3 0 (met)" in text
    assert "at most 6 projections workers have work" in text
    assert "B1/A1 1.080; median 1.080x" in text
    assert "0.50  w1 4p 1,000 rec" in text  # the other load, in cores
    json = res.to_json()
    assert json["summary"]["met"] is True
    assert json["many"][0]["cpu_us_per_event"] == pytest.approx(54.0)
