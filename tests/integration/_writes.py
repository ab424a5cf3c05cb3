"""What the API wrote to the event topics meanwhile: end offsets before and after, and the
records between them that came from a request (not the ones workers derived)."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition

from core.settings import Settings
from schemas.catalog import TOPICS

__all__ = ["end_offsets", "written_by_the_api"]


def end_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    """Every event topic's partitions' end offsets."""
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "offsets-probe"})
    try:
        out = {}
        for t in TOPICS.values():
            for p in range(t.partitions):
                _, high = c.get_watermark_offsets(TopicPartition(t.name, p), timeout=10)
                out[(t.name, p)] = high
        return out
    finally:
        c.close()


def written_by_the_api(
    settings: Settings,
    before: dict[tuple[str, int], int],
    after: dict[tuple[str, int], int],
    ids: set[str],
    sources: set[str],
    prefixes: tuple[str, ...] = ("api:",),
) -> list[str]:
    """The records between `before` and `after` the API wrote: an id the cases posted, a source
    one of them set, or a source the API gives (`prefixes`: `api:<key name>` by default)."""
    from schemas.codec import RegistryDecoder
    from schemas.registry import SchemaRegistry

    decoder = RegistryDecoder(SchemaRegistry(settings.registry_url).schema_by_id)
    grown = {
        tp: (before.get(tp, 0), high) for tp, high in after.items() if high > before.get(tp, 0)
    }
    if not grown:
        return []
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "offsets-probe-read"})
    found = []
    try:
        c.assign([TopicPartition(t, p, low) for (t, p), (low, _) in grown.items()])
        left = {tp: high for tp, (_, high) in grown.items()}
        deadline = time.monotonic() + 30
        while left and time.monotonic() < deadline:
            m = c.poll(1)
            if m is None or m.error():
                continue
            tp = (str(m.topic()), int(m.partition() or 0))
            if (m.offset() or 0) >= left.get(tp, 0) - 1:
                left.pop(tp, None)
            ev = decoder.decode(m.value())
            source = str(ev.get("source", ""))
            if str(ev["id"]) in ids or source in sources or source.startswith(prefixes):
                found.append(f"{tp[0]}/{tp[1]}@{m.offset()}: {ev['type']} from {ev['source']}")
        assert not left, f"could not read what the topics gained: {left}"
    finally:
        c.close()
    return found
