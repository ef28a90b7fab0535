"""Quoted-history and signature stripping for mail bodies; HTML to text; HTML sanitising.

Pure functions: no database, no I/O, no global state.

``strip_reply`` works line by line in a single forward pass. Every regular expression
below is applied to one line (or to a join of at most three short lines), contains no nested
unbounded quantifiers, and is skipped for overlong lines, so the cost is linear in the size
of the body even for hostile input.

Policy (what a support agent should see):

* ``>``-quoted lines are dropped wherever they are; text written between quote blocks
  (inline / bottom-posted answers) is kept.
* A reply header ("On ... wrote:", "Am ... schrieb ...:", "Le ... a écrit :", ...) that is
  followed by a ``>``-quoted block is dropped together with the block; one followed by
  unquoted text (Gmail without ``>``, Outlook) ends the visible part.
* An Outlook header block (From/Sent/To/Subject and translations), an "Original Message"
  separator, a ``-- `` signature delimiter, a mobile signature ("Sent from my iPhone") and a
  mailing-list footer end the visible part.
* Explicitly *forwarded* messages ("---------- Forwarded message ---------",
  "Begin forwarded message:") are kept: on a help desk the forwarded mail is usually the
  very thing the ticket is about.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import nh3

__all__ = ["strip_reply", "html_to_text", "sanitize_html", "strip_html_reply"]

# Lines longer than this are never considered as (part of) a header, separator or signature.
_MAX_HEADER_LINE = 300

# --------------------------------------------------------------------------------------------
# reply headers ("On <date>, <name> wrote:")
# --------------------------------------------------------------------------------------------

# Words that open an attribution line, per language.
_LEAD_IN = (
    r"On|Am|Le|El|Em|Il|In\s+data|Op|W\s+dniu|Dnia|Den|På|Dne|Dana|Pada|Vào"
)
# Verbs that close an attribution line.
_VERB = (
    r"wrote|writes|schrieb|schreibt|a\s+écrit|escribió|escreveu|ha\s+scritto|scrisse|schreef|"
    r"napisał\(a\)|napisała|napisał|kirjoitti|skrev|írta|написал\(а\)|написала|написал|пишет|"
    r"yazdı|napsal|napísal|kirjutas|rašė|rakstīja|a\s+scris|έγραψε|כתב|كتب|写道|寫道|のメッセージ"
)
# Plain-text endings of the verbs above, for a cheap pre-filter.
_VERB_TAILS = (
    "wrote", "writes", "schrieb", "schreibt", "écrit", "escribió", "escreveu", "scritto", "scrisse",
    "schreef", "napisał(a)", "napisała", "napisał", "kirjoitti", "skrev", "írta", "написал(а)",
    "написала", "написал", "пишет", "yazdı", "napsal", "napísal", "kirjutas", "rašė", "rakstīja",
    "scris", "έγραψε", "כתב", "كتب", "写道", "寫道", "のメッセージ",
)
_LEAD_IN_RE = re.compile(rf"^(?:{_LEAD_IN})\s", re.IGNORECASE)
# 'schrieb' inside the header, followed by the name: 'Am <date> schrieb "John Doe <john@example.com>:'.
_VERB_MID_RE = re.compile(rf"\s(?:{_VERB})\s", re.IGNORECASE)
# "... <someone@example.com>:" / "... someone@example.com):" at the very end.
_EMAIL_COLON_END_RE = re.compile(r"@[^\s@<>]{1,255}\s*>?\s*\)?\s*:$")
_EMAIL_RE = re.compile(r"[^\s<>()\[\]\"']{1,200}@[^\s<>()\[\]\"']{1,255}")
_DIGIT_RE = re.compile(r"\d")


def _has_date_digit(s: str) -> bool:
    """True when ``s`` has a digit outside e-mail addresses (dates and times have digits)."""
    if _DIGIT_RE.search(s) is None:
        return False
    if "@" not in s:
        return True
    return _DIGIT_RE.search(_EMAIL_RE.sub("", s)) is not None


def _normalise_candidate(s: str) -> str:
    # Decoration some clients put around the attribution ("---- On ... wrote ----", "*On ...*").
    return s.replace("\xa0", " ").strip(" \t-*_")


def _ends_with_verb(s: str, colon: bool) -> bool:
    """Does ``s`` end with an attribution verb ('wrote', 'a écrit', ...), with a colon if ``colon``?"""
    t = s[-60:].rstrip().lower()
    if colon:
        if not t.endswith(":"):
            return False
        t = t[:-1].rstrip()
    if not t.endswith(_VERB_TAILS):  # one call for the common case: no verb at all
        return False
    for verb in _VERB_TAILS:
        if t.endswith(verb):
            before = t[: len(t) - len(verb)]
            return not before or not before[-1].isalnum()
    return False


def _strong_header(s: str) -> bool:
    """Attribution that starts with a lead-in word: 'On ... wrote:', 'Am ... schrieb ...:'."""
    if not _LEAD_IN_RE.match(s):
        return False
    if _ends_with_verb(s, colon=s.endswith(":")):
        return s.endswith(":") or _has_date_digit(s)
    if s.endswith(":") and _has_date_digit(s) and _VERB_MID_RE.search(s):
        return True
    return False


def _generic_header(s: str) -> bool:
    """Attribution without a known lead-in word: '<date>, <name> <addr>:' or '<date> <name> írta:'."""
    if not s.endswith(":") or not _has_date_digit(s):
        return False
    if _EMAIL_COLON_END_RE.search(s[-300:]):
        return True
    if _ends_with_verb(s, colon=True) and ("@" in s or "," in s or '"' in s):
        return True
    return False


def _is_continuation(line: str) -> bool:
    """May ``line`` be the 2nd/3rd line of a wrapped attribution?"""
    s = line.strip()
    if not s or len(s) > _MAX_HEADER_LINE:
        return False
    if s.startswith(">"):
        # Gmail wraps '... <addr\n>:' and the '>:' then looks like a quote line.
        return s.replace(" ", "") in (">:", ">):")
    return True


def _header_end(scan: _Scan, k: int) -> int | None:
    """If an attribution header starts at line ``k`` (and spans at most 3 lines), its last index.

    A header ends on the first line that can end one (':' or a verb at its end), so at most one
    candidate is evaluated per start line.
    """
    lines = scan.lines
    first = lines[k].strip()
    if not first or len(first) > _MAX_HEADER_LINE or first.startswith(">"):
        return None
    parts = [first]
    for j in range(k, min(k + 3, scan.n)):
        if j > k:
            if not _is_continuation(lines[j]):
                return None
            nxt = lines[j].strip()
            if _LEAD_IN_RE.match(_normalise_candidate(nxt)):
                return None  # the header starts later, on that line
            parts.append(nxt)
        if not scan.ends[j]:
            continue
        cand = _normalise_candidate(" ".join(parts))
        if _strong_header(cand):
            return j
        if not _generic_header(cand):
            return None
        if j == k:
            return j
        # A wrapped generic header carries its date on the first line, and no shorter
        # suffix may already be a header on its own ('Version 2 is out.\n<date> <addr>:').
        if not _has_date_digit(first):
            return None
        for m in range(k + 1, j + 1):
            if _generic_header(_normalise_candidate(" ".join(x.strip() for x in lines[m : j + 1]))):
                return None
        return j
    return None


# --------------------------------------------------------------------------------------------
# Outlook-style header blocks ("From: ... Sent: ... To: ... Subject: ...")
# --------------------------------------------------------------------------------------------

_FROM_KEYS = (
    r"From|Von|De|Van|Da|Fra|Från|Od|Lähettäjä|От|Feladó|Kimden|Absender|Expéditeur|Mittente|"
    r"Remitente|Afzender|Nadawca|Από"
)
_OTHER_KEYS = (
    r"Sent|Date|To|Subject|Cc|Bcc|Reply-To|Sent\s+at|"
    r"Gesendet|Datum|An|Betreff|Kopie|"
    r"Envoyé(?:\s+le)?|À|A|Objet|Copie\s+à|Sujet|Cc|"
    r"Enviado(?:\s+el)?|Fecha|Para|Asunto|CC|"
    r"Verzonden|Aan|Onderwerp|"
    r"Inviato|Data|Oggetto|"
    r"Dato|Til|Emne|Sendt|Skickat|Till|Ämne|"
    r"Wysłano|Wysłane|Do|Temat|"
    r"Lähetetty|Vastaanottaja|Aihe|"
    r"Отправлено|Дата|Кому|Тема|Копия|"
    r"Elküldve|Címzett|Tárgy|Tarih|Kime|Konu|Odesláno|Komu|Předmět|Assunto|Enviada"
)
_KEY_TAIL = r"\s*\**\s*:(?:\s|\*|$|(?=\S))"
_FROM_LINE_RE = re.compile(rf"^\s*\**\s*(?:{_FROM_KEYS}){_KEY_TAIL}", re.IGNORECASE)
_OTHER_LINE_RE = re.compile(rf"^\s*\**\s*(?:{_OTHER_KEYS}){_KEY_TAIL}", re.IGNORECASE)
# "Message du : 12/12/2016 13:20" – an untranslated key line directly above a block.
_ANY_KEY_LINE_RE = re.compile(r"^\s*\**\s*[^\W\d_][\w '-]{0,30}?\s*\**\s*:\s*\S")


def _key_kind(line: str) -> str | None:
    if len(line) > _MAX_HEADER_LINE * 2 or line.find(":", 0, 40) < 0:
        return None
    if _FROM_LINE_RE.match(line):
        return "from"
    if _OTHER_LINE_RE.match(line):
        return "other"
    return None


class _Scan:
    """The body's lines with per-line facts computed at most once (keeps strip_reply linear)."""

    __slots__ = ("lines", "n", "_kind", "ends")

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.n = len(lines)
        self._kind: list[str | None] = [None] * self.n
        # Cheap filter: can an attribution header end on this line (':' or a verb at its end)?
        self.ends = [_may_end_header(line) for line in lines]

    def kind(self, j: int) -> str | None:
        """'from', 'other' (a known mail-header key such as 'Sent:'), or '' for no key."""
        v = self._kind[j]
        if v is None:
            v = _key_kind(self.lines[j]) or ""
            self._kind[j] = v
        return v or None


def _may_end_header(line: str) -> bool:
    tail = line[-80:].rstrip(" \t\xa0-*")
    return tail.endswith(":") or tail.lower().endswith(_VERB_TAILS)


def _header_block_at(scan: _Scan, i: int) -> bool:
    """Does an Outlook-style header block (a From key plus at least one other key) start at i?"""
    lines = scan.lines
    kind = scan.kind(i)
    if kind is None:
        return False
    kinds = [kind]
    misses = 0
    for j in range(i + 1, min(i + 10, scan.n)):
        line = lines[j]
        if not line.strip():
            break
        k = scan.kind(j)
        if k is None:
            misses += 1  # a wrapped value ('From: Human Resources\n<long@address>')
            if misses > 2:
                break
            continue
        kinds.append(k)
    if "from" not in kinds or len(kinds) < 2:
        return False
    # A block that does not start with From needs more evidence ('Date:/Subject:/From:/To:').
    return kinds[0] == "from" or len(kinds) >= 3


# --------------------------------------------------------------------------------------------
# separators, signatures, footers
# --------------------------------------------------------------------------------------------

_ORIGINAL_WORDS = (
    r"original\s+message|original|message\s+d'origine|oprindelig\s+(?:besked|meddelelse)|"
    r"opprinnelig\s+melding|ursprüngliche\s+nachricht|originalnachricht|mensaje\s+original|"
    r"messaggio\s+originale|mensagem\s+original|oorspronkelijk\s+bericht|origineel\s+bericht|"
    r"ursprungligt\s+meddelande|alkuperäinen\s+viesti|oryginalna\s+wiadomość|"
    r"wiadomość\s+oryginalna|исходное\s+сообщение|původní\s+zpráva|eredeti\s+üzenet|"
    r"reply\s+message|antwort\s+nachricht"
)
_ORIGINAL_SEPARATOR_RE = re.compile(
    rf"^\s*[-=_*]{{2,}}\s*(?:{_ORIGINAL_WORDS})\s*[-=_*]{{2,}}\s*$", re.IGNORECASE
)
_FORWARD_RE = re.compile(
    r"^\s*(?:[-=_*]{2,}\s*(?:forwarded\s+message|forwarded|weitergeleitete\s+nachricht|"
    r"message\s+transféré|mensaje\s+reenviado|messaggio\s+inoltrato|doorgestuurd\s+bericht|"
    r"videresendt\s+(?:meddelelse|melding)|vidarebefordrat\s+meddelande|"
    r"пересылаемое\s+сообщение|mensagem\s+encaminhada)\s*[-=_*]{2,}|"
    r"begin\s+forwarded\s+message\s*:|anfang\s+der\s+weitergeleiteten\s+nachricht\s*:|"
    r"début\s+du\s+message\s+réexpédié\s*:|inicio\s+del\s+mensaje\s+reenviado\s*:)\s*$",
    re.IGNORECASE,
)
_SEPARATOR_CHARS = "-=_*"
_SEPARATOR_ONLY_RE = re.compile(r"^\s*(?:[-_=*~#.•—–]\s*){2,}$|^\s*[—–]\s*$")
_UNDERSCORES_RE = re.compile(r"^\s*_{2,}\s*$")
_LIST_FOOTER_RE = re.compile(r"mailing\s+list|listinfo|mailman|unsubscribe", re.IGNORECASE)

# Mobile / client signatures: a short line of its own, no sentence punctuation.
_MOBILE_SIG_RE = re.compile(
    r"^(?:"
    r"Sent\s+(?:from|with|via|using)\s+\S.{0,50}|"
    r"Get\s+Outlook\s+for\s+\S.{0,30}|Download\s+Outlook\s+for\s+\S.{0,30}|"
    r"Gesendet\s+(?:von|mit|vom)\s+\S.{0,50}|Von\s+meine[mr]\s+\S.{0,40}\s+gesendet|"
    r"Envoyé\s+(?:de|depuis|à\s+partir\s+de|avec|par)\s+\S.{0,50}|Obtenir\s+Outlook\s+pour\s+\S.{0,30}|"
    r"Enviado\s+(?:desde|de|con|do)\s+\S.{0,50}|Obtener\s+Outlook\s+para\s+\S.{0,30}|"
    r"Inviato\s+(?:da|dal|dalla|con)\s+\S.{0,50}|"
    r"Verzonden\s+(?:vanaf|met|van)\s+\S.{0,50}|Verstuurd\s+(?:vanaf|met|van)\s+\S.{0,50}|"
    r"Skickat\s+från\s+\S.{0,50}|Sendt\s+fra\s+\S.{0,50}|Lähetetty\s+\S.{0,50}|"
    r"Wysłane\s+z\s+\S.{0,50}|Отправлено\s+(?:с|из)\s+\S.{0,50}"
    r")$"
)
# A link appended to the signature: 'Sent from TypeApp<http://...>', 'Sent with X (http://...)'.
_TRAILING_LINK_RE = re.compile(r"\s*(?:<[^<>\s]{1,500}>|\((?:https?://|www\.)[^()\s]{1,500}\))\s*$")
_SENTENCE_PUNCT_RE = re.compile(r"[,;!?]|\.(?:\s|$)")


_MOBILE_SIG_FIRST_WORDS = frozenset(
    {"Sent", "Get", "Download", "Gesendet", "Von", "Envoyé", "Obtenir", "Enviado", "Obtener",
     "Inviato", "Verzonden", "Verstuurd", "Skickat", "Sendt", "Lähetetty", "Wysłane", "Отправлено"}
)

_MOBILE_SIG_FIRST_CHARS = frozenset(w[0] for w in _MOBILE_SIG_FIRST_WORDS)


def _is_mobile_signature(line: str) -> bool:
    s = line.strip()
    if not s or len(s) > 160 or s.split(None, 1)[0] not in _MOBILE_SIG_FIRST_WORDS:
        return False
    s = _TRAILING_LINK_RE.sub("", s).strip()
    if not _MOBILE_SIG_RE.match(s):
        return False
    return _SENTENCE_PUNCT_RE.search(s) is None


def _is_signature_delimiter(line: str) -> bool:
    # RFC 3676 says '-- '; many clients and editors drop the trailing space.
    return line.rstrip() == "--"


def _is_list_footer(lines: list[str], i: int) -> bool:
    if not _UNDERSCORES_RE.match(lines[i]):
        return False
    return any(
        len(lines[j]) < 400 and _LIST_FOOTER_RE.search(lines[j])
        for j in range(i + 1, min(i + 5, len(lines)))
    )


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


# --------------------------------------------------------------------------------------------
# strip_reply
# --------------------------------------------------------------------------------------------


def strip_reply(text: str, *, keep_signature: bool = False) -> str:
    """Visible part of a plain-text mail body: drops quoted history ("> " lines, and everything from a
    reply header such as 'On <date>, <name> wrote:' / 'Am ... schrieb ...:' / 'Le ... a écrit :' /
    'El ... escribió:' / Outlook '-----Original Message-----' and 'From: ... Sent: ... To: ... Subject:' blocks
    (English, German 'Von:/Gesendet:/An:/Betreff:', French 'De :/Envoyé :/À :/Objet :', Spanish
    'De:/Enviado:/Para:/Asunto:'), Gmail, Apple Mail ('On ... at ..., X <x@y> wrote:'), 'Sent from my iPhone'
    style mobile signatures, and signatures after a '-- ' delimiter line). Headers that wrap over 2-3 lines count.
    Never returns an empty string when the input has non-quoted text; if stripping would leave nothing (the
    mail is ALL quote, e.g. a forward), return the input stripped of trailing whitespace. Strips surrounding
    blank lines. Must be fast: linear-ish, a 1 MB body in well under 1 s (no catastrophic regex backtracking).

    ``keep_signature``: the sender's signature stays (a '-- ' block, 'Sent from my iPhone'): the description of a
    new ticket, where it tells the agent who wrote and how to reach them; only the quoted history goes."""
    if not text:
        return ""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    n = len(lines)
    quoted = [_is_quoted(line) for line in lines]
    scan = _Scan(lines)

    kept: list[str] = []
    removed = False  # something was dropped since the last kept text line
    i = 0
    while i < n:
        line = lines[i]
        if quoted[i]:
            removed = True
            i += 1
            continue
        stripped = line.strip()
        if not stripped:
            # Where a quote block was cut out, leave one blank line, not the blanks of both sides.
            if not (removed and kept and not kept[-1].strip()):
                kept.append("")
            i += 1
            continue

        skip_to = _wedged_quote_end(lines, quoted, i)
        if skip_to is not None:
            removed = True
            i = skip_to
            continue
        cut = _cut_at(scan, lines, i, stripped[0], keep_signature)
        if cut == "forward":
            kept.extend(lines[i:])  # keep a forwarded message verbatim
            break
        if cut == "header":
            _drop_glued_date_lines(kept)
            break
        if cut is not None:
            break
        end = _header_end(scan, i) if any(scan.ends[i : i + 3]) else None
        if end is not None:
            nxt = end + 1
            while nxt < n and not lines[nxt].strip():
                nxt += 1
            if nxt < n and quoted[nxt]:
                removed = True
                i = end + 1  # attribution of a '>' block: drop it, keep reading after the block
                continue
            break  # attribution followed by an unquoted copy of the old mail: the rest is history
        kept.append(line)
        removed = False
        i += 1

    _trim(kept)
    result = "\n".join(kept).strip()
    if not result:
        return text.rstrip()
    return result


def _trim(kept: list[str]) -> None:
    """Trailing blank lines and separator lines ('____', '-----', '====') left above a cut; leading blanks."""
    while kept and (not kept[-1].strip() or _SEPARATOR_ONLY_RE.match(kept[-1])):
        kept.pop()
    while kept and not kept[0].strip():
        kept.pop(0)


def _wedged_quote_end(lines: list[str], quoted: list[bool], i: int) -> int | None:
    """Unquoted lines wedged between quote lines (no blank line around) are the quote's own lines re-wrapped
    by a client that did not prefix them: part of the quote. The quote line after them, or None."""
    if i == 0 or not quoted[i - 1]:
        return None
    n = len(lines)
    run_end = i
    while run_end < n and run_end - i < 2 and not quoted[run_end] and lines[run_end].strip():
        run_end += 1
    return run_end if run_end < n and quoted[run_end] else None


def _cut_at(scan: _Scan, lines: list[str], i: int, first_char: str, keep_signature: bool) -> str | None:
    """Where the visible text ends at line i: "forward" (a forwarded message follows, kept), "header" (a reply
    header block), "cut" (a separator, signature or list footer), else None."""
    line = lines[i]
    if first_char in _SEPARATOR_CHARS or first_char in "BbAaDdIi":
        if _FORWARD_RE.match(line):
            return "forward"
        if _ORIGINAL_SEPARATOR_RE.match(line) or (_is_signature_delimiter(line) and not keep_signature):
            return "cut"
        if first_char == "_" and _is_list_footer(lines, i):
            return "cut"
    if not keep_signature and first_char in _MOBILE_SIG_FIRST_CHARS and _is_mobile_signature(line):
        return "cut"
    if line.find(":", 0, 40) >= 0 and _header_block_at(scan, i):
        return "header"
    return None


def _drop_glued_date_lines(kept: list[str]) -> None:
    """Drop an untranslated date line glued on top of a header block ('Message du : 12/12/2016 13:20')."""
    while (
        kept
        and kept[-1].strip()
        and len(kept[-1]) <= _MAX_HEADER_LINE
        and _ANY_KEY_LINE_RE.match(kept[-1])
        and _has_date_digit(kept[-1])
    ):
        kept.pop()


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_SKIP_CONTENT_TAGS = frozenset(
    {"script", "style", "head", "title", "noscript", "template", "svg", "math", "object", "iframe"}
)
_VOID_TAGS = frozenset(
    {"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "param",
     "source", "track", "wbr"}
)
_BLOCK_TAGS = frozenset(
    {"div", "section", "article", "header", "footer", "nav", "aside", "main", "center",
     "address", "figure", "figcaption", "form", "fieldset", "dl", "dt", "dd", "ul", "ol",
     "table", "thead", "tbody", "tfoot", "caption", "body", "html", "details", "summary", "li", "tr"}
)
_PARA_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote"})
_QUOTE_CLASSES = ("gmail_quote", "moz-cite-prefix", "yahoo_quoted", "protonmail_quote", "zmail_extra")
_QUOTE_IDS = ("olk_src_body_section",)
_CUT_IDS = ("divrplyfwdmsg", "appendonsend", "stopspelling")
_BORDER_TOP_RE = re.compile(r"border-top\s*:\s*[^;]*solid|border-top-style\s*:\s*solid", re.IGNORECASE)
_HTML_HEADER_START_RE = re.compile(
    rf"^\s*\**\s*(?:{_FROM_KEYS}|{_OTHER_KEYS}){_KEY_TAIL}", re.IGNORECASE
)
_WS_RE = re.compile(r"\s+")
_CELL_SEP = " | "


class _TextExtractor(HTMLParser):
    """Tiny layout model: finished lines plus the line being written.

    Block boundaries end the current line only if it has content (like a browser), <br> always
    ends it (so '<div><br></div>' is an empty line), paragraphs add one blank line of margin
    (except Outlook's zero-margin 'MsoNormal' paragraphs).
    """

    def __init__(self, strip_quotes: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.strip_quotes = strip_quotes
        self.lines: list[str] = []
        self.cur = ""
        self.want_blank = False  # a paragraph margin is pending before the next content
        self.skip_depth = 0  # inside script/style/head/...
        self.drop: tuple[str, int] | None = None  # (tag, nesting) of a dropped quote element
        self.stopped = False
        self.pre = 0
        self.link_labels: list[tuple[str, list[str]]] = []
        self.cells: list[int] = []  # cells seen in the current table row, per nesting level
        self.border_marks: list[tuple[str, int, int, str]] = []  # (tag, depth, line count, cur)
        self.depth: dict[str, int] = {}
        # open <p>: (is it an Outlook zero-margin 'MsoNormal', line count at its start)
        self.p_stack: list[tuple[bool, int]] = []

    # -- layout ----------------------------------------------------------------------------
    @property
    def _silent(self) -> bool:
        return self.stopped or self.drop is not None or self.skip_depth > 0

    def _write(self, s: str) -> None:
        if not s:
            return
        if not self.cur:
            s = s.lstrip(" ")
            if not s:
                return
            if self.want_blank and self.lines and self.lines[-1]:
                self.lines.append("")
            self.want_blank = False
        self.cur += s
        for _, parts in self.link_labels:
            parts.append(s)

    def _soft_break(self) -> None:
        if self.cur.strip():
            self.lines.append(self.cur.rstrip())
        self.cur = ""

    def _hard_break(self) -> None:
        if self.want_blank and self.lines and self.lines[-1] and not self.cur:
            self.lines.append("")
        self.want_blank = False
        self.lines.append(self.cur.rstrip())
        self.cur = ""

    def _paragraph(self) -> None:
        self._soft_break()
        self.want_blank = True

    def _attrs(self, attrs: list[tuple[str, str | None]]) -> dict[str, str]:
        return {k.lower(): (v or "") for k, v in attrs}

    def _is_quote_element(self, tag: str, a: dict[str, str]) -> bool:
        if tag == "blockquote":
            return True
        classes = a.get("class", "").lower().split()
        if any(c in classes for c in _QUOTE_CLASSES):
            return True
        return a.get("id", "").lower() in _QUOTE_IDS

    # -- parser callbacks ------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.stopped:
            return
        tag = tag.lower()
        if self._start_hidden(tag):
            return
        a = self._attrs(attrs)
        if tag in self.depth:
            self.depth[tag] += 1
        if self.strip_quotes and self._start_quote(tag, a):
            return
        self._start_layout(tag, a)

    def _start_hidden(self, tag: str) -> bool:
        """Inside a dropped quote or a skipped element (or starting one): nothing is written."""
        if self.drop is not None:
            if tag == self.drop[0] and tag not in _VOID_TAGS:
                self.drop = (tag, self.drop[1] + 1)
            return True
        if self.skip_depth:
            if tag in _SKIP_CONTENT_TAGS:
                self.skip_depth += 1
            return True
        if tag in _SKIP_CONTENT_TAGS:
            self.skip_depth = 1
            return True
        return False

    def _start_quote(self, tag: str, a: dict[str, str]) -> bool:
        """Where the quoted history starts: the rest is cut, or this element dropped (True); a bordered box
        that may hold an Outlook header is marked (see _end_border)."""
        if a.get("id", "").lower() in _CUT_IDS:
            self._soft_break()
            self.stopped = True
            return True
        if self._is_quote_element(tag, a) and tag not in _VOID_TAGS:
            self.drop = (tag, 1)
            self._soft_break()
            return True
        if tag in ("div", "p", "span", "td") and _BORDER_TOP_RE.search(a.get("style", "")):
            self._soft_break()
            self.depth[tag] = self.depth.get(tag, 0) + (0 if tag in self.depth else 1)
            self.border_marks.append((tag, self.depth[tag], len(self.lines), self.cur))
        return False

    def _start_layout(self, tag: str, a: dict[str, str]) -> None:
        if tag == "br":
            self._hard_break()
        elif tag == "hr":
            self._soft_break()
        elif tag == "li":
            self._soft_break()
            self._write("- ")
        elif tag == "tr":
            self._soft_break()
            self.cells.append(0)
        elif tag in ("td", "th"):
            if self.cells:
                if self.cells[-1] > 0 and self.cur.strip():
                    self._write(_CELL_SEP)
                self.cells[-1] += 1
        elif tag == "p":
            mso = "msonormal" in a.get("class", "").lower().split()
            self.p_stack.append((mso, len(self.lines)))
            if mso:
                self._soft_break()
            else:
                self._paragraph()
        elif tag in _PARA_TAGS:
            self._paragraph()
            if tag == "pre":
                self.pre += 1
        elif tag in _BLOCK_TAGS:
            self._soft_break()
        elif tag == "a":
            self.link_labels.append((a.get("href", "").strip(), []))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag.lower() not in _VOID_TAGS:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if self.stopped:
            return
        tag = tag.lower()
        if self._end_hidden(tag):
            return
        if tag in self.depth and self._end_border(tag):
            return
        self._end_layout(tag)

    def _end_hidden(self, tag: str) -> bool:
        """Inside a dropped quote or a skipped element: nothing is written."""
        if self.drop is not None:
            if tag == self.drop[0]:
                level = self.drop[1] - 1
                self.drop = None if level == 0 else (tag, level)
            return True
        if self.skip_depth:
            if tag in _SKIP_CONTENT_TAGS:
                self.skip_depth -= 1
            return True
        return False

    def _end_border(self, tag: str) -> bool:
        """The end of a tracked element; True when it closed a bordered box that held an Outlook header."""
        depth = self.depth[tag]
        self.depth[tag] = max(depth - 1, 0)
        if self.border_marks and self.border_marks[-1][0] == tag and self.border_marks[-1][1] == depth:
            _, _, n_lines, cur = self.border_marks.pop()
            self._soft_break()
            inside = "\n".join(self.lines[n_lines:])
            if len(self.lines) > n_lines and _HTML_HEADER_START_RE.match(inside.lstrip()):
                # An Outlook/Windows Mail header box ('From: ... Sent: ...'): the rest is history.
                del self.lines[n_lines:]
                self.cur = cur
                self.stopped = True
                return True
        return False

    def _end_layout(self, tag: str) -> None:
        if tag == "tr":
            self._soft_break()
            if self.cells:
                self.cells.pop()
        elif tag == "li":
            self._soft_break()
        elif tag == "p":
            mso, start = self.p_stack.pop() if self.p_stack else (False, 0)
            if not mso:
                self._paragraph()
            elif len(self.lines) == start and not self.cur.strip():
                self._hard_break()  # Outlook's '<p class=MsoNormal>&nbsp;</p>' is an empty line
            else:
                self._soft_break()
        elif tag in _PARA_TAGS:
            self._paragraph()
            if tag == "pre" and self.pre:
                self.pre -= 1
        elif tag in _BLOCK_TAGS:
            self._soft_break()
        elif tag == "a" and self.link_labels:
            href, parts = self.link_labels.pop()
            label = _WS_RE.sub(" ", "".join(parts)).strip()
            if href.lower().startswith(("http://", "https://")) and label:
                if label.rstrip("/") != href.rstrip("/"):
                    self._write(f" <{href}>")

    def handle_data(self, data: str) -> None:
        if self._silent:
            return
        if self.pre:
            pieces = data.split("\n")
            for index, piece in enumerate(pieces):
                if index:
                    self._hard_break()
                if piece:
                    if not self.cur and self.want_blank and self.lines and self.lines[-1]:
                        self.lines.append("")
                    self.want_blank = False
                    self.cur += piece
            return
        self._write(_WS_RE.sub(" ", data))

    def text(self) -> str:
        if not self.stopped:
            self._soft_break()
        elif self.cur.strip():
            self.lines.append(self.cur.rstrip())
        out: list[str] = []
        for line in self.lines:
            line = line.replace("\u200b", "").replace("\ufeff", "").rstrip()
            if not line.strip():
                if out and out[-1]:
                    out.append("")
                continue
            out.append(line)
        while out and not out[-1]:
            out.pop()
        return "\n".join(out)


def _convert(html: str, strip_quotes: bool) -> str:
    parser = _TextExtractor(strip_quotes)
    parser.feed(html)
    parser.close()
    return parser.text()


def html_to_text(html: str) -> str:
    """Readable plain text from HTML mail (paragraphs/br/div/li become line breaks, tables readable, scripts
    and styles and head dropped, entities decoded, whitespace collapsed). stdlib html.parser based."""
    if not html:
        return ""
    return _convert(html, strip_quotes=False)


_ALLOWED_TAGS = frozenset(
    {"a", "abbr", "b", "blockquote", "br", "caption", "code", "col", "colgroup", "dd", "del",
     "div", "dl", "dt", "em", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img",
     "ins", "kbd", "li", "ol", "p", "pre", "q", "s", "small", "span", "strike", "strong", "sub",
     "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "u", "ul"}
)
_ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title", "width", "height"},
    "td": {"colspan", "rowspan", "align", "valign"},
    "th": {"colspan", "rowspan", "align", "valign"},
    "table": {"border", "cellpadding", "cellspacing"},
    "col": {"span"},
    "colgroup": {"span"},
    "ol": {"start", "type"},
    "blockquote": {"cite"},
    "font": {"color", "size"},
    "*": {"dir", "lang"},
}
_DROP_CONTENT_TAGS = frozenset(
    {"script", "style", "title", "head", "noscript", "template", "iframe", "object", "embed",
     "applet", "frame", "frameset", "select", "textarea", "button", "svg", "math"}
)


def _attribute_filter(element: str, attribute: str, value: str) -> str | None:
    if element == "img" and attribute == "src":
        v = value.strip().lower()
        return value if v.startswith(("cid:", "https:")) else None
    if element == "a" and attribute == "href":
        v = value.strip().lower()
        return value if v.startswith(("http:", "https:", "mailto:", "#")) else None
    return value


def sanitize_html(html: str) -> str:
    """Safe HTML for display using nh3 (installed): no scripts, event handlers, javascript: URLs, forms,
    iframes, style elements; keeps basic formatting, links (rel=noopener noreferrer), tables, images whose
    src is cid: or https:. Returns '' for empty input."""
    if not html or not html.strip():
        return ""
    return nh3.clean(
        html,
        tags=set(_ALLOWED_TAGS),
        clean_content_tags=set(_DROP_CONTENT_TAGS),
        attributes={k: set(v) for k, v in _ALLOWED_ATTRIBUTES.items()},
        attribute_filter=_attribute_filter,
        strip_comments=True,
        link_rel="noopener noreferrer",
        url_schemes={"http", "https", "mailto", "cid"},
    )


def strip_html_reply(html: str, *, keep_signature: bool = False) -> str:
    """Visible part of an HTML reply as plain text: drop blockquotes (type=cite, gmail_quote, Outlook
    divRplyFwdMsg / border-top separated blocks, 'moz-cite-prefix'), then html_to_text, then strip_reply."""
    if not html:
        return ""
    text = _convert(html, strip_quotes=True)
    if not text.strip():
        # Everything was quoted (e.g. a forward inside a blockquote): keep it all.
        return strip_reply(html_to_text(html), keep_signature=keep_signature)
    return strip_reply(text, keep_signature=keep_signature)
