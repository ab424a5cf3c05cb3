"""Property-based tests of the API from its own `/openapi.json` (schemathesis).

Every operation the document describes is called with requests generated from it, except the
two Server-Sent-Events streams (`/v1/live`, `/v1/ops/stream`: answers that do not end), in two
runs, each with a key of every scope (admin) and the standard checks: no 5xx
(`not_a_server_error`); a documented status, content type, headers and body schema
(`status_code_conformance`, `content_type_conformance`, `response_headers_conformance`,
`response_schema_conformance`); the same request without its key answers 401 (`ignored_auth`);
another method answers 405 (`unsupported_method`).

- Negative: requests that break the document (a missing or mistyped field, a value out of range,
  an unknown property, a body of another type). Each must be refused with a 4xx
  (`negative_data_rejection`), and none may reach an event topic: the records every topic gained
  during the run are read back, and none came from a request of the run (the API names the
  run's key as their source, `api:<key>`; the ids and sources the bodies carried are looked for
  too). Records the workers derive meanwhile are theirs, not the API's.
- Positive: requests the document allows, the document's examples first (one per postable
  type). No 5xx, and every answer as documented; a 4xx only for a rule the document cannot
  state (`positive_data_acceptance` takes 422 too: a rule across parameters, the API's clock for
  `occurred_at`, the search engine's). Then every event the run got accepted (202, or 200: the
  same body posted by an earlier session on a kept stack) is followed through the workers:
  its entity's row in PostgreSQL holds it (applied, or superseded by a later event of the same
  entity: the version rule), or `projection_refusals` records it refused by a lifecycle rule
  (`IllegalTransition`, with the reason); and no stage dead-letters an accepted event for any
  reason but a rule (a bug, a value a store cannot hold). Every accepted event is checked, of
  the types the projections apply (users, sessions, shops, shopkeepers, products, orders); the
  other postable types (stock, alerts, notification requests, analytics) are checked for the
  dead letters only: their effects are the stock role's table, the workflows' alerts and the
  outbox, and no analytics worker reads the session's namespace.

Not generated: `cleanup.*` and `search.reindex_requested` events (their effects reach beyond the
entities a run makes up: a cleanup removes other tests' rows, a reindex rebuilds every
collection). Webhooks answer 401 to generated signatures: documented, and checked as such.

Reproducible: a fixed seed and derandomized generation (`SCHEMATHESIS_SEED`); each operation
gets `SCHEMATHESIS_EXAMPLES` (default 5) generated requests per run besides its examples and
schemathesis' coverage cases. Raise it locally to search harder.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import psycopg
import pytest
import schemathesis
from confluent_kafka import Consumer, TopicPartition

from connectors.postgres import entity_of, version_of
from core.settings import Settings
from schemas.catalog import TOPICS
from schemas.codec import RegistryDecoder
from schemas.registry import SchemaRegistry
from tests.integration._pipeline import Pipeline
from tests.integration._support import report
from tests.integration._writes import end_offsets, written_by_the_api
from tests.integration.conftest import _key

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "5"))
SEED = int(os.environ.get("SCHEMATHESIS_SEED", "20261207"))
#: answers that never end (Server-Sent Events)
STREAMS = r"^/v1/(live|ops/stream)$"
#: event types never sent (see the module docstring)
UNSENT = frozenset({"cleanup.expired_sessions", "cleanup.old_logs", "search.reindex_requested"})
#: the dead letters' classes that name a rule an event broke (not a failure of the pipeline)
RULES = frozenset({"IllegalTransition", "StockRuleViolation", "UnknownUser", "CutoffRefused"})
#: what each of the pipeline fixture's roles reads, by event category
ROLE_READS = {
    "projections": ("user", "shop", "shopkeeper", "product", "order"),
    "stock": ("product", "order"),
    "cache": ("user", "shop", "shopkeeper", "product"),
    "search": ("shop", "shopkeeper", "product", "search"),
    "workflows": ("user", "shopkeeper", "product", "order"),
    "notifications": ("notification",),
}
_INGEST = ("/v1/events", "/v1/events/batch")
#: the operations that take no parameter and no body
NO_INPUT = ["/health", "/healthz", "/readyz", "/metrics", "/v1/event-types", "/v1/ops/overview"]


def _events_in(body: Any) -> list[Any]:
    """The events a request body to an ingest route carries (whatever their shape)."""
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        return list(body["events"])
    return [body]


def _sendable(case: schemathesis.Case) -> bool:
    """No event of a type in UNSENT is ever sent (checked here, not by a `filter_body` hook:
    the examples and coverage phases do not go through the hooks)."""
    if case.method != "POST" or case.path not in _INGEST:
        return True
    types = [e.get("type") for e in _events_in(case.body) if isinstance(e, dict)]
    return not any(isinstance(t, str) and t in UNSENT for t in types)


def _config(key: str, mode: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
            "auth": {"openapi": {"HTTPBearer": {"bearer": key}}},
            "request-timeout": 30,
            "generation": {
                "mode": mode,
                "max-examples": EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {
                "examples": {"enabled": mode == "positive"},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "401", "403", "404", "409", "422", "429"]
                },
                # 413: a batch of over 1,000 events, a body over the size limit
                "negative_data_rejection": {
                    "expected-statuses": ["400", "401", "403", "404", "405", "409", "413", "415"]
                    + ["422", "429"]
                },
            },
        }
    )


@dataclass
class Ledger:
    """What one run sent and got: the answers' statuses, the ids and sources its ingest bodies
    carried, the events it got accepted."""

    key_name: str
    key: str = field(repr=False)
    before: dict[tuple[str, int], int] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    ids: set[str] = field(default_factory=set)
    sources: set[str] = field(default_factory=set)
    accepted: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, case: schemathesis.Case, status: int, answer: Any) -> None:
        op = f"{case.method} {case.path}"
        self.statuses[f"{op} {status}"] += 1
        if case.method != "POST" or case.path not in _INGEST:
            return
        for ev in _events_in(case.body):
            if isinstance(ev, dict):
                for k, into in (("id", self.ids), ("source", self.sources)):
                    if isinstance(ev.get(k), str) and ev[k]:
                        into.add(ev[k])
        if status in (200, 202) and isinstance(answer, dict):
            for result in answer.get("results", [answer]):
                self.accepted[result["id"]] = result

    def summary(self) -> str:
        by_status = Counter(k.rsplit(" ", 1)[1] for k in self.statuses.elements())
        return ", ".join(f"{s}: {n}" for s, n in sorted(by_status.items()))


def _ledger(settings: Settings, mode: str) -> Ledger:
    name = f"tests-schemathesis-{mode}-{uuid.uuid4().hex[:6]}"
    key = _key(settings, name, ["ingest", "read", "admin"], rate_per_s=1_000_000)
    return Ledger(key_name=name, key=key, before=end_offsets(settings))


def _load(api: str, ledger: Ledger, mode: str) -> Any:
    config = _config(ledger.key, mode)
    return schemathesis.openapi.from_url(f"{api}/openapi.json", config=config)


@pytest.fixture(scope="module")
def negative_ledger(settings: Settings, stack: Any) -> Ledger:
    return _ledger(settings, "negative")


@pytest.fixture(scope="module")
def positive_ledger(settings: Settings, pipeline: Pipeline) -> Ledger:
    # the workers run while the events are posted, as in the session (`make test`)
    return _ledger(settings, "positive")


@pytest.fixture(scope="module")
def negative_schema(api: str, negative_ledger: Ledger) -> Any:
    return _load(api, negative_ledger, "negative")


@pytest.fixture(scope="module")
def positive_schema(api: str, positive_ledger: Ledger) -> Any:
    return _load(api, positive_ledger, "positive")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32.5 reads (and sets, to name each operation) `Node._nodeid`, which pytest
    # 9.2 no longer has
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


def _call(case: schemathesis.Case, ledger: Ledger) -> None:
    if not _sendable(case):
        ledger.statuses[f"{case.method} {case.path} unsent"] += 1
        return
    response = case.call()
    try:
        answer = response.json()
    except ValueError:
        answer = None
    ledger.record(case, response.status_code, answer)
    case.validate_response(response)


# (operations are chosen here: the fixture's schema is filtered again by these)
negative = (
    schemathesis.pytest.from_fixture("negative_schema")
    .exclude(path_regex=STREAMS)
    # nothing to break in a request that has no input
    .exclude(path=NO_INPUT)
)
positive = schemathesis.pytest.from_fixture("positive_schema").exclude(path_regex=STREAMS)


@negative.parametrize()
@hypothesis.settings(deadline=None)
def test_negative_requests_are_refused(case: schemathesis.Case, negative_ledger: Ledger) -> None:
    _call(case, negative_ledger)


def test_negative_requests_wrote_nothing(negative_ledger: Ledger, settings: Settings) -> None:
    led = negative_ledger
    assert led.statuses, "the negative run sent nothing: run test_negative_requests_are_refused"
    report(f"schemathesis negative run: {sum(led.statuses.values())} requests ({led.summary()})")
    after = end_offsets(settings)
    prefixes = (f"api:{led.key_name}", "webhook:")
    written = written_by_the_api(settings, led.before, after, led.ids, led.sources, prefixes)
    assert not written, f"a refused request wrote to a topic: {written[:5]}"


@positive.parametrize()
@hypothesis.settings(deadline=None)
def test_positive_requests_answer_as_documented(
    case: schemathesis.Case, positive_ledger: Ledger
) -> None:
    _call(case, positive_ledger)


def test_accepted_events_are_applied_or_refused_by_a_rule(
    positive_ledger: Ledger, pipeline: Pipeline, settings: Settings
) -> None:
    led = positive_ledger
    assert led.statuses, "the positive run sent nothing: run test_positive_requests_..."
    report(f"schemathesis positive run: {sum(led.statuses.values())} requests ({led.summary()})")
    # the examples phase posts every postable type's example: some are always accepted
    assert led.accepted, "the positive run got no event accepted"
    for role, categories in ROLE_READS.items():
        pipeline.caught_up(role, categories, timeout=90)
    events = _read_back(settings, list(led.accepted.values()))
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        for ev in events:
            outcome = _projected(conn, ev)
            outcomes[outcome] += 1
            if outcome.startswith("NOT SETTLED"):
                failures.append(f"{ev['type']} {ev['id']}: {outcome}")
    for h in _dead_letters(pipeline, set(led.accepted)):
        if h.get("x-error-class") not in RULES:
            failures.append(
                f"{h.get('x-event-type')} {h.get('x-event-id')} dead-lettered by "
                f"{h.get('x-stage')} for no rule: {h.get('x-error-class')}: "
                f"{h.get('x-error-message', '')[:300]}"
            )
    report(f"schemathesis: {len(events)} accepted events: {dict(outcomes)}")
    assert not failures, "\n".join(failures[:20])


def _read_back(settings: Settings, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The accepted events as the workers read them, from the coordinates the API answered."""
    decoder = RegistryDecoder(SchemaRegistry(settings.registry_url).schema_by_id)
    wanted: dict[tuple[str, int], set[int]] = {}
    for r in results:
        wanted.setdefault((r["topic"], r["partition"]), set()).add(r["offset"])
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"tests-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    out = []
    try:
        c.assign([TopicPartition(t, p, min(offs)) for (t, p), offs in wanted.items()])
        left = {tp: max(offs) for tp, offs in wanted.items()}
        while left:
            m = c.poll(10)
            assert m is not None, f"timed out reading the accepted events back: {left}"
            if m.error():
                continue
            tp, off = (str(m.topic()), int(m.partition() or 0)), int(m.offset() or 0)
            if off in wanted.get(tp, ()):
                out.append(decoder.decode(m.value()))
            if off >= left.get(tp, off + 1):
                del left[tp]
    finally:
        c.close()
    return out


def _projected(conn: psycopg.Connection[Any], ev: dict[str, Any]) -> str:
    """How the projections settled `ev`, as its entity's row and the refusals record it."""
    ent = entity_of(ev)
    if ent is None:
        return "not projected (checked for dead letters only)"
    table, key_col, key = ent
    row = conn.execute(
        f"SELECT version_at, version_id FROM {table} WHERE {key_col} = %s",  # noqa: S608
        (key,),
    ).fetchone()
    refusal = conn.execute(
        "SELECT error_class, reason FROM projection_refusals WHERE event_id = %s::uuid",
        (str(ev["id"]),),
    ).fetchone()
    mine = version_of(ev)
    if row is not None and (row[0], row[1]) == mine:
        return "applied"
    if row is not None and (row[0], row[1]) > mine:
        return "superseded by a later event"
    if refusal is not None and refusal[0] == "IllegalTransition":
        return "refused by a lifecycle rule"
    if table == "sessions" and refusal is None:
        cleaned = conn.execute(
            "SELECT max(cutoff) FROM job_runs WHERE job = 'expired_sessions'"
        ).fetchone()
        if cleaned is not None and cleaned[0] is not None:
            return "skipped: a session a cleanup removed"
    return f"NOT SETTLED: row {row}, refusal {refusal}"


def _dead_letters(p: Pipeline, ids: set[str]) -> list[dict[str, str]]:
    """The headers of every dead letter naming one of `ids`, of every event topic."""
    out = []
    for t in TOPICS.values():
        out.extend(h for h in p.dead_letters(t.name) if h.get("x-event-id") in ids)
    return out
