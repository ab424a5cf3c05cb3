"""The local stack's SMTP server: aiosmtpd, keeping every message it receives in a Maildir.

Tests and people read what was "sent" from `<STACK_DIR>/smtp/maildir` (any mail client reads a
Maildir; `mailbox.Maildir` in Python). Each stored message gains `X-Smtp-Mail-From` and
`X-Smtp-Rcpt-To` headers with the SMTP envelope.

Recipients at the reserved domains below are refused, so delivery failures can be tested
against a real server: `@reject.invalid` gets 550 (permanent), `@tempfail.invalid` 451 (transient).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import mailbox
import signal
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["MaildirHandler", "main", "read_messages"]

_log = logging.getLogger("mohallamart.smtpd")


class MaildirHandler:
    """aiosmtpd handler that delivers into a Maildir."""

    def __init__(self, maildir: Path) -> None:
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        self.box = mailbox.Maildir(maildir, create=False)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: Any
    ) -> str:
        domain = address.rsplit("@", 1)[-1].lower()
        if domain == "reject.invalid":
            return "550 5.1.1 recipient refused (reject.invalid)"
        if domain == "tempfail.invalid":
            return "451 4.3.0 try again later (tempfail.invalid)"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or b""
        msg = message_from_bytes(content)
        msg["X-Smtp-Mail-From"] = str(envelope.mail_from)
        msg["X-Smtp-Rcpt-To"] = ", ".join(envelope.rcpt_tos)
        key = self.box.add(msg)
        _log.info("stored %s from %s to %s", key, envelope.mail_from, envelope.rcpt_tos)
        return "250 Message accepted for delivery"


def read_messages(maildir: Path) -> list[Message]:
    """Every message the server has stored, oldest first."""
    box = mailbox.Maildir(maildir, create=False)
    msgs = [(m.get_date(), m) for m in box]
    return [m for _, m in sorted(msgs, key=lambda t: t[0])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--maildir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    controller = Controller(
        MaildirHandler(args.maildir), hostname=args.host, port=args.port, decode_data=False
    )
    controller.start()
    _log.info("SMTP server on %s:%s, storing in %s", args.host, args.port, args.maildir)

    loop = asyncio.new_event_loop()
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    try:
        loop.run_until_complete(stopped.wait())
    finally:
        controller.stop()
        loop.close()


if __name__ == "__main__":
    main()
