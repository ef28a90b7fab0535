"""`flood` alone: more than limits.mails_per_sender_per_hour tickets and comments from one sender in the hour
before the mail arrived quarantines it; staff, exempt senders and a released mail pass."""

from __future__ import annotations

from datetime import timedelta

import pytest
from handlerkit import NOW, MakeCtx

from gateway.guard import flood as policy
from gateway.handlers import flood
from gateway.models import InboundMail
from gateway.outcomes import Quarantine
from gateway.store.base import Upcoming
from gateway.store.memory import InMemoryStore

LIMIT = {"limits": {"mails_per_sender_per_hour": 3}}


def made(store: InMemoryStore, n: int, *, ago: timedelta = timedelta(minutes=10), outcome: str = "ticket",
         sender: str = "alice@customer.example") -> None:
    for _ in range(n):
        store.add_mail(InboundMail(received_at=NOW - ago, source="smtp", sha256="0" * 64, size=1, outcome=outcome,
                                   sender=sender))




def test_the_cap_quarantines_the_mail_over_it(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    made(store, 3)
    ctx = make_ctx(config=LIMIT)
    ctx.sender_email = "alice@customer.example"
    with pytest.raises(Quarantine) as e:
        flood.handle(ctx)
    assert e.value.reason == "flood: more than 3 tickets and comments from alice@customer.example in an hour"
    assert ctx.trace == ["flood: 3 tickets and comments from alice@customer.example in the hour before this mail "
                         "(limits.mails_per_sender_per_hour = 3)"]


def test_only_tickets_and_comments_of_the_hour_before_count(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    made(store, 2)
    made(store, 5, ago=timedelta(hours=2))
    made(store, 5, outcome="ignored")
    made(store, 5, sender="bob@customer.example")
    ctx = make_ctx(config=LIMIT)
    ctx.sender_email = "alice@customer.example"
    flood.handle(ctx)
    assert ctx.trace == []


def test_staff_exempt_senders_and_a_released_mail_pass(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    made(store, 3)
    staff = make_ctx(config=LIMIT)
    staff.sender_email, staff.sender = "alice@customer.example", store.add_contact("alice@customer.example",
                                                                                    staff=True)
    flood.handle(staff)
    exempt = make_ctx(config={"limits": {"mails_per_sender_per_hour": 3, "flood_exempt": ["@customer.example"]}})
    exempt.sender_email = "alice@customer.example"
    flood.handle(exempt)
    released = make_ctx(config=LIMIT)
    released.sender_email = "alice@customer.example"
    released.mail.released = [policy.REASON]
    flood.handle(released)
    assert released.trace == ["flood: the cap was released for this mail by an admin (replay)"]


def test_it_declares_the_count_of_a_stored_mail_ahead(make_ctx: MakeCtx) -> None:
    """A stored mail (its arrival known): the sender and the hour before it; a new mail: nothing."""
    ctx = make_ctx(config=LIMIT)
    assert ctx.parsed is not None and ctx.parsed.from_addr
    stored = flood.asks(Upcoming(ctx.parsed, "0" * 64, None, NOW), ctx.config)
    assert stored.made_by == [(ctx.parsed.from_addr, NOW - policy.WINDOW, NOW)]
    assert flood.asks(Upcoming(ctx.parsed, "0" * 64, None), ctx.config).made_by == []
