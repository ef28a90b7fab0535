"""Issue 16, class 4: machine mail (mails made here) is classified with its reason, never answered, never a ticket;
a person who forwards such a mail to support gets a ticket."""

from __future__ import annotations

import pytest
from conftest import make_config, new_sqlite_database
from sqlalchemy import func, select

from gateway.app import build_app
from gateway.intake import Envelope
from gateway.models import OutboxMail

DSN = (b'MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary="d"\n\n'
       b"--d\nContent-Type: text/plain\n\nThis is the mail system at host mx.example.net.\n"
       b"I'm sorry to have to inform you that your message could not be delivered.\n\n"
       b"<bob@gone.example>: user unknown\n"
       b"--d\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"
       b"Final-Recipient: rfc822; bob@gone.example\nAction: failed\nStatus: 5.1.1\n\n"
       b"--d\nContent-Type: text/rfc822-headers\n\nFrom: support@example.com\nTo: bob@gone.example\n"
       b"Message-ID: <ack-1@example.com>\nSubject: [#1] Printer\n\n--d--\n")

MACHINE = {
    "return-path-only": (b"Return-Path: <>\nFrom: Mail System <system@mx.example.net>\nTo: support@example.com\n"
                         b"Subject: Notice\n\nSomething about your message.\n", "Return-Path: <>"),
    "return-path-bounce": (b"Return-Path: <>\nFrom: Postoffice <office@mx.example.net>\nTo: support@example.com\n"
                           b"Subject: Returned mail\n" + DSN, "delivery-status"),
    "mailer-daemon": (b"From: MAILER-DAEMON\nTo: support@example.com\nSubject: Warning\n\nYour mail is delayed.\n",
                      "mailer-daemon"),
    "mailman-confirm": (b"From: users-request@lists.example.org\nTo: support@example.com\n"
                        b"Subject: confirm 0f3a9d0c8b7e6f5a4d3c2b1a09f8e7d6c5b4a392\n\n"
                        b"Mailing list subscription confirmation notice for mailing list Users\n", "list manager"),
    "mailman-admin": (b"From: users-owner@lists.example.org\nTo: support@example.com\nX-List-Administrivia: yes\n"
                      b"Subject: Your message to Users awaits moderator approval\n\nPosting to a moderated list\n",
                      "X-List-Administrivia"),
    "majordomo": (b"From: Majordomo@lists.example.org\nTo: support@example.com\nSubject: Majordomo results\n\n"
                  b">>>> subscribe users\nSucceeded.\n", "majordomo"),
    "fml": (b"From: users-ctl@ml.example.jp\nTo: support@example.com\nSubject: Subscribe request result (users ML)\n\n"
            b"Your subscription request was accepted.\n", "users-ctl"),
    "sympa": (b"From: SYMPA <sympa@lists.example.org>\nTo: support@example.com\nSubject: Results of your commands\n\n"
              b"> subscribe users\nYou are now subscribed.\n", "sympa"),
    "arf": (b"From: Abuse Desk <abuse@isp.example>\nTo: support@example.com\nSubject: Abuse report\nMIME-Version: 1.0\n"
            b'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\n\n'
            b"--b\nContent-Type: text/plain\n\nThis is an email abuse report.\n"
            b"--b\nContent-Type: message/feedback-report\n\nFeedback-Type: abuse\nUser-Agent: FBL/1.0\nVersion: 1\n\n"
            b"--b\nContent-Type: message/rfc822\n\nFrom: support@example.com\nSubject: [#1] Printer\n\nhello\n--b--\n",
            "feedback-report"),
    "sms-gateway": (b"From: 4915112345678@sms.carrier.example\nTo: support@example.com\nSubject: Re: [#1] Printer\n\n"
                    b"Your message could not be delivered to this SMS number: subscriber unknown.\n", "SMS"),
    "sms-report": (b"From: SMS Gateway <sms-gateway@carrier.example>\nTo: support@example.com\n"
                   b"Subject: Delivery report\n\n"
                   b"SMS to +49 170 1234567 failed: number not reachable.\n", "SMS"),
}

PEOPLE = {
    "forwarded-inline": (b"From: Alice <alice@customer.example>\nTo: support@example.com\n"
                         b"Subject: Fwd: Undelivered Mail Returned to Sender\n\nHi, I got this when writing to Bob:\n\n"
                         b"> This is the mail system at host mx.example.net.\n"
                         b"> Your message could not be delivered to bob@gone.example: user unknown\n"),
    "forwarded-attached": (b"From: Alice <alice@customer.example>\nTo: support@example.com\n"
                           b"Subject: Fwd: Returned mail\n"
                           b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="o"\n\n'
                           b"--o\nContent-Type: text/plain\n\nWhy does this bounce?\n"
                           b"--o\nContent-Type: message/rfc822\n\nReturn-Path: <>\nFrom: MAILER-DAEMON@mx.example.net\n"
                           b"Subject: Undelivered Mail Returned to Sender\n" + DSN + b"--o--\n"),
    "complaint-about-delivery": (b"From: Alice <alice@customer.example>\nTo: support@example.com\n"
                                 b"Subject: Mails not delivered\n\nHi, since Monday our mails are not delivered to "
                                 b"our customers. Can you check?\n"),
    "complaint-about-sms": (b"From: Alice <alice@customer.example>\nTo: support@example.com\n"
                            b"Subject: SMS alerts not delivered\n\n"
                            b"Our SMS alerts could not be delivered since Monday.\n"),
    "asks-about-a-list": (b"From: Bob <bob@customer.example>\nTo: support@example.com\n"
                          b"Subject: Confirmation of your subscription\n\nI never got the confirmation mail.\n"),
}


@pytest.fixture
def app(tmp_path):
    a = build_app(make_config(tmp_path, new_sqlite_database(tmp_path / "db.sqlite")))
    yield a
    a.close()


def _outbox(app) -> int:
    with app.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(OutboxMail)) or 0)


@pytest.mark.parametrize("name", sorted(MACHINE))
def test_machine_mail_is_classified_and_never_answered(app, name: str) -> None:
    raw, evidence = MACHINE[name]
    r = app.intake().ingest(raw, Envelope(source="file"))  # no envelope sender known: a file, an IMAP folder
    assert r.outcome == "ignored", (r.reason, r.trace)
    assert evidence.lower() in (r.reason or "").lower(), r.reason
    assert any(t.startswith("classify: ") and evidence.lower() in t.lower() for t in r.trace), r.trace
    assert r.ticket_number is None and _outbox(app) == 0


@pytest.mark.parametrize("name", sorted(PEOPLE))
def test_a_person_writing_about_machine_mail_gets_a_ticket(app, name: str) -> None:
    r = app.intake().ingest(PEOPLE[name], Envelope(source="file"))
    assert r.outcome == "ticket", (r.reason, r.trace)
    assert "classify: written by a person" in r.trace
    assert _outbox(app) == 1  # the acknowledgement


def test_an_envelope_sender_given_by_the_transport_wins_over_return_path(app) -> None:
    # Return-Path is what the last MTA wrote; a transport that knows the real envelope sender says it
    raw = b"Return-Path: <>\nFrom: Alice <alice@customer.example>\nTo: support@example.com\nSubject: Hi\n\nHello\n"
    r = app.intake().ingest(raw, Envelope(source="smtp", mail_from="alice@customer.example",
                                          rcpt_tos=("support@example.com",)))
    assert r.outcome == "ticket", (r.reason, r.trace)
