"""Notification messages: templates and message ids (used by the notifications role,
`streams.agents.notifications`; the outbox is `connectors.outbox`).

Templates are Jinja2 files in `streams/templates/`: `<kind>.subject.j2`, `<kind>.txt.j2` and
`<kind>.html.j2` (HTML autoescaped: user data never becomes markup); a kind without its own
templates uses `generic.*` with the request's title and body.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import jinja2

__all__ = ["message_id", "render"]

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent / "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=False,
)


def render(kind: str, params: dict[str, Any]) -> tuple[str, str, str]:
    """(subject, text, html) of a notification."""
    name = kind.lower()
    try:
        _ENV.get_template(f"{name}.txt.j2")
    except jinja2.TemplateNotFound:
        name = "generic"
    subject = _ENV.get_template(f"{name}.subject.j2").render(params).strip()
    text = _ENV.get_template(f"{name}.txt.j2").render(params)
    html = _ENV.get_template(f"{name}.html.j2").render(params)
    return subject, text, html


def message_id(event_id: str | uuid.UUID, channel: str) -> str:
    """The Message-ID of a notification's email: derived from the event id, so a copy sent again
    after a crash is recognisable as the same message."""
    return f"<{event_id}.{channel.lower()}@notifications.mohallamart>"
