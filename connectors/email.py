"""Email over SMTP: one message per call, with a Message-ID the caller derives from the event.

One connection is kept open between messages (a new one per message cost most of the time of a
send); it is dropped after an error or when it has been idle for `idle_s`, and a connection the
server closed meanwhile is replaced once before the message counts as failed.

A server that answers 4xx, refuses the connection or times out is down (`DependencyDown`: the
caller retries while it is down); a 5xx answer is a permanent refusal (`EmailRefused`: the caller
dead-letters it at once).
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time
from email.message import EmailMessage
from email.utils import formatdate

from connectors.base import ConnectorError, DependencyDown

__all__ = ["EmailRefused", "EmailSender"]


class EmailRefused(ConnectorError):
    """The server refused the message for good (5xx): the address or the content is wrong."""


class EmailSender:
    def __init__(
        self, host: str, port: int, sender: str, *, timeout_s: float = 10.0, idle_s: float = 20.0
    ) -> None:
        self.host, self.port, self.sender, self.timeout_s = host, port, sender, timeout_s
        self.idle_s = idle_s
        self._smtp: smtplib.SMTP | None = None
        self._used = 0.0
        self._lock = threading.Lock()  # sends run in worker threads: one at a time

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

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            try:
                smtp.close()
            except OSError:
                pass

    def _send(self, msg: EmailMessage) -> None:
        with self._lock:
            if self._smtp is not None and time.monotonic() - self._used > self.idle_s:
                self._drop()
            try:
                try:
                    reused = self._smtp is not None
                    self._deliver(msg)
                except smtplib.SMTPServerDisconnected:
                    if not reused:
                        raise
                    self._drop()  # the server closed the idle connection: one new one
                    self._deliver(msg)
            except smtplib.SMTPRecipientsRefused as exc:
                codes = [code for code, _ in exc.recipients.values()]
                if all(code >= 500 for code in codes):
                    raise EmailRefused(f"SMTP refused the recipient: {codes}") from exc
                self._drop()
                raise DependencyDown(f"SMTP: recipient temporarily refused: {codes}") from exc
            except smtplib.SMTPResponseException as exc:
                self._drop()
                if exc.smtp_code >= 500:
                    raise EmailRefused(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from exc
                raise DependencyDown(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from exc
            except (smtplib.SMTPException, OSError) as exc:
                self._drop()
                raise DependencyDown(f"SMTP: {type(exc).__name__}: {exc}") from exc

    def _deliver(self, msg: EmailMessage) -> None:
        if self._smtp is None:
            self._smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        self._smtp.send_message(msg)  # a refused recipient leaves the session reset (RSET)
        self._used = time.monotonic()

    async def send(self, msg: EmailMessage) -> None:
        await asyncio.to_thread(self._send, msg)
