"""Shared test configuration: the test profile of the settings.

The profile shortens consumer-group session and rebalance timeouts, so a killed worker is
replaced in seconds, not a minute. Values already in the environment win.
"""

from __future__ import annotations

import os

TEST_PROFILE = {
    "ENVIRONMENT": "test",
    "KAFKA_SESSION_TIMEOUT_MS": "3000",
    "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
    "KAFKA_REBALANCE_TIMEOUT_MS": "6000",
}
for _name, _value in TEST_PROFILE.items():
    os.environ.setdefault(_name, _value)
