"""Build outgoing mail with the stdlib `email` API only (EmailMessage, headerregistry.Address, policy.SMTP).

Every header value passes through `one_line` (no CR, LF or other control character survives, whether it came
raw or RFC 2047-encoded and decoded by the parser), addresses must be plain addr-specs, and envelope
recipients are never read back from headers: a subject or a display name can neither add a header nor a
recipient.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address, BaseHeader
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime

from gateway.ourmail import LOOP_HEADER
from gateway.outbound.ratelimit import is_sendable_address
from gateway.outbound.render import one_line


class _Policy(EmailPolicy):
    """policy.SMTP, remembering how long headers were folded: the copies of one notification to a ticket
    with many watchers share their Cc header, and folding 200 addresses takes the stdlib ~20 ms each time."""

    def fold_binary(self, name: str, value: str) -> bytes:
        if len(value) < 300:
            return super().fold_binary(name, value)
        key = (name, str(value), self.max_line_length)
        hit = _FOLDED.get(key)
        if hit is None:
            if len(_FOLDED) > 64:
                _FOLDED.clear()
            hit = _FOLDED[key] = super().fold_binary(name, value)
        return hit


_FOLDED: dict[tuple[str, str, int | None], bytes] = {}
SMTP = _Policy(linesep="\r\n")

_MSGID_OK = re.compile(r"^[\x21-\x3b\x3d\x3f-\x7e]{1,250}$")  # printable ASCII without < > and space
_MAX_REFERENCES = 20


@dataclass
class Outgoing:
    from_name: str
    from_addr: str
    to: list[tuple[str, str]]
    subject: str
    text: str
    html: str
    message_id: str  # without <>
    date: datetime
    reply_to: str | None = None
    cc: list[tuple[str, str]] = field(default_factory=list)
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    auto_submitted: str = "auto-generated"  # auto-replied for acknowledgements
    precedence_bulk: bool = False
    loop_value: str = ""
    thread_topic: str | None = None
    thread_index: str | None = None
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)  # (filename, content type, bytes)


_ENCODED_WORD = re.compile(r"=\?[^?\s]*\?[bBqQ]\?", re.ASCII)


def header_text(value: str, limit: int = 900) -> str:
    """Free text for a header (subject, display name): one line, and no RFC 2047 encoded-word left in it.

    The stdlib decodes encoded-words in values *assigned* to headers too (before Python 3.11.10/3.12.5 it
    then wrote a decoded CR/LF out as a new header line), so text that looks encoded is decoded here,
    repeatedly, and cleaned after every round; whatever still looks like an encoded-word is defused."""
    from email.header import decode_header, make_header

    text = one_line(value, limit)
    for _ in range(5):
        if not _ENCODED_WORD.search(text):
            return text
        try:
            decoded = str(make_header(decode_header(text)))
        except Exception:  # noqa: BLE001 -- undecodable: defuse below
            break
        decoded = one_line(decoded, limit)
        if decoded == text:
            break
        text = decoded
    return _ENCODED_WORD.sub(lambda m: "=\u200b" + m.group(0)[1:], text) if _ENCODED_WORD.search(text) else text


def _address(name: str, addr: str) -> Address | None:
    if not is_sendable_address(addr):
        return None
    local, _, domain = addr.rpartition("@")
    return Address(display_name=header_text(name, 200), username=local, domain=domain)


@functools.lru_cache(maxsize=64)
def _address_header(name: str, pairs: tuple[tuple[str, str], ...]) -> BaseHeader | None:
    """The parsed header object for a list of addresses, built once: every copy of a notification to a
    ticket with many watchers shows the same Cc, and the stdlib's address parser is slow."""
    addrs = [a for a in (_address(n, x) for n, x in pairs) if a is not None]
    if not addrs:
        return None
    return SMTP.header_factory(name, addrs)


def clean_ids(ids: list[str]) -> list[str]:
    out: list[str] = []
    for i in ids:
        i = (i or "").strip().strip("<>")
        if _MSGID_OK.match(i) and "@" in i and i not in out:
            out.append(i)
    return out


def references_chain(ids: list[str]) -> list[str]:
    """The thread's first Message-ID and the most recent ones (RFC 5322 allows trimming the middle)."""
    ids = clean_ids(ids)
    if len(ids) <= _MAX_REFERENCES:
        return ids
    return [ids[0]] + ids[-(_MAX_REFERENCES - 1):]


def thread_index(root_time: datetime, root_key: str, now: datetime) -> str:
    """Outlook's Thread-Index: a 22-byte header block (FILETIME of the thread's start, a GUID for the thread)
    and one 5-byte child block for this message's offset from the start."""
    def filetime(dt: datetime) -> int:
        return int((dt.astimezone(UTC) - datetime(1601, 1, 1, tzinfo=UTC)).total_seconds()
                   * 10_000_000)

    root = filetime(root_time)
    head = (root >> 16).to_bytes(6, "big") + hashlib.md5(root_key.encode("utf-8")).digest()
    delta = max(0, filetime(now) - root)
    if delta < (1 << 49):
        code = (delta >> 18) & 0x7FFFFFFF
    else:
        code = 0x80000000 | ((delta >> 23) & 0x7FFFFFFF)
    child = code.to_bytes(4, "big") + bytes([(hashlib.md5(str(now).encode()).digest()[0] & 0xF0)])
    return base64.b64encode(head + child).decode("ascii")


def build(m: Outgoing) -> bytes:
    msg = EmailMessage(policy=SMTP)
    sender = _address(m.from_name, m.from_addr)
    if sender is None:
        raise ValueError(f"outbound.from_address is not a plain address: {m.from_addr!r}")
    msg["From"] = sender
    to = _address_header("To", tuple(m.to))
    if to is None:
        raise ValueError("no usable recipient address")
    msg["To"] = to
    cc = _address_header("Cc", tuple(m.cc))
    if cc is not None:
        msg["Cc"] = cc
    if m.reply_to:
        rt = _address(m.from_name, m.reply_to)
        if rt is not None:
            msg["Reply-To"] = rt
    msg["Subject"] = header_text(m.subject) or "(no subject)"
    msg["Date"] = format_datetime(m.date.astimezone(UTC))
    msg["Message-ID"] = f"<{m.message_id}>"
    refs = references_chain(m.references)
    irt = clean_ids([m.in_reply_to] if m.in_reply_to else [])
    if irt:
        msg["In-Reply-To"] = f"<{irt[0]}>"
        if irt[0] not in refs:
            refs.append(irt[0])
    if refs:
        msg["References"] = " ".join(f"<{i}>" for i in refs)
    if m.thread_topic:
        msg["Thread-Topic"] = header_text(m.thread_topic, 255)
    if m.thread_index:
        msg["Thread-Index"] = m.thread_index
    msg["Auto-Submitted"] = m.auto_submitted
    msg["X-Auto-Response-Suppress"] = "All"
    if m.precedence_bulk:
        msg["Precedence"] = "bulk"
    msg[LOOP_HEADER] = header_text(m.loop_value or m.from_addr, 200)
    # quoted-printable: 7-bit clean for any relay (no 8BITMIME needed), lines always short
    msg.set_content(m.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(m.html, subtype="html", charset="utf-8", cte="quoted-printable")
    for filename, ctype, data in m.attachments:  # the comment's files (multipart/mixed around the alternative)
        maintype, _, subtype = (ctype if "/" in ctype else "application/octet-stream").partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    raw = msg.as_bytes(policy=SMTP)
    _verify_headers(raw, [k for k in msg.keys()])
    return raw


def _verify_headers(raw: bytes, expected: list[str]) -> None:
    """Defence in depth: the generated header block holds exactly the headers we set, nothing more."""
    from email.parser import BytesHeaderParser
    from email.policy import compat32

    head = BytesHeaderParser(policy=compat32).parsebytes(raw)
    if [k.lower() for k in head.keys()] != [k.lower() for k in expected]:
        raise ValueError(f"refusing to send: generated headers {head.keys()} differ from {expected}")
