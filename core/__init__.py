"""The bottom of the dependency graph: the settings object and the project's errors (and
`core.telemetry`, the W3C trace context and OpenTelemetry spans, imported by its own name).

Every package may import this one; it imports nothing of ours.
"""

from core.errors import ConfigError, PipelineError, StackError
from core.settings import Settings, get_settings

__all__ = ["ConfigError", "PipelineError", "Settings", "StackError", "get_settings"]
