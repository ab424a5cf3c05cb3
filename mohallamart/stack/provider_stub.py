"""The local stack's stand-in for the SMS and push providers (SaaS that cannot run here).

It speaks the providers' contract (`connectors/provider.py`): `POST /sms` or `POST /push` with a
JSON body `{"to", "title", "body", "message_id", "kind"}`, answered 202, or the status it was
told to answer for that recipient. Every request is kept, in memory and as a JSON line in
`<STACK_DIR>/providers/requests.jsonl` (secrets are not kept: the Authorization header is recorded
as present or not, unless an in-process test asks for it with `keep_secrets`):

- `GET /_requests?path=/sms&to=+91...` lists the requests (newest last), as JSON;
- `POST /_control` `{"to": "+91...", "status": 400}` makes it answer 400 for that recipient
  (`"status": null` restores 202); 429 or 5xx play a provider that is down, another 4xx one that
  refuses the recipient for good;
- `GET /health` answers `{"ok": true}`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["ProviderStub", "main"]


class _Server(ThreadingHTTPServer):
    # as a provider's API would: room for a burst of connections (the default listen backlog of
    # 5 dropped connections under 8 concurrent senders: the client's retry came 1 s later)
    request_queue_size = 128
    daemon_threads = True


class ProviderStub:
    """The stand-in's state and HTTP server (threads; `stop()` ends it)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        record: Path | None = None,
        *,
        keep_secrets: bool = False,
    ) -> None:
        self.keep_secrets = keep_secrets and record is None
        self.requests: list[dict[str, Any]] = []
        #: recipient ("to") -> the HTTP status to answer for it
        self.status_for: dict[str, int] = {}
        self.lock = threading.Lock()
        self.record = record
        if record is not None:
            record.parent.mkdir(parents=True, exist_ok=True)
            if record.exists():
                self.requests = [json.loads(x) for x in record.read_text().splitlines() if x]
        self.server = _Server((host, port), self._handler())
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> ProviderStub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sent(self, path: str, to: str) -> list[dict[str, Any]]:
        """Requests accepted (2xx) on `path` for recipient `to`."""
        with self.lock:
            return [
                r
                for r in self.requests
                if r["path"] == path and r["to"] == to and r["status"] < 300
            ]

    def keep(self, entry: dict[str, Any]) -> None:
        """Record one request (and append it to the record file, if any)."""
        with self.lock:
            self.requests.append(entry)
            if self.record is not None:
                with self.record.open("a") as out:
                    out.write(json.dumps(entry) + "\n")

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the providers' APIs
            # headers and body go out in two writes: without this, Nagle's algorithm held the
            # body back until the client's delayed ACK (~40 ms a request on a kept connection)
            disable_nagle_algorithm = True

            def _answer(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                try:
                    return json.loads(self.rfile.read(int(self.headers["Content-Length"] or 0)))
                except (ValueError, TypeError):
                    return None

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                if url.path == "/health":
                    self._answer(200, {"ok": True})
                    return
                if url.path != "/_requests":
                    self._answer(404, {"error": f"no such path: {url.path}"})
                    return
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                with stub.lock:
                    found = [
                        r
                        for r in stub.requests
                        if all(str(r.get(k)) == v for k, v in query.items())
                    ]
                self._answer(200, found)

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self._body()
                if not isinstance(body, dict) or not isinstance(body.get("to"), str):
                    self._answer(400, {"error": "a JSON object with a string `to` is required"})
                    return
                if self.path == "/_control":
                    with stub.lock:
                        if body.get("status") is None:
                            stub.status_for.pop(body["to"], None)
                        else:
                            stub.status_for[body["to"]] = int(body["status"])
                    self._answer(200, {"to": body["to"], "status": body.get("status")})
                    return
                status = stub.status_for.get(body["to"], 202)
                stub.keep(
                    {
                        "path": self.path,
                        "auth": (
                            self.headers.get("Authorization")
                            if stub.keep_secrets
                            else bool(self.headers.get("Authorization"))
                        ),
                        "idempotency_key": self.headers.get("Idempotency-Key"),
                        "status": status,
                        **body,
                    }
                )
                self._answer(status, {"accepted": status < 300})

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18025)
    parser.add_argument("--record", type=Path, required=True, help="the JSON-lines file it keeps")
    args = parser.parse_args(argv)
    stub = ProviderStub(args.host, args.port, args.record).start()
    sys.stdout.write(f"provider stand-in on {stub.url}, recording to {args.record}\n")
    sys.stdout.flush()
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    stub.stop()


if __name__ == "__main__":
    main()
