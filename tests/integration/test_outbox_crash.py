"""Outbox delivery marks each mail sent as soon as the relay accepted it (issue 14.3): a sender killed again and
again in the middle of a round re-sends at most the few mails in flight at each crash, once, never the same
mail again and again. A real SMTP sink on loopback announcing PIPELINING as Postfix does (the mails go out
pipelined, gateway.outbound.pipelining), `outbox flush` as a subprocess, SIGKILL."""

from __future__ import annotations

import email
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from conftest import run_cli, write_config
from sqlalchemy import create_engine, select

from gateway.models import OutboxMail
from gateway.outbound.sender import Recorder
from gateway.outbound.sink import Sink

WATCHERS = 299
KILLS = 4


def comment_to_watchers(cfg_path: Path, watchers: int) -> None:
    from gateway.app import build_app
    from gateway.config import load
    from gateway.migrate import upgrade
    from gateway.tickets import Directory, Tickets

    app = build_app(load(str(cfg_path)))
    try:
        upgrade(app.engine)
        with app.sessions() as s, s.begin():
            d = Directory(s, app.clock)
            t = Tickets(s, clock=app.clock, listeners=[])
            ticket = t.create(subject="Printer on fire", reporter=d.add_contact("rita@customer.example"))
            for i in range(watchers):
                t.add_watcher(ticket, d.add_contact(f"w{i:03d}@customer.example"), vouched="added by staff")
            staff = d.add_contact("sam@example.com", name="Sam", staff=True)
        with app.sessions() as s, s.begin():
            t = Tickets(s, clock=app.clock, listeners=app.listeners)
            ticket = t.get(1)
            assert ticket is not None
            t.add_comment(ticket, author=staff, author_email=staff.email, body="On it.\n", source="cli")
    finally:
        app.close()


def test_killed_sender_resends_only_what_was_in_flight(tmp_path, sqlite_url):
    with Sink(pipelining=True) as sink:
        cfg = write_config(tmp_path, sqlite_url, extra=f'''
[outbound]
relay_host = "127.0.0.1"
relay_port = {sink.port}
relay_security = "none"
lease_seconds = 1
batch_size = 1000
''')
        comment_to_watchers(cfg, WATCHERS)
        engine = create_engine(sqlite_url)
        with engine.connect() as conn:
            ids = list(conn.execute(select(OutboxMail.message_id).where(OutboxMail.status == "queued")).scalars())
        assert len(ids) == WATCHERS + 1
        env = {k: v for k, v in os.environ.items() if k != "TICKET_GATEWAY_CONFIG"}
        extras_bound = 2 * Recorder.MAX_UNRECORDED + 1  # queued + being committed, at the moment of the kill
        killed = 0
        for _ in range(KILLS):
            before = len(sink.received)
            proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(cfg), "outbox", "flush"],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            # past the mails a previous crash left unrecorded (sent first again): kill in the middle of new ones
            deadline = time.monotonic() + 60
            while len(sink.received) < before + 2 * extras_bound + 6 and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.002)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            proc.wait()
            time.sleep(1.1)  # the dead sender's lease expires
        assert killed == KILLS, "the sender finished before it could be killed every time"
        done = run_cli("outbox", "flush", config=cfg)
        assert done.returncode == 0, done.stderr.decode()

        copies = Counter(str(email.message_from_bytes(r.data)["Message-ID"]).strip("<>") for r in sink.received)
        assert set(copies) == set(ids)  # every notification arrived
        extra = sum(copies.values()) - len(ids)
        assert max(copies.values()) <= 2, copies.most_common(5)  # never the same mail again and again
        assert extra <= KILLS * extras_bound, extra
        with engine.connect() as conn:
            assert set(conn.execute(select(OutboxMail.status)).scalars()) == {"sent"}
        engine.dispose()
