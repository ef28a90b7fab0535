"""scripts/check_cycles.py finds the import cycles it is meant to find (and no others), on a scratch package."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from loadscript import load_script


@pytest.fixture(scope="module")
def cc() -> ModuleType:
    return load_script("check_cycles")


def write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {"pkg": root / "pkg"}


def found(cc: ModuleType, packages: dict[str, Path], *, types: bool = False, squash: bool = False) -> list[list[str]]:
    mods = cc.discover(packages)
    cc.read_imports(mods)
    graph = cc.build_graph(mods, types=types, packages=squash)
    return list(cc.cycles(graph))


def test_no_cycle(cc: ModuleType, tmp_path: Path) -> None:
    pk = write(tmp_path, {"__init__.py": "", "a.py": "from pkg import b\n", "b.py": "import os\n"})
    assert found(cc, pk) == []


def test_a_cycle_through_an_import_inside_a_function(cc: ModuleType, tmp_path: Path) -> None:
    pk = write(tmp_path, {"__init__.py": "", "a.py": "from pkg.b import f\n",
                          "b.py": "def f():\n    from pkg import a\n    return a\n"})
    assert found(cc, pk) == [["pkg.a", "pkg.b"]]


def test_type_checking_imports_count_only_with_types(cc: ModuleType, tmp_path: Path) -> None:
    pk = write(tmp_path, {"__init__.py": "", "a.py": "import pkg.b\n",
                          "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import X\n"})
    assert found(cc, pk) == []
    assert found(cc, pk, types=True) == [["pkg.a", "pkg.b"]]


def test_modules_named_in_a_table_are_imports(cc: ModuleType, tmp_path: Path) -> None:
    pk = write(tmp_path, {"__init__.py": "", "a.py": 'PLUGINS = ("pkg.b:install",)\n',
                          "b.py": "from pkg import a\n"})
    assert found(cc, pk) == [["pkg.a", "pkg.b"]]


def test_a_plain_string_is_not_an_import(cc: ModuleType, tmp_path: Path) -> None:
    pk = write(tmp_path, {"__init__.py": "", "a.py": 'LOG = "pkg.b"\nlog(f"pkg.b")\n', "b.py": "from pkg import a\n"})
    assert found(cc, pk) == []  # a logger name, a memo key: not a module loaded by name


def test_feature_packages_count_as_one(cc: ModuleType, tmp_path: Path) -> None:
    pk = write(tmp_path, {"__init__.py": "", "core.py": "def f():\n    from pkg.feat import hooks\n",
                          "feat/__init__.py": "", "feat/hooks.py": "", "feat/other.py": "from pkg import core\n"})
    assert found(cc, pk) == []  # module by module there is none
    assert found(cc, pk, squash=True) == [["pkg.core", "pkg.feat"]]


def test_the_gateway_has_none(cc: ModuleType) -> None:
    for types in (False, True):
        for squash in (False, True):
            assert found(cc, cc.PACKAGES, types=types, squash=squash) == [], (types, squash)
