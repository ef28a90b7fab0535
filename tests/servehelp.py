"""The service in-process for tests that talk SMTP/LMTP to it from chosen loopback addresses."""

from __future__ import annotations

import asyncio
import smtplib
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from gateway.config import validate
from gateway.models import InboundMail, OutboxMail, Ticket
from gateway.service import Notifier, Service


def thread_prepared(app: Any, intake: Any, ids: list[int]) -> list[Any]:
    """Stored mails threaded as serve threads them: one batch (Engine.thread), prepared by a preparation worker
    started for it (the lookups of the batch made ahead, gateway.store.sql.prefetch)."""
    from gateway.engine import Engine, start_worker

    app.ahead = start_worker(app.config)
    try:
        return Engine(app, intake).thread(ids)
    finally:
        app.ahead.close()
        app.ahead = None


def config_for(tmp_path: Path, db_url: str, **sections: Any):
    data: dict[str, Any] = {
        "gateway": {"data_dir": str(tmp_path / "var"), "addresses": ["support@example.com"],
                    "unknown_senders": "register"},
        "database": {"url": db_url},
        "listen": [{"protocol": "smtp", "port": 0}, {"protocol": "lmtp", "port": 0}],
        "serve": {"hostname": "gw.test", "pending_sweep_seconds": 1},
        "http": {"listen": "127.0.0.1:0"},  # any free port: the default 8025 would collide with other runs
    }
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return validate(data, base_dir=tmp_path)


class Running:
    """The service in a background thread with its own loop."""

    def __init__(self, config) -> None:
        self.service = Service(config, notifier=Notifier({}), handle_signals=False)
        self.code: int | None = None
        self.thread = threading.Thread(target=lambda: setattr(self, "code", asyncio.run(self.service.run())),
                                       daemon=True)
        self.thread.start()
        if not self.service._started.wait(30):
            raise RuntimeError(f"service did not start (exit code {self.code})")

    def port(self, protocol: str) -> int:
        for li in self.service.listeners:
            if li.spec["protocol"] == protocol:
                return int(li.server.sockets[0].getsockname()[1])
        raise KeyError(protocol)

    def stop(self) -> None:
        self.service.stop_threadsafe()
        self.thread.join(40)

    @property
    def app(self):
        return self.service.app

    def mails(self) -> list[InboundMail]:
        with self.app.sessions() as s:
            return list(s.scalars(select(InboundMail).order_by(InboundMail.id)))

    def outbox(self) -> list[OutboxMail]:
        with self.app.sessions() as s:
            return list(s.scalars(select(OutboxMail).order_by(OutboxMail.id)))

    def tickets(self) -> list[Ticket]:
        with self.app.sessions() as s:
            ts = list(s.scalars(select(Ticket).order_by(Ticket.id)))
            for t in ts:
                _ = [w.contact.email for w in t.watchers], t.comments
            return ts

    def wait_processed(self, n: int, timeout: float = 30) -> list[InboundMail]:
        end = time.monotonic() + timeout
        while True:
            mails = self.mails()
            if len(mails) >= n and all(m.outcome != "received" for m in mails):
                return mails
            if time.monotonic() > end:
                raise AssertionError(f"not processed: {[(m.id, m.outcome) for m in mails]}")
            time.sleep(0.05)


def send(port: int, raw: bytes, mail_from: str, *, source: str = "127.0.0.1", lmtp: bool = False,
         helo: str = "client.example", rcpt: str = "support@example.com") -> tuple[int, bytes]:
    """One mail over SMTP (or LMTP) from the loopback address `source`; the DATA reply."""
    cls = smtplib.LMTP if lmtp else smtplib.SMTP
    c = cls("127.0.0.1", port, timeout=20, source_address=(source, 0))
    try:
        c.ehlo(helo)
        code, msg = c.mail(mail_from)
        if code != 250:
            return code, msg
        code, msg = c.rcpt(rcpt)
        if code != 250:
            return code, msg
        return c.data(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    finally:
        try:
            c.quit()
        except smtplib.SMTPException:
            c.close()
