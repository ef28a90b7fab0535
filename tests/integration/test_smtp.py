"""SMTP and LMTP listener: real sessions over loopback sockets (smtplib and raw sockets) against the service
running in-process on free ports, with the store on SQLite and PostgreSQL (`db_url`)."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from mails import make_mail as _make_mail
from sqlalchemy import func, select

from gateway.config import validate
from gateway.db import StoreUnavailable
from gateway.models import InboundMail, Ticket
from gateway.service import Notifier, Service
from gateway.smtp import route_for


def make_mail(**kw: Any) -> bytes:
    """A test mail with CRLF line ends, as an MTA puts it on the wire (smtplib sends bytes unchanged)."""
    return _make_mail(**kw).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_for(tmp_path: Path, db_url: str, *, listen: list[dict[str, Any]] | None = None,
               limits: dict[str, Any] | None = None, **sections: Any):
    data: dict[str, Any] = {
        "gateway": {"data_dir": str(tmp_path / "var"), "addresses": ["support@example.com", "billing@example.com"],
                    "unknown_senders": "register"},
        "database": {"url": db_url},
        "listen": listen if listen is not None else [
            {"protocol": "smtp", "port": 0}, {"protocol": "lmtp", "port": 0}],  # the OS picks: no port race
        "limits": limits or {},
        "serve": {"hostname": "gw.test", "pending_sweep_seconds": 1},
        "http": {"listen": "127.0.0.1:0"},  # any free port: never the default 8025
    }
    data.update(sections)
    return validate(data, base_dir=tmp_path)


class Running:
    """The service in a background thread with its own loop (no signal handlers there)."""

    def __init__(self, config) -> None:
        self.service = Service(config, notifier=Notifier({}), handle_signals=False)
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.service._started.wait(30):
            raise RuntimeError(f"service did not start (exit code {self.code})")

    def _run(self) -> None:
        self.code = asyncio.run(self.service.run())

    def port(self, protocol: str) -> int:
        for li in self.service.listeners:
            if li.spec["protocol"] == protocol and not li.spec["path"]:
                return li.server.sockets[0].getsockname()[1]
        raise KeyError(protocol)

    def stop(self) -> None:
        self.service.stop_threadsafe()
        self.thread.join(40)
        assert not self.thread.is_alive()

    # the store
    def mails(self) -> list[InboundMail]:
        with self.service.app.sessions() as s:
            return list(s.scalars(select(InboundMail).order_by(InboundMail.id)))

    def wait_processed(self, n: int, timeout: float = 20) -> list[InboundMail]:
        end = time.monotonic() + timeout
        while True:
            mails = self.mails()
            if len(mails) >= n and all(m.outcome != "received" for m in mails):
                return mails
            if time.monotonic() > end:
                raise AssertionError(f"not processed: {[(m.id, m.outcome) for m in mails]}")
            time.sleep(0.05)

    def tickets(self) -> int:
        with self.service.app.sessions() as s:
            return s.scalar(select(func.count()).select_from(Ticket)) or 0


@pytest.fixture
def serve(tmp_path, db_url):
    running: list[Running] = []

    def start(**kw: Any) -> Running:
        r = Running(config_for(tmp_path, db_url, **kw))
        running.append(r)
        return r

    yield start
    for r in running:
        if r.thread.is_alive():
            r.stop()


class Raw:
    """A raw SMTP client: exact bytes on the wire."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""
        self.greeting = self.reply()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; buffer {self.buf!r}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self) -> bytes:
        """One (possibly multi-line) reply; returns its last line."""
        while True:
            line = self.line()
            if line[3:4] != b"-":
                return line

    def cmd(self, data: bytes) -> bytes:
        self.sock.sendall(data)
        return self.reply()

    def close(self) -> None:
        self.sock.close()


# --- the basics ---------------------------------------------------------------------------------------------
@pytest.mark.pg
def test_smtp_mail_is_stored_before_250_and_threaded_after(serve) -> None:
    r = serve()
    raw = make_mail(subject="Printer on fire", message_id="<p1@customer.example>")
    with smtplib.SMTP("127.0.0.1", r.port("smtp"), timeout=10) as s:
        code, ehlo = s.ehlo()
        assert code == 250 and b"SIZE 52428800" in ehlo and b"8BITMIME" in ehlo
        s.mail("alice@customer.example")
        s.rcpt("support@example.com")
        code, msg = s.data(raw)
        assert code == 250 and b"2.0.0" in msg
        # 250 means committed: the row exists the moment the client has its answer
        mails = r.mails()
        assert len(mails) == 1 and mails[0].source == "smtp"
        assert mails[0].envelope_from == "alice@customer.example"
        assert mails[0].envelope_to == ["support@example.com"]
    (m,) = r.wait_processed(1)
    assert m.outcome == "ticket" and r.tickets() == 1


@pytest.mark.pg
def test_rcpt_only_gateway_addresses_and_plus_tokens(serve) -> None:
    r = serve()
    with smtplib.SMTP("127.0.0.1", r.port("smtp"), timeout=10) as s:
        s.ehlo()
        s.mail("alice@customer.example")
        code, msg = s.rcpt("someone@example.com")
        assert (code, msg[:5]) == (550, b"5.1.1")
        assert s.rcpt("support+ticket-42@example.com")[0] == 250
        assert s.rcpt("BILLING@example.com")[0] == 250
        assert s.data(make_mail())[0] == 250
        s.rset()
        s.mail("<>")  # the null sender (bounces) is accepted and recorded as ''
        s.rcpt("support@example.com")
        assert s.data(make_mail(subject="bounce-ish"))[0] == 250
    mails = r.wait_processed(2)
    assert mails[0].envelope_to == ["support+ticket-42@example.com", "BILLING@example.com"]
    assert mails[1].envelope_from == ""


def test_lmtp_answers_once_per_accepted_recipient(serve) -> None:
    r = serve()
    lm = smtplib.LMTP("127.0.0.1", r.port("lmtp"), timeout=10)
    try:
        assert lm.ehlo()[0] == 250  # smtplib sends LHLO
        assert lm.mail("alice@customer.example")[0] == 250
        assert lm.rcpt("support@example.com")[0] == 250
        assert lm.rcpt("nobody@example.com")[0] == 550
        assert lm.rcpt("billing+x@example.com")[0] == 250
        code, first = lm.data(make_mail())
        code2, second = lm.getreply()  # smtplib reads one reply; LMTP sends one per recipient
        assert (code, code2) == (250, 250)
        assert first.endswith(b"<support@example.com>") and second.endswith(b"<billing+x@example.com>")
        assert lm.noop()[0] == 250  # nothing left over in the stream
    finally:
        lm.close()
    (m,) = r.wait_processed(1)
    assert m.source == "lmtp"


def test_lmtp_on_a_unix_socket(serve, tmp_path) -> None:
    path = tmp_path / "lmtp.sock"
    r = serve(listen=[{"protocol": "lmtp", "path": str(path), "socket_mode": "0600"}])
    assert path.is_socket() and (path.stat().st_mode & 0o777) == 0o600
    lm = smtplib.LMTP(str(path), timeout=10)
    try:
        lm.ehlo()
        lm.mail("alice@customer.example")
        lm.rcpt("support@example.com")
        assert lm.data(make_mail())[0] == 250
    finally:
        lm.close()
    r.wait_processed(1)
    r.stop()
    assert not path.exists()


def test_helo_and_ehlo_are_not_lmtp(serve) -> None:
    r = serve()
    c = Raw(r.port("lmtp"))
    assert c.cmd(b"EHLO x\r\n").startswith(b"500")
    assert c.cmd(b"LHLO x\r\n").startswith(b"250")
    c.close()


# --- size, long lines, smuggling -----------------------------------------------------------------------------
def test_size_is_advertised_and_enforced(serve) -> None:
    r = serve(limits={"max_message_size": 20_000})
    with smtplib.SMTP("127.0.0.1", r.port("smtp"), timeout=10) as s:
        s.ehlo()
        assert s.esmtp_features["size"] == "20000"
        assert s.mail("alice@customer.example", ["SIZE=30000"])[0] == 552
        s.rset()
        s.mail("alice@customer.example")
        s.rcpt("support@example.com")
        code, _ = s.data(make_mail(body="x" * 70 + "\n" * 1 + ("y" * 70 + "\n") * 400))
        assert code == 552
        # the session goes on and a fitting mail is accepted
        s.mail("alice@customer.example")
        s.rcpt("support@example.com")
        assert s.data(make_mail())[0] == 250
    assert len(r.wait_processed(1)) == 1


@pytest.mark.parametrize("smuggle", [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\n..\n"])
def test_smtp_smuggling_does_not_create_a_second_message(serve, smuggle) -> None:
    r = serve()
    c = Raw(r.port("smtp"))
    assert c.cmd(b"EHLO client.example\r\n").startswith(b"250")
    assert c.cmd(b"MAIL FROM:<alice@customer.example>\r\n").startswith(b"250")
    assert c.cmd(b"RCPT TO:<support@example.com>\r\n").startswith(b"250")
    assert c.cmd(b"DATA\r\n").startswith(b"354")
    body = (b"From: alice@customer.example\r\nTo: support@example.com\r\nSubject: first\r\n"
            b"Message-ID: <first@customer.example>\r\n\r\nhello" + smuggle +
            b"MAIL FROM:<mallory@evil.example>\r\nRCPT TO:<support@example.com>\r\nDATA\r\n"
            b"From: ceo@example.com\r\nSubject: smuggled\r\nMessage-ID: <smuggled@evil.example>\r\n\r\nwire money\r\n"
            b".\r\n")
    assert c.cmd(body).startswith(b"250")  # exactly one answer: one message
    assert c.cmd(b"QUIT\r\n").startswith(b"221")
    assert c.buf == b""  # no second reply waiting
    c.close()
    mails = r.wait_processed(1)
    assert len(mails) == 1
    with r.service.app.sessions() as s:
        raw = s.get(InboundMail, mails[0].id).raw.data
    assert b"wire money" in raw and b"MAIL FROM:<mallory@evil.example>" in raw  # it is body text, not a command


async def _line_reader(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """The reference: one line at a time (the DATA reader before it read in pieces, aiosmtpd's rules)."""
    buf = bytearray()
    size, too_big, at_start = 0, False, True
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as e:
            line = await reader.read(e.consumed)
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("eof") from None
        if not line:
            raise ConnectionResetError("eof")
        if at_start and line == b".\r\n":
            break
        size += len(line)
        if limit and size > limit:
            too_big, buf = True, bytearray()
        elif not too_big:
            buf += line[1:] if at_start and line[:1] == b"." else line
        at_start = line.endswith(b"\r\n")
    return None if too_big else bytes(buf)


def test_data_reader_in_pieces_keeps_the_line_rules() -> None:
    """read_data (pieces up to each "." CRLF) against a line-at-a-time reader: the same mail, the same
    dot-unstuffing, the same end, the same size verdict, the same bytes left for the next command -- for
    random streams of dots, bare CRs and LFs, CRLFs, cut anywhere, with tiny stream limits."""
    import random

    from gateway.smtp import read_data

    async def run(fn, chunks, stream_limit, size_limit):
        reader = asyncio.StreamReader(limit=stream_limit)
        for c in chunks:
            reader.feed_data(c)
        reader.feed_eof()
        try:
            out = await fn(reader, size_limit)
        except ConnectionResetError:
            out = "eof"
        return out, await reader.read()

    async def main() -> None:
        rnd = random.Random(5321)
        tokens = [b".", b"\r", b"\n", b"\r\n", b"a", b"..", b"\r\n.", b"\r\n..", b"x.", b".\r\n", b"\r\n.\r"]
        for _ in range(5000):
            body = b"".join(rnd.choice(tokens) for _ in range(rnd.randint(0, 40)))
            end = rnd.choice([b"\r\n.\r\n", b".\r\n", b""])  # b"": the client hangs up inside DATA
            stream = body + end + b"QUIT\r\n"
            cuts = sorted(rnd.sample(range(len(stream) + 1), min(3, len(stream) + 1)))
            chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
            stream_limit, size_limit = rnd.choice([4, 5, 8, 64, 65536]), rnd.choice([0, 0, 10, 30])
            expected = await run(_line_reader, chunks, stream_limit, size_limit)
            got = await run(read_data, chunks, stream_limit, size_limit)
            assert got == expected, (stream, stream_limit, size_limit)

    asyncio.run(main())


def test_overlong_lines_are_data_and_never_commands(serve) -> None:
    r = serve()
    c = Raw(r.port("smtp"))
    c.cmd(b"EHLO client.example\r\n")
    c.cmd(b"MAIL FROM:<alice@customer.example>\r\n")
    c.cmd(b"RCPT TO:<support@example.com>\r\n")
    assert c.cmd(b"DATA\r\n").startswith(b"354")
    # lines far over the reader's limit (64 KiB), one with a bare-LF "end of data" and commands inside
    long = (b"A" * 70_000 + b"\r\nQUIT\r\n" + b"B" * 80_000 + b"\n.\nRSET\nMAIL FROM:<x@evil.example>\n"
            + b"C" * 200_000 + b"\r\n.\r\n")
    reply = c.cmd(b"Subject: long\r\nMessage-ID: <long@customer.example>\r\n\r\n" + long)
    assert reply.startswith(b"250")  # exactly one reply: one mail
    assert c.cmd(b"NOOP\r\n").startswith(b"250")  # 'QUIT' inside DATA was data, the session is still there
    assert c.buf == b""
    c.close()
    (m,) = r.wait_processed(1)
    with r.service.app.sessions() as s:
        raw = s.get(InboundMail, m.id).raw.data
    assert raw.endswith(b"C" * 200_000 + b"\r\n") and b"\r\nQUIT\r\n" in raw
    # a too-long command line is refused, and the session goes on
    c = Raw(r.port("smtp"))
    assert c.cmd(b"EHLO " + b"x" * 100_000 + b"\r\n").startswith(b"500")
    assert c.cmd(b"NOOP\r\n").startswith(b"250")
    c.close()


def test_dot_stuffing_is_undone(serve) -> None:
    r = serve()
    body = b"Subject: dots\r\nMessage-ID: <dots@customer.example>\r\n\r\n.leading dot\r\n..two\r\nmid.dle\r\n"
    with smtplib.SMTP("127.0.0.1", r.port("smtp"), timeout=10) as s:
        s.ehlo()
        s.mail("alice@customer.example")
        s.rcpt("support@example.com")
        assert s.data(body)[0] == 250  # smtplib doubles leading dots on the wire
    (m,) = r.wait_processed(1)
    with r.service.app.sessions() as s:
        assert s.get(InboundMail, m.id).raw.data == body


# --- failures answer 451, never 5xx ------------------------------------------------------------------------
@pytest.mark.parametrize("error", [StoreUnavailable("database is down"), OSError(28, "No space left on device"),
                                   RuntimeError("a bug")])
def test_store_failures_answer_451(serve, monkeypatch, error) -> None:
    r = serve()

    def broken(*args: Any) -> int:
        raise error

    monkeypatch.setattr(r.service.intake, "store", broken)
    monkeypatch.setattr(r.service.intake, "store_many", broken)  # the service stores with group commit
    with smtplib.SMTP("127.0.0.1", r.port("smtp"), timeout=10) as s:
        s.ehlo()
        s.mail("alice@customer.example")
        s.rcpt("support@example.com")
        code, msg = s.data(make_mail())
        assert (code, msg[:5]) == (451, b"4.3.0")
    lm = smtplib.LMTP("127.0.0.1", r.port("lmtp"), timeout=10)
    lm.ehlo()
    lm.mail("alice@customer.example")
    lm.rcpt("support@example.com")
    lm.rcpt("billing@example.com")
    assert lm.data(make_mail())[0] == 451 and lm.getreply()[0] == 451
    lm.close()
    assert r.mails() == []


def _send_concurrently(port: int, n: int, lmtp: bool = False) -> list[tuple[int, bytes]]:
    """n clients at once, one mail each: their DATA replies."""
    out: list[tuple[int, bytes]] = [(0, b"")] * n
    go = threading.Barrier(n)

    def client(i: int) -> None:
        with (smtplib.LMTP if lmtp else smtplib.SMTP)("127.0.0.1", port, timeout=20) as s:
            s.ehlo()
            s.mail(f"c{i}@customer.example")
            s.rcpt("support@example.com")
            go.wait()
            out[i] = s.data(make_mail(subject=f"concurrent {i}", message_id=f"<gc{i}@customer.example>"))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_group_commit_answers_each_after_the_commit_holding_its_mail(serve, monkeypatch) -> None:
    r = serve()
    intake = r.service.intake
    real = intake.store_many
    batches: list[list[int]] = []

    def slow_store_many(items: list[Any]) -> list[int]:
        time.sleep(0.3)  # DATA completions arriving meanwhile wait for the next batch
        ids = real(items)
        batches.append(ids)
        return ids

    monkeypatch.setattr(intake, "store_many", slow_store_many)
    monkeypatch.setattr(r.service.group_commit, "parallel", 1)  # PostgreSQL runs a few batches at once
    replies = _send_concurrently(r.port("smtp"), 8)
    assert [c for c, _ in replies] == [250] * 8, replies
    assert len(batches) < 8 and max(len(b) for b in batches) > 1, batches  # grouped
    # every client was told the id of its own mail, and that mail is its own
    stored = {m.id: (m.message_id or "").strip("<>") for m in r.mails()}  # threading drops the <>
    for i, (_, msg) in enumerate(replies):
        mail_id = int(msg.rsplit(b" ", 1)[1])
        assert stored[mail_id] == f"gc{i}@customer.example"
    assert sorted(stored) == sorted(i for b in batches for i in b)
    assert len(r.wait_processed(8)) == 8 and r.tickets() == 8


def test_group_commit_failure_answers_451_to_the_whole_batch(serve, monkeypatch) -> None:
    r = serve()
    intake = r.service.intake
    real = intake.store_many
    calls: list[int] = []

    def flaky(items: list[Any]) -> list[int]:
        calls.append(len(items))
        time.sleep(0.3)
        if len(calls) == 2:  # the second batch (the mails that arrived during the first) fails: all or none
            raise StoreUnavailable("disk full")
        return real(items)

    monkeypatch.setattr(intake, "store_many", flaky)
    monkeypatch.setattr(r.service.group_commit, "parallel", 1)
    replies = _send_concurrently(r.port("lmtp"), 6, lmtp=True)
    codes = [c for c, _ in replies]
    assert len(calls) >= 2 and calls[1] > 1, calls
    assert codes.count(451) == calls[1] and codes.count(250) == 6 - calls[1], (codes, calls)
    assert all(msg[:5] == b"4.3.0" for c, msg in replies if c == 451)
    # the mails of the failed batch were not stored; the others were, once
    assert len(r.wait_processed(6 - calls[1])) == 6 - calls[1]


def test_write_gate_stores_first_but_threading_gets_every_other_turn() -> None:
    from gateway.service import WriteGate

    gate = WriteGate(True)
    order: list[str] = []

    def waiter(name: str, urgent: bool) -> threading.Thread:
        def run() -> None:
            with gate.hold(urgent):
                order.append(name)
                time.sleep(0.05)
        t = threading.Thread(target=run)
        t.start()
        return t

    def until(cond: Any) -> None:
        end = time.monotonic() + 5
        while not cond():
            assert time.monotonic() < end
            time.sleep(0.005)

    # a threading transaction holds the gate: the store waiting goes before the other threading work
    with gate.hold(False):
        threads = [waiter("thread-1", False)]
        until(lambda: gate._other == 1)
        threads.append(waiter("store-1", True))
        until(lambda: gate._urgent == 1)
    until(lambda: len(order) == 2)
    # a store batch holds the gate: the threading transaction waiting goes before the next store batch
    with gate.hold(True):
        threads.append(waiter("thread-2", False))
        until(lambda: gate._other == 1)
        threads.append(waiter("store-2", True))
        until(lambda: gate._urgent == 1)
    for t in threads:
        t.join(5)
    assert order == ["store-1", "thread-1", "thread-2", "store-2"]


def test_threading_keeps_pace_with_mail_arriving_steadily(serve) -> None:
    """Mail arriving all the time, but slowly enough: threading does not wait for a pause (it used to wait
    up to serve.defer_seconds for every mail)."""
    r = serve()
    acked: list[float] = []
    with smtplib.SMTP("127.0.0.1", r.port("smtp"), timeout=10) as s:
        s.ehlo()
        for i in range(30):
            s.mail("alice@customer.example")
            s.rcpt("support@example.com")
            assert s.data(make_mail(subject=f"steady {i}", message_id=f"<steady{i}@customer.example>"))[0] == 250
            acked.append(time.monotonic())
            time.sleep(0.08)
        # still arriving: most of what was acknowledged more than a second ago is threaded already
        threaded = sum(m.outcome != "received" for m in r.mails()[:20])
    assert threaded >= 15, threaded
    assert len(r.wait_processed(30)) == 30
    if r.service.gate.enabled:  # SQLite: what threading costs was learnt from the workers' transactions
        assert r.service.cost_model.weight > 0


def test_threading_yields_to_a_burst(tmp_path, sqlite_url) -> None:
    from gateway.service import WriteGate

    svc = Service(config_for(tmp_path, sqlite_url), notifier=Notifier({}), handle_signals=False)
    svc.gate = WriteGate(True)
    now = time.monotonic()
    assert svc._may_thread(now)  # no mail arriving: full speed
    svc.ingest_busy = True
    # nothing learned yet: the prior costs, 0.02 s a transaction + 0.008 s a mail (gateway.thread_policy)
    svc.arrivals = 50.0  # keeping pace, in transactions of up to 16 mails, needs 46% of the write gate:
    assert svc._may_thread(now)  # threading takes its turns (thread_share 0.75)
    svc.arrivals = 200.0  # a burst (185% needed): arriving mail first ...
    assert not svc._may_thread(now)
    assert svc._may_thread(now - 31)  # ... until the mail has waited serve.defer_seconds
    svc.arrivals = 65.0  # 60%: still a burst (it ends below 3/4 of thread_share) ...
    assert not svc._may_thread(now)
    svc.arrivals = 55.0  # 51%: now it is over
    assert svc._may_thread(now) and svc._may_thread(now)


def test_handler_errors_answer_451_not_500(serve, monkeypatch) -> None:
    r = serve()

    def boom(addr: Any) -> bool:
        raise RuntimeError("bug in address check")

    monkeypatch.setattr(r.service.config, "is_gateway_address", boom)
    with smtplib.SMTP("127.0.0.1", r.port("smtp"), timeout=10) as s:
        s.ehlo()
        s.mail("alice@customer.example")
        code, msg = s.rcpt("support@example.com")
        assert (code, msg[:5]) == (451, b"4.3.0")


def test_client_dropping_mid_data_stores_nothing(serve) -> None:
    r = serve()
    c = Raw(r.port("smtp"))
    c.cmd(b"EHLO client.example\r\n")
    c.cmd(b"MAIL FROM:<alice@customer.example>\r\n")
    c.cmd(b"RCPT TO:<support@example.com>\r\n")
    c.cmd(b"DATA\r\n")
    c.sock.sendall(b"Subject: half\r\n\r\n" + b"line\r\n" * 5000)
    c.sock.close()
    time.sleep(0.5)
    assert r.mails() == [] and not r.service.registry.live


# --- sessions: cap, timeouts, TLS --------------------------------------------------------------------------
def test_session_cap(serve) -> None:
    r = serve(limits={"max_sessions": 2})
    a, b = Raw(r.port("smtp")), Raw(r.port("lmtp"))
    assert a.greeting.startswith(b"220") and b.greeting.startswith(b"220")
    c = Raw(r.port("smtp"))
    assert c.greeting.startswith(b"421 4.7.0")
    a.close()
    time.sleep(0.3)
    d = Raw(r.port("smtp"))
    assert d.greeting.startswith(b"220")
    for x in (b, c, d):
        x.close()


def test_idle_and_slow_clients_are_cut_off(serve) -> None:
    r = serve(limits={"session_idle_seconds": 1, "session_max_seconds": 3})
    idle = Raw(r.port("smtp"))
    t = time.monotonic()
    assert idle.line().startswith(b"421 4.4.2")  # said, as Postfix does, then closed
    with pytest.raises(ConnectionError):
        idle.line()
    assert 0.8 < time.monotonic() - t < 3
    # a client that trickles bytes inside DATA is not idle, but the session deadline ends it
    slow = Raw(r.port("smtp"))
    slow.cmd(b"EHLO client.example\r\n")
    slow.cmd(b"MAIL FROM:<alice@customer.example>\r\n")
    slow.cmd(b"RCPT TO:<support@example.com>\r\n")
    slow.cmd(b"DATA\r\n")
    t = time.monotonic()
    with pytest.raises(OSError):
        for _ in range(100):
            slow.sock.sendall(b"x")
            time.sleep(0.2)
    assert 1.5 < time.monotonic() - t < 6
    assert r.mails() == []


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=gw.test",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")], check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


def test_starttls_and_require_starttls(serve, cert) -> None:
    crt, key = cert
    r = serve(listen=[{"protocol": "smtp", "port": 0, "tls_cert": str(crt), "tls_key": str(key),
                       "require_starttls": True}])
    ctx = ssl.create_default_context(cafile=str(crt))
    ctx.check_hostname = False
    with smtplib.SMTP("127.0.0.1", r.port("smtp"), timeout=10) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        assert s.mail("alice@customer.example")[0] == 530  # not before STARTTLS
        s.starttls(context=ctx)
        s.ehlo()
        s.mail("alice@customer.example")
        s.rcpt("support@example.com")
        assert s.data(make_mail())[0] == 250
    r.wait_processed(1)


def test_listener_config_errors(tmp_path, sqlite_url) -> None:
    from gateway.config import ConfigError
    from gateway.smtp import listener_specs

    cfg = config_for(tmp_path, sqlite_url, listen=[{"protocol": "smtp", "require_starttls": True}])
    with pytest.raises(ConfigError, match=r"listen\[0\].require_starttls"):
        listener_specs(cfg)
    cfg = config_for(tmp_path, sqlite_url, listen=[])
    assert [(s["protocol"], s["host"], s["port"]) for s in listener_specs(cfg)] == [
        ("smtp", "127.0.0.1", 2525), ("lmtp", "127.0.0.1", 2424)]
    cfg = config_for(tmp_path, sqlite_url, listen=[{"protocol": "lmtp"}])
    assert listener_specs(cfg)[0]["port"] == 2424
    cfg = config_for(tmp_path, sqlite_url, listen=[{"protocol": "lmtp", "port": 0}])
    assert listener_specs(cfg)[0]["port"] == 0  # any free port, as everywhere else


def test_routes_by_recipient(tmp_path, sqlite_url) -> None:
    cfg = config_for(tmp_path, sqlite_url, routes=[
        {"address": "billing@example.com", "group": "finance", "priority": "high", "type": "service_request"},
        {"address": "support@example.com"}])
    assert route_for(cfg, ["Billing+inv-7@example.com"]) == {
        "group": "finance", "priority": "high", "type": "service_request"}
    assert route_for(cfg, ["support@example.com"]) == {"priority": "medium", "type": "incident"}
    assert route_for(cfg, ["other@example.com"]) == {}


def test_stop_closes_idle_sessions_with_421(serve) -> None:
    r = serve()
    c = Raw(r.port("smtp"))
    c.cmd(b"EHLO client.example\r\n")
    t = time.monotonic()
    r.stop()
    assert time.monotonic() - t < 5
    assert c.line().startswith(b"421 4.3.2")
    assert r.code == 0
