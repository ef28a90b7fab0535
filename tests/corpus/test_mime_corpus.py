"""Every message of the shared real-world corpus goes through gateway.mime.parse_mail.

The corpus is read in place (``../shared/corpus`` next to the project, or $TG_CORPUS); nothing of
it is copied into the project.  A missing corpus or folder FAILS.  Expectations from the upstream
projects' ``expected.json`` that concern parsing (attachments, sender, subject, recipients) are
checked; where we judge an expectation not to apply to ``ParsedMail`` it is a strict xfail with the
reason.  mail-parser contains real malspam: its payloads are only parsed, never opened or hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.mime import MailParseError, ParsedMail, parse_mail

CORPUS = Path(os.environ.get("TG_CORPUS") or Path(__file__).resolve().parents[2].parent / "shared" / "corpus")
FOLDERS = [
    "redmine",
    "mail-parser",
    "cpython-test_email",
    "github-email_reply_parser",
    "zapier-email-reply-parser",
    "crisp-email-reply-parser",
    "talon",
    "django-helpdesk",
    "flufl.bounce",
    "Mail-DeliveryStatus-BounceParser",
    "flanker",
    "mikel-mail",
]
SURROGATE = re.compile("[\ud800-\udfff]")


def _is_message_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(("LICENSE", "README")) and path.suffix != ".json"


def _files(folder: str) -> list[Path]:
    root = CORPUS / folder
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if _is_message_file(p))


ALL_FILES = [(folder, path) for folder in FOLDERS for path in _files(folder)]


def _expected(folder: str) -> dict[str, Any]:
    path = CORPUS / folder / "expected.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _find(folder: str, name: str) -> Path:
    hits = [p for p in _files(folder) if p.name == name]
    assert len(hits) == 1, f"{folder}/{name}: found {len(hits)} files"
    return hits[0]


def _strings(pm: ParsedMail) -> list[str]:
    out = [pm.subject, pm.from_name, pm.text, pm.html or "", pm.from_problem or "", pm.from_addr or ""]
    out += [pm.message_id or "", *pm.in_reply_to, *pm.references, *pm.reply_to, *pm.defects]
    out += [x for pair in pm.to + pm.cc for x in pair]
    for a in pm.attachments:
        out += [a.filename, a.content_type, a.content_id or ""]
    return out


# ------------------------------------------------------------------ presence


def test_corpus_root_exists() -> None:
    assert CORPUS.is_dir(), f"shared corpus not found at {CORPUS} (set TG_CORPUS)"


@pytest.mark.parametrize("folder", FOLDERS)
def test_corpus_folder_present_and_not_empty(folder: str) -> None:
    assert (CORPUS / folder).is_dir(), f"corpus folder missing: {CORPUS / folder}"
    assert _files(folder), f"corpus folder has no message files: {CORPUS / folder}"


# ------------------------------------------------------------------ no crash, no surrogates


@pytest.mark.parametrize(
    "folder, path", ALL_FILES, ids=[f"{f}/{p.relative_to(CORPUS / f)}" for f, p in ALL_FILES]
)
def test_parses_without_crash(folder: str, path: Path) -> None:
    raw = path.read_bytes()
    try:
        pm = parse_mail(raw)
    except MailParseError as exc:
        assert isinstance(exc.reason, str) and exc.reason
        return
    for s in _strings(pm):
        assert not SURROGATE.search(s), repr(s[:200])
    for a in pm.attachments:
        assert a.filename and "/" not in a.filename and "\\" not in a.filename and not a.filename.startswith(".")
        assert len(a.filename.encode("utf-8")) <= 255
        assert a.content_type == a.content_type.lower() and "/" in a.content_type
        assert isinstance(a.data, bytes)
    assert pm.from_addr is not None or pm.from_problem
    assert pm.date is None or pm.date.utcoffset() is not None


# ------------------------------------------------------------------ attachment expectations

# (folder, file, what) -> reason we judge the upstream expectation not to apply to ParsedMail
XFAIL: dict[tuple[str, str, str], str] = {
    ("redmine", "ticket_with_empty_attachment.eml", "attachments"): (
        "Redmine drops 0-byte attachments when it stores them; ParsedMail lists every non-body leaf "
        "(the empty response.json) and leaves that policy to the attachments handler"
    ),
    ("redmine", "ticket_from_emission_address.eml", "from_email"): (
        "ParsedMail.from_addr is lowercased by contract (redmine@example.net); Redmine keeps 'Redmine@example.net'"
    ),
    ("mail-parser", "mail_test_10", "attachment_filenames"): (
        "mail-parser names nameless inline images after their Content-ID ('<_1_0B4E...>'); a Content-ID is "
        "not a file name, ParsedMail names them attachment-N.gif and keeps the id in content_id"
    ),
}


def _case(folder: str, name: str, what: str) -> Any:
    reason = XFAIL.get((folder, name, what))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(folder, name, id=f"{folder}/{name}:{what}", marks=marks)


def _cases(folder: str, what: str) -> list[Any]:
    return [_case(folder, name, what) for name, exp in _expected(folder).items() if what in exp]


def _check_attachment_list(pm: ParsedMail, expected: list[dict[str, Any]]) -> None:
    got = [
        {"filename": a.filename, "content_type": a.content_type, "size": len(a.data),
         "sha256": hashlib.sha256(a.data).hexdigest()}
        for a in pm.attachments
    ]
    assert len(got) == len(expected), [g["filename"] for g in got]
    for g, e in zip(got, expected, strict=True):
        for key in ("filename", "content_type", "size", "sha256"):
            if key in e:
                assert g[key] == e[key], (key, g, e)


@pytest.mark.parametrize("folder, name", _cases("redmine", "attachments"))
def test_redmine_attachments(folder: str, name: str) -> None:
    pm = parse_mail(_find(folder, name).read_bytes())
    _check_attachment_list(pm, _expected(folder)[name]["attachments"])


@pytest.mark.parametrize("folder, name", _cases("redmine", "attachments_include"))
def test_redmine_attachments_include(folder: str, name: str) -> None:
    pm = parse_mail(_find(folder, name).read_bytes())
    for e in _expected(folder)[name]["attachments_include"]:
        hits = [a for a in pm.attachments if a.filename == e["filename"]]
        assert len(hits) == 1, [a.filename for a in pm.attachments]
        if "content_contains" in e:
            assert e["content_contains"].encode("utf-8") in hits[0].data


@pytest.mark.parametrize("folder, name", _cases("django-helpdesk", "attachments"))
def test_django_helpdesk_attachments(folder: str, name: str) -> None:
    pm = parse_mail(_find(folder, name).read_bytes())
    expected = _expected(folder)[name]["attachments"]
    _check_attachment_list(pm, expected)
    for a, e in zip(pm.attachments, expected, strict=True):
        if "content_startswith" in e:
            assert a.data.startswith(e["content_startswith"].encode("utf-8"))


@pytest.mark.parametrize("folder, name", _cases("mail-parser", "attachments_count"))
def test_mail_parser_attachment_count(folder: str, name: str) -> None:
    pm = parse_mail(_find(folder, name).read_bytes())
    assert len(pm.attachments) == _expected(folder)[name]["attachments_count"]


@pytest.mark.parametrize("folder, name", _cases("mail-parser", "attachment_filenames"))
def test_mail_parser_attachment_names(folder: str, name: str) -> None:
    pm = parse_mail(_find(folder, name).read_bytes())
    assert [a.filename for a in pm.attachments] == _expected(folder)[name]["attachment_filenames"]


@pytest.mark.parametrize("folder, name", _cases("mail-parser", "attachments"))
def test_mail_parser_attachment_details(folder: str, name: str) -> None:
    # names and counts only: these samples are malware carriers, their payloads are not examined
    pm = parse_mail(_find(folder, name).read_bytes())
    for e in _expected(folder)[name]["attachments"]:
        if "filename" in e:
            assert e["filename"] in [a.filename for a in pm.attachments]
        if "count" in e:
            assert len(pm.attachments) == e["count"]


# ------------------------------------------------------------------ header expectations (parse_mail's job too)


def _header_cases() -> list[Any]:
    out = []
    for folder in ("redmine", "django-helpdesk", "mail-parser"):
        for name, exp in _expected(folder).items():
            for what in ("subject", "subject_startswith", "from_email", "from", "to", "cc", "reply_to", "to_count",
                         "to_first_email"):
                if what in exp and not (folder == "mail-parser" and name == "mail_outlook_1"):
                    reason = XFAIL.get((folder, name, what))
                    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                    out.append(pytest.param(folder, name, what, id=f"{folder}/{name}:{what}", marks=marks))
    return out


@pytest.mark.parametrize("folder, name, what", _header_cases())
def test_header_expectations(folder: str, name: str, what: str) -> None:
    pm = parse_mail(_find(folder, name).read_bytes())
    e = _expected(folder)[name][what]
    if what == "subject":  # null: the mail has no Subject
        assert pm.subject == (e if e is not None else "")
    elif what == "subject_startswith":
        assert pm.subject.startswith(e)
    elif what == "from_email":
        assert pm.from_addr == e
    elif what == "from":
        assert [[pm.from_name, pm.from_addr]] == e
    elif what in ("to", "cc") and isinstance(e, str):  # redmine: the one address
        assert [addr for _name, addr in getattr(pm, what)] == [e]
    elif what in ("to", "cc") and all(isinstance(x, str) for x in e):  # redmine: addresses only
        assert [addr for _name, addr in getattr(pm, what)] == e
    elif what in ("to", "cc"):  # mail-parser: [name, address] pairs
        assert [list(t) for t in getattr(pm, what)] == e
    elif what == "reply_to":  # ParsedMail.reply_to holds addresses only
        assert pm.reply_to == [addr for _name, addr in e]
    elif what == "to_count":
        assert len(pm.to) == e
    elif what == "to_first_email":
        assert pm.to[0][1] == e
    else:  # pragma: no cover
        raise AssertionError(what)


# ------------------------------------------------------------------ large-body fast path == full stdlib parse


def _fields(pm: ParsedMail) -> tuple:
    return (pm.message_id, pm.in_reply_to, pm.references, pm.subject, pm.from_addr, pm.from_name, pm.from_problem,
            pm.reply_to, pm.to, pm.cc, pm.date, pm.text, pm.html,
            [(a.filename, a.content_type, a.data, a.content_id, a.inline) for a in pm.attachments], pm.defects)


@pytest.mark.parametrize(
    "folder, path", ALL_FILES, ids=[f"{f}/{p.relative_to(CORPUS / f)}" for f, p in ALL_FILES]
)
def test_fast_path_same_as_full_parse(folder: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every leaf body with a Content-Type counted as large (text ones too: they get their payload back):
    the result must equal the plain full parse exactly, or the mail falls back to it."""
    from gateway import mime

    monkeypatch.setattr(mime, "_TEXT_CT", re.compile(rb"(?!)"))
    raw = path.read_bytes()
    args: dict[str, Any] = {"max_depth": 50, "max_parts": 1000, "max_header_bytes": 1_000_000}
    try:
        slow = _fields(mime._parse(raw, big_min=None, **args))
    except MailParseError as exc:
        with pytest.raises(MailParseError, match=re.escape(exc.reason)):
            mime._parse(raw, big_min=1, **args)
        return
    assert _fields(mime._parse(raw, big_min=1, **args)) == slow
