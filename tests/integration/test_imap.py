"""The IMAP poller against a real Dovecot (tests/dovecot.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import time

import pytest
from mails import make_mail, message_id_of
from sqlalchemy import func, select

from gateway.imap import ImapAccount, ImapPoller, accounts
from gateway.models import Comment, ImapSeen, InboundMail, Ticket

pytestmark = pytest.mark.timeout(120)


class Crash(BaseException):
    """Stands in for the process dying (not an Exception: nothing may catch it)."""


def tickets(app) -> int:
    with app.sessions() as s:
        return s.scalar(select(func.count()).select_from(Ticket))


def mails(app) -> list[InboundMail]:
    with app.sessions() as s:
        return list(s.scalars(select(InboundMail).order_by(InboundMail.id)))


def poller(app, dovecot, options=None, **over) -> ImapPoller:
    """A poller of the test account; `options`: the poller's own (ImapPoller's keyword options), `over`: the
    account's settings."""
    return ImapPoller(app, dovecot.account_config(**over), **(options or {}))


def crlf(raws) -> list[bytes]:
    """Messages as IMAP hands them back (CRLF line ends), sorted."""
    return sorted(r.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for r in raws)


def wait_for(cond, timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


NO_FROM = (b"To: support@example.com\r\nSubject: who am I\r\nMessage-ID: <nofrom-1@example.net>\r\n"
           b"Date: Mon, 02 Nov 2026 09:00:00 +0000\r\n\r\nno sender at all\r\n")


# New mail, replies, quarantine ------------------------------------------------------------------------------
def test_new_mails_become_tickets_and_move_to_processed(make_app, dovecot):
    app = make_app()
    raws = [make_mail(subject=f"Problem {i}", sender=f"Cust {i} <c{i}@customer.example>") for i in range(3)]
    dovecot.append_many(raws)
    r = poller(app, dovecot).poll_once()
    assert r.outcomes == {"ticket": 3}
    assert (r.fetched, r.stored, r.moved, r.quarantined, r.deferred) == (3, 3, 3, 0, 0)
    assert tickets(app) == 3
    assert dovecot.count("INBOX") == 0
    assert crlf(dovecot.messages("Processed")) == crlf(raws)  # folders created on demand
    assert dovecot.count("Quarantine") == 0
    uidvalidity = dovecot.uidvalidity("INBOX")
    stored = mails(app)
    assert [m.source for m in stored] == ["imap"] * 3
    assert [m.source_ref for m in stored] == [f"test/INBOX/{uidvalidity}/{u}" for u in (1, 2, 3)]
    with app.sessions() as s:
        seen = list(s.scalars(select(ImapSeen).where(ImapSeen.folder == "INBOX").order_by(ImapSeen.uid)))
        filed = list(s.scalars(select(ImapSeen).where(ImapSeen.folder == "Processed").order_by(ImapSeen.uid)))
    assert [(x.account, x.folder, x.uidvalidity, x.uid, x.state, x.outcome, x.moved_to) for x in seen] == [
        ("test", "INBOX", uidvalidity, u, "moved", "ticket", "Processed") for u in (1, 2, 3)]
    assert [x.mail_id for x in seen] == [m.id for m in stored]
    # where each message went (UIDPLUS COPYUID of the UID MOVE), threaded after the move
    processed_validity = dovecot.uidvalidity("Processed")
    assert [(x.uidvalidity, x.uid, x.state, x.outcome, x.mail_id) for x in filed] == [
        (processed_validity, u, "processed", "ticket", m.id) for u, m in zip((1, 2, 3), stored, strict=True)]
    # nothing left: a second drain does nothing
    again = poller(app, dovecot).poll_once()
    assert (again.found, again.fetched, again.stored) == (0, 0, 0)


def test_fetch_leaves_the_seen_flag_alone_and_uses_batches(make_app, dovecot):
    app = make_app()
    dovecot.append_many(make_mail(subject=f"Batch {i}", sender=f"b{i}@customer.example") for i in range(7))
    r = poller(app, dovecot, batch_size=2).poll_once()
    assert r.outcomes == {"ticket": 7} and r.moved == 7
    with dovecot.client() as c:
        c.select_folder("Processed", readonly=True)
        flags = c.get_flags(c.search(["ALL"]))
    assert all(b"\\Seen" not in f for f in flags.values())


def test_replies_thread_onto_the_ticket(make_app, dovecot):
    app = make_app()
    first = make_mail(subject="VPN down")
    dovecot.append(first)
    poller(app, dovecot).poll_once()
    with app.sessions() as s:
        t = s.scalars(select(Ticket)).one()
    reply = make_mail(subject=f"Re: [#{t.number}] VPN down", body="Still down.\n",
                      in_reply_to=message_id_of(first), references=message_id_of(first))
    dovecot.append(reply)
    r = poller(app, dovecot).poll_once()
    assert r.outcomes == {"comment": 1}
    assert tickets(app) == 1
    with app.sessions() as s:
        comments = list(s.scalars(select(Comment).where(Comment.ticket_id == t.id)))
    assert any("Still down" in c.body for c in comments)
    assert dovecot.count("Processed") == 2


@pytest.mark.parametrize("after_move", [True, False], ids=["thread-after-move", "thread-before-move"])
def test_quarantined_mail_goes_to_the_quarantine_folder(make_app, dovecot, after_move):
    app = make_app()
    good = make_mail(subject="fine")
    dovecot.append_many([NO_FROM, good])
    p = poller(app, dovecot, {"thread_after_move": after_move})
    r = p.poll_once()
    assert r.outcomes == {"quarantined": 1, "ticket": 1}
    assert (r.moved, r.quarantined) == (1, 1)
    assert crlf(dovecot.messages("Quarantine")) == crlf([NO_FROM])
    assert crlf(dovecot.messages("Processed")) == crlf([good])
    assert dovecot.count("INBOX") == 0


def test_mail_over_the_size_limit_is_quarantined_unfetched(make_app, dovecot):
    app = make_app(limits={"max_message_size": 4000})
    big = make_mail(subject="huge", body="x" * 10_000 + "\n")
    small = make_mail(subject="small")
    dovecot.append_many([big, small])
    r = poller(app, dovecot).poll_once()
    assert (r.oversize, r.fetched, r.quarantined, r.moved) == (1, 1, 1, 1)
    assert crlf(dovecot.messages("Quarantine")) == crlf([big])
    assert [m.subject for m in mails(app)] == ["small"]


@pytest.mark.parametrize("after_move", [True, False], ids=["thread-after-move", "thread-before-move"])
def test_without_move_capability_copy_delete_expunge(make_app, dovecot, after_move):
    app = make_app()
    raws = [make_mail(subject=f"copy {i}", sender=f"k{i}@customer.example") for i in range(3)] + [NO_FROM]
    dovecot.append_many(raws)
    p = poller(app, dovecot, {"use_move": False, "thread_after_move": after_move},
               processed_folder="Archive/Tickets", quarantine_folder="Archive/Bad")
    r = p.poll_once()
    assert (r.moved, r.quarantined) == (3, 1)
    with dovecot.client() as c:
        c.select_folder("INBOX", readonly=True)
        assert c.search(["ALL"]) == []  # expunged, not just flagged
    assert crlf(dovecot.messages("Archive/Tickets")) == crlf(raws[:3])
    assert crlf(dovecot.messages("Archive/Bad")) == crlf([NO_FROM])


# Nothing twice ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("after_move", [True, False], ids=["thread-after-move", "thread-before-move"])
def test_crash_between_commit_and_move_makes_no_duplicate(make_app, dovecot, after_move):
    app = make_app()
    raws = [make_mail(subject=f"crash {i}", sender=f"x{i}@customer.example") for i in range(3)] + [NO_FROM]
    dovecot.append_many(raws)
    def die(uids):
        raise Crash(uids)

    p = poller(app, dovecot, {"thread_after_move": after_move, "before_move": die})
    with pytest.raises(Crash):
        p.poll_once()
    p.disconnect()
    assert len(mails(app)) == 4 and dovecot.count("INBOX") == 4  # committed, not moved
    # threading before the move (no UIDPLUS) has made the tickets; after the move (the fast path) not yet
    assert tickets(app) == (0 if after_move else 3)
    again = poller(app, dovecot, {"thread_after_move": after_move})
    r = again.poll_once()  # "after the restart"
    assert (r.known, r.fetched, r.stored, r.moved, r.quarantined) == (4, 0, 0, 3, 1)
    assert r.outcomes == ({"ticket": 3, "quarantined": 1} if after_move else {})
    assert tickets(app) == 3 and len(mails(app)) == 4
    assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 3
    assert crlf(dovecot.messages("Quarantine")) == crlf([NO_FROM])


def test_the_batch_is_moved_with_one_uid_move_only_after_its_commit(make_app, dovecot):
    from gateway.models import InboundMail

    app = make_app()
    raws = [make_mail(subject=f"order {i}", sender=f"o{i}@customer.example") for i in range(7)]
    dovecot.append_many(raws)
    moves: list[list[int]] = []
    seen_before_move: list[tuple[int, int, set[str]]] = []

    def check(uids):
        # another connection sees the batch committed, not threaded yet, and still in the INBOX
        with app.sessions() as s:
            rows = list(s.scalars(select(InboundMail).where(InboundMail.source_ref.in_(
                [f"test/INBOX/{dovecot.uidvalidity('INBOX')}/{u}" for u in uids]))))
        seen_before_move.append((len(uids), len(rows), {m.outcome for m in rows}))
        with dovecot.client() as c:
            c.select_folder("INBOX", readonly=True)
            assert set(uids) <= set(c.search(["ALL"]))

    p = poller(app, dovecot, {"before_move": check}, batch_size=3)
    p.connect()
    assert p.decoupled  # Dovecot has UIDPLUS: store, move, then thread
    real_move = p.client.move

    def move(uids, folder):
        moves.append(list(uids))
        return real_move(uids, folder)

    p.client.move = move
    try:
        r = p.drain()
    finally:
        p.disconnect()
    assert seen_before_move == [(3, 3, {"received"}), (3, 3, {"received"}), (1, 1, {"received"})]
    assert moves == [[1, 2, 3], [4, 5, 6], [7]]  # one UID MOVE of the UID set per batch
    assert r.outcomes == {"ticket": 7} and (r.stored, r.moved, r.threaded) == (7, 7, 7)
    assert tickets(app) == 7 and dovecot.count("Processed") == 7


def test_crash_after_the_move_before_threading_makes_no_duplicate(make_app, dovecot):
    """Stored and moved to Processed, then the process dies before threading: the next drain threads them
    (from the stored mail, no refetch), and refiles the quarantined one into Quarantine."""
    app = make_app()
    raws = [make_mail(subject=f"later {i}", sender=f"t{i}@customer.example") for i in range(3)]
    dovecot.append_many([raws[0], NO_FROM, raws[1], raws[2]])

    def die(mail_ids):
        raise Crash(mail_ids)

    p = poller(app, dovecot, {"thread": die})  # the process dies as the engine takes the first batch
    with pytest.raises(Crash):
        p.poll_once()
    p.disconnect()
    assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 4 and tickets(app) == 0
    r = poller(app, dovecot).poll_once()
    assert (r.found, r.fetched, r.stored, r.threaded) == (0, 0, 0, 4)
    assert r.outcomes == {"ticket": 3, "quarantined": 1} and r.quarantined == 1
    assert tickets(app) == 3 and len(mails(app)) == 4
    assert crlf(dovecot.messages("Processed")) == crlf(raws)
    assert crlf(dovecot.messages("Quarantine")) == crlf([NO_FROM])
    again = poller(app, dovecot).poll_once()
    assert (again.threaded, again.quarantined, again.moved) == (0, 0, 0) and tickets(app) == 3


def test_crash_between_threading_and_refile_refiles_on_the_next_drain(make_app, dovecot, monkeypatch):
    from gateway.imap.mailbox import Mailbox

    app = make_app()
    good = make_mail(subject="good one")
    dovecot.append_many([good, NO_FROM])
    p = poller(app, dovecot)

    def die(self, keys, source, dest):
        raise Crash(keys)

    monkeypatch.setattr(Mailbox, "refile", die)
    with pytest.raises(Crash):
        p.poll_once()
    p.disconnect()
    assert dovecot.count("Processed") == 2 and tickets(app) == 1
    monkeypatch.undo()
    r = poller(app, dovecot).poll_once()
    assert r.outcomes == {"ticket": 1, "quarantined": 1} and r.quarantined == 1 and r.stored == 0
    assert tickets(app) == 1 and len(mails(app)) == 2
    assert crlf(dovecot.messages("Processed")) == crlf([good])
    assert crlf(dovecot.messages("Quarantine")) == crlf([NO_FROM])


def test_quarantined_mails_inside_a_batch_go_to_the_quarantine_folder(make_app, dovecot):
    app = make_app()
    bad = [NO_FROM.replace(b"nofrom-1", f"nofrom-{i}".encode()) for i in range(3)]
    good = [make_mail(subject=f"mixed {i}", sender=f"m{i}@customer.example") for i in range(5)]
    order = [good[0], bad[0], good[1], good[2], bad[1], good[3], bad[2], good[4]]
    dovecot.append_many(order)
    r = poller(app, dovecot, batch_size=3).poll_once()
    assert r.outcomes == {"ticket": 5, "quarantined": 3}
    assert (r.moved, r.quarantined) == (5, 3)
    assert crlf(dovecot.messages("Processed")) == crlf(good)
    assert crlf(dovecot.messages("Quarantine")) == crlf(bad)
    assert dovecot.count("INBOX") == 0
    with app.sessions() as s:
        inbox = {x.uid: (x.outcome, x.moved_to) for x in s.scalars(select(ImapSeen).where(ImapSeen.folder == "INBOX"))}
        filed = [(x.state, x.outcome, x.moved_to) for x in s.scalars(
            select(ImapSeen).where(ImapSeen.folder == "Processed").order_by(ImapSeen.uid))]
    assert inbox == {u: (("quarantined", "Quarantine") if order[u - 1] in bad else ("ticket", "Processed"))
                     for u in range(1, 9)}
    assert filed == [("moved", "quarantined", "Quarantine") if m in bad else ("processed", "ticket", None)
                     for m in order]


def test_crash_before_the_imap_state_was_recorded_makes_no_duplicate(make_app, dovecot):
    """Stored and threaded through the intake, but the poller died before it wrote imap_seen or moved."""
    from gateway.intake import Envelope

    app = make_app()
    raw = make_mail(subject="half done")
    dovecot.append(raw)
    intake = app.intake()
    intake.process(intake.store(raw, Envelope(source="imap", source_ref="test/INBOX/?/1")))
    assert tickets(app) == 1
    r = poller(app, dovecot).poll_once()
    assert r.outcomes == {"duplicate": 1} and r.moved == 1
    assert tickets(app) == 1
    assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 1


def test_uidvalidity_change_makes_no_duplicate(make_app, dovecot):
    app = make_app()
    raws = [make_mail(subject=f"validity {i}", sender=f"v{i}@customer.example") for i in range(2)]
    dovecot.append_many(raws, folder="Support")
    def die(uids):
        raise Crash(uids)

    p = poller(app, dovecot, {"before_move": die}, folder="Support")
    with pytest.raises(Crash):
        p.poll_once()
    p.disconnect()
    old = dovecot.uidvalidity("Support")
    dovecot.recreate_folder("Support")  # same messages, new UIDVALIDITY, UIDs start again at 1
    assert dovecot.uidvalidity("Support") != old and dovecot.count("Support") == 2
    r = poller(app, dovecot, folder="Support").poll_once()
    # the first copies were committed before the crash: they are threaded; the refetched copies are duplicates
    assert r.outcomes == {"ticket": 2, "duplicate": 2} and r.known == 0 and r.moved == 2
    assert tickets(app) == 2
    assert dovecot.count("Support") == 0 and dovecot.count("Processed") == 2
    dovecot.append(raws[0], folder="Support")  # someone puts a processed mail back: a new UID
    r = poller(app, dovecot, folder="Support").poll_once()
    assert r.outcomes == {"duplicate": 1}
    assert tickets(app) == 2


def test_two_accounts_keep_separate_state(make_app, dovecot, dovecot_server):
    app = make_app()
    other = dovecot_server.add_user()
    dovecot.append(make_mail(subject="first box", sender="one@customer.example"))
    other.append(make_mail(subject="second box", sender="two@customer.example"))
    cfg = {"imap": [dovecot.account_config("a"), other.account_config("b")]}
    app.config.values.update(cfg)
    from gateway.imap import poll_accounts

    results = poll_accounts(app)
    assert [(r.account, r.outcomes) for r in results] == [("a", {"ticket": 1}), ("b", {"ticket": 1})]
    with app.sessions() as s:
        assert sorted(s.scalars(select(ImapSeen.account).where(ImapSeen.folder == "INBOX"))) == ["a", "b"]


# The store is down ---------------------------------------------------------------------------------------------
def test_database_unreachable_leaves_the_mail_and_it_arrives_later(tmp_path, sqlite_url, clock, dovecot):
    from conftest import make_config

    from gateway.app import build_app

    app = build_app(make_config(tmp_path, sqlite_url, database={"busy_timeout_ms": 200}), clock=clock)
    try:
        raws = [make_mail(subject=f"outage {i}", sender=f"o{i}@customer.example") for i in range(3)]
        dovecot.append_many(raws)
        lock = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            r = poller(app, dovecot).poll_once()
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert r.deferred == 3 and r.stored == 0 and r.moved == 0
        assert dovecot.count("INBOX") == 3 and dovecot.count("Processed") == 0
        assert tickets(app) == 0
        r = poller(app, dovecot).poll_once()
        assert r.outcomes == {"ticket": 3} and r.deferred == 0
        assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 3
        assert tickets(app) == 3
    finally:
        app.close()


def test_store_lost_between_store_and_process_recovers(make_app, dovecot):
    """The database goes away after the raw mail was committed: the mail stays, nothing is doubled."""
    from gateway.db import StoreUnavailable
    from gateway.engine import Engine

    app = make_app()
    raws = [make_mail(subject=f"flaky {i}", sender=f"f{i}@customer.example") for i in range(3)]
    dovecot.append_many(raws)
    engine = Engine(app)
    calls: list[list[int]] = []

    def flaky(mail_ids):
        calls.append(list(mail_ids))
        if len(calls) == 2:
            raise StoreUnavailable("database went away")
        return engine.thread(mail_ids)

    r = poller(app, dovecot, {"thread": flaky, "thread_batch": 2}).poll_once()
    # all three were committed, so all three left the INBOX; the first batch (two mails) is threaded, the
    # second met the outage: its mail waits to be threaded
    assert [len(c) for c in calls] == [2, 1]
    assert r.outcomes == {"ticket": 2} and r.moved == 3 and r.postponed == 1 and r.deferred == 0
    assert dovecot.count("INBOX") == 0 and tickets(app) == 2
    r = poller(app, dovecot).poll_once()
    assert r.outcomes == {"ticket": 1} and r.stored == 0  # stored with the batch: threaded, not stored again
    assert tickets(app) == 3 and len(mails(app)) == 3
    assert dovecot.count("Processed") == 3


class Poisoned:
    """The poller's threading seam (its `thread` option) over a real engine, where one stored mail (the
    `which`-th, counting from 0) breaks the pipeline with a bug while `active`: any batch holding it fails as
    a whole, nothing of it decided (as a transaction rolled back). Records the batches it was given."""

    def __init__(self, app, which: int) -> None:
        from gateway.engine import Engine

        self.engine = Engine(app)
        self.which = which
        self.poison: int | None = None
        self.active = True
        self.calls: list[list[int]] = []

    def __call__(self, mail_ids):
        self.calls.append(list(mail_ids))
        if self.poison is None:
            self.poison = sorted(mail_ids)[self.which]
        if self.active and self.poison in mail_ids:
            raise RuntimeError("a bug")
        return self.engine.thread(mail_ids)


def test_unexpected_error_leaves_that_mail_and_goes_on(make_app, dovecot):
    app = make_app()
    raws = [make_mail(subject=f"poison {i}", sender=f"p{i}@customer.example") for i in range(3)]
    dovecot.append_many(raws)
    thread = Poisoned(app, 1)
    p = poller(app, dovecot, {"thread": thread})
    r = p.poll_once()
    # the batch failed as a whole; threaded again one mail at a time, only the poisoned mail is left
    a, b, c = sorted(thread.calls[0])
    assert thread.calls == [[a, b, c], [a], [b], [c]]
    assert (r.failed, r.moved, r.stored) == (1, 3, 3) and r.outcomes == {"ticket": 2}
    assert dovecot.count("INBOX") == 0 and tickets(app) == 2
    r = poller(app, dovecot).poll_once()  # the stored mail is threaded, not stored a second time
    assert (r.failed, r.moved, r.stored, r.threaded) == (0, 0, 0, 1) and r.outcomes == {"ticket": 1}
    assert tickets(app) == 3 and len(mails(app)) == 3


# The service loop ---------------------------------------------------------------------------------------------
def _start(p: ImapPoller) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    t = threading.Thread(target=p.run, args=(stop,), daemon=True)
    t.start()
    return stop, t


def test_idle_picks_up_a_mail_appended_while_idling(make_app, dovecot):
    app = make_app()
    p = poller(app, dovecot, poll_seconds=3600)  # only IDLE can see the new mail in time
    stop, t = _start(p)
    try:
        assert p.idling.wait(10), p.state
        dovecot.append(make_mail(subject="while idling"))
        started = time.monotonic()
        assert wait_for(lambda: tickets(app) == 1 and dovecot.count("INBOX") == 0, timeout=5)
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive() and p.state == "stopped"


def test_idle_is_reissued(make_app, dovecot):
    app = make_app()
    p = poller(app, dovecot, idle_seconds=1)
    stop, t = _start(p)
    try:
        assert p.idling.wait(10)
        # after idle_seconds the loop leaves IDLE, drains and idles again
        assert wait_for(lambda: p.idle_count >= 3, timeout=5), p.idle_count
        dovecot.append(make_mail(subject="after re-issue"))
        assert wait_for(lambda: tickets(app) == 1, timeout=5)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()


def test_dead_connection_during_idle_reconnects(make_app, dovecot, dovecot_server):
    app = make_app()
    p = poller(app, dovecot)
    stop, t = _start(p)
    try:
        assert p.idling.wait(10)
        # the server drops the connection (as a restart or a NAT timeout would)
        kicked = subprocess.run(["doveadm", "-c", str(dovecot_server.root / "dovecot.conf"), "kick", dovecot.user],
                                capture_output=True, timeout=10)
        assert kicked.returncode == 0, kicked.stderr
        assert wait_for(lambda: p.state in ("backoff", "connecting", "draining"), timeout=5)
        dovecot.append(make_mail(subject="after reconnect"))
        assert wait_for(lambda: tickets(app) == 1 and dovecot.count("INBOX") == 0, timeout=10)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()


class CuttableProxy:
    """A TCP proxy to Dovecot whose connections can be cut silently (no BYE: the client just sees EOF),
    as when a server is restarted hard or a NAT box forgets the connection."""

    def __init__(self, host: str, port: int) -> None:
        import socket

        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list = []
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            u = socket.create_connection(self.target)
            self.conns += [c, u]
            self.accepted += 1
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for x in (a, b):
            try:
                x.close()
            except OSError:
                pass

    def cut(self) -> None:
        import socket

        conns, self.conns = self.conns, []
        for x in conns:
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_silently_dropped_connection_during_idle_reconnects(make_app, dovecot):
    """An early empty idle_check (EOF) is a dead connection: reconnect, do not spin or hang."""
    app = make_app()
    proxy = CuttableProxy(dovecot.host, dovecot.port)
    p = poller(app, dovecot, port=proxy.port, idle_seconds=600)
    stop, t = _start(p)
    try:
        assert p.idling.wait(10)
        proxy.cut()
        assert wait_for(lambda: proxy.accepted >= 2 and p.idling.is_set(), timeout=10), p.state
        dovecot.append(make_mail(subject="after a silent drop"))
        assert wait_for(lambda: tickets(app) == 1 and dovecot.count("INBOX") == 0, timeout=5)
    finally:
        stop.set()
        t.join(10)
        proxy.close()
    assert not t.is_alive()


def test_poll_mode_without_idle(make_app, dovecot):
    app = make_app()
    p = poller(app, dovecot, poll_seconds=1)
    p.connect()
    p.capabilities = p.capabilities - {b"IDLE"}
    stop, t = _start(p)
    try:
        assert wait_for(lambda: p.state == "waiting", timeout=10)
        dovecot.append(make_mail(subject="polled"))
        assert wait_for(lambda: tickets(app) == 1 and dovecot.count("INBOX") == 0, timeout=5)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()


def test_stop_during_a_long_drain_moves_what_is_done_and_leaves_the_rest(make_app, dovecot):
    from gateway.engine import Engine

    app = make_app()
    raws = [make_mail(subject=f"long {i}", sender=f"l{i}@customer.example") for i in range(40)]
    dovecot.append_many(raws)
    stop = threading.Event()
    engine = Engine(app)
    calls: list[list[int]] = []

    def thread(mail_ids):
        calls.append(list(mail_ids))
        if len(calls) == 2:
            stop.set()  # SIGTERM arrives while the 2nd batch (mails 5 to 8) is threaded
        return engine.thread(mail_ids)

    p = poller(app, dovecot, {"thread": thread, "thread_batch": 4}, batch_size=5)
    t = threading.Thread(target=p.run, args=(stop,), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and p.state == "stopped"
    # the drain (store + move) came first: everything is committed and moved; threading finished the batch
    # in hand and stopped after 8
    assert [len(c) for c in calls] == [4, 4]
    assert tickets(app) == 8 and dovecot.count("Processed") == 40 and dovecot.count("INBOX") == 0
    r = poller(app, dovecot).poll_once()
    assert r.outcomes == {"ticket": 32} and r.stored == 0 and r.threaded == 32
    assert tickets(app) == 40 and len(mails(app)) == 40


def test_stop_while_storing_moves_the_committed_batch_and_leaves_the_rest(make_app, dovecot, monkeypatch):
    app = make_app()
    raws = [make_mail(subject=f"stop {i}", sender=f"s{i}@customer.example") for i in range(40)]
    dovecot.append_many(raws)
    p = poller(app, dovecot, batch_size=5)
    stop = threading.Event()
    real = p.intake.store_many
    calls = {"n": 0}

    def store_many(items):
        calls["n"] += 1
        if calls["n"] == 2:
            stop.set()  # SIGTERM arrives while the 2nd batch is stored
        return real(items)

    monkeypatch.setattr(p.intake, "store_many", store_many)
    t = threading.Thread(target=p.run, args=(stop,), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and p.state == "stopped"
    assert len(mails(app)) == 10 and dovecot.count("Processed") == 10 and dovecot.count("INBOX") == 30
    r = poller(app, dovecot).poll_once()
    assert r.outcomes == {"ticket": 40} and r.stored == 30  # the 10 stored before are threaded, not refetched
    assert tickets(app) == 40 and len(mails(app)) == 40


def _overlapped(make_app, dovecot, n: int):
    """An app with its preparation worker (as serve and `imap poll` have it), n mails in the INBOX, and a poller
    that threads between its drain's batches (ThreadAhead, the default): batches of 5, threaded in 4s."""
    from gateway.engine import ThreadAhead, start_worker

    app = make_app()
    app.ahead = start_worker(app.config, context="exec")
    dovecot.append_many([make_mail(subject=f"overlap {i}", sender=f"v{i}@customer.example") for i in range(n)])
    p = poller(app, dovecot, {"thread_batch": 4}, batch_size=5)
    assert p.threads.ahead and isinstance(p.threads.thread, ThreadAhead)
    return app, p, p.threads.thread.engine


def _nothing_held(app, engine) -> None:
    """No batch is left handed to the worker: the engine holds no mail, the worker is free."""
    assert engine._busy == set()
    assert app.ahead.lock.acquire(blocking=False)
    app.ahead.lock.release()


@pytest.mark.parametrize("fault", ["stop", "store down"])
def test_a_fault_in_an_overlapped_drain_moves_only_what_is_committed_and_leaves_nothing_received(
        make_app, dovecot, fault):
    """Threading goes on between the drain's batches, the next batch handed to the worker meanwhile. A stop, or
    the database lost for threading, in the middle: the batch handed ahead is given up (no try counted, the
    worker free), no mail left the INBOX before its commit, what waits is counted as postponed, and the next
    drain threads it all: nothing stays `received`, nothing is doubled."""
    from gateway.db import StoreUnavailable

    app, p, engine = _overlapped(make_app, dovecot, 40)
    stop = threading.Event()
    p.drainer.stop = stop
    real = engine.run_staged
    runs: list[list[int]] = []

    def run_staged(staged, **kw):
        runs.append(list(staged.ids))
        if len(runs) == 2:
            if fault == "stop":
                stop.set()  # SIGTERM while the drain's 2nd batch is threaded
            else:
                raise StoreUnavailable("database went away")
        return real(staged, **kw)

    engine.run_staged = run_staged
    p.connect()
    try:
        r = p.drain()
    finally:
        p.disconnect()
        app.ahead.close()
    a = runs[0][0]
    # drain batch 1 (mails a..a+4): 4 threaded, the 5th handed ahead; batch 2: the 5th threaded (the fault),
    # the next 4 handed ahead and given up
    assert runs == [[a, a + 1, a + 2, a + 3], [a + 4]]
    _nothing_held(app, engine)
    rows = mails(app)
    with app.sessions() as s:
        tried = {m.id: m.attempts for m in s.scalars(select(InboundMail))}
    if fault == "stop":
        assert (r.stored, r.moved, r.threaded, r.postponed) == (10, 10, 5, 5)
        assert dovecot.count("Processed") == 10 and dovecot.count("INBOX") == 30
        assert [m.outcome for m in rows] == ["ticket"] * 5 + ["received"] * 5
    else:  # the drain goes on storing and moving; threading waits for the next drain
        assert (r.stored, r.moved, r.threaded, r.postponed, r.deferred) == (40, 40, 4, 36, 0)
        assert dovecot.count("Processed") == 40 and dovecot.count("INBOX") == 0
        assert [m.outcome for m in rows] == ["ticket"] * 4 + ["received"] * 36
    assert all(tried[m.id] == 0 for m in rows if m.outcome == "received")  # handed ahead: no try counted
    assert r.outcomes == {"ticket": r.threaded}
    r = poller(app, dovecot).poll_once()
    assert r.threaded == 40 - (5 if fault == "stop" else 4) and r.stored == (30 if fault == "stop" else 0)
    assert {m.outcome for m in mails(app)} == {"ticket"} and tickets(app) == 40 and len(mails(app)) == 40
    assert dovecot.count("Processed") == 40 and dovecot.count("INBOX") == 0


def test_an_overlapped_drain_moves_each_batch_only_after_its_commit(make_app, dovecot):
    """Threading between the batches does not move anything early: each batch is committed (and seen
    committed by another connection) before its UID MOVE, and threading of earlier batches happened meanwhile."""
    app, p, engine = _overlapped(make_app, dovecot, 12)
    seen: list[tuple[int, int, int]] = []

    def check(uids):
        with app.sessions() as s:
            rows = list(s.scalars(select(InboundMail)))
        seen.append((len(uids), len(rows), sum(m.outcome != "received" for m in rows)))
        with dovecot.client() as c:
            c.select_folder("INBOX", readonly=True)
            assert set(uids) <= set(c.search(["ALL"]))

    p.drainer.before_move = check
    try:
        r = p.poll_once()
    finally:
        app.ahead.close()
    # batch 2 is committed when 4 mails of batch 1 are threaded (its 5th handed ahead); batch 3 when 9 are (that
    # 5th and 4 of batch 2; its 5th handed ahead)
    assert seen == [(5, 5, 0), (5, 10, 4), (2, 12, 9)]
    assert (r.stored, r.moved, r.threaded, r.postponed) == (12, 12, 12, 0) and r.outcomes == {"ticket": 12}
    _nothing_held(app, engine)


def test_service_helpers_threads_and_asyncio(make_app, dovecot, dovecot_server):
    import asyncio

    from gateway.imap import run_pollers, start_pollers

    app = make_app()
    other = dovecot_server.add_user()
    app.config.values["imap"] = [dovecot.account_config("a"), other.account_config("b")]
    stop = threading.Event()
    threads = start_pollers(app, stop)
    assert [t.name for t in threads] == ["imap-a", "imap-b"]
    dovecot.append(make_mail(subject="thread a", sender="ta@customer.example"))
    other.append(make_mail(subject="thread b", sender="tb@customer.example"))
    assert wait_for(lambda: tickets(app) == 2, timeout=10)
    stop.set()
    for t in threads:
        t.join(10)
        assert not t.is_alive()

    async def main() -> None:
        stop2 = threading.Event()
        task = asyncio.create_task(run_pollers(app, stop2))
        await asyncio.sleep(0.5)
        dovecot.append(make_mail(subject="async a", sender="aa@customer.example"))
        deadline = time.monotonic() + 10
        while tickets(app) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        stop2.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    assert tickets(app) == 3


def test_unreachable_server_backs_off_and_stops_promptly(make_app, dovecot):
    from dovecot import free_port

    app = make_app()
    p = poller(app, dovecot, port=free_port(), timeout_seconds=2)
    stop, t = _start(p)
    assert wait_for(lambda: p.state == "backoff", timeout=10)
    stop.set()
    t.join(5)
    assert not t.is_alive()


# Configuration and CLI ------------------------------------------------------------------------------------------
def test_config_accounts(tmp_path):
    from gateway.config import ConfigError, validate

    (tmp_path / "pw").write_text("s3cret\nignored\n")
    cfg = validate({"imap": [{"name": "a", "host": "h", "user": "u", "password_file": "pw"},
                             {"name": "b", "host": "h", "user": "u", "security": "none", "password": "x"}]},
                   base_dir=tmp_path)
    a, b = accounts(cfg)
    assert (a.effective_port, a.secret(), b.effective_port, b.secret()) == (993, "s3cret", 143, "x")
    assert isinstance(a, ImapAccount) and a.folder == "INBOX" and a.processed_folder == "Processed"
    with pytest.raises(ConfigError, match=r"imap\[0\]\.host"):
        validate({"imap": [{"name": "a", "user": "u"}]})
    with pytest.raises(ConfigError, match=r"imap\[0\]\.security"):
        validate({"imap": [{"name": "a", "host": "h", "user": "u", "security": "ssl"}]})
    with pytest.raises(ConfigError, match="used by another"):
        accounts(validate({"imap": [{"name": "a", "host": "h", "user": "u"}] * 2}))


def test_cli_imap_poll(tmp_path, sqlite_url, dovecot):
    from conftest import run_cli, write_config

    dovecot.append_many([make_mail(subject="via cli"), NO_FROM])
    acct = dovecot.account_config("box")
    extra = "\n[[imap]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in acct.items())
    cfg = write_config(tmp_path, sqlite_url, extra)
    bad = run_cli("imap", "poll", "--account", "nope", config=cfg)
    assert bad.returncode == 64, bad.stderr
    out = run_cli("imap", "poll", "--account", "box", "--json", config=cfg)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["account"] == "box" and d["outcomes"] == {"ticket": 1, "quarantined": 1}
    assert (d["moved"], d["quarantined"]) == (1, 1)
    out = run_cli("imap", "poll", config=cfg)
    assert out.returncode == 0 and b"box: 0 fetched (nothing new)" in out.stdout, out


def test_cli_imap_poll_threads_within_the_cpu_budget(tmp_path, sqlite_url, dovecot):
    """`imap poll` threads the stored mail through the intake engine with the preparation worker, as serve
    does: a mail over limits.mail_cpu_seconds is quarantined 'over budget' and refiled into the quarantine
    folder; the mails around it become tickets."""
    from conftest import run_cli, write_config
    from test_budget import BUDGET, slow_mail

    before, after = make_mail(subject="before the heavy one"), make_mail(subject="after the heavy one",
                                                                          sender="B <b@customer.example>")
    dovecot.append_many([before, slow_mail(), after])
    acct = dovecot.account_config("box")
    extra = (f"\n[limits]\nmail_cpu_seconds = {BUDGET}\n\n[[imap]]\n"
             + "".join(f"{k} = {json.dumps(v)}\n" for k, v in acct.items()))
    out = run_cli("imap", "poll", "--json", config=write_config(tmp_path, sqlite_url, extra))
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["outcomes"] == {"ticket": 2, "quarantined": 1} and (d["moved"], d["quarantined"]) == (2, 1), d
    assert crlf(dovecot.messages("Processed")) == crlf([before, after])
    assert crlf(dovecot.messages("Quarantine")) == crlf([slow_mail()])
    with sqlite3.connect(sqlite_url.split("///", 1)[1]) as db:
        rows = db.execute("SELECT subject, outcome, reason FROM inbound_mail ORDER BY id").fetchall()
    assert rows == [("before the heavy one", "ticket", None), ("heavy html", "quarantined", "over budget"),
                    ("after the heavy one", "ticket", None)]


def test_cli_imap_poll_unreachable_server_is_tempfail(tmp_path, sqlite_url):
    from conftest import run_cli, write_config
    from dovecot import free_port

    extra = (f'\n[[imap]]\nname = "gone"\nhost = "127.0.0.1"\nport = {free_port()}\nsecurity = "none"\n'
             f'user = "u"\npassword = "p"\ntimeout_seconds = 2\n')
    out = run_cli("imap", "poll", config=write_config(tmp_path, sqlite_url, extra))
    assert out.returncode == 75, out


def test_the_same_poller_threads_a_failed_mail_on_its_next_drain(make_app, dovecot):
    """Later drains look only past what is threaded (mail_id index), never past a mail left unthreaded."""
    app = make_app()
    dovecot.append_many([make_mail(subject=f"again {i}", sender=f"g{i}@customer.example") for i in range(4)])
    thread = Poisoned(app, 1)
    p = poller(app, dovecot, {"thread": thread}, batch_size=2)
    p.connect()
    try:
        r = p.drain()
        assert r.failed == 1 and r.outcomes == {"ticket": 3} and tickets(app) == 3
        a, b, c, d = sorted(thread.calls[0])
        assert thread.calls == [[a, b, c, d], [a], [b], [c], [d]]
        thread.active = False  # the bug is gone
        r = p.drain()  # nothing new in the folder: the failed one is threaded, the others are not looked at
        assert (r.found, r.threaded, r.failed) == (0, 1, 0) and r.outcomes == {"ticket": 1}
        assert thread.calls[5:] == [[b]]
        r = p.drain()
        assert r.threaded == 0 and len(thread.calls) == 6
    finally:
        p.disconnect()
    assert tickets(app) == 4 and dovecot.count("Processed") == 4
