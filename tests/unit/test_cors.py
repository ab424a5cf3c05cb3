"""CORS is closed by default: no browser origin gets a CORS header, a preflight is refused; an
allow-list (`CORS_ALLOW_ORIGINS`) opens it to those origins only, the ingest fast path's
answers included."""

from __future__ import annotations

from starlette.testclient import TestClient

from api.main import create_asgi_app
from core.settings import Settings

SHOP = "https://shop.example.in"
EVIL = "https://evil.example.com"
PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def _client(origins: str = "") -> TestClient:
    # no lifespan (no `with`): nothing connects; the answers below need none of it
    return TestClient(create_asgi_app(Settings(cors_allow_origins=origins)))


def test_closed_by_default_no_origin_gets_a_cors_header() -> None:
    c = _client()
    r = c.options("/v1/events", headers={"Origin": SHOP, **PREFLIGHT})
    assert r.status_code >= 400
    assert "access-control-allow-origin" not in r.headers
    r = c.get("/ops", headers={"Origin": SHOP})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_an_allowed_origin_gets_them_and_no_other_does() -> None:
    c = _client(f"{SHOP}, https://admin.example.in/")
    r = c.options("/v1/events", headers={"Origin": SHOP, **PREFLIGHT})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == SHOP
    assert "authorization" in r.headers["access-control-allow-headers"].lower()
    r = c.options("/v1/events", headers={"Origin": "https://admin.example.in", **PREFLIGHT})
    assert r.headers["access-control-allow-origin"] == "https://admin.example.in"
    r = c.options("/v1/events", headers={"Origin": EVIL, **PREFLIGHT})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    # a simple request: the answer carries the header for an allowed origin only (the CORS
    # layer is outside the ingest fast path, so its answers carry it too)
    r = c.get("/ops", headers={"Origin": SHOP})
    assert r.status_code == 200 and r.headers.get("access-control-allow-origin") == SHOP
    r = c.get("/ops", headers={"Origin": EVIL})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
