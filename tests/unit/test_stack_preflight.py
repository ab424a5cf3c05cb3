"""Errors a person meets before the stack starts: a taken port, a missing JDK.

Each runs the real command line against an empty state folder, and checks that nothing was
started.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "mohallamart.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


@pytest.fixture
def isolated(tmp_path: Path) -> dict[str, str]:
    """A stack of its own: empty state, free ports, so the real one is never touched."""
    env = {"STACK_DIR": str(tmp_path / "stack")}
    for name in (
        "STACK_KAFKA_PORT",
        "STACK_KAFKA_CONTROLLER_PORT",
        "STACK_REGISTRY_PORT",
        "STACK_REGISTRY_MANAGEMENT_PORT",
        "STACK_REGISTRY_DB_PORT",
        "STACK_POSTGRES_PORT",
        "STACK_REDIS_PORT",
        "STACK_TYPESENSE_PORT",
        "STACK_TYPESENSE_PEERING_PORT",
        "STACK_SMTP_PORT",
        "STACK_PROVIDERS_PORT",
    ):
        env[name] = str(_free_port())
    return env


def test_taken_port_names_the_port_and_its_setting(isolated: dict[str, str]) -> None:
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        port = stranger.getsockname()[1]
        res = _cli("stack", "up", "redis", env={**isolated, "STACK_REDIS_PORT": str(port)})
    assert res.returncode == 1
    assert f"port {port}" in res.stderr
    assert "STACK_REDIS_PORT" in res.stderr
    assert not list(Path(isolated["STACK_DIR"]).rglob("process.json")), "something was started"


def _fake_jdk(root: Path, major: int) -> Path:
    home = root / f"jdk-{major}"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\nexit 1\n")
    (home / "bin" / "java").chmod(0o755)
    (home / "release").write_text(f'JAVA_VERSION="{major}.0.2"\n')
    return home


def test_missing_jdk_21_says_what_to_install(isolated: dict[str, str], tmp_path: Path) -> None:
    jdk17 = _fake_jdk(tmp_path / "jvms", 17)
    env = {**isolated, "JAVA_HOME": str(jdk17), "STACK_JVM_DIRS": str(tmp_path / "jvms")}
    res = _cli("stack", "up", "registry", env=env)
    assert res.returncode == 1
    assert "needs a JDK >= 21" in res.stderr
    assert "install" in res.stderr and "JAVA_HOME" in res.stderr
    assert str(jdk17) in res.stderr  # what it found, so the person sees why it was refused
    assert not list(Path(isolated["STACK_DIR"]).rglob("process.json")), "something was started"


def test_every_command_has_help() -> None:
    for args in (
        [],
        ["stack"],
        ["stack", "up"],
        ["stack", "down"],
        ["stack", "status"],
        ["stack", "start"],
        ["stack", "stop"],
        ["run"],
        ["api"],
        ["worker"],
        ["smtpd"],
    ):
        res = _cli(*args, "--help", env={})
        assert res.returncode == 0, (args, res.stderr)
        assert "usage: mohallamart" in res.stdout


def test_service_that_dies_on_start_names_itself_its_log_and_its_last_lines(
    isolated: dict[str, str], tmp_path: Path
) -> None:
    broken = tmp_path / "redis-server"
    broken.write_text("#!/bin/sh\necho 'FATAL: cannot open config (simulated)'\nexit 1\n")
    broken.chmod(0o755)
    res = _cli("stack", "up", "redis", env={**isolated, "REDIS_SERVER_BIN": str(broken)})
    assert res.returncode == 1
    log = Path(isolated["STACK_DIR"]) / "redis" / "redis.log"
    assert "redis exited during start" in res.stderr
    assert str(log) in res.stderr
    assert "FATAL: cannot open config (simulated)" in res.stderr
