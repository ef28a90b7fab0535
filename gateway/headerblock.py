"""Repairs of a damaged top-level header block, the way mail clients read one (pure: bytes in, bytes out).

Two kinds of damage make the stdlib parser lose the headers of an otherwise good mail:

* **Junk before the first header**: a byte order mark, a stray line (a lone byte, a transfer log line), an
  mbox ``From `` line followed by such a line. The stdlib sees no header block at all. ``skip_leading_junk``
  drops up to three such lines when what follows is a header block that names a well-known field.
* **A folded line that lost its leading whitespace** (``Subject: a long\\nsubject continues\\nFrom: ...``). The
  stdlib ends the header block at that line: every header below it (often From and Subject) becomes body text.
  ``rejoin_lost_folds`` takes such a line as a continuation of the header above it when the header block
  provably goes on below it (a well-known field follows within three lines), or when the header above it is
  plainly unfinished (an address list ending in a comma, an encoded word).

Both return the input object itself when there is nothing to repair (the common case costs one scan of the
header lines), and bound their work: at most ``_MAX_LINES`` header lines are looked at.
"""

from __future__ import annotations

import re

__all__ = ["rejoin_lost_folds", "skip_leading_junk"]

_EOL = re.compile(rb"\r\n|\r|\n")
# the stdlib FeedParser's headerRE (email.feedparser): what it takes for a header line
_HEADER_START = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]{1,200}[ \t]*:")
# fields whose presence proves that a header block goes on (names real mail carries)
_KNOWN_FIELD = re.compile(
    rb"(?i)(?:from|to|cc|bcc|subject|date|message-id|in-reply-to|references|reply-to|sender|return-path|"
    rb"received|mime-version|content-[a-z-]{2,40}|x-[\x21-\x39\x3b-\x7e]{1,80}|list-[a-z-]{2,20}|delivered-to|"
    rb"envelope-to|dkim-signature|domainkey-signature|authentication-results|received-spf|arc-[a-z-]{2,30}|"
    rb"thread-topic|thread-index|importance|priority|precedence|organi[sz]ation|user-agent|errors-to|"
    rb"resent-[a-z-]{2,20}|auto-submitted|disposition-notification-to|comments|keywords|status|"
    rb"accept-language)[ \t]*:"
)
# the header block as the stdlib reads it: header lines (and continuations) up to the first other line
_STDLIB_BLOCK = re.compile(rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*:|[\t ])[^\r\n]*(?:\r\n|\r|\n))*")
_BLANK_LINE = re.compile(rb"[ \t]*(?:\r\n|\r|\n)|[ \t]*\Z")
_MAX_LINES = 500
_MAX_JUNK_LINES = 3
_MAX_JUNK_LINE = 998
_LOOKAHEAD = 3
_BOMS = (b"\xef\xbb\xbf",)


def _lines(raw: bytes, start: int, limit: int) -> list[tuple[int, int]]:
    """(start, end-with-EOL) of up to ``limit`` lines from ``start``."""
    out: list[tuple[int, int]] = []
    pos, n = start, len(raw)
    while pos < n and len(out) < limit:
        m = _EOL.search(raw, pos)
        end = m.end() if m else n
        out.append((pos, end))
        pos = end
    return out


def _blank(raw: bytes, line: tuple[int, int]) -> bool:
    return not raw[line[0] : line[1]].strip(b" \t\r\n")


def skip_leading_junk(raw: bytes) -> tuple[bytes, str | None]:
    """``raw`` without a BOM and up to three junk lines before its first header; (raw, note or None)."""
    notes: list[str] = []
    for bom in _BOMS:
        if raw.startswith(bom):
            raw = raw[len(bom) :]
            notes.append("a byte order mark before the header block removed")
    if _FIELD.match(raw) or (raw.startswith(b"From ") and _FIELD.match(raw, raw.find(b"\n") + 1 or len(raw))):
        return raw, "; ".join(notes) or None
    lines = _lines(raw, 0, _MAX_JUNK_LINES + 1)
    for k, (start, end) in enumerate(lines):
        if _FIELD.match(raw, start):
            if k and _KNOWN_FIELD.match(raw, start) and _header_follows(raw, start):
                shown = raw[: min(start, 60)].decode("ascii", "backslashreplace").strip()
                notes.append(f"{k} junk line{'s' if k > 1 else ''} before the header block skipped ({shown!r})")
                return raw[start:], "; ".join(notes)
            break
        if end - start > _MAX_JUNK_LINE or _blank(raw, (start, end)):
            break
    return raw, "; ".join(notes) or None


def _header_follows(raw: bytes, start: int) -> bool:
    """Is the line after the one at ``start`` (skipping folds) another header line or the end of the block?"""
    for s, e in _lines(raw, start, 6)[1:]:
        if raw[s : s + 1] in (b" ", b"\t"):
            continue
        return bool(_FIELD.match(raw, s)) or _blank(raw, (s, e))
    return True


def _unfinished(raw: bytes, line: tuple[int, int]) -> bool:
    """Does the header line end where a value cannot end (an address list's comma, an encoded word)?"""
    text = raw[line[0] : line[1]].rstrip(b" \t\r\n")
    return text.endswith((b",", b"?=")) and not text.endswith(b":")


def rejoin_lost_folds(raw: bytes) -> tuple[bytes, list[str]]:
    """``raw`` with folded header lines that lost their leading whitespace indented again; (raw, notes)."""
    block = _STDLIB_BLOCK.match(raw)
    if _BLANK_LINE.match(raw, block.end() if block else 0):
        return raw, []  # the common case: the block ends at a blank line (or the input ends)
    lines = _lines(raw, 0, _MAX_LINES)
    fixes: list[int] = []  # indexes of lines to indent
    notes: list[str] = []
    i, n = 1, len(lines)
    if not lines or not _HEADER_START.match(raw, lines[0][0]):
        return raw, notes
    last_field = 0  # index of the line where the current header started
    while i < n:
        start, _end = lines[i]
        if _blank(raw, lines[i]):
            break
        if _HEADER_START.match(raw, start):
            if raw[start : start + 1] not in (b" ", b"\t"):
                last_field = i
            i += 1
            continue
        run = _lost_fold_run(raw, lines, i)
        if not run:
            break  # the stdlib ends the header block here, and so do we
        fixes.extend(range(i, i + run))
        name = raw[lines[last_field][0] : raw.find(b":", lines[last_field][0])].decode("ascii", "replace")
        notes.append(f"a {name} header line without leading whitespace taken as its continuation")
        i += run
    if not fixes:
        return raw, notes
    pieces: list[bytes] = []
    last = 0
    for k in fixes:
        s = lines[k][0]
        pieces.append(raw[last:s])
        pieces.append(b" ")
        last = s
    pieces.append(raw[last:])
    return b"".join(pieces), notes


def _lost_fold_run(raw: bytes, lines: list[tuple[int, int]], i: int) -> int:
    """How many lines from ``i`` on are continuations that lost their whitespace (0: none, the body starts)."""
    for j in range(i + 1, min(i + 1 + _LOOKAHEAD, len(lines))):
        s, _e = lines[j]
        if _blank(raw, lines[j]):
            return j - i if j - i == 1 and _unfinished(raw, lines[i - 1]) else 0
        if _KNOWN_FIELD.match(raw, s):
            return j - i
        if _HEADER_START.match(raw, s):
            return 0
    return 0
