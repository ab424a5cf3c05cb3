"""The sink contract's two sides without a destination: how the runtime reads outcomes
(`streams.sinks.rejections`) and how a sending sink reports them (`connectors.base.send_all`)."""

from __future__ import annotations

import asyncio

import pytest

from connectors.base import APPLIED, DependencyDown, Outcome, down, refused, send_all
from streams.reliability import Record
from streams.sinks import rejections


def _record(offset: int) -> Record:
    return Record("t", 0, offset, b"k", b"v", {}, 0, event={"id": str(offset)})


def test_refused_items_become_rejections_with_their_reason_and_class() -> None:
    records = [_record(i) for i in range(3)]
    out = rejections(records, [APPLIED, refused("no such address", "EmailRefused"), APPLIED])
    assert [(r.record.offset, r.reason, r.error_class) for r in out] == [
        (1, "no such address", "EmailRefused")
    ]


def test_one_item_down_puts_the_batch_down() -> None:
    with pytest.raises(DependencyDown, match="SMTP: refused"):
        rejections([_record(0), _record(1)], [APPLIED, down("SMTP: refused")])


def test_a_sink_that_answers_for_fewer_items_is_a_bug_not_an_outcome() -> None:
    with pytest.raises(RuntimeError, match="1 outcomes for 2 items"):
        rejections([_record(0), _record(1)], [APPLIED])


class Refused(Exception):
    pass


def test_send_all_reports_each_outcome_as_it_is_known_in_the_items_order() -> None:
    seen: list[tuple[int, str]] = []

    async def send(item: object) -> None:
        await asyncio.sleep(0.01 * (3 - int(str(item))))  # the last one ends first
        if item == 1:
            raise Refused("550 no such user")
        if item == 2:
            raise DependencyDown("SMTP: connection refused")

    async def settled(i: int, o: Outcome) -> None:
        seen.append((i, o.status))

    out = asyncio.run(send_all([0, 1, 2], send, Refused, settled))
    assert [o.status for o in out] == ["applied", "refused", "down"]
    assert out[1] == refused("550 no such user", "Refused")
    assert seen == [(2, "down"), (1, "refused"), (0, "applied")]


def test_send_all_raises_an_unexpected_error_once_every_send_has_ended() -> None:
    seen: list[int] = []

    async def send(item: object) -> None:
        if item == 0:
            raise KeyError("a bug")
        await asyncio.sleep(0.01)

    async def settled(i: int, o: Outcome) -> None:
        seen.append(i)

    with pytest.raises(KeyError):
        asyncio.run(send_all([0, 1, 2], send, Refused, settled))
    assert sorted(seen) == [1, 2]  # the others were sent and settled, not abandoned
