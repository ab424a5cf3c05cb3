"""The analytics role's two steps as plain code (no Kafka, no tables): what the router makes of a
source event, and what a window stage partition does with what it is sent.

**Router** (`contributions`): an order or `analytics.tracked` event becomes contributions, each
`(aggregate, key, event time, values)`:

- `sales` (windows `sales_1m`, `sales_1h`, `sales_1d`), key: shop id; from `order.accepted`,
  `order.cancelled`, `order.refunded` (`streams.sales`: the order's state decides); revenue_paise,
  orders, items, cancelled_paise, cancelled_orders, refunded_paise;
- `trending`, key `<shop id>/<product id>`; from `order.accepted` (each product once); units,
  orders;
- `search_terms`, key: the search text (trimmed, lower case, spaces collapsed); from
  `analytics.tracked` SEARCH and SEARCH_RESULT_CLICKED with a query; searches, clicks;
- `sessions`, key: session id; from `analytics.tracked`; `streams.funnel.session_values`, and
  `shop:<id>` per event naming a shop.

**Stage partition** (`StagePartition`): the window state of one partition of the by-key topic: its
source partitions' watermarks (`Watermarks`: the stage's is their minimum), the router positions
it applied (a copy the router forwarded again is skipped), and one `Windows` per window kind.
`take` applies one by-key item (a contribution or a mark; a copy skipped by its position);
`close` advances the windows to the stage's watermark and answers
what became final. `entries` gives the table entries of the keys that changed (one per window
kind and key), `load` puts them back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from schemas.partitioner import partition_for
from streams.funnel import session_values
from streams.sales import OrderSales, contribution
from streams.windows import MINUTE_MS, Final, Hopping, Late, Sessions, Tumbling, Windows

__all__ = [
    "AGGREGATES",
    "Bundles",
    "Contribution",
    "Journal",
    "StagePartition",
    "contributions",
    "items_of",
    "journal_key",
    "partition_of",
    "position",
    "replay",
    "search_term",
    "window_kinds",
]

#: aggregate -> the window kinds it feeds
AGGREGATES: dict[str, tuple[str, ...]] = {
    "sales": ("sales_1m", "sales_1h", "sales_1d"),
    "trending": ("trending",),
    "search_terms": ("search_terms",),
    "sessions": ("sessions",),
}
#: the event types the router reads
ROUTED = frozenset({"order.accepted", "order.cancelled", "order.refunded", "analytics.tracked"})


def window_kinds(
    grace_s: Mapping[str, float], session_gap_s: float
) -> dict[str, Tumbling | Hopping | Sessions]:
    """Every window kind, with its grace."""
    g = {k: int(v * 1000) for k, v in grace_s.items()}
    return {
        "sales_1m": Tumbling("sales_1m", "minute", g["sales_1m"]),
        "sales_1h": Tumbling("sales_1h", "hour", g["sales_1h"]),
        "sales_1d": Tumbling("sales_1d", "day", g["sales_1d"]),
        "trending": Hopping("trending", 60 * MINUTE_MS, 5 * MINUTE_MS, g["trending"]),
        "search_terms": Hopping("search_terms", 60 * MINUTE_MS, 5 * MINUTE_MS, g["search_terms"]),
        "sessions": Sessions("sessions", int(session_gap_s * 1000), g["sessions"]),
    }


@dataclass(frozen=True)
class Contribution:
    aggregate: str
    key: str
    at_ms: int
    values: dict[str, int]


_SPACES = re.compile(r"\s+")


def search_term(query: str) -> str:
    """A search's text as counted: trimmed, lower case, inner spaces collapsed, at most 100
    characters."""
    return _SPACES.sub(" ", query.strip().lower())[:100]


def _ms(at: Any) -> int:
    return int(at.timestamp() * 1000) if isinstance(at, datetime) else int(at)


def contributions(
    event: Mapping[str, Any], order: OrderSales | None
) -> tuple[OrderSales | None, list[Contribution]]:
    """What `event` adds to the windows, and its order's sales state after it (order events;
    `order` is that state before it, None for other events)."""
    t = event["type"]
    d = event["data"]
    at = _ms(event["occurred_at"])
    if t == "analytics.tracked":
        values = session_values(event)
        if d.get("shop_id"):
            values[f"shop:{d['shop_id']}"] = 1
        out = [Contribution("sessions", str(d["session_id"]), at, values)]
        query = d.get("query")
        if query and d["kind"] in ("SEARCH", "SEARCH_RESULT_CLICKED"):
            term = search_term(str(query))
            if term:
                counted = "searches" if d["kind"] == "SEARCH" else "clicks"
                out.append(Contribution("search_terms", term, at, {counted: 1}))
        return order, out
    new, sale = contribution(order, event)
    if sale is None:
        return new, []
    out = [Contribution("sales", sale.shop, sale.at_ms, dict(sale.values))]
    if t == "order.accepted":
        units: dict[str, int] = {}
        for item in d["items"]:
            pid = str(item["product_id"])
            units[pid] = units.get(pid, 0) + int(item["quantity"])
        for pid, n in sorted(units.items()):
            out.append(
                Contribution("trending", f"{sale.shop}/{pid}", at, {"units": n, "orders": 1})
            )
    return new, out


def position(routed_from: str) -> tuple[str, tuple[int, int]]:
    """(router input partition, (offset, index)) of a header `x-routed-from`:
    `<topic>:<partition>:<offset>:<index>` (the index of a record among those one source record
    made; a tick's marks come after every record of its offset)."""
    rest, _, index = routed_from.rpartition(":")
    source, _, offset = rest.rpartition(":")
    return source, (int(offset), int(index))


def partition_of(key: str, parts: int) -> int:
    """The by-key partition of a contribution's key (`<aggregate>:<key>`): Kafka's default
    partitioner, so a key stays where the records the router sent one by one went."""
    return partition_for(key, parts)


#: a journal record's entries at most about this many bytes of JSON (a changelog record's limit
#: is 16 MiB: `streams.app.CHANGELOG_MAX_BYTES`)
JOURNAL_CHUNK_BYTES = 4 * 1024 * 1024

#: a bundle record's value at most about this many bytes (a Kafka record's limit is 1 MiB)
BUNDLE_BYTES = 256 * 1024


class Bundles:
    """What a router batch sends to the by-key topic: per partition, its items (contributions
    and marks, each a JSON object with its position `o` offset, `i` index) in order, shipped as
    **bundle** records `{"b": [item, ...]}` of at most `BUNDLE_BYTES` (one record per partition
    and batch instead of one per contribution: the window stage's per-record cost was most of
    the role's)."""

    def __init__(self, parts: int, limit: int = BUNDLE_BYTES) -> None:
        self.parts, self.limit = parts, limit
        self.open: dict[int, tuple[list[bytes], int, int]] = {}  # items, bytes, latest time
        self.full: list[tuple[int, bytes, int]] = []

    def add(self, partition: int, item: Mapping[str, Any], at_ms: int) -> None:
        encoded = orjson.dumps(item)
        items, size, top = self.open.get(partition, ([], 0, -1))
        if items and size + len(encoded) + 1 + _WRAPPER > self.limit:
            self.full.append((partition, _bundle(items), top))
            items, size, top = [], 0, -1
        items.append(encoded)
        self.open[partition] = (items, size + len(encoded) + 1, max(top, at_ms))

    def add_to_all(self, item: Mapping[str, Any], at_ms: int) -> None:
        for p in range(self.parts):
            self.add(p, item, at_ms)

    def take(self) -> list[tuple[int, bytes, int]]:
        """The bundle records, (partition, value, timestamp ms: the latest item's time), in
        order within each partition; empties the bundles."""
        out = self.full + [(p, _bundle(items), top) for p, (items, _, top) in self.open.items()]
        self.open, self.full = {}, []
        return out


_WRAPPER = len(b'{"b":[]}')


def _bundle(items: list[bytes]) -> bytes:
    return b'{"b":[' + b",".join(items) + b"]}"


def items_of(value: bytes | None, routed_from: str | None) -> list[dict[str, Any]]:
    """The items of a by-key record: a bundle's, or the one contribution or mark of a record
    written one by one (before bundles; its position in the header `x-routed-from`)."""
    record = orjson.loads(value or b"{}")
    if "b" in record:
        return list(record["b"])
    if routed_from is not None:
        _, (record["o"], record["i"]) = position(routed_from)
    return [record]


@dataclass
class LateEvent:
    late: Late
    event_id: str
    event_type: str
    values: dict[str, int]


class StagePartition:
    """One by-key partition's window state (see the module's doc)."""

    def __init__(
        self,
        kinds: Mapping[str, Tumbling | Hopping | Sessions],
        sources: Iterable[str],
        marker: Mapping[str, Any] | None = None,
    ) -> None:
        self.kinds = kinds
        self.windows = {name: Windows(kind) for name, kind in kinds.items()}
        self.sources: dict[str, int] = dict.fromkeys(sources, -1)
        self.routed: dict[str, list[int]] = {}
        self.offset = -1
        if marker is not None:
            self.offset = int(marker["offset"])
            self.routed = {k: list(v) for k, v in marker.get("routed", {}).items()}
            for src, wm in marker.get("sources", {}).items():
                self.sources[src] = max(self.sources.get(src, -1), int(wm))
            wm = int(marker.get("watermark", -1))
            for w in self.windows.values():
                w.watermark = wm

    @property
    def watermark(self) -> int:
        return min(self.sources.values()) if self.sources else -1

    def marker(self) -> dict[str, Any]:
        """What the partition's marker holds besides its offset."""
        return {
            "offset": self.offset,
            "routed": self.routed,
            "sources": self.sources,
            "watermark": self.windows["sales_1m"].watermark,
        }

    def copy_of_applied(self, routed_from: str | None) -> bool:
        """Whether a record is a copy the router forwarded again (by its position, a header
        `x-routed-from`)."""
        if routed_from is None:
            return False
        source, pos = position(routed_from)
        return self.copy_of(source, pos[0], pos[1])

    def copy_of(self, source: str, offset: int, index: int) -> bool:
        """Whether an item at this position of its router input partition `source` is a copy
        the router forwarded again (at or below the highest position applied from there); if
        not, its position becomes the highest."""
        last = self.routed.get(source)
        if last is not None and (offset, index) <= (last[0], last[1]):
            return True
        self.routed[source] = [offset, index]
        return False

    def changed_keys(self) -> int:
        """How many keys changed since the last `take_changes` (over the window kinds)."""
        return sum(len(w.dirty) for w in self.windows.values())

    def take(self, item: Mapping[str, Any]) -> list[LateEvent] | None:
        """Apply a by-key item unless it is a copy (None) or has no position (applied)."""
        if "o" in item:
            source = str(item["m"] if "m" in item else item["s"])
            if self.copy_of(source, int(item["o"]), int(item["i"])):
                return None
        return self.apply(item)

    def _observe(self, source: str, wm: int) -> None:
        if wm > self.sources.get(source, -1):
            self.sources[source] = wm

    def apply(self, record: Mapping[str, Any]) -> list[LateEvent]:
        """Apply one by-key record: a mark (a source partition's watermark) or a contribution."""
        if "m" in record:
            self._observe(str(record["m"]), int(record["w"]))
            return []
        at, seen = int(record["t"]), int(record["w"])
        self._observe(str(record["s"]), max(seen, at))
        values = {str(k): int(v) for k, v in record["v"].items()}
        out = []
        for kind in AGGREGATES[record["a"]]:
            late = self.windows[kind].add(str(record["k"]), at, values, seen_ms=seen)
            if late is not None:
                out.append(LateEvent(late, str(record["e"]), str(record["y"]), values))
        return out

    def close(self) -> list[Final]:
        """Advance every window kind to the stage's watermark; what became final."""
        wm = self.watermark
        out: list[Final] = []
        for w in self.windows.values():
            out.extend(w.advance(wm))
        return out

    def take_changes(
        self,
    ) -> tuple[
        dict[str, Any],
        dict[str, set[str]],
        dict[str, list[tuple[str, int, dict[str, int]]]],
        dict[str, dict[str, dict[int, dict[str, int]]]],
    ]:
        """Since the last call: the table entries (`<kind>|<key>` -> its state, None: gone) of
        the keys that changed, those keys per window kind, the cells (tumbling windows, hopping
        panes) closed per window kind with their values, and the open cells that changed per
        window kind (key -> start -> values)."""
        entries: dict[str, Any] = {}
        dirty: dict[str, set[str]] = {}
        closed: dict[str, list[tuple[str, int, dict[str, int]]]] = {}
        changed: dict[str, dict[str, dict[int, dict[str, int]]]] = {}
        for name, w in self.windows.items():
            keys, cells = w.take_dirty()
            for key, state in w.key_states(keys).items():
                entries[f"{name}|{key}"] = state
            dirty[name], closed[name], changed[name] = keys, cells, w.take_changed()
        return entries, dirty, closed, changed

    def load(self, entries: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        """Put back table entries (`<kind>|<key>`, state)."""
        for name_key, state in entries:
            name, _, key = name_key.partition("|")
            if name in self.windows:
                self.windows[name].load_key(key, state)


@dataclass
class Journal:
    """A window stage partition's journal: the batches written since its last checkpoint.

    Each batch is **one** changelog record `j:<p>:<n>` (n counting up; several when its entries
    pass `JOURNAL_CHUNK_BYTES`, applied only whole): the partition's applied offset, router
    positions and watermarks, and the entries of the keys it changed (`writes`: table key ->
    state, None: gone). A key's own entry (`w:<p>:<kind>|<key>`) is written only at a
    **checkpoint** (every `CHECKPOINT_KEYS` keys or `CHECKPOINT_RECORDS` records): the pending
    entries, the marker `@:<p>` (the same positions, and `n`), then the journal's records
    deleted in order. One record per batch instead of one per key changed (about one per event:
    a faust changelog record costs the role some 200 us of CPU). A crash anywhere leaves a
    state `replay` completes: entries, then the journal's whole batches, in order (a key's
    latest state is in the last record naming it, never deleted before the ones below it)."""

    last: int = 0  # the last record's n
    records: list[int] = field(default_factory=list)  # the records since the checkpoint
    pending: dict[str, Any] = field(default_factory=dict)  # their writes, the latest per key
    # records a checkpoint cut short may have left (deleted by the next writer)
    stale: list[int] = field(default_factory=list)

    def batch(
        self,
        p: int,
        marker: Mapping[str, Any],
        writes: Mapping[str, Any],
        *,
        keys: int,
        records: int,
        force: bool = False,
        defer: bool = False,
        chunk_bytes: int = JOURNAL_CHUNK_BYTES,
    ) -> tuple[list[tuple[str, Any]], int | None]:
        """The table writes of partition `p`'s batch, in order (value None: delete the key),
        and the index among them where a checkpoint's entries are half written (None: no
        checkpoint). A checkpoint comes when the journal holds `keys` keys or `records`
        records (or `force`); with `defer` (another partition checkpoints in the same batch:
        one at a time, so their pauses do not add up) only at twice `keys`. Writes of more than
        `chunk_bytes` (JSON) take several records; only the last carries the positions
        (`replay` leaves out a batch whose last is missing)."""
        if not writes and not self.records:
            return [(f"@:{p}", {**marker, "n": self.last, "done": True})], None  # nothing pending
        out: list[tuple[str, Any]] = []
        chunks = _chunks(writes, chunk_bytes)
        first = self.last + 1
        for i, chunk in enumerate(chunks):
            self.last += 1
            last = i == len(chunks) - 1
            value: dict[str, Any] = {**marker, "writes": chunk} if last else {"writes": chunk}
            if len(chunks) > 1:
                value["part_of"] = first  # the batch's first record
                value["last"] = last
            out.append((journal_key(p, self.last), value))
            self.records.append(self.last)
        self.pending.update(writes)
        due = len(self.pending) >= keys or len(self.records) >= records
        if defer:
            due = len(self.pending) >= 2 * keys
        if not (force or due):
            return out, None
        half = len(out) + len(self.pending) // 2
        out += self.pending.items()
        # `from`: the journal records this checkpoint deletes are from..n
        out.append((f"@:{p}", {**marker, "n": self.last, "from": self.records[0], "done": True}))
        out += [(journal_key(p, n), None) for n in self.records]
        self.records, self.pending = [], {}
        return out, half


def _chunks(writes: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
    """`writes` cut into dicts of at most about `limit` bytes of JSON (at least one)."""
    out: list[dict[str, Any]] = [{}]
    size = 0
    for key, value in writes.items():
        n = len(key) + len(orjson.dumps(value)) + 4
        if out[-1] and size + n > limit:
            out.append({})
            size = 0
        out[-1][key] = value
        size += n
    return out


def journal_key(p: int, n: int) -> str:
    return f"j:{p}:{n:012d}"


def replay(
    entries: Mapping[str, Any],
    marker: Mapping[str, Any] | None,
    records: Iterable[tuple[str, Mapping[str, Any]]],
) -> tuple[dict[str, Any], Mapping[str, Any] | None, Journal]:
    """A partition's state from its table: the entries, the marker and the journal's records
    (key, value): (table key -> state, the positions of the last batch written, the journal)."""
    states = dict(entries)
    journal = Journal(last=int(marker.get("n", 0)) if marker else 0)
    last = marker
    parts: list[Mapping[str, Any]] = []  # the records of a batch written in several, so far
    for key, record in sorted(records, key=lambda kv: int(kv[0].rpartition(":")[2])):
        n = int(key.rpartition(":")[2])
        journal.records.append(n)  # deleted at the next checkpoint, applied or not
        journal.last = max(journal.last, n)
        if not record.get("last", True):
            parts.append(record)
            continue
        # a batch is applied whole, with its last record (the parts of a batch a crash cut
        # short are left out)
        batch = [x for x in parts if "part_of" in record and x["part_of"] == record["part_of"]]
        for piece in (*batch, record):
            writes = piece.get("writes", {})
            states.update(writes)
            journal.pending.update(writes)
        parts = []
        last = record
    return states, last, journal
