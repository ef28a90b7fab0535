"""The broker inside `serve`: an asyncio task on the service's loop. Mail in over SMTP reaches the desk; a
signed webhook, POSTed over real HTTP to the service's API (/api/v1/backends/{name}/webhook), makes the desk's
answer come back and a badly signed one changes nothing; a desk that hangs does not hold up SMTP."""

from __future__ import annotations

import json
import smtplib
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from backends.conftest import first_mail
from fakedesks import DESKS, backend_config
from sqlalchemy import select

from gateway.config import validate
from gateway.models import Comment, OutboxMail


def wait_for(what: Callable[[], Any], timeout: float = 30) -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = what()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture(params=["jira", "zammad", "smax"])
def running(request, tmp_path, sqlite_url):
    from servehelp import Running

    desk = DESKS[request.param]().start()
    if desk.kind == "smax":
        desk.person_delay = 0
    b = backend_config(desk, tmp_path, deliver_seconds=1, poll_seconds=3600)
    cfg = validate({"gateway": {"data_dir": str(tmp_path / "var"), "addresses": ["support@example.com"],
                                "unknown_senders": "register"},
                    "database": {"url": sqlite_url}, "listen": [{"protocol": "smtp", "port": 0}],
                    "http": {"listen": "127.0.0.1:0"},
                    "serve": {"hostname": "gw.test", "pending_sweep_seconds": 1}, "backend": b}, base_dir=tmp_path)
    r = Running(cfg)
    yield r, desk
    if desk.stall is not None:
        desk.stall.set()
    r.stop()
    desk.stop()


def send(port: int, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.sendmail("alice@customer.example", ["support@example.com"], raw)


def test_mail_to_desk_and_back(running):
    from gateway.backends.store import BackendLink, BackendState

    r, desk = running
    send(r.port("smtp"), first_mail())
    key = wait_for(lambda: desk.keys() and desk.keys()[0])
    app = r.service.app
    desk.agent_comment(key, "Fixed it remotely.")
    body = json.dumps(desk.webhook(key)).encode()
    url = f"{r.service.http_where}/api/v1/backends/{desk.kind}/webhook"
    with httpx.Client(timeout=20) as http:
        for headers in ({}, {"X-Hub-Signature": desk.sign(body, b"not the secret")}):
            bad = http.post(url, content=body, headers={"Content-Type": "application/json", **headers})
            assert bad.status_code == 401
        with app.sessions() as s:  # nothing rang
            assert s.scalar(select(BackendLink.refresh_at)) is None and s.get(BackendState, desk.kind) is None \
                or not s.get(BackendState, desk.kind).poll_requested
        ok = http.post(url, content=body, headers={"Content-Type": "application/json",
                                                   "X-Hub-Signature": desk.sign(body, b"s3cret-webhook-key")})
        assert ok.status_code == 202, ok.text
        assert http.post(url.replace(f"/{desk.kind}/", "/other/"), content=body).status_code == 404

    def imported() -> list[Comment]:
        with app.sessions() as s:
            return list(s.scalars(select(Comment).where(Comment.source == "backend")))
    assert [c.body.strip() for c in wait_for(imported)] == ["Fixed it remotely."]
    with app.sessions() as s:
        assert s.scalars(select(OutboxMail.event).where(OutboxMail.recipient == "alice@customer.example")).all() \
            .count("comment") == 1


def test_a_hanging_desk_does_not_hold_up_mail(running):
    r, desk = running
    desk.stall = threading.Event()
    send(r.port("smtp"), first_mail())
    assert desk.stalled.wait(20)  # the broker's create is now waiting on the desk
    for n in range(3):  # meanwhile the service's loop takes mail as usual
        send(r.port("smtp"), first_mail(body=f"another one {n}"))
    r.wait_processed(4)
    assert len(r.tickets()) >= 1
    desk.stall.set()
    wait_for(lambda: len(desk.keys()) >= 1)
