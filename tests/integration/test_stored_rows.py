"""The row of a stored mail (`Intake.store_many`, plain INSERTs) is the row a flush of the mail object writes,
and its listing hint comes from the header alone whatever the line ends; threading stored mail still finds a
duplicate within its own batch (on SQLite the dedupe claims reach the row with its next flush)."""

from __future__ import annotations

from mails import make_mail
from servehelp import config_for, thread_prepared
from sqlalchemy import text

from gateway.app import build_app
from gateway.db import transaction
from gateway.engine import Engine
from gateway.envelope import Envelope
from gateway.intake import _header_summary
from gateway.store.sql import insert_raw

ENVELOPES = [
    Envelope(mail_from="a@customer.example", rcpt_tos=("support@example.com",), source="smtp", client_ip="192.0.2.7",
             client_helo="mx.customer.example"),
    Envelope(mail_from=None, rcpt_tos=("support@example.com", "help@example.com"), source="imap",
             source_ref="INBOX:5", auth={"spf": "pass"}),
    Envelope(mail_from="", rcpt_tos=(), source="lmtp"),
]


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_a_stored_row_is_what_a_flush_writes(tmp_path, db_url) -> None:
    """Every column as the unit of work writes it: a JSON column given nothing (released) is NULL, one given None
    (auth) is JSON null; the raw bytes, small and large (gateway.store.raw), in inbound_raw."""
    app = build_app(config_for(tmp_path, db_url))
    try:
        intake = app.intake()
        raws = [_crlf(make_mail(subject="one", message_id="<one@customer.example>")), b"x" * (1024 * 1024 + 5),
                make_mail(subject="=?utf-8?q?h=C3=A9?=", message_id="<three@customer.example>")]
        flushed = [intake._new_row(r, e, with_raw=len(r) < 1024 * 1024) for r, e in zip(raws, ENVELOPES, strict=True)]
        with transaction(app.sessions) as s:  # as store_many wrote them before: through the unit of work
            s.add_all(flushed)
            s.flush()
            for m, r in zip(flushed, raws, strict=True):
                if len(r) >= 1024 * 1024:
                    insert_raw(s, m.id, r)
        ids = intake.store_many(list(zip(raws, ENVELOPES, strict=True)))
        assert ids == [m.id + 3 for m in flushed]
        with app.sessions() as s:
            rows = [dict(r) for r in s.execute(text("SELECT * FROM inbound_mail ORDER BY id")).mappings()]
            nulls = s.execute(text("SELECT released IS NULL, auth IS NULL FROM inbound_mail ORDER BY id")).all()
            stored = s.execute(text("SELECT mail_id, data FROM inbound_raw ORDER BY mail_id")).all()
        for before, after in zip(rows[:3], rows[3:], strict=True):
            assert {k: v for k, v in after.items() if k not in ("id", "received_at")} == \
                {k: v for k, v in before.items() if k not in ("id", "received_at")}
        assert [tuple(n) for n in nulls] == [(True, False)] * 6
        assert [(i, bytes(d)) for i, d in stored] == [(m.id, r) for m, r in zip(flushed, raws, strict=True)] + \
            list(zip(ids, raws, strict=True))
        assert rows[3]["subject"] == "one" and rows[3]["message_id"] == "<one@customer.example>"
    finally:
        app.close()


def test_listing_hint_reads_the_header_of_crlf_and_lf_mail_alike() -> None:
    """The header ends at the first empty line, LF or CRLF: the body (here lines that look like header fields)
    is not read as header, and the hint is the same for both line ends."""
    raw = make_mail(subject="Hint", message_id="<hint@customer.example>",
                    body="Subject: not this one\nMessage-ID: <body@customer.example>\n\nFrom: nobody@example.org\n")
    lf, crlf = raw.replace(b"\r\n", b"\n"), _crlf(raw)
    assert _header_summary(lf) == _header_summary(crlf) == (
        "<hint@customer.example>", "Alice Customer <alice@customer.example>", "Hint")
    assert _header_summary(b"Subject: no body at all") == (None, None, "no body at all")


def test_the_same_mail_twice_in_one_batch_is_a_duplicate(tmp_path, db_url) -> None:
    """Two stored copies of one mail threaded in one write transaction: the first makes the ticket, the second
    finds the first one's claims (written with its row before the second runs)."""
    app = build_app(config_for(tmp_path, db_url))
    try:
        intake = app.intake()
        raw = make_mail(subject="twice", message_id="<twice@customer.example>")
        ids = intake.store_many([(raw, ENVELOPES[0]), (raw, ENVELOPES[0])])
        results = Engine(app, intake).thread(ids)
        assert [r.outcome for r in results] == ["ticket", "duplicate"]
        assert results[1].reason is not None and f"duplicate of mail {ids[0]}" in results[1].reason
        with app.sessions() as s:
            claims = s.execute(text("SELECT claim_sha256 IS NOT NULL FROM inbound_mail ORDER BY id")).scalars().all()
        assert claims == [True, False]
    finally:
        app.close()


def test_a_bounce_keeps_its_claims_through_the_notification_savepoint(tmp_path, db_url) -> None:
    """A bounce is ignored after a notification savepoint of its own (the bounced address is marked), released
    between the dedupe claim and the outcome: its row still gets the claims (on SQLite they go into the outcome's
    UPDATE), and its copy in the same batch is a duplicate."""
    app = build_app(config_for(tmp_path, db_url))
    try:
        intake = app.intake()
        raw = make_mail(sender="MAILER-DAEMON@mx.customer.example", subject="Mail Delivery Problem",
                        message_id="<bounce@mx.customer.example>", body="Your mail could not be delivered.\n")
        ids = intake.store_many([(raw, ENVELOPES[2]), (raw, ENVELOPES[2])])
        results = Engine(app, intake).thread(ids)
        assert [r.outcome for r in results] == ["ignored", "duplicate"]
        assert results[0].reason is not None and results[0].reason.startswith("bounce")
        with app.sessions() as s:
            claims = s.execute(text("SELECT claim_sha256 IS NOT NULL, claim_msgid IS NOT NULL FROM inbound_mail "
                                    "ORDER BY id")).all()
        assert [tuple(c) for c in claims] == [(True, True), (False, False)]
    finally:
        app.close()


def test_new_senders_of_a_prepared_batch_join_the_organisation_of_their_domain(tmp_path, db_url) -> None:
    """A batch threaded with the preparation worker (the contacts and their domains' organisations looked up ahead,
    gateway.store.sql.prefetch): a new sender of an organisation's domain (in any case) is registered in it, one
    of another domain in none, as when each is looked up alone."""
    from gateway.store.sql import directory

    app = build_app(config_for(tmp_path, db_url))
    try:
        with transaction(app.sessions) as s:
            org = directory(s, app.clock).add_organisation("Acme", ["acme.example"])
        intake = app.intake()
        senders = ["Ann <ann@ACME.example>", "bob@other.example", "cid@acme.example"]
        ids = intake.store_many([(make_mail(sender=a, subject=f"from {a}"), ENVELOPES[0]) for a in senders])
        results = thread_prepared(app, intake, ids)
        assert [r.outcome for r in results] == ["ticket"] * 3
        with app.sessions() as s:
            rows = s.execute(text("SELECT email, organisation_id FROM contacts ORDER BY id")).all()
        assert [tuple(r) for r in rows] == [("ann@acme.example", org.id), ("bob@other.example", None),
                                            ("cid@acme.example", org.id)]
    finally:
        app.close()


def test_flush_row_writes_what_a_flush_writes_and_a_savepoint_undoes_it(tmp_path, db_url) -> None:
    """gateway.store.sql.flush_row: one UPDATE of the changed columns (a JSON list among them), the object clean
    afterwards; a savepoint it wrote in rolled back restores the row and the object; with another object pending
    it is the flush."""
    from gateway.models import InboundMail
    from gateway.store.sql import flush_row

    app = build_app(config_for(tmp_path, db_url))
    try:
        intake = app.intake()
        a, b = intake.store_many([(make_mail(subject="a"), ENVELOPES[0]), (make_mail(subject="b"), ENVELOPES[0])])
        with transaction(app.sessions) as s:
            ma, mb = s.get(InboundMail, a), s.get(InboundMail, b)
            assert ma is not None and mb is not None
            ma.outcome, ma.trace, ma.reason = "ignored", ["one", "two"], "why"
            flush_row(s, ma)
            assert not s.dirty
            sp = s.begin_nested()
            ma.outcome = "quarantined"
            flush_row(s, ma)
            assert s.execute(text("SELECT outcome FROM inbound_mail WHERE id = :i"), {"i": a}).scalar() == "quarantined"
            sp.rollback()
            assert ma.outcome == "ignored"
            ma.reason, mb.reason = "again", "other"  # two rows changed: the flush writes both
            flush_row(s, ma)
            assert not s.dirty
        with app.sessions() as s:
            rows = s.execute(text("SELECT outcome, trace, reason FROM inbound_mail ORDER BY id")).all()
        assert [(r[0], r[2]) for r in rows] == [("ignored", "again"), ("received", "other")]
        assert rows[0][1] in ('["one", "two"]', ["one", "two"])
    finally:
        app.close()
