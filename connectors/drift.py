"""The data-sync check: does the Redis cache and the Typesense index agree with PostgreSQL?

Entity by entity (every entity, or a sample above `sample` rows of a kind), a *probe* renders
what the store should hold from PostgreSQL, with the read side's own code
(`connectors.views`), and compares it with what the store holds:

- Redis (`mm:view:<kind>:<id>`): the view's version and JSON. The cache expires entries
  (CACHE_TTL_S), so an absent entry is drift only when the row changed recently enough that the
  cache role's write cannot have expired yet (PostgreSQL's commit timestamps; without
  `track_commit_timestamp` absent entries are not judged).
- Typesense (`products`, `shops`): the search document, or its absence for an entity that must
  not be searchable.
- Entries the store holds for ids PostgreSQL does not have are listed too (EXTRA).

Lag is never drift. A difference is only a candidate until the role that writes the store has
committed past every record that was in its topics after the comparison (so past every event
PostgreSQL had applied when it was read); then the candidates are compared again. Drift is what
still differs while PostgreSQL renders the entity the same as the first time. An entity that
PostgreSQL renders differently the second time is changing under the check, and judged next
time. If the role does not catch up within `wait_s`, the candidates are reported as unverified,
never as drift.

`repair` re-renders drifted entities from PostgreSQL (a Redis entry deleted then written again
by compare-and-set, so a newer write of the role still wins; Typesense documents written as the
search role writes them), then compares them again.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
import psycopg
from prometheus_client import Counter, Gauge
from redis.exceptions import RedisError

from connectors.base import DependencyDown
from connectors.groups import GroupOffsets
from connectors.redis_cache import ViewCache, cache_key
from connectors.typesense import SEARCH_LOCK, CollectionMissing, SearchIndex, collections_for_write
from connectors.views import View, load_views, product_search_docs, shop_search_docs

__all__ = [
    "CacheProbe",
    "Finding",
    "Probe",
    "SearchProbe",
    "StoreReport",
    "check",
    "drift_event",
    "publish_metrics",
]

Say = Callable[[str], None]
#: (store, kind, id) -> the PostgreSQL rendering the judgement was made against
Fingerprint = Any

PROBLEMS = ("MISSING", "STALE", "DIFFERENT", "EXTRA")
#: the namespace of the drift events' ids (UUIDv5)
_DRIFT_NS = uuid.UUID("6d6d6472-6966-7400-8000-000000000001")

_TABLES = {
    "user": ("users", "user_id"),
    "shop": ("shops", "shop_id"),
    "product": ("products", "product_id"),
}
CHUNK = 500


@dataclass(frozen=True)
class Finding:
    """One entity a store holds differently from PostgreSQL."""

    store: str  # "redis" | "typesense"
    kind: str  # "user" | "shop" | "product"
    entity_id: str
    problem: str  # one of PROBLEMS
    expected: str | None  # PostgreSQL's version (None: the store should not hold it)
    found: str | None  # the store's version (None: absent)
    detail: str = ""
    #: a digest of what the store held (its content, not only its version)
    held: str = ""

    def event_id(self) -> str:
        """The same drift (the same versions and the same content held) found again by a later
        check gives the same id; a different tampering, or drift back after a repair with other
        content, gives another."""
        parts = (
            self.store,
            self.kind,
            self.entity_id,
            self.problem,
            self.expected,
            self.found,
            self.held,
        )
        return str(uuid.uuid5(_DRIFT_NS, "|".join(str(p) for p in parts)))

    def line(self) -> str:
        return (
            f"{self.problem:<9} {self.kind} {self.entity_id}: PostgreSQL {self.expected or '-'}, "
            f"{self.store} {self.found or '-'}" + (f" ({self.detail})" if self.detail else "")
        )


@dataclass
class StoreReport:
    """What one store's check found."""

    store: str
    role: str
    total: dict[str, int] = field(default_factory=dict)  # kind -> PostgreSQL rows
    checked: dict[str, int] = field(default_factory=dict)  # kind -> entities compared
    #: kinds compared by a sample (more rows, or store entries, than `sample`)
    sampled: set[str] = field(default_factory=set)
    #: why the store could not be checked (a dependency down): nothing judged
    error: str = ""
    drift: list[Finding] = field(default_factory=list)
    #: differed while the role was behind: lag, not drift
    unverified: list[Finding] = field(default_factory=list)
    #: records the role still had to read at the end of the wait
    behind: int = 0
    #: differed, but PostgreSQL changed the entity during the check: judged next time
    moving: int = 0
    repaired: int = 0
    still_drifted: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "role": self.role,
            "total": self.total,
            "checked": self.checked,
            "sampled": sorted(self.sampled),
            "error": self.error,
            "drift": [f.__dict__ for f in self.drift],
            "unverified": len(self.unverified),
            "behind": self.behind,
            "moving": self.moving,
            "repaired": self.repaired,
            "still_drifted": self.still_drifted,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


class Probe(Protocol):
    """What the check asks of one store."""

    store: str
    role: str
    kinds: tuple[str, ...]
    #: the event categories the store's role reads
    categories: tuple[str, ...]

    async def prepare(self, conn: psycopg.AsyncConnection[Any], report: StoreReport) -> None: ...

    async def store_ids(self, kind: str) -> set[str]: ...

    async def compare(
        self, conn: psycopg.AsyncConnection[Any], kind: str, ids: Sequence[str]
    ) -> dict[str, tuple[Finding | None, Fingerprint]]: ...

    async def repair(self, conn: psycopg.AsyncConnection[Any], findings: list[Finding]) -> None: ...


def _version(parts: Iterable[str]) -> str:
    return "|".join(parts)


def _diff_fields(expected: dict[str, Any], found: dict[str, Any]) -> str:
    keys = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    return ("fields that differ: " + ", ".join(keys)) if keys else ""


def _diff_payloads(want: bytes, got: bytes) -> str:
    try:
        found = orjson.loads(got)
    except orjson.JSONDecodeError:
        return "holds a value that is not JSON"
    if not isinstance(found, dict):
        return "holds JSON that is not an object"
    return _diff_fields(orjson.loads(want), found)


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _digest(b: bytes) -> str:
    return hashlib.blake2b(b, digest_size=8).hexdigest()


# --- Redis ---------------------------------------------------------------------------------------
_RECENT = {
    "user": "SELECT user_id FROM users WHERE user_id = ANY(%s) "
    "AND pg_xact_commit_timestamp(xmin) > now() - make_interval(secs => %s)",
    "shop": "SELECT s.shop_id FROM shops s LEFT JOIN shopkeepers k USING (shop_id) "
    "WHERE s.shop_id = ANY(%s) AND GREATEST(pg_xact_commit_timestamp(s.xmin), "
    "pg_xact_commit_timestamp(k.xmin)) > now() - make_interval(secs => %s)",
    "product": "SELECT product_id FROM products WHERE product_id = ANY(%s) "
    "AND pg_xact_commit_timestamp(xmin) > now() - make_interval(secs => %s)",
}


class CacheProbe:
    """The Redis cache of the views (written by the cache role)."""

    store = "redis"
    role = "cache"
    kinds: tuple[str, ...] = ("user", "shop", "product")
    categories: tuple[str, ...] = ("user", "shop", "shopkeeper", "product")

    def __init__(self, cache: ViewCache, *, ttl_s: float, margin_s: float = 120.0) -> None:
        self.cache = cache
        #: rows changed within this many seconds must have an entry (the cache role wrote it)
        self.fresh_s = max(0.0, ttl_s - margin_s)
        self.commit_times = False

    async def prepare(self, conn: psycopg.AsyncConnection[Any], report: StoreReport) -> None:
        cur = await conn.execute("SHOW track_commit_timestamp")
        row = await cur.fetchone()
        self.commit_times = row is not None and row[0] == "on" and self.fresh_s > 0
        if self.commit_times:
            report.notes.append(
                f"absent entries judged for rows changed in the last {self.fresh_s:.0f} s "
                "(older ones may have expired: CACHE_TTL_S)"
            )
        else:
            report.notes.append(
                "absent entries not judged: PostgreSQL runs without track_commit_timestamp, "
                "or CACHE_TTL_S is too short"
            )

    async def store_ids(self, kind: str) -> set[str]:
        prefix = cache_key(kind, "")
        out: set[str] = set()
        try:
            async for key in self.cache.client.scan_iter(match=prefix + "*", count=1000):
                name = _text(key) if isinstance(key, bytes) else str(key)
                out.add(name[len(prefix) :])
        except (RedisError, OSError) as exc:
            raise DependencyDown(f"Redis: {type(exc).__name__}: {exc}") from exc
        return out

    async def _entries(self, kind: str, ids: Sequence[str]) -> list[dict[bytes, bytes]]:
        try:
            async with self.cache.client.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.hgetall(cache_key(kind, i))
                return list(await pipe.execute())
        except (RedisError, OSError) as exc:
            raise DependencyDown(f"Redis: {type(exc).__name__}: {exc}") from exc

    async def compare(
        self, conn: psycopg.AsyncConnection[Any], kind: str, ids: Sequence[str]
    ) -> dict[str, tuple[Finding | None, Fingerprint]]:
        views = await load_views(conn, kind, ids)
        recent: set[str] = set()
        if self.commit_times:
            cur = await conn.execute(_RECENT[kind], (list(ids), self.fresh_s))
            recent = {r[0] for r in await cur.fetchall()}
        entries = await self._entries(kind, ids)
        out: dict[str, tuple[Finding | None, Fingerprint]] = {}
        for i, entry in zip(ids, entries, strict=True):
            view = views.get(i)
            fp = None if view is None else (view.version, view.gone, view.payload())
            out[i] = (self.judge(kind, i, view, entry, i in recent), fp)
        return out

    def judge(
        self, kind: str, i: str, view: View | None, entry: dict[bytes, bytes], recent: bool
    ) -> Finding | None:
        n = 0 if view is None else len(view.version)
        found_version: tuple[str, ...] | None = None
        if entry:
            k = 1
            parts = []
            while f"v{k}".encode() in entry:
                parts.append(_text(entry[f"v{k}".encode()]))
                k += 1
            found_version = tuple(parts)
        found = None if found_version is None else _version(found_version)
        held = _digest(entry.get(b"p", b"")) if entry else ""
        if view is None:
            if entry:
                return Finding("redis", kind, i, "EXTRA", None, found, "no such row", held)
            return None
        expected = _version(view.version)
        if not entry:
            if recent:
                return Finding("redis", kind, i, "MISSING", expected, None, "changed recently")
            return None
        assert found_version is not None
        if found_version == view.version:
            want = b"" if view.gone else view.payload()
            got = entry.get(b"p", b"")
            if got == want:
                return None
            if not want or not got:
                what = "a tombstone" if not got else "content where a tombstone belongs"
                return Finding(
                    "redis", kind, i, "DIFFERENT", expected, found, f"holds {what}", held
                )
            detail = _diff_payloads(want, got)
            return Finding("redis", kind, i, "DIFFERENT", expected, found, detail, held)
        if len(found_version) == n and all(
            f <= e for f, e in zip(found_version, view.version, strict=True)
        ):
            return Finding("redis", kind, i, "STALE", expected, found, "an older version", held)
        return Finding(
            "redis", kind, i, "DIFFERENT", expected, found, "a version PostgreSQL lacks", held
        )

    async def repair(self, conn: psycopg.AsyncConnection[Any], findings: list[Finding]) -> None:
        """Remove each entry that still holds what was found (never one the cache role has
        rewritten since), then write PostgreSQL's view by compare-and-set."""
        try:
            for f in findings:
                if f.found is not None:
                    await self.cache.client.eval(
                        _DELETE_IF_HELD, 1, cache_key(f.kind, f.entity_id), *f.found.split("|")
                    )
        except (RedisError, OSError) as exc:
            raise DependencyDown(f"Redis: {type(exc).__name__}: {exc}") from exc
        by_kind: dict[str, list[str]] = {}
        for f in findings:
            by_kind.setdefault(f.kind, []).append(f.entity_id)
        for kind, ids in by_kind.items():
            # read after the deletes: a newer write of the role meanwhile is rendered, or wins
            views = await load_views(conn, kind, ids)
            await self.cache.put(list(views.values()))


#: delete the entry if its version is still the one given (ARGV: its components)
_DELETE_IF_HELD = """
for i = 1, #ARGV do
  if redis.call('HGET', KEYS[1], 'v' .. i) ~= ARGV[i] then return 0 end
end
if redis.call('HEXISTS', KEYS[1], 'v' .. (#ARGV + 1)) == 1 then return 0 end
return redis.call('DEL', KEYS[1])
"""


# --- Typesense -----------------------------------------------------------------------------------
_ALIAS = {"product": "products", "shop": "shops"}


class SearchProbe:
    """The Typesense `products` and `shops` collections (written by the search role)."""

    store = "typesense"
    role = "search"
    kinds: tuple[str, ...] = ("shop", "product")
    categories: tuple[str, ...] = ("shop", "shopkeeper", "product", "search")

    def __init__(self, index: SearchIndex) -> None:
        self.index = index

    async def prepare(self, conn: psycopg.AsyncConnection[Any], report: StoreReport) -> None:
        return None

    async def _export(self, alias: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        resp = await self.index.request(
            "GET", f"/collections/{self.index.prefix}{alias}/documents/export", params=params
        )
        if resp.status_code == 404:
            raise CollectionMissing(f"Typesense: collection {alias} does not exist")
        if resp.status_code >= 300:
            raise DependencyDown(f"Typesense: export {alias}: HTTP {resp.status_code}")
        return [orjson.loads(x) for x in resp.content.splitlines() if x.strip()]

    async def store_ids(self, kind: str) -> set[str]:
        docs = await self._export(_ALIAS[kind], {"include_fields": "id"})
        return {str(d["id"]) for d in docs}

    async def compare(
        self, conn: psycopg.AsyncConnection[Any], kind: str, ids: Sequence[str]
    ) -> dict[str, tuple[Finding | None, Fingerprint]]:
        if kind == "product":
            rendered = await product_search_docs(conn, ids, ())
        else:
            rendered = await shop_search_docs(conn, ids)
        # as the search role sends them (JSON), so floats and ints compare as Typesense keeps them
        expected = {
            i: None if d is None else orjson.loads(orjson.dumps(d)) for i, d in rendered.items()
        }
        found: dict[str, dict[str, Any]] = {}
        for n in range(0, len(ids), 200):
            terms = ",".join("`" + x.replace("`", "") + "`" for x in ids[n : n + 200])
            for d in await self._export(_ALIAS[kind], {"filter_by": f"id:[{terms}]"}):
                found[str(d["id"])] = d
        out: dict[str, tuple[Finding | None, Fingerprint]] = {}
        for i in ids:
            want, got = expected.get(i), found.get(i)
            fp = None if want is None else orjson.dumps(want, option=orjson.OPT_SORT_KEYS)
            out[i] = (self.judge(kind, i, want, got), fp)
        return out

    @staticmethod
    def judge(
        kind: str, i: str, want: dict[str, Any] | None, got: dict[str, Any] | None
    ) -> Finding | None:
        def version(d: dict[str, Any] | None) -> str | None:
            return None if d is None else f"updated_at {d.get('updated_at')}"

        held = "" if got is None else _digest(orjson.dumps(got, option=orjson.OPT_SORT_KEYS))

        if want is None:
            if got is None:
                return None
            return Finding(
                "typesense", kind, i, "EXTRA", None, version(got), "not searchable", held
            )
        if got is None:
            return Finding("typesense", kind, i, "MISSING", version(want), None, "searchable")
        if got == want:
            return None
        problem = (
            "STALE" if int(got.get("updated_at") or 0) < int(want["updated_at"]) else "DIFFERENT"
        )
        return Finding(
            "typesense",
            kind,
            i,
            problem,
            version(want),
            version(got),
            _diff_fields(want, got),
            held,
        )

    async def repair(self, conn: psycopg.AsyncConnection[Any], findings: list[Finding]) -> None:
        """Render and write the drifted documents holding the search lock exclusively (as a
        reindex's chunks do): the search role's batches in flight finish first, and render
        after this write."""
        products = {f.entity_id for f in findings if f.kind == "product"}
        shops = {f.entity_id for f in findings if f.kind == "shop"}
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SEARCH_LOCK,))
            targets = await collections_for_write(conn)
            docs = {
                "products": await product_search_docs(conn, products, ()),
                "shops": await shop_search_docs(conn, shops),
            }
            for alias, rendered in docs.items():
                for collection in targets.get(alias, []) if rendered else []:
                    await self.index.upsert(
                        collection, [d for d in rendered.values() if d is not None]
                    )
                    await self.index.delete(
                        collection, [k for k, d in rendered.items() if d is None]
                    )


# --- the check -----------------------------------------------------------------------------------
async def _entities(
    conn: psycopg.AsyncConnection[Any],
    probe: Probe,
    kind: str,
    sample: int,
    report: StoreReport,
) -> list[str]:
    """The ids to compare: every row, or a sample of about `sample` above that; with the ids the
    store holds (sampled the same way), so entries without a row are found."""
    table, col = _TABLES[kind]
    cur = await conn.execute(f"SELECT count(*) FROM {table}")  # noqa: S608 - a fixed table
    row = await cur.fetchone()
    total = int(row[0]) if row else 0
    report.total[kind] = total
    if sample <= 0 or total <= sample:
        cur = await conn.execute(f"SELECT {col} FROM {table}")  # noqa: S608
    else:
        pct = 100.0 * sample / total
        cur = await conn.execute(
            f"SELECT {col} FROM {table} TABLESAMPLE BERNOULLI (%s)",  # noqa: S608
            (pct,),
        )
    ids = {r[0] for r in await cur.fetchall()}
    if sample > 0 and total > sample:
        report.sampled.add(kind)
    held = await probe.store_ids(kind)
    if sample > 0 and len(held) > sample:
        report.sampled.add(kind)
        held = set(random.sample(sorted(held), sample))
    # entries without a row are found among the store's ids; the rest are in `ids` already
    return sorted(ids | held)


async def _compare_all(
    conn: psycopg.AsyncConnection[Any],
    probe: Probe,
    kind: str,
    ids: Sequence[str],
    say: Say,
) -> dict[str, tuple[Finding | None, Fingerprint]]:
    out: dict[str, tuple[Finding | None, Fingerprint]] = {}
    last = time.monotonic()
    for n in range(0, len(ids), CHUNK):
        out.update(await probe.compare(conn, kind, ids[n : n + CHUNK]))
        if time.monotonic() - last >= 1.0 and n + CHUNK < len(ids):
            last = time.monotonic()
            say(f"{probe.store}: {kind}s {n + CHUNK:,} of {len(ids):,} compared")
    return out


async def caught_up(offsets: GroupOffsets, group: str, topics: Sequence[str], wait_s: float) -> int:
    """Wait until `group` has committed past everything in `topics` now; the records it still
    had to read when the wait ended (0: caught up)."""
    ends = await offsets.ends(topics)
    wanted = {tp: end for tp, end in ends.items() if end > 0}
    deadline = time.monotonic() + wait_s
    while True:
        done = await offsets.committed(group, wanted) if wanted else {}
        behind = sum(max(0, end - max(done.get(tp, -1), 0)) for tp, end in wanted.items())
        if behind == 0 or time.monotonic() >= deadline:
            return behind
        await asyncio.sleep(0.5)


async def check(
    conn: psycopg.AsyncConnection[Any],
    probes: Sequence[Probe],
    offsets: GroupOffsets,
    *,
    group_of: Callable[[str], str],
    topics_of: Callable[[Sequence[str]], list[str]],
    sample: int,
    wait_s: float,
    repair: bool = False,
    say: Say = lambda _line: None,
) -> list[StoreReport]:
    """Check each probe's store (see the module's text); with `repair`, re-render what drifted
    and compare it again."""
    reports = []
    for probe in probes:
        started = time.monotonic()
        report = StoreReport(probe.store, probe.role)
        try:
            await _check_one(conn, probe, offsets, report, group_of, topics_of, sample, wait_s, say)
            if repair and report.drift:
                await _repair(conn, probe, report)
        except (DependencyDown, CollectionMissing, psycopg.OperationalError, OSError) as exc:
            # this store is not judged; the others still are
            report.error = f"{type(exc).__name__}: {exc}"
        report.seconds = time.monotonic() - started
        reports.append(report)
    return reports


async def _check_one(
    conn: psycopg.AsyncConnection[Any],
    probe: Probe,
    offsets: GroupOffsets,
    report: StoreReport,
    group_of: Callable[[str], str],
    topics_of: Callable[[Sequence[str]], list[str]],
    sample: int,
    wait_s: float,
    say: Say,
) -> None:
    await probe.prepare(conn, report)
    first: dict[str, dict[str, tuple[Finding | None, Fingerprint]]] = {}
    for kind in probe.kinds:
        ids = await _entities(conn, probe, kind, sample, report)
        report.checked[kind] = len(ids)
        found = await _compare_all(conn, probe, kind, ids, say)
        first[kind] = {i: r for i, r in found.items() if r[0] is not None}
    candidates = sum(len(c) for c in first.values())
    if not candidates:
        return
    say(
        f"{probe.store}: {candidates} "
        + ("entity differs" if candidates == 1 else "entities differ")
        + f"; waiting (at most {wait_s:.0f} s) for the {probe.role} role to catch up "
        "before judging"
    )
    report.behind = await caught_up(
        offsets, group_of(probe.role), topics_of(probe.categories), wait_s
    )
    for kind, cands in first.items():
        if not cands:
            continue
        if report.behind:
            report.unverified.extend(f for f, _ in cands.values() if f is not None)
            continue
        # compared twice more: each comparison reads PostgreSQL, then the store, so the third
        # one's PostgreSQL read follows the second's store read; drift is what differs while
        # PostgreSQL rendered the entity the same all along (a store that moved on with a
        # PostgreSQL that changed is the role at work, not drift)
        second = await probe.compare(conn, kind, sorted(cands))
        still = sorted(i for i, (f, _) in second.items() if f is not None)
        third = await probe.compare(conn, kind, still) if still else {}
        for i in still:
            finding, fp = second[i]
            assert finding is not None
            if fp == cands[i][1] and third[i][1] == fp and third[i][0] is not None:
                report.drift.append(finding)
            else:
                report.moving += 1


async def _repair(conn: psycopg.AsyncConnection[Any], probe: Probe, report: StoreReport) -> None:
    await probe.repair(conn, report.drift)
    report.repaired = len(report.drift)
    for kind in probe.kinds:
        ids = sorted({f.entity_id for f in report.drift if f.kind == kind})
        if ids:
            left = await probe.compare(conn, kind, ids)
            report.still_drifted += sum(1 for f, _ in left.values() if f is not None)


def drift_event(
    finding: Finding, *, trigger: str, check_id: str, at: datetime | None = None
) -> dict[str, Any]:
    """The `ops.drift_detected` event of a finding (envelope without `source`)."""
    return {
        "id": finding.event_id(),
        "type": "ops.drift_detected",
        "occurred_at": at or datetime.now(UTC),
        "trace_id": check_id,
        "data": {
            "entity_id": finding.entity_id,
            "store": finding.store.upper(),
            "kind": finding.kind.upper(),
            "problem": finding.problem,
            "expected_version": finding.expected,
            "found_version": finding.found,
            "detail": finding.detail[:500],
            "detected_by": trigger,
        },
    }


# --- metrics -------------------------------------------------------------------------------------
DRIFTED = Gauge(
    "mohallamart_drift_entities",
    "Entities the last data-sync check found drifted, by store, kind and problem",
    ["store", "kind", "problem"],
)
CHECKED = Gauge(
    "mohallamart_drift_checked_entities",
    "Entities the last data-sync check compared, by store and kind",
    ["store", "kind"],
)
UNVERIFIED = Gauge(
    "mohallamart_drift_unverified_entities",
    "Entities that differed in the last check while the store's role was behind (lag, not drift)",
    ["store"],
)
CHECKS = Counter(
    "mohallamart_drift_checks_total",
    "Data-sync checks run, by outcome (clean, drift, unverified, failed: a store not reached)",
    ["outcome"],
)
LAST_CHECK = Gauge(
    "mohallamart_drift_last_check_timestamp_seconds", "When the last data-sync check ended"
)


def publish_metrics(reports: Sequence[StoreReport]) -> str:
    """Set the gauges from a check's reports; return the check's outcome."""
    for r in reports:
        for kind in r.checked:
            CHECKED.labels(r.store, kind).set(r.checked[kind])
            for problem in PROBLEMS:
                n = sum(1 for f in r.drift if f.kind == kind and f.problem == problem)
                DRIFTED.labels(r.store, kind, problem).set(n)
        UNVERIFIED.labels(r.store).set(len(r.unverified))
    LAST_CHECK.set(time.time())
    if any(r.error for r in reports):
        outcome = "failed"
    elif any(r.drift for r in reports):
        outcome = "drift"
    elif any(r.unverified for r in reports):
        outcome = "unverified"
    else:
        outcome = "clean"
    CHECKS.labels(outcome).inc()
    return outcome
