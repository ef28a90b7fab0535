"""The MTA pipe, `ticket-gateway deliver`: durable in the spool before exit 0, drained into tickets without an
operator (a detached drainer when no service runs), sysexits as an MTA expects. The CLI runs as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import run_cli, write_config
from mails import make_mail

from gateway import spool


def _cfg(tmp_path: Path, db_url: str, extra: str = "") -> Path:
    return write_config(tmp_path, db_url, extra)


def _mails(cfg: Path) -> list[dict]:
    r = run_cli("mail", "list", "--json", config=cfg)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _wait_for(cfg: Path, n: int, timeout: float = 60) -> list[dict]:
    end = time.monotonic() + timeout
    while True:
        mails = _mails(cfg)
        if len(mails) >= n or time.monotonic() > end:
            return mails
        time.sleep(0.3)


def _deliver(cfg: Path, raw: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run_cli("deliver", "--sender", "alice@customer.example", "--recipient", "support@example.com", *args,
                   config=cfg, input=raw)


def test_deliver_spools_durably_and_a_drainer_makes_the_ticket(tmp_path, sqlite_url) -> None:
    cfg = _cfg(tmp_path, sqlite_url)
    r = _deliver(cfg, make_mail(subject="Printer on fire", body="It burns."))
    assert r.returncode == 0, r.stderr
    mails = _wait_for(cfg, 1)
    assert [(m["outcome"], m["source"]) for m in mails] == [("ticket", "pipe")]
    assert spool.pending(tmp_path / "var" / "spool", 10) == []  # drained files are removed


def test_exit_0_means_durable_even_when_nobody_drains(tmp_path, sqlite_url) -> None:
    """A running service holds the drain lock: deliver spools and exits 0 without a drainer. Whatever happens
    to the service then (killed before it drained), the mail is in the spool, byte for byte, and the next
    drain makes it a ticket."""
    cfg = _cfg(tmp_path, sqlite_url)
    where = tmp_path / "var" / "spool"
    held = spool.DrainLock(where)
    assert held.acquire()
    raw = make_mail(subject="Held", body="x" * 5000)
    try:
        r = _deliver(cfg, raw)
        assert r.returncode == 0, r.stderr
        files = spool.pending(where, 10)
        assert len(files) == 1
        got, env = spool.read(files[0])
        assert got == raw
        assert env == {"mail_from": "alice@customer.example", "rcpt_tos": ["support@example.com"], "source": "pipe",
                       "client_ip": None, "client_helo": None}
        r = run_cli("spool", "drain", config=cfg)  # the lock is held: another drainer's job
        assert r.returncode == 0 and spool.pending(where, 10) == files
    finally:
        held.release()  # "the service died"
    assert run_cli("spool", "drain", config=cfg).returncode == 0
    assert [m["outcome"] for m in _mails(cfg)] == ["ticket"]
    assert spool.pending(where, 10) == []


def test_a_drain_that_died_before_removing_its_files_makes_no_second_ticket(tmp_path, sqlite_url) -> None:
    cfg = _cfg(tmp_path, sqlite_url)
    where = tmp_path / "var" / "spool"
    held = spool.DrainLock(where)
    assert held.acquire()
    try:
        for i in range(3):
            assert _deliver(cfg, make_mail(subject=f"Mail {i}", message_id=f"<m{i}@customer.example>")).returncode == 0
    finally:
        held.release()
    saved = tmp_path / "saved"
    shutil.copytree(where, saved)
    assert run_cli("spool", "drain", config=cfg).returncode == 0
    for f in saved.glob("*.mail"):  # as if the drainer was killed after its commit, before the unlink
        shutil.copy(f, where / f.name)
    assert run_cli("spool", "drain", config=cfg).returncode == 0
    outcomes = sorted(m["outcome"] for m in _mails(cfg))
    assert outcomes == ["duplicate"] * 3 + ["ticket"] * 3
    r = run_cli("tickets", "list", "--json", config=cfg)
    assert len(json.loads(r.stdout)) == 3


def test_many_concurrent_deliveries_become_one_ticket_each(tmp_path, sqlite_url) -> None:
    cfg = _cfg(tmp_path, sqlite_url)
    raws = [make_mail(subject=f"Concurrent {i}", message_id=f"<c{i}@customer.example>") for i in range(16)]
    with ThreadPoolExecutor(8) as ex:
        codes = list(ex.map(lambda raw: _deliver(cfg, raw).returncode, raws))
    assert codes == [0] * 16
    mails = _wait_for(cfg, 16)
    assert sorted(m["outcome"] for m in mails) == ["ticket"] * 16
    time.sleep(1)
    assert len(_mails(cfg)) == 16  # and nothing twice


def test_sysexits(tmp_path, sqlite_url) -> None:
    cfg = _cfg(tmp_path, sqlite_url, '\n[limits]\nmax_message_size = 2000\n')
    where = tmp_path / "var" / "spool"
    r = run_cli("deliver", "--recipient", "stranger@elsewhere.example", config=cfg, input=make_mail())
    assert r.returncode == 67 and b"not a gateway address" in r.stderr  # EX_NOUSER, as LMTP's 550
    r = run_cli("deliver", "--recipient", "support+abc@example.com", config=cfg, input=make_mail(body="x" * 3000))
    assert r.returncode == 65 and b"too large" in r.stderr  # EX_DATAERR, as SMTP's 552
    assert spool.pending(where, 10) == []
    r = run_cli("deliver", "--bogus", config=cfg, input=b"")
    assert r.returncode == 64
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway]\nnot_a_key = 1\n")
    assert run_cli("deliver", config=bad, input=make_mail()).returncode == 78


def test_spool_that_cannot_be_written_is_try_again_later(tmp_path, sqlite_url) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data directory should be")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[gateway]\ndata_dir = "{blocker / "var"}"\naddresses = ["support@example.com"]\n'
                   f'[database]\nurl = "{sqlite_url}"\n')
    r = run_cli("deliver", "--recipient", "support@example.com", config=cfg, input=make_mail())
    assert r.returncode == 75, r.stderr
    assert b"try again later" in r.stderr


def test_deliver_imports_no_database_layer(tmp_path, sqlite_url) -> None:
    """What keeps a pipe process fast: it never imports SQLAlchemy, the app or the pipeline."""
    cfg = _cfg(tmp_path, sqlite_url)
    probe = ("import sys, pathlib\n"
             "import gateway.spool\n"
             f"gateway.spool.DrainLock(gateway.spool.spool_dir(pathlib.Path({str(tmp_path / 'var')!r}))).acquire()"
             "  # as a running serve\n"
             "import gateway.cli\n"
             "from gateway.deliver import main\n"
             f"code = main(['--config', {str(cfg)!r}, '--recipient', 'support@example.com'])\n"
             "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic', 'jinja2') "
             "or m in ('gateway.app', 'gateway.intake', 'gateway.pipeline', 'gateway.models'))\n"
             "print(code, heavy)\n")
    r = subprocess.run([sys.executable, "-c", probe], input=make_mail(), capture_output=True,
                       env={k: v for k, v in os.environ.items() if k != "TICKET_GATEWAY_CONFIG"}, timeout=60)
    assert r.stdout.decode().strip() == "0 []", r.stderr


@pytest.mark.parametrize("garbage", [b"", b"\x00\xff not a mail at all"])
def test_anything_spooled_ends_somewhere_visible(tmp_path, sqlite_url, garbage) -> None:
    cfg = _cfg(tmp_path, sqlite_url)
    assert _deliver(cfg, garbage).returncode == 0
    mails = _wait_for(cfg, 1)
    assert len(mails) == 1 and mails[0]["outcome"] in ("quarantined", "rejected", "ticket")


def test_a_nearly_full_data_directory_is_try_again_later(tmp_path, sqlite_url) -> None:
    """Free space below limits.free_space_factor x limits.max_message_size (here: a limit larger than any disk
    of this machine): 75, nothing spooled, as SMTP's 452."""
    cfg = _cfg(tmp_path, sqlite_url, '\n[limits]\nmax_message_size = 1000000000000000\n')
    r = _deliver(cfg, make_mail())
    assert r.returncode == 75 and b"free space" in r.stderr
    assert spool.pending(tmp_path / "var" / "spool", 10) == []


def test_client_address_and_helo_reach_the_stored_mail(tmp_path, sqlite_url) -> None:
    cfg = _cfg(tmp_path, sqlite_url)
    r = _deliver(cfg, make_mail(), "--client-ip", "192.0.2.7", "--helo", "mx.customer.example")
    assert r.returncode == 0, r.stderr
    mail = _wait_for(cfg, 1)[0]
    shown = run_cli("mail", "show", str(mail["id"]), "--json", config=cfg)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert (data.get("client_ip"), data.get("client_helo")) == ("192.0.2.7", "mx.customer.example"), data
