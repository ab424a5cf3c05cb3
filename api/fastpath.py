"""The ingest routes, served straight from ASGI.

At saturation FastAPI's routing, dependency injection and middleware stack cost about half of
the API's CPU per single-event request (measured with py-spy). The two POST routes are the hot
path, so they are answered here, before the framework, by the very same `IngestEndpoints` the
FastAPI routes call (those stay declared: they are the OpenAPI description). Everything else
goes to FastAPI unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from api.metrics import REQUESTS
from api.problems import PROBLEM_JSON, Problem, problem_body
from api.routes.events import IngestEndpoints, read_capped

__all__ = ["IngestFastPath"]

_log = logging.getLogger("mohallamart.api")
_ROUTES = {b"/v1/events": "single", b"/v1/events/batch": "batch"}


class IngestFastPath:
    """Wraps the FastAPI app from outside, so the hot routes skip even its middleware stack."""

    def __init__(self, app: FastAPI) -> None:
        self.app: ASGIApp = app
        self.fastapi = app
        self._endpoints: IngestEndpoints | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        which = _ROUTES.get(scope.get("raw_path") or scope["path"].encode())
        endpoints = self._endpoints
        if endpoints is None:
            endpoints = self._endpoints = getattr(self.fastapi.state, "endpoints", None)
        if which is None or endpoints is None:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}

        async def chunks() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                yield message.get("body", b"")
                if not message.get("more_body", False):
                    return

        async def read(limit: int) -> bytes:
            return await read_capped(chunks(), headers.get("content-length"), limit)

        extra: list[tuple[bytes, bytes]] = []
        try:
            handler = endpoints.single if which == "single" else endpoints.batch
            status, body = await handler(headers, read)
            content_type = b"application/json"
        except Problem as p:
            status, body = p.status, problem_body(p)
            content_type = PROBLEM_JSON.encode()
            extra = [(k.lower().encode(), v.encode()) for k, v in p.headers.items()]
        except Exception:
            _log.exception("ingest failed")
            internal = Problem(500, "internal-error", "unexpected error; nothing is acknowledged")
            status, body = 500, problem_body(internal)
            content_type = PROBLEM_JSON.encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        REQUESTS.labels(scope["path"], str(status)).inc()
