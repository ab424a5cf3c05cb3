"""The analytics role's steps as plain code (streams/analytics.py): what an event contributes,
and a window stage partition: copies skipped by position, lateness by the stamp, the watermark
the minimum of the source partitions', state put back from its table entries."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from streams.analytics import (
    Bundles,
    Contribution,
    Journal,
    StagePartition,
    contributions,
    items_of,
    partition_of,
    replay,
    search_term,
    window_kinds,
)
from streams.sales import OrderSales

GRACE = {
    "sales_1m": 5.0,
    "sales_1h": 60.0,
    "sales_1d": 300.0,
    "trending": 30.0,
    "search_terms": 30.0,
    "sessions": 300.0,
}
KINDS = window_kinds(GRACE, 1800)
SOURCES = ["o:0", "o:1"]
T0 = int(datetime(2026, 12, 6, 10, 0, tzinfo=UTC).timestamp() * 1000)


def accepted(oid: str, at_ms: int, total: int = 1000) -> dict[str, Any]:
    return {
        "id": f"acc-{oid}",
        "type": "order.accepted",
        "occurred_at": datetime.fromtimestamp(at_ms / 1000, UTC),
        "data": {
            "order_id": oid,
            "shop_id": "shop_a",
            "items": [
                {"product_id": "p1", "quantity": 2},
                {"product_id": "p2", "quantity": 1},
                {"product_id": "p1", "quantity": 1},
            ],
            "total_paise": total,
        },
    }


def test_an_accepted_order_adds_sales_and_each_product_once_to_trending() -> None:
    state, out = contributions(accepted("o1", T0), None)
    assert isinstance(state, OrderSales)
    assert out == [
        Contribution("sales", "shop_a", T0, {"revenue_paise": 1000, "orders": 1, "items": 4}),
        Contribution("trending", "shop_a/p1", T0, {"units": 3, "orders": 1}),
        Contribution("trending", "shop_a/p2", T0, {"units": 1, "orders": 1}),
    ]
    # the same event again adds nothing
    assert contributions(accepted("o1", T0), state) == (state, [])


def test_a_search_counts_for_its_session_and_its_normalised_text() -> None:
    ev = {
        "id": "e1",
        "type": "analytics.tracked",
        "occurred_at": T0,
        "data": {
            "session_id": "s1",
            "kind": "SEARCH",
            "query": "  Basmati   RICE ",
            "shop_id": "x",
        },
    }
    _, out = contributions(ev, None)
    assert out == [
        Contribution("sessions", "s1", T0, {"events": 1, "searches": 1, "shop:x": 1}),
        Contribution("search_terms", "basmati rice", T0, {"searches": 1}),
    ]
    assert search_term("\tMilk\n") == "milk"


def rec(t: int, seen: int, src: str = "o:0", key: str = "shop_a") -> dict[str, Any]:
    return {
        "a": "sales",
        "k": key,
        "t": t,
        "v": {"orders": 1},
        "w": seen,
        "s": src,
        "e": f"e{t}",
        "y": "order.accepted",
    }


def test_a_copy_forwarded_again_is_skipped_by_its_position() -> None:
    part = StagePartition(KINDS, SOURCES)
    assert not part.copy_of_applied("o:0:10:0")
    assert not part.copy_of_applied("o:0:10:1")  # the next record of the same source record
    assert part.copy_of_applied("o:0:10:0")  # forwarded again
    assert part.copy_of_applied("o:0:9:7")
    assert not part.copy_of_applied("o:1:3:0")  # another source partition: its own order
    assert not part.copy_of_applied("o:0:11:0")
    assert part.copy_of_applied(f"o:0:10:{10**13 + T0}")  # a tick's mark after offset 10


def test_the_stage_watermark_is_the_minimum_of_its_sources_and_late_is_judged_by_the_stamp() -> (
    None
):
    part = StagePartition(KINDS, SOURCES)
    assert part.apply(rec(T0 + 1000, -1)) == []
    assert part.close() == []  # o:1 has no watermark yet
    part.apply({"m": "o:1", "w": T0 + 65_000})
    assert part.watermark == T0 + 1000  # o:0 is behind
    part.apply({"m": "o:0", "w": T0 + 65_000})
    finals = part.close()
    assert [(f.window, f.start_ms) for f in finals] == [("sales_1m", T0)]
    # an event of the closed minute whose own source partition had passed end + grace: late
    late = part.apply(rec(T0 + 2000, T0 + 65_000, src="o:1"))
    assert [x.late.window for x in late] == ["sales_1m"]
    # one whose source was still within grace counts, for the windows still open
    assert part.apply(rec(T0 + 70_000, T0 + 64_000)) == []


def test_a_partition_put_back_from_its_entries_goes_on_exactly_as_before() -> None:
    a = StagePartition(KINDS, SOURCES)
    for i in range(5):
        a.apply(rec(T0 + i * 20_000, T0 + i * 20_000, src="o:0", key=f"shop_{i % 2}"))
    a.apply({"m": "o:1", "w": T0 + 10_000})
    a.close()
    entries, _, _, _ = a.take_changes()
    marker = a.marker()
    b = StagePartition(KINDS, SOURCES, marker)
    b.load((k, v) for k, v in entries.items() if v)
    for part in (a, b):
        part.apply({"m": "o:1", "w": T0 + 3_600_000 * 30})
        part.apply({"m": "o:0", "w": T0 + 3_600_000 * 30})
    fa = sorted((f.window, f.key, f.start_ms, tuple(sorted(f.values.items()))) for f in a.close())
    fb = sorted((f.window, f.key, f.start_ms, tuple(sorted(f.values.items()))) for f in b.close())
    assert fa == fb and len(fa) > 5


def test_bundles_keep_each_partitions_items_in_order_and_split_at_the_size_limit() -> None:
    out = Bundles(3, limit=200)
    for i in range(12):
        out.add(i % 2, {"s": "o:0", "o": i, "i": 0, "pad": "x" * 20}, T0 + i)
    out.add_to_all({"m": "o:0", "w": T0 + 99, "o": 12, "i": 0}, T0 + 99)
    records = out.take()
    assert out.take() == []  # taken: emptied
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for p, value, ts in records:
        assert len(value) <= 200
        items = items_of(value, None)
        assert ts == max(int(x.get("w", T0 + x["o"])) for x in items)
        by_partition.setdefault(p, []).extend(items)
    assert [x["o"] for x in by_partition[0]] == [0, 2, 4, 6, 8, 10, 12]
    assert [x["o"] for x in by_partition[1]] == [1, 3, 5, 7, 9, 11, 12]
    assert [x["o"] for x in by_partition[2]] == [12]  # the mark goes to every partition
    assert len([p for p, _, _ in records if p == 0]) > 1  # split: over 200 bytes in all


def test_a_record_written_one_by_one_is_read_as_one_item_with_its_header_position() -> None:
    (item,) = items_of(b'{"m":"o:1","w":5}', "o:1:42:3")
    assert (item["o"], item["i"]) == (42, 3)
    (plain,) = items_of(b'{"m":"o:1","w":5}', None)
    assert "o" not in plain


def test_items_of_a_bundle_applied_again_after_a_crash_are_skipped_by_their_positions() -> None:
    # a flush in the middle of a bundle keeps the bundle's offset unapplied: its first items
    # come again after a crash and are skipped, the rest apply
    items = [{**rec(T0 + i * 1000, T0 + i * 1000), "o": 7, "i": i} for i in range(4)]
    part = StagePartition(KINDS, SOURCES)
    assert all(part.take(x) == [] for x in items[:2])
    again = StagePartition(KINDS, SOURCES, part.marker())
    again.load((k, v) for k, v in part.take_changes()[0].items() if v)
    assert [again.take(x) for x in items] == [None, None, [], []]
    (entry,) = [v for k, v in again.take_changes()[0].items() if k == "sales_1m|shop_a"]
    assert entry["c"][0][1]["orders"] == 4  # each counted once


def test_a_key_goes_to_the_partition_kafkas_default_partitioner_gives_it() -> None:
    # aiokafka's own murmur2 (faust's producer chose the partitions of records sent one by
    # one): a key keeps its partition
    every = list(range(6))
    keys = [f"{a}:k{i}" for a in ("sales", "trending", "sessions") for i in range(300)]
    assert [partition_of(k, 6) for k in keys] == [
        DefaultPartitioner()(k.encode(), every, every) for k in keys
    ]


def test_a_batch_cut_in_several_records_is_replayed_whole_or_not_at_all() -> None:
    big = {f"w:0:k{i}": {"v": i, "pad": "x" * 40} for i in range(30)}
    journal = Journal()
    first, _ = journal.batch(0, {"offset": 1}, {"w:0:a": {"v": 1}}, keys=10**6, records=10**6)
    second, _ = journal.batch(0, {"offset": 2}, big, keys=10**6, records=10**6, chunk_bytes=500)
    assert len(second) > 3  # one batch, several records
    ops = first + second
    for cut in range(1, len(ops) + 1):
        got, offset, _ = _replayed(_table_after(ops[:cut]))
        if cut < len(ops):
            assert (got, offset) == ({"w:0:a": {"v": 1}}, 1), f"crash after write {cut}"
        else:
            assert (got, offset) == ({"w:0:a": {"v": 1}, **big}, 2)
    # cut short, then the next batch after a restart: the parts left over are not applied
    table = _table_after(ops[:-1])
    _, _, again = _replayed(table)
    third, _ = again.batch(0, {"offset": 2}, {"w:0:b": {"v": 1}}, keys=10**6, records=10**6)
    got, offset, _ = _replayed(_table_after([*ops[:-1], *third]))
    assert (got, offset) == ({"w:0:a": {"v": 1}, "w:0:b": {"v": 1}}, 2)
    # and a checkpoint deletes them
    fourth, half = again.batch(0, {"offset": 3}, {}, keys=10**6, records=10**6, force=True)
    assert half is not None
    left = _table_after([*ops[:-1], *third, *fourth])
    assert not [k for k in left if k.startswith("j:")]
    assert _replayed(left)[:2] == ({"w:0:a": {"v": 1}, "w:0:b": {"v": 1}}, 3)


def _table_after(ops: list[tuple[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for key, value in ops:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def _replayed(table: dict[str, Any]) -> tuple[dict[str, Any], int, Journal]:
    entries = {k: v for k, v in table.items() if k.startswith("w:0:")}
    # a store hands its keys in any order
    records = sorted(((k, v) for k, v in table.items() if k.startswith("j:0:")), reverse=True)
    states, last, journal = replay(entries, table.get("@:0"), records)
    return {k: v for k, v in states.items() if v is not None}, int(last["offset"]), journal


def test_a_journal_cut_at_any_write_replays_to_the_last_batch_written() -> None:
    # batches changing keys (one deleted), a checkpoint every 3 records: the table after
    # every prefix of the writes (a crash there) replays to the state of the last journal
    # record written, with its offset
    batches = [
        {"w:0:a": {"v": 1}, "w:0:b": {"v": 1}},
        {"w:0:a": {"v": 2}},
        {"w:0:c": {"v": 1}, "w:0:b": None},
        {"w:0:a": {"v": 3}, "w:0:d": {"v": 1}},
        {},
        {"w:0:c": {"v": 2}},
        {"w:0:e": {"v": 1}},
    ]
    journal = Journal()
    ops: list[tuple[str, Any]] = []
    expected: list[tuple[int, dict[str, Any], int]] = []  # (ops written, state, offset)
    state: dict[str, Any] = {}
    checkpoints = 0
    for offset, writes in enumerate(batches):
        out, half = journal.batch(0, {"offset": offset}, writes, keys=100, records=3)
        checkpoints += half is not None
        state = {k: v for k, v in {**state, **writes}.items() if v is not None}
        expected.append((len(ops) + 1, dict(state), offset))  # after its journal record
        ops += out
    assert checkpoints == 2
    for cut in range(1, len(ops) + 1):
        written, want, offset = [e for e in expected if e[0] <= cut][-1]
        got, got_offset, _ = _replayed(_table_after(ops[:cut]))
        assert (got, got_offset) == (want, offset), f"crash after write {cut}"
    # and the journal replayed goes on where it was: its next record follows the last
    _, _, again = _replayed(_table_after(ops))
    assert again.last == journal.last and again.records == journal.records


def test_a_checkpoint_writes_each_key_once_and_leaves_one_record_per_batch_between() -> None:
    journal = Journal()
    ops: list[tuple[str, Any]] = []
    for offset in range(10):
        out, _ = journal.batch(
            0, {"offset": offset}, {"w:0:hot": {"v": offset}}, keys=100, records=5
        )
        ops += out
    keys = [k for k, v in ops if v is not None]
    assert keys.count("w:0:hot") == 2  # once per checkpoint, not once per batch
    assert len([k for k in keys if k.startswith("j:0:")]) == 10
    assert _table_after(ops)["w:0:hot"] == {"v": 9}
    # the marker names the records its checkpoint deletes (a crash may leave some: a reader
    # that starts above n deletes them)
    markers = [v for k, v in ops if k == "@:0"]
    assert [(m["from"], m["n"]) for m in markers] == [(1, 5), (6, 10)]


def test_a_checkpoint_deferred_for_another_partitions_comes_later_or_at_twice_the_keys() -> None:
    journal = Journal()
    for offset in range(4):
        _, half = journal.batch(
            0, {"offset": offset}, {f"w:0:k{offset}": {"v": 1}}, keys=10, records=3, defer=True
        )
        assert half is None  # 4 records, 4 keys: due by records, deferred
    _, half = journal.batch(0, {"offset": 4}, {"w:0:k4": {"v": 1}}, keys=10, records=3)
    assert half is not None  # not deferred: it comes
    crowded = Journal()
    many = {f"w:0:k{i}": {"v": i} for i in range(20)}
    _, half = crowded.batch(0, {"offset": 0}, many, keys=10, records=3, defer=True)
    assert half is not None  # twice the keys: not deferred any more
