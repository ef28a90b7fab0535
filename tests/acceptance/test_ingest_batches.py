"""`ingest` of files in batches (one write transaction per batch): killed mid-run, run again, nothing lost or
doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import run_cli, write_config
from mails import make_mail, message_id_of
from sqlalchemy import create_engine, func, select

from gateway.models import InboundMail


def test_ingest_killed_mid_run_and_run_again_yields_each_mail_exactly_once(tmp_path, db_url):
    cfg = write_config(tmp_path, db_url)
    assert run_cli("db", "upgrade", config=cfg).returncode == 0
    folder = tmp_path / "mails"
    folder.mkdir()
    n = 150
    for i in range(n):
        if i % 3 == 2:  # a reply to the mail before it (its ticket may be in an earlier batch or this one)
            prev = (folder / f"{i - 1:04d}.eml").read_bytes()
            raw = make_mail(subject=f"Re: case {i - 1}", in_reply_to=message_id_of(prev), body=f"reply {i}\n",
                            sender=f"Customer {i - 1} <c{i - 1}@customer{(i - 1) % 7}.example>")
        else:
            raw = make_mail(subject=f"case {i}", sender=f"Customer {i} <c{i}@customer{i % 7}.example>",
                            body=f"mail {i}\n")
        (folder / f"{i:04d}.eml").write_bytes(raw)

    env = dict(os.environ)
    env.pop("TICKET_GATEWAY_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(cfg), "ingest", "--batch", "4",
                             "-q", str(folder)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    engine = create_engine(db_url)
    try:
        deadline = time.monotonic() + 60
        committed = 0
        while committed < 8 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
            try:
                with engine.connect() as conn:
                    committed = conn.scalar(select(func.count()).select_from(InboundMail))
            except Exception:  # noqa: BLE001 -- the schema or the file may not be readable yet
                committed = 0
        assert proc.poll() is None, "the import finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with engine.connect() as conn:
            done = conn.execute(select(InboundMail.source_ref, InboundMail.outcome)).all()
        before = len(done)
        assert 8 <= before < n  # killed in the middle: some batches committed, the rest not
        # whole batches only, nothing half-written: the committed mails are the first sources, each with its
        # final outcome (a batch holds up to --batch mails, fewer when a second of work passed first: under
        # load its size is not always 4)
        assert sorted(Path(ref).name for ref, _ in done) == [f"{i:04d}.eml" for i in range(before)], done
        assert all(outcome in ("ticket", "comment") for _, outcome in done), done

        again = run_cli("ingest", "--json", str(folder), config=cfg)
        assert again.returncode == 0, again.stderr
        lines = [json.loads(x) for x in again.stdout.splitlines()]
        assert len(lines) == n
        assert sum(x["outcome"] == "duplicate" for x in lines) == before

        with engine.connect() as conn:
            rows = conn.execute(select(InboundMail.source_ref, InboundMail.outcome)).all()
        produced: dict[str, list[str]] = {}
        for ref, outcome in rows:
            produced.setdefault(ref, []).append(outcome)
        assert len(produced) == n
        for ref, outcomes in produced.items():
            made = [o for o in outcomes if o != "duplicate"]
            assert len(made) == 1 and made[0] in ("ticket", "comment"), (ref, outcomes)
        kinds = [made for outs in produced.values() for made in outs if made != "duplicate"]
        assert kinds.count("ticket") == 100 and kinds.count("comment") == 50
    finally:
        if proc.poll() is None:
            proc.kill()
        engine.dispose()
