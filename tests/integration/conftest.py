"""The real local stack, brought up once per test session.

A service that cannot start is an error, never a skip: integration tests do not pass silently
without their servers. Set KEEP_STACK=1 to leave what the session started running afterwards.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

from mohallamart.settings import Settings, get_settings
from mohallamart.stack import Stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that restart the whole stack run last, so the others see one steady stack.
    items.sort(key=lambda item: item.get_closest_marker("restarts_stack") is not None)


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
