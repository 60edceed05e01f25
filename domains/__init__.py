"""The built-in domains, written in the absdsl DSL (``*.absd``): the one registry of them.

Each :class:`BuiltinDomain` says its name, its other names, its file, whether it is a forward
domain or a back-substitution one, the title tables print, and the domain whose program a
training run mixes in (CROWN-IBP mixes Box's margins by beta, so a CROWN-IBP run needs the Box
program too). :data:`DOMAINS` lists them loosest (cheapest) first: the order of a "tightest"
certification cascade. The loader, the training layer, the command line, the experiments and
the public ``absdsl.BUILTIN_DOMAINS`` all read this module; no other module compares or
lists domain names.

To add a built-in domain: write ``NAME.absd`` here and add one entry to :data:`DOMAINS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["forward", "backsub"]


@dataclass(frozen=True)
class BuiltinDomain:
    """One built-in domain and what the rest of absdsl needs to know about it."""

    name: str                      # canonical name (lower case)
    file: str                      # its ``.absd`` file in this folder
    kind: Kind                     # forward propagation, or back-substitution to the input
    title: str                     # how tables name it
    aliases: tuple[str, ...] = ()  # the field's other names for it
    mixed_with: str | None = None  # the domain a training run mixes in by beta (and so needs)
    optimize_steps: int = 0        # gradient steps on its relaxation parameters per call


#: loosest (cheapest) first: the order of a "tightest" cascade
DOMAINS: tuple[BuiltinDomain, ...] = (
    BuiltinDomain("box", "box.absd", "forward", "IBP (box)", ("ibp",)),
    BuiltinDomain("hbox", "hbox.absd", "forward", "HBox"),
    BuiltinDomain("zonotope", "zonotope.absd", "forward", "Zonotope", ("deepz",)),
    BuiltinDomain("crown-ibp", "crown-ibp.absd", "backsub", "CROWN-IBP", ("crownibp",),
                  mixed_with="box"),
    BuiltinDomain("deeppoly", "deeppoly.absd", "backsub", "DeepPoly", ("crown",)),
)
#: built-in domains outside the cascade (and outside training): their programs optimise
#: relaxation parameters by gradient on every call, tighter and many times slower, so a run
#: names them explicitly
OPTIMIZED: tuple[BuiltinDomain, ...] = (
    BuiltinDomain("alpha-crown", "alpha-crown.absd", "backsub", "alpha-CROWN",
                  ("alpha-deeppoly", "alphacrown"), optimize_steps=20),
    BuiltinDomain("alpha-beta-crown", "alpha-beta-crown.absd", "backsub", "alpha-beta-CROWN",
                  ("beta-crown", "alphabetacrown"), optimize_steps=20),
)
#: files that domain files import (relaxations), shipped beside the domains
LIBRARY_FILES: tuple[str, ...] = ("relax.absd",)

BY_NAME: dict[str, BuiltinDomain] = {d.name: d for d in DOMAINS + OPTIMIZED}
#: canonical name -> file, cascade order, then the optimised domains
FILES: dict[str, str] = {d.name: d.file for d in DOMAINS + OPTIMIZED}
#: other names of the same domains -> canonical name
ALIASES: dict[str, str] = {a: d.name for d in DOMAINS + OPTIMIZED for a in d.aliases}
#: canonical names of the cascade's domains, in cascade order
NAMES: tuple[str, ...] = tuple(d.name for d in DOMAINS)
#: every name and alias -> its file
FILES_BY_ANY_NAME: dict[str, str] = FILES | {a: FILES[c] for a, c in ALIASES.items()}
#: every file shipped in this folder (domains, then the files they import)
ALL_FILES: tuple[str, ...] = (*FILES.values(), *LIBRARY_FILES)


def canonical(name: str) -> str | None:
    """The canonical built-in name of ``name`` (any case, aliases too), or None."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    return key if key in FILES else None


def names_of_kind(kind: Kind) -> tuple[str, ...]:
    """The canonical names of the forward (or back-substitution) domains, cascade order."""
    return tuple(d.name for d in DOMAINS if d.kind == kind)


def mixed_with(name: str) -> str | None:
    """The domain whose margins a training run with ``name`` mixes in by beta, if any."""
    entry = BY_NAME.get(canonical(name) or "")
    return entry.mixed_with if entry is not None else None


def needed_programs(name: str) -> list[str]:
    """The bound programs a training run with ``name`` needs: its own, then the mixed-in one."""
    partner = mixed_with(name)
    return [name] if partner is None else [name, partner]


def optimize_steps(name: str) -> int:
    """How many gradient steps a program of built-in domain ``name`` takes on its relaxation
    parameters per call (0: it runs them at their initial values)."""
    entry = BY_NAME.get(canonical(name) or "")
    return entry.optimize_steps if entry is not None else 0


def title(name: str) -> str:
    """How tables name a domain (a name that is not built in, as given)."""
    entry = BY_NAME.get(canonical(name) or "")
    return entry.title if entry is not None else name
