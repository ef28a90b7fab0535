"""`identify` alone: a known contact, or the unknown-sender policy; no usable sender quarantines the mail."""

from __future__ import annotations

import pytest
from handlerkit import MakeCtx

from gateway.handlers import identify
from gateway.outcomes import Ignore, Quarantine, Reject
from gateway.store.memory import InMemoryStore


def test_a_known_contact_is_sender_and_reporter(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    alice = store.add_contact("alice@customer.example", name="Alice")
    ctx = make_ctx()
    identify.handle(ctx)
    assert ctx.sender is alice and ctx.reporter is alice and ctx.sender_email == "alice@customer.example"
    assert ctx.trace == ["identify: known customer alice@customer.example"]


def test_an_unknown_sender_becomes_a_correspondent(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    store.add_organisation("Customer Inc", ["customer.example"])
    ctx = make_ctx(sender="New Person <new@customer.example>")
    identify.handle(ctx)
    c = store.contact("new@customer.example")
    assert c is not None and ctx.sender is c and ctx.reporter is c
    assert (c.role, c.name, c.organisation) == ("correspondent", "New Person", None)  # no account, no organisation


def test_register_policy_makes_a_customer_in_the_domain_s_organisation(make_ctx: MakeCtx,
                                                                        store: InMemoryStore) -> None:
    org = store.add_organisation("Customer Inc", ["customer.example"])
    ctx = make_ctx(sender="new@customer.example", config={"gateway": {"unknown_senders": "register"}})
    identify.handle(ctx)
    assert ctx.sender is not None and (ctx.sender.role, ctx.sender.organisation) == ("customer", org)
    assert ctx.sender.auto_registered
    assert ctx.trace == ["identify: registered new customer new@customer.example (organisation Customer Inc)"]


def test_reject_policy_rejects_and_registers_nobody(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    with pytest.raises(Reject) as e:
        identify.handle(make_ctx(config={"gateway": {"unknown_senders": "reject"}}))
    assert e.value.reason == "unknown sender alice@customer.example (policy 'reject')"
    assert store.contacts == {}


def test_default_reporter_policy(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = make_ctx(config={"gateway": {"unknown_senders": "default-reporter"}})
    identify.handle(ctx)
    assert ctx.sender is None and ctx.sender_email == "alice@customer.example"
    assert ctx.reporter is not None and ctx.reporter.email == "unknown-sender@localhost"


def test_mail_from_our_own_address_is_a_loop(make_ctx: MakeCtx) -> None:
    with pytest.raises(Ignore) as e:
        identify.handle(make_ctx(sender="support@example.com"))
    assert e.value.reason == "loop: mail from the gateway's own address support@example.com"


def test_no_from_header_falls_back_to_the_envelope(make_ctx: MakeCtx) -> None:
    raw = b"To: support@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
    ctx = make_ctx(raw, envelope_from="bounce@customer.example")
    identify.handle(ctx)
    assert ctx.sender_email == "bounce@customer.example"
    assert "identify: no From header; using the envelope sender bounce@customer.example" in ctx.trace
    with pytest.raises(Quarantine) as e:
        identify.handle(make_ctx(raw))
    assert e.value.reason == "no usable sender: no From header"


def test_an_ambiguous_sender_is_quarantined_unless_an_admin_released_it(make_ctx: MakeCtx) -> None:
    sender = "v@corp.example <a@evil.example>"
    with pytest.raises(Quarantine) as e:
        identify.handle(make_ctx(sender=sender))
    assert e.value.reason.startswith("ambiguous sender: From 'v@corp.example <a@evil.example>' reads as "
                                     "a@evil.example here but as v@corp.example")
    ctx = make_ctx(sender=sender)
    ctx.mail.released = [identify.AMBIGUOUS]
    identify.handle(ctx)
    assert ctx.sender_email == "a@evil.example" and "released by an admin (replay)" in ctx.trace[0]
