"""At start: the installed faust provides what this package relies on, or the worker refuses to
start, naming the version."""

from __future__ import annotations

import inspect
import logging
from importlib.metadata import PackageNotFoundError, version

import faust
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.consumer import group_coordinator as aiokafka_group
from faust.transport import consumer as faust_consumer
from faust.transport import producer as faust_producer
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as faust_aiokafka

from core.errors import ConfigError

__all__ = ["FAUST_VERSION", "TransportMismatch", "check_faust"]

log = logging.getLogger(__name__)

#: the faust-streaming version this package was written against (pinned in pyproject.toml)
FAUST_VERSION = "0.15.3"

# (where, the name it must have): what streams.transport overrides or reads
_METHODS = (
    (faust_aiokafka.Consumer, "_wait_next_records"),
    (faust_aiokafka.Consumer, "_add_gap"),
    (faust_aiokafka.Consumer, "_drain_messages"),
    (faust_aiokafka.Consumer, "perform_seek"),
    (faust_aiokafka.Consumer, "_commit_offsets"),
    (faust_aiokafka.Consumer, "_commit"),
    (faust_aiokafka.Consumer, "getmany"),
    (faust_aiokafka.Consumer, "wait_first"),
    (faust.Stream, "take_events"),
    (faust.Stream, "maybe_start"),
    (faust_aiokafka.Producer, "_settings_extra"),
    (faust_producer.ProducerBuffer, "_send_pending"),
    (faust_producer.ProducerBuffer, "flush_atmost"),
    (faust_producer.ProducerBuffer, "put"),
    (faust.Table, "apply_changelog_batch"),
    (faust.Table, "_on_changelog_sent"),
    (faust_aiokafka.AIOKafkaConsumerThread, "seek_wait"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer"),
    (faust_aiokafka.AIOKafkaConsumerThread, "call_thread"),
    (faust.Worker, "_setup_spinner_handler"),
    (aiokafka_fetcher.Fetcher, "_proc_offset_request"),
)
# attributes set at run time, looked for in the source of the class that sets them
_ATTRIBUTES = (
    (faust_consumer.Consumer, ("_read_offset", "_committed_offset", "_active_partitions")),
    (faust_consumer.Consumer, ("_paused_partitions", "_acked", "_acked_index", "_n_acked")),
    (faust_consumer.Consumer, ("_commit_every", "suspend_flow", "consumer_stopped_errors")),
    (faust_consumer.ThreadDelegateConsumer, ("_thread",)),
    (faust_producer.ProducerBuffer, ("pending", "message_sent", "_handle_pending")),
    (faust_producer.Producer, ("self.buffer = ProducerBuffer",)),
    (aiokafka_group.GroupCoordinator, ("self.coordinator_id",)),
)


class TransportMismatch(ConfigError):
    """The installed faust lacks what streams.transport relies on."""


def _installed() -> str:
    try:
        return version("faust-streaming")
    except PackageNotFoundError:
        return "unknown"


def check_faust() -> None:
    """Raise `TransportMismatch` naming the installed version and what is missing."""
    missing = [f"{cls.__name__}.{name}" for cls, name in _METHODS if not hasattr(cls, name)]
    for cls, names in _ATTRIBUTES:
        source = inspect.getsource(cls)
        missing += [f"{cls.__name__}.{n}" for n in names if n not in source]
    if not hasattr(__import__("faust.streams", fromlist=["_current_event"]), "_current_event"):
        missing.append("faust.streams._current_event")
    if not hasattr(faust_consumer, "CONSUMER_FETCHING"):
        missing.append("faust.transport.consumer.CONSUMER_FETCHING")
    try:
        from streams.transport.driver import SCHEME, Transport

        if TRANSPORTS.by_url(f"{SCHEME}://localhost") is not Transport:
            missing.append(f"the {SCHEME}:// transport (entry point faust.transports)")
    except ModuleNotFoundError:
        missing.append(
            "the mohallamart:// transport: the package's entry points are not installed "
            "(run `make install`)"
        )
    installed = _installed()
    if missing:
        raise TransportMismatch(
            f"faust-streaming {installed} lacks what streams.transport relies on "
            f"({', '.join(missing)}); install faust-streaming=={FAUST_VERSION} "
            "(`make install` uses requirements.lock)"
        )
    if installed != FAUST_VERSION:
        log.warning(
            "faust-streaming %s installed, streams.transport was written against %s: "
            "everything it relies on is there, but check the release notes",
            installed,
            FAUST_VERSION,
        )
