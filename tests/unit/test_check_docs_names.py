"""scripts/check_docs_names.py finds the names a document uses that are not in the code (and only those)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from loadscript import load_script


@pytest.fixture(scope="module")
def cd() -> ModuleType:
    return load_script("check_docs_names")


@pytest.fixture(scope="module")
def index(cd: ModuleType) -> object:
    return cd.build_index()


def problems(cd: ModuleType, index: object, tmp_path: Path, text: str) -> list[str]:
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    return [p.split(": ", 1)[1] for p in cd.check(doc, index)]


def test_names_of_the_code_pass(cd: ModuleType, index: object, tmp_path: Path) -> None:
    text = ("`gateway.smtp.Handler.handle_DATA`, `Engine.thread`, `gateway/smtp.py`, `handlers/commands.py`,\n"
            "`read_data()`, `SessionRegistry`, `gateway.outbound:install`, `queue.Enqueue`, `Intake._settle`,\n"
            "`gateway.handlers.<name>`, `TEMPFAIL`, `_direct_savepoints`; in the text gateway.outbound.audience and\n"
            "Intake.store_many, and words that are not code: `limits.max_recipients`, `inbound_mail.auth`, `452`.\n")
    assert problems(cd, index, tmp_path, text) == []


def test_names_not_in_the_code_are_reported(cd: ModuleType, index: object, tmp_path: Path) -> None:
    text = ("`gateway.smtp.Handler.smtp_DATA` `Engine.threads` `gateway/nope.py` `no_such_function()`\n"
            "`NoSuchClass` `_no_such_private` `gateway.nope` `nope.py`\n"
            "plain text: gateway.smtp.no_such_name and Intake.no_such_method\n")
    assert problems(cd, index, tmp_path, text) == [
        "`gateway.smtp.Handler.smtp_DATA`: not in the code",
        "`Engine.threads`: Engine has no threads",
        "`gateway/nope.py`: no such file",
        "`no_such_function()`: no such function",
        "`NoSuchClass`: not in the code",
        "`_no_such_private`: not in the code",
        "`gateway.nope`: not in the code",
        "`nope.py`: no such file",
        "Intake.no_such_method: Intake has no no_such_method",
        "gateway.smtp.no_such_name: not in the code",
    ]


def test_the_architecture_document_matches_the_code(cd: ModuleType) -> None:
    assert cd.main([]) == 0
