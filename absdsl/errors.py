"""Error types. Every error a user can cause is an :class:`AbsdslError` with a clear message."""

from __future__ import annotations


class AbsdslError(Exception):
    """Base class: bad input named precisely (what, where), raised before work is done."""


class DSLError(AbsdslError):
    """A syntax or type error in a domain file, located at file:line:col with a caret."""

    def __init__(self, message: str, source: str | None = None, filename: str = "<domain>",
                 line: int | None = None, column: int | None = None) -> None:
        self.message = message
        self.filename = filename
        self.line = line
        self.column = column
        text = message
        if line is not None:
            where = f"{filename}:{line}:{column or 1}"
            text = f"{where}: {message}"
            if source is not None:
                lines = source.splitlines()
                if 1 <= line <= len(lines):
                    src_line = lines[line - 1]
                    caret = " " * (max(column or 1, 1) - 1) + "^"
                    text += f"\n    {src_line}\n    {caret}"
        else:
            text = f"{filename}: {message}"
        super().__init__(text)


class TraceError(AbsdslError):
    """A model that cannot be traced or holds an op without a rule (names op, module, line)."""


class InputError(AbsdslError):
    """Bad arguments to a bound program: shapes, dtypes, devices, NaN, lo > hi."""


class MemoryBudgetError(AbsdslError):
    """A memory budget too small for even one chunk of work."""


class OnnxError(InputError):
    """A file that is not a usable ONNX network: unreadable, truncated, or an op without a rule."""
