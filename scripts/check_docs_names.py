#!/usr/bin/env python3
"""The names docs/architecture.md mentions exist in the code (run by scripts/test.sh; exit status 1 if not).

Read from the sources (nothing is imported). Checked:

* every `gateway.a.b` in the text (in backticks or not), and `module:function`: a module, then names defined
  at its top (a def, a class, an assignment, an import), then attributes of a class (methods, class-level
  and `self.x` assignments); every `Class.attribute` in the text whose class is defined in the code;
* in backticks: paths (`gateway/smtp.py`, `handlers/commands.py`, `scripts/test.sh`), `Class.attribute`
  for a class defined in the code, `module.name` for a module's last name part (`queue.Enqueue`), bare
  CamelCase and UPPER_CASE names (a class, an exception, a constant), `name()` (some function) and bare
  private names (`_settle`: a function, attribute or top-level name somewhere).

Config keys (`limits.mail_cpu_seconds`), table columns (`inbound_mail.auth`), outcomes and header names in
backticks are none of these and are not checked.

    scripts/check_docs_names.py [FILE ...]     # default: docs/architecture.md
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"gateway": ROOT / "gateway", "gateway.handlers": ROOT / "handlers"}
_TICKS = re.compile(r"`([^`\n]+)`")
_DOTTED_GATEWAY = re.compile(r"(?<![\w./])gateway(?:\.[A-Za-z_]\w*)+(?::\w+)?")
_CLASS_ATTR = re.compile(r"(?<![\w.])([A-Z]\w*)\.([A-Za-z_]\w*)")  # Engine.thread, anywhere in the text
_IDENT = re.compile(r"[A-Za-z_]\w*")
_CAMEL = re.compile(r"_?[A-Z][a-z0-9]+[A-Za-z0-9]*")
_UPPER = re.compile(r"[A-Z][A-Z0-9_]{2,}")
# names in backticks that are the doc's own placeholders or other programs' words, not the code's
_NOT_CODE = {"RFC", "UIDVALIDITY", "UIDPLUS", "COPYUID", "SIGKILL", "SIGTERM", "DMARC", "DKIM", "SPF", "SMAX",
             "BEGIN", "IMMEDIATE", "SAVEPOINT", "RELEASE", "ROLLBACK", "INSERT", "UPDATE", "MOVE", "EXPUNGE", "COPY",
             "IDLE", "LMTP", "SMTP", "IMAP", "HTTP", "TLS", "MiB"}


@dataclass
class Index:
    modules: dict[str, Path] = field(default_factory=dict)
    top: dict[str, set[str]] = field(default_factory=dict)  # module -> names defined at its top
    classes: dict[str, set[str]] = field(default_factory=dict)  # class name -> attributes (over all modules)
    functions: set[str] = field(default_factory=set)  # every def, top-level or a method
    basenames: dict[str, list[str]] = field(default_factory=dict)  # "queue" -> ["gateway.backends.queue"]


def _class_attrs(node: ast.ClassDef) -> set[str]:
    attrs: set[str] = set()
    for item in ast.walk(node):
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            attrs.add(item.name)
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            attrs.add(item.target.id)
        elif isinstance(item, ast.Assign):
            attrs.update(t.id for t in item.targets if isinstance(t, ast.Name))
        if isinstance(item, (ast.Assign, ast.AnnAssign)):
            targets = item.targets if isinstance(item, ast.Assign) else [item.target]
            attrs.update(t.attr for t in targets if isinstance(t, ast.Attribute)
                         and isinstance(t.value, ast.Name) and t.value.id == "self")
    return attrs


def _top_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):  # also under `if TYPE_CHECKING:`/try at the top; nested defs add little harm
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def build_index() -> Index:
    ix = Index()
    for prefix, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if "__pycache__" in parts or (prefix == "gateway" and parts[:1] == ["handlers"]):
                continue
            if parts[-1:] == ["__init__"]:
                parts = parts[:-1]
            name = ".".join([prefix, *parts])
            tree = ast.parse(path.read_text("utf-8"), str(path))
            ix.modules[name] = path
            ix.top[name] = _top_names(tree)
            ix.basenames.setdefault(name.rpartition(".")[2], []).append(name)
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    ix.classes.setdefault(node.name, set()).update(_class_attrs(node))
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    ix.functions.add(node.name)
    return ix


def _resolve_in_module(ix: Index, module: str, rest: list[str]) -> bool:
    """`rest` (names after a module) are defined there: a submodule or top name, then class attributes."""
    while rest and f"{module}.{rest[0]}" in ix.modules:
        module, rest = f"{module}.{rest[0]}", rest[1:]
    if not rest:
        return True
    if rest[0] not in ix.top[module]:
        return False
    return _resolve_attrs(ix, rest[0], rest[1:])


def _resolve_attrs(ix: Index, name: str, rest: list[str]) -> bool:
    if not rest:
        return True
    attrs = ix.classes.get(name)
    return attrs is not None and rest[0] in attrs and len(rest) == 1


def check_dotted_gateway(ix: Index, token: str) -> bool:
    token, _, func = token.partition(":")
    parts = token.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        if module in ix.modules:
            return _resolve_in_module(ix, module, parts[cut:] + ([func] if func else []))
    return False


def check_ticked(ix: Index, text: str) -> str | None:
    """Why a name in backticks is not in the code, or None (found, or not a code name)."""
    token = re.sub(r"\(.*\)$", "()", text.strip())
    call = token.endswith("()")
    token = token.removesuffix("()")
    if token.startswith(("gateway/", "handlers/", "scripts/", "tests/", "docs/", "systemd/", "templates/")):
        if any(c in token for c in "<*{ "):
            return None
        return None if (ROOT / token.rstrip("/")).exists() else "no such file"
    if token.endswith(".py") and "/" not in token and _IDENT.fullmatch(token[:-3]):
        found = any(p.name == token for root in PACKAGES.values() for p in root.rglob(token))
        return None if found else "no such file"
    if "<" in token:
        return None  # a placeholder: gateway.handlers.<name>
    if token.startswith("gateway."):
        return None if check_dotted_gateway(ix, token) else "not in the code"
    parts = token.split(".")
    if not all(_IDENT.fullmatch(p) for p in parts):
        return None
    first = parts[0]
    if first in ix.classes and len(parts) > 1:
        return None if _resolve_attrs(ix, first, parts[1:]) else f"{first} has no {'.'.join(parts[1:])}"
    if len(parts) > 1 and first in ix.basenames and first not in ("app", "config") and (
            call or _CAMEL.fullmatch(parts[1]) or _UPPER.fullmatch(parts[1])):
        ok = any(_resolve_in_module(ix, m, parts[1:]) for m in ix.basenames[first])
        return None if ok else "not in the code"
    if len(parts) == 1 and first not in _NOT_CODE:
        if _CAMEL.fullmatch(first) or _UPPER.fullmatch(first):
            defined = first in ix.classes or any(first in names for names in ix.top.values())
            return None if defined else "not in the code"
        if call:
            return None if first in ix.functions else "no such function"
        if first.startswith("_") and len(first) > 1:  # a private name of the code: `_settle`, `_staff_caps`
            defined = (first in ix.functions or any(first in names for names in ix.top.values())
                       or any(first in attrs for attrs in ix.classes.values()))
            return None if defined else "not in the code"
    return None


def _shown(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def check(path: Path, ix: Index) -> list[str]:
    problems: list[str] = []
    text = path.read_text("utf-8")
    where = _shown(path)
    for lineno, line in enumerate(text.splitlines(), 1):
        seen: set[str] = set()
        for m in _TICKS.finditer(line):
            why = check_ticked(ix, m.group(1))
            seen.add(m.group(1))
            if why:
                problems.append(f"{where}:{lineno}: `{m.group(1)}`: {why}")
        for m in _CLASS_ATTR.finditer(line):
            cls, attr = m.groups()
            if cls in ix.classes and attr not in ix.classes[cls] and not any(cls + "." + attr in t for t in seen):
                problems.append(f"{where}:{lineno}: {cls}.{attr}: {cls} has no {attr}")
        for m in _DOTTED_GATEWAY.finditer(line):
            token = m.group(0).rstrip(".")
            if token not in seen and not check_dotted_gateway(ix, token):
                problems.append(f"{where}:{lineno}: {token}: not in the code")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path, default=[ROOT / "docs" / "architecture.md"])
    args = ap.parse_args(argv)
    ix = build_index()
    problems = [p for f in args.files for p in check(f.resolve(), ix)]
    for p in problems:
        print(p)
    print(f"{len(problems)} name(s) in {', '.join(str(f) for f in args.files)} not found in the code",
          file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
