"""The charset of undeclared 8-bit text in mail (pure; charset-normalizer is imported on first use).

Mail that declares no charset, or declares a wrong one, still carries text in the sender's local charset:
GB2312/GBK, Big5, Shift_JIS, EUC-KR, KOI8-R, windows-1251, windows-1252 ... ``guess`` names the codec that
decodes such bytes, from a bounded sample (the detector's cost grows with its input: ``_MAX_SAMPLE``), among the
charsets mail is actually written in (``CANDIDATES``: a detector free to choose among every codec Python has
picks exotic ones for short text). The caller decodes with the codec it gets and falls back to a codec that
decodes every byte, so no byte is ever lost.

Callers only come here for bytes that are not ASCII and not valid UTF-8: the detector never runs for the
common mail.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

__all__ = ["CANDIDATES", "display_name", "guess", "prior_for"]

#: the codecs a guess may name, Python's names (supersets where one exists: gb18030 for GB2312/GBK, cp932 for
#: Shift_JIS, cp949 for EUC-KR)
CANDIDATES: tuple[str, ...] = (
    "utf_8", "gb18030", "big5", "cp932", "euc_jp", "cp949", "koi8_r", "cp1251", "cp1252", "cp1250", "iso8859_2",
    "cp1253", "cp1254", "cp1257", "iso8859_15",
)
_MAX_SAMPLE = 16 * 1024  # bytes given to the detector (about 3 ms on 2 cores; 64 KiB costs ~10 ms)
# charset-normalizer's names for what the mail world calls otherwise
_SUPERSET = {"gb2312": "gb18030", "gbk": "gb18030", "shift_jis": "cp932", "euc_kr": "cp949", "big5hkscs": "big5"}


# the charsets undeclared mail from a country's domains is most often written in
_TLD_CHARSETS = {
    "cn": ("gb18030",), "sg": ("gb18030",), "tw": ("big5",), "hk": ("big5",), "mo": ("big5",),
    "jp": ("cp932", "euc_jp"),
    "kr": ("cp949",), "ru": ("koi8_r", "cp1251"), "su": ("koi8_r", "cp1251"), "by": ("cp1251",), "ua": ("cp1251",),
    "kz": ("cp1251",), "bg": ("cp1251",), "rs": ("cp1251",), "mk": ("cp1251",), "pl": ("cp1250", "iso8859_2"),
    "cz": ("cp1250", "iso8859_2"), "sk": ("cp1250",), "hu": ("cp1250", "iso8859_2"), "si": ("cp1250",),
    "hr": ("cp1250",), "ro": ("cp1250",), "gr": ("cp1253",), "tr": ("cp1254",), "lt": ("cp1257",), "lv": ("cp1257",),
    "ee": ("cp1257",),
}


def prior_for(domain: str | None) -> tuple[str, ...]:
    """The charsets to prefer for undeclared text from an address at ``domain`` (by its country code)."""
    if not domain:
        return ()
    return _TLD_CHARSETS.get(domain.rstrip(".").rsplit(".", 1)[-1].lower(), ())


def display_name(codec: str) -> str:
    """The name mail people know a codec by: windows-1251 for cp1251, shift_jis (cp932) for cp932."""
    if codec.startswith("cp125"):
        return "windows-" + codec[2:]
    return {"cp932": "shift_jis (cp932)", "cp949": "euc-kr (cp949)", "koi8_r": "koi8-r"}.get(codec, codec)


def _sample(data: bytes) -> bytes:
    """At most ``_MAX_SAMPLE`` bytes of ``data``, cut after a line end or a space where there is one (no split
    character)."""
    if len(data) <= _MAX_SAMPLE:
        return data
    for end in (b"\n", b" "):  # an ASCII byte is never part of a multibyte character of these charsets
        cut = data.rfind(end, 0, _MAX_SAMPLE)
        if cut > _MAX_SAMPLE // 2:
            return data[: cut + 1]
    return data[:_MAX_SAMPLE]


def _decodes(data: bytes, codec: str) -> bool:
    try:
        data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return False
    return True


def guess(data: bytes, hint: str | None = None, prior: tuple[str, ...] = ()) -> str | None:
    """The codec that decodes ``data`` (8-bit, not UTF-8) as the text it most likely is, or None.

    ``hint`` (a charset the same mail declares elsewhere, e.g. its body's) wins when it decodes every byte of
    ``data``. ``prior``: codecs to prefer among equally plausible ones (e.g. the charsets of the sender's country).
    Short text (fewer than ``_SHORT`` 8-bit bytes: a name, a subject) is judged by ``_plausibility`` of each
    candidate's decoding, longer text by charset-normalizer. The answer always decodes all of ``data``."""
    if not data or _mostly_utf8(data):
        return None
    if hint:
        name = _codec_name(hint)
        if name and name not in ("ascii", "utf_8") and _decodes(data, name):
            return name
    sample = _sample(data)
    if sum(1 for b in sample if b > 0x7F) < _SHORT:
        return _short_guess(data, prior)
    from charset_normalizer import from_bytes  # imported here: most mail never needs it

    best = from_bytes(sample, cp_isolation=list(CANDIDATES)).best()
    if best is None:
        return _short_guess(data, prior)
    name = _codec_name(best.encoding)
    name = _SUPERSET.get(name, name)
    if name in ("", "ascii", "utf_8") or not _decodes(data, name):
        return None
    return name


_UTF8_SEQ = re.compile(rb"[\xc2-\xdf][\x80-\xbf]|[\xe0-\xef][\x80-\xbf]{2}|[\xf0-\xf4][\x80-\xbf]{3}")


def _mostly_utf8(data: bytes) -> bool:
    """UTF-8 with a few bytes of another charset pasted in (as many well-formed UTF-8 characters as stray bytes):
    no charset reads that as a whole, and the caller's windows-1252 keeps every byte visible."""
    seqs = _UTF8_SEQ.findall(data[:_MAX_SAMPLE])
    if not seqs:
        return False
    high = sum(1 for b in data[:_MAX_SAMPLE] if b > 0x7F)
    stray = high - sum(len(q) for q in seqs)
    return len(seqs) >= stray


def _codec_name(charset: str) -> str:
    try:
        return codecs.lookup(charset).name.replace("-", "_")
    except LookupError:
        return ""


_SHORT = 48
_MIN_PLAUSIBLE = 0.8  # below this no candidate reads as text: the caller's fallback (windows-1252) is as good
# which codec wins a tie, after the caller's prior: the most common charsets of undeclared mail first
_PREFERENCE = ("gb18030", "cp1251", "cp1252", "big5", "cp932", "cp949", "koi8_r", "euc_jp", "cp1250", "iso8859_2",
               "cp1253", "cp1254", "cp1257", "iso8859_15")


def _short_guess(data: bytes, prior: tuple[str, ...]) -> str | None:
    order = [c for c in (*(_codec_name(p) for p in prior), *_PREFERENCE) if c]
    best: tuple[float, int] | None = None
    chosen: str | None = None
    for rank, codec in enumerate(dict.fromkeys(order)):
        try:
            text = data.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
        score = _plausibility(text)
        if score < _MIN_PLAUSIBLE:
            continue
        key = (score, -rank + (len(order) if codec == "cp949" and _korean_rows(data) else 0))
        if best is None or key > best:
            best, chosen = key, codec
    return chosen


def _korean_rows(data: bytes) -> bool:
    """Four or more double-byte characters, every one in KS X 1001's Hangul rows (lead byte B0-C8): Korean text.
    Chinese text of that length nearly always has a character from GB 2312's rows C9-D7 (是, 我, 在, 中 ...)."""
    leads = [b for i, b in enumerate(data) if b > 0x7F and (i == 0 or data[i - 1] <= 0x7F or _second(data, i))]
    return len(leads) >= 4 and all(0xB0 <= b <= 0xC8 for b in leads)


def _second(data: bytes, i: int) -> bool:
    """Is the 8-bit byte at ``i`` the first of a pair (an even count of 8-bit bytes runs up to it)?"""
    j = i
    while j > 0 and data[j - 1] > 0x7F:
        j -= 1
    return (i - j) % 2 == 0


def _frequent_han(c: str) -> bool:
    """One of the ~3,800-5,400 most used ideographs of simplified Chinese, traditional Chinese or Japanese (their
    national standards' level-1 sets: GB 2312 rows 16-55, Big5 A440-C67E, JIS X 0208 level 1)."""
    for codec, low, high in (("gb2312", 0xB0, 0xD7), ("big5", 0xA4, 0xC6), ("shift_jis", 0x88, 0x98)):
        try:
            b = c.encode(codec)
        except UnicodeEncodeError:
            continue
        if len(b) == 2 and low <= b[0] <= high:
            return True
    return False


def _char_ok(c: str, prev: str) -> bool:
    o = ord(c)
    if 0x4E00 <= o <= 0x9FFF:
        return _frequent_han(c)
    if 0x3040 <= o <= 0x30FF or 0x3000 <= o <= 0x303F or 0xFF01 <= o <= 0xFF5E:
        return True  # kana, CJK punctuation, full-width forms (half-width katakana is not)
    if 0xAC00 <= o <= 0xD7A3:
        try:
            c.encode("euc_kr")  # the 2,350 syllables of KS X 1001, not the rare ones only cp949 has
        except UnicodeEncodeError:
            return False
        return True
    if c.isalpha() and o < 0x0530:  # Latin, Greek, Cyrillic: no capital right after a small letter
        if c.isupper() and prev.isalpha() and prev.islower():
            return False
        # no Greek or Cyrillic letter inside a Latin word ('Mьller' is 'Müller' read as windows-1251)
        return not (o >= 0x0370 and prev.isascii() and prev.isalpha())
    return c in "«»“”„–—…€№\u00a0"


def _scripts(text: str) -> set[str]:
    found: set[str] = set()
    for c in text:
        o = ord(c)
        if o < 0x80 or not c.isalpha():
            continue
        if o < 0x0370:
            found.add("latin")
        elif o < 0x0400:
            found.add("greek")
        elif o < 0x0530:
            found.add("cyrillic")
        elif 0xAC00 <= o <= 0xD7A3:
            found.add("hangul")
        elif 0x3040 <= o <= 0x9FFF or 0xFF00 <= o <= 0xFFEF:
            found.add("cjk")
        else:
            found.add("other")
    return found


def _plausibility(text: str) -> float:
    """The share of the non-ASCII characters of ``text`` that real text in some language is made of."""
    good = total = 0
    prev = " "
    for c in text:
        if c >= "\x80":
            if unicodedata.category(c) in ("Cc", "Co", "Cn", "Cs"):
                return 0.0  # a control, private-use or unassigned character: not this charset
            total += 1
            good += _char_ok(c, prev)
        prev = c
    if not total:
        return 1.0
    score = good / total
    if len(_scripts(text)) > 1:
        score *= 0.5  # one name or subject is written in one script (Japanese mixes kanji and kana: one)
    han_runs = [w for w in text.split() if any("\u4e00" <= c <= "\u9fff" for c in w)]
    if len(han_runs) >= 2 and sum(len(w) for w in han_runs) / len(han_runs) <= 3:
        score *= 0.9  # short space-separated runs: Korean words read as ideographs, not Chinese
    return score
