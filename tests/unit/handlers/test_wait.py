"""`wait` alone: a reply whose original is stored but not threaded yet waits for it (a `Wait` outcome), within
gateway.reply_wait_seconds of its arrival and the first MAX_REFS Message-IDs it names; otherwise it goes on."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from handlerkit import NOW, MakeCtx

from gateway.handlers import wait
from gateway.models import InboundMail
from gateway.outcomes import Wait
from gateway.pipeline import MailContext, decide
from gateway.replywait import MAX_REFS, may_wait, referenced, retry_after
from gateway.store.memory import InMemoryStore


def stored(store: InMemoryStore, message_id: str, outcome: str = "received") -> InboundMail:
    """A mail stored (its listing hint, with angle brackets, as a transport stores it) and not threaded yet."""
    raw = f"Message-ID: {message_id}\r\n\r\n".encode()
    return store.add_mail(InboundMail(received_at=NOW, source="smtp", envelope_to=[], message_id=message_id,
                                      sha256=hashlib.sha256(raw).hexdigest(), size=len(raw), outcome=outcome,
                                      trace=[], attempts=0))


def waiting_ctx(make_ctx: MakeCtx, **mail: Any) -> MailContext:
    ctx = make_ctx(**mail)
    ctx.may_wait = True
    return ctx


def test_a_reply_waits_for_its_stored_original(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    original = stored(store, "<first@customer.example>")
    ctx = waiting_ctx(make_ctx, in_reply_to="<first@customer.example>", references="<first@customer.example>")
    with pytest.raises(Wait) as e:
        wait.handle(ctx)
    assert e.value.reason == (f"waiting for <first@customer.example> (mail {original.id}), stored but not "
                              "threaded yet")
    decision = decide(e.value)
    assert (decision.outcome, decision.keep, decision.wait, decision.retry) == ("received", False, True, False)


def test_it_does_not_wait_for_a_mail_threaded_or_quarantined(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    stored(store, "<first@customer.example>", outcome="quarantined")
    stored(store, "<second@customer.example>", outcome="ticket")
    ctx = waiting_ctx(make_ctx, references="<first@customer.example> <second@customer.example>")
    wait.handle(ctx)
    assert ctx.trace == []


def test_it_waits_no_longer_than_the_limit_from_its_arrival(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    original = stored(store, "<first@customer.example>")
    ctx = waiting_ctx(make_ctx, in_reply_to="<first@customer.example>")
    ctx.mail.received_at = NOW - timedelta(seconds=300)  # gateway.reply_wait_seconds, the default
    wait.handle(ctx)  # no Wait
    assert ctx.trace == [f"wait: <first@customer.example> (mail {original.id}) is still not threaded after 300 s: "
                         "threaded without it"]
    ctx = waiting_ctx(make_ctx, in_reply_to="<first@customer.example>", config={"gateway": {"reply_wait_seconds": 0}})
    wait.handle(ctx)  # 0: never waits


def test_only_stored_mail_waits_and_only_without_a_ticket(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    stored(store, "<first@customer.example>")
    ctx = make_ctx(in_reply_to="<first@customer.example>")
    wait.handle(ctx)  # an import (may_wait False): threaded in its order, nothing would run it again
    alice = store.add_contact("alice@customer.example")
    ctx = waiting_ctx(make_ctx, in_reply_to="<first@customer.example>")
    ctx.ticket = store.open_ticket(alice)
    wait.handle(ctx)  # matched (by a reply token, or another Message-ID it names)
    ctx = waiting_ctx(make_ctx, in_reply_to="<first@customer.example>")
    ctx.related = store.open_ticket(alice)
    wait.handle(ctx)  # named a ticket it may not join: linked to it, no original to wait for
    assert ctx.trace == []


def test_its_own_message_id_and_names_past_the_bound_are_not_looked_at(make_ctx: MakeCtx,
                                                                         store: InMemoryStore) -> None:
    stored(store, "<self@customer.example>")  # another copy of the mail itself
    stored(store, "<old0@customer.example>")  # the root, past MAX_REFS of the newest
    refs = " ".join(f"<old{i}@customer.example>" for i in range(MAX_REFS + 1))
    ctx = waiting_ctx(make_ctx, message_id="<self@customer.example>", in_reply_to="<self@customer.example>",
                      references=refs)
    wait.handle(ctx)
    assert ctx.trace == []


def test_an_original_threaded_meanwhile_by_another_instance_runs_it_again(make_ctx: MakeCtx,
                                                                           store: InMemoryStore) -> None:
    """`match` found no ticket, then the original's transaction committed elsewhere: run the reply again."""
    store.open_ticket(store.add_contact("alice@customer.example"), message_ids=["first@customer.example"])
    ctx = waiting_ctx(make_ctx, in_reply_to="<first@customer.example>")
    with pytest.raises(Wait) as e:
        wait.handle(ctx)
    assert e.value.reason == "<first@customer.example> was threaded meanwhile: running again"


def test_the_policy_is_bounded() -> None:
    assert referenced(["a@x"], ["r@x", "a@x", "b@x", "own@x"], "own@x") == ["a@x", "b@x", "r@x"]
    assert len(referenced([], [f"{i}@x" for i in range(100)], None)) == MAX_REFS
    assert may_wait(0, 300) and may_wait(299.9, 300) and not may_wait(300, 300) and not may_wait(0, 0)
    assert not may_wait(-1, 300)  # a clock that went back waits no longer than one that did not
    # tried again at twice its age (at least 0.5 s later), not after the limit: about log2(300 / 0.5) tries
    assert retry_after(0, 300) == 0.5 and retry_after(10, 300) == 10 and retry_after(290, 300) == 10
    age, tries = 0.0, 0
    while may_wait(age, 300):
        age += retry_after(age, 300)
        tries += 1
    assert tries <= 12
