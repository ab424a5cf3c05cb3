"""The data-sync check wired from the settings: the jobs role's monitor and `mohallamart check`
run the same thing (the comparison itself is `connectors.drift`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any

import psycopg

from connectors.drift import CacheProbe, Probe, SearchProbe, StoreReport, check
from connectors.groups import GroupOffsets
from connectors.redis_cache import ViewCache
from connectors.typesense import SearchIndex
from core.settings import Settings
from schemas.catalog import TOPICS

__all__ = ["STORES", "outcome_code", "publish_drift", "report_lines", "run_check", "summary"]

#: what `--store` names
STORES = ("redis", "typesense")


async def run_check(
    settings: Settings,
    *,
    stores: Sequence[str] = STORES,
    repair: bool = False,
    sample: int | None = None,
    wait_s: float | None = None,
    say: Callable[[str], None] = lambda _line: None,
    check_id: str | None = None,
) -> tuple[str, list[StoreReport]]:
    """(check id, a report per store)."""
    cache = ViewCache(settings.redis_dsn, ttl_s=settings.cache_ttl_s, timeout_s=5.0)
    index = SearchIndex(
        settings.typesense_base_url,
        settings.typesense_api_key.get_secret_value(),
        prefix=settings.typesense_collection_prefix,
        timeout_s=30.0,
    )
    offsets = GroupOffsets(settings.kafka_bootstrap, security=settings.kafka_security)
    probes: list[Probe] = []
    if "redis" in stores:
        probes.append(CacheProbe(cache, ttl_s=settings.cache_ttl_s))
    if "typesense" in stores:
        probes.append(SearchProbe(index))
    try:
        async with await psycopg.AsyncConnection.connect(
            settings.postgres_dsn, autocommit=True, connect_timeout=10
        ) as conn:
            reports = await check(
                conn,
                probes,
                offsets,
                group_of=lambda role: f"{settings.worker_app_prefix}-{role}",
                topics_of=lambda categories: [TOPICS[c].name for c in categories],
                sample=settings.sync_check_sample if sample is None else sample,
                wait_s=settings.sync_check_wait_s if wait_s is None else wait_s,
                repair=repair,
                say=say,
            )
    finally:
        await offsets.close()
        await cache.close()
        await index.close()
    return check_id or str(uuid.uuid4()), reports


def report_lines(reports: Sequence[StoreReport], *, limit: int = 50) -> list[str]:
    """What a person reads of a check."""
    out: list[str] = []
    for r in reports:
        kinds = ", ".join(
            f"{kind}s {r.checked[kind]:,}"
            + (f" (a random sample; {r.total[kind]:,} rows)" if kind in r.sampled else "")
            for kind in r.checked
        )
        how = "a sample of each kind marked" if r.sampled else "every entity"
        out.append(f"{r.store} (written by the {r.role} role): compared {how}: {kinds}")
        out.extend(f"  note: {n}" for n in r.notes)
        if r.error:
            out.append(f"  NOT CHECKED: {r.error}")
            continue
        verdict = f"{len(r.drift)} drifted"
        if r.unverified:
            verdict += (
                f"; {len(r.unverified)} differ but are unverified: the {r.role} role is "
                f"{r.behind:,} records behind (lag, not drift)"
            )
        if r.moving:
            verdict += f"; {r.moving} changed in PostgreSQL during the check (judged next time)"
        out.append(f"  {verdict} ({r.seconds:.1f} s)")
        out.extend(f"  {f.line()}" for f in r.drift[:limit])
        if len(r.drift) > limit:
            out.append(f"  ... and {len(r.drift) - limit} more")
        if r.repaired:
            out.append(
                f"  repaired {r.repaired} from PostgreSQL; compared again: "
                f"{r.still_drifted} still differ"
            )
    return out


def outcome_code(reports: Sequence[StoreReport], *, repaired: bool) -> int:
    """0: clean (or every drift repaired), 1: drift left, 3: differences not verifiable (a role
    behind) and no drift, 4: a store could not be checked (down)."""
    if any(r.error for r in reports):
        return 4
    if any(r.still_drifted if repaired else r.drift for r in reports):
        return 1
    if any(r.unverified for r in reports):
        return 3
    return 0


def summary(check_id: str, reports: Sequence[StoreReport]) -> dict[str, Any]:
    return {"check_id": check_id, "stores": [r.summary() for r in reports]}


def publish_drift(
    settings: Settings, check_id: str, reports: Sequence[StoreReport], *, trigger: str
) -> int:
    """Produce an `ops.drift_detected` per drifted entity (from a command line: librdkafka);
    returns how many. Raises PipelineError when they cannot be delivered."""
    from confluent_kafka import Producer

    from connectors.drift import drift_event
    from connectors.kafka import producer_config
    from core.errors import PipelineError
    from schemas.catalog import EVENT_TYPES
    from schemas.codec import EventCodec
    from schemas.registry import SchemaRegistry
    from streams.tracing import origin

    findings = [f for r in reports for f in r.drift]
    if not findings:
        return 0
    et = EVENT_TYPES["ops.drift_detected"]
    sid = SchemaRegistry(settings.registry_url).register(et)
    codec = EventCodec(et.schema)
    producer = Producer(
        producer_config(
            settings.kafka_bootstrap,
            security=settings.kafka_security,
            delivery_timeout_ms=30_000,
            linger_ms=5,
            max_message_bytes=1_000_000,
        )
    )
    errors: list[str] = []
    for f in findings:
        ev = drift_event(f, trigger=trigger, check_id=check_id)
        value = codec.encode(sid, {**ev, "source": "mohallamart-cli"})
        producer.produce(
            et.topic.name,
            key=f.entity_id.encode(),
            value=value,
            timestamp=int(ev["occurred_at"].timestamp() * 1000),
            headers=[origin(ev["trace_id"], ev["id"])],  # the first hop of its own trace
            on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
        )
    if producer.flush(30) or errors:
        raise PipelineError(f"drift events not delivered: {errors[:1] or ['timed out']}")
    return len(findings)
