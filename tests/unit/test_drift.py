"""The data-sync check's judgements and its rule that lag is never drift (connectors.drift),
without a network: the probes' comparisons on hand-made entries, and the check's passes with
stand-ins for the stores and the consumer groups."""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import fastavro
import orjson
import pytest

from connectors.drift import CacheProbe, Finding, SearchProbe, StoreReport, check, drift_event
from connectors.views import View
from schemas.catalog import EVENT_TYPES
from schemas.codec import EventCodec
from streams.sync_check import outcome_code

V1 = ("00001796600000000000:aaaa", "00000000000000000001")
V2 = ("00001796600000000000:aaaa", "00000000000000000002")


def _view(version: tuple[str, ...] = V1, gone: bool = False, **doc: Any) -> View:
    return View(
        "product", "prd_1", version, {"product_id": "prd_1", "price_paise": 100, **doc}, gone
    )


def _entry(view: View, **over: Any) -> dict[bytes, bytes]:
    payload = b"" if view.gone else view.payload()
    out = {b"p": payload}
    for i, v in enumerate(view.version, 1):
        out[f"v{i}".encode()] = v.encode()
    out.update({k.encode(): v for k, v in over.items()})
    return out


def _judge(view: View | None, entry: dict[bytes, bytes], recent: bool = True) -> Finding | None:
    return CacheProbe.judge(None, "product", "prd_1", view, entry, recent)  # type: ignore[arg-type]


def test_the_cache_entry_of_the_same_version_and_content_agrees() -> None:
    v = _view()
    assert _judge(v, _entry(v)) is None
    gone = _view(gone=True)
    assert _judge(gone, _entry(gone)) is None  # a tombstone where a tombstone belongs


def test_the_same_version_with_other_content_is_different_and_names_the_fields() -> None:
    v = _view()
    f = _judge(v, _entry(v, p=orjson.dumps({**v.doc, "price_paise": 1})))
    assert f is not None and f.problem == "DIFFERENT"
    assert f.detail == "fields that differ: price_paise"
    tomb = _judge(v, _entry(v, p=b""))
    assert tomb is not None and tomb.problem == "DIFFERENT" and "tombstone" in tomb.detail


def test_an_older_version_is_stale_and_one_postgresql_never_had_is_different() -> None:
    new, old = _view(V2), _view(V1)
    stale = _judge(new, _entry(old))
    assert stale is not None and stale.problem == "STALE"
    assert stale.expected == "|".join(V2) and stale.found == "|".join(V1)
    ahead = _judge(old, _entry(new))
    assert ahead is not None and ahead.problem == "DIFFERENT"


def test_an_absent_entry_is_missing_only_for_a_row_changed_within_the_ttl() -> None:
    v = _view()
    missing = _judge(v, {}, recent=True)
    assert missing is not None and missing.problem == "MISSING" and missing.found is None
    assert _judge(v, {}, recent=False) is None  # it may have expired
    extra = _judge(None, _entry(v))
    assert extra is not None and extra.problem == "EXTRA" and extra.expected is None
    assert _judge(None, {}) is None


def test_search_documents_are_judged_by_presence_and_content() -> None:
    doc = {"id": "prd_1", "name": "Toor Dal", "updated_at": 20}
    judge = SearchProbe.judge
    assert judge("product", "prd_1", doc, dict(doc)) is None
    assert judge("product", "prd_1", None, None) is None
    missing = judge("product", "prd_1", doc, None)
    assert missing is not None and missing.problem == "MISSING"
    extra = judge("product", "prd_1", None, doc)
    assert extra is not None and extra.problem == "EXTRA"
    stale = judge("product", "prd_1", doc, {**doc, "name": "Old", "updated_at": 10})
    assert stale is not None and stale.problem == "STALE"
    assert stale.detail == "fields that differ: name, updated_at"
    other = judge("product", "prd_1", doc, {**doc, "name": "Tampered"})
    assert other is not None and other.problem == "DIFFERENT"


def test_a_drift_event_is_valid_avro_and_the_same_drift_has_the_same_id() -> None:
    f = Finding(
        "redis", "product", "prd_1", "STALE", "|".join(V2), "|".join(V1), "an older version"
    )
    at = datetime(2026, 12, 7, tzinfo=UTC)
    ev = drift_event(f, trigger="SCHEDULE", check_id="c1", at=at)
    assert ev["id"] == drift_event(f, trigger="OPERATOR", check_id="c2")["id"]
    assert ev["id"] != Finding("redis", "product", "prd_1", "STALE", "x", "y").event_id()
    et = EVENT_TYPES["ops.drift_detected"]
    raw = EventCodec(et.schema).encode(7, {**ev, "source": "mohallamart-jobs"})
    back = fastavro.schemaless_reader(io.BytesIO(raw[5:]), fastavro.parse_schema(et.schema))
    assert back["data"]["store"] == "REDIS" and back["data"]["problem"] == "STALE"  # type: ignore[index, call-overload]


# --- the check's passes, with stand-ins --------------------------------------------------------
class _Offsets:
    """A consumer group that is `behind` records behind for `rounds` asks, then caught up."""

    def __init__(self, behind: int, rounds: int = 10**9) -> None:
        self.behind, self.rounds = behind, rounds

    async def ends(self, topics: Sequence[str]) -> dict[tuple[str, int], int]:
        return {(t, 0): 100 for t in topics}

    async def committed(self, group: str, tps: Any) -> dict[tuple[str, int], int]:
        self.rounds -= 1
        lag = self.behind if self.rounds >= 0 else 0
        return {tp: 100 - lag for tp in tps}


class _Probe:
    """A store of one kind whose first and second comparisons are given."""

    store, role, kinds, categories = "redis", "cache", ("product",), ("product",)

    def __init__(self, passes: list[dict[str, tuple[Finding | None, Any]]]) -> None:
        self.passes = passes
        self.repaired: list[Finding] = []

    async def prepare(self, conn: Any, report: StoreReport) -> None:
        return None

    async def store_ids(self, kind: str) -> set[str]:
        return set(self.passes[0])

    async def compare(
        self, conn: Any, kind: str, ids: Sequence[str]
    ) -> dict[str, tuple[Finding | None, Any]]:
        now = self.passes[0] if len(self.passes) == 1 else self.passes.pop(0)
        return {i: now.get(i, (None, "fp")) for i in ids}

    async def repair(self, conn: Any, findings: list[Finding]) -> None:
        self.repaired.extend(findings)


class _Conn:
    """Answers the check's count and id queries with `rows` ids (none by default: the store's
    ids only), and keeps the statements."""

    def __init__(self, rows: int = 0) -> None:
        self.rows = rows
        self.statements: list[str] = []

    async def execute(self, sql: str, params: Any = None) -> Any:
        self.statements.append(sql)
        rows = self.rows

        class _Cur:
            async def fetchone(self) -> tuple[int]:
                return (rows,)

            async def fetchall(self) -> list[Any]:
                return [(f"p{i}",) for i in range(min(rows, 10))]

        return _Cur()


def _f(i: str, problem: str = "STALE") -> Finding:
    return Finding("redis", "product", i, problem, "v2", "v1")


async def _run(probe: Any, offsets: _Offsets, **kw: Any) -> StoreReport:
    return (await _run_all([probe], offsets, **kw))[0]


async def _run_all(probes: list[Any], offsets: _Offsets, **kw: Any) -> list[StoreReport]:
    return await check(
        kw.pop("conn", _Conn()),
        probes,
        offsets,  # type: ignore[arg-type]
        group_of=lambda role: f"g-{role}",
        topics_of=list,
        sample=kw.pop("sample", 0),
        wait_s=kw.pop("wait_s", 0.0),
        **kw,
    )


async def test_a_difference_while_the_role_is_behind_is_unverified_never_drift() -> None:
    probe = _Probe([{"a": (_f("a"), "fp-a"), "b": (None, "fp-b")}])
    report = await _run(probe, _Offsets(behind=5))
    assert report.drift == [] and [f.entity_id for f in report.unverified] == ["a"]
    assert report.behind == 5
    assert outcome_code([report], repaired=False) == 3


async def test_once_caught_up_what_still_differs_the_same_way_is_drift_and_lag_is_not() -> None:
    first = {
        "lag": (_f("lag"), "fp1"),
        "drift": (_f("drift", "DIFFERENT"), "fp1"),
        "moving": (_f("moving"), "fp1"),
    }
    second = {
        "lag": (None, "fp1"),  # the role wrote it meanwhile
        "drift": (_f("drift", "DIFFERENT"), "fp1"),
        "moving": (_f("moving"), "fp2"),  # PostgreSQL changed it during the check
    }
    probe = _Probe([first, second])
    report = await _run(probe, _Offsets(behind=3, rounds=2), wait_s=5.0)
    assert report.behind == 0 and report.unverified == []
    assert [f.entity_id for f in report.drift] == ["drift"]
    assert report.moving == 1
    assert outcome_code([report], repaired=False) == 1


async def test_repair_rewrites_the_drifted_and_compares_them_again() -> None:
    drifted = {"a": (_f("a", "DIFFERENT"), "fp")}
    probe = _Probe([drifted, drifted, drifted, {"a": (None, "fp")}])
    report = await _run(probe, _Offsets(behind=0), repair=True)
    assert [f.entity_id for f in probe.repaired] == ["a"]
    assert report.repaired == 1 and report.still_drifted == 0
    assert outcome_code([report], repaired=True) == 0


@pytest.mark.parametrize("behind", [0, 7])
async def test_nothing_differs_nothing_is_waited_for(behind: int) -> None:
    probe = _Probe([{"a": (None, "fp")}])
    report = await _run(probe, _Offsets(behind=behind), wait_s=30.0)
    assert report.drift == [] and report.unverified == [] and report.behind == 0


async def test_a_store_ahead_of_a_postgresql_that_moved_on_is_the_role_at_work_not_drift() -> None:
    ahead = Finding("redis", "product", "a", "DIFFERENT", "v2", "v3", "a version PostgreSQL lacks")
    first = {"a": (_f("a"), "fp-v2")}  # the store held v1
    second = {"a": (ahead, "fp-v2")}  # read v2 from PostgreSQL, then the store had v3
    third = {"a": (_f("a", "STALE"), "fp-v4")}  # PostgreSQL moved on again
    report = await _run(_Probe([first, second, third]), _Offsets(behind=0))
    assert report.drift == [] and report.moving == 1


def test_a_cached_value_that_is_not_a_json_object_is_reported_not_a_crash() -> None:
    v = _view()
    for junk, what in ((b"garbage", "not JSON"), (b"[1]", "not an object")):
        f = _judge(v, _entry(v, p=junk))
        assert f is not None and f.problem == "DIFFERENT" and what in f.detail
    other = _judge(v, _entry(v, p=b"\xff\xfe"))
    assert other is not None and other.problem == "DIFFERENT"


def test_the_event_id_tells_two_tamperings_of_one_version_apart() -> None:
    v = _view()
    one = _judge(v, _entry(v, p=orjson.dumps({**v.doc, "price_paise": 1})))
    two = _judge(v, _entry(v, p=orjson.dumps({**v.doc, "price_paise": 2})))
    again = _judge(v, _entry(v, p=orjson.dumps({**v.doc, "price_paise": 1})))
    assert one is not None and two is not None and again is not None
    assert one.event_id() != two.event_id() and one.event_id() == again.event_id()


async def test_one_store_down_leaves_the_others_report_whole() -> None:
    from connectors.base import DependencyDown

    class _Down(_Probe):
        store = "typesense"

        async def store_ids(self, kind: str) -> set[str]:
            raise DependencyDown("Typesense: ConnectError")

    good = _Probe([{"a": (_f("a", "DIFFERENT"), "fp")}])
    reports = await _run_all([_Down([{}]), good], _Offsets(behind=0))
    assert reports[0].error.startswith("DependencyDown") and reports[0].drift == []
    assert [f.entity_id for f in reports[1].drift] == ["a"]
    assert outcome_code(reports, repaired=False) == 4


async def test_above_the_sample_size_a_kind_is_sampled_and_says_so() -> None:
    from streams.sync_check import report_lines

    held = {f"s{i}": (None, "fp") for i in range(50)}
    conn = _Conn(rows=100)
    report = await _run(_Probe([held]), _Offsets(behind=0), conn=conn, sample=10)
    assert report.sampled == {"product"} and report.total == {"product": 100}
    assert any("TABLESAMPLE" in q for q in conn.statements)
    # 10 rows of the table's sample, 10 of the store's 50 entries
    assert report.checked == {"product": 20}
    assert "products 20 (a random sample; 100 rows)" in "\n".join(report_lines([report]))
