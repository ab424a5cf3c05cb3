"""Helpers for the processors' tests: worker processes, posting events, reading rows and topics."""

from __future__ import annotations

import copy
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from confluent_kafka import Consumer, TopicPartition

from connectors.kafka import admin_config, consumer_config
from core.settings import Settings
from mohallamart.stack.supervisor import Child, Supervisor
from schemas.catalog import EVENT_TYPES
from schemas.codec import RegistryDecoder
from schemas.registry import SchemaRegistry
from tests.integration._support import free_port, poll

__all__ = ["QUIET_USER", "Pipeline", "Workers", "a_bug_refusing", "example", "order_created", "uid"]

#: the customer of `order_created` orders: registered by the pipeline fixture with every
#: notification channel off (load tests would otherwise queue thousands of emails to one user)
QUIET_USER = "usr_tests_quiet"

#: the test profile of the workers: short retries, a short wait for unknown products
WORKER_ENV = {
    "WORKER_RETRY_DELAYS_S": "[0.3,0.6,1.2]",
    "WORKER_DOWN_BACKOFF_CAP_S": "1",
    "STOCK_WAIT_UNKNOWN_PRODUCT_S": "4",
    # the tests wait for commits (`caught_up`), and watch them (parking)
    "WORKER_COMMIT_INTERVAL_S": "1",
    # a worker consuming nothing while records wait ends (and is restarted) well within the
    # tests' waits, its consumer's state in its log and in the session's report
    "WORKER_STUCK_PARTITION_S": "45",
    "LOG_LEVEL": "INFO",
}


#: every worker restart the harness made because a worker exited on its own (printed at the end
#: of the test run)
UNPLANNED: list[str] = []

_last_at = [datetime(2000, 1, 1, tzinfo=UTC)]


def uid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def example(type_: str, **over: Any) -> dict[str, Any]:
    data = copy.deepcopy(EVENT_TYPES[type_].example)
    data.update(over)
    return data


@dataclass
class _Worker:
    role: str
    web_port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)


def _why_exited(log: Path, limit: int = 40) -> list[str]:
    """The reason a worker gave for ending itself, and the consumer state it logged with it."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - 256 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    out: list[str] = []
    for i in range(len(lines) - 1, -1, -1):
        if "stuck" in lines[i] and "the consumer's state" in lines[i]:
            block = [lines[i]]
            for x in lines[i + 1 :]:
                if x.startswith("[20"):
                    break
                block.append(x)
            out = block[:limit]
            break
    out += [x for x in lines[-50:] if "exiting to be restarted" in x][-1:]
    return out


@dataclass
class Workers:
    """Worker processes this test session started (stopped by PID, never by name), supervised as
    `mohallamart run` supervises its own (`mohallamart.stack.supervisor`).

    Like the supervisor of a deployment (compose's `restart: unless-stopped`), a worker that
    exits on its own is started again (a worker ends itself when it cannot go on, e.g. its Kafka
    fetcher crashed); each such restart is logged to stderr and kept in `unplanned`, and the
    session reports them at its end. A worker a test stops or kills stays down until the test
    starts it again."""

    settings: Settings
    logdir: Path
    unplanned: list[str] = field(default_factory=lambda: UNPLANNED)
    #: environment of every worker this harness starts (over WORKER_ENV; a worker's own `env`
    #: over it): the session's gives the OTLP receiver's
    base_env: dict[str, str] = field(default_factory=dict)
    _workers: dict[str, _Worker] = field(default_factory=dict)
    supervisor: Supervisor = field(init=False)

    def __post_init__(self) -> None:
        self.supervisor = Supervisor(on_exit=self._exited)

    def start(self, name: str, role: str, env: dict[str, str] | None = None) -> None:
        datadir = self.logdir / "worker-data" / name
        datadir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        # known before the process exists: its exit may be reported at once
        w = self._workers[name] = _Worker(
            role, port, self.logdir / f"worker-{name}.log", {**(env or {})}
        )
        self.supervisor.start(
            name,
            [
                sys.executable,
                "-m",
                "mohallamart.cli",
                "worker",
                "--role",
                role,
                "--web-port",
                str(port),
            ],
            output=w.log,
            env={**WORKER_ENV, **self.base_env, "WORKER_DATA_DIR": str(datadir), **w.env},
        )
        self.supervisor.watch()

    def _exited(self, child: Child, code: int) -> None:
        w = self._workers[child.name]
        line = (
            f"worker {child.name} (role {w.role}, pid {child.pid}) exited on its own "
            f"with {code} at {datetime.now(UTC):%H:%M:%S}: restarted (log {w.log})"
        )
        why = _why_exited(w.log)
        if why:
            line += "\n    " + "\n    ".join(why)
        self.unplanned.append(line)
        sys.stderr.write(f"[workers] {line}\n")
        sys.stderr.flush()

    def start_like(self, name: str, like: str) -> None:
        """Start a worker `name` of the same role and environment as worker `like`."""
        w = self._workers[like]
        self.start(name, w.role, w.env)

    def log_of(self, name: str) -> Path:
        return self._workers[name].log

    def restart(self, name: str) -> None:
        """Start a stopped worker again, as it was started (role, environment)."""
        w = self._workers[name]
        self.start(name, w.role, w.env)

    def metrics(self, name: str) -> str:
        """The worker's /metrics page."""
        return httpx.get(f"http://127.0.0.1:{self._workers[name].web_port}/metrics", timeout=5).text

    def alive(self, name: str) -> bool:
        return self.supervisor.children[name].alive

    def kill9(self, name: str) -> None:
        self.supervisor.kill(name, signal.SIGKILL)

    def stop(self, name: str) -> None:
        self.supervisor.stop(name, timeout_s=30)

    def stop_all(self) -> None:
        self.supervisor.stop_all(timeout_s=30)
        if self.unplanned:
            sys.stderr.write(
                "[workers] restarted after exiting on their own:\n  "
                + "\n  ".join(self.unplanned)
                + "\n"
            )

    def describe(self, role: str) -> str:
        """The state of `role`'s workers and the end of their logs (for a failure message)."""
        out = []
        for name, w in self._workers.items():
            if w.role != role:
                continue
            child = self.supervisor.children[name]
            code = child.proc.poll()
            state = "running" if code is None else f"exited with {code}"
            picture = ""
            if code is None:
                # a running worker logs its consumer's state and where its tasks wait (SIGUSR1)
                try:
                    size = w.log.stat().st_size
                    child.proc.send_signal(signal.SIGUSR1)
                    time.sleep(1.5)
                    with w.log.open("rb") as f:
                        f.seek(size)
                        picture = f.read(12_000).decode("utf-8", "replace")
                except OSError:
                    picture = ""
            try:
                tail = w.log.read_bytes()[-1500:].decode("utf-8", "replace")
            except OSError:
                tail = ""
            if picture:
                tail = picture  # the state it logged just now (the tail is in its log)
            out.append(f"--- worker {name} (pid {child.pid}) {state}; log ends:\n{tail}")
        return "\n".join(out)


class Pipeline:
    """The API, the workers, PostgreSQL and Kafka, as a test sees them."""

    def __init__(self, api: str, key: str, settings: Settings, workers: Workers) -> None:
        self.api, self.key, self.settings, self.workers = api, key, settings, workers
        self.http = httpx.Client(
            base_url=api, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        self.registry = SchemaRegistry(settings.registry_url)
        self.decoder = RegistryDecoder(self.registry.schema_by_id)

    # --- posting ------------------------------------------------------------------------------
    @staticmethod
    def event(
        type_: str, data: dict[str, Any], *, at: datetime | None = None, id: str | None = None
    ) -> dict[str, Any]:
        if at is None:
            # milliseconds, strictly increasing: two events posted one after the other are never
            # ordered by their random ids (a version is (occurred_at, id))
            at = max(datetime.now(UTC), _last_at[0] + timedelta(milliseconds=1))
            at = at.replace(microsecond=at.microsecond // 1000 * 1000)
            _last_at[0] = at
        return {
            "id": id or str(uuid.uuid4()),
            "type": type_,
            "occurred_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "source": "tests",
            "data": data,
        }

    def post(self, type_: str, data: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return self.post_event(self.event(type_, data, **kw))

    def post_event(self, ev: dict[str, Any]) -> dict[str, Any]:
        r = self.http.post("/v1/events", json=ev)
        assert r.status_code == 202, r.text
        return ev

    def post_batch(self, events: list[dict[str, Any]]) -> None:
        for i in range(0, len(events), 1000):
            r = self.http.post("/v1/events/batch", json={"events": events[i : i + 1000]})
            assert r.status_code == 202, r.text

    # --- PostgreSQL ---------------------------------------------------------------------------
    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.settings.postgres_dsn, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()  # type: ignore[arg-type]

    def execute(self, sql: str, *params: Any) -> None:
        with psycopg.connect(self.settings.postgres_dsn, autocommit=True) as conn:
            conn.execute(sql, params or None)  # type: ignore[arg-type]

    def row(self, sql: str, *params: Any) -> tuple[Any, ...] | None:
        rows = self.rows(sql, *params)
        return rows[0] if rows else None

    def wait_row(
        self,
        sql: str,
        *params: Any,
        until: Callable[[Any], bool] = bool,
        timeout: float = 30,
        what: str = "",
    ) -> Any:
        def probe() -> Any:
            r = self.row(sql, *params)
            return r if r is not None and until(r) else None

        return poll(probe, timeout=timeout, interval=0.2, what=what or sql)

    # --- Kafka --------------------------------------------------------------------------------
    def records(
        self, topic: str, *, keys: Iterable[str] | None = None
    ) -> list[tuple[dict[str, str], bytes | None, Any]]:
        """Every record of `topic` (with one of `keys`): (headers, value, decoded event or None)."""
        wanted = None if keys is None else {k.encode() for k in keys}
        c = Consumer(
            consumer_config(
                self.settings.kafka_bootstrap,
                f"tests-{uuid.uuid4()}",
                {"enable.auto.commit": False},
                security=self.settings.kafka_security,
            )
        )
        out: list[tuple[dict[str, str], bytes | None, Any]] = []
        try:
            meta = c.list_topics(topic, timeout=10).topics[topic]
            highs: dict[int, int] = {}
            assign = []
            for p in meta.partitions:
                low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if high > low:
                    highs[p] = high
                    assign.append(TopicPartition(topic, p, low))
            if not assign:
                return out
            c.assign(assign)
            while highs:
                msg = c.poll(10)
                assert msg is not None, f"timed out reading {topic}"
                if msg.error():
                    continue
                p, off = msg.partition(), msg.offset()
                if p in highs and off is not None and off >= highs[p] - 1:
                    del highs[p]
                if wanted is not None and msg.key() not in wanted:
                    continue
                headers = {k: (v or b"").decode() for k, v in (msg.headers() or [])}
                value = msg.value()
                try:
                    decoded = self.decoder.decode(value)
                except Exception:  # noqa: BLE001 - undecodable: returned as None
                    decoded = None
                out.append((headers, value, decoded))
        finally:
            c.close()
        return out

    def produce(self, events: list[dict[str, Any]]) -> None:
        """Write events straight to their topics (Avro, Confluent framing), as a producer that
        does not go through the API would."""
        from confluent_kafka import Producer

        from connectors.kafka import producer_config
        from schemas.codec import EventCodec

        prod = Producer(
            producer_config(
                self.settings.kafka_bootstrap,
                security=self.settings.kafka_security,
                delivery_timeout_ms=10_000,
                linger_ms=5,
                max_message_bytes=1 << 20,
            )
        )
        for ev in events:
            et = EVENT_TYPES[ev["type"]]
            sid = self.registry.register(et)
            datum = {
                **ev,
                "occurred_at": datetime.fromisoformat(ev["occurred_at"]),
                "trace_id": ev["id"],
            }
            key = str(ev["data"][et.key_field])
            prod.produce(
                et.topic.name,
                key=key.encode(),
                value=EventCodec(et.schema).encode_fastavro(sid, datum),
            )
        assert prod.flush(15) == 0

    def dead_letters(self, topic: str, event_id: str | None = None) -> list[dict[str, str]]:
        """Headers of the dead-letter records of `topic` (for one event id)."""
        found = [h for h, _, _ in self.records(f"{topic}.dlq")]
        return [h for h in found if event_id is None or h.get("x-event-id") == event_id]

    def caught_up(
        self,
        role: str,
        categories: Iterable[str],
        timeout: float = 60,
        prefix: str | None = None,
        topics: Iterable[str] = (),
    ) -> None:
        """Wait until `role`'s consumer group has committed every record now in the topics of
        `categories` (it commits after a batch is settled, about once a second)."""
        from confluent_kafka import ConsumerGroupTopicPartitions
        from confluent_kafka.admin import AdminClient

        from schemas.catalog import TOPICS

        security = self.settings.kafka_security
        admin = AdminClient(admin_config(self.settings.kafka_bootstrap, security=security))
        group = f"{prefix or self.settings.worker_app_prefix}-{role}"
        probe = Consumer(
            consumer_config(
                self.settings.kafka_bootstrap, f"tests-{uuid.uuid4()}", security=security
            )
        )
        try:
            ends: dict[tuple[str, int], int] = {}
            for name in [*(TOPICS[c].name for c in categories), *topics]:
                for p in probe.list_topics(name, timeout=10).topics[name].partitions:
                    ends[(name, p)] = probe.get_watermark_offsets(
                        TopicPartition(name, p), timeout=10
                    )[1]
        finally:
            probe.close()

        behind: dict[tuple[str, int], tuple[int, int]] = {}

        def done() -> bool:
            fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
            res = list(fut.values())[0].result(timeout=10)
            got = {(tp.topic, tp.partition): tp.offset for tp in res.topic_partitions}
            behind.clear()
            behind.update(
                {tp: (got.get(tp, -1), end) for tp, end in ends.items() if got.get(tp, -1) < end}
            )
            return all(got.get(tp, -1) >= end for tp, end in ends.items() if end > 0)

        try:
            poll(done, timeout=timeout, interval=0.3, what=f"{group} to catch up")
        except AssertionError as exc:
            lag = ", ".join(f"{t}/{p} at {c} of {e}" for (t, p), (c, e) in sorted(behind.items()))
            raise AssertionError(f"{exc}\nbehind: {lag}\n{self.workers.describe(role)}") from None

    def events_of(self, topic: str, type_: str, keys: Iterable[str]) -> list[dict[str, Any]]:
        return [ev for _, _, ev in self.records(topic, keys=keys) if ev and ev["type"] == type_]


@contextmanager
def a_bug_refusing(p: Pipeline, product_id: str) -> Iterator[None]:
    """A bug in the database (a trigger) refuses to insert `product_id`'s row until the block
    ends: the projections retry the record, then dead-letter it."""
    fn = uid("boom").lower()
    p.execute(
        f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"RAISE EXCEPTION 'a bug refuses %', NEW.product_id; END $$"
    )
    p.execute(
        f"CREATE TRIGGER {fn} BEFORE INSERT ON products FOR EACH ROW "
        f"WHEN (NEW.product_id = '{product_id}') EXECUTE FUNCTION {fn}()"
    )
    try:
        yield
    finally:
        p.execute(f"DROP TRIGGER IF EXISTS {fn} ON products")
        p.execute(f"DROP FUNCTION IF EXISTS {fn}()")


def order_created(
    oid: str,
    shop: str,
    items: dict[str, int],
    unit_paise: int = 1000,
    at: datetime | None = None,
) -> dict[str, Any]:
    """An `order.created` event of `items` (product -> quantity) from one shop."""
    lines = [
        {"product_id": pid, "quantity": q, "unit_price_paise": unit_paise, "name": pid}
        for pid, q in items.items()
    ]
    return Pipeline.event(
        "order.created",
        example(
            "order.created",
            order_id=oid,
            shop_id=shop,
            items=lines,
            total_paise=unit_paise * sum(items.values()),
            delivery_fee_paise=0,
            user_id=QUIET_USER,
        ),
        at=at,
    )
