"""`act` alone, on the in-memory store: a staff member's commands go through the workflow's rules (the same
code as the CLI and the API), what was done and refused is traced and told (CommandsDone)."""

from __future__ import annotations

from handlerkit import NOW, MakeCtx

from gateway import mailcommands
from gateway.events import CommandsDone, TicketChanged, WatcherAdded
from gateway.handlers import act
from gateway.pipeline import MailContext
from gateway.store.memory import InMemoryStore


def staff_mail(make_ctx: MakeCtx, store: InMemoryStore, commands: str) -> MailContext:
    ctx = make_ctx(sender="bob@example.com")
    ctx.sender = store.add_contact("bob@example.com", staff=True)
    ctx.ticket = store.open_ticket(store.add_contact("alice@customer.example"), subject="Printer")
    ctx.commands = mailcommands.parse(commands)
    return ctx


def test_commands_are_applied_and_reported(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = staff_mail(make_ctx, store, "/priority high\n/assign me\n/tag a\n/link 99 relates\n/time 30m\n"
                                      "/status closed\n/internal\n")
    bob, t = ctx.sender, ctx.ticket
    assert bob is not None and t is not None
    act.handle(ctx)
    assert (t.priority, t.assignee, t.tags, t.status, t.closed_at) == ("high", bob, ["a"], "closed", NOW)
    changes = [e.changes for e in store.events if isinstance(e, TicketChanged)]
    assert [sorted(c) for c in changes] == [["assignee", "priority", "tags"], ["status"]]  # two changes
    (done,) = [e for e in store.events if isinstance(e, CommandsDone)]
    assert done.by is bob and done.mail_id == ctx.mail.id
    assert "time logged: 30m, 30m in all" in done.done and "status: open -> closed" in done.done
    assert dict(done.refused) == {"/link 99 relates": "no ticket #99",
                                  "/internal": "no note made: a new ticket's first mail is its description, "
                                               "and a mail of commands only has no text"}
    assert "act: refused /link 99 relates: no ticket #99" in ctx.trace


def test_a_close_blocked_by_an_open_ticket_refuses_only_itself(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = staff_mail(make_ctx, store, "/priority low\n/status closed\n")
    t = ctx.ticket
    assert t is not None
    blocker = store.open_ticket(store.add_contact("carol@customer.example"))
    store.link(blocker, t, kind="blocks", reason="")
    act.handle(ctx)
    assert (t.priority, t.status) == ("low", "open")
    (done,) = [e for e in store.events if isinstance(e, CommandsDone)]
    assert dict(done.refused) == {"/status closed": "#1 cannot be closed: it is blocked by #2 (open)"}


def test_assigning_a_customer_and_unknown_watchers(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = staff_mail(make_ctx, store, "/assign alice@customer.example\n/watch dave@customer.example\n"
                                      "/unwatch erin@customer.example\n/link 2 blocks\n")
    t = ctx.ticket
    assert t is not None
    other = store.open_ticket(store.add_contact("carol@customer.example"))
    act.handle(ctx)
    assert t.assignee is None and [w.contact.email for w in t.watchers] == ["dave@customer.example"]
    assert [(x.ticket_id, x.other_ticket_id, x.kind) for x in store.links] == [(t.id, other.id, "blocks")]
    (done,) = [e for e in store.events if isinstance(e, CommandsDone)]
    assert done.done == ["watcher added: dave@customer.example", "link: #1 blocks #2"]
    assert dict(done.refused) == {
        "/assign alice@customer.example": "assignee: alice@customer.example is not a staff member "
                                          "(users set alice@customer.example --staff)",
        "/unwatch erin@customer.example": "erin@customer.example is not watching #1"}
    assert any(isinstance(e, WatcherAdded) and e.vouched for e in store.events)


def test_no_commands_nothing_done(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = make_ctx()
    act.handle(ctx)
    assert store.events == [] and ctx.trace == []
