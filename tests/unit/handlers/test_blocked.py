"""`blocked` alone: a contact an admin blocked is quarantined with the reason; anyone else passes."""

from __future__ import annotations

import pytest
from handlerkit import MakeCtx

from gateway.handlers import blocked
from gateway.outcomes import Quarantine
from gateway.store.memory import InMemoryStore


def test_a_blocked_sender_is_quarantined_with_the_reason(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = make_ctx()
    ctx.sender_email = "alice@customer.example"
    ctx.sender = store.add_contact("alice@customer.example", blocked=True, blocked_reason="spam")
    with pytest.raises(Quarantine) as e:
        blocked.handle(ctx)
    assert e.value.reason == "blocked sender alice@customer.example: spam"
    assert ctx.trace == ["blocked: alice@customer.example is blocked (spam)"]


def test_without_a_reason_it_says_an_admin_blocked_it(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = make_ctx()
    ctx.sender_email = "alice@customer.example"
    ctx.sender = store.add_contact("alice@customer.example", blocked=True)
    with pytest.raises(Quarantine) as e:
        blocked.handle(ctx)
    assert e.value.reason == "blocked sender alice@customer.example: blocked by an admin"


def test_others_pass(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = make_ctx()
    blocked.handle(ctx)  # an unknown sender (default-reporter policy): no contact
    ctx.sender = store.add_contact("alice@customer.example")
    blocked.handle(ctx)
    assert ctx.trace == []
