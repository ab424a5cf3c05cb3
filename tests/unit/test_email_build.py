"""The email a notification becomes, read back as a mail client reads it: headers (non-ASCII
ones encoded, a Message-ID on one line), a text and an HTML part, UTF-8 intact."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from connectors.email import EmailSender

MSG_ID = "<14b983df-2937-56dd-b973-10bf1abe42fc.email@notifications.mohallamart>"


def _read(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_a_message_reads_back_as_written() -> None:
    sender = EmailSender("localhost", 25, "मोहल्ला Mart <no-reply@mohallamart.example>")
    subject = "नमस्ते Priya, your order ord_1001 is confirmed " * 2
    msg = sender.build(
        to="प्रिया शर्मा <priya@example.in>",
        subject=subject,
        text="Total: ₹52.00\nThanks",
        html="<p>Total: &#8377;52.00</p>",
        message_id=MSG_ID,
        headers={"X-MohallaMart-Event-Id": "14b983df"},
    )
    raw = msg.as_bytes()
    assert raw.isascii()  # every non-ASCII character encoded
    assert f"Message-ID: {MSG_ID}\n".encode() in raw  # not folded onto a line of its own
    assert max(len(line) for line in raw.splitlines()) <= 998
    back = _read(raw)
    assert back["Subject"] == subject
    assert back["From"].addresses[0].display_name == "मोहल्ला Mart"
    assert back["From"].addresses[0].addr_spec == "no-reply@mohallamart.example"
    assert back["To"].addresses[0].addr_spec == "priya@example.in"
    assert back["Message-ID"] == MSG_ID
    assert back["X-MohallaMart-Event-Id"] == "14b983df"
    text = back.get_body(preferencelist=("plain",))
    html = back.get_body(preferencelist=("html",))
    assert text is not None and text.get_content().rstrip("\n") == "Total: ₹52.00\nThanks"
    assert html is not None and "&#8377;52.00" in html.get_content()


def test_ascii_text_stays_readable_in_the_raw_message() -> None:
    msg = EmailSender("localhost", 25, "MohallaMart <no-reply@mohallamart.example>").build(
        to="a@example.in",
        subject="Hello",
        text="Your order is packed.",
        html="<p>x</p>",
        message_id="<1@x>",
    )
    raw = msg.as_bytes()
    assert b"Subject: Hello\n" in raw and b"Your order is packed." in raw
