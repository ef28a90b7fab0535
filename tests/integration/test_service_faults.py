"""`ticket-gateway serve` as a real process with real sockets: crashes, outages, shutdown, systemd, logs.

What counts is checked from outside, through the CLI (`mail list --json`, `tickets list --json`): every mail that
got a 250 exists exactly once; a mail the client had to send again (no 250) also exists exactly once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from mails import make_mail as _make_mail

from tests.conftest import PG_ADMIN_URL, ROOT, _pg_url, drop_pg_database, new_pg_database, new_sqlite_database, run_cli


def make_mail(**kw) -> bytes:
    """A test mail with CRLF line ends, as an MTA puts it on the wire (smtplib sends bytes unchanged)."""
    return _make_mail(**kw).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """One `ticket-gateway serve` process on its own ports."""

    def __init__(self, tmp_path: Path, db_url: str, *, extra: str = "", env: dict[str, str] | None = None) -> None:
        self.tmp = tmp_path
        self.smtp = free_port()
        self.lmtp = free_port()
        self.config = tmp_path / "gateway.toml"
        self.config.write_text(f'''[gateway]
data_dir = "{tmp_path / 'var'}"
addresses = ["support@example.com"]
unknown_senders = "register"

[database]
url = "{db_url}"

[[listen]]
protocol = "smtp"
port = {self.smtp}

[[listen]]
protocol = "lmtp"
port = {self.lmtp}

[serve]
hostname = "gw.test"
pending_sweep_seconds = 1

[limits]
# the load tests send thousands of mails from seven addresses: not a flood here (tests/integration/test_hostile.py)
flood_exempt = ["customer.example"]

[http]
listen = "127.0.0.1:0"
''' + extra)
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp_path / "serve.stderr"
        self.starts = 0

    def start(self, wait: bool = True) -> None:
        e = dict(os.environ)
        e.pop("TICKET_GATEWAY_CONFIG", None)
        e.pop("NOTIFY_SOCKET", None)
        e.update(self.env)
        self.starts += 1
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(self.config), "serve"],
                                         stdout=subprocess.DEVNULL, stderr=err, env=e, cwd=ROOT)
        if wait:
            self.wait_listening()

    def wait_listening(self, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.smtp), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("serve did not listen: " + self.log.read_text()[-3000:])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def term(self) -> tuple[int, float]:
        assert self.proc is not None
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(40)
        return rc, time.monotonic() - t

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*args, config=self.config)

    def mails(self) -> list[dict]:
        out = self.cli("mail", "list", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def wait_threaded(self, timeout: float = 60) -> list[dict]:
        end = time.monotonic() + timeout
        while True:
            mails = self.mails()
            if all(m["outcome"] != "received" for m in mails):
                return mails
            if time.monotonic() > end:
                raise AssertionError(f"{sum(m['outcome'] == 'received' for m in mails)} mails not threaded")
            time.sleep(0.3)

    def tickets(self) -> list[dict]:
        out = self.cli("tickets", "list", "--json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)


@pytest.fixture
def sqlite_serve(tmp_path):
    servers: list[Serve] = []

    def make(**kw) -> Serve:
        s = Serve(tmp_path, new_sqlite_database(tmp_path / "var" / "gateway.db"), **kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def send(port: int, raw: bytes, sender: str = "alice@customer.example", timeout: float = 10) -> int:
    """One mail in one session: the code the DATA got (0: no answer -- refused, reset, timeout)."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=timeout) as s:
            s.ehlo()
            code, _ = s.mail(sender)
            if code != 250:
                return code
            code, _ = s.rcpt("support@example.com")
            if code != 250:
                return code
            code, _ = s.data(raw)
            return code
    except (OSError, smtplib.SMTPException):
        return 0


def corpus(n: int, tag: str) -> list[tuple[str, str, bytes]]:
    """n new conversations: (message-id, sender, raw)."""
    out = []
    for i in range(n):
        mid = f"{tag}-{i}@customer.example"  # as `mail list` shows it
        sender = f"customer{i % 7}@customer.example"
        out.append((mid, sender, make_mail(sender=sender, subject=f"{tag} problem {i}", message_id=f"<{mid}>",
                                           body=f"Problem number {i}.\n" * (1 + i % 5))))
    return out


def assert_exactly_once(mails: list[dict], mids: list[str]) -> None:
    """Every message-id has one ticket-making row; any other rows of it are recorded duplicates."""
    made = Counter(m["message_id"] for m in mails if m["outcome"] == "ticket")
    other = Counter(m["outcome"] for m in mails if m["outcome"] not in ("ticket", "duplicate"))
    assert not other, other
    missing = [m for m in mids if made[m] == 0]
    twice = [m for m in mids if made[m] > 1]
    assert not missing and not twice, (missing[:5], twice[:5])


# --- tests --------------------------------------------------------------------------------------------------
def test_client_dropping_mid_data_leaves_nothing(sqlite_serve) -> None:
    srv = sqlite_serve()
    srv.start()
    for cut in (10, 5000, 200_000):
        c = socket.create_connection(("127.0.0.1", srv.smtp), timeout=10)
        c.recv(1000)
        for line in (b"EHLO x\r\n", b"MAIL FROM:<alice@customer.example>\r\n", b"RCPT TO:<support@example.com>\r\n",
                     b"DATA\r\n"):
            c.sendall(line)
            c.recv(1000)
        c.sendall(make_mail(body="abc\n" * 100_000).replace(b"\n", b"\r\n")[:cut])
        c.close()
    time.sleep(0.5)
    assert send(srv.smtp, make_mail(subject="complete")) == 250
    mails = srv.wait_threaded()
    assert [m["subject"] for m in mails] == ["complete"]
    srv.term()


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_doubles_nothing(sqlite_serve) -> None:
    srv = sqlite_serve()
    srv.start()
    mails = corpus(200, "kill")
    acked: set[str] = set()
    resent: Counter[str] = Counter()
    lock = threading.Lock()
    rnd = random.Random(3)

    def client(chunk: list[tuple[str, str, bytes]]) -> None:
        for mid, sender, raw in chunk:
            tries = 0
            while True:
                tries += 1
                if send(srv.smtp, raw, sender, timeout=5) == 250:
                    with lock:
                        acked.add(mid)
                        if tries > 1:
                            resent[mid] = tries - 1
                    break
                time.sleep(0.05)
            time.sleep(rnd.random() * 0.06)

    threads = [threading.Thread(target=client, args=(mails[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    kills = 0
    while any(t.is_alive() for t in threads):
        time.sleep(rnd.uniform(0.1, 0.8))
        if not any(t.is_alive() for t in threads):
            break
        srv.kill()
        kills += 1
        srv.start(wait=True)
    for t in threads:
        t.join()
    assert len(acked) == 200 and kills >= 3, (len(acked), kills)
    rows = srv.wait_threaded()
    assert_exactly_once(rows, [m[0] for m in mails])
    assert len(srv.tickets()) == 200
    rc, _ = srv.term()
    assert rc == 0
    print(f"{kills} kills, {len(resent)} mails resent, {len(rows)} inbound rows")


class Proxy:
    """A TCP forwarder to PostgreSQL that can be switched off (connections cut, port refuses) and on."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.conns: list[socket.socket] = []
        self.listener: socket.socket | None = None
        self.lock = threading.Lock()

    def up(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(50)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def down(self) -> None:
        with self.lock:
            if self.listener is not None:
                try:
                    self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked in the other thread
                except OSError:
                    pass
                self.listener.close()
                self.listener = None
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns.clear()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                a, _ = ls.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(self.target)
            except OSError:
                a.close()
                continue
            with self.lock:
                self.conns += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.mark.slow
@pytest.mark.pg
def test_database_unreachable_answers_451_and_everything_arrives_later(tmp_path) -> None:
    from sqlalchemy.engine import make_url

    name = new_pg_database()
    u = make_url(_pg_url(name))
    proxy = Proxy((u.host or "127.0.0.1", u.port or 5432))
    proxy.up()
    srv = Serve(tmp_path, u.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
    try:
        srv.start()
        mails = corpus(30, "outage")
        for _mid, sender, raw in mails[:10]:
            assert send(srv.smtp, raw, sender) == 250
        proxy.down()
        codes = [send(srv.smtp, raw, sender) for _mid, sender, raw in mails[10:20]]
        assert codes == [451] * 10, codes  # temporary, never 5xx
        # LMTP says it per recipient
        lm = smtplib.LMTP("127.0.0.1", srv.lmtp, timeout=10)
        lm.ehlo()
        lm.mail("alice@customer.example")
        lm.rcpt("support@example.com")
        code, msg = lm.data(mails[20][2])
        assert (code, msg[:5]) == (451, b"4.3.0")
        lm.close()
        time.sleep(1.5)  # the sweep runs into the outage too, and the service stays up
        assert srv.proc is not None and srv.proc.poll() is None
        proxy.up()
        for _mid, sender, raw in mails[10:]:  # the senders try again
            assert send(srv.smtp, raw, sender) == 250
        rows = srv.wait_threaded()
        assert_exactly_once(rows, [m[0] for m in mails])
        assert len(srv.tickets()) == 30
        rc, _ = srv.term()
        assert rc == 0
    finally:
        srv.stop()
        proxy.down()
        drop_pg_database(name)


@pytest.mark.slow
def test_sigterm_under_load_exits_in_time_and_loses_nothing(sqlite_serve) -> None:
    srv = sqlite_serve()
    srv.start()
    mails = corpus(2000, "term")
    acked: set[str] = set()
    tried: set[str] = set()
    lock = threading.Lock()

    def client(chunk: list[tuple[str, str, bytes]]) -> None:
        for mid, sender, raw in chunk:
            with lock:
                tried.add(mid)
            code = send(srv.smtp, raw, sender)
            if code == 250:
                with lock:
                    acked.add(mid)
            elif code == 0 or code == 421:
                return  # the service went away

    threads = [threading.Thread(target=client, args=(mails[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    rc, took = srv.term()
    for t in threads:
        t.join(30)
    assert rc == 0 and took < 30, (rc, took)
    assert 20 < len(acked) < len(mails)
    srv.start()  # threads whatever the old process left stored
    rows = srv.wait_threaded()
    made = Counter(m["message_id"] for m in rows if m["outcome"] == "ticket")
    assert all(made[mid] == 1 for mid in acked), [mid for mid in acked if made[mid] != 1][:5]
    assert all(made[mid] <= 1 for mid in tried)
    assert not [m for m in rows if m["outcome"] not in ("ticket", "duplicate")]
    srv.term()
    print(f"SIGTERM after {len(acked)} acknowledged mails; exit took {took:.2f}s")


def test_startup_threads_mail_stored_before_a_crash(sqlite_serve, tmp_path) -> None:
    from gateway.app import build_app
    from gateway.config import load
    from gateway.intake import Envelope

    srv = sqlite_serve()
    app = build_app(load(srv.config))
    intake = app.intake()
    for _mid, sender, raw in corpus(3, "crash"):
        intake.store(raw, Envelope(mail_from=sender, rcpt_tos=("support@example.com",), source="smtp"))
    app.close()
    assert {m["outcome"] for m in srv.mails()} == {"received"}
    srv.start()
    rows = srv.wait_threaded(timeout=20)
    assert [m["outcome"] for m in rows] == ["ticket"] * 3
    srv.term()


def test_systemd_notify_ready_watchdog_stopping(sqlite_serve, tmp_path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    srv = sqlite_serve(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    srv.start(wait=False)
    got: list[str] = []
    try:
        while sum("WATCHDOG=1" in m for m in got) < 3:
            got.append(sock.recv(4096).decode())
        assert any(m.startswith("READY=1") for m in got)
        assert f"MAINPID={srv.proc.pid}" in "\n".join(got)
        srv.wait_listening()
        rc, _ = srv.term()
        assert rc == 0
        while not any("STOPPING=1" in m for m in got):
            got.append(sock.recv(4096).decode())
    finally:
        sock.close()


def test_sighup_reopens_the_log_file(sqlite_serve, tmp_path) -> None:
    log = tmp_path / "gateway.log"
    srv = sqlite_serve(extra=f'\n[logging]\nfile = "{log}"\n')
    srv.start()
    assert "listening" in log.read_text()
    log.rename(tmp_path / "gateway.log.1")  # logrotate
    srv.proc.send_signal(signal.SIGHUP)
    end = time.monotonic() + 10
    while not (log.exists() and "log file reopened" in log.read_text()):
        assert time.monotonic() < end
        time.sleep(0.05)
    rc, _ = srv.term()
    assert rc == 0 and "stopped" in log.read_text()
    assert "stopped" not in (tmp_path / "gateway.log.1").read_text()


def test_unreachable_database_at_start_exits_75(tmp_path) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(PG_ADMIN_URL).set(host="127.0.0.1", port=free_port(), database="nothing_here")
    srv = Serve(tmp_path, url.render_as_string(hide_password=False))
    srv.start(wait=False)
    assert srv.proc is not None and srv.proc.wait(60) == 75


# Memory: a large mail's copies do not outlive it ------------------------------------------------------------
def test_a_connection_that_bound_a_large_mail_is_closed_when_returned(tmp_path, sqlite_url) -> None:
    """SQLite keeps its own copy of a bound value in the cached statement: the connection that stored a large
    mail is closed on check-in (the mail is stored; the next transaction opens a fresh connection)."""
    from conftest import make_config
    from sqlalchemy import event

    from gateway.app import build_app
    from gateway.intake import Envelope
    from gateway.store.raw import release_big_binds

    app = build_app(make_config(tmp_path, sqlite_url))
    try:
        app.upgrade_db()
        invalidated: list[object] = []
        event.listen(app.engine.pool, "invalidate", lambda conn, record, exc: invalidated.append(record))
        assert release_big_binds(app.engine, threshold=512 * 1024) is True
        assert release_big_binds(app.engine, threshold=512 * 1024) is True  # installed once per engine
        intake = app.intake()
        small = intake.store(make_mail(subject="small"), Envelope(source="smtp"))
        assert invalidated == []
        big_raw = make_mail(subject="big", body="y" * 76 + "\n" * 0 + ("z" * 76 + "\n") * 10_000)
        assert len(big_raw) > 512 * 1024
        big = intake.store_many([(big_raw, Envelope(source="smtp")), (make_mail(subject="next"),
                                                                    Envelope(source="smtp"))])
        assert len(invalidated) == 1  # the store's connection, once
        assert intake.process(big[0]).outcome == "ticket" and intake.process(small).outcome == "ticket"
        from gateway.models import InboundRaw

        with app.sessions() as s:
            assert s.get(InboundRaw, big[0]).data == big_raw
        assert len(invalidated) == 1  # reading the large mail back binds nothing large
    finally:
        app.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_big_buffers_go_back_to_the_os() -> None:
    """serve's fixed mmap threshold: buffers of a large mail's size, freed, leave RSS (glibc's dynamic
    threshold would keep the later ones in the heap)."""
    code = """
import sys
from gateway.service import release_big_buffers

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

if not release_big_buffers():
    print("no-mallopt"); sys.exit(0)
base = rss()
for _ in range(4):
    b = bytearray(24 * 2**20)
    b[::4096] = bytes(len(range(0, len(b), 4096)))  # touch every page
    b[::4096] = b"x" * len(range(0, len(b), 4096))
    del b
print(rss() - base)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    if out.strip() == "no-mallopt":
        pytest.skip("no glibc mallopt")
    assert float(out) < 8, out  # MiB kept after four 24 MiB buffers came and went


# IMAP in the service ----------------------------------------------------------------------------------------
def _toml_table(name: str, values: dict) -> str:
    def lit(v: object) -> str:
        return json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else str(v)

    return f"\n[[{name}]]\n" + "".join(f"{k} = {lit(v)}\n" for k, v in values.items())


def test_serve_polls_imap_accounts_and_stops_with_them(sqlite_serve, dovecot) -> None:
    """`serve` runs every [[imap]] account's poller: mail already waiting is drained at start, mail appended
    later arrives through IDLE, both become tickets and leave the INBOX; SIGTERM ends the pollers too."""
    srv = sqlite_serve(extra=_toml_table("imap", dovecot.account_config(name="support-box")))
    first = make_mail(subject="Waiting in the mailbox", sender="Ann <ann@customer.example>")
    dovecot.append(first)
    srv.start()
    end = time.monotonic() + 30
    while not srv.tickets() or dovecot.count("INBOX"):
        assert time.monotonic() < end, srv.log.read_text()[-3000:]
        time.sleep(0.2)
    second = make_mail(subject="Arrived while idling", sender="Ben <ben@customer.example>")
    dovecot.append(second)
    while len(srv.tickets()) < 2 or dovecot.count("INBOX"):
        assert time.monotonic() < end, srv.log.read_text()[-3000:]
        time.sleep(0.2)
    assert sorted(t["subject"] for t in srv.tickets()) == ["Arrived while idling", "Waiting in the mailbox"]
    assert {m["source"] for m in srv.mails()} == {"imap"}
    assert dovecot.count("Processed") == 2
    rc, took = srv.term()
    assert rc == 0 and took < 30
    assert "polling" in srv.log.read_text()
