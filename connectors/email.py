"""Email over SMTP: one message per call, with a Message-ID the caller derives from the event.

A server that answers 4xx, refuses the connection or times out is down (`DependencyDown`: the
caller retries while it is down); a 5xx answer is a permanent refusal (`EmailRefused`: the caller
dead-letters it at once).
"""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from email.utils import formatdate

from connectors.base import ConnectorError, DependencyDown

__all__ = ["EmailRefused", "EmailSender"]


class EmailRefused(ConnectorError):
    """The server refused the message for good (5xx): the address or the content is wrong."""


class EmailSender:
    def __init__(self, host: str, port: int, sender: str, *, timeout_s: float = 10.0) -> None:
        self.host, self.port, self.sender, self.timeout_s = host, port, sender, timeout_s

    def build(
        self,
        *,
        to: str,
        subject: str,
        text: str,
        html: str,
        message_id: str,
        headers: dict[str, str] | None = None,
    ) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = message_id
        for k, v in (headers or {}).items():
            msg[k] = v
        msg.set_content(text)
        msg.add_alternative(html, subtype="html")
        return msg

    def _send(self, msg: EmailMessage) -> None:
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(code >= 500 for code in codes):
                raise EmailRefused(f"SMTP refused the recipient: {codes}") from exc
            raise DependencyDown(f"SMTP: recipient temporarily refused: {codes}") from exc
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code >= 500:
                raise EmailRefused(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from exc
            raise DependencyDown(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DependencyDown(f"SMTP: {type(exc).__name__}: {exc}") from exc

    async def send(self, msg: EmailMessage) -> None:
        await asyncio.to_thread(self._send, msg)
