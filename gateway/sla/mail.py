"""SLA mails (escalations and pending reminders) through the outbound helper's outbox.

Adapter over `gateway.outbound.notify.Outbound` (issue 4), which owns composing, the signed reply addresses,
the ticket's thread headers (In-Reply-To/References/Thread-Index), Message-IDs and the outbox rows. We reuse
the Outbound listener the App already has (so `outbound.enabled` and its settings apply) and queue cheap rows
(no rendering in the sweep) carrying our templates' extra variable `sla`, frozen at the sweep's instant; the
delivery round renders them. The rows are queued in the caller's transaction (one multi-row insert per
sweep page, `send_many`), so a mail exists if and only if the escalation's claim row commits.

Templates: `templates/sla_<kind>.{subject,txt,html}.j2` for kind in response_warning, response_breach,
resolution_warning, resolution_breach, pending_reminder -- the outbound format (see templates/README.md),
with one more variable `sla`:

    sla.kind          response_warning | response_breach | resolution_warning | resolution_breach | pending_reminder
    sla.what          "response warning", ...
    sla.clock         response | resolution | reminder
    sla.deadline      the deadline (or the reminder date), "2026-11-02 10:00 UTC"
    sla.due_at        when this became due (the warning time or the deadline)
    sla.now           the sweep's instant
    sla.left          "12 minutes left" / "overdue by 1 hour 5 minutes" (relative to sla.now)
    sla.policy        the policy's name (empty for reminders)
    sla.target        "30 minutes" (the clock's target; empty for reminders)
    sla.assignee      the assignee's address (or empty)
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from gateway.models import Contact, Ticket
from gateway.sla.store import StoredPolicy

if TYPE_CHECKING:
    from gateway.host import AppHost
    from gateway.outbound.notify import Outbound
    from gateway.outbound.render import Rendered, Templates

log = logging.getLogger(__name__)

KINDS = ("response_warning", "response_breach", "resolution_warning", "resolution_breach", "pending_reminder")


def event_name(kind: str) -> str:
    return f"sla_{kind}"


def duration_text(minutes: float) -> str:
    minutes = int(round(abs(minutes)))
    d, rest = divmod(minutes, 24 * 60)
    h, m = divmod(rest, 60)
    parts = [f"{d} day{'s' * (d != 1)}"] if d else []
    parts += [f"{h} hour{'s' * (h != 1)}"] if h else []
    parts += [f"{m} minute{'s' * (m != 1)}"] if m or not parts else []
    return " ".join(parts)


class _WithSla:
    """Templates wrapper: every render gets the `sla` variable too."""

    def __init__(self, inner: Templates, sla: dict[str, Any]) -> None:
        self.inner = inner
        self.sla = sla

    def render(self, event: str, ctx: dict[str, Any]) -> Rendered:
        return self.inner.render(event, {**ctx, "sla": self.sla})


def sample_sla(kind: str) -> dict[str, Any]:
    return {"kind": kind, "what": kind.replace("_", " "), "clock": kind.split("_")[0] if kind != "pending_reminder"
            else "reminder", "deadline": "2026-11-02 10:00 UTC", "due_at": "2026-11-02 09:54 UTC",
            "now": "2026-11-02 09:55 UTC", "left": "5 minutes left", "policy": "critical",
            "target": "30 minutes", "assignee": "bob@example.com"}


def sample_events() -> list[tuple[str, dict[str, Any]]]:
    """(event, sample context) for the start-up template check (gateway.outbound.check)."""
    from gateway.outbound.render import sample_context

    return [(event_name(kind), {**sample_context("assignment"), "sla": sample_sla(kind)}) for kind in KINDS]


def sla_values(t: Ticket, kind: str, *, deadline: datetime, due_at: datetime, now: datetime,
               policy: StoredPolicy | None) -> dict[str, Any]:
    """The template variable `sla` (see above), computed at the sweep's instant."""
    from gateway.outbound.render import fmt_time

    minutes = (deadline - now).total_seconds() / 60
    clock = "reminder" if kind == "pending_reminder" else kind.split("_")[0]
    target = ""
    if policy is not None and clock != "reminder":
        p = policy.policy
        target = duration_text(p.response_minutes if clock == "response" else p.resolution_minutes)
        if p.calendar is not None:
            target += " (business hours)"
    return {"kind": kind, "what": kind.replace("_", " "), "clock": clock, "deadline": fmt_time(deadline),
            "due_at": fmt_time(due_at), "now": fmt_time(now),
            "left": (f"{duration_text(minutes)} left" if minutes > 0 else
                     f"overdue by {duration_text(minutes)}" if minutes < 0 else "due now"),
            "policy": policy.name if policy is not None and clock != "reminder" else "",
            "target": target, "assignee": t.assignee.email if t.assignee else ""}


SlaMail = tuple[Ticket, str, list[str], datetime, datetime, "StoredPolicy | None"]
"""(ticket, kind, recipients, deadline, due_at, policy): one escalation or reminder to mail."""


class SlaMailer:
    def __init__(self, app: AppHost) -> None:
        from gateway.outbound.notify import notifier_of

        self.app = app
        self.groups: dict[str, str] = {k: v.lower() for k, v in app.config.get("sla", "group_addresses").items()}
        self.outbound: Outbound | None = notifier_of(app)
        if self.outbound is None:
            log.debug("SLA: no outbound listener on the App (outbound disabled?): escalations are recorded, "
                      "not mailed")

    @staticmethod
    def check_templates(templates: Templates) -> None:
        """Render every SLA template with sample data (raises on a missing file or variable)."""
        from gateway.outbound.render import sample_context

        for kind in KINDS:
            _WithSla(templates, sample_sla(kind)).render(event_name(kind), sample_context("assignment"))

    # Recipients ----------------------------------------------------------------------------------------------
    def _usable(self, email: str, contact: Contact | None = None) -> bool:
        if self.outbound is None:
            return "@" in email
        from gateway.outbound.notify import Recipient

        return bool(self.outbound.usable(Recipient(email, "", contact)))

    def group_address(self, t: Ticket) -> str | None:
        return self.groups.get(t.group) if t.group else None

    def escalation_recipients(self, s: Session, t: Ticket, policy: StoredPolicy | None) -> list[str]:
        out: list[str] = []
        if (policy is None or policy.notify_assignee) and t.assignee is not None \
                and self._usable(t.assignee.email, t.assignee):
            out.append(t.assignee.email)
        group = self.group_address(t)
        if (policy is None or policy.notify_group) and group and self._usable(group):
            out.append(group)
        for addr in (policy.escalate_to if policy is not None else ()):
            if self._usable(addr):
                out.append(addr)
        return list(dict.fromkeys(a.lower() for a in out))

    def reminder_recipients(self, s: Session, t: Ticket) -> list[str]:
        if t.assignee is not None and self._usable(t.assignee.email, t.assignee):
            return [t.assignee.email.lower()]
        group = self.group_address(t)
        return [group] if group and self._usable(group) else []

    # Sending -------------------------------------------------------------------------------------------------
    def send(self, s: Session, t: Ticket, kind: str, recipients: list[str], *, deadline: datetime, due_at: datetime,
             now: datetime, policy: StoredPolicy | None = None) -> str | None:
        """Queue one mail per recipient in the outbox (in the caller's transaction); returns the outbox batch."""
        return self.send_many(s, [(t, kind, recipients, deadline, due_at, policy)], now=now)[0]

    def send_many(self, s: Session, items: list[SlaMail], *, now: datetime) -> list[str | None]:
        """Queue the mails of many escalations at once: (ticket, kind, recipients, deadline, due_at, policy)
        each; one contacts query and one multi-row insert per table. Returns each item's outbox batch."""
        refs: list[str | None] = [None] * len(items)
        if self.outbound is None or not items:
            return refs
        from sqlalchemy import select

        from gateway.outbound.notify import Recipient

        wanted = sorted({e for _, _, rs, _, _, _ in items for e in rs})
        contacts: dict[str, Contact] = {}
        for k in range(0, len(wanted), 500):
            batch = wanted[k:k + 500]
            contacts.update((c.email, c) for c in s.scalars(select(Contact).where(Contact.email.in_(batch))))
        ob = self.outbound
        at = ob.clock()
        rows: list[dict[str, Any]] = []
        ids: list[dict[str, Any]] = []
        for n, (t, kind, recipients, deadline, due_at, policy) in enumerate(items):
            if not recipients:
                continue
            sla = sla_values(t, kind, deadline=deadline, due_at=due_at, now=now, policy=policy)
            rs = [Recipient(e, (contacts[e].name or "") if e in contacts else "", contacts.get(e)) for e in recipients]
            r, i = ob.plan(event_name(kind), t, rs, now=at, by_mail=False, visible=False, extra={"sla": sla})
            if r:
                refs[n] = r[0]["batch"]
            rows += r
            ids += i
        ob.write(s, rows, ids)
        return refs
