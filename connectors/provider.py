"""SMS and push providers behind one small HTTP contract (one adapter per provider goes here).

`POST <url>` with `Authorization: Bearer <key>` and JSON `{"to", "title", "body", "message_id",
"kind"}`; the message id doubles as the provider's idempotency key (`Idempotency-Key` header).
2xx: accepted. 429, 5xx, refused, timeout: the provider is down (`DependencyDown`: retried while
down). Any other 4xx: refused for good (`ProviderRefused`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx

from connectors.base import ConnectorError, DependencyDown, Outcome, Settled, send_all

__all__ = ["ProviderChannel", "ProviderClient", "ProviderRefused"]


class ProviderRefused(ConnectorError):
    """The provider refused the message for good (a 4xx other than 429)."""


class ProviderClient:
    def __init__(self, name: str, url: str, key: str, *, timeout_s: float = 10.0) -> None:
        self.name, self.url = name, url
        # no key (the local stack's stand-in needs none): no Authorization header at all
        auth = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.AsyncClient(timeout=timeout_s, headers=auth)

    async def close(self) -> None:
        await self.http.aclose()

    async def send(self, payload: dict[str, Any]) -> None:
        try:
            resp = await self.http.post(
                self.url,
                json=payload,
                headers={"Idempotency-Key": str(payload.get("message_id", ""))},
            )
        except httpx.TransportError as exc:
            raise DependencyDown(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise DependencyDown(f"{self.name}: HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise ProviderRefused(f"{self.name}: HTTP {resp.status_code}: {resp.text[:200]}")


class ProviderChannel:
    """An SMS or push channel's sink: a batch of payloads posted to the provider with at most
    `concurrency` calls in flight, each outcome settled as soon as it is known; a 4xx (not 429)
    is a refusal, a 429, a 5xx or no answer is down."""

    def __init__(self, client: ProviderClient, concurrency: int) -> None:
        self.client = client
        self.gate = asyncio.Semaphore(concurrency)

    async def write_batch(
        self, items: Sequence[dict[str, Any]], settled: Settled | None = None
    ) -> list[Outcome]:
        async def send(payload: object) -> None:
            assert isinstance(payload, dict)
            async with self.gate:
                await self.client.send(payload)

        return await send_all(items, send, ProviderRefused, settled)
