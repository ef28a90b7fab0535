"""`thread` alone: a new ticket (its Cc'd people watchers, within the bound) or a comment on the matched one
(a reply reopens it; a staff note stays internal), a stranger's ticket linked to the one it named."""

from __future__ import annotations

from handlerkit import MakeCtx

from gateway.events import CommentAdded, TicketChanged, TicketCreated
from gateway.guard import relay
from gateway.handlers import thread
from gateway.pipeline import MailContext
from gateway.store.base import Upcoming
from gateway.store.memory import InMemoryStore


def from_alice(ctx: MailContext, store: InMemoryStore) -> MailContext:
    ctx.sender = ctx.reporter = store.add_contact("alice@customer.example")
    ctx.sender_email = "alice@customer.example"
    ctx.body = ctx.full_text = "The printer is on fire."
    return ctx


def test_a_new_ticket_with_its_cc_as_watchers(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = from_alice(make_ctx(cc="Carol <carol@customer.example>, support@example.com",
                              message_id="<new@customer.example>"), store)
    ctx.routing = {"priority": "high", "group": "first"}
    thread.handle(ctx)
    t = ctx.ticket
    assert t is not None and ctx.created and store.tickets == {1: t}
    assert (t.subject, t.priority, t.group, t.description, t.reporter) == (
        "Printer on fire", "high", "first", "The printer is on fire.", ctx.sender)
    assert [w.contact.email for w in t.watchers] == ["carol@customer.example"]  # not the gateway's address
    assert store.contact("carol@customer.example") is not None
    assert store.tickets_by_message_ids(["new@customer.example"]) == [("new@customer.example", t)]
    assert ctx.sender is not None and ctx.sender.vouched == relay.WROTE
    assert [type(e) for e in store.events][-1] is TicketCreated
    assert "thread: opened ticket #1" in ctx.trace


def test_watchers_are_bounded(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    cc = ", ".join(f"p{i}@customer.example" for i in range(5))
    ctx = from_alice(make_ctx(cc=cc, config={"limits": {"max_watchers_per_mail": 2}}), store)
    thread.handle(ctx)
    assert ctx.ticket is not None and len(ctx.ticket.watchers) == 2 and len(store.contacts) == 3
    assert any(line.startswith("relay: 3 Cc address(es) past limits.max_watchers_per_mail = 2") for line in ctx.trace)


def test_a_stranger_s_ticket_is_linked_to_the_one_it_named(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    named = store.open_ticket(store.add_contact("bob@other.example"))
    ctx = from_alice(make_ctx(), store)
    ctx.related, ctx.related_kind, ctx.related_reason = named, "related", "referred to #1"
    thread.handle(ctx)
    assert ctx.ticket is not None and ctx.ticket.number == 2
    assert [(x.ticket_id, x.other_ticket_id, x.kind) for x in store.links] == [(ctx.ticket.id, named.id, "related")]


def test_a_reply_is_a_comment_and_reopens_a_resolved_ticket(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = from_alice(make_ctx(message_id="<reply@customer.example>", to="support@example.com"), store)
    assert ctx.reporter is not None
    ctx.ticket = t = store.open_ticket(ctx.reporter, status="resolved")
    thread.handle(ctx)
    assert not ctx.created and ctx.comment is not None and store.comments == [ctx.comment]
    assert (ctx.comment.body, ctx.comment.internal, ctx.comment.author) == ("The printer is on fire.", False,
                                                                            ctx.sender)
    assert t.status == "open" and store.tickets_by_message_ids(["reply@customer.example"])[0][1] is t
    added = [e for e in store.events if isinstance(e, CommentAdded)]
    assert len(added) == 1 and added[0].seen_by == frozenset({"support@example.com"})
    assert [e.changes for e in store.events if isinstance(e, TicketChanged)] == [{"status": ("resolved", "open")}]


def test_a_staff_note_stays_internal_and_changes_nothing(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = make_ctx(sender="bob@example.com")
    ctx.sender = store.add_contact("bob@example.com", staff=True)
    ctx.reporter, ctx.sender_email, ctx.body = ctx.sender, "bob@example.com", "Checked the logs."
    ctx.ticket = t = store.open_ticket(store.add_contact("alice@customer.example"), status="pending")
    ctx.internal = "/internal"
    thread.handle(ctx)
    assert ctx.comment is not None and ctx.comment.internal and ctx.comment.by_staff and t.status == "pending"
    assert "thread: staff internal note (/internal) on #1" in ctx.trace


def test_it_declares_the_cc_contacts_ahead(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(cc="a@x.example, not-an-address, b@y.example")
    assert ctx.parsed is not None
    assert thread.asks(Upcoming(ctx.parsed, "0" * 64, None), ctx.config).emails == ["a@x.example", "b@y.example"]
