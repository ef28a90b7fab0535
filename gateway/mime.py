"""Robust parsing of one raw mail into what the ticket pipeline needs.

Pure module: no database, no I/O.  ``parse_mail`` never raises anything but
``MailParseError`` (not an email at all, MIME tree too deep, too many parts);
every other oddity is handled and noted in ``ParsedMail.defects``.

Design notes
------------
* The stdlib parser (``email`` with ``policy.default``) builds the MIME tree
  (``ParsedMail.message``).  Header *values* used for the ParsedMail fields are
  read from the raw header strings and interpreted here (RFC 2047 words, RFC
  2231 parameters, address lists) with small linear-time routines, because
  ``policy.default`` header parsing can raise on malformed input and is
  super-linear on huge headers (a 1 MB To header takes ~30 s to parse).
* Nesting depth and part count are checked by a cheap structural pre-scan
  (``_Scan``: a mirror of the stdlib FeedParser's boundary handling that jumps
  over bodies with ``bytes.find``) before the stdlib parser runs (the parser
  itself is recursive and O(lines x depth)), and again, exactly, on the parsed
  tree.
* Large bodies (``_BIG_BODY``, 64 KiB) of non-text leaves outside message/*
  parts are kept out of the stdlib parser: it parses a skeleton of the mail in
  which each such body is a one-line placeholder, the skeleton's tree is
  verified to have exactly the structure the full parse would have
  (``_parse_fast``; otherwise the whole mail is parsed as before), and the
  bodies are decoded straight from the raw bytes (base64, quoted-printable, or
  as is), so a 24 MB mail costs about one copy of its attachments instead of
  ~8x its size.  Results are identical to the full parse, defects included.
* Every string in a ParsedMail is free of lone surrogates.
"""

from __future__ import annotations

import binascii
import codecs
import datetime as _dt
import email.utils
import io
import os
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import errors as _errors
from email import policy as _policy
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

from gateway import addresses, charsets, parts
from gateway.headerblock import rejoin_lost_folds, skip_leading_junk

__all__ = ["MailParseError", "Part", "ParsedMail", "parse_mail", "safe_filename"]


class MailParseError(Exception):
    """The input cannot be handled as a mail; ``reason`` is a short sentence for the admin."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Part:
    """An attachment or inline image."""

    filename: str  # safe display name; never a filesystem path
    content_type: str  # lowercase maintype/subtype
    data: bytes  # decoded payload (b"" when `source` holds it)
    content_id: str | None  # without <>
    inline: bool
    # parse_mail(stream_large=True) only: a large body left encoded in the raw mail, its decoded bytes read a
    # chunk at a time from here (`Encoded.chunks`) instead of held in `data`
    source: Encoded | None = None


@dataclass
class ParsedMail:
    """Everything the pipeline needs from one mail.

    ``message`` is the stdlib's MIME tree (policy.default): all headers of all parts, the structure,
    and the payloads of text parts, message/* parts and small parts are as the stdlib parses them.
    The payload of a large (>= 64 KiB) non-text leaf outside message/* parts is a one-line
    placeholder ``[gateway.mime placeholder N NONCE, a body of SIZE bytes kept out of the parsed
    tree]`` instead of the encoded body: its decoded bytes are in ``attachments``.  Read attachment
    data from ``attachments``, never from ``message``.
    """

    message: EmailMessage
    message_id: str | None
    in_reply_to: list[str]
    references: list[str]
    subject: str
    from_addr: str | None
    from_name: str
    from_problem: str | None
    reply_to: list[str]
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    date: _dt.datetime | None
    text: str
    html: str | None
    attachments: list[Part] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    # plain words: why the mail must act as nobody (several authors, or a header naming a person that the
    # standard RFC 5322 reading reads as someone else); None when its people are read one way
    ambiguous: str | None = None
    bounds: list[str] = field(default_factory=list)  # the bounds this mail hit (what was not read, and why)


# --------------------------------------------------------------------------------------------
# small string helpers

_SURROGATES = re.compile("[\ud800-\udfff]")
_PERCENT_HEX = re.compile(rb"%([0-9A-Fa-f]{2})")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_WS = re.compile(r"\s+")
# bidi overrides/isolates/marks, zero-width chars, BOM, line/paragraph separators, Arabic letter mark
_INVISIBLE = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u200b-\u200d\ufeff\u2028\u2029\u061c]")
_MAX_DEFECTS = 200
# Bounds on what a mail may make the parser do (issue 12): past each, the rest is not read and
# ParsedMail.bounds says so (the decision trace shows it); the mail still becomes what can be read.
MAX_ADDRESSES = 1000  # addresses read from one address header (To, Cc, Reply-To): watchers take 10, routing 1
MAX_MESSAGE_IDS = 100  # ids of References (the first, the root, and the last 99) and of In-Reply-To
MAX_MIME_PARAMS = 200  # parameters (RFC 2231 sections count one each) of one Content-Type/-Disposition header
MAX_HTML_CHARS = 2_000_000  # characters of a text/html body read; the rest is cut (html_to_text, nh3 are linear)
MAX_HTML_DEPTH = 500  # element nesting of a text/html body; deeper HTML is read as text (nh3 is quadratic in it)
MAX_HEADER_FIELDS = 1000  # fields of the mail's header block read: the first and the last 500 (each lookup scans all)
MAX_ATTACHMENTS = 100  # attachments kept per mail (each is a durable file); the rest stay in the original mail
# bytes of a text part without a file name (a body) read: the rest is cut at a line end and stays in the original
# mail. A 25 MB text body otherwise costs its size several times over (payload, decoded bytes, text, the tree
# sent back by the worker, the comment): see bench/bench_memory.py. Above MAX_HTML_CHARS: that bound still holds.
MAX_TEXT_BYTES = 4 * 1024 * 1024
_MAX_HEADER_TEXT = 998


def _no_surrogates(s: str) -> str:
    return _SURROGATES.sub("\ufffd", s)


def _oneline(s: str, limit: int = _MAX_HEADER_TEXT) -> str:
    """Header text for display: no control chars, whitespace folded, at most ``limit`` chars."""
    s = _no_surrogates(s)
    s = _CONTROL.sub(" ", s)
    s = _WS.sub(" ", s).strip()
    return s[:limit]


def _raw_to_bytes(s: str) -> bytes:
    """Undo the parser's surrogateescape decoding of 8-bit header bytes."""
    return s.encode("utf-8", "surrogateescape")


def _bytes_to_text(b: bytes, undeclared: _Undeclared | None = None) -> str:
    """Undeclared 8-bit bytes (headers): utf-8, else the mail's undeclared charset (``_Undeclared``), else
    windows-1252, else latin-1 (which decodes every byte: nothing is lost)."""
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        pass
    codec = undeclared.codec() if undeclared is not None else charsets.guess(b)
    for enc in (codec, "windows-1252"):
        if enc:
            try:
                return b.decode(enc)
            except (UnicodeDecodeError, LookupError):
                continue
    return b.decode("latin-1")


class _Undeclared:
    """The charset of one mail's undeclared 8-bit header bytes, found once and only when asked (ASCII and UTF-8
    mail never asks): the charset its body declares (``hint``) when that decodes them, else the charset of an
    encoded word elsewhere in its headers, else a guess over all of them together (and a sample of the body's own
    undeclared bytes; a name or a subject alone is too short to tell GBK from Big5 or EUC-KR), the sender's
    country breaking ties."""

    __slots__ = ("_hint", "_index", "_body", "_codec", "_done")

    def __init__(self, hint: str | None, index: dict[str, list[object]], body: Callable[[], bytes]) -> None:
        self._hint = hint
        self._index = index
        self._body = body
        self._codec: str | None = None
        self._done = False

    def codec(self) -> str | None:
        if not self._done:
            self._done = True
            sample = b"\n".join(v for v in _eight_bit_values(self._index) if not _is_utf8(v))
            if sample:
                hint = self._hint or _encoded_word_charset(self._index)
                prior = charsets.prior_for(_from_domain(self._index))
                body = self._body()[:4096] if self._hint is None else b""
                self._codec = charsets.guess(sample + b"\n" + body, hint, prior)
        return self._codec


def _eight_bit_values(index: dict[str, list[object]]) -> list[bytes]:
    """The raw bytes of every header value in ``index`` that carries undeclared 8-bit bytes."""
    out: list[bytes] = []
    for values in index.values():
        for v in values:
            text = str(v)
            if not text.isascii():
                out.append(_raw_to_bytes(text))
    return out


_WORD_CHARSET = re.compile(r"=\?([^?\s*]{1,40})[^?\s]{0,40}\?[bBqQ]\?")
_DOMAIN = re.compile(r"@([A-Za-z0-9.-]{1,253})")


def _encoded_word_charset(index: dict[str, list[object]]) -> str | None:
    """The first charset other than ASCII/UTF-8 that an RFC 2047 word of the From, Subject, To or Cc names: the
    sender's mail program writes its undeclared bytes in the charset it declares elsewhere."""
    for name in ("subject", "from", "to", "cc"):
        for v in index.get(name, ()):
            for m in _WORD_CHARSET.finditer(str(v)[:4096]):
                cs = _norm_charset(m.group(1))
                if cs and cs not in ("ascii", "utf-8"):
                    return cs
    return None


def _from_domain(index: dict[str, list[object]]) -> str | None:
    values = index.get("from")
    m = _DOMAIN.search(str(values[0])[:4096]) if values else None
    return m.group(1) if m else None


def _declared_charset(walker: _Walker, parts: list[Message]) -> str | None:
    """The first charset the body parts declare that says something about 8-bit text (not ASCII, not UTF-8)."""
    for part in parts:
        cs = _norm_charset(walker.info(part).params.get("charset"))
        if cs and cs not in ("ascii", "utf-8"):
            try:
                if codecs.lookup(cs).name.replace("-", "_") not in _FORBIDDEN_CODECS:
                    return cs
            except LookupError:
                continue
    return None


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# charsets

_CHARSET_ALIASES = {
    "iso-8859-1": "windows-1252",  # WHATWG: latin-1 labels are really windows-1252
    "iso8859-1": "windows-1252",
    "latin1": "windows-1252",
    "latin-1": "windows-1252",
    "us-ascii": "ascii",
    "ascii": "ascii",
    "iso-8859-8-i": "iso-8859-8",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "x-sjis": "cp932",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "windows-874": "cp874",
    "ks_c_5601-1987": "cp949",
    "euc-kr": "cp949",
    "utf8": "utf-8",
}
# text codecs that must never be applied to mail data
_FORBIDDEN_CODECS = {"unicode_escape", "raw_unicode_escape", "undefined", "punycode", "idna", "mbcs", "oem"}


def _norm_charset(charset: str | None) -> str | None:
    if not charset:
        return None
    cs = _no_surrogates(charset).strip().strip("\"'").strip().lower()
    cs = cs.split("*", 1)[0]  # RFC 2231 language suffix
    if not cs or len(cs) > 60:
        return cs[:60] or None
    return _CHARSET_ALIASES.get(cs, cs)


_JIS_VARIANTS = {"iso2022_jp": ("iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_3", "iso2022_jp_2004"),
                 "shift_jis": ("cp932",), "euc_jp": ("euc_jis_2004",), "gb2312": ("gb18030",), "gbk": ("gb18030",),
                 "euc_kr": ("cp949",), "ks_c_5601_1987": ("cp949",)}


def _mostly_decodable(data: bytes, cs: str) -> str | None:
    """Text in the declared charset despite a few bad bytes: a vendor superset of the charset
    (ISO-2022-JP extensions, CP932, GB18030, ...) or, when at most 1 in 50 characters is bad, the declared
    charset with the bad bytes replaced. None when the declared charset is plainly wrong."""
    name = codecs.lookup(cs).name.replace("-", "_")
    for variant in _JIS_VARIANTS.get(name, ()):
        try:
            return _no_surrogates(data.decode(variant))
        except (UnicodeError, LookupError):
            continue
    text = data.decode(cs, "replace")
    bad = text.count("\ufffd")
    if name.startswith("iso2022"):
        return _no_surrogates(text)
    if name == "utf_8":
        # real UTF-8 with a few broken bytes has more well-formed multibyte characters than broken ones;
        # Latin-1 text labelled UTF-8 has none
        good = sum(1 for c in text if c > "\x7f" and c != "\ufffd")
        return _no_surrogates(text) if good >= bad else None
    if bad and bad * 50 <= max(len(text), 1):
        return _no_surrogates(text)
    return None


def _decode_text(data: bytes, charset: str | None, what: str, defects: list[str], hint: str | None = None) -> str:
    """Decode with the declared charset, falling back to utf-8, the detected charset (``charsets.guess``, with
    ``hint``: the charset the mail's body declares), windows-1252, latin-1."""
    cs = _norm_charset(charset)
    if cs is not None:
        try:
            if codecs.lookup(cs).name.replace("-", "_") in _FORBIDDEN_CODECS:
                raise LookupError(cs)
            return _no_surrogates(data.decode(cs))
        except LookupError:
            problem = f"unknown charset {cs!r}"
        except (UnicodeError, ValueError, TypeError):
            problem = f"bytes are not valid {cs!r}"
            mostly = _mostly_decodable(data, cs)
            if mostly is not None:
                defects.append(f"{what}: {problem}, undecodable bytes replaced with U+FFFD")
                return mostly
        except Exception as exc:  # pragma: no cover - defensive (codec bugs)
            problem = f"charset {cs!r} failed ({type(exc).__name__})"
    else:
        problem = None
    if cs != "utf-8":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if problem is not None:
                defects.append(f"{what}: {problem}, decoded as utf-8")
            return text
    return _fallback(data, cs, what, problem, defects, hint)


def _fallback(data: bytes, cs: str | None, what: str, problem: str | None, defects: list[str],
              hint: str | None) -> str:
    """Bytes that are not the declared charset (or declare none) and not UTF-8: the detected charset, else
    windows-1252, else latin-1."""
    guessed = charsets.guess(data, hint if hint != cs else None)
    for enc in (guessed, "windows-1252", "latin-1"):
        if enc is None or enc == cs:
            continue
        try:
            text = data.decode(enc)
        except UnicodeDecodeError:
            continue
        shown = f"{charsets.display_name(enc)} (detected)" if enc == guessed else enc
        defects.append(f"{what}: {problem}, decoded as {shown}" if problem is not None
                       else f"{what}: undeclared 8-bit bytes, decoded as {shown}")
        return text
    return data.decode("latin-1")  # pragma: no cover - latin-1 decodes everything


# --------------------------------------------------------------------------------------------
# RFC 2047 encoded words

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*?)\?=")


def _decode_word_bytes(enc: str, payload: str) -> bytes:
    data = payload.encode("ascii", "replace")
    if enc in "qQ":
        return binascii.a2b_qp(data, header=True)
    data = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
    if len(data) % 4 == 1:
        data = data[:-1]
    data += b"=" * (-len(data) % 4)
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:  # pragma: no cover - cleaned input always decodes
        return b""


def _decode_words(s: str, defects: list[str], what: str) -> str:
    """Decode RFC 2047 encoded words; whitespace between adjacent words is dropped."""
    if "=?" not in s:
        return s
    out: list[str] = []
    pos = 0
    pending: list[tuple[str, bytes]] = []  # adjacent encoded words not yet decoded

    def flush() -> None:
        # concatenate same-charset neighbours first: multibyte chars may be split across words
        merged: list[tuple[str, bytes]] = []
        for cs, b in pending:
            if merged and merged[-1][0] == cs:
                merged[-1] = (cs, merged[-1][1] + b)
            else:
                merged.append((cs, b))
        for cs, b in merged:
            out.append(_decode_text(b, cs, what, defects))
        pending.clear()

    for m in _ENCODED_WORD.finditer(s):
        gap = s[pos : m.start()]
        if gap and not (pending and gap.isspace()):
            flush()
            out.append(gap)
        try:
            pending.append((m.group(1), _decode_word_bytes(m.group(2), m.group(3))))
        except Exception:  # pragma: no cover - defensive
            flush()
            out.append(m.group(0))
        pos = m.end()
    flush()
    out.append(s[pos:])
    return "".join(out)


# --------------------------------------------------------------------------------------------
# raw header access (never raises, linear time)


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])|\r(?=[ \t])", "", value).replace("\r", "").replace("\n", "")


def _raw_headers(msg: Message, name: str) -> list[str]:
    """Every value of header ``name`` as text: unfolded, 8-bit bytes decoded, no surrogates."""
    lname = name.lower()
    values: list[str] = []
    try:
        items = list(msg.raw_items())
    except Exception:  # pragma: no cover - defensive
        return values
    for hname, hvalue in items:
        if not isinstance(hname, str) or hname.strip().lower() != lname:
            continue
        values.append(_header_text(hvalue))
    return values


def _header_text(hvalue: object, undeclared: _Undeclared | None = None) -> str:
    try:
        text = _unfold(str(hvalue))
        if _SURROGATES.search(text) or not text.isascii():
            text = _bytes_to_text(_raw_to_bytes(text), undeclared)
    except Exception:  # pragma: no cover - defensive
        text = _no_surrogates(str(hvalue))
    return _no_surrogates(text)


def _raw_header_index(msg: Message) -> dict[str, list[object]]:
    """Every raw header value of ``msg`` by lowercased name, in order (``_raw_headers`` for many names)."""
    index: dict[str, list[object]] = {}
    try:
        items = list(msg.raw_items())
    except Exception:  # pragma: no cover - defensive
        return index
    for hname, hvalue in items:
        if isinstance(hname, str):
            index.setdefault(hname.strip().lower(), []).append(hvalue)
    return index


def _first_header(msg: Message, name: str) -> str | None:
    values = _raw_headers(msg, name)
    return values[0] if values else None


# --------------------------------------------------------------------------------------------
# MIME parameters (Content-Type / Content-Disposition), RFC 2231


def _split_params(value: str) -> list[str]:
    """Split on ';' outside quoted strings."""
    parts: list[str] = []
    buf: list[str] = []
    quoted = False
    escaped = False
    for ch in value:
        if escaped:
            buf.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            buf.append(ch)
            escaped = True
        elif ch == '"':
            buf.append(ch)
            quoted = not quoted
        elif ch == ";" and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def _unquote(v: str) -> str:
    v = v.strip()
    if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return re.sub(r"\\(.)", r"\1", v[1:-1])
    if v.startswith('"'):
        return v[1:]
    return v


def _parse_mime_header(value: str | None, defects: list[str]) -> tuple[str, dict[str, str]]:
    """'text/plain; charset="utf-8"' -> ('text/plain', {'charset': 'utf-8'}), RFC 2231 decoded."""
    if value is None:
        return "", {}
    if value.count(";") > MAX_MIME_PARAMS:
        value = ";".join(value.split(";", MAX_MIME_PARAMS + 1)[: MAX_MIME_PARAMS + 1])
        defects.append(f"bound: a MIME header has more than {MAX_MIME_PARAMS} parameters: the rest not read "
                       "(bound MAX_MIME_PARAMS)")
    items = _split_params(value)
    main = items[0].strip().lower()
    plain: dict[str, str] = {}
    ext: dict[str, dict[int, tuple[str, bool]]] = {}
    for item in items[1:]:
        if "=" not in item:
            continue
        k, v = item.split("=", 1)
        k = k.strip().lower()
        if not k:
            continue
        m = re.fullmatch(r"([^*]+)\*(?:(\d{1,3})\*?|)", k) if "*" in k else None
        if m:
            name = m.group(1)
            idx = int(m.group(2)) if m.group(2) is not None else 0
            encoded = k.endswith("*")
            ext.setdefault(name, {})[idx] = (v.strip() if encoded else _unquote(v), encoded)
        elif k not in plain:
            plain[k] = _unquote(v)
    for name, pieces in ext.items():
        charset: str | None = None
        chunks: list[bytes] = []
        for n, (v, encoded) in enumerate(pieces[i] for i in sorted(pieces)):
            if encoded:
                v = _unquote(v)
                if n == 0 and v.count("'") >= 2:
                    charset, _lang, v = v.split("'", 2)
                chunks.append(_PERCENT_HEX.sub(lambda mm: bytes([int(mm.group(1), 16)]), v.encode("utf-8")))
            else:
                chunks.append(v.encode("utf-8"))
        plain[name] = _decode_text(b"".join(chunks), charset or "utf-8", f"parameter {name}", defects)
    return main, plain


_TOKEN_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")


def _content_type(part: Message, defects: list[str]) -> tuple[str, dict[str, str]]:
    ctype, params = _parse_mime_header(_first_header(part, "content-type"), defects)
    if not _TOKEN_TYPE.fullmatch(ctype):
        try:
            ctype = part.get_default_type()
        except Exception:  # pragma: no cover - defensive
            ctype = "text/plain"
    if part.is_multipart() and not ctype.startswith(("multipart/", "message/")):
        # the stdlib parser saw a container where we do not; follow the tree it built
        try:
            ctype = part.get_content_type()
        except Exception:  # pragma: no cover - defensive
            ctype = "multipart/mixed"
    return ctype, params


# --------------------------------------------------------------------------------------------
# addresses: gateway.addresses is the one reader


def _address_list(values: list[str], defects: list[str], what: str, limit: int,
                  bounds: list[str], conflicts: list[str]) -> list[tuple[str, str]]:
    lst = addresses.read_list(values, what, limit=limit, decode=lambda s: _decode_words(s, defects, what))
    bad = lst.malformed
    if bad:
        defects.append(f"{what}: {bad} malformed address{'es' if bad > 1 else ''} skipped")
    if lst.more:
        bounds.append(f"{what} has more than {limit} addresses: only the first {limit} read (bound MAX_ADDRESSES)")
    conflicts.extend(lst.conflicts)
    return lst.addresses


# --------------------------------------------------------------------------------------------
# message ids, dates

_MSGID_BRACKETED = re.compile(r"<([^<>]*)>")


def _norm_msgid(s: str) -> str | None:
    s = _CONTROL.sub("", _WS.sub("", s)).strip("<>")
    return s[:_MAX_HEADER_TEXT] or None


def _msgids(value: str | None, what: str = "References", bounds: list[str] | None = None) -> list[str]:
    """The distinct ids, in order; at most MAX_MESSAGE_IDS: the first (the thread's root) and the last ones
    (the nearest parents), as RFC 5322 suggests trimming References."""
    if value is None:
        return []
    found = _MSGID_BRACKETED.findall(value)
    if not found:  # broken clients: bare ids separated by whitespace
        found = [t for t in value.split() if "@" in t]
    result = list(dict.fromkeys(n for n in map(_norm_msgid, found) if n))
    if len(result) > MAX_MESSAGE_IDS:
        if bounds is not None:
            bounds.append(f"{what} has {len(result)} Message-IDs: only the first and the last {MAX_MESSAGE_IDS - 1} "
                          "read (bound MAX_MESSAGE_IDS)")
        result = result[:1] + result[len(result) - MAX_MESSAGE_IDS + 1 :]
    return result


def _parse_date(value: str | None) -> _dt.datetime | None:
    if not value:
        return None
    try:
        d = email.utils.parsedate_to_datetime(value.strip())
    except Exception:
        return None
    if d is None:  # pragma: no cover - older Pythons
        return None
    try:
        if d.tzinfo is None:
            d = d.replace(tzinfo=_dt.UTC)
        return d.astimezone(_dt.UTC)
    except (OverflowError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# safe file names

_EXTENSIONS = {
    "text/plain": ".txt",
    "text/html": ".html",
    "text/csv": ".csv",
    "text/calendar": ".ics",
    "text/xml": ".xml",
    "text/rfc822-headers": ".txt",
    "text/x-vcard": ".vcf",
    "text/vcard": ".vcf",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/webp": ".webp",
    "image/tiff": ".tif",
    "image/svg+xml": ".svg",
    "application/pdf": ".pdf",
    "application/zip": ".zip",
    "application/json": ".json",
    "application/xml": ".xml",
    "application/msword": ".doc",
    "application/vnd.ms-excel": ".xls",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": ".xlsx",
    "application/pgp-signature": ".asc",
    "application/pgp-encrypted": ".asc",
    "application/pgp-keys": ".asc",
    "application/pkcs7-signature": ".p7s",
    "application/x-pkcs7-signature": ".p7s",
    "application/pkcs7-mime": ".p7m",
    "application/x-pkcs7-mime": ".p7m",
    "application/ms-tnef": ".dat",
    "application/vnd.ms-tnef": ".dat",
    "application/octet-stream": ".bin",
    "message/rfc822": ".eml",
    "message/global": ".eml",
    "message/delivery-status": ".txt",
    "message/global-delivery-status": ".txt",
    "message/disposition-notification": ".txt",
}
_WINDOWS_DEVICES = re.compile(r"(?i)(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?")
_MAX_NAME_BYTES = 255


def _split_ext(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    if dot > 0:
        ext = name[dot:]
        if 1 < len(ext) <= 16 and " " not in ext:
            return name[:dot], ext
    return name, ""


def _fit(stem: str, ext: str, limit: int = _MAX_NAME_BYTES) -> str:
    """Truncate ``stem`` (on a character boundary) so that stem+ext fits ``limit`` UTF-8 bytes."""
    room = limit - len(ext.encode("utf-8"))
    b = stem.encode("utf-8")
    if len(b) > room:
        stem = b[:room].decode("utf-8", "ignore").rstrip()
    return stem + ext


def safe_filename(name: str | None, *, content_type: str, index: int) -> str:
    """A display name safe everywhere: basename only, no control/bidi/zero-width characters,
    no leading dots, at most 255 UTF-8 bytes keeping the extension, never empty."""
    s = name or ""
    s = _no_surrogates(s).replace("\ufffd", "")
    s = unicodedata.normalize("NFC", s)
    s = re.sub(r"[\t\n\r\v\f]", " ", s)
    s = _CONTROL.sub("", s)
    s = _INVISIBLE.sub("", s)
    comps = [c for c in re.split(r"[/\\]", s.strip()) if c.strip()]
    s = comps[-1].strip() if comps else ""
    s = re.sub(r"^[A-Za-z]:", "", s)  # drive letter: C:evil.exe
    s = s.lstrip(". ").rstrip(". ")
    s = _WS.sub(" ", s)
    if _WINDOWS_DEVICES.fullmatch(s):
        s = "_" + s
    if s:
        stem, ext = _split_ext(s)
        if not stem.lstrip("."):
            stem, ext = s, ""
        return _fit(stem, ext)
    ext = _EXTENSIONS.get((content_type or "").lower(), ".bin")
    return f"attachment-{index}{ext}"


def _unique(name: str, used: set[str]) -> str:
    if name.casefold() not in used:
        used.add(name.casefold())
        return name
    stem, ext = _split_ext(name)
    n = 2
    while True:
        candidate = _fit(stem, f" ({n}){ext}")
        if candidate.casefold() not in used:
            used.add(candidate.casefold())
            return candidate
        n += 1


# --------------------------------------------------------------------------------------------
# guards and the structural pre-scan

_EOL = re.compile(rb"\r\n|\r|\n")
# the stdlib FeedParser's headerRE (email.feedparser), on bytes
_HEADER_START = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_BIG_BODY = 64 * 1024  # leaf bodies at least this large are split off before the stdlib parser runs
_LARGE_MAIL = 4 * 1024 * 1024  # ... and in a mail this large, bodies of _BIG_BODY_IN_LARGE_MAIL
_BIG_BODY_IN_LARGE_MAIL = 4 * 1024
_TEXT_CT = re.compile(rb"(?i)\s*text/")


class _TooDeep(Exception):
    pass


class _TooMany(Exception):
    pass


class _Scan:
    """Linear mirror of the stdlib FeedParser's structure handling, on bytes, with ``bytes.find``.

    It walks the MIME structure the way ``email.feedparser`` does (lines end in CRLF, CR or LF; a
    boundary line is ``--boundary``, optional ``--``, optional blanks, end of line; the boundaries of
    every enclosing multipart end a part; consecutive boundary lines; missing start/close boundaries;
    preamble/epilogue; message/* bodies are a nested message; multipart/digest parts default to
    message/rfc822), but jumps over bodies with ``find`` instead of reading them line by line.

    It serves two purposes: the cheap depth/part-count guard before the (recursive, O(lines x depth))
    stdlib parser runs, and finding the large leaf bodies (``big``: (start, end, boundaries in force))
    that ``_parse_fast`` keeps out of the stdlib parser.  Content-Type is interpreted with the compat32
    rules; where that disagrees with what policy.default sees, the verification in ``_parse_fast``
    notices and the mail takes the plain path.
    """

    def __init__(self, raw: bytes, depth_limit: int, parts_limit: int, big_min: int | None) -> None:
        self.raw = raw
        self.n = len(raw)
        self.depth_limit = depth_limit
        self.parts_limit = parts_limit
        self.big_min = big_min
        self.max_depth = 0
        self.parts = 0
        self.big: list[tuple[int, int, frozenset[bytes]]] = []
        self._res: dict[bytes, re.Pattern[bytes]] = {}
        self._next: dict[bytes, tuple[int, int]] = {}  # boundary -> (searched from, first match at or after; n = none)

    # -- boundary lines

    def _re(self, b: bytes) -> re.Pattern[bytes]:
        r = self._res.get(b)
        if r is None:
            r = self._res[b] = re.compile(re.escape(b"--" + b) + rb"(--)?[ \t]*(?:\r\n|\r|\n|\Z)")
        return r

    def _next_of(self, b: bytes, pos: int) -> int:
        """First position >= pos where a line matching boundary ``b`` starts (self.n if none)."""
        cached = self._next.get(b)
        if cached is not None and cached[0] <= pos <= cached[1]:
            return cached[1]
        raw, needle, rx = self.raw, b"--" + b, self._re(b)
        p = raw.find(needle, pos)
        while p >= 0:
            if (p == 0 or raw[p - 1] in (10, 13)) and rx.match(raw, p):
                break
            p = raw.find(needle, p + 1)
        found = p if p >= 0 else self.n
        self._next[b] = (pos, found)
        return found

    def _next_boundary(self, pos: int, bounds: tuple[bytes, ...]) -> int:
        best = self.n
        for b in bounds:
            p = self._next_of(b, pos)
            if p < best:
                best = p
        return best

    def _matches(self, pos: int, bounds: tuple[bytes, ...]) -> bool:
        return pos < self.n and any(self._next_of(b, pos) == pos for b in bounds)

    # -- entities

    def run(self) -> None:
        self._entity(0, (), 0, False, False)

    def _entity(self, pos: int, bounds: tuple[bytes, ...], depth: int, digest_kid: bool, in_message: bool) -> int:
        """Parse one entity starting at ``pos``; return where it ends (a boundary line in ``bounds`` or EOF)."""
        if depth > self.max_depth:
            self.max_depth = depth
            if depth > self.depth_limit:
                raise _TooDeep
        raw, n = self.raw, self.n
        ct: list[bytes] | None = None  # lines of the first Content-Type header
        in_ct = False
        while pos < n:
            if raw.startswith(b"--", pos) and self._matches(pos, bounds):
                return pos  # the enclosing boundary ends the header block: empty body
            if not _HEADER_START.match(raw, pos):
                if raw[pos] in (10, 13):  # the blank line that ends the header block: CRLF, CR or LF
                    pos += 2 if raw.startswith(b"\r\n", pos) else 1
                break
            end = self._line_end(pos)
            c = raw[pos]
            if c in (32, 9):
                if in_ct and ct is not None:
                    ct.append(raw[pos:end])
            elif raw.startswith(b"From ", pos):
                in_ct = False  # unix-from / misplaced envelope line: not a header
            else:
                colon = raw.find(b":", pos, end)
                in_ct = ct is None and raw[pos:colon].lower() == b"content-type"
                if in_ct:
                    ct = [raw[colon + 1 : end]]
            pos = end
        ctype, boundary = self._interpret(ct, digest_kid)
        maintype = ctype.split("/", 1)[0]
        if ctype == "message/delivery-status" or (maintype == "multipart" and boundary is None):
            return self._next_boundary(pos, bounds)
        if maintype == "message":
            self._count_part()
            return self._entity(pos, bounds, depth + 1, False, True)
        if maintype == "multipart":
            assert boundary is not None
            return self._multipart(pos, bounds, boundary, depth, ctype == "multipart/digest", in_message)
        end = self._next_boundary(pos, bounds)
        if (
            self.big_min is not None
            and end - pos >= self.big_min
            and not in_message
            # a text leaf only when MAX_TEXT_BYTES cuts it (then it must not become a string whole first)
            and (end - pos > MAX_TEXT_BYTES or (ct is not None and not _TEXT_CT.match(b"".join(ct))))
        ):
            self.big.append((pos, end, frozenset(bounds)))
        return end

    def _line_end(self, pos: int) -> int:
        m = _EOL.search(self.raw, pos)
        return m.end() if m else self.n

    def _count_part(self) -> None:
        self.parts += 1
        if self.parts > self.parts_limit:
            raise _TooMany

    def _multipart(
        self, pos: int, bounds: tuple[bytes, ...], b: bytes, depth: int, digest: bool, in_message: bool
    ) -> int:
        raw, n = self.raw, self.n
        rx = self._re(b)
        inner = (b, *bounds) if b not in bounds else bounds
        p = self._next_boundary(pos, inner)
        if p >= n or self._matches(p, bounds):
            return p  # start boundary not found
        m = rx.match(raw, p)
        assert m is not None
        if m.group(1):  # a close boundary before any part: no parts; the rest is epilogue
            return self._next_boundary(m.end(), bounds)
        pos = m.end()
        while True:
            # consecutive boundary lines of this multipart delimit no part
            while pos < n and raw.startswith(b"--", pos) and not self._matches(pos, bounds):
                m = rx.match(raw, pos)
                if m is None:
                    break
                pos = m.end()
            self._count_part()
            end = self._entity(pos, inner, depth + 1, digest, in_message)
            if end >= n or self._matches(end, bounds):
                return end  # close boundary not found
            m = rx.match(raw, end)
            assert m is not None
            if m.group(1):
                return self._next_boundary(m.end(), bounds)  # epilogue
            pos = m.end()

    @staticmethod
    def _interpret(ct: list[bytes] | None, digest_kid: bool) -> tuple[str, bytes | None]:
        m = Message()
        if digest_kid:
            m.set_default_type("message/rfc822")
        if ct is not None:
            value = b"".join(ct).lstrip(b" \t").rstrip(b"\r\n").decode("ascii", "surrogateescape")
            m.set_raw("Content-Type", value)
        try:
            ctype = m.get_content_type()
            boundary = m.get_boundary() if ctype.startswith("multipart/") else None
            return ctype, boundary.encode("ascii", "surrogateescape") if boundary is not None else None
        except Exception:  # e.g. a boundary with characters the line matcher can never see
            return "application/octet-stream", None


def _guard(raw: bytes, max_depth: int, max_parts: int, big_min: int | None) -> _Scan:
    """Cheap structural pre-scan; raises MailParseError when the tree is clearly too deep or too big."""
    scan = _Scan(raw, 2 * max_depth + 10, 2 * max_parts + 10, big_min)
    try:
        scan.run()
    except _TooDeep:
        raise MailParseError(f"MIME nesting deeper than {max_depth} levels") from None
    except _TooMany:
        raise MailParseError(f"message has more than {max_parts} MIME parts") from None
    except RecursionError:
        raise MailParseError("MIME nesting too deep to parse") from None
    return scan


_LEADING_BLANK_LINES = re.compile(rb"\A(?:[ \t]*\r?\n)+")
_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]{1,200}[ \t]*:")


def _looks_like_mail(raw: bytes) -> bool:
    start = 0
    if raw.startswith(b"From "):  # mbox separator line
        nl = raw.find(b"\n")
        if nl < 0:
            return False
        start = nl + 1
    return bool(_HEADER_LINE.match(raw, start))


# --------------------------------------------------------------------------------------------
# the MIME tree


def _children(part: Message) -> list[Message]:
    if not part.is_multipart():
        return []
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    return []


def _check_tree(root: Message, max_depth: int, max_parts: int) -> None:
    stack: list[tuple[Message, int]] = [(root, 0)]
    count = 0
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            raise MailParseError(f"MIME nesting deeper than {max_depth} levels")
        for child in _children(node):
            count += 1
            if count > max_parts:
                raise MailParseError(f"message has more than {max_parts} MIME parts")
            stack.append((child, depth + 1))


class _Info:
    """What we need about one MIME node, computed once."""

    __slots__ = ("ctype", "params", "disposition", "filename", "container", "uu")

    def __init__(self, part: Message, defects: list[str]) -> None:
        self.ctype, self.params = _content_type(part, defects)
        disp, dparams = _parse_mime_header(_first_header(part, "content-disposition"), defects)
        self.disposition = disp
        raw_name = dparams.get("filename") or self.params.get("name")
        self.filename = _decode_words(raw_name, defects, "attachment name") if raw_name else None
        # a container we descend into for body/attachments: multipart/* with a parsed list payload
        self.container = part.is_multipart() and self.ctype.startswith("multipart/")
        # a uuencoded part (Content-Transfer-Encoding: x-uuencode): a file, never the body text
        self.uu = (_first_header(part, "content-transfer-encoding") or "").strip().lower() in _UU


_DROPPED_ALTERNATIVES = {
    "text/plain", "text/html", "text/watch-html", "text/enriched", "text/richtext", "text/x-amp-html"
}


def _blank_leaf(part: Message) -> bool:
    """A leaf whose (encoded) payload is empty or whitespace: an empty text/plain beside the real html body."""
    payload = part.get_payload()
    return isinstance(payload, str) and not payload.strip()


class _Walker:
    def __init__(self, defects: list[str]) -> None:
        self.defects = defects
        self.infos: dict[int, _Info] = {}
        self.body_ids: set[int] = set()
        self.dropped_ids: set[int] = set()

    def info(self, part: Message) -> _Info:
        key = id(part)
        got = self.infos.get(key)
        if got is None:
            got = self.infos[key] = _Info(part, self.defects)
        return got

    def body_leaf(self, part: Message, subtype: str) -> bool:
        i = self.info(part)
        if i.container or i.ctype.startswith("message/"):
            return False
        if i.disposition == "attachment" or i.filename or i.uu:
            return False
        if i.ctype == f"text/{subtype}":
            return True
        # multipart without usable boundary: the stdlib keeps the body as text; show it as text
        return subtype == "plain" and i.ctype.startswith("multipart/")

    def select(self, part: Message) -> tuple[list[Message], list[Message]]:
        """Body leaves of ``part``: (text/plain leaves, text/html leaves)."""
        i = self.info(part)
        if not i.container:
            if self.body_leaf(part, "plain"):
                return [part], []
            if self.body_leaf(part, "html"):
                return [], [part]
            return [], []
        kids = _children(part)
        if i.ctype == "multipart/alternative":
            return self._select_alternative(kids)
        # mixed, related, signed, encrypted, report, digest, unknown: the first body-bearing child
        # is the body; later inline text/html parts are appended to its html, later inline
        # text/plain parts to its text -- but only when it has such a part (a plain footer must not
        # become the whole text of an html-only body, nor an html footer the whole html of a plain body:
        # it stays an attachment, and a small html one is dropped)
        body: tuple[list[Message], list[Message]] | None = None
        for kid in kids:
            if body is None:
                t, h = self.select(kid)
                if t or h:
                    body = (list(t), list(h))
            elif body[0] and self.body_leaf(kid, "plain"):
                body[0].append(kid)
            elif (body[1] or all(_blank_leaf(t) for t in body[0])) and self.body_leaf(kid, "html"):
                body[1].append(kid)
        return body if body is not None else ([], [])

    def _select_alternative(self, kids: list[Message]) -> tuple[list[Message], list[Message]]:
        """The body leaves of a multipart/alternative: the first text and the first html rendering."""
        text: list[Message] | None = None
        html: list[Message] | None = None
        for kid in kids:
            t, h = self.select(kid)
            if text is None and t:
                text = t
            if html is None and h:
                html = h
        chosen = {id(p) for p in (text or []) + (html or [])}
        for kid in kids:  # other renderings of the same body are not attachments
            ki = self.info(kid)
            if not ki.container and ki.ctype in _DROPPED_ALTERNATIVES and id(kid) not in chosen:
                if ki.disposition != "attachment" and not ki.filename:
                    self.dropped_ids.add(id(kid))
        return text or [], html or []

    def leaves(self, root: Message) -> list[Message]:
        """Leaves in document order; message/* parts are leaves (not descended into)."""
        out: list[Message] = []
        stack = [root]
        while stack:
            node = stack.pop()
            if self.info(node).container:
                stack.extend(reversed(_children(node)))
            else:
                out.append(node)
        return out


_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")


def _b64_lenient(data: bytes) -> tuple[bytes, bool]:
    """Decode base64; on any error keep only alphabet characters and decode what is there.

    Returns (bytes, was_clean)."""
    compact = b"".join(data.split())
    try:
        return binascii.a2b_base64(compact, strict_mode=True), True
    except (binascii.Error, ValueError):
        pass
    try:  # e.g. concatenated padded chunks or stray characters: the stdlib's lenient mode
        return binascii.a2b_base64(compact), False
    except (binascii.Error, ValueError):
        pass
    clean = _B64_JUNK.sub(b"", compact)
    if len(clean) % 4 == 1:
        clean = clean[:-1]
    clean += b"=" * (-len(clean) % 4)
    try:
        return binascii.a2b_base64(clean), False
    except (binascii.Error, ValueError):  # pragma: no cover - clean input always decodes
        return b"", False


_B64_CLEAN_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\n\r\x0b\x0c"
_UU = ("x-uuencode", "uuencode", "uue", "x-uue")
_CHUNK = 1 << 20


_B64_TAIL = 4096  # bytes after a region's first '=' handled the short way (else: the slow, exact way)


def _b64_region(raw: bytes, start: int, end: int) -> tuple[bytes, bool]:
    """``_b64_lenient(raw[start:end])`` without copying the encoded text first.

    Non-strict ``a2b_base64`` skips every non-alphabet byte (whitespace included) the same way
    whether or not whitespace was removed first, so it decodes the region directly.  Whether it is
    clean: ``_b64_clean``."""
    try:
        out = binascii.a2b_base64(memoryview(raw)[start:end])
    except (binascii.Error, ValueError):
        return _b64_lenient(raw[start:end])  # rare: the slow, copying way
    return out, _b64_clean(raw, start, end)


def _b64_clean(raw: bytes, start: int, end: int) -> bool:
    """Would the strict decode of ``raw[start:end]`` without its whitespace succeed (``_b64_lenient``'s
    "clean")?  That depends only on: every byte being alphabet, '=' or whitespace; the number of alphabet
    characters before the first '=' mod 4; and what follows that '='.  That short equivalent is handed to
    the strict decoder itself (the slow, exact way when '=' is far from the end)."""
    for i in range(start, end, _CHUNK):  # 1 MiB at a time: never a copy of the whole region
        if raw[i : min(i + _CHUNK, end)].translate(None, _B64_CLEAN_BYTES):
            return False
    eq = raw.find(b"=", start, end)
    stop = end if eq < 0 else eq
    if end - stop > _B64_TAIL:  # '=' far from the end (concatenated chunks?): the slow, exact way
        return _b64_lenient(raw[start:end])[1]
    alphabet = (stop - start) - sum(raw.count(c, start, stop) for c in (b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c"))
    head = b"A" * (alphabet % 4 + (4 if alphabet >= 4 else 0))
    try:
        binascii.a2b_base64(head + b"".join(raw[stop:end].split()), strict_mode=True)
    except (binascii.Error, ValueError):
        return False
    return True


_PIECE = 256 * 1024  # bytes of encoded text decoded at a time by Encoded.chunks
_NOT_B64 = bytes(sorted(set(range(256)) - set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")))
_NOT_B64_OR_PAD = _NOT_B64.replace(b"=", b"")


class Encoded:
    """A large body of the raw mail, still encoded: `chunks` yields the bytes that ``_region_bytes`` returns for
    it, a piece at a time (a 25 MB attachment is written to the blob store without ever being whole in memory).
    Made by ``_encoded`` only for the regions it can stream exactly."""

    __slots__ = ("raw", "start", "end", "cte")

    def __init__(self, raw: bytes, start: int, end: int, cte: str) -> None:
        self.raw, self.start, self.end, self.cte = raw, start, end, cte

    def chunks(self, size: int = _PIECE) -> Iterator[bytes]:
        """The decoded bytes, in pieces of about `size` bytes (of encoded text each)."""
        raw, start, end = self.raw, self.start, self.end
        if self.cte == "base64":
            yield from _b64_chunks(raw, start, end, size)
        elif self.cte == "quoted-printable":
            yield from _qp_chunks(raw, start, end, size)
        else:
            for at in range(start, end, size):
                yield raw[at : min(at + size, end)]


def _b64_chunks(raw: bytes, start: int, end: int, size: int) -> Iterator[bytes]:
    """``_b64_region(raw, start, end)[0]`` a piece at a time (the region's first '=' within _B64_TAIL of its end).

    Before the first '=' only alphabet characters count (non-strict ``a2b_base64`` skips every other byte
    without a change of state), and after a whole number of quads of them the decoder is back in its
    first state: so that part is decoded a quad-aligned piece at a time, and what follows (at most
    _B64_TAIL bytes and a partial quad) as the whole region's decode would end it, or, when that would
    fail, as ``_b64_lenient`` would (every '=' dropped, a lone last character dropped, padded)."""
    eq = raw.find(b"=", start, end)
    stop = end if eq < 0 else eq
    carry = b""
    for at in range(start, stop, size):
        alpha = carry + raw[at : min(at + size, stop)].translate(None, _NOT_B64)
        cut = len(alpha) - len(alpha) % 4
        if cut:
            yield binascii.a2b_base64(alpha[:cut])
        carry = alpha[cut:]
    try:
        last = binascii.a2b_base64(carry + raw[stop:end].translate(None, _NOT_B64_OR_PAD))
    except (binascii.Error, ValueError):
        clean = carry + raw[stop:end].translate(None, _NOT_B64)
        if len(clean) % 4 == 1:
            clean = clean[:-1]
        last = binascii.a2b_base64(clean + b"=" * (-len(clean) % 4))
    if last:
        yield last


def _qp_chunks(raw: bytes, start: int, end: int, size: int) -> Iterator[bytes]:
    """``binascii.a2b_qp(raw[start:end])`` a piece at a time: each piece ends with a line end (what follows an
    '=' never reaches past it), so the pieces decode as the whole does; a piece is as long as its longest
    line when that is longer than `size`."""
    at = start
    while at < end:
        stop = min(at + size, end)
        if stop < end:
            nl = raw.rfind(b"\n", at, stop)
            if nl < 0:
                nl = raw.find(b"\n", stop, end)
            stop = end if nl < 0 else nl + 1
        yield binascii.a2b_qp(memoryview(raw)[at:stop])
        at = stop


_INVALID_BASE64 = "InvalidBase64: a base64 part was malformed and decoded leniently"


def _region_cte(part: Message) -> str:
    """How a body kept out of the parsed tree is decoded: "base64", "quoted-printable" or "" (as it is)."""
    cte = (_first_header(part, "content-transfer-encoding") or "").strip().lower()
    if cte == "base64":
        return cte
    if str(part.get("content-transfer-encoding", "")).lower() == "quoted-printable":
        return "quoted-printable"
    return ""


def _encoded(part: Message, raw: bytes, start: int, end: int, defects: list[str]) -> Encoded | None:
    """The large body ``raw[start:end]`` of ``part`` to be decoded a piece at a time, with the note that
    ``_region_bytes`` makes; None when it is not streamed (base64 with an '=' far from its end: decoded whole)."""
    cte = _region_cte(part)
    if cte == "base64":
        eq = raw.find(b"=", start, end)
        if eq >= 0 and end - eq > _B64_TAIL:
            return None
        if not _b64_clean(raw, start, end):
            defects.append(_INVALID_BASE64)
    return Encoded(raw, start, end, cte)


def _region_bytes(part: Message, raw: bytes, start: int, end: int, defects: list[str]) -> bytes:
    """What ``_payload_bytes`` returns for ``part`` had its payload been ``raw[start:end]`` (``_parse_fast``)."""
    cte = _region_cte(part)
    if cte == "base64":
        data, clean = _b64_region(raw, start, end)
        if not clean:
            defects.append(_INVALID_BASE64)
        return data
    if cte == "quoted-printable":
        return binascii.a2b_qp(memoryview(raw)[start:end])
    return raw[start:end]


_Big = dict[int, tuple[bytes, int, int]]  # id(part) -> (raw, start, end): a body kept out of the stdlib parser


def _payload_bytes(part: Message, defects: list[str], big: _Big | None = None) -> bytes:
    if big:
        region = big.get(id(part))
        if region is not None:
            return _region_bytes(part, *region, defects)
    payload = part.get_payload()
    cte = (_first_header(part, "content-transfer-encoding") or "").strip().lower()
    if cte == "base64" and isinstance(payload, str):
        errors = "surrogateescape" if _SURROGATES.search(payload) else "replace"
        data, clean = _b64_lenient(payload.encode("ascii", errors))
        if not clean:
            defects.append(_INVALID_BASE64)
        return data
    try:
        decoded = part.get_payload(decode=True)
    except Exception as exc:
        defects.append(f"payload could not be decoded ({type(exc).__name__}); kept raw")
        payload = part.get_payload()
        decoded = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
    if isinstance(decoded, bytes):
        return decoded
    return b""


_ASCII_SAFE = (None, "ascii", "utf-8")  # charsets (as _norm_charset names them) that read ASCII bytes as ASCII


def _ascii_body(part: Message, charset: str | None) -> str | None:
    """A body part's text, when it is its payload as it is: an ASCII payload, not transfer-encoded, in a charset
    that reads ASCII as ASCII. ``_decode_text(_payload_bytes(part))`` gives the same string, without notes, by way
    of two copies of it (its bytes, then their decoding); a 4 MiB body costs 8 MiB less. None: decode it."""
    payload = _parsed_payload(part)
    try:
        if not (isinstance(payload, str) and payload.isascii() and _norm_charset(charset) in _ASCII_SAFE):
            return None
        if (_first_header(part, "content-transfer-encoding") or "").strip().lower() == "base64":
            return None
        if str(part.get("content-transfer-encoding", "")).lower() in ("quoted-printable", "base64", *_UU):
            return None
    except Exception:  # noqa: BLE001 -- headers the stdlib cannot read: the general way meets them
        return None
    return payload


def _parsed_payload(node: Message) -> object:
    """The payload as the parser stored it (a list of parts or a str): get_payload() would decode a str holding
    surrogates again with the part's charset. The attribute is the stdlib's, undeclared in its type stubs."""
    return getattr(node, "_payload", None)


def _flatten(msg: Message, linesep: str) -> bytes:
    buf = io.BytesIO()
    try:
        pol = _policy.default.clone(linesep=linesep, refold_source="none", max_line_length=0)
        generator: BytesGenerator[Message] = BytesGenerator(buf, mangle_from_=False, policy=pol)
        generator.flatten(msg)
        return buf.getvalue()
    except Exception:
        try:
            return msg.as_bytes()
        except Exception:
            return str(msg).encode("utf-8", "surrogateescape")


def _message_part_bytes(part: Message, ctype: str, linesep: str, defects: list[str]) -> bytes:
    """The body of a message/* part as bytes (the encapsulated message for message/rfc822)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            data = b"".join(_flatten(p, linesep) for p in payload if isinstance(p, Message))
        else:
            data = b"".join(_flatten(p, linesep) for p in payload[:1] if isinstance(p, Message))
    elif isinstance(payload, str):
        data = payload.encode("utf-8", "surrogateescape")
    else:
        data = b""
    cte = (_first_header(part, "content-transfer-encoding") or "").strip().lower()
    if cte in ("base64", "quoted-printable") and isinstance(payload, list) and payload:
        # not allowed for message/*, but seen: the stdlib parsed the encoded text as a message,
        # which then has no headers and the encoded text as its body
        inner = payload[0]
        body = inner.get_payload() if isinstance(inner, Message) and not inner.keys() else None
        if isinstance(body, str):
            encoded = body.encode("ascii", "surrogateescape")
            try:
                data = binascii.a2b_base64(encoded) if cte == "base64" else binascii.a2b_qp(encoded)
                defects.append(f"{ctype} part with Content-Transfer-Encoding {cte}; decoded")
            except (binascii.Error, ValueError):
                defects.append(f"{ctype} part with undecodable Content-Transfer-Encoding {cte}; kept as is")
    return data


def _defect_notes(root: Message, out: list[str]) -> None:
    stack = [root]
    while stack:
        node = stack.pop()
        for d in getattr(node, "defects", []) or []:
            text = _oneline(str(d), 200)
            name = type(d).__name__
            out.append(f"{name}: {text}" if text and text != name else name)
        payload = node.get_payload() if node.is_multipart() else None
        if isinstance(payload, list):
            stack.extend(p for p in reversed(payload) if isinstance(p, Message))


# --------------------------------------------------------------------------------------------
# entry point


class _Policy(_policy.EmailPolicy):
    """``email.policy.default`` (the same settings), reusing the header object parsed for a (name, value) pair.

    The stdlib parser asks a part for its Content-Type several times while it parses (and the classifier
    asks again); policy.default parses the value anew on every ask. A parsed header is an immutable value
    (a str with its parse results), so handing out the one already made for the same name and value is the
    same answer, without the work."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if len(value) > _HEADER_CACHE_VALUE and value.count(";") > MAX_MIME_PARAMS and not hasattr(value, "name"):
            # the stdlib's parameter parser is quadratic in RFC 2231 sections: it sees the first ones only
            # (gateway.mime reads the same bound from the raw header and notes it)
            value = ";".join(value.split(";", MAX_MIME_PARAMS + 1)[: MAX_MIME_PARAMS + 1])
        if hasattr(value, "name") or len(value) > _HEADER_CACHE_VALUE:
            return super().header_fetch_parse(name, value)
        key = (name, value)
        header = _HEADER_CACHE.get(key)
        if header is None:
            header = super().header_fetch_parse(name, value)
            if len(_HEADER_CACHE) >= _HEADER_CACHE_SIZE:
                _HEADER_CACHE.clear()
            _HEADER_CACHE[key] = header
        return header


_HEADER_CACHE: dict[tuple[str, str], Any] = {}
_HEADER_CACHE_SIZE = 1024
_HEADER_CACHE_VALUE = 2048  # characters: longer values are parsed every time and not kept
_POLICY = _Policy(header_factory=_policy.default.header_factory)


def _parse_bytes(raw: bytes, defects: list[str]) -> EmailMessage:
    try:
        msg = BytesParser(policy=_POLICY).parsebytes(raw)
    except RecursionError:
        raise MailParseError("MIME nesting too deep to parse") from None
    except Exception as exc:  # the stdlib parser should not fail; if it does, try the legacy policy
        defects.append(f"parser failed with policy.default ({type(exc).__name__}); parsed with compat32")
        try:
            msg = BytesParser(_class=EmailMessage, policy=_policy.compat32).parsebytes(raw)
        except RecursionError:
            raise MailParseError("MIME nesting too deep to parse") from None
        except Exception as exc2:
            raise MailParseError(f"mail could not be parsed ({type(exc2).__name__})") from None
    assert isinstance(msg, EmailMessage)
    return msg


def parse_mail(
    raw: bytes,
    *,
    max_depth: int = 50,
    max_parts: int = 1000,
    max_header_bytes: int = 1_000_000,
    max_addresses: int = MAX_ADDRESSES,
    stream_large: bool = False,
) -> ParsedMail:
    """Parse one raw mail.

    Raises MailParseError for: not an email at all (no header block: binary garbage, a PDF, empty
    input), a MIME tree deeper than ``max_depth``, more than ``max_parts`` parts.  Anything else is
    handled and noted in ``defects``.  Header values longer than ``max_header_bytes`` are
    interpreted from their first ``max_header_bytes`` characters only.

    stream_large: an attachment whose body was kept out of the stdlib parser (see the module's notes) is
    not decoded here: its ``data`` is b"" and its ``source`` yields the same bytes a piece at a time (the
    caller writes them to the blob store; the source holds ``raw``).  Everything else is the same.
    """
    # a large mail: smaller bodies are kept out of the stdlib parser too (900 parts of 20 KB are 25 MB of lines)
    big_min = _BIG_BODY if len(raw) < _LARGE_MAIL else _BIG_BODY_IN_LARGE_MAIL
    return _parse(raw, max_depth=max_depth, max_parts=max_parts, max_header_bytes=max_header_bytes, big_min=big_min,
                  max_addresses=max_addresses, stream_large=stream_large)


def _parse(raw: bytes, *, max_depth: int, max_parts: int, max_header_bytes: int, big_min: int | None,
           max_addresses: int = MAX_ADDRESSES, stream_large: bool = False) -> ParsedMail:
    """``parse_mail``; ``big_min=None`` disables the large-body fast path (tests compare both paths)."""
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise MailParseError("input is not bytes")
    raw = bytes(raw)
    defects: list[str] = []
    stripped = _LEADING_BLANK_LINES.sub(b"", raw, count=1)
    if len(stripped) != len(raw):
        defects.append("leading blank lines before the header block removed")
        raw = stripped
    del stripped
    raw, header_bound = _bound_header_fields(raw)
    if header_bound:
        defects.append(header_bound)
    if not raw or raw.isspace():
        raise MailParseError("not an email: the input is empty")
    raw, note = skip_leading_junk(raw)
    if note:
        defects.append(note)
    raw, notes = rejoin_lost_folds(raw)
    defects.extend(notes)
    if not _looks_like_mail(raw):
        raise MailParseError("not an email: no header block at the start of the input")

    # cheap guard first: the stdlib parser is recursive and O(lines x depth)
    scan = _guard(raw, max_depth, max_parts, big_min)

    fast = _parse_fast(raw, scan, list(defects)) if scan.big else None
    if fast is not None:
        msg, big, defects = fast
    else:
        msg = _parse_bytes(raw, defects)
        big = {}
        _cut_text_leaves(msg, defects)  # the fast path cut them before they became strings
    _check_tree(msg, max_depth, max_parts)
    try:
        return _build(msg, raw, defects, max_header_bytes, big, max_addresses, stream_large)
    except MailParseError:
        raise
    except RecursionError:
        raise MailParseError("MIME nesting too deep to process") from None


_FIELD_START = re.compile(rb"\n(?=[^ \t])")


def _bound_header_fields(raw: bytes) -> tuple[bytes, str | None]:
    """The mail with at most MAX_HEADER_FIELDS fields in its header block (the first and the last half), and
    the bound's note; the mail as it is when it has fewer (one count of newlines for the common case)."""
    ends = [e for e in (raw.find(b"\n\n"), raw.find(b"\n\r\n")) if e >= 0]
    end = min(ends) + 1 if ends else len(raw)
    if raw.count(b"\n", 0, end) <= MAX_HEADER_FIELDS:
        return raw, None
    starts = [0] + [m.end() for m in _FIELD_START.finditer(raw, 0, end)]  # linear: folded lines stay in their field
    if len(starts) <= MAX_HEADER_FIELDS:
        return raw, None
    half = MAX_HEADER_FIELDS // 2
    kept = [raw[: starts[half]], raw[starts[-half] : end]]
    note = (f"bound: the header has {len(starts)} fields: only the first and the last {half} read "
            "(bound MAX_HEADER_FIELDS)")
    return b"".join(kept) + raw[end:], note


_PLACEHOLDER = "[gateway.mime placeholder {index} {nonce}, a body of {size} bytes kept out of the parsed tree]"


def _parse_fast(
    raw: bytes, scan: _Scan, defects: list[str]
) -> tuple[EmailMessage, _Big, list[str]] | None:
    """Parse with the large leaf bodies found by ``scan`` kept out of the stdlib parser.

    The stdlib parses a skeleton: ``raw`` with each large body replaced by a one-line placeholder
    (plus the body's last line ending).  The result is used only when it provably has the structure
    the full parse would have: each placeholder is the whole payload of a part the stdlib reads as a
    plain leaf (not multipart/*, not message/*), whose header block ended at a blank line, and whose
    enclosing multipart boundaries (as the stdlib sees them) are exactly those the scan checked the
    body against.  The prefix before a body is then parsed identically, no line of the body ends it,
    and the rest is the same text in the same state.  Otherwise: None, and the caller parses ``raw``.

    Returns (message, {id(part): body region}, defects).  Large leaves that are text, inside a
    message/* part, or have an encoding this path does not decode get their exact payload back.
    """
    skeleton, tokens = _skeleton(raw, scan)
    n_defects = len(defects)
    msg = _parse_bytes(skeleton, defects)
    if len(defects) != n_defects:  # the stdlib parser failed on policy.default: take the plain path
        return None
    try:
        found = _placeholders(msg, tokens)
    except (UnicodeError, RecursionError):
        return None
    if found is None or len(found) != len(tokens):
        return None

    big: _Big = {}
    scratch: list[str] = []
    for token, (node, stripped, in_message) in found.items():
        start, end, eol, _bounds = tokens[token]
        if stripped:
            end -= eol
        if not in_message and _kept_out(node, scratch):
            big[id(node)] = (raw, start, end)
        else:  # the exact payload the full parse would have produced (a long text body cut: MAX_TEXT_BYTES)
            if not in_message and end - start > MAX_TEXT_BYTES and _cuttable(node):
                keep_n = _text_cut(raw[start : start + MAX_TEXT_BYTES])
                defects.append(_text_cut_note(end - start, keep_n))
                end = start + keep_n
            node.set_payload(raw[start:end].decode("ascii", "surrogateescape"))
    return msg, big, defects


_Tokens = dict[str, tuple[int, int, int, frozenset[bytes]]]  # placeholder -> (start, end, eol, boundaries)


def _skeleton(raw: bytes, scan: _Scan) -> tuple[bytes, _Tokens]:
    """``raw`` with each large body of ``scan`` replaced by a one-line placeholder (plus its last line ending)."""
    nonce = binascii.hexlify(os.urandom(6)).decode()
    view = memoryview(raw)
    pieces: list[bytes] = []
    tokens: _Tokens = {}
    last = 0
    for index, (start, end, bounds) in enumerate(scan.big):
        if raw.endswith(b"\r\n", start, end):
            eol = 2
        elif end > start and raw[end - 1] in (10, 13):
            eol = 1
        else:
            eol = 0
        token = _PLACEHOLDER.format(index=index, nonce=nonce, size=end - start - eol)
        pieces.append(view[last:start].tobytes())
        pieces.append(token.encode("ascii") + raw[end - eol : end])
        tokens[token] = (start, end, eol, bounds)
        last = end
    pieces.append(view[last:].tobytes())
    return b"".join(pieces), tokens


def _placeholders(msg: Message, tokens: _Tokens) -> dict[str, tuple[Message, bool, bool]] | None:
    """The parts of the parsed skeleton holding a placeholder: token -> (part, line ending stripped, inside
    message/*); None when one is not where the scan put it (see ``_parse_fast``)."""
    found: dict[str, tuple[Message, bool, bool]] = {}
    stack: list[tuple[Message, frozenset[bytes], bool]] = [(msg, frozenset(), False)]
    while stack:
        node, bounds, in_message = stack.pop()
        payload = _parsed_payload(node)
        if isinstance(payload, list):
            maintype = node.get_content_maintype()
            if maintype == "multipart":
                b = node.get_boundary()
                if b is None:
                    return None
                kid_bounds = bounds | {b.encode("ascii", "surrogateescape")}
            else:
                kid_bounds = bounds
            kid_in_message = in_message or maintype == "message"
            stack.extend((k, kid_bounds, kid_in_message) for k in payload if isinstance(k, Message))
            continue
        if not isinstance(payload, str) or not payload.startswith("[gateway.mime placeholder "):
            continue
        stripped = False
        token = payload
        if token not in tokens:
            token = payload.rstrip("\r\n")
            if token not in tokens or len(payload) - len(token) != tokens[token][2]:
                return None
        else:
            stripped = tokens[token][2] > 0
        if token in found or tokens[token][3] != bounds:
            return None
        if node.get_content_maintype() in ("multipart", "message"):
            return None
        if any(isinstance(d, _errors.MissingHeaderBodySeparatorDefect) for d in node.defects):
            return None
        found[token] = (node, stripped, in_message)
    return found


def _kept_out(node: Message, scratch: list[str]) -> bool:
    """Does a large leaf stay out of the parsed tree (a binary body this path decodes itself)?"""
    try:
        ctype, _params = _content_type(node, scratch)
        keep = (ctype.split("/", 1)[0] not in ("text", "multipart", "message")
                and node.get_content_maintype() != "text")
        cte = (_first_header(node, "content-transfer-encoding") or "").strip().lower()
        scte = str(node.get("content-transfer-encoding", "")).lower()
        if cte != "base64" and (scte == "base64" or scte in _UU):
            keep = False
    except Exception:
        keep = False
    return keep


def _cuttable(node: Message) -> bool:
    """A text leaf that may be a body (no file name, not an attachment, not uuencoded): MAX_TEXT_BYTES holds."""
    try:
        info = _Info(node, [])
    except Exception:  # noqa: BLE001 -- unreadable headers: not cut (as the full parse would read it)
        return False
    return (not info.container and info.ctype.startswith("text/") and info.disposition != "attachment"
            and not info.filename and not info.uu)


def _text_cut(head: bytes | str) -> int:
    """How much of a long text payload is read: up to its last line end within MAX_TEXT_BYTES (the payload's
    characters are its bytes, surrogate-escaped, so both paths cut at the same place)."""
    nl = head.rfind(b"\n") if isinstance(head, bytes) else head.rfind("\n")
    return nl + 1 if nl > 0 else len(head)


def _text_cut_note(size: int, kept: int) -> str:
    return (f"bound: a text part of {size} bytes: only the first {kept} read (bound MAX_TEXT_BYTES); the whole "
            "stays in the original mail")


def _cut_text_leaves(msg: Message, defects: list[str]) -> None:
    """MAX_TEXT_BYTES on the full parse: the text leaves outside message/* parts, as `_parse_fast` cuts them."""
    stack = [msg]
    while stack:
        node = stack.pop()
        payload = node.get_payload()
        if isinstance(payload, list):
            if node.get_content_maintype() != "message":
                stack.extend(k for k in payload if isinstance(k, Message))
            continue
        if isinstance(payload, str) and len(payload) > MAX_TEXT_BYTES and _cuttable(node):
            kept = _text_cut(payload[:MAX_TEXT_BYTES])
            defects.append(_text_cut_note(len(payload), kept))
            node.set_payload(payload[:kept])


_HTML_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9]*)[^<>]*?(/?)>")
_HTML_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())


def _html_depth(html: str, limit: int) -> int:
    """The element nesting of `html` (tags counted by a regex, void and self-closed elements not), up to limit."""
    depth = top = 0
    for m in _HTML_TAG.finditer(html):
        if m.group(1):
            depth = max(depth - 1, 0)
        elif not m.group(3) and m.group(2).lower() not in _HTML_VOID:
            depth += 1
            if depth > top:
                top = depth
                if top > limit:
                    break
    return top


def _bounded_html(html: str, bounds: list[str]) -> str:
    """The HTML body within MAX_HTML_CHARS and MAX_HTML_DEPTH (nesting deeper than that is read as text)."""
    if len(html) > MAX_HTML_CHARS:
        bounds.append(f"the HTML body has {len(html)} characters: only the first {MAX_HTML_CHARS} read "
                      "(bound MAX_HTML_CHARS)")
        html = html[:MAX_HTML_CHARS]
    if html.count("<") > 2 * MAX_HTML_DEPTH and _html_depth(html, MAX_HTML_DEPTH) > MAX_HTML_DEPTH:
        bounds.append(f"the HTML body nests elements more than {MAX_HTML_DEPTH} deep: read as text without its "
                      "tags (bound MAX_HTML_DEPTH)")
        html = _HTML_TAG.sub(" ", html)
    return html


_SMALL_HTML = 4096  # bytes: a text/html part this small that is not the body is a footer or a fragment


def _add_files(attachments: list[Part], used: set[str], files: list[tuple[str, bytes]], where: str,
               defects: list[str]) -> None:
    """Files found inside a part (TNEF) or the body (uuencode) as attachments of their own, within the bound."""
    room = max(0, MAX_ATTACHMENTS - len(attachments))
    for name, data in files[:room]:
        ctype = parts.content_type_of(name)
        filename = _unique(safe_filename(name, content_type=ctype, index=len(attachments) + 1), used)
        attachments.append(Part(filename=filename, content_type=ctype, data=data, content_id=None, inline=False))
    if files:
        defects.append(f"{min(len(files), room)} file(s) taken out of {where}"
                       + (f"; {len(files) - room} more left in it (bound MAX_ATTACHMENTS)"
                          if len(files) > room else ""))


def _attachments(msg: Message, walker: _Walker, linesep: str, defects: list[str], big: _Big,
                 uu_files: list[tuple[str, bytes]], stream: bool = False) -> tuple[list[Part], int]:
    """The attachments (every leaf that is not the body, within MAX_ATTACHMENTS), the files inside TNEF parts
    and the uuencoded files of the text body; and how many leaves were not kept (the bound). stream: the
    bodies kept out of the parsed tree are left encoded (`Part.source`) where they can be."""
    attachments: list[Part] = []
    used: set[str] = set()
    not_kept = 0
    for leaf in walker.leaves(msg):
        key = id(leaf)
        if key in walker.body_ids:
            continue
        if key in walker.dropped_ids:
            defects.append(f"unused alternative {walker.info(leaf).ctype} body not kept as attachment")
            continue
        if len(attachments) >= MAX_ATTACHMENTS:
            not_kept += 1
            continue
        info = walker.info(leaf)
        index = len(attachments) + 1
        content = _attachment_content(leaf, info, linesep, defects, big, stream)
        if content is None:
            continue
        data, name, source = content
        filename = _unique(safe_filename(name, content_type=info.ctype, index=index), used)
        cid_raw = _first_header(leaf, "content-id")
        cid = _norm_msgid(cid_raw) if cid_raw else None
        inline = info.disposition == "inline" or (not info.disposition and cid is not None)
        attachments.append(Part(filename=filename, content_type=info.ctype, data=data, content_id=cid, inline=inline,
                                source=source))
        if parts.is_tnef(info.ctype, name, data):
            _add_files(attachments, used, parts.tnef_files(data), f"{filename} (TNEF)", defects)
    _add_files(attachments, used, uu_files, "the text body (uuencoded)", defects)
    return attachments, not_kept


def _attachment_content(leaf: Message, info: _Info, linesep: str, defects: list[str], big: _Big,
                        stream: bool) -> tuple[bytes, str | None, Encoded | None] | None:
    """(data, the name the sender gave it, the source of its data when that is left encoded: see _attachments) of
    a leaf kept as an attachment; None: not kept (a small html part)."""
    if info.ctype.startswith("message/"):
        data = _message_part_bytes(leaf, info.ctype, linesep, defects)
        name: str | None = None
        inner = leaf.get_payload()
        # the name the sender gave it (filename= or name=), else the attached message's subject
        if info.filename:
            name = info.filename
        elif (info.ctype in ("message/rfc822", "message/global") and isinstance(inner, list) and inner
              and isinstance(inner[0], Message)):
            subj = _first_header(inner[0], "subject")
            if subj and _oneline(_decode_words(subj, defects, "attached message Subject")):
                name = _oneline(_decode_words(subj, defects, "attached message Subject")) + ".eml"
        return data, name, None
    name = info.filename
    if name is None and info.uu:
        payload = leaf.get_payload()
        name = parts.uu_begin_name(payload) if isinstance(payload, str) else None
    region = big.get(id(leaf)) if stream else None
    # a TNEF stream is read whole (the files in it), a text part may be a small html one: decoded here
    if region is not None and not info.ctype.startswith("text/") and not parts.is_tnef(info.ctype, name,
                                                                                        parts.TNEF_SIGNATURE):
        source = _encoded(leaf, *region, defects)
        if source is not None:
            return b"", name, source
    data = _payload_bytes(leaf, defects, big)
    if info.ctype == "text/html" and not name and info.disposition != "attachment" and len(data) <= _SMALL_HTML:
        defects.append(f"a small text/html part outside the body ({len(data)} bytes) not kept as attachment")
        return None
    return data, name, None


def _all_defects(msg: Message, defects: list[str], bounds: list[str]) -> list[str]:
    """The parser's notes and ours, once each, within _MAX_DEFECTS; notes of a bound go to ``bounds``."""
    notes: list[str] = []
    _defect_notes(msg, notes)
    all_defects: list[str] = []
    seen: set[str] = set()
    for d in notes + defects:
        d = _no_surrogates(d)
        if d not in seen:
            seen.add(d)
            all_defects.append(d)
    bounds.extend(d[len("bound: "):] for d in all_defects if d.startswith("bound: "))
    all_defects = [d for d in all_defects if not d.startswith("bound: ")]
    if len(all_defects) > _MAX_DEFECTS:
        extra = len(all_defects) - _MAX_DEFECTS
        all_defects = all_defects[:_MAX_DEFECTS] + [f"... and {extra} more defects"]
    return all_defects


def _build(
    msg: EmailMessage, raw: bytes, defects: list[str], max_header_bytes: int, big: _Big,
    max_addresses: int = MAX_ADDRESSES, stream_large: bool = False,
) -> ParsedMail:
    nl = raw.find(b"\n")
    first_line_cr = raw.endswith(b"\r") if nl < 0 else raw.startswith(b"\r", nl - 1) and nl > 0
    linesep = "\r\n" if first_line_cr else "\n"

    header_values = _raw_header_index(msg)
    walker = _Walker(defects)
    text_parts, html_parts = walker.select(msg)
    walker.body_ids = {id(p) for p in text_parts + html_parts}
    hint = _declared_charset(walker, text_parts + html_parts)
    undeclared = _Undeclared(hint, header_values, lambda: _payload_bytes(text_parts[0], [], big) if text_parts else b"")

    def header(name: str) -> list[str]:
        values = [_header_text(v, undeclared) for v in header_values.get(name.lower(), ())]
        out = []
        for v in values:
            if len(v) > max_header_bytes:
                defects.append(f"{name} header longer than {max_header_bytes} characters; truncated")
                v = v[:max_header_bytes]
            out.append(v)
        return out

    # identifiers
    mids = header("Message-ID")
    message_id = None
    if mids:
        found = _msgids(mids[0])
        message_id = found[0] if found else _norm_msgid(mids[0])
    bounds: list[str] = []
    in_reply_to = _msgids(" ".join(header("In-Reply-To")), "In-Reply-To", bounds)
    references = _msgids(" ".join(header("References")), "References", bounds)

    subjects = header("Subject")
    subject = _oneline(_decode_words(subjects[0], defects, "Subject")) if subjects else ""

    # sender, recipients: gateway.addresses reads every header that names a person
    conflicts: list[str] = []
    author = addresses.read_author(header("From"), decode=lambda s: _decode_words(s, defects, "From"))
    from_addr, from_name, from_problem = author.addr, author.name, author.problem
    defects.extend(author.notes)
    ambiguous = author.ambiguous
    if ambiguous is None:
        senders = header("Sender")
        agent = addresses.read_author(senders, "Sender") if senders else None
        if agent is not None and agent.ambiguous:
            ambiguous = agent.ambiguous
    reply_to = [a for _, a in _address_list(header("Reply-To"), defects, "Reply-To", max_addresses, bounds, conflicts)]
    to = _address_list(header("To"), defects, "To", max_addresses, bounds, conflicts)
    cc = _address_list(header("Cc"), defects, "Cc", max_addresses, bounds, conflicts)
    _address_list(header("Return-Path"), defects, "Return-Path", 1, bounds, conflicts)
    if ambiguous is None and conflicts:
        ambiguous = f"{conflicts[0]}; a mail that names people ambiguously acts as nobody"
    dates = header("Date")
    date = _parse_date(dates[0]) if dates else None
    if dates and date is None:
        defects.append(f"Date header is not a valid date: {_oneline(dates[0], 100)}")

    # body and attachments
    def body_text(parts: list[Message], kind: str) -> str:
        chunks = []
        for p in parts:  # the payload's bytes are not kept past their decoding (a body may be MAX_TEXT_BYTES)
            charset = walker.info(p).params.get("charset")
            t = _ascii_body(p, charset)
            if t is None:
                t = _decode_text(_payload_bytes(p, defects, big), charset, f"text/{kind} body", defects, hint)
            if "\x00" in t:
                defects.append(f"NUL characters removed from the text/{kind} body")
                t = t.replace("\x00", "")
            chunks.append(t.replace("\r\n", "\n").replace("\r", "\n"))
        return "\n".join(chunks)

    text = body_text(text_parts, "plain") if text_parts else ""
    text, uu_files = parts.split_uuencoded(text)
    html = _bounded_html(body_text(html_parts, "html"), bounds) if html_parts else None

    attachments, not_kept = _attachments(msg, walker, linesep, defects, big, uu_files, stream_large)
    if not_kept:
        bounds.append(f"{MAX_ATTACHMENTS + not_kept} attachments: only the first {MAX_ATTACHMENTS} kept, the rest stay "
                      "in the original mail (bound MAX_ATTACHMENTS)")
    all_defects = _all_defects(msg, defects, bounds)

    return ParsedMail(
        message=msg,
        message_id=message_id,
        in_reply_to=in_reply_to,
        references=references,
        subject=subject,
        from_addr=from_addr,
        from_name=from_name,
        from_problem=from_problem,
        reply_to=reply_to,
        to=to,
        cc=cc,
        date=date,
        text=_no_surrogates(text),
        html=_no_surrogates(html) if html is not None else None,
        attachments=attachments,
        defects=all_defects,
        ambiguous=ambiguous,
        bounds=bounds,
    )
