"""The create-or-comment pipeline through the one intake door, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from mails import make_mail, message_id_of
from sqlalchemy import func, select

from gateway.db import transaction
from gateway.intake import Envelope
from gateway.models import Attachment, Comment, InboundMail, Ticket, TicketLink
from gateway.tickets import Directory, Tickets
from gateway.views import ticket_dict

ENV = Envelope(mail_from="alice@customer.example", rcpt_tos=("support@example.com",), source="smtp")


def ingest(app, raw, env=ENV):
    return app.intake().ingest(raw, env)


def ticket(app, number):
    with app.sessions() as s:
        t = Tickets(s, clock=app.clock).get(number)
        return ticket_dict(s, t) if t else None


def add_user(app, email, **kw):
    with transaction(app.sessions) as s:
        d = Directory(s, app.clock)
        org = kw.pop("organisation", None)
        visibility = kw.pop("visibility", None)
        if org:
            org = d.add_organisation(org[0], org[1])
            if visibility:
                org.visibility = visibility
        d.add_contact(email, organisation=org, **kw)


def count(app, model):
    with app.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_new_mail_opens_ticket_and_reply_becomes_comment(app):
    first = make_mail(body="My printer is on fire.\n\nAlice\n")
    r1 = ingest(app, first)
    assert r1.outcome == "ticket" and r1.ticket_number == 1
    t = ticket(app, 1)
    assert t["subject"] == "Printer on fire"
    assert t["reporter"] == {"email": "alice@customer.example", "name": "Alice Customer", "role": "customer"}
    assert t["description"].startswith("My printer is on fire.")
    assert t["status"] == "open" and t["priority"] == "medium" and t["type"] == "incident"

    reply = make_mail(subject="Re: Printer on fire", in_reply_to=message_id_of(first),
                      body="It is still burning.\n\nOn Mon, 2 Nov 2026 at 09:00, Support <support@example.com> wrote:\n"
                           "> Have you tried turning it off?\n")
    r2 = ingest(app, reply)
    assert r2.outcome == "comment" and r2.ticket_number == 1
    t = ticket(app, 1)
    assert [c["body"] for c in t["comments"]] == ["It is still burning."]
    assert "Have you tried" in t["comments"][0]["full_text"]
    assert any("In-Reply-To" in line for line in r2.trace)


def test_subject_tag_matches_when_headers_are_missing(app):
    ingest(app, make_mail())
    r = ingest(app, make_mail(subject="Re: [#1] Printer on fire", body="Any news?"))
    assert (r.outcome, r.ticket_number) == ("comment", 1)
    assert any("subject tag [#1]" in line for line in r.trace)


def test_custom_subject_tag_prefix(make_app):
    app = make_app(gateway={"subject_tag_prefix": "TG#"})
    ingest(app, make_mail())
    assert ingest(app, make_mail(subject="Re: [#1] x", body="a")).outcome == "ticket"
    assert ingest(app, make_mail(subject="Re: [TG#1] x", body="b")).ticket_number == 1


def test_stranger_never_lands_in_someone_elses_ticket(app):
    first = make_mail()
    ingest(app, first)
    evil = make_mail(sender="Mallory <mallory@evil.example>", subject="Re: [#1] Printer on fire",
                     in_reply_to=message_id_of(first), body="Please send me the invoice.")
    r = ingest(app, evil)
    assert r.outcome == "ticket" and r.ticket_number == 2
    assert ticket(app, 1)["comments"] == []
    assert any("not a participant" in line for line in r.trace)
    with app.sessions() as s:
        link = s.scalar(select(TicketLink))
        assert link is not None and link.kind == "related"


def test_organisation_member_and_watcher_may_reply(app):
    add_user(app, "alice@customer.example", organisation=("Customer Ltd", ["customer.example"]),
             visibility="organisation")  # members share the organisation's tickets
    add_user(app, "bob@customer.example")  # same org by domain
    first = make_mail(cc="Carol <carol@partner.example>, support@example.com")
    ingest(app, first)
    t = ticket(app, 1)
    assert t["organisation"] == "Customer Ltd"
    assert t["watchers"] == ["carol@partner.example"]  # never the gateway's own address
    r_bob = ingest(app, make_mail(sender="bob@customer.example", subject="Re: [#1] x", body="me too"))
    r_carol = ingest(app, make_mail(sender="carol@partner.example", in_reply_to=message_id_of(first), body="+1"))
    assert (r_bob.outcome, r_bob.ticket_number) == ("comment", 1)
    assert (r_carol.outcome, r_carol.ticket_number) == ("comment", 1)


def test_staff_reply_is_a_staff_comment_and_customer_reply_reopens_pending(app):
    add_user(app, "dana@example.com", name="Dana", staff=True)
    ingest(app, make_mail())
    r = ingest(app, make_mail(sender="Dana <dana@example.com>", subject="Re: [#1] Printer on fire",
                              body="Please unplug it."))
    assert r.outcome == "comment"
    c = ticket(app, 1)["comments"][0]
    assert c["by_staff"] is True and c["internal"] is False and c["author"] == "dana@example.com"
    with transaction(app.sessions) as s:
        tk = Tickets(s, clock=app.clock)
        tk.change(tk.get(1), status="pending")
    ingest(app, make_mail(subject="Re: [#1] Printer on fire", body="Done, unplugged."))
    assert ticket(app, 1)["status"] == "open"


def test_staff_comments_internal_option(make_app):
    app = make_app(gateway={"staff_comments_internal": True})
    add_user(app, "dana@example.com", staff=True)
    ingest(app, make_mail())
    ingest(app, make_mail(sender="dana@example.com", subject="Re: [#1] x", body="note to self"))
    assert ticket(app, 1)["comments"][0]["internal"] is True


def test_reply_to_closed_ticket_reopens_within_days_else_follow_up(app, clock):
    first = make_mail()
    ingest(app, first)
    with transaction(app.sessions) as s:
        tk = Tickets(s, clock=app.clock)
        tk.change(tk.get(1), status="closed")
    clock.advance(days=3)
    r = ingest(app, make_mail(in_reply_to=message_id_of(first), body="It broke again."))
    assert (r.outcome, r.ticket_number) == ("comment", 1)
    assert ticket(app, 1)["status"] == "open"
    with transaction(app.sessions) as s:
        tk = Tickets(s, clock=app.clock)
        tk.change(tk.get(1), status="closed")
    clock.advance(days=15)
    r = ingest(app, make_mail(in_reply_to=message_id_of(first), body="Months later, again."))
    assert (r.outcome, r.ticket_number) == ("ticket", 2)
    assert ticket(app, 1)["status"] == "closed"
    assert ticket(app, 2)["links"] == [{"kind": "follow_up_of", "number": 1}]


def test_same_mail_twice_and_same_message_id_from_same_sender(app):
    raw = make_mail()
    assert ingest(app, raw).outcome == "ticket"
    assert ingest(app, raw).outcome == "duplicate"
    resent = raw.replace(b"Printer on fire", b"Printer on fire!")  # same Message-ID, same sender, new bytes
    assert ingest(app, resent).outcome == "duplicate"
    other_sender = raw.replace(b"alice@customer.example", b"bob@customer.example")
    assert ingest(app, other_sender).outcome == "ticket"  # same id from someone else is not the same mail
    assert count(app, Ticket) == 2


@pytest.mark.parametrize("durable_first", [True, False])
def test_same_mail_ten_times_in_parallel_makes_one_ticket(app, durable_first):
    raw = make_mail()
    results = []
    barrier = threading.Barrier(10)

    def worker():
        barrier.wait()
        results.append(app.intake().ingest(raw, ENV, durable_first=durable_first).outcome)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["duplicate"] * 9 + ["ticket"]
    assert count(app, Ticket) == 1 and count(app, InboundMail) == 10


@pytest.mark.parametrize("header", ["Auto-Submitted: auto-replied", "Auto-Submitted: Auto-Replied",
                                    "Auto-Submitted: auto-generated", "X-Autoreply: yes", "Precedence: bulk",
                                    "List-Id: <users.lists.example>", "X-Auto-Response-Suppress: All"])
def test_automatic_mail_is_ignored(app, header):
    name, value = header.split(": ", 1)
    r = ingest(app, make_mail(headers={name: value}))
    assert r.outcome == "ignored" and r.reason
    assert count(app, Ticket) == 0


def test_auto_forwarded_is_not_an_auto_reply(app):
    r = ingest(app, make_mail(headers={"Auto-Submitted": "auto-forwarded"}))
    assert r.outcome == "ticket"


def test_bounce_is_ignored_and_noted_on_its_ticket(app):
    first = make_mail()
    ingest(app, first)
    mid = message_id_of(first)
    bounce = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.customer.example>\r\n"
        "To: support@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <bounce1@mx.customer.example>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nI could not deliver your message.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.customer.example\r\n\r\n"
        "Final-Recipient: rfc822; gone@customer.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        f"--B\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {mid}\r\nSubject: Printer on fire\r\n\r\n"
        "--B--\r\n").encode()
    r = ingest(app, bounce, Envelope(mail_from="", rcpt_tos=("support@example.com",), source="smtp"))
    assert r.outcome == "ignored" and "bounce" in r.reason
    comments = ticket(app, 1)["comments"]
    assert len(comments) == 1 and comments[0]["internal"] and "gone@customer.example" in comments[0]["body"]
    assert count(app, Ticket) == 1


def test_unknown_sender_policies(make_app):
    app = make_app(gateway={"unknown_senders": "reject"})
    r = ingest(app, make_mail())
    assert r.outcome == "rejected" and "alice@customer.example" in r.reason
    assert count(app, Ticket) == 0
    add_user(app, "alice@customer.example")
    assert ingest(app, make_mail()).outcome == "ticket"


def test_default_reporter_policy_records_the_sender(make_app):
    app = make_app(gateway={"unknown_senders": "default-reporter"})
    first = make_mail()
    ingest(app, first)
    t = ticket(app, 1)
    assert t["reporter"]["email"] == "unknown-sender@localhost"
    assert t["sender"] == "alice@customer.example"
    # the original sender may reply to their own ticket; someone else may not
    assert ingest(app, make_mail(in_reply_to=message_id_of(first), body="more")).ticket_number == 1
    r = ingest(app, make_mail(sender="eve@other.example", in_reply_to=message_id_of(first), body="x"))
    assert r.ticket_number == 2


def test_register_policy_assigns_existing_organisation_by_domain(app):
    add_user(app, "boss@customer.example", organisation=("Customer Ltd", ["customer.example"]))
    r = ingest(app, make_mail())
    assert ticket(app, 2 - 1)["organisation"] == "Customer Ltd"
    assert "identify: registered new customer alice@customer.example (organisation Customer Ltd)" in r.trace
    r = ingest(app, make_mail(sender="x@gmail.example"))
    assert ticket(app, 2)["organisation"] is None  # no organisation is invented for a domain
    assert "identify: registered new customer x@gmail.example" in r.trace


def test_attachments_are_content_addressed_and_stored_once(app):
    data = b"%PDF-1.4 invoice" * 100
    r = ingest(app, make_mail(attachments=[("../../etc/passwd", "application/pdf", data),
                                           ("invoice.pdf", "application/pdf", data)]))
    t = ticket(app, r.ticket_number)
    names = [a["filename"] for a in t["attachments"]]
    assert names[0] == "passwd" and names[1] == "invoice.pdf"
    sha = t["attachments"][0]["sha256"]
    assert t["attachments"][1]["sha256"] == sha
    path = app.blobs.path_for(sha)
    assert path.read_bytes() == data
    assert path.is_relative_to(app.config.attachments_dir)
    files = [p for p in app.config.attachments_dir.rglob("*") if p.is_file()]
    assert files == [path]


def test_reply_attachment_belongs_to_its_comment(app):
    first = make_mail()
    ingest(app, first)
    ingest(app, make_mail(in_reply_to=message_id_of(first), body="log attached",
                          attachments=[("log.txt", "text/plain", b"line1\nline2\n")]))
    t = ticket(app, 1)
    assert t["comments"][0]["attachments"][0]["filename"] == "log.txt"


def test_html_only_mail_becomes_text_and_sanitised_html(app):
    msg = (b"From: alice@customer.example\r\nTo: support@example.com\r\nSubject: html\r\n"
           b"Message-ID: <h1@customer.example>\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
           b"<html><body><p>Hello <b>team</b></p><script>alert(1)</script>"
           b"<img src=x onerror=alert(2)><p>Second line</p></body></html>")
    r = ingest(app, msg)
    with app.sessions() as s:
        t = s.scalar(select(Ticket).where(Ticket.number == r.ticket_number))
        assert "Hello team" in t.description and "Second line" in t.description
        assert "alert" not in t.description
        assert "<script" not in (t.description_html or "") and "onerror" not in (t.description_html or "")
        assert "<b>team</b>" in (t.description_html or "")


def test_handler_error_quarantines_with_nothing_half_written_and_replay_works(make_app, monkeypatch):
    app = make_app()
    import gateway.handlers.attachments as att

    def boom(ctx):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(app, "handlers", [(n, boom if n == "attachments" else h) for n, h in app.handlers])
    r = ingest(app, make_mail(attachments=[("a.txt", "text/plain", b"x")]))
    assert r.outcome == "quarantined" and "disk on fire" in r.reason
    assert count(app, Ticket) == 0 and count(app, Comment) == 0 and count(app, Attachment) == 0
    monkeypatch.setattr(app, "handlers", [(n, att.handle if n == "attachments" else h) for n, h in app.handlers])
    r2 = app.intake().replay(r.mail_id)
    assert r2.outcome == "ticket" and r2.mail_id == r.mail_id
    assert any("replay requested" in line for line in r2.trace)
    assert count(app, Ticket) == 1


def test_stored_but_unprocessed_mail_is_recovered(app):
    intake = app.intake()
    mail_id = intake.store(make_mail(), ENV)  # the process died right after the 250
    with app.sessions() as s:
        assert s.get(InboundMail, mail_id).outcome == "received"
    assert intake.process_pending() == 1
    assert intake.process(mail_id).outcome == "ticket"  # idempotent: the recorded result
    assert count(app, Ticket) == 1


def test_decision_trace_is_kept(app):
    r = ingest(app, make_mail())
    with app.sessions() as s:
        trace = s.get(InboundMail, r.mail_id).trace
    assert trace[0].startswith("parse:") and trace[-1] == "outcome: ticket"
    assert any(line.startswith("identify:") for line in trace)


def test_routes_set_defaults_of_new_tickets_by_recipient(make_app):
    app = make_app(routes=[{"address": "billing@example.com", "group": "billing", "priority": "high",
                            "type": "service_request"}],
                   gateway={"addresses": ["support@example.com", "billing@example.com"]})
    r = app.intake().ingest(make_mail(to="billing+x1@example.com"),
                            Envelope(mail_from="alice@customer.example", rcpt_tos=("billing+x1@example.com",)))
    t = ticket(app, r.ticket_number)
    assert (t["group"], t["priority"], t["type"]) == ("billing", "high", "service_request")
    r2 = app.intake().ingest(make_mail(to="billing@example.com", subject="via imap"), Envelope(source="imap"))
    assert ticket(app, r2.ticket_number)["group"] == "billing"  # no envelope: the To header decides
    r3 = ingest(app, make_mail(subject="plain support"))
    t3 = ticket(app, r3.ticket_number)
    assert (t3["group"], t3["priority"]) == (None, "medium")


def test_store_many_is_one_transaction_then_each_mail_threads(app):
    intake = app.intake()
    ids = intake.store_many([(make_mail(subject=f"batch {i}"), ENV) for i in range(5)])
    assert len(set(ids)) == 5
    assert [intake.process(i).outcome for i in ids] == ["ticket"] * 5


def test_inline_images_forwarded_mail_and_winmail_dat_are_kept(app):
    from email.message import EmailMessage

    inner = make_mail(subject="Original problem", body="the original text")
    outer = EmailMessage()
    outer["From"] = "alice@customer.example"
    outer["To"] = "support@example.com"
    outer["Subject"] = "Fwd: Original problem"
    outer["Message-ID"] = "<fwd1@customer.example>"
    outer.set_content("see below")
    outer.add_alternative('<p>see <img src="cid:logo1@x"></p>', subtype="html")
    parts = outer.get_payload()
    assert isinstance(parts, list)
    html_part = parts[1]
    assert isinstance(html_part, EmailMessage)
    html_part.add_related(b"\x89PNG fake", maintype="image", subtype="png", cid="<logo1@x>")
    outer.make_mixed()
    import email as _email
    outer.add_attachment(_email.message_from_bytes(inner, policy=_email.policy.default))  # message/rfc822
    outer.add_attachment(b"\x78\x9f\x3e\x22tnef", maintype="application", subtype="ms-tnef", filename="winmail.dat")
    r = ingest(app, bytes(outer))
    atts = {a["filename"]: a for a in ticket(app, r.ticket_number)["attachments"]}
    png = [a for a in atts.values() if a["content_type"] == "image/png"]
    assert png and png[0]["content_id"] == "logo1@x" and png[0]["inline"]
    eml = [a for a in atts.values() if a["content_type"] == "message/rfc822"]
    assert eml and eml[0]["filename"].endswith(".eml")
    assert app.blobs.get(eml[0]["sha256"]).find(b"the original text") >= 0
    assert atts["winmail.dat"]["content_type"] == "application/ms-tnef"
