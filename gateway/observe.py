"""What the gateway reports about itself: one event per mail, per notification delivery, per SMTP session and
refusal, per SLA escalation, per IMAP poll error, and the state of each dependency (database, relay, IMAP
accounts). Standard library only (the MTA pipe mode imports this).

`app.observe` is an `Observer`: `app.observe(event)` writes the event's log line (mails and deliveries at
INFO, one line each) and hands the event to every sink in `observe.sinks` (the Prometheus counters of
`gateway.metrics`, registered by `serve`). `app.observe.state(name, ok, detail)` records a dependency's state
and logs one line when it changes (down: WARNING with the reason; up again: INFO with how long it was down),
never one per retry. /healthz reads the same states.

Log lines carry their fields twice: in the text (`key=value`) and as `record.tg` (a dict) for the JSON
formatter (`[logging] format = "json"`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("gateway.observe")
mail_log = logging.getLogger("gateway.mail")
delivery_log = logging.getLogger("gateway.delivery")


@dataclass(frozen=True)
class MailDone:
    """A mail's outcome was committed (not for a mail whose recorded result was only read again)."""

    mail_id: int
    transport: str
    sender: str | None
    message_id: str | None
    outcome: str
    ticket: int | None
    reason: str | None
    ms: float                      # the pipeline's time for this mail
    latency: float | None = None   # seconds from storing (the 250) to the outcome


@dataclass(frozen=True)
class Delivery:
    """One outbox row's delivery attempt was recorded: sent, deferred (tried again later) or failed."""

    outbox_id: int
    recipient: str
    event: str
    result: str
    answer: str | None


@dataclass(frozen=True)
class SmtpSession:
    protocol: str


@dataclass(frozen=True)
class SmtpReply:
    """A 4xx/5xx reply said to an SMTP/LMTP client (the code only: no addresses)."""

    protocol: str
    code: str


@dataclass(frozen=True)
class Escalation:
    kind: str  # response_warning ... resolution_breach | pending_reminder


@dataclass(frozen=True)
class ImapPollError:
    account: str


@dataclass
class State:
    ok: bool
    detail: str
    since: float                    # time.time() of the last change
    changes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _short(v: Any) -> str:
    if v is None or v == "":
        return "-"
    s = str(v).replace("\n", " ").replace("\r", " ")
    return s if len(s) <= 300 else s[:297] + "..."


def _quote(v: Any) -> str:
    s = _short(v)
    return json.dumps(s, ensure_ascii=False) if (" " in s or '"' in s or "=" in s) else s


_MAIL_FIELDS = tuple(f.name for f in dataclass_fields(MailDone))


class Observer:
    def __init__(self) -> None:
        self.sinks: list[Callable[[Any], None]] = []
        self.states: dict[str, State] = {}
        self._lock = threading.Lock()
        self._sink_failed: set[int] = set()

    def __call__(self, event: Any) -> None:
        if isinstance(event, MailDone):
            self._log_mail(event)
        elif isinstance(event, Delivery):
            self._log_delivery(event)
        for sink in list(self.sinks):
            try:
                sink(event)
            except Exception:  # noqa: BLE001 -- counting must never cost a mail; logged once per sink
                if id(sink) not in self._sink_failed:
                    self._sink_failed.add(id(sink))
                    log.exception("observer sink %r failed (logged once)", sink)

    @staticmethod
    def _log_mail(e: MailDone) -> None:
        if not mail_log.isEnabledFor(logging.INFO):  # nothing of the line is made when it is not written
            return
        fields = {name: getattr(e, name) for name in _MAIL_FIELDS}  # asdict(e) without its deep copy: all scalars
        fields["ms"] = round(e.ms, 1)
        if e.latency is not None:
            fields["latency"] = round(e.latency, 3)
        mail_log.info("mail %s: transport=%s sender=%s message_id=%s outcome=%s ticket=%s reason=%s ms=%.0f",
                      e.mail_id, e.transport, _quote(e.sender), _quote(e.message_id), e.outcome,
                      f"#{e.ticket}" if e.ticket else "-", _quote(e.reason), e.ms, extra={"tg": fields})

    @staticmethod
    def _log_delivery(e: Delivery) -> None:
        level = logging.WARNING if e.result == "failed" else logging.INFO
        delivery_log.log(level, "outbox %s: recipient=%s event=%s result=%s answer=%s", e.outbox_id,
                         _quote(e.recipient), e.event, e.result, _quote(e.answer), extra={"tg": asdict(e)})

    def state(self, name: str, ok: bool, detail: str = "", **extra: Any) -> bool:
        """Record a dependency's state; log one line when it changes. Returns True on a change."""
        now = time.time()
        with self._lock:
            old = self.states.get(name)
            if old is not None and old.ok == ok:
                old.detail = detail or old.detail
                old.extra.update(extra)
                return False
            self.states[name] = State(ok, detail, now, (old.changes + 1) if old else 0, dict(extra))
        fields = {"dependency": name, "ok": ok, "detail": detail}
        if not ok:
            log.warning("%s: unavailable (%s)", name, _short(detail), extra={"tg": fields})
        elif old is not None:
            log.info("%s: available again after %.0f s%s", name, now - old.since,
                     f" ({detail})" if detail else "", extra={"tg": fields})
        return True

    def snapshot(self) -> dict[str, State]:
        with self._lock:
            return {k: State(v.ok, v.detail, v.since, v.changes, dict(v.extra)) for k, v in self.states.items()}


# Log formats ------------------------------------------------------------------------------------------------
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the event's fields (`tg`),
    and the exception text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "tg", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                out.setdefault(k, v)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def formatter(fmt: str) -> logging.Formatter:
    """The formatter of `[logging] format`."""
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


__all__ = ["Delivery", "Escalation", "ImapPollError", "JsonFormatter", "MailDone", "Observer", "SmtpReply",
           "SmtpSession", "State", "formatter"]


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return "(unparsable URL)"


def log_startup(service: Any) -> None:
    """Where everything is, at INFO, when `serve` is ready: config file, data directory, database, listeners,
    HTTP, IMAP accounts, outgoing mail target."""
    cfg = service.config
    ob = cfg.values["outbound"]
    imap = [f"{a['name']} ({a['user']}@{a['host']}, folder {a['folder']})" for a in cfg.values.get("imap") or []]
    lines = [
        ("config", cfg.source),
        ("data directory", str(cfg.data_dir)),
        ("database", _safe_url(cfg.database_url)),
        ("listening", ", ".join(li.where for li in service.listeners) or "no SMTP/LMTP listener"),
        ("http", getattr(service, "http_where", None) or "off"),
        ("imap accounts", ", ".join(imap) or "none"),
        ("outgoing mail", (f"relay {ob['relay_host']}:{ob['relay_port']} ({ob['relay_security']})" if ob["relay_host"]
                           else f"Maildir {cfg.data_dir / 'outbox-maildir'}") if ob["enabled"] else "off"),
    ]
    for what, value in lines:
        log.info("%s: %s", what, value, extra={"tg": {"startup": what, "value": value}})
