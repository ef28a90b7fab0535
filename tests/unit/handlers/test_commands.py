"""`commands` alone: who may command, what is taken out of the text, what marks a note."""

from __future__ import annotations

from typing import Any

import pytest
from handlerkit import MakeCtx

from gateway import auth
from gateway.handlers import commands
from gateway.models import Contact
from gateway.pipeline import MailContext


@pytest.fixture
def ctx_for(make_ctx: MakeCtx) -> Any:
    def make(body: str, *, role: str = "staff", rcpt: str = "support@example.com", verdict: str | None = None,
             **config: Any) -> MailContext:
        return _ctx(make_ctx, body, role, rcpt, verdict, config)

    return make


def _ctx(make_ctx: MakeCtx, body: str, role: str, rcpt: str, verdict: str | None,
         config: dict[str, Any]) -> MailContext:
    ctx = make_ctx(sender="Bob <bob@example.com>", to=rcpt, body=body, envelope_to=(rcpt,), config=config)
    ctx.sender = Contact(email="bob@example.com", role=role)
    ctx.sender_email = "bob@example.com"
    ctx.body = ctx.full_text = body
    ctx.html = "<p>/status closed</p>"
    ctx.auth = auth.AuthResult(verdict=verdict) if verdict else auth.AuthResult()
    return ctx


def test_staff_commands_are_taken_out_of_the_text(ctx_for: Any) -> None:
    ctx = ctx_for("/status closed\n/internal\nThe note.\n")
    commands.handle(ctx)
    assert ctx.commands is not None and [c.name for c in ctx.commands.commands] == ["status", "internal"]
    assert ctx.body == "The note.\n" and ctx.full_text == "The note.\n" and ctx.html is None
    assert ctx.internal == "/internal"


@pytest.mark.parametrize("role,config,verdict,why", [
    ("customer", {}, None, "is not staff"),
    ("correspondent", {}, None, "is not staff"),
    ("staff", {"staff": {"commands": False}}, None, "staff.commands is off"),
    ("staff", {"authentication": {"trusted_authserv_ids": ["mx.example.com"]}}, None,
     "did not pass sender authentication"),
    ("staff", {"authentication": {"trusted_authserv_ids": ["mx.example.com"]}}, auth.FAIL,
     "did not pass sender authentication"),
])
def test_anyone_else_s_slash_lines_are_text(ctx_for: Any, role: str, config: dict[str, Any], verdict: str | None,
                                            why: str) -> None:
    ctx = ctx_for("/status closed\nHello\n", role=role, verdict=verdict, **config)
    commands.handle(ctx)
    assert ctx.commands is None and ctx.body == "/status closed\nHello\n" and not ctx.internal
    if role == "staff":
        assert any(why in line for line in ctx.trace), ctx.trace


def test_authenticated_staff_may_command_where_authentication_is_configured(ctx_for: Any) -> None:
    ctx = ctx_for("/priority high\n", verdict=auth.PASS,
                  authentication={"trusted_authserv_ids": ["mx.example.com"]})
    commands.handle(ctx)
    assert ctx.commands is not None and ctx.body == ""
    assert any("nothing else: no comment" in line for line in ctx.trace)


def test_note_address_marks_a_staff_note_only(ctx_for: Any) -> None:
    ctx = ctx_for("A note.\n", rcpt="support+note@example.com")
    commands.handle(ctx)
    assert ctx.internal == "sent to the note address support+note@example.com" and ctx.commands is None
    ctx = ctx_for("A note.\n", rcpt="support+note@example.com", role="customer")
    commands.handle(ctx)
    assert not ctx.internal
    ctx = ctx_for("A note.\n", rcpt="support+note@example.com", staff={"note_subaddress": ""})
    commands.handle(ctx)
    assert not ctx.internal
