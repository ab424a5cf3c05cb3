"""faust's table, restored from its changelog in the order its writers' generations allow (see
`streams.transport.fence.ChangelogOrder`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import faust
from faust.types import TP, EventT

from streams.transport.fence import ChangelogOrder

__all__ = ["Table"]


class Table(faust.Table[Any, Any]):
    """A faust table whose restore skips a paused worker's late changelog records."""

    @property
    def changelog_order(self) -> ChangelogOrder:
        order: ChangelogOrder | None = self.__dict__.get("_changelog_order")
        if order is None:
            order = self.__dict__["_changelog_order"] = ChangelogOrder()
        return order

    def _on_changelog_sent(self, fut: Any) -> None:
        # faust moves the store's restore position to each own record as it is delivered; the
        # order learns the record's generation, so a restore from there skips a zombie's late
        # record of an older one (created before this worker's first)
        super()._on_changelog_sent(fut)
        result = fut.result()
        stamp = result.timestamp
        self.changelog_order.wrote(
            result.topic_partition,
            fut.message.headers,
            None if stamp is None or stamp < 0 else stamp / 1000,
        )

    def apply_changelog_batch(self, batch: Iterable[EventT[Any]]) -> None:
        order = self.changelog_order
        kept: list[EventT[Any]] = []
        skipped: dict[TP, int] = {}
        for event in batch:
            message = event.message
            if order.admit(message.tp, message.headers, message.timestamp):
                kept.append(event)
            else:
                skipped[message.tp] = max(skipped.get(message.tp, -1), message.offset)
        super().apply_changelog_batch(kept)
        for tp, offset in skipped.items():
            # the store's restore position moves past a skipped record as past an applied one:
            # a later restore from there does not meet it again
            current = self.data.persisted_offset(tp)
            if current is None or current < offset:
                self.data.set_persisted_offset(tp, offset)
