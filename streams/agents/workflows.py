"""workflows: the seeds' business flows as agents, each step deriving events with deterministic ids
(UUIDv5 of the cause), followed by the cause's trace id.

So far: user registration -> a WELCOME notification request.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from streams.agents._read_side import PgReader, install_agents
from streams.reliability import Record, Rejection

__all__ = ["install", "derived_id"]

_NS = uuid.UUID("6d6d6172-742d-4e6f-7469-667900000000")


def derived_id(cause_id: str, step: str) -> str:
    return str(uuid.uuid5(_NS, f"{cause_id}:{step}"))


def install(rt: Any) -> None:
    app = rt.app

    async def write(records: list[Record], db: PgReader) -> list[Rejection]:
        pending = []
        for r in records:
            ev = r.event
            if ev.get("type") != "user.registered":
                continue
            d = ev["data"]
            at = ev["occurred_at"] + timedelta(milliseconds=1)
            topic, value = await rt.encode(
                "notification.requested",
                derived_id(str(ev["id"]), "welcome"),
                at,
                ev.get("trace_id") or str(ev["id"]),
                {
                    "user_id": d["user_id"],
                    "kind": "WELCOME",
                    "channels": ["EMAIL"],
                    "title": None,
                    "body": None,
                    "params": {"name": d["name"], "email": d["email"]},
                },
            )
            pending.append(
                await app.producer.send(
                    topic,
                    str(d["user_id"]).encode(),
                    value,
                    partition=None,
                    timestamp=at.timestamp(),
                    headers=[],
                )
            )
        for fut in pending:  # delivered before the batch's offsets are committed
            await fut
        return []

    install_agents(rt, "workflow", ("user",), write)
