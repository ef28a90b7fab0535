"""The periodic SLA sweep: pending reminders and escalations, each exactly once.

Selection goes through indexes only: pending reminders by `tickets(status, remind_at)`, escalations by the
partial index `sla_clocks(next_at, ticket_id) WHERE next_at IS NOT NULL` (keyset pages), never a scan of the
tickets. Each page is one transaction: the tickets are locked (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so two
instances share the work; SQLite serialises writers), re-checked, and every mail is claimed by inserting its
unique (ticket, kind, deadline) row in `sla_escalations` (`ON CONFLICT DO NOTHING`) in the same transaction
as its outbox row: a mail is queued if and only if its claim row commits. A scheduler that was down catches
up once (only the latest threshold of each clock is mailed; a warning whose breach is due is recorded as
suppressed).

`sweep(app, now=...)` evaluates as of `now` (default: the App's clock).
"""

from __future__ import annotations

import logging
import time as _time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Select, and_, or_, select, update
from sqlalchemy.orm import Session

from gateway.db import retry_on_conflict, transaction
from gateway.models import SlaClock, SlaEscalation, Ticket, table_of
from gateway.sla import state as st
from gateway.sla.dbutil import for_update, insert_many_ignore
from gateway.sla.listener import forget_recorded, note_recorded, preload_recorded
from gateway.sla.store import PolicyStore, StoredPolicy
from gateway.sla_policy import Escalation, escalations_due
from gateway.tickets import Tickets

if TYPE_CHECKING:
    from gateway.host import AppHost
    from gateway.sla.mail import SlaMail

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    now: datetime
    escalations: list[tuple[int, str, list[str]]] = field(default_factory=list)  # (number, kind, recipients)
    suppressed: list[tuple[int, str]] = field(default_factory=list)
    reminders: list[tuple[int, list[str]]] = field(default_factory=list)
    skipped: int = 0  # already done or held by another instance
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"SLA sweep as of {self.now.isoformat()}: {len(self.escalations)} escalation(s), "
                f"{len(self.reminders)} reminder(s), {len(self.suppressed)} suppressed, {self.skipped} skipped "
                f"({self.seconds * 1000:.0f} ms)")


def due_reminders_query(now: datetime, limit: int,
                        after: tuple[datetime, int] | None = None) -> Select[int, datetime | None]:
    """Pending tickets whose reminder is due, in (remind_at, id) keyset pages: index tickets(status, remind_at)."""
    q = select(Ticket.id, Ticket.remind_at).where(Ticket.status == "pending", Ticket.remind_at <= now)
    if after is not None:
        q = q.where(or_(Ticket.remind_at > after[0], and_(Ticket.remind_at == after[0], Ticket.id > after[1])))
    return q.order_by(Ticket.remind_at, Ticket.id).limit(limit)


def due_clocks_query(now: datetime, limit: int,
                     after: tuple[datetime, int] | None = None) -> Select[int, datetime | None]:
    """Tickets with an escalation due, in (next_at, ticket_id) keyset pages: the partial index
    sla_clocks(next_at, ticket_id) WHERE next_at IS NOT NULL."""
    q = select(SlaClock.ticket_id, SlaClock.next_at).where(SlaClock.next_at <= now)
    if after is not None:
        q = q.where(or_(SlaClock.next_at > after[0],
                        and_(SlaClock.next_at == after[0], SlaClock.ticket_id > after[1])))
    return q.order_by(SlaClock.next_at, SlaClock.ticket_id).limit(limit)


class Sweeper:
    def __init__(self, app: AppHost, now: datetime | None = None, *, batch_size: int | None = None) -> None:
        from gateway.sla.mail import SlaMailer

        self.app = app
        self.now = now or app.clock()
        if self.now.tzinfo is None:
            raise ValueError("sweep: an aware 'now' is needed")
        self.batch = batch_size or app.config.get("sla", "batch_size")
        self.mailer = SlaMailer(app)
        self.result = SweepResult(now=self.now)
        self._policies: dict[str, StoredPolicy] | None = None

    def policies(self, s: Session) -> dict[str, StoredPolicy]:
        if self._policies is None:
            self._policies = {p.name: p for p in PolicyStore(s, self.app.clock).policies()}
        return self._policies

    def lock_page(self, s: Session, due: list[tuple[int, datetime]]) -> list[int]:
        """Lock the page's tickets (SKIP LOCKED on PostgreSQL; another sweeper has the rest), in the lock
        order of a ticket change (ticket row, then its clock), so there is no deadlock with listeners."""
        ids = [i for i, _ in due]
        locked = sorted(s.scalars(for_update(select(Ticket.id).where(Ticket.id.in_(ids)), s)))
        self.result.skipped += len(ids) - len(locked)
        return locked

    # Pending reminders -----------------------------------------------------------------------------------
    def due_reminders(self, s: Session, after: tuple[datetime, int] | None) -> list[tuple[int, datetime]]:
        return [(i, r) for i, r in s.execute(due_reminders_query(self.now, self.batch, after)) if r is not None]

    def reminders_page(self, after: tuple[datetime, int] | None) -> tuple[datetime, int] | None:
        def work() -> tuple[datetime, int] | None:
            with transaction(self.app.sessions) as s:
                due = self.due_reminders(s, after)
                if not due:
                    return None
                locked = self.lock_page(s, due)
                if locked:
                    tickets = list(s.scalars(select(Ticket).where(Ticket.id.in_(locked)).order_by(Ticket.id)
                                             .execution_options(populate_existing=True)))
                    # the listeners' per-ticket reads, loaded for the page at once: the clocks (identity map)
                    # and the recorded escalations (a per-transaction cache the listener consults)
                    clocks = list(s.scalars(select(SlaClock).where(SlaClock.ticket_id.in_(locked))
                                            .execution_options(populate_existing=True)))  # held: weak map
                    preload_recorded(s, locked)
                    try:
                        self.remind_page(s, Tickets(s, clock=lambda: self.now, listeners=self.app.listeners),
                                         tickets)
                    finally:
                        forget_recorded(s)
                    del clocks
                return due[-1][1], due[-1][0]
        return self._page(work)

    def remind_page(self, s: Session, tickets: Tickets, page: list[Ticket]) -> None:
        """Claim every due reminder of the page with one multi-row INSERT ... ON CONFLICT DO NOTHING, put
        each ticket back to open through Tickets.change (the listeners run as for any change), then queue
        the reminder mails of the claims this transaction won, all at once."""
        todo: list[tuple[Ticket, datetime, list[str]]] = []
        for t in page:
            if t.status != "pending" or t.remind_at is None or t.remind_at > self.now:
                self.result.skipped += 1  # done meanwhile by someone else
                continue
            todo.append((t, t.remind_at, self.mailer.reminder_recipients(s, t)))
        if not todo:
            return
        claimed = {tid: cid for cid, tid, _ in insert_many_ignore(s, table_of(SlaEscalation), [dict(
            ticket_id=t.id, kind=st.REMINDER, deadline=remind_at, due_at=remind_at, sent_at=self.now,
            recipients=recipients, suppressed=not recipients, outbox_ref=None)
            for t, remind_at, recipients in todo], ["ticket_id", "kind", "deadline"])}
        for t, remind_at, _ in todo:
            if t.id in claimed:
                note_recorded(s, t.id, st.REMINDER, remind_at)
        for t, _, _ in todo:
            tickets.change(t, status="open")  # listeners: SLA resumes, remind_at cleared, notifications
        mails = [(t, remind_at, recipients) for t, remind_at, recipients in todo if t.id in claimed and recipients]
        batches = self.mailer.send_many(s, [(t, st.REMINDER, recipients, remind_at, remind_at, None)
                                            for t, remind_at, recipients in mails], now=self.now)
        refs = [{"id": claimed[t.id], "outbox_ref": ref[:64]} for (t, _, _), ref in zip(mails, batches, strict=True)
                if ref]
        if refs:
            s.execute(update(SlaEscalation), refs)
        for t, remind_at, recipients in todo:
            if t.id not in claimed:
                self.result.skipped += 1
                continue
            self.result.reminders.append((t.number, recipients))
            log.info("ticket #%s: pending reminder due %s -> open; mailed %s", t.number, remind_at.isoformat(),
                     ", ".join(recipients) or "nobody (no assignee, no group address)")

    def remind(self, s: Session, tickets: Tickets, t: Ticket) -> None:
        """One ticket's reminder (remind_page for a page of one)."""
        self.remind_page(s, tickets, [t])

    # Escalations -----------------------------------------------------------------------------------------
    def due_clocks(self, s: Session, after: tuple[datetime, int] | None) -> list[tuple[int, datetime]]:
        return [(i, n) for i, n in s.execute(due_clocks_query(self.now, self.batch, after)) if n is not None]

    def escalations_page(self, after: tuple[datetime, int] | None) -> tuple[datetime, int] | None:
        def work() -> tuple[datetime, int] | None:
            with transaction(self.app.sessions) as s:
                due = self.due_clocks(s, after)
                if not due:
                    return None
                locked = self.lock_page(s, due)
                if locked:
                    clocks = {c.ticket_id: c for c in s.scalars(select(SlaClock).where(
                        SlaClock.ticket_id.in_(locked)).execution_options(populate_existing=True))}
                    sent: dict[int, list[tuple[str, datetime]]] = {}
                    for tid, kind, deadline in s.execute(select(
                            SlaEscalation.ticket_id, SlaEscalation.kind, SlaEscalation.deadline)
                            .where(SlaEscalation.ticket_id.in_(locked))):
                        sent.setdefault(tid, []).append((kind, deadline))
                    tickets = list(s.scalars(select(Ticket).where(Ticket.id.in_(locked)).order_by(Ticket.id)
                                             .execution_options(populate_existing=True)))
                    self.escalate_page(s, tickets, clocks, sent)
                return due[-1][1], due[-1][0]
        return self._page(work)

    def escalate_page(self, s: Session, tickets: list[Ticket], clocks: dict[int, SlaClock],
                      sent_rows: dict[int, list[tuple[str, datetime]]]) -> None:
        """Plan every due escalation of the page, claim them all with one multi-row INSERT ... ON CONFLICT DO
        NOTHING RETURNING (only the rows this transaction inserted come back), then mail exactly those."""
        rows: list[dict[str, Any]] = []
        mails: dict[tuple[int, str], tuple[Ticket, Escalation, datetime, list[str], StoredPolicy | None]] = {}
        by_id = {t.id: t for t in tickets}
        for t in tickets:
            clock = clocks.get(t.id)
            if clock is None or clock.next_at is None or clock.next_at > self.now:
                self.result.skipped += 1  # done meanwhile by another instance
                continue
            sent = {k for k, d in sent_rows.get(t.id, []) if d == st.due_for_kind(t, k)}
            stored = self.policies(s).get(t.sla_policy or "")
            for esc in escalations_due(self.now, response_due=t.response_due_at,
                                       resolution_due=t.resolution_due_at, first_response_at=t.first_response_at,
                                       resolved_at=t.resolved_at, paused_at=t.sla_paused_at,
                                       warn_response_at=clock.warn_response_at,
                                       warn_resolution_at=clock.warn_resolution_at, sent=sent):
                deadline = st.due_for_kind(t, esc.kind)
                assert deadline is not None
                recipients = self.mailer.escalation_recipients(s, t, stored)
                rows.append(dict(ticket_id=t.id, kind=esc.kind, deadline=deadline, due_at=esc.at, sent_at=self.now,
                                 recipients=recipients, suppressed=not recipients, outbox_ref=None))
                mails[(t.id, esc.kind)] = (t, esc, deadline, recipients, stored)
                sent.add(esc.kind)
                if esc.kind.endswith("_breach"):  # the breach says more than its warning: record, do not mail
                    warning = esc.kind.replace("_breach", "_warning")
                    if warning not in sent:
                        rows.append(dict(ticket_id=t.id, kind=warning, deadline=deadline, due_at=esc.at,
                                         sent_at=self.now, recipients=[], suppressed=True, outbox_ref=None))
                        sent.add(warning)
            clock.next_at = st.next_at(t, clock.warn_response_at, clock.warn_resolution_at, sent)
            clock.updated_at = self.now
        if not rows:
            return
        claimed = insert_many_ignore(s, table_of(SlaEscalation), rows, ["ticket_id", "kind", "deadline"])
        to_send: list[tuple[int, SlaMail]] = []
        for claim_id, ticket_id, kind in claimed:
            planned = mails.get((ticket_id, kind))
            if planned is None:  # a suppressed warning under its breach
                self.result.suppressed.append((by_id[ticket_id].number, kind))
                continue
            t, esc, deadline, recipients, stored = planned
            if not recipients:
                self.result.suppressed.append((t.number, kind))
                log.warning("ticket #%s: %s due but nobody to tell (no assignee, group address or "
                            "escalation address)", t.number, kind)
                continue
            to_send.append((claim_id, (t, kind, recipients, deadline, esc.at, stored)))
            self.result.escalations.append((t.number, kind, recipients))
            log.info("ticket #%s: %s (due %s) mailed to %s", t.number, kind, deadline.isoformat(),
                     ", ".join(recipients))
        # every mail of the page queued at once (cheap rows, one multi-row insert; rendered at delivery)
        batches = self.mailer.send_many(s, [item for _, item in to_send], now=self.now)
        refs = [{"id": claim_id, "outbox_ref": ref[:64]} for (claim_id, _), ref in zip(to_send, batches, strict=True)
                if ref]
        got = {(c[1], c[2]) for c in claimed}
        self.result.skipped += sum(1 for key in mails if key not in got)
        if refs:
            s.execute(update(SlaEscalation), refs)

    def _page(self, work: Callable[[], tuple[datetime, int] | None]) -> tuple[datetime, int] | None:
        """Run one page transaction (retried on a lost race); results count only once it committed."""
        r = self.result

        def attempt() -> tuple[datetime, int] | None:
            mark = (len(r.escalations), len(r.suppressed), len(r.reminders), r.skipped)
            try:
                return work()
            except Exception:
                del r.escalations[mark[0]:], r.suppressed[mark[1]:], r.reminders[mark[2]:]
                r.skipped = mark[3]
                raise
        return retry_on_conflict(attempt)

    @staticmethod
    def _set_ref(s: Session, claim: int, ref: str | None) -> None:
        if ref:
            s.execute(update(SlaEscalation).where(SlaEscalation.id == claim).values(outbox_ref=ref[:64])
                      .execution_options(synchronize_session=False))

    # Whole sweep -----------------------------------------------------------------------------------------
    def run(self) -> SweepResult:
        started = _time.monotonic()
        after = None
        while (after := self.reminders_page(after)) is not None:
            pass
        after = None
        while (after := self.escalations_page(after)) is not None:
            pass
        self.result.seconds = _time.monotonic() - started
        if self.result.escalations or self.result.reminders:
            log.info("%s", self.result.summary())
        return self.result


def sweep(app: AppHost, now: datetime | None = None, *, batch_size: int | None = None) -> SweepResult:
    """One SLA sweep as of `now` (default: the App's clock). Safe to run in several processes at once."""
    result = Sweeper(app, now, batch_size=batch_size).run()
    observe = getattr(app, "observe", None)
    if observe is not None:  # committed: counted by kind (gateway.observe -> ticketgw_sla_escalations_total)
        from gateway.observe import Escalation

        for _, kind, _ in result.escalations:
            observe(Escalation(kind))
        for _ in result.reminders:
            observe(Escalation("pending_reminder"))
    return result
