"""`ingest` of old mail respects history (issue 15): nobody is mailed unless --notify, tickets and comments keep
the mail's Date where it is plausible, the SLA does not escalate what was due long ago, the progress display
counts across every PATH, Maildir++ subfolders are read, and `limits.max_message_size` applies.
Everything through the CLI as a subprocess, on real Maildirs, mboxes and files."""

from __future__ import annotations

import json
import mailbox
import os
import pty
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

from conftest import run_cli, write_config
from mails import make_mail, message_id_of
from sqlalchemy import create_engine, func, select

from gateway.models import Comment, InboundMail, OutboxMail, SlaClock, SlaEscalation, Ticket


def dated(when: datetime | str, **kw) -> bytes:
    raw = make_mail(**kw)
    text = format_datetime(when) if isinstance(when, datetime) else when
    return re.sub(rb"(?m)^Date: .*$", b"Date: " + text.encode(), raw, count=1)


def ok(p: subprocess.CompletedProcess[bytes]) -> str:
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode()


def by_subject(engine, model, column):
    with engine.connect() as conn:
        return dict(conn.execute(select(column, model.created_at)).all())


OLD = datetime(2019, 3, 4, 10, 0, tzinfo=UTC)


def test_import_mails_nobody_keeps_dates_and_does_not_escalate_the_past(tmp_path, db_url):
    cfg = write_config(tmp_path, db_url)
    ok(run_cli("sla", "policies", "add", "all", "--response", "60", "--resolution", "480",
               "--escalate-to", "lead@example.com", config=cfg))
    md = mailbox.Maildir(tmp_path / "Maildir", create=True)
    first = dated(OLD, subject="old printer", sender="Carol <carol@customer.example>")
    md.add(first)
    md.add(dated(OLD + timedelta(days=1), subject="Re: old printer", in_reply_to=message_id_of(first),
                 sender="Carol <carol@customer.example>", body="Still broken.\n"))
    md.add(dated(datetime(2099, 1, 1, tzinfo=UTC), subject="from the future"))
    md.add(dated("Thu, 01 Jan 1970 00:00:00 +0000", subject="epoch zero"))
    md.add(dated("not a date at all", subject="no date"))
    md.add_folder("Archive")  # Maildir++: .Archive and .Archive.2019, side by side under the root
    md.add_folder("Archive.2019").add(dated(OLD + timedelta(days=2), subject="archived mail"))
    assert (tmp_path / "Maildir" / ".Archive.2019" / "new").is_dir()
    box = mailbox.mbox(tmp_path / "old.mbox", create=True)
    box.add(dated(OLD + timedelta(days=3), subject="mbox mail"))
    box.flush()
    box.close()

    before = datetime.now(UTC)
    out = ok(run_cli("ingest", "--json", str(tmp_path / "Maildir"), str(tmp_path / "old.mbox"), config=cfg))
    after = datetime.now(UTC)
    results = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["outcome"] for r in results) == ["comment"] + ["ticket"] * 6, results

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(OutboxMail)) == 0  # not one acknowledgement
        tickets = by_subject(engine, Ticket, Ticket.subject)
        assert tickets["old printer"] == OLD
        assert tickets["archived mail"] == OLD + timedelta(days=2)
        assert tickets["mbox mail"] == OLD + timedelta(days=3)
        for implausible in ("from the future", "epoch zero", "no date"):  # dated at the import
            assert before - timedelta(seconds=1) <= tickets[implausible] <= after, (implausible, tickets)
        comments = by_subject(engine, Comment, Comment.body)
        assert list(comments.values()) == [OLD + timedelta(days=1)]
        with engine.connect() as conn:
            updated = conn.scalar(select(Ticket.updated_at).where(Ticket.subject == "old printer"))
            assert updated == OLD + timedelta(days=1)
            # the old tickets' deadlines follow their Date; what was due before the import is recorded, unsent
            esc = conn.execute(select(Ticket.subject, SlaEscalation.kind, SlaEscalation.suppressed)
                               .join(Ticket, Ticket.id == SlaEscalation.ticket_id)).all()
            assert {(s, k) for s, k, _ in esc} == {(s, k) for s in ("old printer", "archived mail", "mbox mail")
                                                   for k in ("response_warning", "response_breach",
                                                             "resolution_warning", "resolution_breach")}
            assert all(suppressed for _, _, suppressed in esc)
            # the ones dated now escalate as usual, later
            pending = dict(conn.execute(select(Ticket.subject, SlaClock.next_at)
                                        .join(SlaClock, SlaClock.ticket_id == Ticket.id)).all())
            assert pending["old printer"] is None and pending["mbox mail"] is None
            assert pending["no date"] is not None and pending["no date"] > after

        # the sweep at the real time sends nothing for them
        ok(run_cli("sla", "tick", config=cfg))
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(OutboxMail)) == 0

        # --notify: the import acknowledges as live mail would, and still keeps the Date
        (tmp_path / "one.eml").write_bytes(dated(OLD, subject="notify me", sender="dave@customer.example"))
        ok(run_cli("ingest", "--notify", str(tmp_path / "one.eml"), config=cfg))
        # stdin is live mail (an MTA pipe): acknowledged and dated now, whatever its Date says
        ok(run_cli("ingest", config=cfg, input=dated(OLD, subject="piped", sender="erin@customer.example")))
        with engine.connect() as conn:
            acks = conn.execute(select(OutboxMail.recipient).where(OutboxMail.event == "ticket_created")).scalars()
            assert sorted(acks) == ["dave@customer.example", "erin@customer.example"]
        tickets = by_subject(engine, Ticket, Ticket.subject)
        assert tickets["notify me"] == OLD
        assert tickets["piped"] >= after
    finally:
        engine.dispose()


def test_progress_counts_across_every_path(tmp_path, sqlite_url):
    cfg = write_config(tmp_path, sqlite_url)
    paths = []
    for name, n in (("a", 3), ("b", 2)):
        d = tmp_path / name
        d.mkdir()
        for i in range(n):
            (d / f"{i}.eml").write_bytes(make_mail(subject=f"{name} {i}"))
        paths.append(str(d))
    box = mailbox.mbox(tmp_path / "c.mbox", create=True)
    for i in range(4):
        box.add(make_mail(subject=f"c {i}"))
    box.flush()
    box.close()
    paths.append(str(tmp_path / "c.mbox"))
    master, slave = pty.openpty()  # the progress display is drawn only on a terminal
    env = {k: v for k, v in os.environ.items() if k != "TICKET_GATEWAY_CONFIG"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(cfg), "ingest", *paths],
                            stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    drawn = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, drawn
    counts = [(int(a), int(b)) for a, b in re.findall(rb"\] (\d+)/(\d+)", drawn)]
    assert counts == [(i, 9) for i in range(1, 10)], drawn
    assert b"9 ticket" in stdout


def test_size_limit_refuses_without_losing_anything(tmp_path, sqlite_url):
    cfg = write_config(tmp_path, sqlite_url, extra="\n[limits]\nmax_message_size = 4000\n")
    d = tmp_path / "in"
    d.mkdir()
    (d / "1-small.eml").write_bytes(make_mail(subject="small"))
    big = make_mail(subject="big", body="x" * 70 + "\n" + ("y" * 70 + "\n") * 100)
    assert len(big) > 4000
    (d / "2-big.eml").write_bytes(big)
    box = mailbox.mbox(tmp_path / "in.mbox", create=True)
    box.add(make_mail(subject="small in mbox"))
    box.add(make_mail(subject="big in mbox", body=("z" * 70 + "\n") * 100))
    box.flush()
    box.close()
    p = run_cli("ingest", "--json", str(d), str(tmp_path / "in.mbox"), config=cfg)
    assert p.returncode == 65, p.stderr  # EX_DATAERR: not everything was imported
    results = {Path(r["source"]).name: r for r in map(json.loads, p.stdout.decode().splitlines())}
    assert results["1-small.eml"]["outcome"] == "ticket"
    assert results["in.mbox#0"]["outcome"] == "ticket"
    for ref in ("2-big.eml", "in.mbox#1"):
        assert results[ref]["outcome"] == "refused" and "max_message_size = 4000" in results[ref]["reason"]
        assert f"{ref}: too large".encode() in p.stderr
    assert (d / "2-big.eml").read_bytes() == big  # left where it was: nothing lost
    assert len(mailbox.mbox(tmp_path / "in.mbox")) == 2
    engine = create_engine(sqlite_url)
    with engine.connect() as conn:
        assert sorted(conn.execute(select(InboundMail.subject)).scalars()) == ["small", "small in mbox"]
    engine.dispose()
    # the MTA pipe: refused with 65 (the MTA bounces it to its sender), nothing stored
    piped = run_cli("ingest", config=cfg, input=big)
    assert piped.returncode == 65 and b"message too large" in piped.stderr
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(InboundMail)) == 2
    engine.dispose()
