"""`python -m gateway` from a source checkout, as the README says: a copy of the tree, the package NOT
installed (no editable finder, no site-packages copy), only its dependencies importable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import write_config
from mails import make_mail

ROOT = Path(__file__).resolve().parents[2]
SKIP = {".git", ".venv", "var", "build", "bench", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
        ".import_linter_cache", ".grimp_cache"}


def _copy_tree(dst: Path) -> Path:
    """The project as a checkout has it (symbolic links kept as links), without virtualenvs and caches."""
    def ignore(_: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIP or n.endswith(".egg-info")}

    shutil.copytree(ROOT, dst, symlinks=True, ignore=ignore)
    return dst


def _run(tree: Path, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """`python -m gateway ARGS` in `tree` with the interpreter's dependencies but without its site
    initialisation: -S skips the .pth files (the editable install's finder would map `gateway` back to the
    working tree under test), PYTHONPATH puts the site-packages directory itself on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "TICKET_GATEWAY"))}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    return subprocess.run([sys.executable, "-S", "-m", "gateway", *args], cwd=tree, input=input,
                          capture_output=True, env=env, timeout=120)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _copy_tree(tmp_path_factory.mktemp("checkout") / "ticket-gateway")


def test_the_copy_is_what_runs(tree: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    p = subprocess.run([sys.executable, "-S", "-c", "import gateway, gateway.handlers.parse as h; "
                        "print(gateway.__file__); print(h.__file__)"],
                       cwd=tree, capture_output=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    files = [Path(line) for line in p.stdout.decode().split()]
    assert all(f.is_relative_to(tree) for f in files), files
    assert files[1].resolve() == (tree / "handlers" / "parse.py").resolve()  # the top-level handlers/ folder


def test_help(tree: Path) -> None:
    p = _run(tree, "--help")
    assert p.returncode == 0, p.stderr.decode()
    for command in ("ingest", "tickets", "mail", "serve", "check-config"):
        assert command in p.stdout.decode()


def test_ingest_a_real_mail(tree: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path / 'var' / 'gateway.db'}")
    raw = make_mail(subject="Printer on fire", body="It smokes.\n")
    p = _run(tree, "--config", str(cfg), "ingest", input=raw)
    assert p.returncode == 0, p.stderr.decode()
    assert b"ticket #1" in p.stdout
    shown = _run(tree, "--config", str(cfg), "tickets", "show", "1", "--json")
    assert shown.returncode == 0, shown.stderr.decode()
    t = json.loads(shown.stdout)
    assert (t["subject"], t["description"]) == ("Printer on fire", "It smokes.")
    trace = json.loads(_run(tree, "--config", str(cfg), "mail", "show", "1", "--json").stdout)["trace"]
    assert any(line.startswith("parse") for line in trace), trace  # the handlers ran from the copy
