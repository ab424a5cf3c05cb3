"""The README's snippets work as printed: the analytics consumer decodes real events."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid

import httpx
import pytest

from core.settings import PROJECT_ROOT, Settings
from schemas.catalog import EVENT_TYPES

pytestmark = pytest.mark.integration


def test_readme_consumer_decodes_order_events(
    api: str, ingest_key: str, settings: Settings
) -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    block = re.search(r"<!-- consumer -->\n```python\n(.*?)```\n<!-- /consumer -->", readme, re.S)
    assert block, "the README lost its consumer snippet"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 12
    # The snippet names the local stack's default addresses; point it at this stack.
    code = (
        code.replace("127.0.0.1:19092", settings.kafka_bootstrap)
        .replace("http://127.0.0.1:18081/apis/ccompat/v7", settings.registry_url)
        .replace('"analytics-demo"', f'"readme-{uuid.uuid4().hex[:8]}"')
        .replace("consumer.poll(10)", "consumer.poll(5)")
    )
    order_id = f"ord_{uuid.uuid4().hex[:10]}"
    data = dict(EVENT_TYPES["order.created"].example, order_id=order_id)
    r = httpx.post(
        f"{api}/v1/events",
        json={"type": "order.created", "data": data},
        headers={"Authorization": f"Bearer {ingest_key}"},
    )
    assert r.status_code == 202, r.text
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,  # noqa: S603
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith(order_id))
    assert " order.created " in line and "'total_paise': 41700" in line
