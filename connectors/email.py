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
import threading
import time
from collections.abc import Sequence
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from email.policy import compat32
from email.utils import formataddr, formatdate, parseaddr

from connectors.base import APPLIED, ConnectorError, DependencyDown, Outcome, Settled, down, refused

__all__ = ["EmailChannel", "EmailRefused", "EmailSender"]


class EmailRefused(ConnectorError):
    """The server refused the message for good (5xx): the address or the content is wrong."""


#: headers folded only beyond RFC 5322's hard limit (a Message-ID stays on its line)
_POLICY = compat32.clone(max_line_length=998)
#: bodies in UTF-8, quoted-printable (readable where the text is ASCII)
_UTF8 = Charset("utf-8")
_UTF8.body_encoding = QP


def _header(value: str) -> str:
    """A header value: non-ASCII text as RFC 2047 encoded words (at most 75 characters each,
    folded), as a mail client expects; ASCII as it is."""
    return value if value.isascii() else Header(value, "utf-8").encode()


def _address(value: str) -> str:
    """An address header: a non-ASCII display name encoded, the address itself kept."""
    if value.isascii():
        return value
    name, addr = parseaddr(value)
    return formataddr((name, addr)) if addr else _header(value)


def _text(body: str, subtype: str) -> Message:
    part = MIMENonMultipart("text", subtype, policy=_POLICY)
    part.set_payload(body, _UTF8)
    return part


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
    ) -> Message:
        """A multipart/alternative message (text and HTML). Built with the `compat32` MIME
        classes: the `EmailMessage` API parses every header it is given and took ~0.9 ms a
        message, most of a channel batch's time (these take ~0.05 ms)."""
        msg = MIMEMultipart("alternative", policy=_POLICY)
        msg["From"] = _address(self.sender)
        msg["To"] = _address(to)
        msg["Subject"] = _header(subject)
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = message_id
        for k, v in (headers or {}).items():
            msg[k] = _header(v)
        msg.attach(_text(text, "plain"))
        msg.attach(_text(html, "html"))
        return msg

    @staticmethod
    def _drop(c: _Connection) -> None:
        smtp, c.smtp = c.smtp, None
        if smtp is not None:
            try:
                smtp.close()
            except OSError:
                pass

    def send_blocking(self, c: _Connection, msg: Message) -> None:
        """Send `msg` on connection `c` (the calling thread waits for the server)."""
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

    def _deliver(self, c: _Connection, msg: Message) -> None:
        if c.smtp is None:
            c.smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        c.smtp.send_message(msg)  # a refused recipient leaves the session reset (RSET)
        c.used = time.monotonic()

    async def acquire(self) -> _Connection:
        """A free connection of the pool (waits while all are busy)."""
        if self._free is None:
            self._free = asyncio.Queue()
            for c in self._connections:
                self._free.put_nowait(c)
        return await self._free.get()

    def release(self, c: _Connection) -> None:
        assert self._free is not None
        self._free.put_nowait(c)

    async def send(self, msg: Message) -> None:
        """Send on the first free connection of the pool (waits while all are busy)."""
        c = await self.acquire()
        try:
            await asyncio.to_thread(self.send_blocking, c, msg)
        finally:
            self.release(c)


class EmailChannel:
    """The email channel's sink: a batch of messages sent on the sender's pool of connections,
    each outcome settled as soon as it is known (a crash repeats at most the messages in flight,
    each recognisable by its Message-ID); a 5xx is a refusal, an unreachable server is down.

    Each connection of the pool sends a run of the batch's messages from one thread (taking the
    next message when it is done with one), as a plain SMTP client would: a hand-over to a thread
    per message cost a quarter of the sending rate. Once the server is found down, the messages
    not yet tried are answered down without trying."""

    def __init__(self, sender: EmailSender) -> None:
        self.sender = sender

    async def write_batch(
        self, items: Sequence[Message], settled: Settled | None = None
    ) -> list[Outcome]:
        if not items:
            return []
        sender = self.sender
        loop = asyncio.get_running_loop()
        results: list[Outcome | None] = [None] * len(items)
        # outcomes reach the loop in runs: a thread wakes it only when no wake-up is pending
        # (a wake-up per message cost the loop, and so the sending threads, a tenth of the rate)
        known: list[tuple[int, Outcome | BaseException]] = []
        woken = asyncio.Event()
        waking = [False]
        lock = threading.Lock()

        def report(item: tuple[int, Outcome | BaseException]) -> None:
            with lock:
                known.append(item)
                if waking[0]:
                    return
                waking[0] = True
            loop.call_soon_threadsafe(woken.set)

        queue = iter(range(len(items)))
        outage: list[str] = []

        def run(c: _Connection) -> None:
            while True:
                with lock:
                    i = next(queue, None)
                if i is None:
                    return
                result: Outcome | BaseException
                if outage:
                    result = down(outage[0])
                else:
                    try:
                        sender.send_blocking(c, items[i])
                        result = APPLIED
                    except DependencyDown as exc:
                        outage.append(str(exc))
                        result = down(str(exc))
                    except EmailRefused as exc:
                        result = refused(str(exc), type(exc).__name__)
                    except Exception as exc:  # noqa: BLE001 - raised by the caller below
                        result = exc
                report((i, result))

        connections = [await sender.acquire() for _ in range(min(sender.pool_size, len(items)))]
        runs = [asyncio.ensure_future(asyncio.to_thread(run, c)) for c in connections]
        failure: BaseException | None = None
        # outcomes settled concurrently: the caller writes those known by then as one group
        settling: list[asyncio.Future[None]] = []
        try:
            answered = 0
            while answered < len(items):
                await woken.wait()
                with lock:
                    woken.clear()
                    waking[0] = False
                    arrived, known[:] = known[:], []
                answered += len(arrived)
                for i, result in arrived:
                    if isinstance(result, BaseException):
                        failure = failure or result
                        continue
                    results[i] = result
                    if settled is not None:
                        settling.append(asyncio.ensure_future(settled(i, result)))
            for err in await asyncio.gather(*settling, return_exceptions=True):
                if isinstance(err, BaseException):
                    failure = failure or err
        finally:
            await asyncio.gather(*runs, return_exceptions=True)
            for c in connections:
                sender.release(c)
        if failure is not None:
            raise failure
        return [r for r in results if r is not None]
