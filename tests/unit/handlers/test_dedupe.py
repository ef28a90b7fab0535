"""`dedupe` alone: the first mail takes the claims; the same bytes, or the same Message-ID from the same sender,
again is a duplicate that names the first mail and its ticket."""

from __future__ import annotations

import hashlib

import pytest
from handlerkit import NOW, MakeCtx
from mails import make_mail

from gateway.handlers import dedupe
from gateway.models import InboundMail
from gateway.outcomes import Duplicate
from gateway.store.base import msgid_claim_of
from gateway.store.memory import InMemoryStore


def earlier(store: InMemoryStore, raw: bytes, *, outcome: str = "ticket", ticket_id: int | None = None,
            message_id: str | None = None, sender: str = "alice@customer.example") -> InboundMail:
    sha = hashlib.sha256(raw).hexdigest()
    return store.add_mail(InboundMail(received_at=NOW, source="smtp", sha256=sha, size=len(raw), outcome=outcome,
                                      claim_sha256=sha, ticket_id=ticket_id,
                                      claim_msgid=msgid_claim_of(message_id, sender, None) if message_id else None))


def test_the_first_mail_takes_both_claims(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(message_id="<once@customer.example>")
    dedupe.handle(ctx)
    assert ctx.mail.claim_sha256 == ctx.mail.sha256
    assert ctx.mail.claim_msgid == msgid_claim_of("once@customer.example", "alice@customer.example", None)
    assert ctx.trace == ["dedupe: first time seen"]


def test_the_same_bytes_again_are_a_duplicate_of_the_first(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    raw = make_mail()
    reporter = store.add_contact("alice@customer.example")
    t = store.open_ticket(reporter)
    first = earlier(store, raw, ticket_id=t.id)
    ctx = make_ctx(raw)
    with pytest.raises(Duplicate) as e:
        dedupe.handle(ctx)
    assert e.value.reason == (f"duplicate of mail {first.id} (the same bytes), which was ticket on ticket "
                              f"#{t.number}")
    assert ctx.mail.claim_sha256 is None and ctx.ticket is None


def test_the_same_message_id_from_the_same_sender_is_a_duplicate(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    first = earlier(store, b"other bytes", outcome="ignored", message_id="m@customer.example")
    with pytest.raises(Duplicate) as e:
        dedupe.handle(make_ctx(message_id="<m@customer.example>", body="resent, other bytes\n"))
    assert e.value.reason == f"duplicate of mail {first.id} (the same Message-ID and sender), which was ignored"


def test_the_same_message_id_from_someone_else_is_not(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    earlier(store, b"other bytes", message_id="m@customer.example")
    ctx = make_ctx(message_id="<m@customer.example>", sender="eve@other.example")
    dedupe.handle(ctx)
    assert ctx.trace == ["dedupe: first time seen"]


def test_it_declares_both_claims_ahead(make_ctx: MakeCtx) -> None:
    from gateway.store.base import Upcoming

    ctx = make_ctx(message_id="<m@customer.example>")
    assert ctx.parsed is not None
    asks = dedupe.asks(Upcoming(ctx.parsed, "ab" * 32, None), ctx.config)
    assert asks.claims == [("ab" * 32, msgid_claim_of("m@customer.example", "alice@customer.example", None))]
