"""`classify` alone: auto-replies and bulk mail are ignored; a bounce of a known ticket's mail becomes an
internal note on it; a person's mail goes on."""

from __future__ import annotations

from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest
from handlerkit import MakeCtx
from mails import make_mail

from gateway.events import MailIgnored
from gateway.handlers import classify
from gateway.outcomes import Ignore
from gateway.prepare import prepare_one
from gateway.store.memory import InMemoryStore


def bounce_of(message_id: str) -> bytes:
    """A delivery status notification (RFC 3464) for the mail `message_id`, built part by part."""
    dsn = MIMEMultipart("report", report_type="delivery-status")
    dsn["From"] = "Mail Delivery System <MAILER-DAEMON@mx.customer.example>"
    dsn["To"] = "support@example.com"
    dsn["Subject"] = "Undelivered Mail Returned to Sender"
    dsn["Message-ID"] = "<bounce1@mx.customer.example>"
    dsn.attach(MIMEText("I could not deliver your message.\n"))
    per_message, per_recipient = Message(), Message()
    per_message["Reporting-MTA"] = "dns; mx.customer.example"
    per_recipient["Final-Recipient"] = "rfc822; gone@customer.example"
    per_recipient["Action"] = "failed"
    per_recipient["Status"] = "5.1.1"
    status = MIMEBase("message", "delivery-status")
    status.set_payload([per_message, per_recipient])
    dsn.attach(status)
    headers = MIMEText(f"Message-ID: <{message_id}>\nSubject: x\n\n", "rfc822-headers")
    dsn.attach(headers)
    return dsn.as_bytes()


def test_a_person_s_mail_goes_on(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = make_ctx()
    classify.handle(ctx)
    assert ctx.verdict is None and ctx.trace == ["classify: written by a person"] and store.events == []


def test_an_auto_reply_is_ignored_and_said(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = make_ctx(headers={"Auto-Submitted": "auto-replied"})
    with pytest.raises(Ignore) as e:
        classify.handle(ctx)
    assert ctx.verdict is not None and ctx.verdict.kind == "auto_reply"
    assert e.value.reason.startswith("auto_reply: ")
    (event,) = store.events
    assert isinstance(event, MailIgnored) and event.kind == "auto_reply" and event.mail_id == ctx.mail.id
    assert event.ticket is None


def test_a_bounce_of_a_ticket_s_mail_is_noted_on_it(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    t = store.open_ticket(store.add_contact("gone@customer.example"), message_ids=["out1@example.com"])
    raw = bounce_of("out1@example.com")
    for prepared in (None, prepare_one(raw, 20, 500, None, classify_for=("", ("example.com",)))):
        ctx = make_ctx(raw, envelope_from="", prepared=prepared)
        with pytest.raises(Ignore) as e:
            classify.handle(ctx)
        assert e.value.reason.startswith("bounce: ") and ctx.ticket is t
        assert ctx.comment is not None and ctx.comment.internal and ctx.comment.source == "system"
        assert ctx.comment.body == "Delivery failure (permanent, status 5.1.1) for gone@customer.example."
        assert isinstance(store.events[-1], MailIgnored) and store.events[-1].details["recipients"] == [
            "gone@customer.example"]
    assert len(store.comments) == 2  # the same with the worker's classification


def test_a_bounce_of_an_unknown_mail_notes_nothing(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = make_ctx(bounce_of("unknown@example.com"), envelope_from="")
    with pytest.raises(Ignore):
        classify.handle(ctx)
    assert ctx.ticket is None and store.comments == []


def test_bulk_mail_is_ignored(make_ctx: MakeCtx) -> None:
    with pytest.raises(Ignore) as e:
        classify.handle(make_ctx(make_mail(headers={"Precedence": "bulk"})))
    assert e.value.reason.startswith("bulk: ")
