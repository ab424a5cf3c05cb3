"""Email over SMTP: one message per call, with a Message-ID the caller derives from the event.

A pool of `pool_size` connections (EMAIL_POOL_SIZE, 4) is kept open between messages (a new one
per message cost most of the time of a send), so that many messages are sent at once; each is
dropped after an error or when it has been idle for `idle_s`, and a connection the server closed
meanwhile is replaced once before the message counts as failed.

A server that answers 4xx, refuses the connection or times out is down (`DependencyDown`: the
caller retries while it is down); a 5xx answer is a permanent refusal (`EmailRefused`: the caller
dead-letters it at once).
"""

from __future__ import annotations

import asyncio
import smtplib
import time
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate

from connectors.base import ConnectorError, DependencyDown, Outcome, Settled, send_all

__all__ = ["EmailChannel", "EmailRefused", "EmailSender"]


class EmailRefused(ConnectorError):
    """The server refused the message for good (5xx): the address or the content is wrong."""


class _Connection:
    """One SMTP session of the pool, used by one send at a time."""

    def __init__(self) -> None:
        self.smtp: smtplib.SMTP | None = None
        self.used = 0.0


class EmailSender:
    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        *,
        timeout_s: float = 10.0,
        idle_s: float = 20.0,
        pool_size: int = 1,
    ) -> None:
        self.host, self.port, self.sender, self.timeout_s = host, port, sender, timeout_s
        self.idle_s = idle_s
        self.pool_size = pool_size
        self._connections = [_Connection() for _ in range(pool_size)]
        self._free: asyncio.Queue[_Connection] | None = None  # made in the caller's loop

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

    @staticmethod
    def _drop(c: _Connection) -> None:
        smtp, c.smtp = c.smtp, None
        if smtp is not None:
            try:
                smtp.close()
            except OSError:
                pass

    def _send(self, c: _Connection, msg: EmailMessage) -> None:
        if c.smtp is not None and time.monotonic() - c.used > self.idle_s:
            self._drop(c)
        try:
            try:
                reused = c.smtp is not None
                self._deliver(c, msg)
            except smtplib.SMTPServerDisconnected:
                if not reused:
                    raise
                self._drop(c)  # the server closed the idle connection: one new one
                self._deliver(c, msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            if all(code >= 500 for code in codes):
                raise EmailRefused(f"SMTP refused the recipient: {codes}") from exc
            self._drop(c)
            raise DependencyDown(f"SMTP: recipient temporarily refused: {codes}") from exc
        except smtplib.SMTPResponseException as exc:
            self._drop(c)
            if exc.smtp_code >= 500:
                raise EmailRefused(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from exc
            raise DependencyDown(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            self._drop(c)
            raise DependencyDown(f"SMTP: {type(exc).__name__}: {exc}") from exc

    def _deliver(self, c: _Connection, msg: EmailMessage) -> None:
        if c.smtp is None:
            c.smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        c.smtp.send_message(msg)  # a refused recipient leaves the session reset (RSET)
        c.used = time.monotonic()

    async def send(self, msg: EmailMessage) -> None:
        """Send on the first free connection of the pool (waits while all are busy)."""
        if self._free is None:
            self._free = asyncio.Queue()
            for c in self._connections:
                self._free.put_nowait(c)
        c = await self._free.get()
        try:
            await asyncio.to_thread(self._send, c, msg)
        finally:
            self._free.put_nowait(c)


class EmailChannel:
    """The email channel's sink: a batch of messages sent on the sender's pool of connections,
    each outcome settled as soon as it is known (a crash repeats at most the messages in flight,
    each recognisable by its Message-ID); a 5xx is a refusal, an unreachable server is down."""

    def __init__(self, sender: EmailSender) -> None:
        self.sender = sender

    async def write_batch(
        self, items: Sequence[EmailMessage], settled: Settled | None = None
    ) -> list[Outcome]:
        async def send(msg: object) -> None:
            assert isinstance(msg, EmailMessage)
            await self.sender.send(msg)

        return await send_all(items, send, EmailRefused, settled)
