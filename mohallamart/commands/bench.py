"""`mohallamart bench ingest|workers|scale-out|reads|profile-workers`: benchmarks and profiles
(they print figures; never run as tests)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mohallamart.commands._common import load_settings, out, stop_on_sigterm

__all__ = ["register"]


def _cmd_bench_workers(args: argparse.Namespace) -> int:
    from mohallamart.bench_workers import run_workers_bench

    stop_on_sigterm()  # so the benchmark's own worker and API are stopped on the way out
    res = run_workers_bench(
        load_settings(),
        events=args.events,
        runs=args.runs,
        rates=args.rate,
        duration_s=args.duration,
        echo=out,
    )
    out("")
    out(f"== projections worker, topic -> PostgreSQL ({res['machine']}, medians of {res['runs']})")
    out(
        f"throughput: worker {res['worker_events_per_s']:,.0f} events/s, plain confluent-kafka "
        f"{res['baseline_events_per_s']:,.0f} events/s: {res['worker_vs_baseline']:.2f}x"
    )
    out(
        f"  runs: worker {', '.join(f'{r:,.0f}' for r in res['worker_runs'])}; baseline "
        f"{', '.join(f'{r:,.0f}' for r in res['baseline_runs'])}"
    )
    out(
        f"CPU per event: worker {res['worker_cpu_us_per_event']:.0f} us, plain consumer "
        f"{res['baseline_cpu_us_per_event']:.0f} us: the runtime adds "
        f"{res['runtime_adds_cpu_us_per_event']:.0f} us"
    )
    for lat in res["latency"]:
        out(
            f"latency at {lat['rate_per_s']:,} events/s, API ack -> row committed "
            f"({lat['events']:,} events): worker p50 {lat['worker_p50_ms']:.1f} ms, "
            f"p99 {lat['worker_p99_ms']:.1f} ms; baseline p50 "
            f"{lat['baseline_p50_ms']:.1f} ms, p99 {lat['baseline_p99_ms']:.1f} ms"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def _cmd_bench_scale_out(args: argparse.Namespace) -> int:
    from mohallamart.bench_scale import render, run_scale_bench

    stop_on_sigterm()  # so the benchmark's own workers are stopped on the way out
    res = run_scale_bench(
        load_settings(), events=args.events, runs=args.runs, workers=args.workers, echo=out
    )
    out("")
    for line in render(res):
        out(line)
    if args.json:
        Path(args.json).write_text(json.dumps(res.to_json(), indent=2))
    return 0


def _cmd_bench_reads(args: argparse.Namespace) -> int:
    from mohallamart.bench_reads import run_reads_bench

    stop_on_sigterm()
    figures = run_reads_bench(
        load_settings(),
        products=args.products,
        samples=args.samples,
        rate=args.rate,
        search_rate=args.search_rate,
        duration=args.duration,
        runs=args.runs,
        clients=args.clients,
        notifications=args.notifications,
        echo=out,
        json_path=args.json,
    )
    out(json.dumps(figures, indent=2))
    return 0


def _cmd_bench_rebuild(args: argparse.Namespace) -> int:
    from mohallamart.bench_rebuild import run_rebuild_bench

    stop_on_sigterm()
    figures = run_rebuild_bench(load_settings(), events=args.events, runs=args.runs, say=out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


def _cmd_bench_ingest(args: argparse.Namespace) -> int:
    from mohallamart.bench import run_ingest_bench

    stop_on_sigterm()

    res = run_ingest_bench(
        load_settings(),
        events=args.events,
        batch=args.batch,
        concurrency=args.concurrency,
        runs=args.runs,
        rate=args.rate,
        duration_s=args.duration,
        saturation_workers=args.saturation_workers,
        echo=lambda line: out(f"[bench] {line}"),
    )
    out("")
    out("results (medians of runs; load generator on the same 2-core machine):")
    out(f"  raw confluent-kafka producer      {res['raw_producer_events_per_s']:>10,.0f} events/s")
    out(
        f"  API batched                       {res['api_batched_events_per_s']:>10,.0f} events/s"
        f"  ({res['api_batched_vs_raw']:.2f} x raw)"
    )
    out(
        f"  API single events, saturation     {res['api_single_saturation_req_per_s']:>10,.0f}"
        f" req/s   (p99 {res['api_single_saturation_p99_ms']:.1f} ms, success "
        f"{res['api_single_saturation_success']:.3f})"
    )
    out(
        f"  API single events at {res['fixed_rate_req_per_s']} req/s     p50 "
        f"{res['api_fixed_rate_p50_ms']:.1f} ms, p99 {res['api_fixed_rate_p99_ms']:.1f} ms "
        f"(success {res['api_fixed_rate_success']:.3f})"
    )
    out(
        f"  raw producer at {res['fixed_rate_req_per_s']} msg/s          p50 "
        f"{res['raw_fixed_rate_p50_ms']:.1f} ms, p99 {res['raw_fixed_rate_p99_ms']:.1f} ms"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
        out(f"written to {args.json}")
    return 0


def _cmd_bench_profile_workers(args: argparse.Namespace) -> int:
    from mohallamart.profile_workers import profile_workers, render

    stop_on_sigterm()
    results = []
    for history in args.history:
        out(f"== profile: {args.events:,} events after a history of {history:,} events")
        res = profile_workers(
            load_settings(), events=args.events, history=history, rate_hz=args.rate, echo=out
        )
        out(render(res))
        results.append(res)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def _cmd_bench_analytics(args: argparse.Namespace) -> int:
    from mohallamart.bench_analytics import run_analytics_bench

    stop_on_sigterm()  # so the benchmark's own workers are stopped on the way out
    res = run_analytics_bench(
        load_settings(),
        events=args.events,
        runs=args.runs,
        rate=args.rate,
        latency_s=args.latency_s,
        shops=args.shops,
        echo=out,
    )
    out("")
    out(f"== analytics role, every window kind ({res['machine']}, medians of {res['runs']})")
    out(
        f"throughput: the role {res['role_events_per_s']:,.0f} events/s; (a) plain "
        f"confluent-kafka, same aggregation and writes {res['baseline_events_per_s']:,.0f}: "
        f"{res['role_vs_baseline']:.2f}x; (b) faust tumbling table, 1-minute revenue only "
        f"{res['faust_events_per_s']:,.0f}: {res['role_vs_faust']:.2f}x"
    )
    out(
        "  runs: role "
        + ", ".join(f"{r:,.0f}" for r in res["role_runs"])
        + "; (a) "
        + ", ".join(f"{r:,.0f}" for r in res["baseline_runs"])
        + "; (b) "
        + ", ".join(f"{r:,.0f}" for r in res["faust_runs"])
    )
    out(f"CPU per event (the role's worker): {res['role_cpu_us_per_event']:.0f} us")
    out(
        f"final-result latency after the watermark ({res['latency_finals']} 1-minute finals at "
        f"{res['latency_rate_per_s']:,} events/s, live): p50 {res['latency_p50_s']:.2f} s, "
        f"p99 {res['latency_p99_s']:.2f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="benchmarks (they print figures; never run as tests)")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    bi = bsub.add_parser("ingest", help="the ingestion API beside a raw confluent-kafka producer")
    bi.add_argument("--events", type=int, default=100_000, help="events per throughput run")
    bi.add_argument("--batch", type=int, default=1000, help="events per batch request")
    bi.add_argument("--concurrency", type=int, default=4, help="batch requests in flight")
    bi.add_argument("--runs", type=int, default=3, help="repetitions (medians are reported)")
    bi.add_argument("--rate", type=int, default=1000, help="fixed request rate for latency")
    bi.add_argument("--duration", type=int, default=15, help="seconds per vegeta attack")
    bi.add_argument("--saturation-workers", type=int, default=64, help="connections at saturation")
    bi.add_argument("--json", default=None, help="also write the figures to this file")
    bi.set_defaults(func=_cmd_bench_ingest)
    bw = bsub.add_parser(
        "workers", help="the projections worker (topic -> PostgreSQL) beside plain confluent-kafka"
    )
    bw.add_argument("--events", type=int, default=100_000, help="events per throughput run")
    bw.add_argument("--runs", type=int, default=3, help="repetitions (medians are reported)")
    bw.add_argument(
        "--rate",
        type=int,
        nargs="+",
        default=[1000, 500],
        help="events/s of the latency phases (one phase per rate)",
    )
    bw.add_argument("--duration", type=int, default=15, help="seconds of the latency phase")
    bw.add_argument("--json", default=None, help="also write the figures to this file")
    bw.set_defaults(func=_cmd_bench_workers)

    bs = bsub.add_parser(
        "scale-out",
        help="one projections worker vs several in one group: CPU per event, idle while lagging",
        description="Runs A (one projections worker) and B (--workers in one consumer group) "
        "alternately on the same events, each on a scratch database and a group of its own; "
        "per run: wall time until every row is visible, the workers' CPU per event (from their "
        "resume, start-up excluded), and per worker its partitions, its records and the "
        "seconds it sat idle while its partitions lagged. Acceptance: B/A CPU per event <= "
        "1.15 and no worker idle while lagging. Needs the stack up.",
    )
    bs.add_argument("--events", type=int, default=200_000, help="events per run")
    bs.add_argument("--runs", type=int, default=3, help="pairs of runs A, B (medians reported)")
    bs.add_argument("--workers", type=int, default=3, help="workers in run B")
    bs.add_argument("--json", default=None, help="also write the figures to this file")
    bs.set_defaults(func=_cmd_bench_scale_out)

    bp = bsub.add_parser(
        "profile-workers",
        help="where the projections worker's CPU goes, per event (py-spy), fresh and with history",
    )
    bp.add_argument("--events", type=int, default=100_000, help="events in the profiled run")
    bp.add_argument(
        "--history",
        type=int,
        nargs="+",
        default=[0, 500_000],
        help="events loaded (not profiled) before each profiled run; one profile per value",
    )
    bp.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    bp.add_argument("--json", default=None, help="also write the figures to this file")
    bp.set_defaults(func=_cmd_bench_profile_workers)

    ba = bsub.add_parser(
        "analytics",
        help="the analytics role beside plain confluent-kafka and faust's tumbling table",
    )
    ba.add_argument("--events", type=int, default=60_000, help="events per throughput run")
    ba.add_argument("--runs", type=int, default=3, help="repetitions (medians are reported)")
    ba.add_argument("--rate", type=int, default=200, help="order events/s of the latency phase")
    ba.add_argument("--latency-s", type=float, default=70.0, help="seconds of the latency phase")
    ba.add_argument("--shops", type=int, default=200, help="shops of the latency phase")
    ba.add_argument("--json", default=None, help="also write the figures to this file")
    ba.set_defaults(func=_cmd_bench_analytics)

    br = bsub.add_parser(
        "reads", help="cache reads, search, reindex, live clients, each beside a baseline"
    )
    br.add_argument("--products", type=int, default=20_000, help="products seeded")
    br.add_argument("--samples", type=int, default=20, help="time-to-searchable samples")
    br.add_argument("--rate", type=int, default=500, help="product reads per second")
    br.add_argument("--search-rate", type=int, default=100, help="searches per second")
    br.add_argument("--duration", type=int, default=10, help="seconds per vegeta attack")
    br.add_argument("--runs", type=int, default=3, help="reindex repetitions (median)")
    br.add_argument(
        "--notifications", type=int, default=1000, help="messages per notification burst"
    )
    br.add_argument("--clients", type=int, default=5000, help="idle live (SSE) clients to open")
    br.add_argument("--json", default=None, help="also write the figures to this file")
    br.set_defaults(func=_cmd_bench_reads)

    bb = bsub.add_parser(
        "rebuild",
        help="rebuild postgres, redis and search, each beside a raw baseline (scratch stores)",
    )
    bb.add_argument("--events", type=int, default=1_000_000, help="events of the mix")
    bb.add_argument("--runs", type=int, default=3, help="repetitions of each (medians)")
    bb.add_argument("--json", default=None, help="also write the figures to this file")
    bb.set_defaults(func=_cmd_bench_rebuild)
