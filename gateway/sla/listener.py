"""The SLA listener: keeps every ticket's deadlines right, inside the transaction of the change.

* TicketCreated: the first active matching policy (configured order) stamps response and resolution deadlines.
* CommentAdded: the first public comment by staff is the first response (an internal note, a system comment
  or an automatic acknowledgement is not).
* TicketChanged:
    - status -> pending pauses both clocks (`sla_paused_at`); leaving pending resumes them and pushes the
      running deadlines by the paused span (business time with a calendar); the pending reminder
      (`remind_at`) ends with the pending status;
    - resolved/closed stops the clocks; reopening pushes the resolution deadline (and a response deadline
      that was never met) by the time spent resolved -- a late resolution stays a breach;
    - priority, type, organisation or group changes re-run the policy choice; when the policy changes the
      running deadlines are recomputed (met ones stay met).
  After every event the ticket's SlaClock row (derived warning times, `next_at` for the sweep) is refreshed.

An import of old mail (events marked `imported`) keeps the mail's dates; what was already due at the import is
recorded as suppressed, not mailed (`SlaListener.settle_past`).

Escalations already recorded for a clock follow its deadline across pauses (a resume moves their deadline
with the clock), so a pause never causes a second warning; a new deadline from a policy change or a reopen
can escalate again.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway.events import CommentAdded, Event, TicketChanged, TicketCreated
from gateway.models import Comment, SlaClock, SlaEscalation, Ticket, table_of
from gateway.sla import state as st
from gateway.sla.dbutil import insert_many_ignore
from gateway.sla.store import PolicyStore, StoredPolicy, cached_policies, transaction_cache
from gateway.sla_policy import (
    Policy,
    change_policy,
    choose_policy,
    deadlines,
    escalations_due,
    reopen,
    resume,
    warn_times,
)

if TYPE_CHECKING:
    from gateway.host import AppHost

log = logging.getLogger(__name__)

OPEN = ("open", "in_progress", "pending")
DONE = ("resolved", "closed")
# Comment sources that are never a response (the outbound acknowledgement, system notes).
AUTO_SOURCES = frozenset({"system", "auto", "autoreply", "auto_reply", "ack", "acknowledgement", "notification"})
POLICY_FIELDS = ("priority", "type", "group", "organisation", "organisation_id")


def is_first_response(c: Comment) -> bool:
    return bool(c.by_staff and not c.internal and c.author_id is not None and (c.source or "") not in AUTO_SOURCES)


class SlaListener:
    def __init__(self, app: AppHost) -> None:
        self.app = app
        self._seeded = False

    def template_samples(self) -> list[tuple[str, dict[str, Any]]]:
        """The SLA mails' templates and sample values, for the outbound feature's start-up template check
        (gateway.outbound.check.TemplateUser)."""
        from gateway.sla.mail import sample_events

        return sample_events()

    # Entry point ---------------------------------------------------------------------------------------------
    def __call__(self, session: Session, event: Event) -> None:
        if isinstance(event, TicketCreated):
            self.created(session, event.ticket)
        elif isinstance(event, CommentAdded):
            self.commented(session, event.ticket, event.comment)
        elif isinstance(event, TicketChanged):
            self.changed(session, event.ticket, event.changes, event.at or event.ticket.updated_at)
        else:
            return
        if event.imported:
            self.settle_past(session, event.ticket)

    def settle_past(self, s: Session, t: Ticket) -> None:
        """An import of old mail: the deadlines follow the mail's Date (reports say honestly what was met and
        what was breached back then), but what was already due when the import ran is recorded as suppressed,
        never mailed: importing years of mail does not fire years of escalations. A threshold still ahead
        escalates as usual; a later live event on the ticket finds these records and sends nothing for them."""
        clock = s.get(SlaClock, t.id)
        now = self.app.clock()
        if clock is None or clock.next_at is None or clock.next_at > now:
            return
        sent = sent_kinds(s, t)
        rows: list[dict[str, Any]] = []
        for esc in escalations_due(now, response_due=t.response_due_at, resolution_due=t.resolution_due_at,
                                   first_response_at=t.first_response_at, resolved_at=t.resolved_at,
                                   paused_at=t.sla_paused_at, warn_response_at=clock.warn_response_at,
                                   warn_resolution_at=clock.warn_resolution_at, sent=sent):
            kinds = [esc.kind] + ([esc.kind.replace("_breach", "_warning")] if esc.kind.endswith("_breach") else [])
            deadline = st.due_for_kind(t, esc.kind)
            for kind in kinds:
                if kind not in sent and deadline is not None:
                    rows.append(dict(ticket_id=t.id, kind=kind, deadline=deadline, due_at=esc.at, sent_at=now,
                                     recipients=[], suppressed=True, outbox_ref=None))
                    sent.add(kind)
        if rows:
            insert_many_ignore(s, table_of(SlaEscalation), rows, ["ticket_id", "kind", "deadline"])
            for r in rows:
                note_recorded(s, t.id, r["kind"], r["deadline"])
            log.info("ticket #%s (imported): %s already due at the import, recorded without mail", t.number,
                     ", ".join(r["kind"] for r in rows))
        clock.next_at = st.next_at(t, clock.warn_response_at, clock.warn_resolution_at, sent)

    # Policies ------------------------------------------------------------------------------------------------
    def policies(self, session: Session) -> list[StoredPolicy]:
        store = PolicyStore(session, self.app.clock)
        if not self._seeded:
            seed = self.app.config.get("sla", "policies")
            if seed:
                store.seed(seed)
            self._seeded = True
        return cached_policies(session, store)

    @staticmethod
    def choose(policies: list[StoredPolicy], t: Ticket) -> Policy | None:
        return choose_policy([p.policy for p in policies], priority=t.priority, type=t.type,
                             organisation=t.organisation.name if t.organisation else None, group=t.group)

    @staticmethod
    def by_name(policies: list[StoredPolicy], name: str | None) -> Policy | None:
        for p in policies:
            if p.name == name:
                return p.policy
        return None

    # Events --------------------------------------------------------------------------------------------------
    def created(self, s: Session, t: Ticket) -> None:
        policy = self.choose(self.policies(s), t)
        if policy is None:
            return
        t.sla_policy = policy.name
        t.response_due_at, t.resolution_due_at = deadlines(policy, t.created_at)
        if t.status == "pending":
            t.sla_paused_at = t.created_at
        self.refresh(s, t, policy, t.created_at, new=True)

    def commented(self, s: Session, t: Ticket, c: Comment) -> None:
        if t.first_response_at is not None or not is_first_response(c):
            return
        t.first_response_at = c.created_at
        if t.sla_policy is not None:
            self.refresh(s, t, self.by_name(self.policies(s), t.sla_policy), c.created_at)

    def changed(self, s: Session, t: Ticket, changes: dict[str, tuple[Any, Any]], at: datetime) -> None:
        touches_status = "status" in changes
        touches_policy = any(f in changes for f in POLICY_FIELDS)
        if not touches_status and not touches_policy:
            return
        policies = self.policies(s)
        policy = self.by_name(policies, t.sla_policy)
        clock = s.get(SlaClock, t.id)
        if touches_status:
            old, new = changes["status"]
            if old == "pending" and new != "pending":
                self._resume(s, t, policy, at)
                if "remind_at" not in changes or changes["remind_at"][1] is None or new in DONE:
                    t.remind_at = None  # the reminder belongs to the pending status
            if old in DONE and new not in DONE:
                self._reopen(s, t, policy, clock, at)
            if new in DONE and old not in DONE and clock is not None:
                clock.resolved_at = t.resolved_at or at
            if new == "pending" and old != "pending" and t.sla_paused_at is None:
                t.sla_paused_at = at
        if touches_policy:
            chosen = self.choose(policies, t)
            if (chosen.name if chosen else None) != t.sla_policy:
                t.response_due_at, t.resolution_due_at = change_policy(
                    policy, chosen, t.created_at, response_due=t.response_due_at,
                    resolution_due=t.resolution_due_at, first_response_at=t.first_response_at,
                    resolved_at=t.resolved_at)
                log.info("ticket #%s: SLA policy %s -> %s", t.number, t.sla_policy,
                         chosen.name if chosen else None)
                t.sla_policy = chosen.name if chosen else None
                policy = chosen
        if t.sla_policy is None and clock is None:
            return
        self.refresh(s, t, policy, at)

    # Clock operations ----------------------------------------------------------------------------------------
    def _resume(self, s: Session, t: Ticket, policy: Policy | None, at: datetime) -> None:
        paused = t.sla_paused_at
        t.sla_paused_at = None
        if paused is None or policy is None:
            return
        at = max(at, paused)
        recorded: list[tuple[str, datetime]] | None = None
        ticket_id = t.id
        for kinds, attr, met in ((st.RESPONSE_KINDS, "response_due_at", t.first_response_at is not None),
                                 (st.RESOLUTION_KINDS, "resolution_due_at", False)):
            due = getattr(t, attr)
            if due is None:
                continue
            pushed = resume(policy, due, paused, at, met=met)
            if pushed != due:
                setattr(t, attr, pushed)
                if recorded is None:
                    recorded = recorded_escalations(s, ticket_id)
                self._move_escalations(s, t, kinds, due, pushed, recorded)

    def _reopen(self, s: Session, t: Ticket, policy: Policy | None, clock: SlaClock | None, at: datetime) -> None:
        resolved_at = clock.resolved_at if clock is not None else None
        if clock is not None:
            clock.resolved_at = None
        if policy is None or resolved_at is None or at < resolved_at:
            return
        if t.resolution_due_at is not None:
            t.resolution_due_at = reopen(policy, t.resolution_due_at, resolved_at, at)
        if t.response_due_at is not None and t.first_response_at is None:
            # resolving stopped the response clock too; it resumes without a response yet
            t.response_due_at = reopen(policy, t.response_due_at, resolved_at, at)

    @staticmethod
    def _move_escalations(s: Session, t: Ticket, kinds: tuple[str, ...], old: datetime, new: datetime,
                          recorded: list[tuple[str, datetime]]) -> None:
        """Escalations sent for a clock stay sent when a pause pushes its deadline."""
        if not any(k in kinds and d == old for k, d in recorded):
            return
        s.execute(update(SlaEscalation).where(SlaEscalation.ticket_id == t.id, SlaEscalation.kind.in_(kinds),
                                              SlaEscalation.deadline == old)
                  .values(deadline=new).execution_options(synchronize_session=False))
        recorded[:] = [(k, new if k in kinds and d == old else d) for k, d in recorded]
        cache = _recorded_cache(s)
        if cache is not None and t.id in cache:
            cache[t.id] = list(recorded)

    def refresh(self, s: Session, t: Ticket, policy: Policy | None, at: datetime, *, new: bool = False) -> None:
        """Recompute the derived warning times and the sweep's `next_at` for the ticket's current state."""
        refresh_clock(s, t, policy, at, new=new)


def sent_kinds(s: Session, t: Ticket) -> set[str]:
    """Escalation kinds already recorded for the ticket's current deadlines."""
    rows = recorded_escalations(s, t.id)
    return {kind for kind, deadline in rows if deadline == st.due_for_kind(t, kind)}


# Per-transaction cache (batch work such as the sweep's pending reminders: no query per ticket) -------------
_RECORDED = "gateway.sla.recorded"


def _recorded_cache(s: Session) -> dict[int, list[tuple[str, datetime]]] | None:
    cache: dict[int, list[tuple[str, datetime]]] | None = transaction_cache(s, _RECORDED)
    return cache


def preload_recorded(s: Session, ticket_ids: list[int]) -> dict[int, list[tuple[str, datetime]]]:
    """Load the recorded escalations of these tickets with one query and let this transaction's listener
    calls use them (the caller adds the rows it inserts itself: `note_recorded`)."""
    cache = _recorded_cache(s)
    if cache is None:
        cache = {}
        s.info[_RECORDED] = (s.get_transaction(), cache)
    fresh: dict[int, list[tuple[str, datetime]]] = {tid: [] for tid in ticket_ids}
    for k in range(0, len(ticket_ids), 500):
        for tid, kind, deadline in s.execute(select(SlaEscalation.ticket_id, SlaEscalation.kind,
                                                    SlaEscalation.deadline)
                                             .where(SlaEscalation.ticket_id.in_(ticket_ids[k:k + 500]))
                                             .order_by(SlaEscalation.id)):
            fresh[tid].append((kind, deadline))
    cache.update(fresh)
    return cache


def note_recorded(s: Session, ticket_id: int, kind: str, deadline: datetime) -> None:
    cache = _recorded_cache(s)
    if cache is not None and ticket_id in cache:
        cache[ticket_id].append((kind, deadline))


def forget_recorded(s: Session) -> None:
    s.info.pop(_RECORDED, None)


def recorded_escalations(s: Session, ticket_id: int) -> list[tuple[str, datetime]]:
    """(kind, deadline) of every escalation recorded for the ticket (from the preload when there is one)."""
    cache = _recorded_cache(s)
    if cache is not None and ticket_id in cache:
        return list(cache[ticket_id])
    return [(k, d) for k, d in s.execute(select(SlaEscalation.kind, SlaEscalation.deadline)
                                         .where(SlaEscalation.ticket_id == ticket_id))]


def refresh_clock(s: Session, t: Ticket, policy: Policy | None, at: datetime, *, new: bool = False,
                  sent: set[str] | None = None, clock: SlaClock | None = None) -> SlaClock | None:
    if clock is None and not new:
        clock = s.get(SlaClock, t.id)
    if clock is None:
        clock = SlaClock(ticket_id=t.id, updated_at=at)
        s.add(clock)
    if policy is not None:
        clock.warn_response_at, clock.warn_resolution_at = warn_times(
            policy, t.created_at, t.response_due_at, t.resolution_due_at)
    else:  # no policy (or it was deleted): keep deadlines, warn nothing new
        clock.warn_response_at = clock.warn_resolution_at = None
    if sent is None:
        sent = set() if new else sent_kinds(s, t)
    clock.next_at = st.next_at(t, clock.warn_response_at, clock.warn_resolution_at, sent)
    clock.updated_at = at
    if new:
        s.flush()  # a new clock row: a concurrent insert shows up here, inside the caller's retry
    # else: written by the next flush (the next query's autoflush or the commit), in one go with the rest
    return clock
