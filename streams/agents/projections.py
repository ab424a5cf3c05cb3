"""projections: the projections role's agents (`persist_<category>s`), one per entity topic,
writing PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import faust

from connectors.postgres import PostgresProjections
from schemas.catalog import TOPICS
from streams.agents._batches import raw_batches, raw_topic, settle
from streams.reliability import Record, Rejection, redrive_topic

if TYPE_CHECKING:
    from streams.runtime import Runtime

__all__ = ["install"]

#: the topics the projections read (analytics, notification, search, cleanup have other roles)
CATEGORIES = ("user", "shop", "shopkeeper", "product", "order")


def install(rt: Runtime) -> None:
    app: faust.App = rt.app
    size, within = rt.settings.worker_batch_size, rt.settings.worker_batch_window_s

    for category in CATEGORIES:
        name = TOPICS[category].name
        # a connection per agent: the agents run concurrently, each batch one transaction
        sink = PostgresProjections(rt.settings.postgres_dsn)
        guard = rt.guard(
            f"persist_{category}s",
            # the read side waits for the projections to apply an event, unless it is refused
            on_dead_letter=lambda r, cls, msg, sink=sink: sink.record_refusal(r.event, cls, msg),
        )

        async def write(records: list[Record], sink: PostgresProjections = sink) -> list[Rejection]:
            refused = await sink.write_batch([r.event for r in records])
            return [Rejection(records[f.index], f.reason) for f in refused]

        async def persist(
            stream: faust.StreamT[Any], guard: Any = guard, write: Any = write
        ) -> None:
            async for events, records in raw_batches(stream, size, within):
                await settle(events, guard.process(records, write))

        app.agent(raw_topic(app, name, redrive_topic(name)), name=f"persist_{category}s")(persist)
