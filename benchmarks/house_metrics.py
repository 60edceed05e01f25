"""Measures of the library's shape: long files, long functions, import cycles, imports inside
functions (and which of them lack a reason), op-name comparisons, and domain names compared or
listed outside the domain registry.

The library is ``absdsl/`` with ``compiler/``, ``domains/`` and ``training/`` read under their
package names (``absdsl.compiler`` ...), since ``absdsl/compiler`` and friends are links to the
top-level folders. An import names the module it imports (``from a.b import c`` names ``a.b.c``
when that is a module, else ``a.b``); a package's ``__init__`` runs first, but that edge is
left out, so a cycle here is one that the code itself closes (an explicit ``import absdsl``
is an edge to ``absdsl/__init__``, so a cycle through it is counted).

An import inside a function states why it is not at module level, in a comment on one of its
lines or on the line above, in one of these forms (``LAZY_FORMS``):

    # lazy: optional dependency onnx          (an extra, or a package the project never requires)
    # lazy: heavy dependency scipy            (required, but slow to import: kept off the path
                                               of ``import absdsl`` and of the CLI's start)
    # lazy: platform module resource          (absent on some platforms)
    # lazy: upper layer absdsl.verification   (a lower layer calling into a higher one)
    # lazy: breaks the cycle a.b -> c.d

and the name after the form is checked against that form's list.

    python benchmarks/house_metrics.py [--details]
"""

from __future__ import annotations

import argparse
import ast
import re
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

# Optional packages: the extras of pyproject.toml (by import name) and packages the project
# uses when present but never requires.
OPTIONAL_DEPENDENCIES = {"onnx", "onnxruntime", "onnx2torch", "z3", "auto_LiRPA", "ray"}
# Required packages slow enough to import (0.4 to 6 s each on the shared machine, measured with
# python -X importtime) that they stay off the paths of ``import absdsl`` and the CLI's start.
HEAVY_DEPENDENCIES = {"scipy", "hypothesis", "matplotlib", "evotorch", "torchvision",
                      "torch._dynamo"}
PLATFORM_MODULES = {"resource"}  # Unix only
LAZY_FORMS = ("optional dependency", "heavy dependency", "platform module", "upper layer",
              "breaks the cycle")
_LAZY = re.compile(r"#\s*lazy:\s*(" + "|".join(LAZY_FORMS) + r")\s+([\w.]+)(.*)")

# The opcodes of torch.fx nodes (``fx_node.op``), and the operators of DSL expressions
# (``absdsl.dsl.ast`` BinOp / BoolOp / Compare ``.op``): an ``.op`` compared with these is not
# an IR node's op.
FX_OPCODES = {"placeholder", "get_attr", "call_module", "call_function", "call_method",
              "output"}
DSL_OPERATORS = {"+", "-", "*", "/", "@", "+-", "and", "or", "not", "<", "<=", ">", ">=",
                 "==", "!="}


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


def function_imports(tree: ast.Module) -> list[tuple[int, str, int]]:
    """Imports inside functions: (first line, the imported name, last line)."""
    out = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    name = ", ".join(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom):
                    name = "." * node.level + (node.module or "")
                else:
                    continue
                out.append((node.lineno, name, node.end_lineno or node.lineno))
    return sorted(set(out))


def lazy_reason_problem(lines: list[str], first: int, last: int,
                        modules: set[str]) -> str | None:
    """Why the import on lines ``first..last`` (1-based) lacks a valid ``# lazy:`` reason;
    None when it has one."""
    candidates = [lines[i - 1] for i in range(first, last + 1)]
    if first >= 2 and lines[first - 2].lstrip().startswith("#"):
        candidates.append(lines[first - 2])
    found = [m for line in candidates if (m := _LAZY.search(line))]
    if not found:
        return "no '# lazy: <reason>' comment"
    form, name, rest = found[0].groups()
    known = {"optional dependency": OPTIONAL_DEPENDENCIES,
             "heavy dependency": HEAVY_DEPENDENCIES,
             "platform module": PLATFORM_MODULES}.get(form)
    if known is not None and name not in known:
        return f"{name} is not a known {form} ({', '.join(sorted(known))})"
    if form == "upper layer" and name not in modules:
        return f"upper layer {name} is not a library module"
    if form == "breaks the cycle" and "->" not in rest:
        return "'breaks the cycle' names the cycle as 'a -> b'"
    return None


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


def op_comparisons(tree: ast.Module) -> dict[str, list[tuple[int, str]]]:
    """Comparisons of an ``.op`` attribute (``x.op == ...``, ``x.op in ...``), by what the op
    is: ``fx`` (compared with a torch.fx opcode), ``dsl`` (with a DSL expression operator) or
    ``ir`` (anything else: an IR node's op name, a set of op names, a table's keys)."""
    def strings(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [e.value for e in node.elts
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        return []

    found: dict[str, list[tuple[int, str]]] = {"ir": [], "fx": [], "dsl": []}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        if not any(isinstance(s, ast.Attribute) and s.attr == "op" for s in sides):
            continue
        values = {v for s in sides for v in strings(s)}
        kind = ("fx" if values and values <= FX_OPCODES
                else "dsl" if values and values <= DSL_OPERATORS else "ir")
        found[kind].append((node.lineno, ast.unparse(node)[:70]))
    return {kind: sorted(sites) for kind, sites in found.items()}


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


def measure() -> list[tuple[str, list[str]]]:
    """Every measure as (title, the sites found), in the order printed."""
    modules = library_modules()
    names = domain_names()
    graph_top: dict[str, set[str]] = {}
    graph_all: dict[str, set[str]] = {}
    long_files, long_functions, inner, unjustified, compared, listed = [], [], [], [], [], []
    ops: dict[str, list[str]] = {"ir": [], "fx": [], "dsl": []}
    for module, path in modules.items():
        text = path.read_text()
        tree = ast.parse(text)
        rel = path.relative_to(ROOT)
        lines = text.splitlines()
        if len(lines) > LONG_FILE:
            long_files.append(f"{rel} ({len(lines)})")
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
        for first, name, last in function_imports(tree):
            inner.append(f"{rel}:{first} {name}")
            problem = lazy_reason_problem(lines, first, last, set(modules))
            if problem is not None:
                unjustified.append(f"{rel}:{first} {name}: {problem}")
        for kind, sites in op_comparisons(tree).items():
            ops[kind] += [f"{rel}:{line} {src}" for line, src in sites]
        if module != REGISTRY_MODULE:
            cmp_sites, list_sites = domain_name_sites(tree, names)
            compared += [f"{rel}:{line} {src}" for line, src in cmp_sites]
            listed += [f"{rel}:{line} {src}" for line, src in list_sites]
    top_cycles, all_cycles = cycles(graph_top), cycles(graph_all)
    return [
        (f"files over {LONG_FILE} lines", long_files),
        (f"functions over {LONG_FUNCTION} lines", long_functions),
        ("import cycles (module-level imports)", [" ".join(c) for c in top_cycles]),
        ("import cycles (imports inside functions too)", [" ".join(c) for c in all_cycles]),
        ("imports inside functions", inner),
        ("imports inside functions without a '# lazy:' reason", unjustified),
        ("IR node op comparisons (x.op ==/in an op name or op set)", ops["ir"]),
        ("torch.fx node op comparisons (x.op ==/in an fx opcode)", ops["fx"]),
        ("DSL expression operator comparisons (e.op ==/in '+', 'and', ...)", ops["dsl"]),
        ("domain-name comparisons outside the registry", compared),
        ("literal lists of domain names outside the registry", listed),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--details", action="store_true", help="list every site found")
    args = parser.parse_args()
    for title, items in measure():
        print(f"{title}: {len(items)}")
        if args.details:
            for item in items:
                print(f"    {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
