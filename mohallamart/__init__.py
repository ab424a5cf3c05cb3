"""MohallaMart pipeline core: settings, errors, the local stack and the operator command line."""

from mohallamart.errors import ConfigError, PipelineError, StackError
from mohallamart.settings import Settings, get_settings

__all__ = ["ConfigError", "PipelineError", "Settings", "StackError", "get_settings"]
