"""The CLI as a subprocess on real mail: what an MTA pipe and an admin see."""

from __future__ import annotations

import json
import mailbox
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import run_cli, write_config
from mails import make_mail, message_id_of


@pytest.fixture
def cfg(tmp_path, db_url):
    return write_config(tmp_path, db_url)


def j(proc):
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def test_pipe_mode_ticket_reply_and_show(cfg):
    first = make_mail(body="Screen is black.\n")
    p = run_cli("ingest", config=cfg, input=first)
    assert p.returncode == 0, p.stderr
    assert b"ticket #1" in p.stdout
    reply = make_mail(subject="Re: [#1] Printer on fire", in_reply_to=message_id_of(first),
                      body="Fixed itself.\n\n-- \nAlice\n")
    assert run_cli("ingest", "-", config=cfg, input=reply).returncode == 0
    t = j(run_cli("tickets", "show", "1", "--json", config=cfg))
    for key in ("number", "subject", "status", "priority", "type", "reporter", "organisation", "assignee",
                "watchers", "tags", "description", "comments", "attachments", "created_at", "updated_at"):
        assert key in t
    assert t["description"] == "Screen is black."
    assert t["comments"][0]["body"] == "Fixed itself."
    assert set(t["comments"][0]) >= {"author", "body", "internal", "created_at", "attachments"}
    listed = j(run_cli("tickets", "list", "--json", config=cfg))
    assert [x["number"] for x in listed] == [1]
    text = run_cli("tickets", "show", "1", config=cfg)
    assert b"Screen is black." in text.stdout


def test_exit_75_when_the_store_is_unreachable(tmp_path):
    cfg = write_config(tmp_path, "postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    p = run_cli("ingest", config=cfg, input=make_mail())
    assert p.returncode == 75, p.stderr
    assert b"try again" in p.stderr or b"unavailable" in p.stderr


def test_usage_and_input_errors(cfg, tmp_path):
    assert run_cli("ingest", "--no-such-flag", config=cfg).returncode == 64
    assert run_cli("ingest", str(tmp_path / "missing.eml"), config=cfg).returncode == 66
    assert run_cli(config=cfg).returncode == 64


def test_maildir_and_mbox_import_and_dry_run(cfg, tmp_path):
    md = mailbox.Maildir(tmp_path / "Maildir", create=True)
    for i in range(3):
        md.add(make_mail(subject=f"maildir {i}"))
    mb = mailbox.mbox(tmp_path / "box.mbox", create=True)
    for i in range(2):
        mb.add(make_mail(subject=f"mbox {i}"))
    mb.flush()
    dry = run_cli("ingest", "--dry-run", str(tmp_path / "Maildir"), config=cfg)
    assert dry.returncode == 0 and dry.stdout.count(b"would be ticket") == 3
    assert j(run_cli("tickets", "list", "--json", config=cfg)) == []
    assert j(run_cli("mail", "list", "--json", config=cfg)) == []
    p = run_cli("ingest", str(tmp_path / "Maildir"), str(tmp_path / "box.mbox"), config=cfg)
    assert p.returncode == 0, p.stderr
    subjects = sorted(t["subject"] for t in j(run_cli("tickets", "list", "--json", config=cfg)))
    assert subjects == ["maildir 0", "maildir 1", "maildir 2", "mbox 0", "mbox 1"]
    sources = {m["source"] for m in j(run_cli("mail", "list", "--json", config=cfg))}
    assert sources == {"maildir", "mbox"}


def test_mail_list_show_and_replay_of_quarantined(cfg):
    p = run_cli("ingest", config=cfg, input=b"From: a@x.example, b@x.example\r\nSubject: hm\r\n\r\nbody")
    assert p.returncode == 0  # quarantined counts as stored
    q = j(run_cli("mail", "list", "--status", "quarantined", "--json", config=cfg))
    assert len(q) == 1 and "From names 2 authors" in q[0]["reason"]
    shown = run_cli("mail", "show", str(q[0]["id"]), config=cfg)
    assert b"trace:" in shown.stdout and b"outcome: quarantined" in shown.stdout
    replay = run_cli("mail", "replay", str(q[0]["id"]), config=cfg)
    assert replay.returncode == 0 and b"quarantined" in replay.stdout  # still bad: stays quarantined, not lost
    raw = run_cli("mail", "show", str(q[0]["id"]), "--raw", config=cfg)
    assert raw.stdout.startswith(b"From: a@x.example, b@x.example")


def test_users_orgs_and_staff_reply(cfg):
    assert run_cli("orgs", "add", "Customer Ltd", "--domain", "customer.example", config=cfg).returncode == 0
    assert run_cli("users", "add", "dana@example.com", "--name", "Dana", "--staff", config=cfg).returncode == 0
    users = j(run_cli("users", "list", "--json", config=cfg))
    assert users == [{"email": "dana@example.com", "name": "Dana", "role": "staff", "organisation": None,
                      "auto_registered": False, "undeliverable": False, "blocked": False, "blocked_reason": None}]
    run_cli("ingest", config=cfg, input=make_mail())
    run_cli("ingest", config=cfg, input=make_mail(sender="dana@example.com", subject="Re: [#1] x", body="On it."))
    t = j(run_cli("tickets", "show", "1", "--json", config=cfg))
    assert t["organisation"] == "Customer Ltd"
    assert t["comments"][0]["by_staff"] is True
    bad = run_cli("users", "add", "dana@x", "--organisation", "Nope", config=cfg)
    assert bad.returncode == 64 and b"Nope" in bad.stderr


def test_check_config_names_the_bad_key(tmp_path):
    good = write_config(tmp_path, "sqlite:///" + str(tmp_path / "x.db"))
    assert run_cli("check-config", config=good).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nadresses = ["support@example.com"]\n')
    p = run_cli("check-config", config=bad)
    assert p.returncode == 78 and b"gateway.adresses" in p.stderr
    bad.write_text('[gateway]\nunknown_senders = "maybe"\n')
    p = run_cli("check-config", config=bad)
    assert p.returncode == 78 and b"gateway.unknown_senders" in p.stderr
    p = run_cli("check-config", env={"TICKET_GATEWAY_CONFIG": str(bad)})
    assert p.returncode == 78


def test_db_upgrade_is_idempotent(tmp_path):
    cfg = write_config(tmp_path, "sqlite:///" + str(tmp_path / "fresh.db"))
    p1 = run_cli("db", "upgrade", config=cfg)
    p2 = run_cli("db", "upgrade", config=cfg)
    assert p1.returncode == 0 and b"empty ->" in p1.stdout
    assert p2.returncode == 0 and b"empty" not in p2.stdout


def test_ten_parallel_pipe_deliveries_of_one_mail_make_one_ticket(cfg):
    raw = make_mail()
    run_cli("db", "upgrade", config=cfg)
    with ThreadPoolExecutor(10) as ex:
        procs = list(ex.map(lambda _: run_cli("ingest", config=cfg, input=raw), range(10)))
    assert [p.returncode for p in procs] == [0] * 10, [p.stderr for p in procs if p.returncode]
    assert len(j(run_cli("tickets", "list", "--json", config=cfg))) == 1
    outcomes = sorted(m["outcome"] for m in j(run_cli("mail", "list", "--json", config=cfg)))
    assert outcomes == ["duplicate"] * 9 + ["ticket"]


def test_python_dash_m_and_console_script_agree(tmp_path):
    script = [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main(['--help']))"]
    assert subprocess.run(script, capture_output=True).returncode == 0
    assert run_cli("--help").returncode == 0


def test_ingest_upgrades_an_older_database(tmp_path):
    """A database left at the first schema revision is brought up to date by `ingest` itself."""
    from alembic import command

    from gateway.db import make_engine
    from gateway.migrate import _alembic_config, current_revisions, head_revisions

    url = "sqlite:///" + str(tmp_path / "old.db")
    engine = make_engine(url)
    cfg = _alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001_core")
    assert current_revisions(engine) == {"0001_core"}
    p = run_cli("ingest", config=write_config(tmp_path, url), input=make_mail())
    assert p.returncode == 0, p.stderr
    assert current_revisions(engine) == head_revisions()
    engine.dispose()


def test_ingest_a_whole_corpus_folder_as_a_subprocess(tmp_path, corpus):
    cfg = write_config(tmp_path, "sqlite:///" + str(tmp_path / "c.db"))
    p = run_cli("ingest", "--json", str(corpus / "redmine" / "mail_handler"), config=cfg)
    assert p.returncode == 0, p.stderr
    results = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(results) == len(list((corpus / "redmine" / "mail_handler").iterdir()))
    assert all(r["outcome"] in ("ticket", "comment", "ignored", "duplicate", "rejected", "quarantined")
               for r in results)
    assert not [r for r in results if (r["reason"] or "").startswith("internal error")]


def test_check_config_catches_a_template_with_an_unknown_variable(tmp_path):
    tdir = tmp_path / "tpl"
    tdir.mkdir()
    src = next(p for p in (Path(__file__).resolve().parents[2] / "templates").glob("*.txt.j2"))
    (tdir / src.name).write_text("Hello {{ no_such_variable_anywhere }}\n")
    cfg = write_config(tmp_path, "sqlite:///" + str(tmp_path / "t.db"),
                       extra=f'\n[notifications]\ntemplate_dir = "{tdir}"\n')
    p = run_cli("check-config", config=cfg)
    assert p.returncode == 78, (p.stdout, p.stderr)
    assert b"no_such_variable_anywhere" in p.stderr
