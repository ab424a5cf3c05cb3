"""What a trace shows of people's addresses (connectors.trace): masked, in recipients and in the
error texts providers send back."""

from __future__ import annotations

from connectors.trace import mask, scrub


def test_recipients_are_masked() -> None:
    assert mask("priya.sharma@example.in") == "p***@example.in"
    assert mask("+919845012345") == "+91*******345"
    assert mask("1234") == "***"


def test_error_texts_lose_addresses_and_phone_numbers() -> None:
    text = scrub("HTTP 400: {'to': '+91 98450 12345', 'cc': 'priya.sharma@example.in'}")
    assert text is not None
    assert "98450" not in text and "priya.sharma" not in text
    assert "p***@example.in" in text and "+91" in text
    assert scrub(None) is None
    assert scrub("Connection refused") == "Connection refused"
    assert len(scrub("x" * 2000) or "") == 500
