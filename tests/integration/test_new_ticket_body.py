"""Issue 16, class 6: a new ticket's description loses the quoted history and keeps the sender's signature; its
full text keeps the whole mail (mails made here)."""

from __future__ import annotations

import pytest
from conftest import make_config, new_sqlite_database

from gateway.app import build_app
from gateway.intake import Envelope
from gateway.quotes import strip_reply
from gateway.tickets import Tickets
from gateway.views import ticket_dict

SIGNATURE = "-- \nCarla Customer\nHead of IT, Example Ltd\n+49 30 1234567"
REPLY = ("The VPN drops every hour since Monday.\n\nThanks,\nCarla\n\n" + SIGNATURE + "\n\n"
         "On Mon, Nov 2, 2026 at 9:00 AM, Vendor Sales <sales@vendor.example> wrote:\n\n"
         "> Dear Carla, your VPN licence was renewed.\n> Regards, Sales\n")


@pytest.fixture
def app(tmp_path):
    a = build_app(make_config(tmp_path, new_sqlite_database(tmp_path / "db.sqlite")))
    yield a
    a.close()


def _mail(subject: str, body: str, extra: str = "") -> bytes:
    return (f"From: Carla Customer <carla@customer.example>\nTo: support@example.com\nSubject: {subject}\n{extra}"
            f"Content-Type: text/plain; charset=utf-8\n\n{body}").encode()


def _ticket(app, raw: bytes) -> dict:
    r = app.intake().ingest(raw, Envelope(source="file"))
    assert r.outcome == "ticket", (r.reason, r.trace)
    with app.sessions() as s:
        return ticket_dict(s, Tickets(s, clock=app.clock).get(r.ticket_number), full=True)


def test_a_new_ticket_keeps_the_signature_and_loses_the_quoted_history(app) -> None:
    t = _ticket(app, _mail("Re: VPN licence", REPLY))
    assert t["description"] == "The VPN drops every hour since Monday.\n\nThanks,\nCarla\n\n" + SIGNATURE
    assert t["description_full"] == REPLY.strip("\n")
    assert "wrote:" not in t["description"] and "> Dear Carla" in t["description_full"]


@pytest.mark.parametrize("signature", ["Sent from my iPhone", "Von meinem iPhone gesendet", "Get Outlook for Android"])
def test_a_mobile_signature_stays_in_a_new_ticket(app, signature: str) -> None:
    body = f"Printer jammed again.\n\n{signature}\n\nOn Mon, Nov 2, 2026, Bob <bob@example.org> wrote:\n> ok\n"
    assert _ticket(app, _mail("Printer", body))["description"] == f"Printer jammed again.\n\n{signature}"


def test_a_forward_keeps_everything(app) -> None:
    body = ("See below.\n\n" + "From: Vendor <v@vendor.example>\nSent: Monday, November 2, 2026 09:00\n"
            "To: Carla\nSubject: Licence\n\nYour licence expires.\n")
    t = _ticket(app, _mail("FW: Licence", body))
    assert t["description"] == body.strip()


def test_a_comment_still_drops_the_signature(app) -> None:
    t = _ticket(app, _mail("VPN", "The VPN drops.\n"))
    raw = _mail(f"Re: [#{t['number']}] VPN", "Still broken.\n\n" + SIGNATURE + "\n",
                extra="In-Reply-To: <nothing@example.com>\n")
    r = app.intake().ingest(raw, Envelope(source="file"))
    assert r.outcome == "comment", (r.reason, r.trace)
    with app.sessions() as s:
        c = ticket_dict(s, Tickets(s, clock=app.clock).get(t["number"]), full=True)["comments"][-1]
    assert c["body"] == "Still broken."
    assert "Head of IT" in c["full_text"]


def test_keep_signature_changes_only_the_signature() -> None:
    assert strip_reply(REPLY) == "The VPN drops every hour since Monday.\n\nThanks,\nCarla"
    assert strip_reply(REPLY, keep_signature=True) == strip_reply(REPLY) + "\n\n" + SIGNATURE
