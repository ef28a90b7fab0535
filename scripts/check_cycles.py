#!/usr/bin/env python3
"""Import cycles among the gateway's modules (run by scripts/test.sh; exit status 1 when there is one).

The graph is read from the sources (no module is imported), with one edge per import of a gateway module:

* runtime: module-level imports, imports inside functions (they run when the function is called) and module
  names written as strings in a tuple/list/set such as `gateway.cli.COMMANDS` ("gateway.cli.tickets") or
  the service's components ("gateway.sla:install_service"), which are imported by name;
* type-only: imports under `if TYPE_CHECKING:` (with --types they are counted too).

`import a.b.c` / `from a.b import c` is an edge to the module named (a.b.c), not to the packages above it,
the convention of grimp and import-linter. The top-level handlers/ folder is the package gateway.handlers.
A cycle is a strongly connected component of more than one module (or a module importing itself).

    scripts/check_cycles.py            # runtime cycles; exit 1 if any
    scripts/check_cycles.py --types    # counting the TYPE_CHECKING imports too
    scripts/check_cycles.py --edges    # print the edges of every cycle
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"gateway": ROOT / "gateway", "gateway.handlers": ROOT / "handlers"}
_MODULE_STRING = re.compile(r"[A-Za-z_]\w*(?:\.\w+)+(?::\w+)?")


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    runtime: dict[str, int] = field(default_factory=dict)  # imported module -> first line
    type_only: dict[str, int] = field(default_factory=dict)


def discover(packages: dict[str, Path] | None = None) -> dict[str, Module]:
    mods: dict[str, Module] = {}
    for prefix, root in (PACKAGES if packages is None else packages).items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [] if rel.parts == ("__init__",) else list(rel.parts)
            is_package = parts[-1:] == ["__init__"] or not parts
            if parts[-1:] == ["__init__"]:
                parts = parts[:-1]
            if any(p in ("__pycache__",) for p in parts) or (prefix == "gateway" and parts[:1] == ["handlers"]):
                continue  # gateway/handlers is a link to handlers/: read once, under PACKAGES
            name = ".".join([prefix, *parts])
            mods[name] = Module(name, path, is_package)
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, type_only: bool) -> Iterator[tuple[ast.AST, bool]]:
    """Every node under `node`, with whether it sits under `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, True
                yield from _walk(stmt, True)
            for stmt in child.orelse:
                yield stmt, type_only
                yield from _walk(stmt, type_only)
            continue
        yield child, type_only
        yield from _walk(child, type_only)


def _resolve(mod: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.name.split(".")
    if not mod.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(mod: Module, node: ast.AST, known: dict[str, Module]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = _resolve(mod, node)
        out = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            out.append(sub if sub in known else base)
        return out
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):  # a table of modules loaded by name
        names = [e.value.partition(":")[0] for e in node.elts
                 if isinstance(e, ast.Constant) and isinstance(e.value, str) and _MODULE_STRING.fullmatch(e.value)]
        return [n for n in names if n in known]
    return []


def read_imports(mods: dict[str, Module]) -> None:
    for mod in mods.values():
        tree = ast.parse(mod.path.read_text("utf-8"), str(mod.path))
        for node, type_only in _walk(tree, False):
            for target in _targets(mod, node, mods):
                while target and target not in mods:  # gateway.x.y where y is a name: the module is gateway.x
                    target = target.rpartition(".")[0]
                if not target or target == mod.name:
                    continue
                edges = mod.type_only if type_only else mod.runtime
                edges.setdefault(target, getattr(node, "lineno", 0))
        for target in list(mod.type_only):
            if target in mod.runtime:
                del mod.type_only[target]


def squash(name: str) -> str:
    """gateway.sla.store -> gateway.sla: a feature package counts as one node."""
    return ".".join(name.split(".")[:2])


def build_graph(mods: dict[str, Module], *, types: bool, packages: bool) -> dict[str, list[str]]:
    graph: dict[str, set[str]] = {}
    for m in mods.values():
        src = squash(m.name) if packages else m.name
        targets = set(m.runtime) | (set(m.type_only) if types else set())
        graph.setdefault(src, set()).update(squash(t) if packages else t for t in targets)
    for src, targets in graph.items():
        if packages:
            targets.discard(src)
    return {k: sorted(v) for k, v in graph.items()}


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative) with more than one node, or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            for nxt in it:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1 or node in graph[node]:
                        out.append(sorted(comp))
    return sorted(out, key=lambda c: (-len(c), c))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", action="store_true", help="count the imports under `if TYPE_CHECKING:` too")
    ap.add_argument("--edges", action="store_true", help="print the edges inside every cycle")
    args = ap.parse_args(argv)
    mods = discover()
    read_imports(mods)
    what = "runtime + TYPE_CHECKING imports" if args.types else "runtime imports"
    total = 0
    for packages in (False, True):
        graph = build_graph(mods, types=args.types, packages=packages)
        found = cycles(graph)
        total += len(found)
        level = "packages (gateway.sla.* as gateway.sla)" if packages else "modules"
        print(f"{len(graph)} {level}: {len(found)} import cycle(s) ({what})")
        for comp in found:
            print(f"  cycle of {len(comp)}: {', '.join(comp)}")
            if args.edges:
                _print_edges(mods, set(comp), types=args.types, packages=packages)
    return 1 if total else 0


def _print_edges(mods: dict[str, Module], members: set[str], *, types: bool, packages: bool) -> None:
    for mod in sorted(mods.values(), key=lambda m: m.name):
        src = squash(mod.name) if packages else mod.name
        if src not in members:
            continue
        for target, line in sorted({**mod.runtime, **(mod.type_only if types else {})}.items()):
            dst = squash(target) if packages else target
            if dst in members and dst != src:
                kind = " (type only)" if target in mod.type_only else ""
                print(f"      {mod.name} -> {target}  [{mod.path.relative_to(ROOT)}:{line}]{kind}")


if __name__ == "__main__":
    sys.exit(main())
