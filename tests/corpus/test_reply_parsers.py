"""Reply-parser corpora (../shared/corpus) run through gateway.quotes.

Every portable expectation in each folder's expected.json becomes one test case. The corpus is read
in place; nothing of it is copied here. Fields that only describe a reference library's internal
fragment split (library_fragments, fragment_count > 1, fragment_flags, fragment_regex on fragments
other than the first, parseReplied_*), the 'signature' field (which block a library *hides* is a
policy choice) and talon's signature-extraction cases are not turned into tests.

Comparisons: the API strips surrounding whitespace, and the upstream expectations are defined as
whitespace-trimmed ('reply_equals: ... stripped of surrounding whitespace', 'first_fragment_trimmed_equals',
talon 'whitespace-trimmed'), so expected strings are compared after str.strip(); talon's HTML cases
compare with all whitespace removed, as upstream does.

Where an expectation is wrong for a help desk (what a support agent should see), the case is marked
xfail(strict=True) with the reason; see _DISAGREE.
"""

from __future__ import annotations

import email
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from gateway.quotes import html_to_text, strip_html_reply, strip_reply

CORPUS = Path(os.environ.get("TG_CORPUS") or Path(__file__).resolve().parents[2].parent / "shared" / "corpus")

FOLDERS = (
    "github-email_reply_parser",
    "zapier-email-reply-parser",
    "crisp-email-reply-parser",
    "talon",
)

# (folder, file, kind) -> reason. Expectations a help desk should not meet.
_DISAGREE: dict[tuple[str, str, str], str] = {
    ("talon", "reply-separated-by-hr.html", "reply_html_equals_ignoring_whitespace"): (
        "talon drops the whole <div> holding the <hr>, including the sender's own sign-off 'Bob' above the "
        "separator; an agent should see who signed the reply"
    ),
    ("crisp-email-reply-parser", "email_with_regards.txt", "first_fragment_equals"): (
        "crisp hides the closing 'Regards, / John Doe / CEO @ Acme !' as a signature; the sign-off tells the "
        "agent who wrote and in what role, and guessing signatures from 'Regards' is unsafe (see "
        "email_tricky_6_regards_in_sentence), so the gateway keeps it"
    ),
    ("crisp-email-reply-parser", "email_2.txt", "first_fragment_equals"): (
        "bottom-posted reply: crisp's first fragment is only the greeting 'Hi,'; the visible reply an agent "
        "needs also contains the answer written below the quote ('You can list the keys ...')"
    ),
}


@dataclass(frozen=True)
class Case:
    folder: str
    file: str
    kind: str
    expected: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        suffix = ""
        if self.kind in ("reply_must_contain", "reply_must_not_contain", "fragment_regex"):
            suffix = f"[{str(self.expected)[:30]}]"
        return f"{self.folder}/{self.file}:{self.kind}{suffix}"


def _load(folder: str) -> dict[str, Any]:
    path = CORPUS / folder / "expected.json"
    with path.open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def _cases_reply_parser(folder: str) -> list[Case]:
    """github / zapier: reply_equals, reply_startswith, reply_must_contain, reply_must_not_contain, max_seconds."""
    cases: list[Case] = []
    for name, exp in _load(folder).items():
        if name.startswith("_"):
            continue
        for kind in ("reply_equals", "reply_startswith", "max_seconds"):
            if kind in exp:
                cases.append(Case(folder, name, kind, exp[kind]))
        for kind in ("reply_must_contain", "reply_must_not_contain"):
            for item in exp.get(kind, []):
                cases.append(Case(folder, name, kind, item))
    return cases


def _cases_crisp() -> list[Case]:
    folder = "crisp-email-reply-parser"
    data = _load(folder)
    common = data["_about"]["COMMON_FIRST_FRAGMENT"]
    cases: list[Case] = []
    for name, exp in data.items():
        if name.startswith("_"):
            continue
        for kind in (
            "first_fragment_trimmed_equals",
            "first_fragment_equals",
            "visible_text_equals",
            "visible_text_trimmed_equals",
        ):
            if kind in exp:
                cases.append(Case(folder, name, kind, exp[kind]))
        # The first fragment is where the visible reply starts: its regexes must hold on it.
        for index, pattern in exp.get("fragment_regex", []):
            if index == 0:
                cases.append(Case(folder, name, "fragment_regex", pattern))
        for index, pattern in exp.get("fragment_regex_multiline", []):
            if index == 0:
                cases.append(Case(folder, name, "fragment_regex", pattern, {"multiline": True}))
        # One single, unquoted, non-signature fragment: the library found nothing to strip.
        flags = exp.get("fragment_flags", {})
        if exp.get("fragment_count") == 1 and not flags.get("quoted", {}).get("0") and not flags.get(
            "signature", {}
        ).get("0"):
            cases.append(Case(folder, name, "nothing_to_strip"))
        assert common  # present for documentation only; expectations carry the text itself
    return cases


def _cases_talon() -> list[Case]:
    folder = "talon"
    cases: list[Case] = []
    for name, exp in _load(folder).items():
        if name.startswith("_") or name.startswith("signature/"):
            continue  # signature extraction is not what strip_reply does
        for kind in (
            "reply_equals",
            "reply_text_equals_ignoring_whitespace",
            "reply_html_equals_ignoring_whitespace",
            "reply_nonempty",
        ):
            if kind in exp:
                cases.append(Case(folder, name, kind, exp[kind]))
        for item in exp.get("reply_must_not_contain", []):
            cases.append(Case(folder, name, "reply_must_not_contain", item))
    return cases


def _all_cases() -> list[Any]:
    if not CORPUS.is_dir():
        # Fail (not skip) when the corpus is missing: one case that reports it.
        return [pytest.param(None, id="corpus-missing")]
    cases: list[Case] = []
    cases += _cases_reply_parser("github-email_reply_parser")
    cases += _cases_reply_parser("zapier-email-reply-parser")
    cases += _cases_crisp()
    cases += _cases_talon()
    params = []
    for case in cases:
        marks = []
        reason = _DISAGREE.get((case.folder, case.file, case.kind))
        if reason:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


# --------------------------------------------------------------------------------------------
# reading messages
# --------------------------------------------------------------------------------------------

_MESSAGE_DIRS = {
    "github-email_reply_parser": "emails",
    "zapier-email-reply-parser": "emails",
    "crisp-email-reply-parser": "fixtures",
    "talon": "fixtures",
}


def _path(case: Case) -> Path:
    return CORPUS / case.folder / _MESSAGE_DIRS[case.folder] / case.file


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def _first_text_plain(path: Path) -> str:
    with path.open("rb") as fh:
        msg = email.message_from_binary_file(fh, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            content = part.get_content()
            assert isinstance(content, str)
            return content
    raise AssertionError(f"{path.name}: no text/plain part")


def _visible(case: Case) -> str:
    """The gateway's visible reply text for the case's message."""
    path = _path(case)
    if case.folder == "talon":
        if path.suffix == ".eml":
            # reply-quotations-share-block.eml is marked 'treat_as: plain text (whole file)' upstream, where
            # the file is fed raw to a plain-text extractor. Its text part is base64, so the raw file never
            # shows the quote block; the gateway works on the decoded first text/plain part, which does.
            # These are replies to mails the gateway never sent: each opens a new ticket, whose description loses
            # the quoted history and keeps the signature (talon strips quotations only: 'Sent from my iPhone' and
            # a '-- ' block stay). A comment on a known ticket drops the signature as well (tests/unit/test_quotes).
            return strip_reply(_first_text_plain(path), keep_signature=True)
        return strip_html_reply(_read_text(path))
    return strip_reply(_read_text(path))


def _no_ws(s: str) -> str:
    return re.sub(r"\s+", "", s)


def _js_regex(pattern: str) -> str:
    # The crisp patterns are JavaScript regexes; the ones used are also valid Python ('\/' is just '/').
    return pattern.replace("\\/", "/")


_CHECKS: dict[str, Callable[[Case, str], None]] = {}


def _check(kind: str) -> Callable[[Callable[[Case, str], None]], Callable[[Case, str], None]]:
    def deco(fn: Callable[[Case, str], None]) -> Callable[[Case, str], None]:
        _CHECKS[kind] = fn
        return fn

    return deco


@_check("reply_equals")
@_check("first_fragment_trimmed_equals")
@_check("first_fragment_equals")
@_check("visible_text_equals")
@_check("visible_text_trimmed_equals")
def _equals(case: Case, got: str) -> None:
    assert got == case.expected.strip()


@_check("reply_startswith")
def _startswith(case: Case, got: str) -> None:
    assert got.startswith(case.expected), got[:300]


@_check("reply_must_contain")
def _contains(case: Case, got: str) -> None:
    assert case.expected in got, got[:300]


@_check("reply_must_not_contain")
def _not_contains(case: Case, got: str) -> None:
    assert case.expected not in got, got[:300]


@_check("reply_nonempty")
def _nonempty(case: Case, got: str) -> None:
    assert got.strip()


@_check("fragment_regex")
def _regex(case: Case, got: str) -> None:
    flags = re.MULTILINE if case.extra.get("multiline") else 0
    assert re.search(_js_regex(case.expected), got, flags), got[:300]


@_check("nothing_to_strip")
def _nothing(case: Case, got: str) -> None:
    assert got == _read_text(_path(case)).replace("\r\n", "\n").strip()


@_check("reply_text_equals_ignoring_whitespace")
def _text_no_ws(case: Case, got: str) -> None:
    assert _no_ws(got) == _no_ws(case.expected)


@_check("reply_html_equals_ignoring_whitespace")
def _html_no_ws(case: Case, got: str) -> None:
    assert _no_ws(got) == _no_ws(html_to_text(case.expected))


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------


def test_corpus_present() -> None:
    """The corpus is part of the test suite: a missing folder is a failure, never a skip."""
    assert CORPUS.is_dir(), f"corpus folder missing: {CORPUS} (set TG_CORPUS)"
    for folder in FOLDERS:
        assert (CORPUS / folder / "expected.json").is_file(), f"missing {folder}/expected.json in {CORPUS}"


@pytest.mark.parametrize("case", _all_cases())
def test_reply_expectation(case: Case | None) -> None:
    assert case is not None, f"corpus folder missing: {CORPUS} (set TG_CORPUS)"
    if case.kind == "max_seconds":
        text = _read_text(_path(case))
        start = time.process_time()
        strip_reply(text)
        elapsed = time.process_time() - start
        assert elapsed < float(case.expected), f"{elapsed:.3f}s"
        return
    got = _visible(case)
    _CHECKS[case.kind](case, got)
