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
from typing import Any

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
    list_unsubscribe: list[str] = field(default_factory=list)  # this copy's List-Unsubscribe URIs (mailto:, https:)
    one_click: bool = False  # List-Unsubscribe-Post: List-Unsubscribe=One-Click (RFC 8058)


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


@functools.lru_cache(maxsize=64)  # the same for every copy of a notification
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


@dataclass(frozen=True)
class Content:
    """The MIME content of a mail (its Content-* headers, MIME-Version and the encoded body), built once and
    shared by every copy whose text, HTML and files are the same: only the other headers are each copy's."""

    raw: bytes
    headers: tuple[str, ...]


def make_content(text: str, html: str, attachments: list[tuple[str, str, bytes]] | None = None) -> Content:
    msg = EmailMessage(policy=SMTP)
    # quoted-printable: 7-bit clean for any relay (no 8BITMIME needed), lines always short
    msg.set_content(text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(html, subtype="html", charset="utf-8", cte="quoted-printable")
    for filename, ctype, data in attachments or []:  # the comment's files (multipart/mixed around the alternative)
        maintype, _, subtype = (ctype if "/" in ctype else "application/octet-stream").partition("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    raw = msg.as_bytes(policy=SMTP)
    _verify_lines(raw[:raw.find(b"\r\n\r\n") + 2], list(msg.keys()))
    return Content(raw, tuple(msg.keys()))


def _fold(name: str, value: Any) -> bytes:
    """One header line as EmailMessage and policy.SMTP write it (parsed by the header registry, folded)."""
    name, parsed = SMTP.header_store_parse(name, value)
    return SMTP.fold_binary(name, parsed)


@functools.lru_cache(maxsize=64)
def _shared_headers(from_name: str, from_addr: str, to: tuple[tuple[str, str], ...], cc: tuple[tuple[str, str], ...],
                    subject: str, date: datetime, thread_topic: str | None, thread_index: str | None,
                    auto_submitted: str, precedence_bulk: bool, loop_value: str) -> tuple[bytes, tuple[str, ...]]:
    """The header lines every copy of a notification shares, folded once."""
    sender = _address(from_name, from_addr)
    if sender is None:
        raise ValueError(f"outbound.from_address is not a plain address: {from_addr!r}")
    to_h = _address_header("To", to)
    if to_h is None:
        raise ValueError("no usable recipient address")
    pairs: list[tuple[str, Any]] = [("From", sender), ("To", to_h)]
    cc_h = _address_header("Cc", cc)
    if cc_h is not None:
        pairs.append(("Cc", cc_h))
    pairs += [("Subject", header_text(subject) or "(no subject)"), ("Date", format_datetime(date.astimezone(UTC)))]
    if thread_topic:
        pairs.append(("Thread-Topic", header_text(thread_topic, 255)))
    if thread_index:
        pairs.append(("Thread-Index", thread_index))
    pairs += [("Auto-Submitted", auto_submitted), ("X-Auto-Response-Suppress", "All")]
    if precedence_bulk:
        pairs.append(("Precedence", "bulk"))
    pairs.append((LOOP_HEADER, header_text(loop_value or from_addr, 200)))
    lines = b"".join(_fold(n, v) for n, v in pairs)
    _verify_lines(lines, [n for n, _ in pairs])
    return lines, tuple(n for n, _ in pairs)


def build(m: Outgoing, *, content: Content | None = None) -> bytes:
    """The mail's bytes: the shared headers (folded once per notification), this copy's own (Reply-To,
    Message-ID, threading, List-Unsubscribe), then the content (`content`, or built from m.text, m.html and
    m.attachments)."""
    shared, names = _shared_headers(m.from_name, m.from_addr, tuple(m.to), tuple(m.cc), m.subject, m.date,
                                    m.thread_topic, m.thread_index, m.auto_submitted, m.precedence_bulk,
                                    m.loop_value)
    reply = b""
    if m.reply_to:
        line = _reply_to_line(m.from_name, m.reply_to)
        if line is None:
            rt = _address(m.from_name, m.reply_to)
            line = _fold("Reply-To", rt) if rt is not None else b""
        reply = line
    ids: list[tuple[str, list[str]]] = []  # Message-ID headers: checked ids (clean_ids), written directly
    mid = clean_ids([m.message_id])
    if not mid:
        raise ValueError(f"not a usable Message-ID: {m.message_id!r}")
    ids.append(("Message-ID", mid))
    refs = references_chain(m.references)
    irt = clean_ids([m.in_reply_to] if m.in_reply_to else [])
    if irt:
        ids.append(("In-Reply-To", irt))
        if irt[0] not in refs:
            refs.append(irt[0])
    if refs:
        ids.append(("References", refs))
    if m.list_unsubscribe:
        ids.append(("List-Unsubscribe", [_uri(u) for u in m.list_unsubscribe]))
    own = [("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")] if m.list_unsubscribe and m.one_click else []
    if content is None:
        content = make_content(m.text, m.html, m.attachments)
    personal = reply + b"".join(_id_line(n, v) for n, v in ids) + b"".join(_fold(n, v) for n, v in own)
    # the header block is checked piece by piece: the shared lines once (_shared_headers), the content's once
    # (make_content), this copy's here (by the byte check: the parser's, per copy, cost more than the rest of
    # the copy); each piece is whole lines, none continues the one before it
    _check_lines(personal, [*(["Reply-To"] if reply else []), *(n for n, _ in ids), *(n for n, _ in own)])
    return shared + personal + content.raw


_PLAIN_ADDRESS = re.compile(r"^[A-Za-z0-9.+_=-]{1,64}@[A-Za-z0-9.-]{1,190}$")
_PLACEHOLDER = "reply@placeholder.invalid"


@functools.lru_cache(maxsize=16)
def _reply_to_prefix(from_name: str) -> tuple[bytes, bytes] | None:
    """The Reply-To line for `from_name` as the stdlib folds it, split around its address: every copy's
    Reply-To differs only in the address (a plain token address), so the display name is encoded once."""
    addr = _address(from_name, _PLACEHOLDER)
    if addr is None:
        return None
    line = _fold("Reply-To", addr)
    head, sep, tail = line.partition(f"<{_PLACEHOLDER}>".encode("ascii"))
    if not sep or b"\r\n" in head or tail != b"\r\n":  # folded, or not the usual shape: no fast path
        return None
    return head, tail


def _reply_to_line(from_name: str, reply_to: str) -> bytes | None:
    """`Reply-To: <display name> <address>` without parsing it again, for a plain address on a short line;
    None: fold it the slow way."""
    parts = _reply_to_prefix(from_name)
    if parts is None or not _PLAIN_ADDRESS.match(reply_to) or not is_sendable_address(reply_to):
        return None
    line = parts[0] + f"<{reply_to}>".encode("ascii") + parts[1]
    return line if len(line) <= 80 else None


_URI_OK = re.compile(r"^[\x21-\x3b\x3d\x3f-\x7e]{1,900}$")  # printable ASCII without < > and space


def _uri(u: str) -> str:
    if not _URI_OK.match(u):
        raise ValueError(f"not a usable List-Unsubscribe URI: {u!r}")
    return u


def _id_line(name: str, ids: list[str]) -> bytes:
    """`Name: <id> <id>...` (List-Unsubscribe: `<uri>, <uri>`), folded between them at 78 characters (printable
    ASCII, checked by clean_ids and _uri: nothing in them needs encoding or can break the line)."""
    line, lines = f"{name}:", []
    sep = "," if name == "List-Unsubscribe" else ""
    for n, i in enumerate(ids):
        word = f" <{i}>" + (sep if n < len(ids) - 1 else "")
        if len(line) + len(word) > 78 and line != f"{name}:":
            lines.append(line)
            line = ""
        line += word
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _verify_lines(lines: bytes, expected: list[str]) -> None:
    """A piece of a header block: whole CRLF-terminated lines, not continuing a line before it, holding
    exactly the `expected` headers."""
    if not expected:
        if lines:
            raise ValueError("refusing to send: unexpected header lines")
        return
    if not lines.endswith(b"\r\n") or lines[:1] in (b" ", b"\t") or b"\r\n\r\n" in lines:
        raise ValueError("refusing to send: a generated header piece is not whole lines")
    _verify_headers(lines + b"\r\n", expected)


# whole CRLF-terminated lines of printable ASCII (and tabs), each a field (RFC 5322 ftext, then the colon) or the
# continuation of the field before it
_FIELD_LINES = re.compile(rb"(?:[\x21-\x39\x3b-\x7e]+:[\t\x20-\x7e]*\r\n(?:[ \t][\t\x20-\x7e]*\r\n)*)+")
_FIELD_NAMES = re.compile(rb"(?m)^([\x21-\x39\x3b-\x7e]+):")


def _check_lines(lines: bytes, expected: list[str]) -> None:
    """_verify_lines without the parser, for what each copy adds: whole lines of printable ASCII, each a field
    (the `expected` names, in order) or the continuation of the field before it. What the parser would read as
    another header, or as the end of the header block, fails here too."""
    if not _FIELD_LINES.fullmatch(lines):
        raise ValueError("refusing to send: a generated header piece is not whole field lines")
    names = [n.decode("ascii").lower() for n in _FIELD_NAMES.findall(lines)]
    if names != [k.lower() for k in expected]:
        raise ValueError(f"refusing to send: generated headers {names} differ from {expected}")


def _verify_headers(raw: bytes, expected: list[str]) -> None:
    """Defence in depth: the generated header block holds exactly the headers we set, nothing more."""
    from email.parser import BytesHeaderParser
    from email.policy import compat32

    head = BytesHeaderParser(policy=compat32).parsebytes(raw)
    if [k.lower() for k in head.keys()] != [k.lower() for k in expected]:
        raise ValueError(f"refusing to send: generated headers {head.keys()} differ from {expected}")
