"""limits.mail_cpu_seconds: the CPU work of preparing a mail runs in a worker process that is killed when one
mail goes over its budget; that mail is quarantined 'over budget', the others go on (SMTP and `ingest`).

The expensive mail is a real one: 2.5 MB of HTML in 30,000 paragraphs takes about a second of CPU to turn into
text and to sanitise; the budget is set far below that (and far above what a small mail takes)."""

from __future__ import annotations

import json
import smtplib
import time
from typing import Any

import pytest
from conftest import write_config
from mails import make_mail
from servehelp import Running, config_for

from gateway.cli import main
from gateway.models import InboundMail

BUDGET = 0.2


def slow_mail(n: int = 30000) -> bytes:
    html = "<html><body>" + "".join(f"<p>Paragraph {i} with <b>bold</b> and <a href='https://x.example/{i}'>a "
                                    f"link</a></p>\n" for i in range(n)) + "</body></html>"
    return ("From: Heavy <heavy@customer.example>\r\nTo: support@example.com\r\nSubject: heavy html\r\n"
            "Message-ID: <heavy@customer.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/html; charset=utf-8\r\n\r\n" + html).encode()


def test_ingest_quarantines_a_mail_over_its_cpu_budget_and_goes_on(tmp_path, db_url, capsys) -> None:
    mails = tmp_path / "mails"
    mails.mkdir()
    (mails / "1.eml").write_bytes(make_mail(subject="before", sender="A <a@customer.example>"))
    (mails / "2.eml").write_bytes(slow_mail())
    (mails / "3.eml").write_bytes(make_mail(subject="after", sender="B <b@customer.example>"))
    cfg = write_config(tmp_path, db_url, extra=f"\n[limits]\nmail_cpu_seconds = {BUDGET}\n")
    t = time.monotonic()
    assert main(["--config", str(cfg), "ingest", "--json", str(mails)]) == 0
    elapsed = time.monotonic() - t
    out = {d["source"].rsplit("/", 1)[-1]: d for d in map(json.loads, capsys.readouterr().out.splitlines())}
    assert out["2.eml"]["outcome"] == "quarantined" and out["2.eml"]["reason"] == "over budget", out["2.eml"]
    assert any("limits.mail_cpu_seconds" in line for line in out["2.eml"]["trace"])
    assert out["1.eml"]["outcome"] == out["3.eml"]["outcome"] == "ticket"
    assert [out["1.eml"]["ticket"], out["3.eml"]["ticket"]] == [1, 2]
    assert elapsed < 30
    # the same mail within a budget that allows it is a ticket: the budget is what stopped it
    cfg.write_text(cfg.read_text().replace(f"mail_cpu_seconds = {BUDGET}", "mail_cpu_seconds = 60"))
    (mails / "2.eml").write_bytes(slow_mail().replace(b"<heavy@", b"<heavy2@"))
    (mails / "1.eml").unlink()
    (mails / "3.eml").unlink()
    assert main(["--config", str(cfg), "ingest", "--json", str(mails / "2.eml")]) == 0
    (again,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert again["outcome"] == "ticket", again


def test_smtp_mail_over_budget_is_quarantined_and_others_become_tickets(tmp_path, db_url) -> None:
    r = Running(config_for(tmp_path, db_url, limits={"mail_cpu_seconds": BUDGET}))
    try:
        port = r.port("smtp")
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            for raw, sender in ((make_mail(subject="first", sender="A <a@customer.example>"), "a@customer.example"),
                                (slow_mail(), "heavy@customer.example"),
                                (make_mail(subject="second", sender="B <b@customer.example>"), "b@customer.example")):
                s.sendmail(sender, ["support@example.com"], raw)
        mails = r.wait_processed(3, timeout=60)
        got: dict[str, Any] = {m.subject: (m.outcome, m.reason) for m in mails}
        assert got == {"first": ("ticket", None), "heavy html": ("quarantined", "over budget"),
                       "second": ("ticket", None)}
        assert r.service.ahead.worker.killed == 1
    finally:
        r.stop()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_the_budget_must_be_positive(tmp_path, value) -> None:
    from gateway.config import ConfigError, load

    p = tmp_path / "c.toml"
    p.write_text(f"[limits]\nmail_cpu_seconds = {value}\n")
    with pytest.raises(ConfigError, match="mail_cpu_seconds"):
        load(str(p))


CRASH = """
import os, sys
import gateway.handlers.thread
from gateway.app import build_app
from gateway.config import load
from gateway.engine import Engine
gateway.handlers.thread.handle = lambda ctx: os._exit(70)  # the process ends while it threads the mail
app = build_app(load(sys.argv[1]))
Engine(app).thread([int(sys.argv[2])])  # as serve threads stored mail
"""


def test_a_mail_that_ends_the_process_is_quarantined_after_one_more_try(tmp_path, db_url) -> None:
    """Each try is counted on the stored mail before it runs: a mail that took the process down MAX_TRIES times
    is quarantined at the next look, without running again (not reprocessed at every restart)."""
    import subprocess
    import sys

    from gateway.app import build_app
    from gateway.config import load
    from gateway.engine import Engine
    from gateway.envelope import Envelope

    cfg = write_config(tmp_path, db_url)
    assert main(["--config", str(cfg), "db", "upgrade"]) == 0
    app = build_app(load(str(cfg)))
    try:
        intake = app.intake()
        env = Envelope(mail_from="a@customer.example", rcpt_tos=("support@example.com",), source="smtp")
        mail_id = intake.store(make_mail(subject="deadly"), env)
        other = intake.store(make_mail(subject="fine", sender="B <b@customer.example>"), env)
        from gateway.engine import MAX_TRIES

        for tries in range(1, MAX_TRIES + 1):
            p = subprocess.run([sys.executable, "-c", CRASH, str(cfg), str(mail_id)], capture_output=True,
                               timeout=60)
            assert p.returncode == 70, (tries, p.stderr[-3000:])
            assert intake.pending() == [mail_id, other]
            with app.sessions() as s:
                assert s.get(InboundMail, mail_id).attempts == tries
        a, b = Engine(app, intake).thread([mail_id, other])
        assert (a.outcome, a.reason) == ("quarantined", f"over budget: no outcome after {MAX_TRIES} tries")
        assert b.outcome == "ticket"
        assert intake.pending() == []
    finally:
        app.close()
