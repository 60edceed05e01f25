"""absdsl: certified training with abstract domains written in a small DSL.

    prog = absdsl.compile(model, domain="deeppoly")
    lo, hi = absdsl.linf_ball(x, eps, clip=(0.0, 1.0))
    lb, ub = prog(lo, hi, spec=C)
"""

from __future__ import annotations

from absdsl import domains as _registry
from absdsl.api import compile, linf_ball, load_onnx  # noqa: A004 - the public name is the contract
from absdsl.compiler import domain_check as _domain_check  # noqa: F401 - registers the load-time check
from absdsl.compiler.context import EngineOptions
from absdsl.compiler.specs import margin_spec, margin_spec_full
from absdsl.errors import AbsdslError, DSLError, InputError, MemoryBudgetError, TraceError

__all__ = ["compile", "EngineOptions", "linf_ball", "load_onnx", "margin_spec",
           "margin_spec_full", "AbsdslError",
           "DSLError", "InputError", "MemoryBudgetError", "TraceError", "BUILTIN_DOMAINS"]

# every built-in domain name and alias (the registry is absdsl/domains/__init__.py)
BUILTIN_DOMAINS = tuple(_registry.FILES_BY_ANY_NAME)
__version__ = "0.1.0"
