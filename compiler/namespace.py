"""What generated code runs in: the runtime modules it calls, and the one loader of it.

Every piece of generated code (bound programs, relaxation functions, the op table's torch
code) is loaded by :func:`load_generated`, with the same names bound.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import runtime as rt
from .backsub import patches as patch_rows
from .backsub import pool as pool_rows
from .backsub import row_slopes
from .backsub import rows as dense_rows

# what generated code calls: the forward runtime and the back-substitution rows, by keyword
RUNTIME = {"rt": rt, "dense_rows": dense_rows, "patch_rows": patch_rows, "pool_rows": pool_rows,
           "row_slopes": row_slopes}
# names generated code reads from outside: modules and the arguments of ``bound_program``
# (parameters, input box, spec, the call's context); no generated name may take them
GLOBALS = ("torch", "F", *RUNTIME, "p", "lo", "hi", "spec", "ctx")


def load_generated(source: str, label: str) -> dict:
    """Run generated source (ours, never user text: names are sanitised identifiers and
    numbers pass through ``repr(float)``) and return the functions it defines."""
    namespace: dict = {"torch": torch, "F": F, **RUNTIME}
    exec(compile(source, f"<absdsl {label}>", "exec"), namespace)  # noqa: S102
    return namespace
