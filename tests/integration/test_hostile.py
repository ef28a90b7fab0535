"""Hostile senders (issue 12, points 3, 5, 6, 7) through the real SMTP/LMTP listeners and through `ingest`:
the relay bounds on Cc watchers, the inbound flood cap, per-client session limits and stress timeouts, and
the pause while the data directory is nearly full. Every figure is a count."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli, write_config
from mails import TRUST_MX, authenticated, make_mail
from servehelp import Running, config_for, send

MANY_CC = ", ".join(f"spam{i:02d}@victims.example" for i in range(99))


@pytest.fixture
def gateway(tmp_path, db_url):
    running: list[Running] = []

    def start(**sections):
        r = Running(config_for(tmp_path, db_url, **sections))
        running.append(r)
        return r

    yield start
    for r in running:
        r.stop()


# 3. No relay ------------------------------------------------------------------------------------------------
def test_stranger_with_99_cc_gets_10_silent_watchers_and_relays_nothing(gateway):
    """Before: all 99 became watchers and the stranger's next reply was mailed to all 99. Now: 10 watchers
    (the bound), none of them mailed, the other 89 recorded in the trace."""
    r = gateway()
    smtp = r.port("smtp")
    first = make_mail(sender="Mallory <mallory@evil.example>", subject="Cheap pills", cc=MANY_CC)
    assert send(smtp, first, "mallory@evil.example", source="127.0.0.4")[0] == 250
    (m,) = r.wait_processed(1)
    (t,) = r.tickets()
    assert len(t.watchers) == 10
    assert any("89 Cc address(es) past limits.max_watchers_per_mail = 10" in line for line in m.trace), m.trace
    reply = make_mail(sender="Mallory <mallory@evil.example>", subject="Re: [#1] Cheap pills", body="spam spam\n")
    assert send(smtp, reply, "mallory@evil.example", source="127.0.0.4")[0] == 250
    mails = r.wait_processed(2)
    assert mails[1].outcome == "comment"
    recipients = [o.recipient for o in r.outbox() if o.status != "suppressed"]
    assert not [x for x in recipients if x.endswith("@victims.example")], recipients
    assert recipients == ["mallory@evil.example"]  # the acknowledgement to the stranger himself


def test_staff_cc_are_mailed_and_comment_not_mailed_again_to_its_own_cc(gateway):
    r = gateway(authentication=TRUST_MX)
    smtp = r.port("smtp")
    with r.app.sessions() as s, s.begin():
        from gateway.tickets import Directory

        Directory(s, r.app.clock).add_contact("bob@example.com", name="Bob", staff=True)
    # an authenticated customer opens a ticket with 12 people in Cc: 10 watchers, all on the acknowledgement
    cc12 = ", ".join(f"c{i:02d}@partner.example" for i in range(12))
    assert send(smtp, make_mail(cc=cc12, headers=authenticated()), "alice@customer.example")[0] == 250
    r.wait_processed(1)
    acks = [o for o in r.outbox() if o.event == "ticket_created"]
    assert len(acks) == 11 and {o.recipient for o in acks} >= {"alice@customer.example", "c09@partner.example"}
    assert "c10@partner.example" not in {o.recipient for o in acks}
    # staff answers, with Carol (a watcher) and Alice (the reporter) in Cc: they had that mail, nobody mails it again
    n = len(r.outbox())
    staff = make_mail(sender="Bob <bob@example.com>", subject="Re: [#1] Printer on fire", body="On my way.\n",
                      cc="alice@customer.example, c00@partner.example")
    assert send(smtp, staff, "bob@example.com")[0] == 250
    r.wait_processed(2)
    again = {o.recipient for o in r.outbox()[n:]}
    assert "alice@customer.example" not in again and "c00@partner.example" not in again
    assert len(again) == 9  # the other nine watchers


def test_ingest_relay_bound(tmp_path, db_url):
    cfg = write_config(tmp_path, db_url)
    p = run_cli("ingest", "--json", config=cfg,
                input=make_mail(sender="mallory@evil.example", subject="spam", cc=MANY_CC))
    res = json.loads(p.stdout)
    assert res["outcome"] == "ticket"
    shown = json.loads(run_cli("tickets", "show", "1", "--json", config=cfg).stdout)
    assert len(shown["watchers"]) == 10
    assert any("89 Cc address(es) past" in line for line in res["trace"])


# 5. Flood ---------------------------------------------------------------------------------------------------
def test_flood_through_smtp_is_capped_quarantined_and_never_answered(gateway):
    """60 mails from one sender in one hour: before, 60 tickets; now 50 tickets and 10 quarantined 'flood'."""
    r = gateway(limits={"flood_exempt": ["trusted.example"]})
    smtp = r.port("smtp")
    for i in range(60):
        assert send(smtp, make_mail(sender="flood@evil.example", subject=f"spam {i}"), "flood@evil.example")[0] == 250
    for i in range(55):  # an exempt sender
        assert send(smtp, make_mail(sender="monitor@trusted.example", subject=f"alert {i}"),
                    "monitor@trusted.example")[0] == 250
    mails = r.wait_processed(115)
    flood = [m for m in mails if m.sender == "flood@evil.example"]
    assert sum(m.outcome == "ticket" for m in flood) == 50
    held = [m for m in flood if m.outcome == "quarantined"]
    assert len(held) == 10 and all(m.reason.startswith("flood") for m in held)
    assert sum(m.outcome == "ticket" for m in mails if m.sender == "monitor@trusted.example") == 55
    acks = [o for o in r.outbox() if o.recipient == "flood@evil.example" and o.status != "suppressed"]
    assert len(acks) <= 50 and not any(o.params.get("mail_id") in {m.id for m in held} for o in r.outbox())
    # listed, and replayable by an admin (the cap is released for that mail)
    res = r.app.intake().replay(held[0].id)
    assert res.outcome == "ticket" and any("released" in line for line in res.trace)


def test_flood_through_ingest(tmp_path, db_url):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(70):
        (d / f"{i:03d}.eml").write_bytes(make_mail(sender="flood@evil.example", subject=f"spam {i}"))
    cfg = write_config(tmp_path, db_url)
    p = run_cli("ingest", str(d), config=cfg)
    assert p.returncode == 0, p.stderr
    assert b"20 quarantined, 50 ticket" in p.stdout, p.stdout
    listed = run_cli("mail", "list", "--status", "quarantined", config=cfg).stdout.decode()
    assert listed.count("  flood: ") == 20  # the REASON column
    # staff are exempt
    (d2 := tmp_path / "staff").mkdir()
    for i in range(60):
        (d2 / f"{i:03d}.eml").write_bytes(make_mail(sender="bob@example.com", subject=f"note {i}"))
    run_cli("users", "add", "bob@example.com", "--staff", config=cfg)
    p = run_cli("ingest", str(d2), config=cfg)
    assert b"60 ticket" in p.stdout, p.stdout


def test_flood_window_is_one_hour_by_arrival(make_app, clock):
    from gateway.intake import Envelope

    app = make_app(limits={"mails_per_sender_per_hour": 3})
    out = []
    for i in range(5):
        out.append(app.intake().ingest(make_mail(sender="x@evil.example", subject=f"s{i}"),
                                       Envelope("x@evil.example", ("support@example.com",), "smtp")).outcome)
        clock.advance(minutes=10)
    clock.advance(minutes=30)  # the first mail is now more than an hour old
    out.append(app.intake().ingest(make_mail(sender="x@evil.example", subject="later"),
                                   Envelope("x@evil.example", ("support@example.com",), "smtp")).outcome)
    assert out == ["ticket", "ticket", "ticket", "quarantined", "quarantined", "ticket"]


def test_flood_counts_what_the_earlier_mails_of_a_prepared_batch_made(make_app, clock):
    """Stored mail threaded in one batch with the preparation worker (the counts loaded ahead for the batch,
    gateway.store.sql.prefetch): the cap counts the tickets made before the batch and those its earlier mails
    made, as mail threaded one by one does."""
    from servehelp import thread_prepared

    from gateway.intake import Envelope

    app = make_app(limits={"mails_per_sender_per_hour": 3})
    intake = app.intake()

    def stored(sender: str, subject: str) -> int:
        ids = intake.store_many([(make_mail(sender=sender, subject=subject),
                                  Envelope(sender, ("support@example.com",), "smtp"))])
        clock.advance(minutes=5)
        return ids[0]

    first = stored("x@evil.example", "before")
    assert intake.process(first).outcome == "ticket"
    ids = [stored(sender, f"s{i}") for i, sender in enumerate(["x@evil.example", "y@fine.example", "x@evil.example",
                                                               "x@evil.example", "y@fine.example"])]
    results = thread_prepared(app, intake, ids)
    assert [r.outcome for r in results] == ["ticket", "ticket", "ticket", "quarantined", "ticket"]
    assert results[3].reason is not None and results[3].reason.startswith("flood")


# 6. Connections ---------------------------------------------------------------------------------------------
def _connect(port: int, source: str) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = s.recv(1024)
        if not chunk:
            break
        buf += chunk
    return s, buf


def test_120_idle_connections_from_one_address_keep_nobody_else_out(gateway):
    """Before: 100 accepted, 20 refused, and every other client got 421 for up to 300 s. Now: 20 accepted
    (limits.max_sessions_per_client), 100 refused with 421, and another address is served."""
    r = gateway()
    port = r.port("smtp")
    socks = []
    greetings = []
    for _ in range(120):
        s, g = _connect(port, "127.0.0.2")
        socks.append(s)
        greetings.append(g[:3])
    try:
        assert greetings.count(b"220") == 20 and greetings.count(b"421") == 100, greetings
        assert send(port, make_mail(), "alice@customer.example", source="127.0.0.3")[0] == 250
        assert send(r.port("lmtp"), make_mail(subject="by lmtp"), "alice@customer.example", source="127.0.0.3",
                    lmtp=True)[0] == 250
        r.wait_processed(2)
        # the limit is per address: when one of its sessions ends, that client may open one again
        socks[0].close()
        for _ in range(50):
            if r.service.registry.per_client.get("127.0.0.2", 0) < 20:
                break
            time.sleep(0.05)
        s, g = _connect(port, "127.0.0.2")
        socks.append(s)
        assert g.startswith(b"220"), g
    finally:
        for s in socks:
            s.close()


def test_idle_sessions_are_cut_short_under_stress_only(gateway):
    r = gateway(limits={"max_sessions": 10, "stress_threshold": 0.5, "stress_idle_seconds": 1,
                        "session_idle_seconds": 300, "max_sessions_per_client": 10})
    port = r.port("smtp")

    def cut(socks: list[socket.socket], wait: float) -> int:
        n = 0
        for s in socks:
            s.settimeout(wait)
            try:
                data = s.recv(1024)
                n += data.startswith(b"421 4.4.2") or data == b""
            except TimeoutError:
                pass
        return n

    calm = [_connect(port, "127.0.0.2")[0] for _ in range(4)]  # 4 of 10: no stress
    assert cut(calm, 2.0) == 0
    busy = [_connect(port, "127.0.0.2")[0]]  # the fifth: stress (5 of 10), every idle session is cut after 1 s
    assert cut(calm + busy, 3.0) == 5
    for s in calm + busy:
        s.close()


# 7. Disk space ----------------------------------------------------------------------------------------------
def test_low_disk_answers_452_at_mail_from_and_recovers(gateway):
    r = gateway()
    free = {"bytes": 0}
    r.app.disk.probe = lambda path: free["bytes"]
    import smtplib

    for protocol in ("smtp", "lmtp"):
        cls = smtplib.LMTP if protocol == "lmtp" else smtplib.SMTP
        with cls("127.0.0.1", r.port(protocol), timeout=10) as c:
            c.ehlo()
            code, msg = c.mail("alice@customer.example")
            assert (code, msg[:5]) == (452, b"4.3.1"), (protocol, code, msg)
    assert r.mails() == []
    free["bytes"] = 10 * 2**30
    assert send(r.port("smtp"), make_mail(), "alice@customer.example")[0] == 250
    assert send(r.port("lmtp"), make_mail(subject="lmtp"), "alice@customer.example", lmtp=True)[0] == 250
    assert len(r.wait_processed(2)) == 2


def test_low_disk_pauses_imap_polling(make_app, dovecot):
    from gateway.imap import ImapPoller

    app = make_app()
    dovecot.append(make_mail())
    free = {"bytes": 0}
    app.disk.probe = lambda path: free["bytes"]
    res = ImapPoller(app, dovecot.account_config()).poll_once()
    assert res.paused and res.fetched == 0 and dovecot.count("INBOX") == 1
    free["bytes"] = 10 * 2**30
    res = ImapPoller(app, dovecot.account_config()).poll_once()
    assert not res.paused and res.stored == 1 and dovecot.count("INBOX") == 0


@pytest.fixture
def tiny_fs(tmp_path) -> Iterator[Path]:
    """A real 4 MiB tmpfs (root only)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_full_filesystem_smtp_and_ingest(tmp_path, sqlite_url, tiny_fs):
    """max_message_size 1 MiB: the data directory needs 1.5 MiB free. A 3 MiB file on the 4 MiB tmpfs leaves
    less: MAIL FROM gets 452 and `ingest` 75; removing the file, both go on by themselves."""
    data = tiny_fs / "var"
    r = Running(config_for(tmp_path, sqlite_url, gateway={"data_dir": str(data)},
                           limits={"max_message_size": 2**20}))
    try:
        filler = tiny_fs / "filler"
        filler.write_bytes(b"\0" * (3 * 2**20))
        code, msg = send(r.port("smtp"), make_mail(), "alice@customer.example")
        assert (code, msg[:5]) == (452, b"4.3.1")
        cfg = tmp_path / "cli.toml"
        cfg.write_text(f'[gateway]\ndata_dir = "{data}"\naddresses = ["support@example.com"]\n'
                       f'unknown_senders = "register"\n[database]\nurl = "{sqlite_url}"\n'
                       '[limits]\nmax_message_size = 1048576\n')
        p = run_cli("ingest", config=cfg, input=make_mail(subject="pipe"))
        assert p.returncode == 75, (p.returncode, p.stderr)
        filler.unlink()
        assert send(r.port("smtp"), make_mail(), "alice@customer.example")[0] == 250
        assert run_cli("ingest", config=cfg, input=make_mail(subject="pipe")).returncode == 0
        assert len(r.wait_processed(2)) == 2
    finally:
        r.stop()
