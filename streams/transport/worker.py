"""Running a faust app in the foreground, as a worker process."""

from __future__ import annotations

import logging
from pathlib import Path

import faust

from streams.transport.consumer import diagnose

log = logging.getLogger(__name__)

__all__ = ["run_app"]


class _Worker(faust.Worker):
    """At WARNING and above faust adds a terminal spinner and sets the root logger to DEBUG: every
    aiokafka debug line was then formatted (a third of a core at low rates, and 250-500 ms tails
    from produce to row). No spinner: the root logger stays at the configured level.

    After a stop that handed every table write to Kafka, none of them refused, the file
    `clean_stop` is removed (see `streams.app.distrust_crashed_stores`)."""

    clean_stop: Path | None = None

    def _on_sigusr1(self) -> None:
        # mode prints every thread's stack; the consumer's state and the loop's tasks with it
        super()._on_sigusr1()
        try:
            log.warning("SIGUSR1: the consumer's state\n%s", diagnose(self.app))
        except Exception:  # noqa: BLE001 - a diagnosis never ends the worker
            log.exception("SIGUSR1: the consumer's state could not be read")

    def _setup_spinner_handler(self, logger: logging.Logger, level: int) -> None:
        logger.setLevel(level)

    def stop_and_shutdown(self) -> None:
        super().stop_and_shutdown()
        buffer = self.app.producer.buffer
        handed_over = not buffer.size and not getattr(buffer, "sending", 0)
        if self.clean_stop is not None and handed_over and not getattr(buffer, "refused", 0):
            self.clean_stop.unlink(missing_ok=True)


def run_app(app: faust.App, loglevel: str, clean_stop: Path | None = None) -> None:
    """Run `app` until SIGINT/SIGTERM; `clean_stop` is removed after a clean stop."""
    worker = _Worker(app, loglevel=loglevel, quiet=True)
    worker.clean_stop = clean_stop
    worker.execute_from_commandline()
