"""Commands by mail (pure): the `/command` lines at the top of a staff member's mail, GitLab-style.

    /status open|in_progress|pending|resolved|closed     /pending YYYY-MM-DD
    /priority low|medium|high|critical                   /type incident|problem|service_request|change_request
    /assign EMAIL | /assign me      /unassign            /group NAME
    /tag NAME       /untag NAME     /link NUMBER relates|duplicates|caused-by|blocks|blocked-by
    /time 1h30m [note]              /internal            /watch EMAIL      /unwatch EMAIL

Only lines before any other text count (blank lines between them are allowed); the first line that is not a
command ends them, and everything from it on is the mail's text. A line is a command line when it is `/` and
a word (letters, `-`, `_`) followed by a space or the end of the line: `/etc/hosts is broken` is text.
Values are checked here as far as text can say (choices, dates, durations, addresses), with the spellings
of the CLI (gateway.workflow: any case, '-' or ' ' for '_'); what needs the store (does the person or the
ticket exist, may the ticket close) is the handler's (handlers/act.py), through the same gateway.workflow.

Bounded: at most MAX_COMMANDS command lines (a further one ends the block and is refused), at most
MAX_LINE characters per line (a longer one is refused), at most MAX_SCAN leading lines looked at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from gateway.models import PRIORITIES, STATUSES, TYPES
from gateway.tickets import InvalidChange
from gateway.workflow import LINK_KIND_NAMES, MAX_GROUP_LENGTH, MAX_TAG_LENGTH, choice, link_kind, parse_duration

MAX_COMMANDS = 20
MAX_LINE = 300
MAX_SCAN = 100
MAX_NOTE = 200

NO_ARGUMENT = ("unassign", "internal")
KNOWN = ("status", "pending", "priority", "type", "assign", "unassign", "group", "tag", "untag", "link", "time",
         "internal", "watch", "unwatch")

_LINE = re.compile(r"^/([A-Za-z][A-Za-z_-]{0,30})(?:[ \t]+(.*))?$")
_ADDR = re.compile(r"^[^@\s<>,;\"()]{1,64}@[A-Za-z0-9.-]{1,253}$")
_NUMBER = re.compile(r"^#?(\d{1,12})$")


@dataclass(frozen=True)
class Command:
    """One understood command line: `name` and its checked value (see `parse_line`)."""

    name: str
    value: str | int | date | tuple[int, str] | None
    line: str


@dataclass(frozen=True)
class Refused:
    line: str
    reason: str


@dataclass(frozen=True)
class Parsed:
    commands: tuple[Command, ...]
    refused: tuple[Refused, ...]
    rest: str          # the text after the command lines
    lines: int         # how many leading lines were taken as commands (and blank lines among them)

    @property
    def any(self) -> bool:
        return bool(self.commands or self.refused)

    @property
    def internal(self) -> bool:
        return any(c.name == "internal" for c in self.commands)


def _email(arg: str, *, me: bool) -> str | Refused:
    a = arg.strip().strip("<>").lower()
    if me and a == "me":
        return "me"
    if not _ADDR.match(a):
        return Refused("", f"not an email address: {arg.strip()[:80]!r}")
    return a


def _name(arg: str, what: str) -> str | Refused:
    a = arg.strip()
    most = MAX_GROUP_LENGTH if what == "group" else MAX_TAG_LENGTH
    if not a or len(a) > most:
        return Refused("", f"a {what} name of 1-{most} characters")
    return a


def _link(arg: str) -> tuple[int, str] | Refused:
    parts = arg.split()
    if len(parts) != 2:
        return Refused("", f"/link NUMBER KIND (KIND one of {', '.join(LINK_KIND_NAMES)})")
    m = _NUMBER.match(parts[0])
    if not m:
        return Refused("", f"not a ticket number: {parts[0][:20]!r}")
    try:
        link_kind(parts[1])
    except InvalidChange:
        return Refused("", f"unknown link kind {parts[1][:30]!r} (one of {', '.join(LINK_KIND_NAMES)})")
    return int(m.group(1)), parts[1].lower()


def _time(arg: str) -> tuple[int, str] | Refused:
    spent, _, note = arg.strip().partition(" ")
    try:
        minutes = parse_duration(spent)
    except InvalidChange as e:
        return Refused("", str(e))
    note = note.strip()
    if len(note) > MAX_NOTE:
        return Refused("", f"the note of /time has at most {MAX_NOTE} characters")
    return minutes, note


def _date(arg: str) -> date | Refused:
    try:
        return date.fromisoformat(arg.strip()) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", arg.strip()) else _no_date(arg)
    except ValueError:
        return _no_date(arg)


def _no_date(arg: str) -> Refused:
    return Refused("", f"not a date YYYY-MM-DD: {arg.strip()[:30]!r}")


def _value(name: str, arg: str) -> str | int | date | tuple[int, str] | None | Refused:
    """The checked value of one command's argument, or why it is refused."""
    if name in NO_ARGUMENT:
        return None if not arg else Refused("", f"/{name} takes no argument")
    if not arg:
        return Refused("", f"/{name} needs an argument")
    for field, known in (("status", STATUSES), ("priority", PRIORITIES), ("type", TYPES)):
        if name == field:
            try:
                return choice(arg, field, known)
            except InvalidChange:
                return Refused("", f"unknown {field} {arg[:40]!r} (one of {', '.join(known)})")
    if name in ("assign", "watch", "unwatch"):
        return _email(arg, me=True)
    if name in ("group", "tag", "untag"):
        return _name(arg, "group" if name == "group" else "tag")
    if name == "pending":
        return _date(arg)
    if name == "link":
        return _link(arg)
    return _time(arg)


def parse_line(line: str) -> Command | Refused | None:
    """One line: a command, a refused command line, or None when it is not a command line (text)."""
    if len(line) > MAX_LINE:
        too_long = Refused(line.strip()[:60] + "...", f"a command line has at most {MAX_LINE} characters")
        return too_long if _LINE.match(line.strip()[:40]) else None
    m = _LINE.match(line.strip())
    if not m:
        return None
    name, arg = m.group(1).lower(), (m.group(2) or "").strip()
    if name not in KNOWN:
        return Refused(line.strip(), f"unknown command /{m.group(1)}")
    v = _value(name, arg)
    if isinstance(v, Refused):
        return Refused(line.strip(), v.reason)
    return Command(name, v, line.strip())


def parse(text: str) -> Parsed:
    """The command lines at the top of `text` and the text after them."""
    lines = text.split("\n", MAX_SCAN)
    commands: list[Command] = []
    refused: list[Refused] = []
    taken = 0
    for i, raw in enumerate(lines[:MAX_SCAN]):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        found = parse_line(line)
        if found is None:
            break
        if len(commands) + len(refused) >= MAX_COMMANDS:
            refused.append(Refused(line.strip()[:60], f"at most {MAX_COMMANDS} commands in one mail: this line "
                                                       "and the rest are kept as text"))
            break
        if isinstance(found, Command):
            commands.append(found)
        else:
            refused.append(found)
        taken = i + 1
    rest = "\n".join(lines[taken:]).lstrip("\n") if taken else text
    return Parsed(tuple(commands), tuple(refused), rest, taken)

