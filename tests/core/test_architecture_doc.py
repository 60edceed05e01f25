"""docs/architecture.md's table "to add X, touch these files" names files and names that exist.

Every backticked path in the table (``file`` or ``file:name``, a ``*`` pattern allowed) must
match a file of the repository, and a name after the colon must be defined at the top level
of that Python file (a function, a class or an assignment): a row that a refactoring leaves
behind fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
SECTION = "## To add X, touch these files"


def _table_rows() -> list[tuple[str, str]]:
    """(what to add, the row's text) for each data row of the section's table."""
    text = DOC.read_text(encoding="utf-8")
    assert SECTION in text, f"{DOC} lost its section {SECTION!r}"
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("| ")]
    return [(r.split("|")[1].strip(), r) for r in rows[2:]]  # after the header, separator


def _references(row: str) -> list[str]:
    """Backticked tokens that name a file: a folder separator and a known suffix."""
    return [t for t in re.findall(r"`([^`]+)`", row)
            if "/" in t and re.search(r"\.(py|absd|md)(:\w+)?$", t)]


def _top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_the_table_has_every_kind_of_change() -> None:
    kinds = [kind for kind, _ in _table_rows()]
    assert kinds == ["an activation", "an op", "a domain", "a relaxation", "a step rule",
                     "a command", "a verifier stage"]


@pytest.mark.parametrize("kind, row", _table_rows(), ids=[k for k, _ in _table_rows()])
def test_every_file_and_name_in_a_row_exists(kind: str, row: str) -> None:
    refs = _references(row)
    assert refs, f"row {kind!r} names no file"
    for ref in refs:
        file_part, _, name = ref.partition(":")
        matches = sorted(ROOT.glob(file_part))
        assert matches, f"row {kind!r}: {file_part} matches no file"
        if name:
            assert name in _top_level_names(matches[0]), \
                f"row {kind!r}: {file_part} defines no {name!r}"
