"""Contract tests of the broker against fake Jira Service Management, Zammad and SMAX servers (real HTTP on
loopback, tests/fakedesks.py), each test once per desk and on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta

from backends.conftest import first_mail
from mails import make_mail, message_id_of

from gateway.backends.store import BackendItem, BackendPush, BackendState
from gateway.models import Comment, OutboxMail

ALICE = "alice@customer.example"


def reply(original: bytes, body: str, sender: str = "Alice Customer <alice@customer.example>", **kw) -> bytes:
    mid = message_id_of(original)
    return make_mail(sender=sender, subject="Re: Printer on fire", body=body, in_reply_to=mid, references=mid, **kw)


def delivered(gw, smax_twice: bool = True):
    """Flush; SMAX creates a new person asynchronously, so its first create waits one round."""
    c = gw.flush()
    if gw.desk.kind == "smax" and smax_twice and gw.rows(BackendPush, status="queued"):
        gw.clock.advance(seconds=20)
        c = gw.flush()
    return c


def test_create_comment_attachment(gateway):
    gw = gateway()
    raw = first_mail(attachments=[("log.txt", "text/plain", b"line 1\nline 2\n")])
    assert gw.mail(raw, ALICE).outcome == "ticket"
    delivered(gw)
    desk = gw.desk
    assert len(desk.keys()) == 1
    key = desk.keys()[0]
    link = gw.link()
    assert link.remote_key == key and link.customer_id
    assert desk.attachment_names(key) == ["log.txt"]
    assert gw.mail(reply(raw, "Still burning, with smoke now."), ALICE).outcome == "comment"
    c = gw.flush()
    assert c.failed == 0
    bodies = desk.comment_bodies(key)
    assert any("Still burning, with smoke now." in b and ALICE in b for b in bodies)
    assert [r.status for r in gw.rows(BackendPush)] == ["done"] * len(gw.rows(BackendPush))
    out = gw.rows(BackendItem, direction="out", kind="comment")
    assert len(out) == 1


def test_customer_found_or_created_once(gateway):
    gw = gateway()
    desk = gw.desk
    if desk.kind == "jira":  # Alice is a customer of the site already: 409 (strictConflictStatusCode) -> search
        desk.customers[ALICE] = {"accountId": "acc-existing", "displayName": "Alice", "emailAddress": ALICE}
    gw.mail(first_mail(), ALICE)
    gw.mail(make_mail(sender=f"Alice <{ALICE}>", subject="Second problem", body="Also the fax."), ALICE)
    delivered(gw)
    assert len(desk.keys()) == 2
    if desk.kind == "jira":
        assert desk.calls("POST", "/rest/servicedeskapi/customer") == 1  # the second ticket knew her
        assert desk.calls("GET", "/rest/api/3/user/search") == 1
        assert {i["reporter"] for i in desk.issues.values()} == {"acc-existing"}
        assert "acc-existing" in desk.desk_customers
    elif desk.kind == "zammad":
        customers = {t["customer_id"] for t in desk.tickets.values()}
        assert len(customers) == 1 and desk.users[customers.pop()]["email"] == ALICE
    else:
        alice = [p for p in desk.persons.values() if p["Email"] == ALICE]
        assert len(alice) == 1  # created once, asynchronously, though two tickets waited for her
        assert {r["RequestedByPerson"] for r in desk.requests.values()} == {alice[0]["Id"]}


def authenticated(domain: str = "customer.example") -> dict[str, str]:
    """Headers our MTA (trusted as mx.gw.test) puts on a mail whose From domain passed DMARC."""
    return {"Authentication-Results": f"mx.gw.test; dmarc=pass header.from={domain}",
            "Received": f"from mail.{domain} by mx.gw.test; Mon, 2 Nov 2026 09:00:00 +0000"}


def participants(gw, key: str) -> list[str]:
    desk = gw.desk
    by_id = {c["accountId"]: e for e, c in desk.customers.items()}
    return sorted(by_id[a] for a in desk.issues[key]["participants"])


def test_participants_from_cc(gateway):
    """Cc'd people become request participants only when the gateway itself may mail them (gateway.guard.relay):
    the desk mails its participants, so pushing a stranger's Cc list would make the desk the relay."""
    gw = gateway(authentication={"trusted_authserv_ids": ["mx.gw.test"], "verify": False})
    gw.mail(first_mail(cc="Bob <bob@customer.example>", headers=authenticated()), ALICE)
    delivered(gw)
    desk = gw.desk
    if desk.kind == "jira":
        assert participants(gw, desk.keys()[0]) == ["bob@customer.example"]
    else:  # Zammad and SMAX have no request participants: the request is made all the same
        assert len(desk.keys()) == 1


def test_participants_never_unvouched_and_added_later(gateway):
    gw = gateway(authentication={"trusted_authserv_ids": ["mx.gw.test"], "verify": False})
    raw = first_mail(cc="Mallory List <victims@elsewhere.example>")  # no authentication result at all
    assert gw.mail(raw, ALICE).outcome == "ticket"
    delivered(gw)
    desk = gw.desk
    (key,) = desk.keys()
    assert [w.contact.email for w in gw.ticket().watchers] == ["victims@elsewhere.example"]  # kept, not mailed
    if desk.kind == "jira":
        assert participants(gw, key) == [] and "victims@elsewhere.example" not in desk.customers
    # her authenticated reply adds Carol: pushed after the create, on its own
    later = reply(raw, "Adding Carol from accounting.", cc="Carol <carol@customer.example>", headers=authenticated())
    assert gw.mail(later, ALICE).outcome == "comment"
    assert [r.op for r in gw.rows(BackendPush, status="queued")] == ["comment", "participants"]
    assert gw.flush().failed == 0
    assert not gw.rows(BackendPush, status="queued")
    if desk.kind == "jira":
        assert participants(gw, key) == ["carol@customer.example"]
        assert desk.calls("POST", f"/rest/servicedeskapi/request/{key}/participant") == 1
    elif desk.kind == "zammad":
        assert not [u for u in desk.users.values() if u.get("email") == "carol@customer.example"]


def test_staff_comment_and_status_back(gateway):
    gw = gateway()
    gw.mail(first_mail(), ALICE)
    delivered(gw)
    key = gw.desk.keys()[0]
    before = len(gw.rows(OutboxMail, recipient=ALICE))
    gw.desk.agent_comment(key, "Please unplug it and wait.")
    gw.desk.set_status(key, _remote(gw, "pending"))
    gw.clock.advance(minutes=1)
    gw.poll()
    t = gw.ticket()
    assert t.status == "pending"
    assert t.sla_paused_at is not None  # the SLA clock follows the desk's status
    assert t.first_response_at is not None  # the agent's public comment is the first response
    comments = gw.rows(Comment, source="backend")
    assert len(comments) == 1 and comments[0].body.strip() == "Please unplug it and wait." and comments[0].by_staff
    mails = gw.rows(OutboxMail, recipient=ALICE)
    assert {m.event for m in mails[before:]} == {"comment", "status"}  # the customer hears of both by mail
    assert not gw.rows(BackendPush, status="queued")  # nothing of it is pushed back
    gw.desk.set_status(key, _remote(gw, "open"))
    gw.clock.advance(minutes=1)
    gw.poll()
    assert gw.ticket().status == "open" and gw.ticket().sla_paused_at is None


def test_notifications_left_to_the_desk(gateway):
    gw = gateway(notifications="backend")
    gw.mail(first_mail(), ALICE)
    delivered(gw)
    key = gw.desk.keys()[0]
    before = len(gw.rows(OutboxMail, recipient=ALICE))
    gw.desk.agent_comment(key, "We are on it.")
    gw.poll()
    assert len(gw.rows(Comment, source="backend")) == 1
    assert len(gw.rows(OutboxMail, recipient=ALICE)) == before


def test_unmapped_remote_status_is_reported_not_applied(gateway):
    gw = gateway()
    gw.mail(first_mail(), ALICE)
    delivered(gw)
    key = gw.desk.keys()[0]
    odd = {"jira": "Waiting for support", "zammad": "merged", "smax": "RequestStatusWeird"}[gw.desk.kind]
    from gateway.backends import broker_settings

    statuses = dict(broker_settings(gw.app).statuses)
    if gw.desk.kind == "jira":  # take the status out of the mapping
        gw = gateway(statuses={k: v for k, v in statuses.items() if k != odd})
        gw.desk.set_status(key, "In progress")
        gw.poll()
        assert gw.ticket().status == "in_progress"
    gw.desk.set_status(key, odd)
    gw.poll()
    assert gw.ticket().status in ("open", "in_progress")
    assert "not in [backend.statuses]" in (gw.link().status_note or "")


def test_own_comment_echo_not_imported(gateway):
    gw = gateway()
    raw = first_mail()
    gw.mail(raw, ALICE)
    delivered(gw)
    gw.mail(reply(raw, "Here is more detail."), ALICE)
    gw.flush()
    key = gw.desk.keys()[0]
    n_local = len(gw.rows(Comment))
    n_remote = len(gw.desk.comment_bodies(key))
    gw.desk.own_comment(key, "Alice Customer <alice@customer.example>:\n\nHere is more detail.")  # answer lost
    n_remote += 1
    gw.poll()
    gw.poll()
    assert len(gw.rows(Comment)) == n_local  # our own comments came back: not new comments
    assert len(gw.desk.comment_bodies(key)) == n_remote  # and not sent again
    assert not gw.rows(BackendPush, status="queued")
    assert not gw.rows(Comment, source="backend")


def test_create_answer_lost_no_duplicate(gateway):
    gw = gateway()
    gw.desk.lose_next_create = True
    gw.mail(first_mail(), ALICE)
    c = delivered(gw)
    assert len(gw.desk.keys()) == 1  # the desk made it; we never heard
    assert gw.link().remote_key is None and c.deferred >= 1
    row = gw.rows(BackendPush, op="create")[0]
    assert row.status == "queued" and row.next_attempt_at > gw.clock()
    gw.clock.advance(minutes=5)
    gw.flush()
    assert len(gw.desk.keys()) == 1  # found by our reference, not made twice
    assert gw.link().remote_key == gw.desk.keys()[0]
    assert gw.rows(BackendPush, op="create")[0].status == "done"


def test_desk_down_for_an_hour_loses_nothing(gateway):
    gw = gateway()
    gw.desk.down = True
    raw = first_mail()
    gw.mail(raw, ALICE)
    for n in range(3):
        gw.mail(reply(raw, f"Update number {n}."), ALICE)
    for _ in range(12):  # an hour of delivery rounds against a desk answering 503
        c = gw.flush()
        assert c.done == 0
        gw.clock.advance(minutes=5)
    assert {r.status for r in gw.rows(BackendPush)} == {"queued"}
    assert not gw.desk.keys()
    gw.desk.down = False
    gw.clock.advance(minutes=15)
    delivered(gw)
    key = gw.desk.keys()[0]
    texts = [b for b in gw.desk.comment_bodies(key) if "Update number" in b]
    assert [t.split("Update number ")[1][0] for t in texts] == ["0", "1", "2"]  # all, in order
    assert {r.status for r in gw.rows(BackendPush)} == {"done"}


def test_rate_limit_honours_retry_after(gateway):
    gw = gateway()
    gw.mail(first_mail(), ALICE)
    gw.desk.rate_limit = 1
    gw.desk.retry_after = "120"
    c = gw.flush()
    assert c.done == 0
    st = gw.rows(BackendState)[0]
    assert st.paused_until == gw.clock() + timedelta(seconds=120)
    calls = len(gw.desk.log)
    gw.clock.advance(seconds=60)
    gw.flush()
    gw.poll()
    assert len(gw.desk.log) == calls  # nothing sent while the desk asked us to wait
    gw.clock.advance(seconds=61)
    delivered(gw)
    assert len(gw.desk.keys()) == 1


def test_webhook_bad_signature_ignored(gateway):
    from gateway.backends import handle_webhook

    gw = gateway()
    gw.mail(first_mail(), ALICE)
    delivered(gw)
    key = gw.desk.keys()[0]
    gw.desk.agent_comment(key, "Answer from the desk.")
    body = json.dumps(gw.desk.webhook(key)).encode()
    name = gw.desk.kind
    for bad in ({}, {"X-Hub-Signature": gw.desk.sign(body, b"wrong secret")},
                {"X-Hub-Signature": gw.desk.sign(body + b" ", b"s3cret-webhook-key")}):
        r = handle_webhook(gw.app, name, bad, body)
        assert r.status == 401
    assert gw.link().refresh_at is None and not gw.rows(BackendState)
    good = {"X-Hub-Signature": gw.desk.sign(body, b"s3cret-webhook-key")}
    r = handle_webhook(gw.app, name, good, body)
    assert r.status == 202 and gw.link().refresh_at is not None
    gw.run(lambda b: b.ring())
    assert [c.body.strip() for c in gw.rows(Comment, source="backend")] == ["Answer from the desk."]
    assert gw.link().refresh_at is None


def test_attachment_too_big_leaves_a_note(gateway):
    gw = gateway(max_attachment_bytes=1000)
    gw.mail(first_mail(attachments=[("dump.bin", "application/octet-stream", b"x" * 5000),
                                    ("small.txt", "text/plain", b"ok")]), ALICE)
    delivered(gw)
    gw.flush()
    key = gw.desk.keys()[0]
    assert gw.desk.attachment_names(key) == ["small.txt"]
    notes = gw.rows(Comment, source="system")
    assert len(notes) == 1 and "dump.bin" in notes[0].body and notes[0].internal
    assert any("dump.bin" in b for b in gw.desk.comment_bodies(key))  # the desk's agents see the note too


def _remote(gw, local: str) -> str:
    from fakedesks import STATUS_FOR

    return STATUS_FOR[gw.desk.kind][local]


def test_refused_create_holds_its_ticket_only(gateway, desk):
    """A create the desk refuses fails (visible, retryable); that ticket's later pushes wait for it, in order,
    and other tickets go on."""
    from gateway.backends.queue import retry

    good = {"jira": "10", "zammad": "Users", "smax": "11001"}[desk.kind]
    gw = gateway(request_types={"*": "no-such-type", "problem": good})
    raw = first_mail()
    gw.mail(raw, ALICE)
    gw.mail(reply(raw, "More about the first one."), ALICE)
    gw.mail(make_mail(sender=f"Alice <{ALICE}>", subject="Other", body="Another problem."), ALICE)
    with gw.app.sessions() as s, s.begin():
        from gateway.tickets import Tickets

        t2 = Tickets(s, clock=gw.clock, listeners=gw.app.listeners).get(2)
        Tickets(s, clock=gw.clock, listeners=gw.app.listeners).change(t2, type="problem")
    delivered(gw)
    failed = gw.rows(BackendPush, status="failed")
    assert [r.op for r in failed] == ["create"] and failed[0].ticket_id == gw.ticket(1).id
    assert len(gw.desk.keys()) == 1 and gw.link(2).remote_key  # the other ticket went through
    waiting = [r for r in gw.rows(BackendPush, status="queued") if r.ticket_id == gw.ticket(1).id]
    assert [r.op for r in waiting] == ["comment"]
    gw2 = gateway(request_types={"*": good})  # the mapping fixed
    retry(gw2.app.sessions, failed[0].id, gw2.clock())
    gw2.clock.advance(hours=1)
    delivered(gw2)
    key = gw2.link(1).remote_key
    assert key and any("More about the first one." in b for b in gw2.desk.comment_bodies(key))

