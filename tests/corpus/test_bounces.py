"""gateway.autoreply against the real bounce corpora in ../shared/corpus (read in place).

Folders: Mail-DeliveryStatus-BounceParser (bounce vs. auto-reply, failed addresses) and
flufl.bounce (bounce, permanent vs. temporary, failed addresses). The corpus root is
``<repo>/../shared/corpus`` or $TG_CORPUS; a missing folder is a failure, never a skip.

Each check is its own test so the pass rates can be reported separately:
classification, permanence, recipient addresses, original Message-ID.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateway.autoreply import bounce_info, classify

CORPUS = Path(os.environ.get("TG_CORPUS") or Path(__file__).resolve().parents[2].parent / "shared" / "corpus")
PERL = "Mail-DeliveryStatus-BounceParser"
FLUFL = "flufl.bounce"

# --- expectations we judge wrong (strict: an unexpected pass fails too) -----------------------

_SPAM_NOT_BOUNCE = (
    "plain spam from a human-looking sender, not a delivery report; the upstream .t file only "
    "asserts that no bounce reports are extracted ('a non-bounce spam message'), is_bounce=1 is an "
    "artefact of the reference library. The gateway must not silently drop such mail as a bounce."
)
PERL_CLASSIFY_XFAIL: dict[str, str] = {
    "spam-bogus-email-in-report.msg": _SPAM_NOT_BOUNCE,
    "spam-lots-of-bogus-addresses.msg": _SPAM_NOT_BOUNCE,
    "spam-with-image.msg": _SPAM_NOT_BOUNCE,
    "warning-8.msg": (
        "an RFC 3464 delay report (Action: delayed, Status: 4.0.0); the reference library treats "
        "delays as non-bounces, the gateway's policy (shared with the flufl.bounce corpus, e.g. "
        "dsn_05..dsn_08) is bounce with permanent=False"
    ),
}
FLUFL_ADDRESS_XFAIL: dict[str, str] = {
    "yale_01.txt": (
        "the report names only a bare local part ('thomas.dtankengine'); flufl's yale-specific "
        "detector synthesises two guessed addresses @yale.edu and @cs.yale.edu. We do not guess "
        "domains other than the reporting host's"
    ),
}


# --- helpers --------------------------------------------------------------------------------


def _folder(name: str) -> Path:
    return CORPUS / name


def _load_expected(name: str) -> dict[str, Any] | None:
    path = _folder(name) / "expected.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("_about", None)
    return data


def _missing(name: str) -> list[Any]:
    return [pytest.param(None, None, id=f"{name}-corpus-missing")]


def _parse(path: Path) -> email.message.EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def _envelope_from(msg: email.message.Message) -> str | None:
    """The envelope sender as the MTA recorded it in Return-Path ("" for <>), else None."""
    try:
        values = msg.get_all("Return-Path") or []
    except Exception:
        values = []
    if not values:
        return None
    value = str(values[0]).strip()
    if value in ("", "<>"):
        return ""
    return email.utils.parseaddr(value)[1] or value.strip("<>").strip()


def _from_addr(msg: email.message.Message) -> str | None:
    try:
        value = msg.get("From")
    except Exception:
        return None
    if value is None:
        return None
    addr = email.utils.parseaddr(str(value))[1]
    return addr or None


def _run(path: Path):
    msg = _parse(path)
    verdict = classify(msg, envelope_from=_envelope_from(msg), from_addr=_from_addr(msg))
    info = bounce_info(msg)
    return verdict, info


def _xfail(reason: str | None) -> list[Any]:
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


# --- Mail-DeliveryStatus-BounceParser -------------------------------------------------------


def _perl_cases(field: str) -> list[Any]:
    data = _load_expected(PERL)
    if data is None or not (_folder(PERL) / "corpus").is_dir():
        return _missing(PERL)
    cases = []
    for name, expectations in sorted(data.items()):
        for i, exp in enumerate(expectations):
            if field not in exp or exp[field] in (None, []):
                continue
            marks = _xfail(PERL_CLASSIFY_XFAIL.get(name)) if field == "is_bounce" else []
            cases.append(pytest.param(name, exp, id=f"{name}#{i}", marks=marks))
    return cases


def _perl_all() -> list[Any]:
    data = _load_expected(PERL)
    if data is None or not (_folder(PERL) / "corpus").is_dir():
        return _missing(PERL)
    return [pytest.param(name, None, id=name) for name in sorted(data)]


def _perl_path(name: str | None) -> Path:
    assert name is not None, f"corpus folder missing: {_folder(PERL)} (set TG_CORPUS)"
    return _folder(PERL) / "corpus" / name


@pytest.mark.parametrize(("name", "exp"), _perl_all())
def test_perl_no_crash(name: str | None, exp: None) -> None:
    verdict, info = _run(_perl_path(name))
    assert verdict is None or verdict.kind in ("auto_reply", "bounce", "bulk", "list", "loop")
    assert verdict is None or verdict.reason
    if info is not None:
        assert all(r == r.lower() for r in info.recipients)


@pytest.mark.parametrize(("name", "exp"), _perl_cases("is_bounce"))
def test_perl_classification(name: str | None, exp: dict[str, Any]) -> None:
    verdict, _ = _run(_perl_path(name))
    if exp["is_bounce"]:
        assert verdict is not None and verdict.kind == "bounce", verdict
    else:
        # vacation mail, challenge-response, whitelist notices: ignored, but not bounces
        assert verdict is not None and verdict.kind == "auto_reply", verdict


@pytest.mark.parametrize(("name", "exp"), _perl_cases("addresses"))
def test_perl_addresses(name: str | None, exp: dict[str, Any]) -> None:
    _, info = _run(_perl_path(name))
    assert info is not None
    expected = {a.lower() for a in exp["addresses"]}
    assert expected <= set(info.recipients), info.recipients


@pytest.mark.parametrize(("name", "exp"), _perl_cases("addresses_min_count"))
def test_perl_addresses_min_count(name: str | None, exp: dict[str, Any]) -> None:
    _, info = _run(_perl_path(name))
    assert info is not None
    assert len(info.recipients) >= exp["addresses_min_count"], info.recipients


@pytest.mark.parametrize(("name", "exp"), _perl_cases("orig_message_id"))
def test_perl_original_message_id(name: str | None, exp: dict[str, Any]) -> None:
    _, info = _run(_perl_path(name))
    assert info is not None
    assert info.original_message_id == exp["orig_message_id"].strip().strip("<>")


# --- flufl.bounce -----------------------------------------------------------------------------


def _flufl_cases(field: str) -> list[Any]:
    data = _load_expected(FLUFL)
    if data is None or not (_folder(FLUFL) / "data").is_dir():
        return _missing(FLUFL)
    cases = []
    for name, exp in sorted(data.items()):
        results = exp.get("results", [])
        if field == "permanent" and not results:
            continue
        if field == "addresses" and not any(r.get("addresses") for r in results):
            continue
        marks = _xfail(FLUFL_ADDRESS_XFAIL.get(name)) if field == "addresses" else []
        cases.append(pytest.param(name, exp, id=name, marks=marks))
    return cases


def _flufl_path(name: str | None) -> Path:
    assert name is not None, f"corpus folder missing: {_folder(FLUFL)} (set TG_CORPUS)"
    return _folder(FLUFL) / "data" / name


@pytest.mark.parametrize(("name", "exp"), _flufl_cases("classification"))
def test_flufl_classification(name: str | None, exp: dict[str, Any]) -> None:
    # every file in this folder is a delivery report (the two without results, bounce_01 and
    # dumbass_01, are reports that name no address); temporary failures are bounces too
    verdict, _ = _run(_flufl_path(name))
    assert verdict is not None and verdict.kind == "bounce", verdict


@pytest.mark.parametrize(("name", "exp"), _flufl_cases("permanent"))
def test_flufl_permanence(name: str | None, exp: dict[str, Any]) -> None:
    _, info = _run(_flufl_path(name))
    assert info is not None
    kinds = {r["kind"] for r in exp["results"]}
    assert len(kinds) == 1, kinds
    assert info.permanent is (kinds == {"permanent"}), (info.permanent, info.status)


@pytest.mark.parametrize(("name", "exp"), _flufl_cases("addresses"))
def test_flufl_addresses(name: str | None, exp: dict[str, Any]) -> None:
    _, info = _run(_flufl_path(name))
    assert info is not None
    expected = {a.lower() for r in exp["results"] for a in r["addresses"]}
    assert expected <= set(info.recipients), info.recipients


def test_corpus_folders_present() -> None:
    for name, sub in ((PERL, "corpus"), (FLUFL, "data")):
        assert (_folder(name) / sub).is_dir(), f"missing corpus folder {_folder(name) / sub} (set TG_CORPUS)"
        assert (_folder(name) / "expected.json").is_file()
