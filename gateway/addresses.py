"""The one reader of addresses: every header that names a person (From, Sender, Reply-To, To, Cc, Return-Path)
and the SMTP envelope are read here, and nowhere else.

Pure and linear: no database, no I/O; a header is split in one pass over its special characters, and at
most `limit` entries of a list are read (the rest are counted as not read, never parsed).

* An entry is a mailbox as RFC 5322 writes it: `name <addr>`, `addr (comment)` or a bare `addr`. An address
  inside a quoted display name, a comment or an encoded-word is never the address: quoted strings and
  comments are skipped as wholes before anything is looked for, and encoded-words are decoded in the display
  name only, after the address was found.
* Anything that is not plainly one mailbox (two angle-addrs, text after the angle-addr, an unclosed quote,
  comment or bracket, words with spaces between them where an address is expected) is malformed: no address
  is made up from it.
* A domain that ends with a dot (`user@example.com.`) is read without the dot; IDN A-labels (`xn--...`) are
  read as their Unicode labels; addresses are NFC and lowercase. UTF-8 local parts (RFC 6532) are addresses.
* The standard reading (the stdlib's RFC 5322 parser, `email.headerregistry`, what DMARC checkers and mail
  clients do) is asked for every entry that is not of a plainly simple form; when it reads an address other
  than ours (or more than one) the entry is a *conflict*, and the mail must not act as anyone it names.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["ADDR_SPEC", "AddressList", "Author", "Mailbox", "MAX_ENTRY_CHARS", "normalise", "read_author",
           "read_envelope", "read_list"]

MAX_ENTRY_CHARS = 2000   # one mailbox longer than this is not read (RFC 5321: a path is at most 256 octets)
MAX_AUTHORS = 100        # entries of a From/Sender header read (more is several authors anyway)
_SHOWN = 200             # characters of a header quoted in a reason

# The character classes below name every non-ASCII character (U+0080 and up) by leaving it out of a negated
# class: the same sets as [A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff] (atext), [A-Za-z0-9_\u0080-\U0010ffff]
# (label ends) and [A-Za-z0-9_\-\u0080-\U0010ffff] (label inside), checked for every code point in
# tests/unit/test_mime_address_classes.py -- but compiled in a fraction of the time (start-up of every MTA pipe
# process).
ATEXT_CLASS = r"""[^\x00-\x20"(),.:;<>@\[\\\]\x7f]"""
LABEL_END = r"[^\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]"
LABEL_INSIDE = r"[^\x00-\x2c\x2e\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]"
_ATEXT = ATEXT_CLASS + "+"
_LABEL = rf"{LABEL_END}(?:{LABEL_INSIDE}*{LABEL_END})?"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[^\[\]\\\s]*\])"
ADDR_SPEC = re.compile(
    rf'(?:{_DOT_ATOM}|"(?:[^"\\\r\n]|\\.)*")@'
    # domain labels: letters, digits, hyphens inside; '_' is tolerated (seen in real mail)
    + _DOMAIN
)
# Forms whose standard reading is provably ours (checked against the stdlib in tests/unit/test_addresses.py):
# a bare dot-atom address, or a phrase without specials (or one quoted string without escapes) and then it.
_SIMPLE = re.compile(
    rf'\s*(?:(?:"[^"\\\r\n]*"|[^"(),.:;<>@\[\\\]\s][^"(),:;<>@\[\\\]]*?)?\s*<\s*{_DOT_ATOM}@{_DOMAIN}\s*>'
    rf"|{_DOT_ATOM}@{_DOMAIN})\s*"
)
_SPECIAL = re.compile(r'["(\\<>,;:]')
_QUOTED_REST = re.compile(r'(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.S)
_COMMENT_SPECIAL = re.compile(r"[()\\]")
_WS = re.compile(r"\s+")
_QCLOSED = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One entry of an address header."""

    name: str            # display name (encoded-words decoded by the caller's decoder), one line
    addr: str | None     # the address (normalised), or None: not an address
    text: str            # the mailbox as written (angle content, or the entry without comments), one line
    null: bool = False   # the null address <>
    problem: str = ""    # why addr is None


@dataclass
class AddressList:
    """A header's entries in order: at most `limit` read, the rest only counted."""

    mailboxes: list[Mailbox] = field(default_factory=list)
    more: bool = False                                   # entries past the limit (not read)
    conflicts: list[str] = field(default_factory=list)  # plain-words: read as someone else by the standard

    @property
    def addresses(self) -> list[tuple[str, str]]:
        return [(m.name, m.addr) for m in self.mailboxes if m.addr]

    @property
    def malformed(self) -> int:
        return sum(1 for m in self.mailboxes if m.addr is None and not m.null)


@dataclass(frozen=True, slots=True)
class Author:
    """The one author a From (or Sender) header names, or why there is none."""

    addr: str | None
    name: str
    text: str = ""             # the mailbox as written (for classifying MAILER-DAEMON and the like)
    problem: str | None = None  # plain words: why addr is None
    ambiguous: str | None = None  # plain words: why the mail must act as nobody (several authors, conflict)
    null: bool = False          # the header is the null address <>
    notes: tuple[str, ...] = ()


# Splitting --------------------------------------------------------------------------------------------------
def _skip_comment(value: str, i: int) -> int:
    """The index after the comment that opens at value[i] ('('), or len(value) when it never closes."""
    depth = 0
    pos = i
    while True:
        m = _COMMENT_SPECIAL.search(value, pos)
        if m is None:
            return len(value)
        c = m.group()
        if c == "\\":
            pos = m.end() + 1
            continue
        depth += 1 if c == "(" else -1
        pos = m.end()
        if depth == 0:
            return pos


def _split(value: str, limit: int) -> tuple[list[str], bool]:
    """Entries of an address list, split on ',' and ';' outside quotes, comments and <>; a group's name
    ('name:') is dropped. At most `limit` entries; the second value says whether more follow (not read)."""
    entries: list[str] = []
    start = pos = 0
    angle = False
    n = len(value)
    while pos < n:
        m = _SPECIAL.search(value, pos)
        if m is None:
            break
        c, i = m.group(), m.start()
        if c == '"':
            pos = _QUOTED_REST.match(value, i + 1).end()  # type: ignore[union-attr]  # always matches
            continue
        if c == "(":
            pos = _skip_comment(value, i)
            continue
        pos = i + 1
        if c == "\\":
            pos += 1
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c in ",;" and not angle:
            if value[start:i].strip():
                if len(entries) >= limit:
                    return entries, True
                entries.append(value[start:i].strip())
            start = pos
        elif c == ":" and not angle:
            start = pos  # "group-name:" -- forget the phrase before it
    if value[start:].strip():
        if len(entries) >= limit:
            return entries, True
        entries.append(value[start:].strip())
    return entries, False


# One entry --------------------------------------------------------------------------------------------------
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|\(|\)|<[^<>]*>?|>|\\.?|[^"()<>\\\s]+|\s+', re.S)


def _tokens(entry: str) -> list[tuple[str, str]] | None:
    """(kind, text) with kind q (quoted), c (comment), a (angle-addr), w (word), s (space), x (stray special);
    None when a quote, comment or bracket is not closed."""
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(entry):
        if entry[pos] == "(":
            end = _skip_comment(entry, pos)
            if end > len(entry) or entry[end - 1] != ")":
                return None
            out.append(("c", entry[pos + 1 : end - 1]))
            pos = end
            continue
        m = _TOKEN.match(entry, pos)
        assert m is not None  # the alternatives cover every character
        t = m.group()
        pos = m.end()
        if t[0] == '"':
            if not _QCLOSED.fullmatch(t):
                return None
            out.append(("q", t))
        elif t[0] == "<":
            if not t.endswith(">"):
                return None
            out.append(("a", t[1:-1]))
        elif t in (")", ">") or t[0] == "\\":
            out.append(("x", t))
        elif t.isspace():
            out.append(("s", t))
        else:
            out.append(("w", t))
    return out


def _oneline(s: str, limit: int = 998) -> str:
    return _WS.sub(" ", _CONTROL.sub(" ", s)).strip()[:limit]


def _unquote(q: str) -> str:
    return re.sub(r"\\(.)", r"\1", q[1:-1], flags=re.S)


def _idna_label(label: str) -> str:
    if label.startswith("xn--"):
        try:
            return label.encode("ascii").decode("idna").lower()
        except (UnicodeError, ValueError):
            return label
    return label


def normalise(addr: str) -> str:
    """An address as the gateway keeps it: NFC, lowercase, the domain without a final dot, A-labels as
    Unicode."""
    addr = unicodedata.normalize("NFC", addr).lower()
    local, at, domain = addr.rpartition("@")
    if not at:
        return addr
    domain = domain.rstrip(".") if not domain.startswith("[") else domain
    if "xn--" in domain:
        domain = ".".join(_idna_label(x) for x in domain.split("."))
    return f"{local}@{domain}"


def _addr_spec(text: str) -> str | None:
    """The address in `text` (an angle-addr's content or a bare addr-spec), normalised; None when it is not
    exactly one address. A source route (<@a,@b:user@host>) is dropped; one final dot of the domain too."""
    a = text.strip()
    if a.startswith("@") and ":" in a:
        a = a.split(":", 1)[1].strip()
    a = re.sub(r"\s*([.@])\s*", r"\1", a) if " " in a or "\t" in a else a  # obsolete CFWS around . and @
    if a.endswith(".") and not a.endswith(".."):
        a = a[:-1]
    if not ADDR_SPEC.fullmatch(a):
        return None
    return normalise(a)


def _phrase(tokens: list[tuple[str, str]], decode: Callable[[str], str]) -> str:
    """The display name: quoted strings unquoted, then encoded-words decoded (also inside quotes, as mail
    clients do) -- for display only, after the address was found."""
    words = []
    for kind, t in tokens:
        if kind == "q":
            words.append(_unquote(t))
        elif kind == "w":
            words.append(t)
        elif kind == "s" and words:
            words.append(" ")
    return _oneline(decode("".join(words).strip()))


def _comment_name(tokens: list[tuple[str, str]]) -> str:
    return _oneline(" ".join(t for k, t in tokens if k == "c" and t.strip()))


def _entry(entry: str, decode: Callable[[str], str]) -> Mailbox:
    if len(entry) > MAX_ENTRY_CHARS:
        return Mailbox("", None, _oneline(entry, 100), problem=f"longer than {MAX_ENTRY_CHARS} characters")
    tokens = _tokens(entry)
    if tokens is None:
        return Mailbox("", None, _oneline(entry), problem="an unclosed quote, comment or <")
    angles = [i for i, (k, _) in enumerate(tokens) if k == "a"]
    if any(k == "x" for k, _ in tokens):
        return Mailbox("", None, _oneline(entry), problem="a stray ')', '>' or '\\'")
    if len(angles) > 1:
        return Mailbox("", None, _oneline(entry), problem="more than one <address>")
    if angles:
        i = angles[0]
        if any(k not in ("s", "c") for k, _ in tokens[i + 1 :]):
            return Mailbox("", None, _oneline(entry), problem="text after the <address>")
        inner = tokens[i][1]
        before = tokens[:i]
        name = _phrase(before, decode) or _comment_name(before + tokens[i + 1 :])
        if not inner.strip():
            return Mailbox(name, None, "", null=True, problem="the null address <>")
        addr = _addr_spec(inner)
        if addr and name.strip("'\" <>").lower() == addr:
            name = ""  # a display name that only repeats the address carries nothing
        return Mailbox(name, addr, _oneline(inner), problem="" if addr else "not an address")
    # a bare addr-spec: words and quoted strings, spaces only around '.' and '@'
    parts = [(k, t) for k, t in tokens if k != "c"]
    text = "".join(t for k, t in parts if k != "s").strip()
    for j, (k, _) in enumerate(parts):
        if k == "s" and 0 < j < len(parts) - 1:
            left, right = parts[j - 1][1], parts[j + 1][1]
            if not (left.endswith((".", "@")) or right.startswith((".", "@"))):
                return Mailbox(_comment_name(tokens), None, _oneline("".join(t for _, t in parts)),
                               problem="words where an address should be")
    addr = _addr_spec(text)
    name = _comment_name(tokens)
    return Mailbox(name, addr, _oneline(text), problem="" if addr else "not an address")


# The standard reading ---------------------------------------------------------------------------------------
def _standard(entry: str) -> set[str] | None:
    """The addresses (with a domain) the stdlib's RFC 5322 parser reads in one entry; None when it cannot."""
    from email import policy

    try:
        header = policy.default.header_factory("to", entry)
        found = {normalise(a.addr_spec) for a in header.addresses if a.domain}
    except Exception:  # noqa: BLE001 -- the stdlib parser raising is no reading at all
        return None
    return found


def _conflict(what: str, entry: str, box: Mailbox) -> str | None:
    if box.addr is None or _SIMPLE.fullmatch(entry):
        return None
    std = _standard(entry)
    if not std or std == {box.addr}:
        return None
    others = ", ".join(sorted(std - {box.addr})) or box.addr
    return (f"{what} '{_oneline(entry, _SHOWN)}' reads as {box.addr} here but as {others} by the standard "
            "RFC 5322 reading")


# Public readers ---------------------------------------------------------------------------------------------
def _plain(s: str) -> str:
    return s


def read_list(values: Iterable[str], what: str, *, limit: int = 1000,
              decode: Callable[[str], str] = _plain) -> AddressList:
    """Every entry of the header `what` (its values in order), at most `limit` of them read."""
    out = AddressList()
    room = limit
    for value in values:
        entries, more = _split(value, max(room, 0))
        out.more = out.more or more
        room -= len(entries)
        for entry in entries:
            box = _entry(entry, decode)
            out.mailboxes.append(box)
            conflict = _conflict(what, entry, box)
            if conflict:
                out.conflicts.append(conflict)
    return out


def _fragments(boxes: list[Mailbox]) -> tuple[list[Mailbox], list[Mailbox]]:
    """(the real addresses, the entries that may name someone but are unreadable). A malformed entry without
    '@' (a name split by an unquoted comma, 'Müller, Hans <hans@example.com>') names nobody."""
    real = [b for b in boxes if b.addr]
    unreadable = [b for b in boxes if b.addr is None and not b.null and "@" in b.text]
    return real, unreadable


def read_author(values: list[str], what: str = "From", *, decode: Callable[[str], str] = _plain) -> Author:
    """The one author the header names, or the plain-words reason why there is none."""
    if not values:
        return Author(None, "", problem=f"no {what} header")
    if len(values) > 1:
        return Author(None, "", problem=f"{len(values)} {what} headers",
                      ambiguous=f"the mail has {len(values)} {what} headers; one mail has one author, so it "
                                "acts as none of them")
    shown = _oneline(values[0], _SHOWN)
    lst = read_list(values, what, limit=MAX_AUTHORS, decode=decode)
    if not lst.mailboxes:
        return Author(None, "", problem=f"{what} header is empty")
    notes: list[str] = []
    real, unreadable = _fragments(lst.mailboxes)
    conflict = f"{lst.conflicts[0]}; a mail whose sender can be read two ways acts as nobody" if lst.conflicts else None
    authors = sorted({b.addr for b in real if b.addr})
    if len(authors) + len(unreadable) + lst.more > 1:
        count = len(authors) + len(unreadable) + lst.more
        listed = ", ".join(authors + [b.text for b in unreadable])[:_SHOWN]
        return Author(None, "", problem=f"{what} has {count} addresses",
                      ambiguous=f"{what} names {count} authors ({listed}); a mail from several authors acts as "
                                "none of them")
    if not real:
        nulls = [b for b in lst.mailboxes if b.null]
        if nulls and len(nulls) == len(lst.mailboxes):
            return Author(None, nulls[0].name, text="", problem=f"{what} is the null address <>", null=True)
        first = next((b for b in lst.mailboxes if not b.null), lst.mailboxes[0])
        return Author(None, first.name, text=first.text, problem=f"{what} address is malformed: {shown}",
                      ambiguous=conflict)
    box = real[0]
    name = box.name
    skipped = [b for b in lst.mailboxes if b is not box]
    if any(b.null for b in skipped):
        notes.append(f"{what}: an empty address <> beside {box.addr} ignored")
    fragments = [b.text for b in skipped if not b.null]
    if fragments:
        notes.append(f"{what}: text without an address beside {box.addr} read as part of the name")
        if lst.mailboxes.index(box) > 0 and len(fragments) == 1 and lst.mailboxes[0].text == fragments[0]:
            name = _oneline(f"{fragments[0]}, {name}" if name else fragments[0])
    # on a conflict: our reading stays what the header says (shown, classified), but the mail acts as nobody
    return Author(box.addr, name, text=box.text, notes=tuple(notes), ambiguous=conflict)


def read_envelope(value: str | None) -> str | None:
    """The address of an SMTP envelope path (MAIL FROM / RCPT TO, with or without <>), normalised; None for
    the null path and anything that is not one address."""
    if value is None:
        return None
    v = value.strip()
    if v.startswith("<") and v.endswith(">"):
        v = v[1:-1]
    if not v.strip() or len(v) > MAX_ENTRY_CHARS:
        return None
    return _addr_spec(v)
