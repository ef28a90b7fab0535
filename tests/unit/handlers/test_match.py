"""`match` alone: In-Reply-To/References and subject tags name a ticket; a participant joins it, a stranger
opens a ticket of their own linked to it; a reply to a ticket closed long ago opens a follow-up."""

from __future__ import annotations

from datetime import timedelta

from handlerkit import NOW, MakeCtx

from gateway.handlers import match
from gateway.models import Contact
from gateway.pipeline import MailContext
from gateway.store.base import Upcoming
from gateway.store.memory import InMemoryStore


def sent_by(ctx: MailContext, contact: Contact | None, email: str) -> MailContext:
    ctx.sender, ctx.sender_email = contact, email
    return ctx


def test_a_reply_of_the_reporter_joins_the_ticket(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    alice = store.add_contact("alice@customer.example")
    t = store.open_ticket(alice, message_ids=["first@customer.example"])
    ctx = sent_by(make_ctx(in_reply_to="<first@customer.example>"), alice, "alice@customer.example")
    match.handle(ctx)
    assert ctx.ticket is t and ctx.related is None
    assert ctx.trace == ["match: In-Reply-To <first@customer.example> -> ticket #1 (alice@customer.example is "
                         "reporter)"]


def test_a_subject_tag_names_a_ticket_too(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    alice = store.add_contact("alice@customer.example")
    store.open_ticket(alice)
    t = store.open_ticket(alice)
    ctx = sent_by(make_ctx(subject="Re: [#2] Printer"), alice, "alice@customer.example")
    match.handle(ctx)
    assert ctx.ticket is t and "subject tag [#2]" in ctx.trace[0]


def test_a_stranger_opens_a_ticket_of_their_own_linked(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    t = store.open_ticket(store.add_contact("alice@customer.example"), message_ids=["first@customer.example"])
    eve = store.add_contact("eve@other.example")
    ctx = sent_by(make_ctx(references="<first@customer.example>"), eve, "eve@other.example")
    match.handle(ctx)
    assert ctx.ticket is None and ctx.related is t and ctx.related_kind == "related"
    assert "eve@other.example is not a participant" in ctx.trace[0]


def test_a_watcher_joins(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    t = store.open_ticket(store.add_contact("alice@customer.example"))
    carol = store.add_contact("carol@customer.example")
    store.add_watcher(t, carol)
    ctx = sent_by(make_ctx(subject="[#1]"), carol, "carol@customer.example")
    match.handle(ctx)
    assert ctx.ticket is t and ctx.trace[0].endswith("(carol@customer.example is watcher)")


def test_closed_long_ago_is_a_follow_up_recently_a_reopen(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    alice = store.add_contact("alice@customer.example")
    old = store.open_ticket(alice, status="closed", closed_at=NOW - timedelta(days=60))
    recent = store.open_ticket(alice, status="closed", closed_at=NOW - timedelta(days=1))
    ctx = sent_by(make_ctx(subject="[#1]"), alice, "alice@customer.example")
    match.handle(ctx)
    assert ctx.ticket is None and ctx.related is old and ctx.related_kind == "follow_up_of"
    ctx = sent_by(make_ctx(subject="[#2]"), alice, "alice@customer.example")
    match.handle(ctx)
    assert ctx.ticket is recent


def test_nothing_named_is_a_new_ticket(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(subject="[#7] no such ticket")
    match.handle(ctx)
    assert ctx.ticket is None and ctx.trace == ["match: no ticket referenced: a new ticket"]


def test_it_declares_the_message_ids_and_numbers_ahead(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(subject="[#3] and [#4]", in_reply_to="<a@x>", references="<b@x> <a@x> <c@x>")
    assert ctx.parsed is not None
    asks = match.asks(Upcoming(ctx.parsed, "0" * 64, None), ctx.config)
    assert asks.message_ids == ["a@x", "c@x", "b@x"] and asks.numbers == [3, 4]
