"""`token` alone: our own mail coming back is a loop; a reply address signed for the sender names its ticket;
one signed for someone else, or forged, grants nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from handlerkit import NOW, SECRET, MakeCtx

from gateway import ourmail
from gateway.events import MailIgnored
from gateway.handlers import token
from gateway.models import Ticket
from gateway.outcomes import Ignore
from gateway.store.memory import InMemoryStore


def address(t: Ticket, recipient: str, *, note: bool = False) -> str:
    tok = ourmail.make_token(SECRET.encode(), ticket_id=t.id, ticket_number=t.number, recipient=recipient, note=note)
    return ourmail.token_address("support@example.com", tok)


def test_our_own_message_id_coming_back_is_a_loop(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = make_ctx(message_id="<tg.0123456789abcdef0123456789abcdef.1@example.com>")
    with pytest.raises(Ignore) as e:
        token.handle(ctx)
    assert e.value.reason.startswith("loop: our own Message-ID")
    (event,) = store.events
    assert isinstance(event, MailIgnored) and event.kind == "loop"


def test_a_reply_address_signed_for_the_sender_names_its_ticket(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    alice = store.add_contact("alice@customer.example")
    t = store.open_ticket(alice)
    ctx = make_ctx(to=address(t, "alice@customer.example"), envelope_to=())
    ctx.sender, ctx.sender_email = alice, "alice@customer.example"
    token.handle(ctx)
    assert ctx.ticket is t and not ctx.internal
    assert "-> ticket #1" in ctx.trace[-1]


def test_staff_mail_to_a_note_address_is_an_internal_note(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    bob = store.add_contact("bob@example.com", staff=True)
    t = store.open_ticket(store.add_contact("alice@customer.example"))
    to = address(t, "bob@example.com", note=True)
    ctx = make_ctx(envelope_to=(to,))
    ctx.sender, ctx.sender_email = bob, "bob@example.com"
    token.handle(ctx)
    assert ctx.ticket is t and ctx.internal == f"sent to the note address {to}"


def test_a_token_of_someone_else_or_forged_grants_nothing(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    t = store.open_ticket(store.add_contact("alice@customer.example"))
    to = address(t, "alice@customer.example")
    store.issue_token(ourmail.token_of_address(to, ("support@example.com",)) or "")
    ctx = make_ctx(envelope_to=(to,))
    ctx.sender_email = "eve@other.example"
    token.handle(ctx)
    assert ctx.ticket is None and "was issued to someone else" in ctx.trace[-1]
    local, _, domain = to.rpartition("@")
    forged = f"{local[:-1]}{'b' if local[-1] == 'a' else 'a'}@{domain}"  # the signature changed
    ctx = make_ctx(envelope_to=(forged,))
    ctx.sender_email = "alice@customer.example"
    token.handle(ctx)
    assert ctx.ticket is None and ctx.trace[-1].endswith("does not verify: forged, ignored")


def test_a_ticket_closed_long_ago_gets_a_follow_up(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    alice = store.add_contact("alice@customer.example")
    t = store.open_ticket(alice, status="closed", closed_at=NOW - timedelta(days=60))
    ctx = make_ctx(envelope_to=(address(t, "alice@customer.example"),))
    ctx.sender, ctx.sender_email = alice, "alice@customer.example"
    token.handle(ctx)
    assert ctx.ticket is None and ctx.related is t and ctx.related_kind == "follow_up_of"


def test_a_merged_ticket_stands_for_the_one_it_was_merged_into(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    alice = store.add_contact("alice@customer.example")
    into = store.open_ticket(alice)
    merged = store.open_ticket(alice, merged_into_id=into.id)
    ctx = make_ctx(envelope_to=(address(merged, "alice@customer.example"),))
    ctx.sender, ctx.sender_email = alice, "alice@customer.example"
    token.handle(ctx)
    assert ctx.ticket is into and "#2 was merged into #1" in ctx.trace[-1]
