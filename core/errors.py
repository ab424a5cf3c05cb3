"""The project's one root exception and the subclasses every module raises."""

from __future__ import annotations

__all__ = ["PipelineError", "StackError", "ConfigError"]


class PipelineError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(PipelineError):
    """A setting is missing or wrong; the message names the setting."""


class StackError(PipelineError):
    """The local stack could not start, stop or reach a service; the message says what to do."""
