"""projections: the projections role's agents (`persist_<category>s`), one per entity topic,
each driving a `PostgresProjections` sink of its own (a connection per agent: the agents run
concurrently, each batch one transaction)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from connectors.postgres import PostgresProjections
from schemas.catalog import TOPICS
from streams.reliability import Record
from streams.sinks import install_sink

if TYPE_CHECKING:
    from streams.runtime import Runtime

__all__ = ["install"]

#: the topics the projections read (analytics, notification, search, cleanup have other roles)
CATEGORIES = ("user", "shop", "shopkeeper", "product", "order")


def install(rt: Runtime) -> None:
    for category in CATEGORIES:
        sink = PostgresProjections(rt.settings.postgres_dsn)

        # the read side waits for the projections to apply an event, unless it is refused
        async def refused(r: Record, cls: str, msg: str, sink: PostgresProjections = sink) -> None:
            await sink.record_refusal(r.event, cls, msg)

        install_sink(
            rt,
            f"persist_{category}s",
            TOPICS[category].name,
            sink,
            on_dead_letter=refused,
            positions=True,
        )
