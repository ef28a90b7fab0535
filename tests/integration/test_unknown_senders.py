"""Unknown senders: by default a ticket's reporter is the address that wrote (a correspondent without an
account), never a placeholder; 'register' additionally makes them a registered customer, named and in the
organisation of their mail domain."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest
from conftest import run_cli, write_config
from mails import make_mail, message_id_of
from sqlalchemy import select

from gateway.app import build_app
from gateway.config import SCHEMA, validate
from gateway.db import transaction
from gateway.intake import Envelope
from gateway.models import Contact
from gateway.outbound import deliver_due
from gateway.tickets import Directory, Tickets
from gateway.views import ticket_dict

ENV = Envelope(mail_from="alice@customer.example", rcpt_tos=("support@example.com",), source="smtp")


def default_app(tmp_path: Path, db_url: str, clock, **gateway):
    """An app whose config leaves unknown_senders out: the embedded default."""
    data = {"gateway": {"data_dir": str(tmp_path / "var"), "addresses": ["support@example.com"], **gateway},
            "database": {"url": db_url}}
    return build_app(validate(data, base_dir=tmp_path), clock=clock)


def ticket(app, number):
    with app.sessions() as s:
        t = Tickets(s, clock=app.clock).get(number)
        return ticket_dict(s, t) if t else None


def contacts(app) -> dict[str, Contact]:
    with app.sessions() as s:
        return {c.email: c for c in s.scalars(select(Contact))}


def test_default_reporter_is_the_sender_as_a_correspondent(tmp_path, db_url, clock) -> None:
    assert SCHEMA["gateway"].keys["unknown_senders"].default == "correspondent"
    app = default_app(tmp_path, db_url, clock)
    try:
        with transaction(app.sessions) as s:  # an organisation owns the sender's domain
            Directory(s, app.clock).add_organisation("Customer Ltd", ["customer.example"])
        first = make_mail()
        r = app.intake().ingest(first, ENV)
        assert r.outcome == "ticket"
        assert any("new correspondent alice@customer.example" in line for line in r.trace)
        t = ticket(app, 1)
        assert t["reporter"] == {"email": "alice@customer.example", "name": "Alice Customer",
                                 "role": "correspondent"}
        assert t["sender"] == "alice@customer.example"
        assert t["organisation"] is None  # not a member of it without registration
        c = contacts(app)
        assert set(c) == {"alice@customer.example"}  # no placeholder contact
        assert c["alice@customer.example"].organisation_id is None and not c["alice@customer.example"].auto_registered
        # the correspondent replies to their own ticket; a stranger may not
        assert app.intake().ingest(make_mail(in_reply_to=message_id_of(first), body="More.\n"), ENV).ticket_number == 1
        eve = make_mail(sender="eve@other.example", in_reply_to=message_id_of(first), body="Let me in.\n")
        assert app.intake().ingest(eve, ENV).ticket_number == 2
        # a second conversation: the same correspondent, known now
        r = app.intake().ingest(make_mail(subject="Another thing"), ENV)
        assert any("known correspondent alice@customer.example" in line for line in r.trace)
        assert ticket(app, 3)["reporter"]["email"] == "alice@customer.example"
        assert len(contacts(app)) == 2  # alice and eve
        # the acknowledgements go to the senders, greeting them by name, else neutrally (never by address)
        assert deliver_due(app).sent == 3
        box = mailbox.Maildir(str(app.config.data_dir / "outbox-maildir"), create=False)
        texts: dict[str, list[bytes]] = {}
        for m in box:
            raw = bytes(m)
            texts.setdefault(m["X-Original-To"], []).append(raw)
        assert len(texts["alice@customer.example"]) == 2 and len(texts["eve@other.example"]) == 1
        assert all(b"Hello Alice Customer," in raw for raw in texts["alice@customer.example"])
        assert b"Hello," in texts["eve@other.example"][0] and b"Hello eve@" not in texts["eve@other.example"][0]
    finally:
        app.close()


def test_registering_a_correspondent_later_makes_them_a_customer_of_their_organisation(
        tmp_path, db_url, clock) -> None:
    app = default_app(tmp_path, db_url, clock)
    try:
        with transaction(app.sessions) as s:
            Directory(s, app.clock).add_organisation("Customer Ltd", ["customer.example"])
        app.intake().ingest(make_mail(), ENV)
        with transaction(app.sessions) as s:
            c = Directory(s, app.clock).add_contact("alice@customer.example")
            assert c.role == "customer" and c.organisation is not None and c.organisation.name == "Customer Ltd"
        r = app.intake().ingest(make_mail(subject="Next"), ENV)
        assert any("known customer alice@customer.example" in line for line in r.trace)
        assert ticket(app, 2)["organisation"] == "Customer Ltd"
    finally:
        app.close()


def test_register_policy_names_and_files_under_the_organisation(tmp_path, db_url, clock) -> None:
    app = default_app(tmp_path, db_url, clock, unknown_senders="register")
    try:
        with transaction(app.sessions) as s:
            Directory(s, app.clock).add_organisation("Customer Ltd", ["customer.example"])
        app.intake().ingest(make_mail(), ENV)
        t = ticket(app, 1)
        assert t["reporter"] == {"email": "alice@customer.example", "name": "Alice Customer", "role": "customer"}
        assert t["organisation"] == "Customer Ltd"
        assert contacts(app)["alice@customer.example"].auto_registered
    finally:
        app.close()


def test_import_of_many_mails_by_unknown_senders(tmp_path, db_url) -> None:
    """The batch import path (lookups made ahead, one INSERT per new contact) with the default policy."""
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(write_config(tmp_path, db_url).read_text().replace('unknown_senders = "register"\n', ""))
    md = mailbox.Maildir(tmp_path / "Maildir", create=True)
    for i in range(6):
        who = ("Alice Customer <alice@customer.example>", "Bob <bob@other.example>")[i % 2]
        md.add(make_mail(sender=who, subject=f"mail {i}"))
    p = run_cli("ingest", str(tmp_path / "Maildir"), config=cfg)
    assert p.returncode == 0, p.stderr
    import json

    listed = json.loads(run_cli("tickets", "list", "--json", config=cfg).stdout)
    assert sorted((t["subject"], t["reporter"]["email"]) for t in listed) == [
        (f"mail {i}", ("alice@customer.example", "bob@other.example")[i % 2]) for i in range(6)]
    users = json.loads(run_cli("users", "list", "--json", config=cfg).stdout)
    assert sorted((u["email"], u["role"]) for u in users) == [("alice@customer.example", "correspondent"),
                                                             ("bob@other.example", "correspondent")]



@pytest.mark.parametrize("policy,role", [("correspondent", "correspondent"), ("register", "customer")])
def test_cc_watchers_follow_the_policy(tmp_path, db_url, clock, policy, role) -> None:
    """A Cc'd stranger becomes a watcher as the sender would be treated: a correspondent by default, a
    registered customer in their organisation only under 'register'."""
    app = default_app(tmp_path, db_url, clock, unknown_senders=policy)
    try:
        with transaction(app.sessions) as s:
            Directory(s, app.clock).add_organisation("Other Ltd", ["other.example"])
        app.intake().ingest(make_mail(cc="Carol <carol@other.example>"), ENV)
        carol = contacts(app)["carol@other.example"]
        assert carol.role == role
        assert (carol.organisation_id is not None) == (policy == "register")
        assert ticket(app, 1)["watchers"] == ["carol@other.example"]
    finally:
        app.close()
