"""Domain names and compiling the bound programs a run needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

import absdsl
from absdsl import domains as _registry
from absdsl.errors import AbsdslError

# views of the registry (absdsl/domains/__init__.py), for the training layer's callers
BUILTIN_DOMAINS = _registry.NAMES
DOMAIN_ALIASES = _registry.ALIASES
# loosest (cheapest) first: the order of a "tightest" certification cascade
CASCADE_ORDER = _registry.NAMES


class DomainError(AbsdslError):
    """An unknown domain name (that is not a domain file either)."""


def canonical_domain(name: str) -> str:
    """Built-in names and aliases in canonical form; an existing file path as given."""
    key = _registry.canonical(name)
    if key is not None:
        return key
    if Path(name).is_file():
        return name
    raise DomainError(
        f"unknown domain {name!r}; choose one of {', '.join(BUILTIN_DOMAINS)} "
        f"(aliases {', '.join(DOMAIN_ALIASES)}) or give the path of a domain file"
    )


def required_domains(domain: str, method: str) -> list[str]:
    """The programs a run needs: its domain, plus the one it mixes in by beta (CROWN-IBP: Box)."""
    if method in ("natural", "pgd"):
        return []
    return _registry.needed_programs(domain)


def compile_programs(model: nn.Module, domains: list[str]) -> dict[str, Any]:
    """Compile one bound program per domain (model switched to eval mode while tracing)."""
    compile_fn = getattr(absdsl, "compile", None)
    if compile_fn is None:  # pragma: no cover - only while the compiler is being written
        raise AbsdslError("this absdsl has no compiler (absdsl.compile is missing)")
    was_training = model.training
    model.eval()
    try:
        return {name: compile_fn(model, domain=name) for name in domains}
    finally:
        model.train(was_training)
