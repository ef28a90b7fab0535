"""A gateway pointed at a fake desk (tests/fakedesks.py) running as a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import Clock, make_config
from fakedesks import DESKS, FakeDesk, backend_config
from mails import make_mail
from sqlalchemy import select


class Gateway:
    def __init__(self, app: Any, desk: FakeDesk, clock: Clock) -> None:
        self.app, self.desk, self.clock = app, desk, clock

    def mail(self, raw: bytes, sender: str) -> Any:
        from gateway.intake import Envelope

        return self.app.intake().ingest(raw, Envelope(sender, ("support@example.com",), "smtp"))

    def run(self, coro_fn: Any) -> Any:
        from gateway.backends import open_broker

        async def go() -> Any:
            async with open_broker(self.app) as b:
                return await coro_fn(b)
        return asyncio.run(go())

    def flush(self) -> Any:
        return self.run(lambda b: b.flush())

    def poll(self) -> Any:
        return self.run(lambda b: b.poll())

    def rows(self, model: Any, **where: Any) -> list[Any]:
        with self.app.sessions() as s:
            q = select(model).order_by(model.id if hasattr(model, "id") else model.backend)
            for k, v in where.items():
                q = q.where(getattr(model, k) == v)
            return list(s.scalars(q))

    def link(self, number: int = 1) -> Any:
        from gateway.backends.store import BackendLink
        from gateway.models import Ticket

        with self.app.sessions() as s:
            t = s.scalar(select(Ticket).where(Ticket.number == number))
            return s.scalar(select(BackendLink).where(BackendLink.ticket_id == t.id))

    def ticket(self, number: int = 1) -> Any:
        from gateway.models import Ticket

        with self.app.sessions() as s:
            return s.scalar(select(Ticket).where(Ticket.number == number))


@pytest.fixture(params=["jira", "zammad", "smax"])
def desk(request):
    d = DESKS[request.param]().start()
    yield d
    d.stop()


@pytest.fixture
def gateway(desk, tmp_path, db_url):
    from gateway.app import build_app

    clock = Clock(datetime.now(UTC).replace(microsecond=0))
    apps = []

    def factory(authentication: dict[str, Any] | None = None, **backend: Any) -> Gateway:
        extra = {"authentication": authentication} if authentication else {}
        cfg = make_config(tmp_path, db_url, backend=backend_config(desk, tmp_path, **backend),
                          sla={"policies": [{"name": "std", "response": 60, "resolution": 480}]}, **extra)
        app = build_app(cfg, clock=clock)
        apps.append(app)
        return Gateway(app, desk, clock)

    yield factory
    for a in apps:
        a.close()


def first_mail(body: str = "My printer is on fire.", **kw: Any) -> bytes:
    return make_mail(sender="Alice Customer <alice@customer.example>", subject="Printer on fire", body=body, **kw)
