"""No secret in any log (issue 17): every log this test session's processes wrote (the API
processes, the workers, the CLI commands the tests ran) is scanned for each secret the session
used (API keys, the webhooks' secrets, the providers' keys) and for anything shaped like an API
key. Named to run after every other integration test of the session."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.settings import Settings
from tests.integration._support import SECRETS_USED

pytestmark = pytest.mark.integration

#: an API key as `mohallamart keys create` makes them (connectors.apikeys.create_key)
API_KEY = re.compile(rb"mm_[0-9a-f]{8}_[A-Za-z0-9_-]{32}")


def _logs(settings: Settings) -> list[Path]:
    root = settings.stack_dir
    return sorted(
        {*root.glob("*.log"), *(root / "tests").rglob("*.log")},
        key=lambda p: str(p),
    )


def test_no_log_of_the_session_holds_a_secret(settings: Settings) -> None:
    logs = _logs(settings)
    assert logs, f"no log under {settings.stack_dir}: the session wrote none?"
    used = set(SECRETS_USED)
    kafka = settings.kafka_security.password  # the Kafka clients' SASL password, if any
    if kafka is not None:
        used.add(kafka.get_secret_value())
    secrets = sorted({s.encode() for s in used if len(s) >= 8})
    assert secrets, "the session used no secret: this scan would prove nothing"
    found = []
    for path in logs:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                for s in secrets:
                    if s in line:
                        found.append(f"{path.name}:{n}: a secret used by the session")
                m = API_KEY.search(line)
                if m:
                    found.append(f"{path.name}:{n}: an API key ({m.group(0)[:12]}...)")
    assert not found, "\n".join(found[:20])
