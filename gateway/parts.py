"""Files hidden inside mail parts: uuencoded blocks in a text body, the attachments of an Outlook TNEF
``winmail.dat`` (pure; tnefparse is imported on first use).

Both read sender-controlled bytes, so both are bounded: at most ``MAX_FILES`` files per mail, and nothing here
raises (a block or a TNEF stream that does not decode is left as it is).
"""

from __future__ import annotations

import binascii
import mimetypes
import re

__all__ = ["MAX_FILES", "TNEF_SIGNATURE", "content_type_of", "is_tnef", "split_uuencoded", "tnef_files",
           "uu_begin_name"]

MAX_FILES = 100
_BEGIN = re.compile(r"^begin(?:-base64)? [0-7]{3,4} ([^\n]{1,255}?)[ \t\r]*$", re.M)
_END = re.compile(r"^end[ \t\r]*$", re.M)
_UU_LINE = re.compile(r"[\x20-\x60]{1,62}")  # one uuencoded line: a length character and up to 60 characters


def content_type_of(name: str) -> str:
    """The content type a file name suggests (application/octet-stream when it suggests none)."""
    guessed, _encoding = mimetypes.guess_type(name, strict=False)
    return guessed.lower() if guessed else "application/octet-stream"


def _uu_line(line: str) -> bytes:
    """One uuencoded line, decoded leniently (the stdlib's uu module's workaround for broken encoders)."""
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:
        nbytes = (((ord(line[0]) - 32) & 63) * 4 + 5) // 3
        try:
            return binascii.a2b_uu(line[:nbytes])
        except binascii.Error:
            raise ValueError("not uuencoded") from None


def _decode_block(body: str) -> bytes | None:
    out: list[bytes] = []
    for line in body.split("\n"):
        line = line.rstrip("\r")
        if not line:
            continue
        if not _UU_LINE.fullmatch(line):
            return None
        try:
            out.append(_uu_line(line))
        except ValueError:
            return None
    return b"".join(out)


def split_uuencoded(text: str) -> tuple[str, list[tuple[str, bytes]]]:
    """``text`` without its ``begin 644 name`` ... ``end`` blocks, and the (name, bytes) of each block."""
    if "begin " not in text:
        return text, []
    files: list[tuple[str, bytes]] = []
    kept: list[str] = []
    pos = 0
    for m in _BEGIN.finditer(text):
        if m.start() < pos or len(files) >= MAX_FILES:
            continue
        end = _END.search(text, m.end())
        if end is None:
            break
        data = _decode_block(text[m.end() + 1 : end.start()])
        if data is None:
            continue
        files.append((m.group(1).strip(), data))
        kept.append(text[pos : m.start()])
        pos = end.end() + 1 if text.startswith("\n", end.end()) else end.end()
    if not files:
        return text, []
    kept.append(text[pos:])
    return "".join(kept), files


def uu_begin_name(payload: str) -> str | None:
    """The file name on the ``begin`` line of a uuencoded part's payload."""
    m = _BEGIN.search(payload[:4096])
    return m.group(1).strip() if m else None


TNEF_SIGNATURE = b"\x78\x9f\x3e\x22"


def is_tnef(content_type: str, filename: str | None, data: bytes) -> bool:
    """An Outlook TNEF stream: application/(vnd.)ms-tnef or a winmail.dat, with the TNEF signature."""
    named = (filename or "").lower() in ("winmail.dat", "win.dat")
    return (content_type in ("application/ms-tnef", "application/vnd.ms-tnef") or named) and data.startswith(
        TNEF_SIGNATURE)


def tnef_files(data: bytes) -> list[tuple[str, bytes]]:
    """The (name, bytes) of the files attached inside a TNEF stream ([] when it holds none or does not decode)."""
    try:
        from tnefparse import TNEF  # imported here: most mail has no winmail.dat

        tnef = TNEF(data, do_checksum=False)
        out: list[tuple[str, bytes]] = []
        for att in tnef.attachments[:MAX_FILES]:
            payload = att.data
            if not isinstance(payload, bytes) or not payload:
                continue
            name = att.long_filename() or att.name
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            out.append((str(name).strip("\x00 "), payload))
        return out
    except Exception:  # noqa: BLE001 -- a TNEF stream that does not decode stays one opaque file
        return []
