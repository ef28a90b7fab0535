"""One IMAP poller per mailbox across instances sharing a database (gateway.lease), on SQLite and PostgreSQL,
against a real Dovecot (tests/dovecot.py): the lease itself, two pollers with separate engines racing on one
mailbox, and two `serve` processes where the holder is killed (SIGKILL) and the other takes over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mails import make_mail
from sqlalchemy import func, select

from gateway.imap import ImapPoller
from gateway.lease import Lease
from gateway.models import ImapSeen, InboundMail, Ticket

pytestmark = pytest.mark.timeout(120)

TTL = 2  # lease_seconds of the lease tests: a takeover is due within TTL + TTL/3
# lease_seconds of the pollers: longer than a drain step (a threading batch, a store) takes on a loaded machine;
# a holder that outlasts its lease inside one step loses the mailbox to the other poller (by design)
POLL_TTL = 5


def wait_for(cond, timeout: float = 20.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def counts(app) -> tuple[int, int, int]:
    """(tickets, inbound mails, inbound mails still `received`)."""
    with app.sessions() as s:
        return (s.scalar(select(func.count()).select_from(Ticket)) or 0,
                s.scalar(select(func.count()).select_from(InboundMail)) or 0,
                s.scalar(select(func.count()).select_from(InboundMail).where(InboundMail.outcome == "received"))
                or 0)


def mails(n: int, tag: str) -> list[bytes]:
    return [make_mail(subject=f"{tag} {i}", sender=f"{tag}{i}@customer.example") for i in range(n)]


# The lease ----------------------------------------------------------------------------------------------------
def test_one_holder_renewal_release_and_takeover_after_expiry(make_app):
    a, b = make_app(), make_app()
    assert a.instance != b.instance
    la, lb = Lease(a.sessions, "imap:box", a.instance, TTL), Lease(b.sessions, "imap:box", b.instance, TTL)
    assert la.claim() and la.held() and la.generation == 1
    assert not lb.claim() and not lb.held()
    assert lb.last is not None and lb.last.holder == a.instance and 0 < lb.last.expires_in <= TTL
    assert "held by" in lb.last.describe()
    time.sleep(TTL * 0.6)
    assert la.claim() and la.generation == 1  # renewed: the same tenure
    time.sleep(TTL * 0.6)  # past the first expiry, within the renewed one
    assert not lb.claim()
    la.release()
    assert not la.held()
    assert lb.claim() and lb.generation == 2  # released: taken at once, a new generation
    assert not la.claim()
    time.sleep(TTL + 0.2)  # the holder stops renewing (it died): the lease expires
    assert not lb.held()
    assert la.claim() and la.generation == 3
    assert not lb.ensure()  # the old holder finds out on its next renewal


def test_racing_claims_have_exactly_one_winner(make_app):
    apps = [make_app() for _ in range(6)]
    for rnd in range(5):
        leases = [Lease(x.sessions, f"imap:race{rnd}", x.instance, 30) for x in apps]
        barrier = threading.Barrier(len(leases))

        def claim(lease: Lease, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            return lease.claim()

        with ThreadPoolExecutor(len(leases)) as pool:
            won = list(pool.map(claim, leases))
        assert won.count(True) == 1, won
        winner = leases[won.index(True)]
        assert all(lease.last is not None and lease.last.holder == winner.holder for lease in leases)


# Two pollers on one mailbox -----------------------------------------------------------------------------------
def test_two_pollers_on_one_mailbox_one_polls_every_mail_one_ticket(make_app, dovecot):
    """Two instances (separate apps, engines, sessions) run the service loop on one mailbox while mail arrives:
    one polls, the other stands by; every mail is one ticket, none is left `received`; when the holder stops
    (released) the other takes over and drains what arrives next."""
    a, b = make_app(), make_app()
    cfg = dovecot.account_config("shared", lease_seconds=POLL_TTL, batch_size=7)
    pa, pb = ImapPoller(a, cfg), ImapPoller(b, cfg)
    dovecot.append_many(mails(20, "before"))
    stop_a, stop_b = threading.Event(), threading.Event()
    ta = threading.Thread(target=pa.run, args=(stop_a,), daemon=True)
    tb = threading.Thread(target=pb.run, args=(stop_b,), daemon=True)
    ta.start()
    tb.start()
    try:
        for i in range(4):
            dovecot.append_many(mails(10, f"during{i}"))
            time.sleep(0.2)
        assert wait_for(lambda: counts(a) == (60, 60, 0), timeout=60), counts(a)
        assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 60
        assert wait_for(lambda: "standby" in {pa.state, pb.state}, timeout=POLL_TTL), (pa.state, pb.state)
        states = {pa.state, pb.state}
        assert states & {"idling", "draining", "waiting"}, states
        holder, standby = (pa, pb) if pb.state == "standby" else (pb, pa)
        holder_stop = stop_a if holder is pa else stop_b
        assert holder.lease.held() and not standby.lease.held()
        # only the holder ever connected: the standby's drains never ran
        assert standby.idle_count == 0
        holder_stop.set()
        (ta if holder is pa else tb).join(10)
        assert wait_for(lambda: standby.lease.held() and standby.state == "idling", timeout=POLL_TTL * 3)
        dovecot.append_many(mails(10, "after"))
        assert wait_for(lambda: counts(a) == (70, 70, 0), timeout=30), counts(a)
    finally:
        stop_a.set()
        stop_b.set()
        ta.join(10)
        tb.join(10)
    with a.sessions() as s:
        seen = s.scalars(select(ImapSeen).where(ImapSeen.folder == "INBOX")).all()
    assert len(seen) == 70 and len({r.mail_id for r in seen}) == 70
    assert all(r.outcome == "ticket" for r in seen)


def test_two_drains_racing_without_the_service_loop_leave_nothing_received(make_app, dovecot):
    """`imap poll` from cron while another instance drains: the second one skips the mailbox."""
    a, b = make_app(), make_app()
    cfg = dovecot.account_config("cron", lease_seconds=POLL_TTL, batch_size=5)
    dovecot.append_many(mails(30, "cron"))
    pa, pb = ImapPoller(a, cfg), ImapPoller(b, cfg)
    barrier = threading.Barrier(2)

    def poll(p: ImapPoller):
        p.connect()
        barrier.wait()
        try:
            return p.drain()
        finally:
            p.disconnect()
            p.lease.release()

    with ThreadPoolExecutor(2) as pool:
        ra, rb = pool.map(poll, [pa, pb])
    assert sorted([bool(ra.standby), bool(rb.standby)]) == [False, True], (ra, rb)
    done = ra if not ra.standby else rb
    assert done.stored == 30 and done.outcomes == {"ticket": 30}
    assert counts(a) == (30, 30, 0)
    assert dovecot.count("INBOX") == 0


def test_cli_imap_poll_skips_a_mailbox_another_instance_polls(tmp_path, make_app, db_url, dovecot):
    from conftest import run_cli, write_config

    app = make_app()
    acct = dovecot.account_config("held", lease_seconds=30)
    extra = "\n[[imap]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in acct.items())
    cfg = write_config(tmp_path, db_url, extra)
    dovecot.append(make_mail(subject="not yet", sender="ny@customer.example"))
    lease = Lease(app.sessions, "imap:held", app.instance, 30)
    assert lease.claim()
    out = run_cli("imap", "poll", config=cfg)
    assert out.returncode == 0, out
    assert out.stdout.decode().startswith(f"held: skipped, another instance polls this mailbox (held by "
                                          f"{app.instance} for "), out.stdout
    assert dovecot.count("INBOX") == 1 and counts(app) == (0, 0, 0)
    lease.release()
    out = run_cli("imap", "poll", config=cfg)
    assert out.returncode == 0 and b"held: 1 fetched (1 ticket)" in out.stdout, out
    assert counts(app) == (1, 1, 0) and lease.state() is not None and lease.state().free  # released after


# Two serve processes ------------------------------------------------------------------------------------------
def _serve_config(tmp: Path, data: Path, db_url: str, account: dict) -> Path:
    lines = [f'[gateway]\ndata_dir = "{data}"\naddresses = ["support@example.com"]\nunknown_senders = "register"\n',
             f'[database]\nurl = "{db_url}"\n',
             '[[listen]]\nprotocol = "lmtp"\nport = 0\nhost = "127.0.0.1"\n',
             '[serve]\nhostname = "gw.test"\npending_sweep_seconds = 1\n',
             '[http]\nlisten = "127.0.0.1:0"\n',
             '[logging]\nlevel = "INFO"\n',
             "[[imap]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in account.items())]
    tmp.mkdir(parents=True, exist_ok=True)
    p = tmp / "gateway.toml"
    p.write_text("\n".join(lines))
    return p


class ServeProc:
    def __init__(self, config: Path) -> None:
        self.config = config
        self.log = config.parent / "serve.stderr"
        env = dict(os.environ)
        env.pop("TICKET_GATEWAY_CONFIG", None)
        env.pop("NOTIFY_SOCKET", None)
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(config), "serve"],
                                         stdout=subprocess.DEVNULL, stderr=err, env=env)

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        from conftest import run_cli

        return run_cli(*args, config=self.config)

    def healthz(self) -> dict:
        import re

        import httpx

        m = re.search(r"http: listening on (http://127\.0\.0\.1:\d+)", self.text())
        assert m, self.text()[-2000:]
        return dict(httpx.get(m.group(1) + "/healthz", timeout=10).json())

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:  # what it did is checked already: no graceful shutdown to wait for
            self.proc.kill()
            self.proc.wait(10)


def test_serve_holder_killed_the_other_takes_over_within_the_lease(tmp_path, db_url, dovecot):
    from conftest import make_config

    from gateway.app import build_app

    account = dovecot.account_config("shared", lease_seconds=POLL_TTL)
    data = tmp_path / "var"
    procs = [ServeProc(_serve_config(tmp_path / f"i{i}", data, db_url, account)) for i in range(2)]
    app = build_app(make_config(tmp_path, db_url))
    lease = Lease(app.sessions, "imap:shared", app.instance, POLL_TTL)
    try:
        dovecot.append_many(mails(8, "first"))
        assert wait_for(lambda: counts(app) == (8, 8, 0), timeout=40), (counts(app), procs[0].text()[-2000:])
        state = lease.state()
        assert state is not None and not state.free
        holder = next(p for p in procs if f":{p.proc.pid}:" in state.holder)
        other = next(p for p in procs if p is not holder)
        out = holder.cli("imap", "status", "--no-connect", "--json")
        assert out.returncode == 0 and json.loads(out.stdout)["holder"] == state.holder, out
        # the standby is healthy: no IMAP connection is not a fault while another instance polls
        for proc, role in ((holder, "poller"), (other, "standby")):
            health = proc.healthz()
            assert health["status"] == "ok" and health["checks"]["imap"][0]["role"] == role, health
        assert wait_for(lambda: "standby: another instance polls this mailbox" in other.text(), timeout=10), \
            other.text()[-3000:]
        holder.proc.send_signal(signal.SIGKILL)
        holder.proc.wait(10)
        killed = time.monotonic()
        dovecot.append_many(mails(6, "second"))

        def taken() -> bool:
            s = lease.state()
            return s is not None and not s.free and f":{other.proc.pid}:" in s.holder

        assert wait_for(taken, timeout=POLL_TTL * 3), lease.state()
        took = time.monotonic() - killed
        assert took <= POLL_TTL + POLL_TTL / 3 + 1.0, took  # the lease ran out, plus one standby retry (and slack)
        assert wait_for(lambda: counts(app) == (14, 14, 0), timeout=30), (counts(app), other.text()[-2000:])
        assert dovecot.count("INBOX") == 0 and dovecot.count("Processed") == 14
    finally:
        for p in procs:
            p.stop()
        app.close()
