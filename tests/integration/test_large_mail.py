"""A large mail through `serve` (real SMTP session, SQLite and PostgreSQL): stored whole (SQLite: through blob
I/O, gateway.store.raw), handed to a fresh preparation worker in a file (gateway.engine SPILL_BYTES) that is
stopped after it, its text body read up to MAX_TEXT_BYTES, its attachment stored whole. The memory this saves
is measured by bench/bench_memory.py; here: that nothing of the mail is lost or changed on the way."""

from __future__ import annotations

import hashlib
import os
import smtplib

from mails import make_mail
from servehelp import Running, config_for
from sqlalchemy import select, update

from gateway.engine import SPILL_BYTES
from gateway.mime import MAX_TEXT_BYTES
from gateway.models import Attachment, Ticket
from gateway.store import raw as rawstore


def _large_mail() -> tuple[bytes, bytes]:
    line = "A line of the report that goes on and on, number {:07d}, with nothing new in it.\n"
    body = "".join(line.format(i) for i in range(MAX_TEXT_BYTES // 80 + 20_000))  # over MAX_TEXT_BYTES
    payload = os.urandom(SPILL_BYTES // 2)
    raw = make_mail(subject="The big report", body=body, attachments=[("report.bin", "application/octet-stream",
                                                                        payload)])
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert len(raw) > SPILL_BYTES and len(raw) > rawstore.BIG
    return raw, payload


def test_a_large_mail_is_stored_whole_and_becomes_a_ticket(tmp_path, db_url) -> None:
    raw, payload = _large_mail()
    small = make_mail(subject="A small one after it").replace(b"\n", b"\r\n")
    r = Running(config_for(tmp_path, db_url))
    try:
        with smtplib.SMTP("127.0.0.1", r.port("smtp"), timeout=60) as c:
            c.sendmail("alice@customer.example", ["support@example.com"], raw)
            c.sendmail("alice@customer.example", ["support@example.com"], small)
        mails = r.wait_processed(2, timeout=120)
        assert [m.outcome for m in mails] == ["ticket", "ticket"], [(m.outcome, m.reason) for m in mails]
        big = mails[0]
        assert big.size == len(raw)
        assert any("MAX_TEXT_BYTES" in t for t in big.trace), big.trace
        with r.app.sessions() as s:
            assert rawstore.read_raw(s, big.id) == raw  # the stored bytes are the bytes sent
            atts = list(s.scalars(select(Attachment).where(Attachment.ticket_id == big.ticket_id)))
            ticket = s.get(Ticket, big.ticket_id)
            assert ticket is not None
            description, full = ticket.description, ticket.description_full
        assert [(a.filename, a.size) for a in atts] == [("report.bin", len(payload))]
        blob = r.app.config.attachments_dir / atts[0].sha256[:2] / atts[0].sha256[2:4] / atts[0].sha256
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == hashlib.sha256(payload).hexdigest()
        # the text body was read up to the bound, not further
        assert MAX_TEXT_BYTES // 2 < len(full) <= MAX_TEXT_BYTES and len(description) <= len(full)
        assert full.startswith("A line of the report that goes on and on, number 0000000")
        ahead = r.service.ahead
        assert ahead is not None and ahead.recycled == 1  # a fresh worker for the large mail, stopped after it
        assert not [p.name for p in r.app.config.data_dir.iterdir() if p.name.startswith(".prepare-")]
    finally:
        r.stop()


def test_of_a_large_mail_the_worker_prepared_only_the_header_is_read_back(tmp_path, db_url) -> None:
    """Once the worker prepared a large mail, its thread reads back only the header block (HEAD_BYTES): nothing
    of the handlers needs more (the trusted Authentication-Results in it still quarantine a dmarc=fail mail), on
    each road to the engine's preparation (stage + run_staged, thread with and without the try guard). Without a
    worker the whole mail is read, and comes to the same outcomes."""
    from mails import AUTHSERV, TRUST_MX, authenticated

    from gateway.app import build_app
    from gateway.engine import HEAD_BYTES, Engine, start_worker
    from gateway.envelope import Envelope
    from gateway.models import InboundMail

    app = build_app(config_for(tmp_path, db_url, authentication={**TRUST_MX, "verify": False}))
    payload = os.urandom(SPILL_BYTES)
    try:
        intake = app.intake()
        env = Envelope(mail_from="alice@customer.example", rcpt_tos=("support@example.com",), source="smtp")

        def large(result: str, n: int) -> tuple[int, bytes]:
            raw = make_mail(subject=f"large {n}", headers=authenticated(result=result),
                            attachments=[("report.bin", "application/octet-stream", payload)])
            assert len(raw) > SPILL_BYTES and AUTHSERV.encode() in raw[:HEAD_BYTES]
            return intake.store(raw, env), raw

        for worker in (True, False):
            app.ahead = start_worker(app.config, context="exec") if worker else None
            engine = Engine(app, intake)
            (ok, ok_raw), (bad, bad_raw) = large("pass", 1), large("fail", 2)
            staged = engine.stage([ok, bad])
            assert sorted(staged.raws) == [ok, bad]
            if worker:
                assert [len(staged.raws[i]) for i in (ok, bad)] == [HEAD_BYTES, HEAD_BYTES]
                assert staged.raws[ok] == ok_raw[:HEAD_BYTES]
            else:
                assert (staged.raws[ok], staged.raws[bad]) == (ok_raw, bad_raw)
            results = engine.run_staged(staged)
            results += engine.thread([large("pass", 3)[0], large("fail", 4)[0]])                # guarded
            results += engine.thread([large("pass", 5)[0], large("fail", 6)[0]], guard=False)   # unguarded
            assert [r.outcome for r in results] == ["ticket", "quarantined"] * 3, [(r.outcome, r.reason)
                                                                                    for r in results]
            assert all(r.reason.startswith("sender authentication failed") for r in results[1::2])
            with app.sessions() as s:
                mails = list(s.scalars(select(InboundMail).where(InboundMail.id.in_([r.mail_id for r in results]))))
                tickets = [m.ticket_id for m in mails if m.ticket_id is not None]
                atts = list(s.scalars(select(Attachment).where(Attachment.ticket_id.in_(tickets))))
            assert sorted((a.filename, a.size, a.sha256) for a in atts) == [
                ("report.bin", len(payload), hashlib.sha256(payload).hexdigest())] * 3
            assert [m.auth["by"] for m in mails if m.outcome == "ticket"] == [f"trusted {AUTHSERV}"] * 3
            blob = app.config.attachments_dir / atts[0].sha256[:2] / atts[0].sha256[2:4] / atts[0].sha256
            assert blob.read_bytes() == payload
            if app.ahead is not None:
                app.ahead.close()
            with app.sessions() as s, s.begin():  # the next round's mails are not duplicates of these
                s.execute(update(InboundMail).values(message_id=None, claim_msgid=None, claim_sha256=None))
    finally:
        if app.ahead is not None:
            app.ahead.close()
        app.close()


def test_raw_bytes_in_and_out_in_pieces_are_the_bytes(tmp_path, db_url) -> None:
    """gateway.store.raw on both databases: raw bytes of every size around its piece sizes (SQLite blob I/O,
    PostgreSQL COPY in and slices out) are stored, read whole, read as a head and copied to a file unchanged."""
    from gateway.app import build_app
    from gateway.envelope import Envelope

    app = build_app(config_for(tmp_path, db_url))
    env = Envelope(mail_from="a@customer.example", rcpt_tos=("support@example.com",), source="smtp")
    try:
        intake = app.intake()
        sizes = [rawstore.BIG - 1, rawstore.BIG, rawstore.PIECE, rawstore.PIECE + 1, 2 * rawstore.PIECE + 7]
        for size in sizes:
            raw = make_mail(subject=f"size {size}")
            raw += os.urandom(size - len(raw))
            mail_id = intake.store(raw, env)
            path = tmp_path / f"copy-{size}"
            with app.sessions() as s:
                assert rawstore.read_raw(s, mail_id) == raw
                assert rawstore.read_raw(s, mail_id, limit=1000) == raw[:1000]
                with open(path, "wb") as f:
                    assert rawstore.copy_raw(s, mail_id, f.fileno())
                    assert not rawstore.copy_raw(s, mail_id + 1000, f.fileno())  # no such mail
            assert path.read_bytes() == raw
    finally:
        app.close()
