"""Request metrics by route template and status, as a pure ASGI middleware (cheap per request)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["REQUESTS", "RequestMetrics"]

REQUESTS = Counter(
    "mohallamart_api_requests_total", "HTTP requests by route and status", ["route", "status"]
)


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            path = getattr(route, "path", None) or "(unmatched)"
            REQUESTS.labels(path, str(status[0])).inc()
