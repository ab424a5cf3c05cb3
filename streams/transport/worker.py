"""Running a faust app in the foreground, as a worker process."""

from __future__ import annotations

import logging

import faust

__all__ = ["run_app"]


class _Worker(faust.Worker):
    """At WARNING and above faust adds a terminal spinner and sets the root logger to DEBUG: every
    aiokafka debug line was then formatted (a third of a core at low rates, and 250-500 ms tails
    from produce to row). No spinner: the root logger stays at the configured level."""

    def _setup_spinner_handler(self, logger: logging.Logger, level: int) -> None:
        logger.setLevel(level)


def run_app(app: faust.App, loglevel: str) -> None:
    """Run `app` until SIGINT/SIGTERM."""
    _Worker(app, loglevel=loglevel, quiet=True).execute_from_commandline()
