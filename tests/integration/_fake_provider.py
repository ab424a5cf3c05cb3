"""A stand-in for the SMS and push providers' HTTP APIs (third-party SaaS that cannot run here):
records every request, answers 202, or what a test tells it to answer for a recipient."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeProvider"]


class FakeProvider:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        #: recipient ("to") -> the HTTP status to answer for it
        self.status_for: dict[str, int] = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = outer.status_for.get(body.get("to", ""), 202)
                with outer.lock:
                    outer.requests.append(
                        {
                            "path": self.path,
                            "auth": self.headers.get("Authorization"),
                            "idempotency_key": self.headers.get("Idempotency-Key"),
                            "status": status,
                            **body,
                        }
                    )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def sent(self, path: str, to: str) -> list[dict[str, Any]]:
        """Requests accepted (2xx) on `path` for recipient `to`."""
        with self.lock:
            return [
                r
                for r in self.requests
                if r["path"] == path and r["to"] == to and r["status"] < 300
            ]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
