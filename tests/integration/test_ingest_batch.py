"""Intake.batch(): many mails in one write transaction (file, Maildir and mbox imports), each in a savepoint."""

from __future__ import annotations

import pytest
from mails import make_mail, message_id_of
from sqlalchemy import create_engine, func, select

from gateway.intake import Envelope, Intake
from gateway.models import Attachment, Comment, InboundMail, InboundRaw, Ticket

ENV = Envelope(source="file", source_ref="test")


def count(app, model, *where):
    with app.sessions() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def visible_elsewhere(app):
    """Mail rows a reader on its own connection sees (a plain read, no write lock) while a batch is open."""
    engine = create_engine(app.engine.url.render_as_string(hide_password=False))
    try:
        with engine.connect() as conn:
            return conn.scalar(select(func.count()).select_from(InboundMail))
    finally:
        engine.dispose()


def test_batch_threads_in_order_and_stores_nothing_before_the_commit(app):
    first = make_mail(body="Screen is black.\n")
    reply = make_mail(subject="Re: [#1] Printer on fire", in_reply_to=message_id_of(first), body="Still black.\n")
    b = app.intake().batch()
    try:
        results = [b.ingest(first, ENV), b.ingest(reply, ENV), b.ingest(first, ENV),
                   b.ingest(make_mail(subject="another"), ENV)]
        assert visible_elsewhere(app) == 0  # not durable yet: nobody else sees any of it
        b.commit()
    finally:
        b.close()
    assert [r.outcome for r in results] == ["ticket", "comment", "duplicate", "ticket"]
    assert [r.ticket_number for r in results] == [1, 1, None, 2]
    assert count(app, InboundMail) == 4 and count(app, InboundRaw) == 4 and count(app, Ticket) == 2
    with app.sessions() as s:
        mail = s.get(InboundMail, results[1].mail_id)
        assert mail.raw.data == reply and mail.attempts == 1 and mail.outcome == "comment"


def test_a_batch_closed_without_commit_stores_nothing(app):
    b = app.intake().batch()
    b.ingest(make_mail(), ENV)
    b.ingest(make_mail(subject="two"), ENV)
    b.close()
    assert count(app, InboundMail) == 0 and count(app, Ticket) == 0
    with pytest.raises(RuntimeError):
        b.ingest(make_mail(), ENV)


def test_a_mail_failing_in_the_pipeline_is_quarantined_alone(make_app, monkeypatch):
    app = make_app()
    attachments_handler = dict(app.handlers)["attachments"]

    def fragile(ctx):
        if ctx.parsed.subject == "bad":
            raise RuntimeError("disk on fire")
        attachments_handler(ctx)

    monkeypatch.setattr(app, "handlers", [(n, fragile if n == "attachments" else h) for n, h in app.handlers])
    b = app.intake().batch()
    out = [b.ingest(make_mail(subject=subj, attachments=[("a.txt", "text/plain", subj.encode())]), ENV)
           for subj in ("good 1", "bad", "good 2")]
    # the bad one's ticket #2 was rolled back with its savepoint: the tag names the ticket made after it
    tagged = b.ingest(make_mail(subject="Re: [#2] good 2", body="More.\n"), ENV)
    b.commit()
    assert [r.outcome for r in out] == ["ticket", "quarantined", "ticket"]
    assert [r.ticket_number for r in out] == [1, None, 2]
    assert (tagged.outcome, tagged.ticket_number) == ("comment", 2)
    with app.sessions() as s:
        assert s.scalar(select(Ticket.subject).where(Ticket.number == 2)) == "good 2"
    assert "disk on fire" in out[1].reason
    # nothing half-written of the bad one: two tickets, two attachments, its row and raw bytes kept
    assert count(app, Ticket) == 2 and count(app, Attachment) == 2 and count(app, Comment) == 1
    assert count(app, InboundRaw) == 4
    with app.sessions() as s:
        assert s.get(InboundMail, out[1].mail_id).ticket_id is None
    r = app.intake().replay(out[1].mail_id)  # the fault is gone: replay makes its ticket
    assert r.outcome == "quarantined"  # still fragile for this subject
    monkeypatch.setattr(app, "handlers", [(n, attachments_handler if n == "attachments" else h)
                                          for n, h in app.handlers])
    assert app.intake().replay(out[1].mail_id).outcome == "ticket"


@pytest.mark.parametrize("fails", ["once", "always"])
def test_a_mail_whose_outcome_cannot_be_recorded_is_stored_quarantined_alone(app, monkeypatch, fails):
    real_record = Intake._record

    def failing_record(self, ctx, outcome, reason):
        if b"Subject: cursed" in ctx.raw and (fails == "always" or outcome == "ticket"):
            raise ValueError("cannot record this one")  # after the pipeline wrote its ticket
        return real_record(self, ctx, outcome, reason)

    monkeypatch.setattr(Intake, "_record", failing_record)
    b = app.intake().batch()
    out = [b.ingest(make_mail(subject=subj), ENV) for subj in ("one", "cursed", "two")]
    b.commit()
    assert [r.outcome for r in out] == ["ticket", "quarantined", "ticket"]
    assert "cannot record this one" in out[1].reason
    assert count(app, Ticket) == 2  # the cursed mail's ticket was rolled back with its savepoint
    assert count(app, InboundMail) == 3
    with app.sessions() as s:
        kept = s.get(InboundMail, out[1].mail_id)
        assert kept.raw.data.startswith(b"From: ") and b"Subject: cursed" in kept.raw.data
        assert kept.claim_sha256 is None and kept.subject == "cursed"  # a replay can still make its ticket
    monkeypatch.setattr(Intake, "_record", real_record)
    assert app.intake().replay(out[1].mail_id).outcome == "ticket"


def test_outcomes_that_keep_nothing_keep_the_mail_row_and_its_trace(make_app):
    app = make_app(gateway={"unknown_senders": "reject"})
    b = app.intake().batch()
    out = [b.ingest(make_mail(), ENV), b.ingest(b"From: a@x.example, b@x.example\r\nSubject: two\r\n\r\nbody", ENV),
           b.ingest(b"\x00\x01 not a mail", ENV)]
    b.commit()
    assert [r.outcome for r in out] == ["rejected", "quarantined", "quarantined"]
    with app.sessions() as s:
        rows = [s.get(InboundMail, r.mail_id) for r in out]
        assert [m.outcome for m in rows] == ["rejected", "quarantined", "quarantined"]
        assert rows[0].sender == "alice@customer.example" and rows[0].subject == "Printer on fire"
        assert rows[1].sender == "a@x.example, b@x.example" and rows[1].subject == "two"  # the listing hint
        assert all(m.trace[-1].startswith("outcome: ") and m.raw is not None for m in rows)
        assert any(line.startswith("identify:") or "reject" in line for line in rows[0].trace)
    assert count(app, Ticket) == 0


def test_organisation_domains_are_looked_up_afresh_in_every_transaction(app):
    from gateway.db import transaction
    from gateway.models import Contact
    from gateway.tickets import Directory

    b = app.intake().batch()
    b.ingest(make_mail(sender="A <a@newco.example>", subject="first"), ENV)
    b.commit()
    with transaction(app.sessions) as s:
        d = Directory(s, app.clock)
        assert d.organisation_for_domain("later.example") is None
        d.add_organisation("Later", ["later.example"])  # the same transaction sees it at once
        assert d.organisation_for_domain("later.example").name == "Later"
        d.add_organisation("NewCo", ["newco.example"])
    b = app.intake().batch()
    b.ingest(make_mail(sender="B <b@newco.example>", subject="second"), ENV)
    b.ingest(make_mail(sender="C <c@later.example>", subject="third"), ENV)
    b.commit()
    with app.sessions() as s:
        orgs = {c.email: (c.organisation.name if c.organisation else None) for c in s.query(Contact)}
    assert orgs == {"a@newco.example": None, "b@newco.example": "NewCo", "c@later.example": "Later"}


def test_store_unavailable_mid_batch_rolls_the_batch_back_and_a_new_run_stores_everything(make_app, db_url):
    if not db_url.startswith("sqlite"):
        pytest.skip("the write lock of another SQLite connection makes the store unavailable here")
    import sqlite3

    from gateway.db import StoreUnavailable

    app = make_app(database={"busy_timeout_ms": 100})
    mails = [make_mail(subject=f"m{i}") for i in range(4)]
    b = app.intake().batch()
    b.ingest(mails[0], ENV)
    b.ingest(mails[1], ENV)
    b.commit()
    b = app.intake().batch()
    holder = sqlite3.connect(app.engine.url.database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # someone else holds the write lock beyond our busy timeout
    try:
        with pytest.raises(StoreUnavailable):
            b.ingest(mails[2], ENV)
        b.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert count(app, InboundMail) == 2
    b = app.intake().batch()
    out = [b.ingest(raw, ENV).outcome for raw in mails]  # the whole source again: dedupe sorts it out
    b.commit()
    assert out == ["duplicate", "duplicate", "ticket", "ticket"]
    assert count(app, Ticket) == 4
