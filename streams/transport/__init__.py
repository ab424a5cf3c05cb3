"""The one place that knows faust's and aiokafka's internals.

Every accommodation of faust-streaming and aiokafka lives here: the transport driver
`mohallamart://` (our consumer and producer, registered as a faust transport), the consumer's
positions and seeks, the table partition context, the fetcher watchdog's probe, the worker's
logging, and the check at start that the installed faust provides all of it. Outside this
package no module touches a private attribute of a faust or aiokafka object
(tests/unit/test_private_access.py).
"""

from __future__ import annotations

from streams.transport.check import FAUST_VERSION, TransportMismatch, check_faust
from streams.transport.consumer import (
    AppPositions,
    assigning,
    commit_positions,
    committed_offset,
    coordinator_known,
    diagnose,
    fetcher_crash,
    highwater,
    hold,
    in_partition_of,
    refresh_metadata,
    release,
    seek,
    settling,
    start_offset,
    stream_positions,
)
from streams.transport.continuity import Continuity, Positions
from streams.transport.driver import SCHEME, broker_url
from streams.transport.fence import EXIT_FENCED, Fence, Fenced, fence_of, install_fence
from streams.transport.stream import Stream
from streams.transport.table import Table
from streams.transport.worker import run_app

__all__ = [
    "EXIT_FENCED",
    "FAUST_VERSION",
    "Fence",
    "Fenced",
    "Table",
    "fence_of",
    "install_fence",
    "SCHEME",
    "Stream",
    "AppPositions",
    "Continuity",
    "Positions",
    "TransportMismatch",
    "broker_url",
    "check_faust",
    "commit_positions",
    "coordinator_known",
    "committed_offset",
    "assigning",
    "diagnose",
    "fetcher_crash",
    "highwater",
    "hold",
    "in_partition_of",
    "refresh_metadata",
    "release",
    "run_app",
    "seek",
    "settling",
    "start_offset",
    "stream_positions",
]
