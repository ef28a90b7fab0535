"""`serve` drains the delivery spool: it holds the drain lock while it runs, so a `deliver` only rings its
doorbell (no `spool drain` is started), and the mail becomes a ticket at once; a mail spooled without a ring
is found by the periodic poll."""

from __future__ import annotations

import time

from conftest import run_cli, write_config
from mails import make_mail
from servehelp import Running, config_for

import gateway.spooldrain
from gateway import spool


def _wait(r: Running, n: int, timeout: float = 30) -> list:
    end = time.monotonic() + timeout
    while True:
        mails = [m for m in r.mails() if m.outcome != "received"]
        if len(mails) >= n or time.monotonic() > end:
            return mails
        time.sleep(0.05)


def test_serve_drains_what_deliver_spools_on_the_doorbell(tmp_path, sqlite_url, monkeypatch) -> None:
    monkeypatch.setattr(gateway.spooldrain, "POLL_SECONDS", 600.0)  # only the doorbell can wake it in time
    cfg = write_config(tmp_path, sqlite_url)
    r = Running(config_for(tmp_path, sqlite_url))
    try:
        where = spool.spool_dir(tmp_path / "var")
        deadline = time.monotonic() + 10
        while not spool.DrainLock(where).held_elsewhere():  # taken by the service's first look
            assert time.monotonic() < deadline, "serve does not hold the drain lock"
            time.sleep(0.05)
        for i in range(3):
            p = run_cli("deliver", "--sender", "alice@customer.example", "--recipient", "support@example.com",
                        config=cfg, input=make_mail(subject=f"piped {i}", body="It burns."))
            assert p.returncode == 0, p.stderr
        mails = _wait(r, 3)
        assert sorted((m.subject, m.source, m.outcome) for m in mails) == [
            (f"piped {i}", "pipe", "ticket") for i in range(3)]
        assert r.service.spool_drainer.drained == 3  # the service drained them, no `spool drain` did
        assert spool.pending(where, 10) == []
    finally:
        r.stop()
    assert not spool.DrainLock(where).held_elsewhere()  # let go at the end: deliver starts a drainer again
    assert not (where / spool.DOORBELL).exists()


def test_serve_polls_the_spool_too(tmp_path, sqlite_url, monkeypatch) -> None:
    """A mail spooled before the service started, and one spooled without a ring, become tickets."""
    monkeypatch.setattr(gateway.spooldrain, "POLL_SECONDS", 0.3)
    where = spool.spool_dir(tmp_path / "var")
    spool.write(where, make_mail(subject="before start"), {"mail_from": "a@customer.example",
                                                           "rcpt_tos": ["support@example.com"]})
    r = Running(config_for(tmp_path, sqlite_url))
    try:
        assert [m.subject for m in _wait(r, 1)] == ["before start"]
        spool.write(where, make_mail(subject="no ring", sender="B <b@customer.example>"),
                    {"mail_from": "b@customer.example", "rcpt_tos": ["support@example.com"]})
        mails = _wait(r, 2)
        assert sorted((m.subject, m.outcome) for m in mails) == [("before start", "ticket"), ("no ring", "ticket")]
        assert spool.pending(where, 10) == []
    finally:
        r.stop()
