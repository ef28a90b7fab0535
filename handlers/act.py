"""Apply a staff member's mail commands (found by `commands`) to the ticket, after its comment, through the
rules every other way of changing a ticket uses (gateway.workflow.Workflow: the CLI and the HTTP API call the
same), and confirm them to the sender with one automatic mail (the CommandsDone event; gateway.outbound).

Field commands (/priority, /type, /assign, /unassign, /group, /tag, /untag) are one change; /status and
/pending another, so that a close refused (an open ticket blocks it) refuses nothing else. Each refusal is
said with its reason: no such ticket or person, not staff, a date in the past, a blocked close.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

from gateway import mailcommands
from gateway.events import CommandsDone
from gateway.models import Contact
from gateway.pipeline import MailContext
from gateway.store.base import Flow
from gateway.tickets import InvalidChange
from gateway.workflow import NoSuch, Refused, format_minutes

FIELDS = ("priority", "type", "assign", "unassign", "group", "tag", "untag")


def _shown(value: Any) -> str:
    return "none" if value in (None, "", []) else ", ".join(value) if isinstance(value, list) else str(value)


def _changed(changes: dict[str, tuple[Any, Any]]) -> list[str]:
    return [f"{name}: {_shown(old)} -> {_shown(new)}" for name, (old, new) in changes.items()]


class Run:
    """One mail's commands on one ticket: what was done and what was refused."""

    def __init__(self, ctx: MailContext, flow: Flow) -> None:
        assert ctx.ticket is not None and ctx.sender is not None
        self.ctx, self.flow, self.ticket, self.by = ctx, flow, ctx.ticket, ctx.sender
        self.done: list[str] = []
        self.refused: list[tuple[str, str]] = []

    def attempt(self, lines: list[str], step: Any) -> None:
        """Run `step()`; a rule's refusal is recorded against these command lines."""
        try:
            step()
        except (InvalidChange, NoSuch, Refused) as e:
            self.refused += [(line, str(e)) for line in lines]

    def set(self, lines: list[str], values: dict[str, Any]) -> None:
        def step() -> None:
            self.done.extend(_changed(self.flow.set_fields(self.ticket, by=self.by, **values))
                             or [f"{line}: no change" for line in lines])
        self.attempt(lines, step)

    def staff(self, c: mailcommands.Command) -> Contact | None:
        """The assignee a /assign names, or None (refused: no such person, not staff)."""
        if c.value == "me":
            return self.by
        try:
            return self.flow.staff(str(c.value))
        except (InvalidChange, NoSuch) as e:
            self.refused.append((c.line, str(e)))
            return None

    def fields(self, commands: list[mailcommands.Command]) -> None:
        """One change for all the field commands (a wrong person refuses its own /assign line only)."""
        values: dict[str, Any] = {}
        lines = []
        for c in commands:
            if c.name == "assign":
                who = self.staff(c)
                if who is None:
                    continue
                values["assignee"] = who
            elif c.name == "unassign":
                values["assignee"] = None
            elif c.name in ("priority", "type", "group"):
                values[c.name] = c.value
            else:
                values.setdefault("add_tags" if c.name == "tag" else "remove_tags", []).append(str(c.value))
            lines.append(c.line)
        if values:
            self.set(lines, values)

    def status(self, c: mailcommands.Command) -> None:
        if c.name == "pending":
            assert isinstance(c.value, date)
            when = datetime.combine(c.value, time(0, 0), tzinfo=UTC)
            if c.value <= self.ctx.clock().date():
                self.refused.append((c.line, f"{c.value.isoformat()} is not in the future"))
                return
            values: dict[str, Any] = {"status": "pending", "remind_at": when}
        else:
            values = {"status": c.value}
        self.set([c.line], values)

    def link(self, c: mailcommands.Command) -> None:
        assert isinstance(c.value, tuple)
        number, kind = c.value

        def step() -> None:
            other = self.flow.ticket(number)
            shown, new = self.flow.link(self.ticket, other, kind)
            self.done.append(f"link: #{self.ticket.number} {shown} #{other.number}"
                             + ("" if new else " (was already linked)"))
        self.attempt([c.line], step)

    def time(self, c: mailcommands.Command) -> None:
        assert isinstance(c.value, tuple)
        minutes, note = c.value

        def step() -> None:
            self.flow.log_time(self.ticket, minutes, by=self.by, note=note)
            self.done.append(f"time logged: {format_minutes(minutes)}" + (f" ({note})" if note else "")
                             + f", {format_minutes(self.flow.time_total(self.ticket))} in all")
        self.attempt([c.line], step)

    def watch(self, c: mailcommands.Command) -> None:
        email = self.by.email if c.value == "me" else str(c.value)

        def step() -> None:
            if c.name == "watch":
                new = self.flow.watch(self.ticket, email)
                self.done.append(f"watcher added: {email}" if new else f"{email} was watching already")
            elif self.flow.unwatch(self.ticket, email):
                self.done.append(f"watcher removed: {email}")
            else:
                raise NoSuch(f"{email} is not watching #{self.ticket.number}")
        self.attempt([c.line], step)


def run(ctx: MailContext, parsed: mailcommands.Parsed) -> Run:
    r = Run(ctx, ctx.store.workflow())  # the pipeline's: an import's changes stay quiet
    r.refused += [(x.line, x.reason) for x in parsed.refused]
    r.fields([c for c in parsed.commands if c.name in FIELDS])
    for c in parsed.commands:
        if c.name in ("status", "pending"):
            r.status(c)
        elif c.name == "link":
            r.link(c)
        elif c.name == "time":
            r.time(c)
        elif c.name in ("watch", "unwatch"):
            r.watch(c)
        elif c.name == "internal" and ctx.comment is not None and ctx.comment.internal:
            r.done.append("internal note")
        elif c.name == "internal":
            r.refused.append((c.line, "no note made: a new ticket's first mail is its description, and a mail "
                                      "of commands only has no text"))
    return r


def handle(ctx: MailContext) -> None:
    parsed = ctx.commands
    if parsed is None or ctx.ticket is None or ctx.sender is None:
        return
    r = run(ctx, parsed)
    for line in r.done:
        ctx.note(f"act: {line}")
    for line, why in r.refused:
        ctx.note(f"act: refused {line[:80]}: {why}")
    ctx.store.emit(CommandsDone(ctx.ticket, ctx.sender, r.done, r.refused, mail_id=ctx.mail_id))
