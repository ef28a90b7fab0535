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
from sqlalchemy import select

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
