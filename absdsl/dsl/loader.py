"""Resolve a domain argument (a built-in name, a file path, ``path:Name`` or a parsed domain)
into a :class:`LoadedDomain`, and check it.

The check compiles every rule once, so it needs the compiler, which sits above the DSL: the
checker (:mod:`absdsl.compiler.domain_check`) registers itself with
:func:`register_domain_check` when ``import absdsl`` runs, and loading refuses to go on
without a registered check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from absdsl import domains as registry
from absdsl.dsl import ast
from absdsl.dsl.parser import load_module
from absdsl.errors import AbsdslError, DSLError, InputError

# every built-in name and alias -> its file (a view of the registry in absdsl/domains)
BUILTIN_FILES = registry.FILES_BY_ANY_NAME


@dataclass
class LoadedDomain:
    """A domain with everything it refers to: relaxations and its intermediate-bounds domain."""

    domain: ast.Domain
    relaxes: list[ast.Relax] = field(default_factory=list)
    intermediate: ast.Domain | None = None  # forward domain giving activation bounds
    refine: bool = False                    # activation bounds refined by back-substitution
    origin: str = ""                        # what the user passed (for messages and pickling)

    @property
    def name(self) -> str:
        return self.domain.name


DomainCheck = Callable[[LoadedDomain], None]
_CHECKS: list[DomainCheck] = []


def register_domain_check(check: DomainCheck) -> None:
    """Run ``check`` on every domain loaded from now on (once, however often registered)."""
    if check not in _CHECKS:
        _CHECKS.append(check)


def _check(loaded: LoadedDomain) -> None:
    if not _CHECKS:  # fail closed: an unchecked domain must not reach a program
        raise AbsdslError("no domain check is registered: import absdsl (it registers "
                          "absdsl.compiler.domain_check) before loading a domain")
    for check in _CHECKS:
        check(loaded)


def builtin_path(filename: str) -> Path:
    return Path(str(resources.files("absdsl.domains").joinpath(filename)))


def load_domain(spec: str | Path | LoadedDomain) -> LoadedDomain:
    if isinstance(spec, LoadedDomain):
        return spec
    text = str(spec)
    key = text.lower()
    if key in BUILTIN_FILES:
        loaded = _from_file(builtin_path(BUILTIN_FILES[key]), None)
        loaded.origin = key
        return loaded
    path, name = text, None
    if not Path(text).exists() and ":" in text:
        path, name = text.rsplit(":", 1)
    if not Path(path).exists():
        raise InputError(f"unknown domain {text!r}: not a built-in name "
                          f"({', '.join(sorted(BUILTIN_FILES))}) and no such file")
    loaded = _from_file(Path(path), name)
    loaded.origin = text
    return loaded


def _from_file(path: Path, name: str | None) -> LoadedDomain:
    module = load_module(path)
    own = module.domains
    imported = getattr(module, "domains_imported", [])
    if not own:
        raise DSLError("the file defines no domain", filename=str(path))
    if name is None:
        domain = own[-1]
    else:
        matches = [d for d in own if d.name == name]
        if not matches:
            raise DSLError(f"no domain named {name!r} (defined: "
                           f"{', '.join(d.name for d in own)})", filename=str(path))
        domain = matches[0]
    loaded = LoadedDomain(domain, list(module.relaxes))
    if domain.output_source is not None:
        out_name, pos = domain.output_source
        if out_name != "backsub":
            raise DSLError(f"output must be 'backsub' (or omitted for a forward domain), got "
                           f"{out_name!r}", domain.source, domain.filename, pos.line, pos.column)
        src, pos = domain.bounds_source or ("backsub", domain.pos)
        if src == "backsub":
            loaded.intermediate = _from_file(builtin_path("box.absd"), None).domain
            loaded.refine = True
        else:
            pool = {d.name.lower(): d for d in imported + own}
            if src.lower() in pool:
                loaded.intermediate = pool[src.lower()]
            elif src.lower() in BUILTIN_FILES:
                loaded.intermediate = load_domain(src.lower()).domain
            else:
                raise DSLError(f"bounds source {src!r} is neither 'backsub' nor a domain in "
                               f"scope", domain.source, domain.filename, pos.line, pos.column)
            if loaded.intermediate.output_source is not None:
                raise DSLError(f"bounds source {src!r} must be a forward domain",
                               domain.source, domain.filename, pos.line, pos.column)
    elif domain.bounds_source is not None:
        _, pos = domain.bounds_source
        raise DSLError("'bounds' needs 'output backsub' (a back-substitution domain)",
                       domain.source, domain.filename, pos.line, pos.column)
    _check(loaded)
    return loaded
