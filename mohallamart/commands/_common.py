"""What every command shares: its output, the settings (refused with the field and the rule),
ISO 8601 options that must carry a zone, SIGTERM as Ctrl-C."""

from __future__ import annotations

import signal
import sys
from typing import Any

from pydantic import ValidationError

from core.errors import PipelineError
from core.settings import Settings, get_settings

__all__ = ["load_settings", "out", "stop_on_sigterm", "zoned_time"]


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def load_settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        # pydantic names the field and the rule; never echo the input (it may be a secret).
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']).upper() or 'settings'}: {e['msg']}"
            for e in exc.errors()
        )
        raise PipelineError(f"invalid settings: {problems}") from None


def zoned_time(flag: str, value: str | None) -> tuple[bool, Any]:
    """(ok, the time or None) of an ISO 8601 option that must carry a zone; says why not."""
    from datetime import datetime

    if not value:
        return True, None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        out(f"{flag}: not an ISO 8601 time: {value!r}")
        return False, None
    if at.tzinfo is None:
        out(f"{flag}: give a time zone (e.g. 2026-11-23T10:00:00+05:30 or ...Z)")
        return False, None
    return True, at


def stop_on_sigterm() -> None:
    """SIGTERM as Ctrl-C (KeyboardInterrupt): what the command started is stopped on the way
    out."""

    def _raise(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)
