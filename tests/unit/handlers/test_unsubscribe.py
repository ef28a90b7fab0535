"""`unsubscribe` alone: a watcher's signed unsubscribe address removes that watcher and ends the mail as
ignored; a token naming no current watcher changes nothing."""

from __future__ import annotations

import pytest
from handlerkit import SECRET, MakeCtx

from gateway import ourmail
from gateway.handlers import unsubscribe
from gateway.models import Ticket
from gateway.outcomes import Ignore
from gateway.store.memory import InMemoryStore


def unsubscribe_address(t: Ticket, recipient: str) -> str:
    tok = ourmail.make_unsubscribe_token(SECRET.encode(), ticket_id=t.id, ticket_number=t.number,
                                         recipient=recipient)
    return f"support+{tok}@example.com"


def test_the_watcher_is_removed(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    t = store.open_ticket(store.add_contact("alice@customer.example"))
    carol = store.add_contact("carol@customer.example")
    store.add_watcher(t, carol)
    ctx = make_ctx(sender="anyone@other.example", to=unsubscribe_address(t, "carol@customer.example"),
                   envelope_to=())
    with pytest.raises(Ignore) as e:
        unsubscribe.handle(ctx)
    assert e.value.reason == "unsubscribe: carol@customer.example no longer watches #1"
    assert t.watchers == [] and ctx.ticket is t


def test_a_token_of_no_current_watcher_changes_nothing(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    t = store.open_ticket(store.add_contact("alice@customer.example"))
    dave = store.add_contact("dave@customer.example")
    store.add_watcher(t, dave)
    ctx = make_ctx(envelope_to=(unsubscribe_address(t, "carol@customer.example"),))
    with pytest.raises(Ignore) as e:
        unsubscribe.handle(ctx)
    assert e.value.reason == "unsubscribe: the address names no current watcher"
    assert [w.contact for w in t.watchers] == [dave] and ctx.ticket is None


def test_other_mail_passes(make_ctx: MakeCtx) -> None:
    ctx = make_ctx()
    unsubscribe.handle(ctx)
    assert ctx.trace == [] and ctx.ticket is None


def test_an_imported_old_mail_does_not_act(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    """`ingest` of an archive holding an old unsubscribe mail: the watcher (added again since, perhaps) stays."""
    t = store.open_ticket(store.add_contact("alice@customer.example"))
    carol = store.add_contact("carol@customer.example")
    store.add_watcher(t, carol)
    address = unsubscribe_address(t, "carol@customer.example")
    ctx = make_ctx(sender="carol@customer.example", to=address, envelope_to=())
    ctx.historic = True
    with pytest.raises(Ignore) as e:
        unsubscribe.handle(ctx)
    assert e.value.reason == "unsubscribe: an imported mail is not acted on"
    assert ctx.trace == [f"unsubscribe: {address} is an unsubscribe address, but an imported mail is not acted on"]
    assert [w.contact for w in t.watchers] == [carol] and ctx.ticket is None
