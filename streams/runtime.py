"""What every agent of a worker shares: the typed runtime its `install(rt)` is given."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import faust

from core.settings import Settings
from schemas.catalog import EVENT_TYPES
from schemas.codec import EventCodec, RegistryDecoder
from schemas.registry import SchemaRegistry
from streams import transport
from streams.reliability import Guard, RetryPolicy

__all__ = ["Runtime"]


@dataclass
class Runtime:
    """What every agent of a worker shares."""

    app: faust.App
    role: str
    settings: Settings
    registry: SchemaRegistry
    decoder: RegistryDecoder
    policy: RetryPolicy
    _codecs: dict[str, tuple[int, EventCodec]] = field(default_factory=dict)

    def guard(
        self,
        stage: str,
        *,
        owns_decode: bool = True,
        on_dead_letter: Any = None,
        park: bool = True,
        types: frozenset[str] | None = None,
        raw: bool = False,
    ) -> Guard:
        """The reliability mechanism for one agent; its retry delays can be set per stage. A
        stage with offset markers of its own (`park=False`) retries a record in line."""
        delays = self.settings.worker_retry_delays_by_stage.get(f"{self.role}/{stage}")
        policy = self.policy if delays is None else replace(self.policy, delays=tuple(delays))
        return Guard(
            self.app,
            role=self.role,
            stage=stage,
            decoder=self.decoder,
            policy=policy,
            owns_decode=owns_decode,
            on_dead_letter=on_dead_letter,
            refresh_metadata=self.refresh_metadata,
            park=park,
            types=types,
            raw=raw,
        )

    async def refresh_metadata(self) -> None:
        """Fetch the cluster's metadata again (when Kafka is "not ready yet")."""
        await transport.refresh_metadata(self.app)

    async def encode(
        self, type_: str, event_id: str, occurred_at: datetime, trace_id: str, data: dict[str, Any]
    ) -> tuple[str, bytes]:
        """(topic, Confluent-framed Avro value) of a derived event."""
        et = EVENT_TYPES[type_]
        known = self._codecs.get(type_)
        if known is None:
            sid = await asyncio.to_thread(self.registry.register, et)
            known = self._codecs[type_] = (sid, EventCodec(et.schema))
        sid, codec = known
        value = codec.encode(
            sid,
            {
                "id": event_id,
                "type": type_,
                "occurred_at": occurred_at,
                "source": f"mohallamart-{self.role}",
                "trace_id": trace_id,
                "data": data,
            },
        )
        return et.topic.name, value
