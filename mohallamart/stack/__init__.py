"""The local stack of real services, started without Docker (`mohallamart stack ...`)."""

from mohallamart.stack.manager import ServiceStatus, Stack, UpResult

__all__ = ["ServiceStatus", "Stack", "UpResult"]
