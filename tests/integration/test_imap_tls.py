"""IMAP over TLS and STARTTLS against a real Dovecot with `ssl = required` and a test CA made for the run
(tests/dovecot.py: dovecot_tls), and what a certificate that is not accepted does: one clear error, shown by
the poller's state, /healthz and `imap poll` (exit 78), never retried as "try again later"."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
from mails import make_mail
from sqlalchemy import func, select

from gateway.imap import ImapPoller, TlsSetupError
from gateway.models import Ticket

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def app(tmp_path, sqlite_url, clock):
    from conftest import make_config

    from gateway.app import build_app

    a = build_app(make_config(tmp_path, sqlite_url), clock=clock)
    yield a
    a.close()


def tickets(app) -> int:
    with app.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Ticket)) or 0)


def tls_config(acct, security: str, **over):
    server = acct.server
    cfg = acct.account_config("secure", security=security, ca_file=str(server.ca_file),
                              port=server.tls_port if security == "tls" else server.port)
    cfg.update(over)
    return cfg


@pytest.mark.parametrize("security", ["tls", "starttls"])
def test_tls_and_starttls_with_the_test_ca(app, dovecot_tls, security):
    dovecot_tls.append_many([make_mail(subject=f"secure {i}", sender=f"s{i}@customer.example") for i in range(3)])
    p = ImapPoller(app, tls_config(dovecot_tls, security))
    r = p.poll_once()
    assert r.outcomes == {"ticket": 3} and r.moved == 3
    assert tickets(app) == 3 and dovecot_tls.count("INBOX") == 0
    log = dovecot_tls.server.log
    assert f"user=<{dovecot_tls.user}>, method=PLAIN" in log and "TLS" in log


BAD = {
    "system CAs only": {"ca_file": ""},
    "another CA": {"ca_file": "OTHER"},
    "wrong host name": {"host": "localhost"},  # the certificate names 127.0.0.1 only
}


@pytest.mark.parametrize("security", ["tls", "starttls"])
@pytest.mark.parametrize("bad", list(BAD), ids=list(BAD))
def test_certificate_not_accepted_is_one_clear_error_not_retried(app, dovecot_tls, security, bad, caplog):
    over = {k: (str(dovecot_tls.server.other_ca_file) if v == "OTHER" else v) for k, v in BAD[bad].items()}
    dovecot_tls.append(make_mail(subject="waits", sender="w@customer.example"))
    cfg = tls_config(dovecot_tls, security, **over)
    with pytest.raises(TlsSetupError, match="certificate of .* was not accepted"):
        ImapPoller(app, cfg).poll_once()
    caplog.set_level(logging.DEBUG, logger="gateway")
    p = ImapPoller(app, cfg)
    stop = threading.Event()
    t = threading.Thread(target=p.run, args=(stop,), daemon=True)
    t.start()
    t.join(15)  # the poller gives up by itself: no backoff loop
    try:
        assert not t.is_alive() and p.state == "failed", p.state
    finally:
        stop.set()
        t.join(5)
    assert "was not accepted" in p.error and ("ca_file" in p.error)
    st = app.observe.snapshot()["imap secure"]
    assert not st.ok and "not retried" in st.detail and st.extra["role"] == "failed"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "was not accepted" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    assert not any("reconnecting" in r.getMessage() for r in caplog.records)
    assert dovecot_tls.count("INBOX") == 1 and tickets(app) == 0
    assert p.lease.generation is None  # released: an instance configured differently may take the mailbox


def test_unreadable_ca_file_is_a_setup_error(app, dovecot_tls, tmp_path):
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for ca in (tmp_path / "missing.pem", tmp_path / "junk.pem"):
        with pytest.raises(TlsSetupError, match="ca_file .*: cannot load CA certificates"):
            ImapPoller(app, tls_config(dovecot_tls, "tls", ca_file=str(ca))).poll_once()


def test_cli_imap_poll_certificate_failure_is_exit_78(tmp_path, sqlite_url, dovecot_tls):
    from conftest import run_cli, write_config

    good = tls_config(dovecot_tls, "starttls")
    bad = {**tls_config(dovecot_tls, "tls", ca_file=str(dovecot_tls.server.other_ca_file)), "name": "bad"}
    extra = "".join("\n[[imap]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in acct.items())
                    for acct in (good, bad))
    dovecot_tls.append(make_mail(subject="via cli over starttls", sender="cli@customer.example"))
    out = run_cli("imap", "poll", config=write_config(tmp_path, sqlite_url, extra))
    assert out.returncode == 78, out
    assert b"secure: 1 fetched (1 ticket)" in out.stdout, out.stdout
    assert b"imap bad: TLS: the certificate of 127.0.0.1:" in out.stderr and b"was not accepted" in out.stderr
    assert b"try again later" not in out.stderr


def test_cli_imap_status_names_the_certificate_failure(tmp_path, sqlite_url, dovecot_tls):
    from conftest import run_cli, write_config

    good = tls_config(dovecot_tls, "tls")
    bad = {**tls_config(dovecot_tls, "starttls", ca_file=""), "name": "bad"}
    extra = "".join("\n[[imap]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in acct.items())
                    for acct in (good, bad))
    cfg = write_config(tmp_path, sqlite_url, extra)
    dovecot_tls.append_many([make_mail(subject=f"waiting {i}", sender=f"w{i}@customer.example") for i in range(2)])
    out = run_cli("imap", "status", config=cfg)
    assert out.returncode == 78, out
    lines = out.stdout.decode().splitlines()
    assert lines[0].startswith(f"secure: {dovecot_tls.user}@127.0.0.1:{dovecot_tls.server.tls_port} (tls); "
                               "lease never taken; login ok, 2 message(s) waiting in INBOX"), lines
    assert "bad: " in lines[1] and "TLS: the certificate of 127.0.0.1:" in lines[1], lines
    assert "the system's CAs" in lines[1]
    out = run_cli("imap", "status", "--account", "secure", "--json", config=cfg)
    assert out.returncode == 0, out
    d = json.loads(out.stdout)
    assert (d["login"], d["waiting"], d["holder"]) == ("ok", 2, "")
    assert dovecot_tls.count("INBOX") == 2 and dovecot_tls.count("Processed") == 0  # status writes nothing


def test_check_config_checks_the_ca_file(tmp_path, sqlite_url, dovecot_tls):
    from conftest import run_cli, write_config

    acct = tls_config(dovecot_tls, "tls", ca_file=str(tmp_path / "nope.pem"))
    extra = "\n[[imap]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in acct.items())
    out = run_cli("check-config", config=write_config(tmp_path, sqlite_url, extra))
    assert out.returncode != 0 and b"imap[0].ca_file" in out.stdout + out.stderr, out
    acct["ca_file"] = str(dovecot_tls.server.ca_file)
    extra = "\n[[imap]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in acct.items())
    out = run_cli("check-config", config=write_config(tmp_path, sqlite_url, extra))
    assert out.returncode == 0, out
    assert f"ca_file {dovecot_tls.server.ca_file}".encode() in out.stdout, out.stdout


def test_healthz_names_the_certificate_failure(tmp_path, sqlite_url, dovecot_tls):
    from tests.integration.test_http_api import gateways

    acct = tls_config(dovecot_tls, "tls", ca_file="")
    with gateways(tmp_path, sqlite_url) as start:
        g = start(imap=[acct])
        with g.client(None) as c:
            deadline = time.monotonic() + 10  # the poller's first connection fails, then the state says why
            r = c.get("/healthz")
            while r.status_code != 503 and time.monotonic() < deadline:
                time.sleep(0.1)
                r = c.get("/healthz")
    assert r.status_code == 503, r.text
    reasons = r.json()["reasons"]
    assert any("IMAP account secure" in x and "was not accepted" in x and "not retried" in x for x in reasons), reasons
    assert r.json()["checks"]["imap"][0]["role"] == "failed"
