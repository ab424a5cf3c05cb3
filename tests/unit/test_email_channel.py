"""EmailChannel against a real SMTP server (aiosmtpd, in this process): every message of a batch
answered and settled exactly once, over the pool's connections, outcomes reaching the event loop
in runs; a refused recipient refuses only its own message; an unreachable server is down."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from email import message_from_bytes
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from connectors.base import Outcome
from connectors.email import EmailChannel, EmailSender


class _Inbox:
    def __init__(self) -> None:
        self.ids: list[str] = []

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.startswith("refuse"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.ids.append(str(message_from_bytes(envelope.content)["Message-ID"]))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp() -> Any:
    inbox = _Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()


def _messages(sender: EmailSender, n: int, refuse: set[int] = frozenset()) -> list[Any]:  # type: ignore[assignment]
    return [
        sender.build(
            to=f"{'refuse' if i in refuse else 'user'}{i}@example.in",
            subject=f"message {i}",
            text=f"body {i}",
            html=f"<p>body {i}</p>",
            message_id=f"<m{i}@test.mohallamart>",
        )
        for i in range(n)
    ]


def test_a_batch_is_sent_and_settled_once_per_message(smtp: Any) -> None:
    inbox, port = smtp
    sender = EmailSender("127.0.0.1", port, "shop@example.in", pool_size=4)
    items = _messages(sender, 120, refuse={7, 80})
    settled: Counter[int] = Counter()
    seen: dict[int, Outcome] = {}

    async def on_settled(i: int, o: Outcome) -> None:
        settled[i] += 1
        seen[i] = o
        await asyncio.sleep(0)

    # bounded: an outcome lost on its way to the loop would leave the batch waiting for ever
    outcomes = asyncio.run(
        asyncio.wait_for(EmailChannel(sender).write_batch(items, on_settled), 30)
    )

    assert len(outcomes) == 120
    assert [o.status for i, o in enumerate(outcomes) if i in (7, 80)] == ["refused", "refused"]
    assert all(o.status == "applied" for i, o in enumerate(outcomes) if i not in (7, 80))
    assert "550" in outcomes[7].reason
    assert settled == Counter(range(120)), "each message settled exactly once"
    assert all(seen[i] == outcomes[i] for i in range(120))
    want = sorted(f"<m{i}@test.mohallamart>" for i in range(120) if i not in (7, 80))
    assert sorted(inbox.ids) == want, "each accepted message delivered once"


def test_an_unreachable_server_answers_down_for_every_message() -> None:
    sender = EmailSender("127.0.0.1", _free_port(), "shop@example.in", pool_size=2)
    outcomes = asyncio.run(
        asyncio.wait_for(EmailChannel(sender).write_batch(_messages(sender, 10)), 30)
    )
    assert [o.status for o in outcomes] == ["down"] * 10
