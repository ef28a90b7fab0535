"""Who a notification may go to: the recipients of the Outbound listener's rounds (gateway.outbound.notify).

The ticket's reporter (the real sender under 'default-reporter'), the staff that `staff.notify` or a group's
`notify` names, and the rule that keeps a notification away from the gateway's own addresses, undeliverable
contacts and automatic (noreply, daemon) addresses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.config import Config
from gateway.db import write_locked_memo
from gateway.models import Contact, Ticket
from gateway.outbound import ratelimit


@dataclass
class Recipient:
    email: str
    name: str = ""
    contact: Contact | None = None
    staff: bool = False  # staff without a staff contact (a group member listed in the config)

    @property
    def is_staff(self) -> bool:
        return self.staff or bool(self.contact and self.contact.is_staff)


class Audience:
    """The recipient rules, from the config (gateway.default_reporter, staff.notify, groups)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.default_reporter = config.gateway["default_reporter"].lower()
        self.staff_notify: list[str] = list(config.values["staff"]["notify"])
        self.groups: dict[str, dict[str, Any]] = {g["name"]: g for g in config.values["groups"]}

    def reporter_of(self, ticket: Ticket) -> Recipient | None:
        rep = ticket.reporter
        if rep is not None and rep.email != self.default_reporter:
            return Recipient(rep.email, rep.name or "", rep)
        if ticket.sender_email:
            return Recipient(ticket.sender_email, "", None)
        return None

    def usable(self, r: Recipient | None) -> bool:
        if r is None or not ratelimit.is_sendable_address(r.email):
            return False
        if self.config.is_gateway_address(r.email) or r.email == self.default_reporter:
            return False
        if ratelimit.is_automatic_address(r.email):
            return False
        if r.contact is not None and r.contact.undeliverable:
            return False
        return True

    @staticmethod
    def unique(rs: Iterable[Recipient | None], exclude: set[str]) -> list[Recipient]:
        out: dict[str, Recipient] = {}
        for r in rs:
            if r is None:
                continue
            e = r.email.lower()
            if e in exclude or e in out:
                continue
            out[e] = r
        return list(out.values())

    def staff_for(self, s: Session, t: Ticket) -> list[Recipient]:
        """The staff that hear of a customer's public comment: the first of the rules (the ticket's group's
        `notify`, else staff.notify) that names anyone -- the assignee, the group's members, every staff
        contact."""
        group = self.groups.get(t.group or "")
        for rule in (group["notify"] if group is not None else self.staff_notify):
            if rule == "assignee" and t.assignee is not None:
                return [Recipient(t.assignee.email, t.assignee.name or "", t.assignee)]
            if rule == "group" and group is not None and group["members"]:
                return self.members(s, group["members"])
            if rule == "all":
                found = [Recipient(c.email, c.name or "", c) for c in self.staff(s)]
                if found:
                    return found
        return []

    @staticmethod
    def members(s: Session, emails: list[str]) -> list[Recipient]:
        """A group's members as configured (mailed as listed; their contacts where they have one)."""
        wanted = [e.lower() for e in emails]
        known = {c.email: c for c in s.scalars(select(Contact).where(Contact.email.in_(wanted)))}
        # a member without a staff contact is still staff to the notice (the admin listed them)
        return [Recipient(e, (known[e].name or "") if e in known else "", known.get(e), staff=True) for e in wanted]

    @staticmethod
    def staff(s: Session) -> list[Contact]:
        """The staff contacts, by id (remembered for the transaction where gateway.db.write_locked_memo can)."""
        memo = write_locked_memo(s, "staff")
        if memo is not None and "all" in memo:
            return memo["all"]
        staff = list(s.scalars(_STAFF))
        if memo is not None:
            memo["all"] = staff
        return staff


_STAFF = select(Contact).where(Contact.role == "staff").order_by(Contact.id)
