"""Measures of the library's shape: long files, long functions, import cycles, imports inside
functions, and domain names compared or listed outside the domain registry.

The library is ``absdsl/`` with ``compiler/``, ``domains/`` and ``training/`` read under their
package names (``absdsl.compiler`` ...), since ``absdsl/compiler`` and friends are links to the
top-level folders. An import names the module it imports (``from a.b import c`` names ``a.b.c``
when that is a module, else ``a.b``); a package's ``__init__`` runs first, but that edge is
left out, so a cycle here is one that the code itself closes.

    python benchmarks/house_metrics.py [--details]
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"absdsl": ROOT / "absdsl", "absdsl.compiler": ROOT / "compiler",
            "absdsl.domains": ROOT / "domains", "absdsl.training": ROOT / "training"}
LINKED = {"compiler", "domains", "training"}
LONG_FILE = 800
LONG_FUNCTION = 100
REGISTRY_MODULE = "absdsl.domains"


def library_modules() -> dict[str, Path]:
    """Every library module by dotted name (a package by its own name)."""
    modules: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            if package == "absdsl" and rel.parts[0] in LINKED:
                continue
            parts = [p for p in rel.parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, tree: ast.Module,
               modules: dict[str, Path]) -> Iterator[tuple[str, bool]]:
    """(imported library module, whether the import sits at module level)."""
    top = _top_level_imports(tree)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node, path.name == "__init__.py")
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.append(full if full in modules else base)
        for name in names:
            if name in modules:
                yield name, id(node) in top


def _top_level_imports(tree: ast.Module) -> set[int]:
    """Imports run when the module is imported: module level, outside TYPE_CHECKING blocks."""
    found: set[int] = set()

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                found.add(id(stmt))
            elif isinstance(stmt, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(stmt.test):
                    visit(stmt.body)
                visit(stmt.orelse)
            elif isinstance(stmt, ast.Try):
                visit(stmt.body)
                for handler in stmt.handlers:
                    visit(handler.body)
                visit(stmt.orelse)
                visit(stmt.finalbody)

    visit(tree.body)
    return found


def function_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """Imports inside functions: (line, the imported name)."""
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    out.append((node.lineno, ", ".join(a.name for a in node.names)))
                elif isinstance(node, ast.ImportFrom):
                    out.append((node.lineno, "." * node.level + (node.module or "")))
    return sorted(set(out))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(10000)

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def domain_names() -> set[str]:
    """The canonical built-in names (aliases such as "ibp" also name other things)."""
    sys.path.insert(0, str(ROOT))
    from absdsl import domains as registry

    return set(registry.NAMES)


def domain_name_sites(tree: ast.Module, names: set[str]
                      ) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Comparisons with a domain name; literal tuples/lists/sets/dicts of two or more names
    that are not inside such a comparison (settings and data tables keyed by domain)."""
    def is_name(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value in names

    compared, listed, inside = [], [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(is_name(s) or (isinstance(s, (ast.Tuple, ast.List, ast.Set))
                                  and any(is_name(e) for e in s.elts)) for s in sides):
                compared.append((node.lineno, ast.unparse(node)[:70]))
                inside.update(id(s) for s in sides)
    for node in ast.walk(tree):
        if id(node) in inside:
            continue
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            if sum(is_name(e) for e in node.elts) >= 2:
                listed.append((node.lineno, ast.unparse(node)[:70]))
        elif isinstance(node, ast.Dict):
            if sum(is_name(k) for k in node.keys if k is not None) >= 2:
                listed.append((node.lineno, ast.unparse(node)[:70]))
    return sorted(set(compared)), sorted(set(listed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--details", action="store_true", help="list every site found")
    args = parser.parse_args()
    modules = library_modules()
    names = domain_names()
    graph_top: dict[str, set[str]] = {}
    graph_all: dict[str, set[str]] = {}
    long_files, long_functions, inner, compared, listed = [], [], [], [], []
    for module, path in modules.items():
        text = path.read_text()
        tree = ast.parse(text)
        rel = path.relative_to(ROOT)
        lines = len(text.splitlines())
        if lines > LONG_FILE:
            long_files.append(f"{rel} ({lines})")
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
                if length > LONG_FUNCTION:
                    long_functions.append(f"{rel}:{fn.lineno} {fn.name} ({length})")
        for target, top in imports_of(module, path, tree, modules):
            if target != module:
                graph_all.setdefault(module, set()).add(target)
                if top:
                    graph_top.setdefault(module, set()).add(target)
        inner += [f"{rel}:{line} {name}" for line, name in function_imports(tree)]
        if module != REGISTRY_MODULE:
            cmp_sites, list_sites = domain_name_sites(tree, names)
            compared += [f"{rel}:{line} {src}" for line, src in cmp_sites]
            listed += [f"{rel}:{line} {src}" for line, src in list_sites]
    top_cycles, all_cycles = cycles(graph_top), cycles(graph_all)
    report = [
        (f"files over {LONG_FILE} lines", long_files),
        (f"functions over {LONG_FUNCTION} lines", long_functions),
        ("import cycles (module-level imports)", [" ".join(c) for c in top_cycles]),
        ("import cycles (imports inside functions too)", [" ".join(c) for c in all_cycles]),
        ("imports inside functions", inner),
        ("domain-name comparisons outside the registry", compared),
        ("literal lists of domain names outside the registry", listed),
    ]
    for title, items in report:
        print(f"{title}: {len(items)}")
        if args.details:
            for item in items:
                print(f"    {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
