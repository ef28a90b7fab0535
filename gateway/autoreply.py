"""Pure detection of auto-replies, bounces, list/bulk mail and mail loops.

No database, no I/O: everything here works on an already parsed ``email.message.Message``
(``email.message_from_bytes(raw, policy=email.policy.default)``; compat32 messages work too).
Nothing in this module raises on malformed mail: header values that the stdlib cannot parse
are read raw, undecodable bodies are decoded with replacement characters, and the walk over
MIME parts is bounded in depth and count.

Two entry points:

* :func:`classify` -- ``None`` for a normal human mail, else a :class:`Verdict` whose ``kind``
  is one of ``loop``, ``bounce``, ``auto_reply``, ``list``, ``bulk`` (that is also the order of
  precedence when several rules apply) and whose ``reason`` names the evidence.
* :func:`bounce_info` -- failed recipients, permanence, status and original Message-ID of a
  delivery failure report (RFC 3464 DSN or one of the common non-standard formats).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message

from gateway.addresses import Author, read_author

__all__ = ["Verdict", "BounceInfo", "classify", "bounce_info", "KIND_PRECEDENCE"]


@dataclass(frozen=True)
class Verdict:
    kind: str  # "auto_reply" | "bounce" | "bulk" | "list" | "loop"
    reason: str  # short human reason naming the header/evidence


@dataclass(frozen=True)
class BounceInfo:
    permanent: bool | None  # 5.x.x -> True, 4.x.x -> False, unknown -> None
    recipients: tuple[str, ...]  # failed recipient addresses, lowercase
    status: str | None  # e.g. "5.1.1"
    original_message_id: str | None  # Message-ID of the bounced mail, without <>
    original_to: tuple[str, ...]  # addresses the bounce was sent back to (e.g. VERP support+token@...)


#: Lower index wins when several rules apply. A loop (our own header came back) is the most
#: dangerous case, so it beats everything; then bounce > auto_reply > list > bulk.
KIND_PRECEDENCE: tuple[str, ...] = ("loop", "bounce", "auto_reply", "list", "bulk")

_MAX_DEPTH = 12
_MAX_PARTS = 200
_MAX_TEXT = 64 * 1024

# --------------------------------------------------------------------------------------------
# safe accessors
# --------------------------------------------------------------------------------------------


def _raw_header_values(msg: Message, name: str) -> list[str]:
    lname = name.lower()
    try:
        items = msg.raw_items() if hasattr(msg, "raw_items") else msg.items()
        out = []
        for k, v in items:
            if str(k).lower() == lname:
                out.append(v if isinstance(v, str) else str(v))
        return out
    except Exception:  # pragma: no cover - defensive
        return []


def _decode_raw(value: str) -> str:
    if any("\udc80" <= c <= "\udcff" for c in value):  # raw 8-bit bytes kept as surrogates by the parser
        b = value.encode("utf-8", "surrogateescape")
        try:
            value = b.decode("utf-8")
        except UnicodeDecodeError:
            value = b.decode("windows-1252", "replace")
    try:
        return str(make_header(decode_header(value)))
    except Exception:
        return value


def _headers(msg: Message, name: str) -> list[str]:
    """All values of header ``name`` as str, never raising. Read raw and decoded here: policy.default's
    address parser can spend minutes of CPU on one hostile header, and renders bad addresses as '<>'."""
    return [_decode_raw(" ".join(v.split())) for v in _raw_header_values(msg, name)]


def _header(msg: Message, name: str) -> str | None:
    values = _headers(msg, name)
    return values[0] if values else None


def _has_header(msg: Message, name: str) -> bool:
    try:
        return name in msg
    except Exception:  # pragma: no cover - defensive
        return bool(_raw_header_values(msg, name))


def _content_type(part: Message) -> str:
    try:
        return (part.get_content_type() or "text/plain").lower()
    except Exception:
        return "text/plain"


def _param(part: Message, name: str) -> str | None:
    try:
        value = part.get_param(name)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, tuple):  # RFC 2231 triple
        value = value[2]
    return str(value).strip().lower()


def _charset(part: Message) -> str:
    try:
        cs = part.get_content_charset()
    except Exception:
        cs = None
    return cs or "utf-8"


def _part_text(part: Message) -> str:
    """Decoded text of a non-multipart part, never raising."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if payload is None:
        try:
            raw = part.get_payload()
        except Exception:
            return ""
        if isinstance(raw, str):
            return raw[:_MAX_TEXT]
        return ""
    if not isinstance(payload, (bytes, bytearray)):
        return str(payload)[:_MAX_TEXT]
    payload = bytes(payload[: _MAX_TEXT * 2])
    charset = _charset(part)
    for cs in (charset, "utf-8"):
        try:
            return payload.decode(cs)[:_MAX_TEXT]
        except (LookupError, UnicodeDecodeError, ValueError):
            continue
    return payload.decode("latin-1", errors="replace")[:_MAX_TEXT]


def _children(part: Message) -> list[Message]:
    try:
        payload = part.get_payload()
    except Exception:
        return []
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    return []


def _walk(msg: Message) -> Iterator[tuple[Message, bool]]:
    """Yield (part, inside_returned_message) depth-first, bounded."""
    count = 0
    stack: list[tuple[Message, int, bool]] = [(msg, 0, False)]
    while stack and count < _MAX_PARTS:
        part, depth, inside = stack.pop()
        count += 1
        yield part, inside
        if depth >= _MAX_DEPTH:
            continue
        ctype = _content_type(part)
        if ctype == "message/delivery-status":
            continue  # its "children" are header blocks, not MIME parts
        child_inside = inside or ctype in ("message/rfc822", "message/global", "message/partial")
        kids = _children(part) if (part.is_multipart() or ctype.startswith("message/")) else []
        for child in reversed(kids):
            stack.append((child, depth + 1, child_inside))


def _author(msg: Message, name: str = "From") -> Author:
    """The header's one author as gateway.addresses reads it (raw: encoded-words never make an address)."""
    return read_author([" ".join(v.split()) for v in _raw_header_values(msg, name)], name)


# --------------------------------------------------------------------------------------------
# classify
# --------------------------------------------------------------------------------------------

_ADDR_RE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9#_-]+(?:\.[A-Za-z0-9_-]+)+")

_DAEMON_LOCALPARTS = re.compile(
    r"^(mailer-daemon|mailer_daemon|mailerdaemon|postmaster|mail\.delivery\.system|"
    r"mail-delivery-system|mdaemon|mail\.daemon)$",
    re.I,
)
_NOREPLY_LOCALPARTS = re.compile(
    r"^(no[-_.]?reply|do[-_.]?not[-_.]?reply|dont[-_.]?reply|no[-_.]?response|noreply[-+._].*|"
    r"no-reply[-+._].*|auto[-_.]?reply|autoresponder|auto[-_.]?responder)$",
    re.I,
)

# Out-of-office / automatic-reply subjects. Anchored on purpose: a customer may well *mention*
# an absence; only subjects that *start* with the marker (after Re:/AW: etc.) or carry a
# bracketed marker are treated as automatic.
_OOF_SUBJECT = re.compile(
    r"""^\s*(?:(?:re|aw|sv|vs|antw|r|rif|ref|odp|wg|fw|fwd)\s*:\s*)*
    (?:
        out\s+of\s+(?:the\s+)?office
      | automatic\s+reply | auto(?:matic)?[-\s]?response | auto[-\s]?reply | autoreply
      | abwesenheitsnotiz | automatische\s+antwort | abwesend
      | r[ée]ponse\s+automatique | absence\b | absent\b
      | respuesta\s+autom[aá]tica | fuera\s+de\s+la\s+oficina
      | risposta\s+automatica | fuori\s+sede | resposta\s+autom[aá]tica
      | automatisch\s+antwoord | afwezig | autosvar | automatiskt\s+svar | automatisk\s+svar
      | automaattinen\s+vastaus | automatyczna\s+odpowied[zź] | automatick[aá]\s+odpov[eě]d
      | otomatik\s+yan[ıi]t | автоматический\s+ответ | 自动回复 | 自動回覆 | 自動応答
      | auto\s*:
      | on\s+vacation | vacation\s+(?:reply|message|notice|response)
    )""",
    re.I | re.X,
)
_OOF_SUBJECT_ANYWHERE = re.compile(
    r"[\[(]\s*(?:automatic\s+(?:reply|response)|auto[-\s]?reply|automatyczna\s+odpowied[zź]|"
    r"automatische\s+antwort|r[ée]ponse\s+automatique|respuesta\s+autom[aá]tica)\s*[\])]"
    r"|\bis\s+out\s+of\s+(?:the\s+)?office\b",
    re.I,
)

_BOUNCE_SUBJECT = re.compile(
    r"""(?:
        undeliver(?:ed|able) | non[-\s]?deliver | returned\s+mail | returned\s+to\s+sender
      | delivery\s+(?:status\s+notification|failure|failed|problem|notification|report)
      | mail\s+delivery\s+(?:failed|failure|problem|warning|system)
      | failure\s+notice | failure\s+delivery | failed\s+mail | mail\s+system\s+error
      | could\s+not\s+be\s+delivered | delivery\s+has\s+failed | delayed\s+mail
      | message\s+delayed | has\s+not\s+yet\s+been\s+delivered | delivery\s+warning
      | warning:\s+message\s+\S+\s+delayed | mail\s+not\s+delivered | not\s+delivered
      | permanent\s+delivery\s+failure | message\s+status\s+-\s+undeliverable
      | mail\s+error | processing\s+error | nameserver\s+error | user\s+unknown
      | unzustellbar | non\s+remis | no\s+entregado | non\s+recapitabile | onbestelbaar
      | не\s+доставлено
    )""",
    re.I | re.X,
)
_FORWARD_PREFIX = re.compile(r"^\s*(?:fwd?|wg|tr|rv|i)\s*:", re.I)

# Challenge-response systems (Boxbe, whitelist confirmations) dress up as DSNs; they are
# auto-replies, not delivery failures: the recipient exists, the sender has to confirm.
_CHALLENGE_RE = re.compile(
    r"waitlisted|guest\s+list|not\s+pre-?approved|requires?\s+(?:your\s+)?confirmation|"
    r"challenge[-\s]response|verify\s+(?:that\s+)?you\s+are\s+(?:a\s+)?human|"
    r"confirm\s+(?:this|your)\s+(?:mail\s+server|e-?mail\s+address|address|identity|message)",
    re.I,
)

_VENDOR_AUTO_HEADERS = (
    "X-Autogenerated",
    "X-AutoReply-From",
    "X-Mail-Autoreply",
    "X-FC-MachineGenerated",
    "X-Autorespond",
    "X-Autoreply",
    "X-Bluebottle-Request",  # Bluebottle challenge-response
)


def _local_part(addr: str | None) -> str:
    if not addr:
        return ""
    addr = addr.strip().strip("<>")
    return addr.rsplit("@", 1)[0] if "@" in addr else addr


def _is_null_sender(envelope_from: str | None) -> bool:
    return envelope_from is not None and envelope_from.strip() in ("", "<>")


def _subject(msg: Message) -> str:
    s = _header(msg, "Subject") or ""
    return " ".join(s.split())


def _from_address(msg: Message) -> str | None:
    """The From address, or the mailbox as written when it is not one (MAILER-DAEMON without a domain)."""
    author = _author(msg)
    return author.addr or author.text or None


def _report_types(msg: Message) -> tuple[set[str], set[str]]:
    """(report-type params of multipart/report parts, content types of report sub-parts)."""
    report_types: set[str] = set()
    ctypes: set[str] = set()
    for part, inside in _walk(msg):
        if inside:
            continue
        ctype = _content_type(part)
        if ctype.startswith("multipart/"):
            rt = _param(part, "report-type")
            if rt:
                report_types.add(rt)
        if ctype in (
            "message/delivery-status",
            "message/global-delivery-status",
            "text/delivery-status",
            "message/disposition-notification",
            "message/global-disposition-notification",
            "message/feedback-report",
        ):
            ctypes.add(ctype)
    return report_types, ctypes


def _bounce_evidence(msg: Message, subject: str, ctypes: set[str], report_types: set[str]) -> str | None:
    if ctypes & {"message/delivery-status", "message/global-delivery-status", "text/delivery-status"}:
        return "message/delivery-status part"
    if "delivery-status" in report_types:
        return "multipart/report; report-type=delivery-status"
    if _has_header(msg, "X-Failed-Recipients"):
        return "X-Failed-Recipients header"
    if subject and _BOUNCE_SUBJECT.search(subject) and not _FORWARD_PREFIX.match(subject):
        return f"Subject: {subject[:60]}"
    info = _text_bounce(msg)
    if info is not None and info.recipients:
        return "delivery failure text"
    return None


def _dsn_notice_text(msg: Message) -> str:
    """Human-readable notification + diagnostic codes of a DSN (not the returned message)."""
    chunks: list[str] = []
    for part, inside in _walk(msg):
        if inside:
            continue
        ctype = _content_type(part)
        if ctype.startswith("text/"):
            chunks.append(_part_text(part)[:8000])
        elif ctype in ("message/delivery-status", "message/global-delivery-status"):
            for block in _dsn_blocks(part):
                chunks.append(block.get("diagnostic-code", ""))
    return "\n".join(chunks)


def _dsn_kind(msg: Message, subject: str) -> Verdict | None:
    """For a mail that carries a DSN: bounce, or auto_reply for challenge-response / success."""
    notice = _dsn_notice_text(msg)
    if _CHALLENGE_RE.search(notice):
        return Verdict("auto_reply", "challenge-response in delivery report (sender must confirm)")
    records: list[dict[str, str]] = []
    for part, inside in _walk(msg):
        if not inside and _content_type(part) in ("message/delivery-status", "message/global-delivery-status"):
            records.extend(b for b in _dsn_blocks(part) if "final-recipient" in b or "action" in b)
    actions = {r.get("action", "").split()[0].lower() for r in records if r.get("action", "").split()}
    if actions and actions <= {"delivered", "relayed", "expanded"}:
        return Verdict("auto_reply", f"delivery status notification (Action: {', '.join(sorted(actions))})")
    return None


def own_domains_of(addresses: Iterable[str]) -> tuple[str, ...]:
    """The domains of the gateway's own addresses, as `classify` takes them."""
    return tuple(sorted({a.rpartition("@")[2] for a in addresses}))


def classify(
    msg: Message,
    *,
    envelope_from: str | None,
    from_addr: str | None,
    loop_header: str = "X-Ticket-Gateway-Loop",
    own_domains: tuple[str, ...] = (),
) -> Verdict | None:
    """None = a normal human mail; otherwise the strongest applicable :class:`Verdict`.

    ``envelope_from`` is the SMTP MAIL FROM ("" or "<>" for the null sender; None if unknown).
    ``from_addr`` is the parsed From address (read from the header if None).
    ``own_domains`` is accepted for API stability: a reply to one of our Message-IDs is *not* a
    loop (customers reply to us); only ``loop_header`` marks a loop.
    """
    try:
        return _classify(msg, envelope_from=envelope_from, from_addr=from_addr, loop_header=loop_header)
    except Exception as exc:  # pragma: no cover - last-resort guard, the rules themselves don't raise
        return _fallback_verdict(msg, envelope_from, exc)


def _fallback_verdict(msg: Message, envelope_from: str | None, exc: Exception) -> Verdict | None:
    if _is_null_sender(envelope_from):
        return Verdict("auto_reply", f"envelope sender <> (classifier error: {type(exc).__name__})")
    return None


@dataclass
class _Facts:
    """What the rules of `_classify` read from one mail, read once."""

    msg: Message
    envelope_from: str | None
    subject: str
    report_types: set[str]
    ctypes: set[str]
    sender: str
    sender_local: str
    env_local: str
    dsn_evidence: str | None = None  # set by the DSN rule: the mail is a delivery status notification

    def bounce_evidence(self) -> str | None:
        return _bounce_evidence(self.msg, self.subject, self.ctypes, self.report_types)


def _classify(
    msg: Message, *, envelope_from: str | None, from_addr: str | None, loop_header: str
) -> Verdict | None:
    found: list[Verdict] = []

    # 1. our own loop header: the mail is one of ours that came back.
    if loop_header and _has_header(msg, loop_header):
        found.append(Verdict("loop", f"{loop_header} header present"))

    report_types, ctypes = _report_types(msg)
    sender = (from_addr or _from_address(msg) or "").strip()
    facts = _Facts(msg, envelope_from, _subject(msg), report_types, ctypes, sender,
                   sender_local=_local_part(sender).lower(),
                   env_local=_local_part(envelope_from).lower() if envelope_from else "")
    # the rules in this order (a tie between kinds of equal precedence goes to the first found)
    for rule in (_report_rules, _null_sender_rules, _daemon_sender_rules, _bounce_subject_rules, _header_rules,
                 _list_rules):
        rule(facts, found.append)

    if not found:
        return None
    order = {k: i for i, k in enumerate(KIND_PRECEDENCE)}
    return min(found, key=lambda v: order.get(v.kind, len(order)))


def _report_rules(f: _Facts, add: Callable[[Verdict], None]) -> None:
    """2. multipart/report and DSN parts"""
    report_types, ctypes = f.report_types, f.ctypes
    if ctypes & {"message/delivery-status", "message/global-delivery-status", "text/delivery-status"} or (
        "delivery-status" in report_types
    ):
        f.dsn_evidence = (
            "multipart/report; report-type=delivery-status"
            if "delivery-status" in report_types
            else "message/delivery-status part"
        )
        special = _dsn_kind(f.msg, f.subject)
        add(special or Verdict("bounce", f.dsn_evidence))
    if "disposition-notification" in report_types or ctypes & {
        "message/disposition-notification",
        "message/global-disposition-notification",
    }:
        add(Verdict("auto_reply", "multipart/report; report-type=disposition-notification (read receipt)"))
    if "feedback-report" in report_types or "message/feedback-report" in ctypes:
        add(Verdict("auto_reply", "multipart/report; report-type=feedback-report (abuse report)"))


def _null_sender_rules(f: _Facts, add: Callable[[Verdict], None]) -> None:
    """3. null envelope sender (as the transport gave it, else as the delivering MTA wrote it into Return-Path)"""
    null = "envelope sender <>" if _is_null_sender(f.envelope_from) else (
        "Return-Path: <>" if f.envelope_from is None and _null_return_path(f.msg) else None)
    if null and f.dsn_evidence is None:
        ev = f.bounce_evidence()
        add(Verdict("bounce", f"{null} and {ev}") if ev else Verdict("auto_reply", null))


def _daemon_sender_rules(f: _Facts, add: Callable[[Verdict], None]) -> None:
    """4. daemon / noreply senders; "From: Name <>" is a null From address"""
    if _author(f.msg).null and f.dsn_evidence is None and not _is_null_sender(f.envelope_from):
        ev = f.bounce_evidence()
        add(Verdict("bounce", f"From: <> and {ev}") if ev else Verdict("auto_reply", "From: <> (null address)"))
    for who, local in (("From", f.sender_local), ("envelope sender", f.env_local)):
        if local and _DAEMON_LOCALPARTS.match(local):
            if f.dsn_evidence is None:
                ev = f.bounce_evidence()
                add(Verdict("bounce", f"{who} {local} and {ev}") if ev else Verdict("auto_reply", f"{who} is {local}"))
        elif local and _NOREPLY_LOCALPARTS.match(local):
            add(Verdict("auto_reply", f"{who} is {local}"))


def _bounce_subject_rules(f: _Facts, add: Callable[[Verdict], None]) -> None:
    """5. bounce-like subject with failure text from an ordinary-looking sender"""
    msg, subject = f.msg, f.subject
    if f.dsn_evidence is None and subject and _BOUNCE_SUBJECT.search(subject) and not _FORWARD_PREFIX.match(subject):
        if _has_header(msg, "X-Failed-Recipients"):
            add(Verdict("bounce", "X-Failed-Recipients header"))
        else:
            info = _text_bounce(msg)
            # a failure statement alone ("our mails are not delivered") is what a customer writes to support:
            # a bounce from an ordinary-looking sender also names the address that failed or returns the mail
            if info is not None and (info.recipients or info.original_message_id):
                add(Verdict("bounce", f"Subject: {subject[:60]} and delivery failure text"))
    elif f.dsn_evidence is None and _has_header(msg, "X-Failed-Recipients"):
        add(Verdict("bounce", "X-Failed-Recipients header"))


def _header_rules(f: _Facts, add: Callable[[Verdict], None]) -> None:
    """6.-10.: the headers automatic senders write"""
    msg = f.msg
    # 6. RFC 3834 Auto-Submitted
    for value in _headers(msg, "Auto-Submitted"):
        token = value.split(";", 1)[0].strip().lower()
        if token and token != "no" and token != "auto-forwarded":
            add(Verdict("auto_reply", f"Auto-Submitted: {token}"))
            break

    # 7. X-Auto-Response-Suppress (Exchange)
    for value in _headers(msg, "X-Auto-Response-Suppress"):
        tokens = {t.strip().lower() for t in re.split(r"[,\s]+", value) if t.strip()}
        if tokens & {"oof", "autoreply", "all"}:
            add(Verdict("auto_reply", f"X-Auto-Response-Suppress: {value.strip()[:40]}"))
            break

    # 8. vendor auto-reply headers
    for name in _VENDOR_AUTO_HEADERS:
        values = _headers(msg, name)
        if values and any(v.strip().lower() not in ("no", "false", "0") for v in values):
            add(Verdict("auto_reply", f"{name}: {values[0].strip()[:40]}".rstrip(": ")))
            break

    # 9. Microsoft Exchange generated messages
    for name in ("X-MS-Exchange-Generated-Message-Source", "X-MS-Exchange-Inbox-Rules-Loop"):
        values = _headers(msg, name)
        if values:
            add(Verdict("auto_reply", f"{name}: {values[0].strip()[:40]}"))
            break

    # 10. Precedence
    for value in _headers(msg, "Precedence"):
        token = value.strip().lower()
        if token in ("bulk", "junk"):
            add(Verdict("bulk", f"Precedence: {token}"))
        elif token == "list":
            add(Verdict("list", "Precedence: list"))
        elif token in ("auto_reply", "auto-reply", "autoreply"):
            add(Verdict("auto_reply", f"Precedence: {token}"))


def _list_rules(f: _Facts, add: Callable[[Verdict], None]) -> None:
    """11.-12.: mailing lists, SMS gateways, out-of-office subjects"""
    msg, subject = f.msg, f.subject
    # 11. mailing lists, and the notices of list managers (confirmations, command results)
    for name in ("List-Id", "List-Unsubscribe"):
        if _has_header(msg, name):
            add(Verdict("list", f"{name} header"))
            break
    notice = _list_manager_notice(msg, f.sender_local, subject)
    if notice:
        add(Verdict("list", f"mailing-list manager notice ({notice})"))

    # 11b. SMS gateways that answer a mail to a phone with a delivery failure
    sms = _sms_bounce(msg, f.sender, subject) if f.dsn_evidence is None else None
    if sms:
        add(Verdict("bounce", f"SMS gateway delivery failure ({sms})"))

    # 12. out-of-office subjects
    if subject and (_OOF_SUBJECT.search(subject) or _OOF_SUBJECT_ANYWHERE.search(subject)):
        add(Verdict("auto_reply", f"Subject: {subject[:60]}"))


def _null_return_path(msg: Message) -> bool:
    """Does the topmost Return-Path (written by the MTA that delivered the mail) say the null sender?"""
    values = _raw_header_values(msg, "Return-Path")
    return bool(values) and re.fullmatch(r"\s*<\s*>\s*", values[0]) is not None


# Mailing-list managers: their own addresses, the headers they write, the subjects of their notices.
_LIST_MANAGER_NAMES = re.compile(
    r"^(?:majordomo|listserv|listproc|sympa|mailman|ecartis|lyris|smartlist|ezmlm|mlmmj|listar|petidomo|fml)$", re.I)
_LIST_ROLE_ADDRESS = re.compile(
    r"^owner-.+|.+-(?:request|owner|bounces?|confirm|ctl|subscribe|unsubscribe)(?:[+=].*)?$", re.I)
_LIST_SOFTWARE_HEADERS = ("X-List-Administrivia", "X-Mailman-Version", "X-ML-Name", "X-MLServer", "X-Sympa-To",
                          "X-Ecartis-Version", "Mailing-List", "X-Listprocessor-Version", "X-Majordomo-Version")
_LIST_NOTICE_SUBJECT = re.compile(
    r"""^\s*(?:
        confirm\s+[0-9a-f]{8,}
      | your\s+message\s+to\s+\S+\s+awaits\s+moderator\s+approval
      | majordomo\s+results | (?:sympa\s+)?command\s+results | results\s+of\s+your\s+commands?
      | r[ée]sultats?\s+de\s+vos\s+commandes | ergebnis(?:se)?\s+ihrer\s+(?:befehle|kommandos)
      | welcome\s+to\s+(?:the\s+)?\S+(?:\s+mailing)?\s+list
      | (?:un)?subscribe\s+request\s+result | fml\s+command\s+status
      | confirm(?:ation)?\s+(?:of\s+|for\s+)?(?:your\s+)?(?:(?:un)?subscription|(?:un)?subscribe\s+request)
      | (?:un)?subscription\s+(?:confirmation|request|notice|to\s+\S+\s+(?:confirmed|complete|request))
      | \S+\s+mailing\s+list\s+(?:reminder|memberships?\s+reminder)
      | (?:ezmlm|listserv)\s+(?:response|reply|command)
      | (?:confirmation|(?:un)?subscribe\s+request\s+result|command\s+status\s+report)\s+\(\S+\s+ML\)
    )""",
    re.I | re.X,
)


def _list_manager_notice(msg: Message, sender_local: str, subject: str) -> str | None:
    """Evidence that a list manager (Mailman, Majordomo, fml, Sympa, LISTSERV, ezmlm ...) wrote the mail."""
    if _FORWARD_PREFIX.match(subject):
        return None  # a person forwarding a notice to support
    try:
        present = {str(k).lower() for k in msg.keys()}
    except Exception:  # pragma: no cover - defensive
        present = set()
    for name in _LIST_SOFTWARE_HEADERS:
        if name.lower() in present:
            return f"{name} header"
    if sender_local and _LIST_MANAGER_NAMES.match(sender_local):
        return f"From {sender_local}"
    if subject and _LIST_NOTICE_SUBJECT.match(subject) and sender_local and _LIST_ROLE_ADDRESS.match(sender_local):
        return f"From {sender_local}, Subject: {subject[:60]}"
    return None


_SMS_WORDS = re.compile(r"\b(?:sms|mms|text\s+message|short\s+message)\b", re.I)
_SMS_SENDER = re.compile(r"^(?:\+?\d{6,15}|sms|mms|txt|sms[-_.]?(?:gateway|gw|service|noreply|no-reply|admin|delivery)|"
                         r"(?:email|mail)[-_.]?(?:to|2)[-_.]?sms)$", re.I)
_SMS_DOMAIN = re.compile(r"(?:^|\.)(?:sms|mms|txt|vtext|tmomail|messaging|text)\.", re.I)
_SMS_FAILURE = re.compile(
    r"(?:could\s*not|cannot|can't|was\s+not|has\s+not\s+been|wasn't|not)\s+(?:be\s+)?(?:delivered|sent)|"
    r"undeliver(?:able|ed)|delivery\s+(?:failed|failure|error|report:\s*(?:failed|undelivered|expired|rejected))|"
    r"\b(?:failed|rejected|expired|invalid\s+(?:number|recipient|destination))\b",
    re.I,
)


def _sms_bounce(msg: Message, sender: str, subject: str) -> str | None:
    """An SMS gateway telling that a message to a phone failed: an SMS-ish sender or subject, and failure words."""
    if _FORWARD_PREFIX.match(subject):
        return None
    local = _local_part(sender).lower()
    domain = sender.rpartition("@")[2].lower() if "@" in sender else ""
    # the gateway's own address (or domain) says SMS; a person's mail about SMS ("our SMS alerts are not
    # delivered") does not come from one
    if not ((local and (_SMS_SENDER.match(local) or _NOREPLY_LOCALPARTS.match(local))) or _SMS_DOMAIN.search(domain)):
        return None
    text = _notification_text(msg)[:4000]
    if not (_SMS_WORDS.search(subject) or _SMS_WORDS.search(text)):
        return None
    for where, value in (("Subject", subject), ("text", text)):
        m = _SMS_FAILURE.search(value)
        if m:
            return f"{where}: {' '.join(m.group(0).split())}"
    return None


# --------------------------------------------------------------------------------------------
# bounce_info
# --------------------------------------------------------------------------------------------

_STATUS_RE = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_TEXT_STATUS_RE = re.compile(r"(?<![\w.])([45])\.(\d{1,3})\.(\d{1,3})(?![\w.])")
_SMTP_CODE_RE = re.compile(r"(?<![\w.+-])([45])([0-5]\d)(?:\s|-(?=\d\.\d)|$)", re.M)


def _dsn_blocks(part: Message) -> list[dict[str, str]]:
    """Field blocks of a message/delivery-status part (per-message block first)."""
    blocks: list[dict[str, str]] = []
    kids = _children(part)
    if kids:
        for kid in kids:
            block: dict[str, str] = {}
            for k, v in _raw_items(kid):
                key = k.strip().lower()
                val = " ".join(str(v).split())
                if key not in block:
                    block[key] = val
            if block:
                blocks.append(block)
        if blocks:
            return blocks
    return _parse_field_blocks(_part_text(part))


def _raw_items(msg: Message) -> list[tuple[str, str]]:
    try:
        if hasattr(msg, "raw_items"):
            return [(str(k), str(v)) for k, v in msg.raw_items()]
        return [(str(k), str(v)) for k, v in msg.items()]
    except Exception:
        return []


def _parse_field_blocks(text: str) -> list[dict[str, str]]:
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last: str | None = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, None
            continue
        if line[:1] in (" ", "\t") and last:
            current[last] += " " + line.strip()
            continue
        m = re.match(r"^([A-Za-z][A-Za-z0-9-]*)\s*:\s*(.*)$", line)
        if m:
            last = m.group(1).lower()
            current.setdefault(last, m.group(2).strip())
    if current:
        blocks.append(current)
    return blocks


def _dsn_address(value: str | None) -> str | None:
    if not value:
        return None
    v = value.split(";", 1)[1] if ";" in value else value
    v = v.strip().strip("<>").strip()
    m = _ADDR_RE.search(v)
    if m:
        return m.group(0).strip(".").lower()
    return None


def _clean_msgid(value: str | None) -> str | None:
    if not value:
        return None
    m = re.search(r"<([^<>\s]+)>", value)
    if m:
        return m.group(1)
    v = value.strip().strip("<>").strip()
    return v or None


def _original_headers(msg: Message) -> Message | None:
    """The returned original's header block (message/rfc822 or text/rfc822-headers part)."""
    for part, inside in _walk(msg):
        ctype = _content_type(part)
        if ctype in ("message/rfc822", "message/global") and not inside:
            kids = _children(part)
            if kids:
                return kids[0]
        elif ctype in ("text/rfc822-headers", "message/rfc822-headers") and not inside:
            from email.parser import HeaderParser

            try:
                return HeaderParser().parsestr(_part_text(part).lstrip("\r\n"))
            except Exception:
                return None
    return None


def _text_original_msgid(text: str) -> str | None:
    m = re.search(r"^\s*Message-Id:\s*(<[^<>\s]+>)", text, re.I | re.M)
    return m.group(1)[1:-1] if m else None


def _own_addresses(msg: Message) -> list[str]:
    out: list[str] = []
    for name in ("X-Original-To", "Delivered-To", "Envelope-To", "To"):
        for value in _headers(msg, name):
            for a in _ADDR_RE.findall(value):
                out.append(a)
    return out


def _dedupe(items: list[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        key = item.lower()
        if key and key not in seen:
            seen.add(key)
            out.append(item)
    return tuple(out)


def _permanence_from_status(status: str | None) -> bool | None:
    if not status:
        return None
    if status.startswith("5"):
        return True
    if status.startswith("4"):
        return False
    return None


# returned by _dsn_bounce for a DSN that reports only successful deliveries
_SUCCESS_ONLY = BounceInfo(permanent=None, recipients=(), status=None, original_message_id=None, original_to=())


def bounce_info(msg: Message) -> BounceInfo | None:
    """Details of a delivery failure, or None when ``msg`` is not a bounce."""
    try:
        info = _dsn_bounce(msg)
        if info is _SUCCESS_ONLY:
            return None
        if info is None:
            info = _text_bounce(msg)
        return info
    except Exception:  # pragma: no cover - last-resort guard
        return None


def _dsn_bounce(msg: Message, _nested: bool = True) -> BounceInfo | None:
    dsn_parts = [
        p
        for p, inside in _walk(msg)
        if not inside
        and _content_type(p) in ("message/delivery-status", "message/global-delivery-status", "text/delivery-status")
    ]
    if not dsn_parts:
        return _wrapped_dsn(msg) if _nested else None
    rec = _dsn_records(dsn_parts)
    recipients, statuses, actions = rec.recipients, rec.statuses, rec.actions
    if rec.any_record and not recipients:
        return _SUCCESS_ONLY  # every recipient delivered/relayed/expanded
    # also look at the notification text for codes when the DSN has no usable Status
    text_info = _text_bounce(msg) if not recipients or not statuses else None
    if text_info is not None:
        for a in text_info.recipients:
            if a not in recipients:
                recipients.append(a)
    status = None
    permanent: bool | None = None
    if statuses:
        perm = [s for s in statuses if s.startswith("5")]
        status = perm[0] if perm else statuses[0]
        permanent = _permanence_from_status(status)
    # Action wins over the status class: "failed" with a 4.x.x status means the MTA gave up.
    if actions and all(a == "delayed" for a in actions):
        permanent = False
    elif any(a in ("failed", "failure") for a in actions):
        permanent = True
    if permanent is None and text_info is not None:
        permanent = text_info.permanent
        status = status or text_info.status
    orig = _original_headers(msg)
    msgid = _clean_msgid(_header(orig, "Message-ID")) if orig is not None else None
    if msgid is None:
        msgid = _text_original_msgid(_notification_text(msg, include_returned=True))
    return _bounce_info(msg, orig, rec.envelope, permanent, recipients, status, msgid)


def _wrapped_dsn(msg: Message) -> BounceInfo | None:
    """A scanner/gateway may wrap the real DSN in message/rfc822 of a "report-type=delivery-status"
    multipart/mixed; look one level down then, never deeper."""
    if _param(msg, "report-type") != "delivery-status":
        return None
    for part in _children(msg):
        if _content_type(part) in ("message/rfc822", "message/global"):
            for inner in _children(part):
                info = _dsn_bounce(inner, _nested=False)
                if info is not None and info is not _SUCCESS_ONLY:
                    return info
    return None


@dataclass
class _DsnRecords:
    """What the per-recipient records of a DSN say about the recipients that were not delivered."""

    recipients: list[str]
    statuses: list[str]
    actions: list[str]
    envelope: list[str]  # the bounced mail's envelope sender, where the reporting MTA names it
    any_record: bool  # some record names a recipient (delivered or not)


def _dsn_records(dsn_parts: list[Message]) -> _DsnRecords:
    rec = _DsnRecords([], [], [], [], False)
    for part in dsn_parts:
        for block in _dsn_blocks(part):
            for key in ("x-postfix-sender", "x-original-sender", "x-sender", "original-envelope-sender"):
                a = _dsn_address(block.get(key))
                if a:
                    rec.envelope.append(a)
            if "final-recipient" not in block and "original-recipient" not in block:
                continue
            rec.any_record = True
            action = (block.get("action") or "").split()
            act = action[0].lower() if action else ""
            st_m = _STATUS_RE.search(block.get("status", ""))
            status = ".".join(st_m.groups()) if st_m else None
            if act in ("delivered", "relayed", "expanded"):
                continue
            if not act and status and status.startswith("2"):
                continue
            addr = _dsn_address(block.get("final-recipient")) or _dsn_address(block.get("original-recipient"))
            orig_rcpt = _dsn_address(block.get("original-recipient"))
            for a in (addr, orig_rcpt):
                if a and a not in rec.recipients:
                    rec.recipients.append(a)
            if status:
                rec.statuses.append(status)
            rec.actions.append(act)
    return rec


# --- heuristics for non-standard bounce formats ------------------------------------------------

# Where the returned original starts inside a plain-text notification.
_RETURNED_MARKER = re.compile(
    r"""(?:
        original\s+message\s+(?:follows|as\s+received|below|is\s+attached|headers?\s+(?:are|is|follow))
      | copy\s+of\s+(?:the\s+|your\s+)?(?:first\s+part\s+of\s+the\s+|original\s+|undelivered\s+|returned\s+)?message
      | first\s+\d+\s+lines\s+of\s+(?:your|the)\s+(?:original\s+)?message
      | your\s+message\s+reads | message\s+text\s+follows | text\s+of\s+(?:the|your)\s+(?:original\s+)?message
      | start\s+of\s+returned\s+message | returned\s+(?:message|mail)\s+follows | unsent\s+message\s+below
      | summary\s+of\s+the\s+undelivered\s+message | header\s+of\s+the\s+original\s+message
      | ^[-\s]*original\s+message[-\s]*$ | ^\s*old\s+message:
      | 附件中的内容是原信件
    )""",
    re.I | re.X | re.M,
)
_HEADER_BLOCK_START = re.compile(r"^>?\s?(?:Received|Return-Path|X-Sender|X-Receiver)\s*:", re.I | re.M)

# A line that introduces the list of failed recipients.
_INTRO = re.compile(
    r"""following\s+(?:address(?:es|\(es\))?|recipients?(?:\(s\))?|destinations?|user)|
    to\s+the\s+following|wasn'?t\s+able\s+to\s+deliver|(?:could|can)\s*not\s+be\s+delivered|
    permanent\s+fatal\s+errors|did\s+not\s+reach|not\s+(?:been\s+)?delivered\s+to|unable\s+to\s+deliver|
    failed\s+(?:recipients?|addresses)|could\s+not\s+deliver|delivery\s+to\s+the\s+following|
    has\s+not\s+yet\s+been\s+delivered|intended\s+recipient|message\s+not\s+delivered|
    encountered\s+delivery\s+problems|affected\s+recipients?|address(?:es)?\s+failed|
    delivery\s+of\s+email\s+to\s+this\s+address|your\s+message\s+to:?\s*$|not\s+able\s+to\s+deliver|no\s+se\s+pudo\s+entregar|nicht\s+zugestellt|
    n'a\s+pas\s+pu\s+[êe]tre\s+(?:remis|distribu)|не\s+может\s+быть\s+доставлено|无法发送""",
    re.I | re.X,
)

# Words that make an address on the same (or next) line a failed recipient.
_FAIL_WORDS = re.compile(
    r"""user\s+unknown|unknown\s+user|no\s+such\s+(?:user|mailbox|recipient|address|domain)|
    does\s*n[o']t\s+exist|not\s+exist|unknown\s+(?:recipient|address|mailbox|local[-\s]part|host)|
    mailbox\s+(?:unavailable|full|is\s+full|not\s+found|disabled|is\s+unavailable|exceeds)|
    is\s+unavailable|user\s+not\s+found|not\s+known|no\s+mailbox|no\s+valid\s+recipients|
    invalid\s+(?:recipient|address|mailbox|final\s+delivery|user)|recipient\s+(?:rejected|unknown|address\s+rejected)|
    addressee\s+unknown|(?:could|can)\s*not\s+be\s+delivered|undeliverable\s+to|not\s+delivered|
    delivery\s+(?:failed|failure|has\s+failed)|unable\s+to\s+deliver|could\s+not\s+find\s+a\s+gateway|
    host\s+unknown|host\s+not\s+found|domain\s+not\s+found|not\s+listed|quota|over\s+quota|
    account\s+(?:is\s+)?(?:disabled|inactive|expired|suspended|closed|deactivated)|error-for:|
    \bsaid:|generated\s+from|originally\s+addressed\s+to|failed\s+recipient|did\s+not\s+(?:exactly\s+)?match|
    wrong\s+or\s+no\s+longer\s+valid|not\s+a\s+valid\s+(?:user|recipient|address|mailbox)|undeliverable\s+address|not\s+able\s+to\s+deliver|no\s+longer\s+(?:valid|active|in\s+use)|postponed|
    \b[45]\d\d[\s-]+[245]\.\d{1,3}\.\d{1,3}\b|\(\#[45]\.\d""",
    re.I | re.X,
)

# Wording that says the failure is final, whatever the status code says.
_GIVING_UP = re.compile(
    r"""permanent(?:ly)?\s+(?:fatal\s+)?(?:error|failure|fatal)|this\s+is\s+a\s+permanent|giving\s+up|
    not\s+going\s+to\s+try\s+again|too\s+long|has\s+been\s+aborted|was\s+aborted|will\s+not\s+be\s+retried|
    no\s+further\s+(?:attempts|retries)""",
    re.I | re.X,
)
_TEMPORARY_WORDS = re.compile(
    r"""\bdelayed\b|has\s+not\s+yet\s+been\s+delivered|not\s+yet\s+(?:been\s+)?delivered|
    will\s+(?:continue\s+to\s+)?(?:be\s+)?retr(?:y|ied)|will\s+(?:keep|continue\s+to)\s+try|still\s+(?:being\s+)?(?:re)?tr(?:y|ied|ying)|
    (?:delivery\s+)?attempts\s+will\s+continue|temporar(?:y|ily)\s+(?:failure|error|unavailable|deferred)|
    \bdeferred\b|\bpostponed\b|this\s+is\s+(?:just\s+)?a\s+warning|you\s+do\s+not\s+need\s+to\s+resend|
    mail\s+delivery\s+warning|warning:\s+message""",
    re.I | re.X,
)
_PERMANENT_WORDS = re.compile(
    r"""could\s*n[o']t\s+be\s+delivered|undeliverable|user\s+unknown|unknown\s+user|does\s+not\s+exist|
    no\s+such|\bfailed\b|failure|returned\s+to\s+sender|did\s+not\s+reach|not\s+delivered|
    unable\s+to\s+deliver|returning\s+message|rejected|not\s+listed|not\s+known|no\s+longer\s+valid|
    invalid|unavailable|error|did\s+not\s+(?:exactly\s+)?match|not\s+able\s+to\s+deliver|cannot\s+be\s+delivered|无法发送|无法送达""",
    re.I | re.X,
)

_SKIP_LOCALPARTS = re.compile(
    r"^(mailer-daemon|mailer_daemon|postmaster|mail\.delivery\.system|mdaemon|abuse|hostmaster|webmaster)$",
    re.I,
)
_QUOTED_HEADER_LINE = re.compile(
    r"^[\s>]*(?:from|reply-to|sender|return-path|message-id|received|date|subject|references|in-reply-to|"
    r"errors-to|list-[\w-]+|x-[\w-]+|cc|bcc|to)\s*:",
    re.I,
)
_FAILED_RCPT_HEADER = re.compile(r"^[\s>]*(?:x-failed-recipients|error-for)\s*:", re.I)
_LONE_ADDR_LINE = re.compile(
    r"""^[\s>|]*(?:\d+[.)]\s*|[-*+]\s*)?(?:"[^"]*"\s*)?['"<]?\s*(?P<a>[^\s<>"']+@[^\s<>"':;,()]+?)\s*['">]?\s*
    (?::.*|\.\.\..*|,.*|;.*|\s+on\s+.*|\s+\(.*|\s+-\s.*|\s{2,}.*|\s*<[^>]*>\s*)?$""",
    re.X,
)
_BARE_LOCAL_LINE = re.compile(r"^\s+([A-Za-z0-9][A-Za-z0-9._+-]{0,63})\s*$")


def _notification_text(msg: Message, *, include_returned: bool = False) -> str:
    """Text of the human-readable notification (without the returned original)."""
    chunks: list[str] = []
    html: list[str] = []
    for part, inside in _walk(msg):
        if inside and not include_returned:
            continue
        if part.is_multipart():
            continue
        ctype = _content_type(part)
        if ctype == "text/html":
            html.append(re.sub(r"<[^>]{0,2000}>", " ", _part_text(part)))
        elif ctype.startswith("text/") and ctype not in ("text/rfc822-headers", "text/enriched", "text/calendar"):
            chunks.append(_part_text(part))
        if sum(len(c) for c in chunks) > _MAX_TEXT:
            break
    if not chunks:
        chunks = html
    text = "\n".join(chunks)[:_MAX_TEXT]
    if not include_returned:
        cut = len(text)
        for rx in (_RETURNED_MARKER, _HEADER_BLOCK_START):
            m = rx.search(text)
            if m:
                line_start = text.rfind("\n", 0, m.start()) + 1
                if line_start > 0:
                    cut = min(cut, line_start)
        text = text[:cut]
    return text


def _exclusions(msg: Message) -> set[str]:
    """Addresses that are never failed recipients: the bounce's own sender/recipients and the
    returned original's sender side."""
    out: set[str] = set()
    # (not X-Original-To: Exchange NDRs use it for the *failed* recipient)
    for name in ("From", "To", "Delivered-To", "Return-Path", "Reply-To", "Sender"):
        for value in _headers(msg, name):
            out.update(_norm_addr(a) for a in _ADDR_RE.findall(value))
    orig = _original_headers(msg)
    if orig is not None:
        # not the original's From: a list member's own post may bounce at their own address
        for name in ("Return-Path", "Sender", "Errors-To"):
            for value in _headers(orig, name):
                out.update(_norm_addr(a) for a in _ADDR_RE.findall(value))
    return out


def _norm_addr(addr: str) -> str:
    a = addr.strip().strip("'\"`.,;:<>()[]").lower()
    # X.400 gateways write "SMTP=user@host" / "RFC-822=user@host"
    m = re.match(r"^(?:smtp|rfc-?822)=(.+@.+)$", a)
    if m:
        a = m.group(1)
    return a


def _candidate_addresses(text: str, sender_domain: str | None) -> list[str]:
    """Failed-recipient addresses found in ``text`` by line-shape heuristics."""
    lines = text.splitlines()
    found: list[str] = []
    since_intro: int | None = None  # non-blank lines seen since the last intro line
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        if since_intro is not None:
            since_intro += 1
        is_intro = bool(_INTRO.search(line))
        addrs = _ADDR_RE.findall(line)
        if not addrs:
            bare = _BARE_LOCAL_LINE.match(line)
            if bare and since_intro is not None and since_intro <= 2 and sender_domain and not is_intro:
                found.append(f"{bare.group(1)}@{sender_domain}")
            if is_intro:
                since_intro = 0
            continue
        if _QUOTED_HEADER_LINE.match(line) and not _FAILED_RCPT_HEADER.match(line):
            if is_intro:
                since_intro = 0
            continue
        nxt = " ".join(ln.strip() for ln in lines[i + 1 : i + 3])
        lone = _LONE_ADDR_LINE.match(line)
        if lone and (since_intro is not None or _FAIL_WORDS.search(line) or _FAIL_WORDS.search(nxt)):
            found.append(lone.group("a"))
        elif _FAIL_WORDS.search(line) or is_intro:
            senders = {m.group(1) for m in re.finditer(r"\bfrom\s+<?([^\s<>]+@[^\s<>:;,]+)", line, re.I)}
            found.extend(a for a in addrs if a.rstrip(".:") not in senders and a not in senders)
        elif since_intro is not None and since_intro <= 2:
            found.extend(addrs)
        if is_intro:
            since_intro = 0
    return found


def _text_bounce(msg: Message) -> BounceInfo | None:
    text = _notification_text(msg)
    if not text.strip():
        return None
    excluded = _exclusions(msg) | _header_lines_addresses(text)
    recipients: list[str] = []
    for value in _headers(msg, "X-Failed-Recipients"):
        recipients.extend(_norm_addr(a) for a in _ADDR_RE.findall(value))
    from_addr = _from_address(msg) or ""
    sender_domain = from_addr.rsplit("@", 1)[1].lower() if "@" in from_addr else None
    for a in _candidate_addresses(text, sender_domain):
        a = _norm_addr(a)
        if not a or a in excluded or _SKIP_LOCALPARTS.match(_local_part(a)) or not _ADDR_RE.fullmatch(a):
            continue
        if a not in recipients:
            recipients.append(a)
    if not recipients and _FAIL_STATEMENT.search(text):
        recipients.extend(a for a in _original_recipients(msg) if a not in excluded)
    if not recipients and not _FAIL_STATEMENT.search(text):
        return None
    st = _TEXT_STATUS_RE.search(text)
    status = ".".join(st.groups()) if st else None
    code = _SMTP_CODE_RE.search(text)
    permanent: bool | None
    if _GIVING_UP.search(text):
        permanent = True
    elif _TEMPORARY_WORDS.search(text):
        permanent = False
    elif status:
        permanent = _permanence_from_status(status)
    elif code:
        permanent = code.group(1) == "5"
    elif _PERMANENT_WORDS.search(text):
        permanent = True
    else:
        permanent = None
    orig = _original_headers(msg)
    msgid = _clean_msgid(_header(orig, "Message-ID")) if orig is not None else None
    if msgid is None:
        full = _notification_text(msg, include_returned=True)
        tail = full[len(text) :] if full.startswith(text) else full
        msgid = _text_original_msgid(tail)
    return _bounce_info(msg, orig, [], permanent, recipients, status, msgid)


def _bounce_info(msg: Message, orig: Message | None, envelope: list[str], permanent: bool | None,
                 recipients: list[str], status: str | None, msgid: str | None) -> BounceInfo:
    """The verdict's details; the bounced mail's envelope sender is looked for in the returned headers
    (Return-Path) and in our own addresses the notification names, after those the DSN gave."""
    if orig is not None:
        rp = _author(orig, "Return-Path").addr
        if rp:
            envelope.append(rp)
    envelope.extend(_own_addresses(msg))
    return BounceInfo(
        permanent=permanent,
        recipients=tuple(recipients),
        status=status,
        original_message_id=msgid,
        original_to=_dedupe(envelope),
    )


_FAIL_STATEMENT = re.compile(
    r"(?:could\s*not|can\s*not|not\s+able\s+to|unable\s+to|failed\s+to)\s+(?:be\s+)?deliver|undeliverable|"
    r"permanent\s+fatal|not\s+(?:been\s+)?delivered|delivery\s+(?:has\s+)?failed|"
    r"not\s+a\s+valid\s+(?:user|recipient|address|mailbox)",
    re.I,
)


_ORIGINAL_RCPT_HEADERS = (
    "X-MDaemon-Deliver-To", "X-MDRcpt-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "Delivered-To"
)


def _original_recipients(msg: Message) -> list[str]:
    """Fallback when the notification names nobody: the returned original's delivery headers
    (never its To/Cc: those may be a list address)."""
    orig = _original_headers(msg)
    if orig is None:
        return []
    out: list[str] = []
    for name in _ORIGINAL_RCPT_HEADERS:
        for value in _headers(orig, name):
            out.extend(_norm_addr(a) for a in _ADDR_RE.findall(value))
    return list(dict.fromkeys(out))


def _header_lines_addresses(text: str) -> set[str]:
    """Addresses on From:/Reply-To:/Sender:/Return-Path: lines quoted in the notification."""
    out: set[str] = set()
    for m in re.finditer(r"^[\s>]*(?:from|reply-to|sender|return-path|errors-to)\s*:.*$", text, re.I | re.M):
        out.update(_norm_addr(a) for a in _ADDR_RE.findall(m.group(0)))
    return out
