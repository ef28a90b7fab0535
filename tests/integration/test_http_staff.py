"""Staff work over the HTTP API on loopback (issue 17 with issue 13's ticket model): links, time entries,
watchers and merge under /api/v1/tickets/{number}/..., PATCH with organisation, tags and a pending reminder,
the refusals as problem+json (404/409/422), and mail by SMTP to a merged ticket landing on the target. SQLite and
PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from mails import message_id_of
from sqlalchemy import select
from test_http_api import all_pages, gateways, problem
from test_smtp import make_mail

from gateway import ourmail
from gateway.models import OutboxMail
from gateway.ops import tickets as ticket_ops
from gateway.ops import work
from gateway.ops.errors import Conflict


@pytest.fixture
def gw(tmp_path, db_url):
    with gateways(tmp_path, db_url) as start:
        yield start


def _new(c: Any, subject: str, reporter: str) -> int:
    r = c.post("/api/v1/tickets", json={"subject": subject, "reporter": reporter, "description": subject})
    assert r.status_code == 201, r.text
    return int(r.json()["number"])


def test_links_and_the_blocked_close(gw) -> None:
    g = gw()
    with g.client("write") as c:
        a, b, x = (_new(c, s, "alice@customer.example") for s in ("Mail down", "DNS down", "Switch broken"))
        r = c.post(f"/api/v1/tickets/{a}/links", json={"number": b, "kind": "blocked-by"})
        assert r.status_code == 201 and r.json()["kind"] == "blocked-by" and r.json()["created"] is True
        assert c.post(f"/api/v1/tickets/{a}/links", json={"number": b, "kind": "blocked by"}).status_code == 200
        problem(c.post(f"/api/v1/tickets/{b}/links", json={"number": a, "kind": "blocked-by"}), 409)  # a cycle
        problem(c.post(f"/api/v1/tickets/{a}/links", json={"number": x, "kind": "parent"}), 422)
        problem(c.post(f"/api/v1/tickets/{a}/links", json={"number": a, "kind": "relates"}), 422)
        problem(c.post(f"/api/v1/tickets/{a}/links", json={"number": 999, "kind": "relates"}), 404)
        problem(c.post("/api/v1/tickets/999/links", json={"number": a, "kind": "relates"}), 404)
        assert c.post(f"/api/v1/tickets/{x}/links", json={"number": a, "kind": "causes"}).status_code == 201
        links = all_pages(c, f"/api/v1/tickets/{a}/links", limit=1)
        assert [(link["kind"], link["number"]) for link in links] == [("blocked-by", b), ("caused-by", x)]
        assert [(link["kind"], link["number"]) for link in all_pages(c, f"/api/v1/tickets/{b}/links")] == [
            ("blocks", a)]
        # resolving a ticket an open ticket blocks is refused, with the reason
        body = problem(c.patch(f"/api/v1/tickets/{a}", json={"status": "resolved"}), 409)
        assert f"blocked by #{b} (open)" in body["detail"]
        assert c.patch(f"/api/v1/tickets/{b}", json={"status": "closed"}).status_code == 200
        assert c.patch(f"/api/v1/tickets/{a}", json={"status": "resolved"}).json()["changes"]["status"] == [
            "open", "resolved"]
        assert c.delete(f"/api/v1/tickets/{a}/links/{x}", params={"kind": "caused-by"}).status_code == 204
        problem(c.delete(f"/api/v1/tickets/{a}/links/{x}"), 404)
        assert c.get(f"/api/v1/tickets/{a}").json()["links"] == [
            {"kind": "blocked-by", "number": b, "subject": "DNS down", "status": "closed"}]


def test_patch_fields_time_entries_and_watchers(gw) -> None:
    g = gw()
    with g.client("admin") as admin:
        assert admin.post("/api/v1/organisations", json={"name": "Customer Ltd", "visibility": "organisation",
                                                         "domains": ["customer.example"]}).status_code == 201
        assert admin.post("/api/v1/users", json={"email": "sam@example.com", "role": "staff"}).status_code == 201
        problem(admin.patch("/api/v1/organisations/Customer Ltd", json={"visibility": "public"}), 422)
    with g.client("write") as c:
        n = _new(c, "Printer", "bob@elsewhere.example")
        r = c.patch(f"/api/v1/tickets/{n}", json={"organisation": "Customer Ltd", "add_tags": ["printer", "hw"],
                                                  "group": "office", "remind_at": "2030-01-02T09:00:00Z"})
        assert r.status_code == 200, r.text
        ch = r.json()["changes"]
        assert ch["organisation"] == [None, "Customer Ltd"] and ch["tags"] == [[], ["printer", "hw"]]
        assert ch["status"] == ["open", "pending"] and r.json()["ticket"]["sla"]["remind_at"] == "2030-01-02T09:00:00Z"
        r = c.patch(f"/api/v1/tickets/{n}", json={"remove_tags": ["hw"], "organisation": None, "status": "open"})
        assert r.json()["changes"]["tags"] == [["printer", "hw"], ["printer"]]
        assert r.json()["ticket"]["organisation"] is None and r.json()["ticket"]["sla"]["remind_at"] is None
        problem(c.patch(f"/api/v1/tickets/{n}", json={"organisation": "Nope"}), 404)
        assert c.get("/api/v1/tickets", params={"tag": "printer", "text": "print"}).json()["items"][0]["number"] == n

        r = c.post(f"/api/v1/tickets/{n}/time-entries", json={"duration": "1h30m", "note": "on site",
                                                              "author": "sam@example.com"})
        assert r.status_code == 201 and r.json()["minutes"] == 90 and r.json()["total_minutes"] == 90
        assert c.post(f"/api/v1/tickets/{n}/time-entries", json={"minutes": 15}).json()["total"] == "1h45m"
        problem(c.post(f"/api/v1/tickets/{n}/time-entries", json={"duration": "a while"}), 422)
        problem(c.post(f"/api/v1/tickets/{n}/time-entries", json={"duration": "1h", "minutes": 3}), 422)
        problem(c.post("/api/v1/tickets/999/time-entries", json={"minutes": 3}), 404)
        page = c.get(f"/api/v1/tickets/{n}/time-entries", params={"limit": 1}).json()
        assert page["total_minutes"] == 105 and len(page["items"]) == 1 and page["next_cursor"]
        entries = all_pages(c, f"/api/v1/tickets/{n}/time-entries", limit=1)
        assert [(e["minutes"], e["author"], e["note"]) for e in entries] == [(90, "sam@example.com", "on site"),
                                                                           (15, None, "")]
        assert c.get(f"/api/v1/tickets/{n}").json()["time_minutes"] == 105

        assert c.post(f"/api/v1/tickets/{n}/watchers", json={"email": "Eve@Customer.example"}).status_code == 201
        assert c.post(f"/api/v1/tickets/{n}/watchers", json={"email": "eve@customer.example"}).status_code == 200
        problem(c.post(f"/api/v1/tickets/{n}/watchers", json={"email": "not an address"}), 422)
        assert [w["email"] for w in all_pages(c, f"/api/v1/tickets/{n}/watchers")] == ["eve@customer.example"]
        assert c.delete(f"/api/v1/tickets/{n}/watchers/eve@customer.example").status_code == 204
        problem(c.delete(f"/api/v1/tickets/{n}/watchers/eve@customer.example"), 404)
    with g.client("read") as ro:
        problem(ro.post(f"/api/v1/tickets/{n}/watchers", json={"email": "x@y.example"}), 403)


def test_merge_then_mail_to_the_merged_ticket_lands_on_the_target(gw) -> None:
    g = gw()
    with g.client("write") as c:
        target = _new(c, "VPN down", "alice@customer.example")
        first = make_mail(sender="Bob <bob@other.example>", subject="VPN down here too")
        g.smtp(first)
        (mail,) = g.running.wait_processed(1)
        assert mail.outcome == "ticket"
        source = c.get(f"/api/v1/mail/{mail.id}").json()["ticket"]
        assert c.post(f"/api/v1/tickets/{source}/comments", json={"body": "Looking."}).status_code == 201
        c.post(f"/api/v1/tickets/{source}/time-entries", json={"minutes": 10})
        r = c.post(f"/api/v1/tickets/{source}/merge", json={"into": target})
        assert r.status_code == 200, r.text
        assert r.json()["moved"]["comments"] == 1 and r.json()["moved"]["time_entries"] == 1
        problem(c.post(f"/api/v1/tickets/{source}/merge", json={"into": target}), 409)
        problem(c.post(f"/api/v1/tickets/{target}/merge", json={"into": target}), 422)
        problem(c.post(f"/api/v1/tickets/{target}/merge", json={"into": 999}), 404)
        merged = c.get(f"/api/v1/tickets/{source}").json()
        assert merged["status"] == "closed" and merged["merged_into"] == target
        # Bob replies to his first mail: it lands on the target, where he is a watcher now
        g.smtp(make_mail(sender="Bob <bob@other.example>", subject="Re: VPN down here too",
                         in_reply_to=message_id_of(first), body="Still down."))
        reply = g.running.wait_processed(2)[-1]
        assert reply.outcome == "comment" and c.get(f"/api/v1/mail/{reply.id}").json()["ticket"] == target
        comments = all_pages(c, f"/api/v1/tickets/{target}/comments")
        assert [x["body"] for x in comments] == ["Looking.", "Still down."]
        # ... and so does a new mail to the signed reply address his acknowledgement of the merged ticket gave
        with g.app.sessions() as sess:
            ack = sess.scalars(select(OutboxMail).where(OutboxMail.recipient == "bob@other.example",
                                                        OutboxMail.event == "ticket_created")).one()
            parsed = ourmail.parse_token(ack.token or "")
            assert ack.token and parsed is not None and parsed.number == source
        g.smtp(make_mail(sender="Bob <bob@other.example>", to=ourmail.token_address("support@example.com", ack.token),
                         subject="one more thing", body="And DNS too."), rcpt="support@example.com")
        third = g.running.wait_processed(3)[-1]
        assert third.outcome == "comment" and c.get(f"/api/v1/mail/{third.id}").json()["ticket"] == target
        t = c.get(f"/api/v1/tickets/{target}").json()
        assert "bob@other.example" in t["watchers"] and t["time_minutes"] == 10
        assert c.get(f"/api/v1/tickets/{source}").json()["comment_count"] == 0


@pytest.mark.parametrize("refuse", [True, False])
def test_the_blocked_close_rule_can_be_turned_off(make_app, refuse) -> None:
    app = make_app(gateway={"refuse_close_while_blocked": refuse})
    a = ticket_ops.create_ticket(app, {"subject": "A", "reporter": "a@x.example"})[0]["number"]
    b = ticket_ops.create_ticket(app, {"subject": "B", "reporter": "b@x.example"})[0]["number"]
    work.link_tickets(app, b, a, "blocks")
    if refuse:
        with pytest.raises(Conflict, match=f"blocked by #{b}"):
            ticket_ops.change_ticket(app, a, {"status": "closed"})
    else:
        assert ticket_ops.change_ticket(app, a, {"status": "closed"})["changes"]["status"] == ["open", "closed"]
