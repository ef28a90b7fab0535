"""SLA listener and sweep on SQLite and PostgreSQL with a settable clock."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sla_helpers import add_policy, change, comment, escalations, new_ticket, outbox, staff, ticket

from gateway.sla.sweep import sweep

M = timedelta(minutes=1)


@pytest.fixture
def sla_app(make_app):
    app = make_app(sla={"group_addresses": {"l1": "l1-team@example.com"}})
    staff(app)
    add_policy(app, "critical", response=30, resolution=240, priorities="critical",
               escalate_to=["lead@example.com"])
    add_policy(app, "standard", response=480, resolution=2880)
    return app


def test_created_ticket_gets_deadlines_of_first_matching_policy(sla_app, clock):
    n = new_ticket(sla_app, priority="critical")
    t = ticket(sla_app, n)
    assert t["policy"] == "critical"
    assert t["response_due"] == clock.now + 30 * M
    assert t["resolution_due"] == clock.now + 240 * M
    assert t["warn_response"] == clock.now + 24 * M  # 80 % used
    assert t["next_at"] == clock.now + 24 * M
    low = new_ticket(sla_app, priority="low")
    assert ticket(sla_app, low)["policy"] == "standard"
    assert ticket(sla_app, low)["response_due"] == clock.now + 480 * M


def test_no_policy_no_deadlines(make_app, clock):
    app = make_app()
    n = new_ticket(app)
    t = ticket(app, n)
    assert t["policy"] is None and t["response_due"] is None and t["next_at"] is None
    assert sweep(app).escalations == []


def test_first_response_is_a_public_staff_comment(sla_app, clock):
    n = new_ticket(sla_app)
    clock.advance(minutes=5)
    comment(sla_app, n, "alice@customer.example")  # the customer: no
    comment(sla_app, n, "bob@example.com", internal=True)  # an internal note: no
    comment(sla_app, n, "bob@example.com", source="system")  # a system note / acknowledgement: no
    assert ticket(sla_app, n)["first_response"] is None
    clock.advance(minutes=5)
    comment(sla_app, n, "bob@example.com")
    t = ticket(sla_app, n)
    assert t["first_response"] == clock.now
    assert t["next_at"] == t["resolution_due"] - 48 * M  # only the resolution clock runs: warn at 80 %
    clock.advance(minutes=60)
    sweep(sla_app)
    assert escalations(sla_app, n) == []  # response met in time: nothing


def test_pending_pauses_and_resume_pushes_deadlines(sla_app, clock):
    n = new_ticket(sla_app)
    before = ticket(sla_app, n)
    clock.advance(minutes=10)
    change(sla_app, n, status="pending")
    t = ticket(sla_app, n)
    assert t["paused"] == clock.now and t["next_at"] is None
    clock.advance(hours=5)  # far past every deadline, but paused
    assert sweep(sla_app).escalations == []
    change(sla_app, n, status="open")
    t = ticket(sla_app, n)
    assert t["paused"] is None
    assert t["response_due"] == before["response_due"] + timedelta(hours=5)
    assert t["resolution_due"] == before["resolution_due"] + timedelta(hours=5)
    assert t["next_at"] == t["response_due"] - 6 * M


def test_warning_sent_before_pause_is_not_sent_again_after_resume(sla_app, clock):
    n = new_ticket(sla_app, assignee="bob@example.com")
    clock.advance(minutes=25)
    assert [e[1] for e in sweep(sla_app).escalations] == ["response_warning"]
    change(sla_app, n, status="pending")
    clock.advance(minutes=30)
    change(sla_app, n, status="open")
    clock.advance(minutes=1)
    assert sweep(sla_app).escalations == []  # the warning moved with the deadline
    clock.advance(minutes=5)
    assert [e[1] for e in sweep(sla_app).escalations] == ["response_breach"]
    assert [k for _, k, _, _ in escalations(sla_app, n)] == ["response_warning", "response_breach"]


def test_priority_change_reevaluates_and_met_stays_met(sla_app, clock):
    n = new_ticket(sla_app, priority="low")
    created = clock.now
    clock.advance(minutes=20)
    comment(sla_app, n, "bob@example.com")  # response met under 'standard'
    t0 = ticket(sla_app, n)
    change(sla_app, n, priority="critical")
    t = ticket(sla_app, n)
    assert t["policy"] == "critical"
    assert t["response_due"] == t0["response_due"]  # met: unchanged
    assert t["resolution_due"] == created + 240 * M
    change(sla_app, n, priority="low")
    assert ticket(sla_app, n)["resolution_due"] == created + 2880 * M


def test_raised_to_critical_late_is_a_breach_at_once(sla_app, clock):
    n = new_ticket(sla_app, priority="low", assignee="bob@example.com")
    clock.advance(minutes=45)
    change(sla_app, n, priority="critical")
    r = sweep(sla_app)
    assert [k for _, k, _ in r.escalations] == ["response_breach"]  # the warning is recorded, not mailed
    assert (n, "response_warning") in r.suppressed


def test_resolve_and_reopen_resumes_resolution_clock(sla_app, clock):
    n = new_ticket(sla_app)
    comment(sla_app, n, "bob@example.com")
    t0 = ticket(sla_app, n)
    clock.advance(minutes=30)
    change(sla_app, n, status="resolved")
    assert ticket(sla_app, n)["next_at"] is None
    clock.advance(hours=2)
    change(sla_app, n, status="open")  # reopened: the time spent resolved does not count
    t = ticket(sla_app, n)
    assert t["resolution_due"] == t0["resolution_due"] + timedelta(hours=2)
    assert t["next_at"] is not None


def test_group_change_reevaluates(make_app, clock):
    app = make_app()
    add_policy(app, "vip", response=15, resolution=60, groups="vip")
    add_policy(app, "all", response=120, resolution=600)
    n = new_ticket(app, priority="medium")
    assert ticket(app, n)["policy"] == "all"
    change(app, n, group="vip")
    assert ticket(app, n)["policy"] == "vip"
    assert ticket(app, n)["response_due"] == clock.now + 15 * M


def test_organisation_filter(make_app, clock):
    app = make_app()
    add_policy(app, "acme", response=10, resolution=100, organisations="ACME")
    add_policy(app, "all", response=120, resolution=600)
    a = new_ticket(app, reporter="carol@acme.example", organisation="ACME")
    b = new_ticket(app, reporter="dave@other.example")
    assert ticket(app, a)["policy"] == "acme" and ticket(app, b)["policy"] == "all"


def test_escalations_once_each_and_catch_up_once(sla_app, clock):
    n = new_ticket(sla_app, assignee="bob@example.com", group="l1")
    clock.advance(minutes=24)
    r = sweep(sla_app)
    assert r.escalations == [(n, "response_warning", ["bob@example.com", "l1-team@example.com",
                                                      "lead@example.com"])]
    assert sweep(sla_app).escalations == []  # once
    # the scheduler is down for a day: one catch-up, not one per missed interval
    clock.advance(days=1)
    r = sweep(sla_app)
    assert sorted(k for _, k, _ in r.escalations) == ["resolution_breach", "response_breach"]
    assert (n, "resolution_warning") in r.suppressed
    for _ in range(3):
        assert sweep(sla_app).escalations == []
    assert len(outbox(sla_app)) == 9  # 3 escalations x 3 recipients
    kinds = [k for _, k, _, _ in escalations(sla_app, n)]
    assert sorted(kinds) == sorted(["response_warning", "response_breach", "resolution_breach",
                                    "resolution_warning"])


def test_sweep_now_evaluates_as_of_that_instant(sla_app, clock):
    n = new_ticket(sla_app, assignee="bob@example.com")
    assert sweep(sla_app, clock.now + 10 * M).escalations == []
    assert [k for _, k, _ in sweep(sla_app, clock.now + 25 * M).escalations] == ["response_warning"]
    assert [k for _, k, _ in sweep(sla_app, clock.now + 31 * M).escalations] == ["response_breach"]
    assert escalations(sla_app, n)[0][1] == "response_warning"


def test_pending_reminder_reopens_and_mails_assignee_once(sla_app, clock):
    n = new_ticket(sla_app, priority="low", assignee="bob@example.com")
    change(sla_app, n, status="pending", remind_at=clock.now + timedelta(hours=3))
    clock.advance(hours=2)
    assert sweep(sla_app).reminders == []
    clock.advance(hours=1)
    r = sweep(sla_app)
    assert r.reminders == [(n, ["bob@example.com"])]
    t = ticket(sla_app, n)
    assert t["status"] == "open" and t["remind_at"] is None and t["paused"] is None
    assert sweep(sla_app).reminders == []
    assert outbox(sla_app) == [("sla_pending_reminder", "bob@example.com")]


def test_pending_reminder_goes_to_group_without_assignee(sla_app, clock):
    n = new_ticket(sla_app, priority="low", group="l1")
    change(sla_app, n, status="pending", remind_at=clock.now + timedelta(hours=1))
    clock.advance(hours=1, minutes=1)
    assert sweep(sla_app).reminders == [(n, ["l1-team@example.com"])]


def test_leaving_pending_by_hand_drops_the_reminder(sla_app, clock):
    n = new_ticket(sla_app, priority="low", assignee="bob@example.com")
    change(sla_app, n, status="pending", remind_at=clock.now + timedelta(hours=1))
    change(sla_app, n, status="open")
    assert ticket(sla_app, n)["remind_at"] is None
    clock.advance(hours=2)
    assert sweep(sla_app).reminders == []


def test_config_seed(make_app, clock):
    seed = [{"name": "gold", "response": 60, "resolution": 600, "priorities": ["high", "critical"],
             "escalate_to": ["lead@example.com"], "calendar": "Europe/Berlin mon-fri 09:00-17:00",
             "holidays": ["2026-12-25"]},
            {"name": "rest", "response": 480, "resolution": 4800}]
    app = make_app(sla={"policies": seed})
    n = new_ticket(app, priority="high")  # Monday 2026-11-02 09:30 UTC = 10:30 Berlin
    assert ticket(app, n)["policy"] == "gold"
    assert ticket(app, n)["response_due"] == clock.now + 60 * M
    from gateway.db import transaction
    from gateway.sla.store import PolicyStore

    with transaction(app.sessions) as s:
        store = PolicyStore(s, app.clock)
        assert [r.name for r in store.rows()] == ["gold", "rest"]
        store.remove("gold")
    app2 = make_app(sla={"policies": seed})  # a restart does not bring a removed seed back
    new_ticket(app2, priority="high")
    with app2.sessions() as s:
        assert [r.name for r in PolicyStore(s, app2.clock).rows()] == ["rest"]


def test_a_page_of_reminders_with_recorded_escalations(sla_app, clock):
    """Several reminders in one sweep page (claims, changes and mails batched): each ticket resumes with its
    recorded warning moved along with its deadline (never mailed twice), and the reminder mails, queued
    unrendered, are built at delivery with the sweep's figures and the ticket as it was (open)."""
    import email
    from email import policy

    from gateway.outbound import flush

    warned = new_ticket(sla_app, priority="critical", assignee="bob@example.com", subject="warned")
    clock.advance(minutes=25)
    assert [k for _, k, _ in sweep(sla_app).escalations] == ["response_warning"]
    change(sla_app, warned, status="pending", remind_at=clock.now + timedelta(hours=1))
    others = [new_ticket(sla_app, priority="low", group="l1", subject=f"other {i}") for i in range(5)]
    for n in others:
        change(sla_app, n, status="pending", remind_at=clock.now + timedelta(minutes=30))
    before_due = ticket(sla_app, warned)["response_due"]
    clock.advance(hours=2)
    r = sweep(sla_app, batch_size=100)
    assert sorted(r.reminders) == sorted([(warned, ["bob@example.com"])] + [(n, ["l1-team@example.com"])
                                                                            for n in others])
    assert r.escalations == []  # the warning moved with the pushed deadline: not again
    t = ticket(sla_app, warned)
    assert t["status"] == "open" and t["response_due"] == before_due + timedelta(hours=2)
    kinds = [(k, d) for _, k, d, _ in escalations(sla_app, warned)]
    assert ("response_warning", t["response_due"]) in kinds
    assert all(ticket(sla_app, n)["status"] == "open" for n in others)
    assert sweep(sla_app).reminders == []
    with sla_app.sessions() as s:
        from sqlalchemy import select

        from gateway.models import OutboxMail

        rows = list(s.execute(select(OutboxMail.raw, OutboxMail.params)
                              .where(OutboxMail.event == "sla_pending_reminder")))
    assert len(rows) == 6 and all(raw is None and p["extra"]["sla"]["kind"] == "pending_reminder" for raw, p in rows)
    flush(sla_app)
    box = sla_app.config.data_dir / "outbox-maildir" / "new"
    mails = [email.message_from_bytes(p.read_bytes(), policy=policy.default) for p in box.iterdir()]
    reminders = [m for m in mails if "warned" in str(m["Subject"]) and "eminder" in str(m["Subject"])]
    assert len(reminders) == 1 and f"[#{warned}]" in str(reminders[0]["Subject"])
    # a further pass: the clock still escalates when the pushed deadline comes
    clock.advance(minutes=10)
    assert [k for _, k, _ in sweep(sla_app).escalations] == ["response_breach"]
