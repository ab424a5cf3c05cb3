"""Notifications (first slice of issue 7): the welcome email of a registration, sent once per event
through the outbox, opt-outs respected, a replay of the role sending nothing new."""

from __future__ import annotations

import email.policy
from email import message_from_bytes
from email.message import EmailMessage
from typing import Any

import pytest

from mohallamart.stack.smtpd import read_messages
from schemas.catalog import TOPICS
from streams.agents.workflows import derived_id
from streams.notify import message_id
from tests.integration._cli import mohallamart
from tests.integration._pipeline import Pipeline, example, uid
from tests.integration._readside import reader
from tests.integration._support import poll

pytestmark = pytest.mark.integration


def _mails(p: Pipeline, to: str) -> list[EmailMessage]:
    maildir = p.settings.stack_dir / "smtp" / "maildir"
    out = []
    for m in read_messages(maildir):
        if m["X-Smtp-Rcpt-To"] == to:
            parsed = message_from_bytes(m.as_bytes(), policy=email.policy.default)
            assert isinstance(parsed, EmailMessage)
            out.append(parsed)
    return out


def _register(p: Pipeline, **prefs: Any) -> tuple[str, str, dict[str, Any]]:
    user = uid("usr")
    address = f"{user}@example.in"
    data = example("user.registered", user_id=user, email=address, name="Priya <b>& Co</b>")
    data["preferences"] = {**data["preferences"], **prefs}
    ev = p.post("user.registered", data)
    return user, address, ev


def test_a_registration_sends_one_welcome_email_and_a_replay_sends_nothing_new(
    pipeline: Pipeline, make_key: Any
) -> None:
    p = pipeline
    user, address, ev = _register(p, email_opt_in=True)
    mails = poll(lambda: _mails(p, address) or None, timeout=60, what="the welcome email")
    (mail,) = mails
    assert mail["To"] == address
    assert mail["Subject"] == "Welcome to MohallaMart, Priya <b>& Co</b>"
    request_id = derived_id(ev["id"], "welcome")
    assert mail["Message-ID"].strip() == message_id(request_id, "EMAIL")
    # followed by the registration's trace id, as it is in Kafka
    (cause,) = p.events_of(TOPICS["user"].name, "user.registered", [user])
    assert mail["X-MohallaMart-Trace-Id"].strip() == cause["trace_id"]
    text = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    assert "Namaste Priya <b>& Co</b>" in text.get_content()
    # user data is escaped in the HTML part
    assert "Namaste Priya &lt;b&gt;&amp; Co&lt;/b&gt;" in html.get_content()
    # the delivery log (scope admin)
    log = reader(p, make_key(["admin"])).get("/v1/notifications", params={"user_id": user})
    assert log.status_code == 200, log.text
    (entry,) = log.json()["notifications"]
    assert (entry["event_id"], entry["channel"], entry["recipient"]) == (
        request_id,
        "EMAIL",
        address,
    )
    assert (entry["status"], entry["attempts"], entry["kind"]) == ("SENT", 1, "WELCOME")
    denied = reader(p, make_key(["read"])).get("/v1/notifications", params={"user_id": user})
    assert denied.status_code == 403

    # the role replayed from the beginning of its topic: nothing is sent again
    p.workers.stop("notifications")
    out = mohallamart("offsets", "reset", "--role", "notifications", "--to-earliest", "--execute")
    assert out.returncode == 0, out.stderr
    p.workers.start("notifications", "notifications")
    p.caught_up("notifications", ["notification"], timeout=120)
    assert len(_mails(p, address)) == 1


def test_an_opted_out_channel_receives_nothing(pipeline: Pipeline) -> None:
    p = pipeline
    user, address, ev = _register(p, email_opt_in=False)
    request_id = derived_id(ev["id"], "welcome")
    row = p.wait_row(
        "SELECT status, last_error FROM notification_outbox WHERE event_id = %s",
        request_id,
        timeout=60,
        what="the request to be handled",
    )
    assert row == ("SKIPPED", "opted out")
    assert _mails(p, address) == []
