"""The real local stack, brought up once per test session.

A service that cannot start is an error, never a skip: integration tests do not pass silently
without their servers. Set KEEP_STACK=1 to leave what the session started running afterwards.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from core.settings import Settings, get_settings
from mohallamart.stack import Stack
from tests.integration._support import SECRETS_USED


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that restart the whole stack run last, so the others see one steady stack.
    items.sort(key=lambda item: item.get_closest_marker("restarts_stack") is not None)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.integration._pipeline import UNPLANNED

    if UNPLANNED:
        terminalreporter.section("workers restarted after exiting on their own")
        for line in UNPLANNED:
            terminalreporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "restarts_stack: stops and starts the whole local stack (runs last)"
    )


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def stack(settings: Settings, pytestconfig: pytest.Config) -> Iterator[Stack]:
    def echo(line: str) -> None:
        sys.stderr.write(f"[stack] {line}\n")
        sys.stderr.flush()

    st = Stack(settings, echo=echo)
    # Shown live, not captured: a first start downloads ~220 MB and should say so.
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        sys.stderr.write("\n")
        result = st.up()
        echo(
            f"up in {result.seconds:.1f} s (started: {', '.join(result.started) or 'nothing'}, "
            f"reused: {', '.join(result.reused) or 'nothing'})"
        )
    yield st
    if result.started and os.environ.get("KEEP_STACK") != "1":
        st.down(result.started)


@pytest.fixture(scope="session")
def otlp() -> Iterator[Any]:
    """A collector stand-in (OTLP/HTTP) for the session: the API and the workers the session
    starts export their spans to it (`tests/integration/_otlp.py`, its `env`). Started before
    them, since they read its URL at start."""
    from tests.integration._otlp import OtlpReceiver

    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session")
def webhook_secrets() -> dict[str, str]:
    """The webhooks' secrets of this session, made up here (never in the repo): Clerk's signing
    secret and Twilio's auth token, as the API under test is given them."""
    import base64
    import secrets

    made = {
        "CLERK_WEBHOOK_SECRET": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        "TWILIO_AUTH_TOKEN": secrets.token_hex(16),
    }
    SECRETS_USED.update(made.values())
    SECRETS_USED.add(made["CLERK_WEBHOOK_SECRET"].removeprefix("whsec_"))
    return made


@pytest.fixture(scope="session")
def api_env(stack: Stack, otlp: Any, webhook_secrets: dict[str, str]) -> dict[str, str]:
    """The environment of the API process under test (the test profile's ingest timeouts, its
    spans to the session's OTLP receiver, the webhooks' secrets)."""
    return {
        **os.environ,
        **webhook_secrets,
        "INGEST_REQUEST_TIMEOUT_MS": "6000",
        "INGEST_DELIVERY_TIMEOUT_MS": "3000",
        "AUTH_CACHE_S": "1",
        "LIVE_HEARTBEAT_S": "1",
        "LIVE_CLIENT_QUEUE": "2000",
        "LIVE_WRITE_TIMEOUT_S": "3",
        **otlp.env,
    }


@pytest.fixture(scope="session")
def api(api_env: dict[str, str]) -> Iterator[str]:
    """A real API process (uvicorn) on a free port, ready to ingest; its base URL."""
    from tests.integration._support import api_process

    with api_process(api_env, "api-under-test.log") as base:
        yield base


def _key(settings: Settings, name: str, scopes: list[str], **kw: object) -> str:
    from connectors.apikeys import create_key
    from connectors.db import migrate

    migrate(settings.postgres_dsn)
    _, secret = create_key(
        settings.postgres_dsn,
        name=name,
        scopes=scopes,
        principal=str(kw.get("principal", "admin")),
        rate_per_s=kw.get("rate_per_s"),
    )  # type: ignore[arg-type]
    SECRETS_USED.add(secret)
    return secret


@pytest.fixture(scope="session")
def ingest_key(stack: Stack, settings: Settings) -> str:
    return _key(settings, "tests-ingest", ["ingest", "read"], rate_per_s=1_000_000)


@pytest.fixture(scope="session")
def read_key(stack: Stack, settings: Settings) -> str:
    return _key(settings, "tests-read-only", ["read"], principal="user:u_test")


@pytest.fixture(scope="session")
def make_key(stack: Stack, settings: Settings) -> Any:
    """Create a key: make_key(["read"], principal="user:u1") -> the secret."""

    def make(scopes: list[str], principal: str = "admin") -> str:
        return _key(settings, f"tests-{principal}", scopes, principal=principal)

    return make


@pytest.fixture(scope="session")
def providers() -> Iterator[Any]:
    """The SMS and push providers' stand-in (an HTTP server recording what it is sent)."""
    from mohallamart.stack.provider_stub import ProviderStub

    fake = ProviderStub(keep_secrets=True).start()
    fake.env = {  # type: ignore[attr-defined]
        "SMS_PROVIDER_URL": f"{fake.url}/sms",
        "SMS_PROVIDER_KEY": "test-sms-key",
        "PUSH_PROVIDER_URL": f"{fake.url}/push",
        "PUSH_PROVIDER_KEY": "test-push-key",
    }
    SECRETS_USED.update({"test-sms-key", "test-push-key"})
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def pipeline(
    api: str, ingest_key: str, settings: Settings, providers: Any, otlp: Any
) -> Iterator[Any]:
    """The API and the workers: one projections worker, two stock workers (they share the stock
    role's partitions), one each of cache, search, workflows and notifications; ready once a
    probe product's first stock movement is a row. They export their spans to `otlp`."""
    from tests.integration._pipeline import QUIET_USER, Pipeline, Workers, example, uid

    workers = Workers(settings, settings.stack_dir / "tests", base_env=otlp.env)
    workers.logdir.mkdir(parents=True, exist_ok=True)
    workers.start("projections", "projections")
    workers.start("stock-1", "stock")
    workers.start("stock-2", "stock")
    workers.start("cache", "cache")
    workers.start("search", "search")
    workers.start("workflows", "workflows")
    # each SMS names the API's status webhook (as a Twilio adapter would pass it to Twilio)
    callback = {"SMS_STATUS_CALLBACK_URL": f"{api}/v1/webhooks/twilio/sms-status"}
    workers.start("notifications", "notifications", env={**providers.env, **callback})
    p = Pipeline(api, ingest_key, settings, workers)
    try:
        # the customer of the tests' bulk orders: every channel off (the notification tests
        # register customers of their own), so thousands of load orders queue no emails
        quiet = example(
            "user.registered", user_id=QUIET_USER, email=f"{QUIET_USER}@example.in", phone=None
        )
        quiet["preferences"] = {
            **quiet["preferences"],
            "email_opt_in": False,
            "sms_opt_in": False,
            "push_opt_in": False,
        }
        # the same id and body every session: on a stack that has it, a duplicate (200)
        registered = p.http.post(
            "/v1/events",
            json=p.event(
                "user.registered",
                quiet,
                id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{QUIET_USER}@2026-01-01")),
                at=datetime(2026, 1, 1, tzinfo=UTC),
            ),
        )
        assert registered.status_code in (200, 202), registered.text
        probe = uid("prd_probe")
        p.post("product.created", example("product.created", product_id=probe, initial_stock=1))
        p.wait_row(
            "SELECT 1 FROM inventory_movements WHERE product_id = %s",
            probe,
            timeout=120,
            what=f"the workers to be ready (logs: {workers.logdir})",
        )
        yield p
    finally:
        workers.stop_all()
