"""Jinja2 templates for notifications: built-in ones (package `gateway.templates`) overridable file by file from
`notifications.template_dir`; StrictUndefined; every template rendered once with sample data by the start-up
check (see gateway.outbound.check_templates).

`Templates` is lazy: jinja2 is imported and a template compiled only when something is rendered, so a
process that only queues mail (the MTA pipe `ingest`) never pays for it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jinja2 import Environment, Template

EVENTS: tuple[str, ...] = ("ticket_created", "staff_new_ticket", "comment", "internal_note", "status",
                           "assignment", "rejected", "commands")
PARTS: tuple[str, ...] = ("subject", "txt", "html")


class TemplateError(Exception):
    """A template that cannot be loaded or rendered (raised at start-up)."""


def builtin_dir() -> Path:
    try:
        from importlib.resources import files

        p = Path(str(files("gateway.templates")))
        if (p / "comment.txt.j2").is_file():
            return p
    except Exception:  # noqa: BLE001 -- not installed as a package: the source tree
        pass
    return Path(__file__).resolve().parents[2] / "templates"


@dataclass
class Rendered:
    subject: str
    text: str
    html: str


_CTRL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u0085]")
_WS = re.compile(r"\s+")


def one_line(s: str, limit: int = 900) -> str:
    """Header text: no control characters at all (CR/LF, NUL, U+2028...), whitespace folded."""
    return _WS.sub(" ", _CTRL.sub(" ", s)).strip()[:limit]


class Templates:
    def __init__(self, override_dir: str | Path | None = None) -> None:
        self.dirs: list[Path] = []
        if override_dir:
            d = Path(override_dir)
            if not d.is_dir():
                raise TemplateError(f"notifications.template_dir: not a directory: {d}")
            self.dirs.append(d)
        self.dirs.append(builtin_dir())
        self._env: Environment | None = None
        self._cache: dict[str, Template] = {}
        self._variables: dict[str, frozenset[str] | None] = {}
        self.checked = False  # the full sample render passed in this process

    @property
    def env(self) -> Environment:
        if self._env is None:
            from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape

            self._env = Environment(loader=ChoiceLoader([FileSystemLoader(str(d)) for d in self.dirs]),
                                    undefined=StrictUndefined,
                                    autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
                                    keep_trailing_newline=True, trim_blocks=False)
        return self._env

    def _get(self, name: str) -> Template:
        t = self._cache.get(name)
        if t is None:
            t = self._cache[name] = self.env.get_template(name)
        return t

    def fingerprint(self) -> str:
        """sha256 over every template source the loader can see (override directory first), in order:
        changes when a template is edited, added or removed. Cheap (no jinja2): reads ~40 small files."""
        import hashlib

        h = hashlib.sha256()
        for d in self.dirs:
            h.update(b"\0dir\0" + str(d.resolve()).encode("utf-8", "surrogateescape"))
            try:
                names = sorted(p.name for p in d.iterdir() if p.is_file())
            except OSError as e:
                raise TemplateError(f"cannot list templates in {d}: {e}") from e
            for name in names:
                try:
                    data = (d / name).read_bytes()
                except OSError as e:
                    raise TemplateError(f"cannot read template {d / name}: {e}") from e
                h.update(b"\0f\0" + name.encode("utf-8", "surrogateescape") + b"\0"
                         + str(len(data)).encode() + b"\0" + data)
        return h.hexdigest()

    def variables(self, event: str) -> frozenset[str] | None:
        """The template variables the event's templates (with what they include or extend) read; None when a
        template names another at run time (then any variable may matter). A variable they do not read cannot
        change the output: the copies of a notification that differ only there share one rendering."""
        if event not in self._variables:
            names: set[str] = set()
            seen: set[str] = set()
            known = all(self._collect(f"{event}.{part}.j2", names, seen) for part in PARTS)
            self._variables[event] = frozenset(names) if known else None
        return self._variables[event]

    def _collect(self, name: str, names: set[str], seen: set[str]) -> bool:
        if name in seen:
            return True
        seen.add(name)
        from jinja2 import meta

        env = self.env
        assert env.loader is not None
        ast = env.parse(env.loader.get_source(env, name)[0])
        names.update(meta.find_undeclared_variables(ast))
        return all(ref is not None and self._collect(ref, names, seen) for ref in meta.find_referenced_templates(ast))

    def render(self, event: str, context: dict[str, Any]) -> Rendered:
        out = []
        for part in PARTS:
            name = f"{event}.{part}.j2"
            out.append(self._get(name).render(**context))
        return Rendered(subject=one_line(out[0]), text=out[1], html=out[2])

    def check(self, extra: list[tuple[str, dict[str, Any]]] | None = None) -> None:
        """Render every event (and the `extra` (event, sample context) pairs, e.g. the SLA mails) with sample
        data: a missing file or variable raises TemplateError now."""
        for event, ctx in [(e, sample_context(e)) for e in EVENTS] + list(extra or []):
            try:
                self.render(event, ctx)
            except Exception as e:  # noqa: BLE001 -- jinja2 raises many kinds
                raise TemplateError(describe_error(e, event)) from e
        self.checked = True


def describe_error(e: BaseException, event: str) -> str:
    """`template comment.txt.j2 line 3 for event 'comment': UndefinedError: ...` (start-up check, outbox)."""
    where = getattr(e, "name", None) or getattr(e, "filename", None)
    lineno = getattr(e, "lineno", None)
    if where is None:  # a render-time error (UndefinedError): jinja2 puts the template's frames in the traceback
        tb = e.__traceback__
        while tb is not None:
            name = tb.tb_frame.f_code.co_filename
            if name.endswith(".j2"):
                where, lineno = Path(name).name, tb.tb_lineno
            tb = tb.tb_next
    where = where or event
    return f"template {where}{f' line {lineno}' if lineno else ''} for event {event!r}: {type(e).__name__}: {e}"


def fmt_time(dt: datetime | None) -> str:
    if dt is None:
        return ""
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def context(*, event: str, ticket: dict[str, Any], recipient: dict[str, Any], gateway: dict[str, str],
            reply_address: str, comment: dict[str, Any] | None = None, changes: list[dict[str, Any]] | None = None,
            changed_by: str = "", original_subject: str = "") -> dict[str, Any]:
    tag = ticket.get("tag", "")
    hint = (f"Reply to this mail to add to ticket {tag}." if tag else "")
    return {"event": event, "ticket": ticket, "recipient": recipient, "gateway": gateway, "comment": comment,
            "changes": changes or [], "changed_by": changed_by, "reply_address": reply_address,
            "reply_hint": hint, "original_subject": original_subject, "note_address": "", "done": [],
            "refused": []}


def sample_context(event: str) -> dict[str, Any]:
    from markupsafe import Markup

    ticket = {"number": 42, "tag": "[#42]", "subject": "Printer on fire", "status": "open", "priority": "medium",
              "type": "incident", "group": "", "reporter_name": "Alice Customer",
              "reporter_email": "alice@customer.example", "description": "The printer is on fire.",
              "description_html": Markup(""), "created_at": "2026-11-02 09:30 UTC"}
    comment = None
    if event in ("comment", "internal_note"):
        comment = {"body": "Have you tried turning it off?", "html": Markup("<p>Have you tried turning it off?</p>"),
                   "author_name": "Bob Staff", "author_email": "bob@example.com",
                   "internal": event == "internal_note", "created_at": "2026-11-02 09:45 UTC"}
    changes = []
    if event == "status":
        ticket["status"] = "resolved"
        changes = [{"field": "status", "old": "open", "new": "resolved"}]
    if event == "assignment":
        changes = [{"field": "assignee", "old": "", "new": "bob@example.com"}]
    if event == "rejected":
        ticket = {"number": 0, "tag": "", "subject": "", "status": "", "priority": "", "type": "", "group": "",
                  "reporter_name": "", "reporter_email": "", "description": "", "description_html": Markup(""),
                  "created_at": ""}
    ctx = context(event=event, ticket=ticket,
                  recipient={"name": "Alice Customer", "email": "alice@customer.example", "is_staff": False},
                  gateway={"from_name": "Support", "address": "support@example.com"},
                  reply_address="support+42-abcdefghijklmnopqrstuvwx@example.com", comment=comment,
                  changes=changes, changed_by="Bob Staff" if event in ("status", "assignment") else "",
                  original_subject="Hello" if event == "rejected" else "")
    if event == "commands":
        ctx.update(done=["status: open -> resolved", "time logged: 1h30m"],
                   refused=[{"line": "/link 99 blocks", "reason": "no ticket #99"}])
    return ctx
