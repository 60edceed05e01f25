"""What a bound-program call carries besides its data: engine options and the call's context.

Generated programs are ``bound_program(p, lo, hi, spec, ctx)``: the parameters, the input box
and the spec are data; everything else a call needs (may shapes depend on data, how many
rows a back-substitution chunk holds, where to record intermediate bounds, which engine
paths to take, which ones ran) is one :class:`Context`, and the runtime reads it by name.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class EngineOptions:
    """The engine's optimised paths, each a threshold (a negative one switches it off).

    None of them changes a bound beyond rounding; the property suite compares each against
    the plain engine (:data:`PLAIN`). ``patch_saving`` is read when the program is generated,
    the others when it runs.
    """

    #: back-substitute in patch rows when their size is at most this share of dense rows
    patch_saving: float = 0.5
    #: keep zonotope generators of conv chains in patch form (False: dense everywhere)
    gens_patches: bool = True
    #: skip a sample's all-zero columns of dense rows when it keeps at most this share
    zero_columns: float = 0.9
    #: relax only the sign-dependent columns when they are at most this share
    sparse_lines: float = 0.25


#: every optimised path on (the default)
DEFAULT = EngineOptions()
#: the reference engine: patch rows, live columns and sparse lines off
PLAIN = EngineOptions(patch_saving=-1.0, zero_columns=-1.0, sparse_lines=-1.0)


@dataclass
class Context:
    """One call of a bound program: everything but its parameters, box and spec.

    ``compact``: shapes may depend on data (false under ``torch.func.vmap``, which cannot
    select neurons, drop columns or query memory layouts). ``paths`` counts the optimised
    engine paths that ran (live columns, sparse lines, chunked refinement), for the property
    suite's engine check and for benchmarks.
    """

    compact: bool
    rows_per_chunk: int
    options: EngineOptions = EngineOptions()
    record: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    upper: bool = True
    forward_spec: dict[str, Any] | None = None
    paths: Counter[str] = field(default_factory=Counter)
    #: relaxation parameters (``param`` in a relax block), one set per activation and
    #: back-substituted node: key ``"ACT"`` for the output's back-substitution,
    #: ``"ACT@NODE"`` for the intermediate node NODE's -> parameter name -> values shaped like
    #: the activation's bounds [batch, *shape], clamped into the range; a missing entry is
    #: filled in with the initial value. None: every parameter at its initial value
    relax_params: dict[str, dict[str, torch.Tensor]] | None = None
    #: whether the intermediate nodes' back-substitutions read ``relax_params`` too (else
    #: only the output's does and intermediate bounds keep the initial values)
    optimize_intermediate: bool = True
    #: bytes that relaxation parameters per bounded row may still take (alpha-CROWN's slopes
    #: per start neuron, :mod:`.backsub.row_slopes`); 0: one set per back-substituted node
    row_slope_bytes: float = 0.0
    #: branch and bound: pre-activation node -> (lower, upper) clamps per batch element
    #: (-inf / +inf where free), intersected with the node's bounds where they are computed
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def clamp(self, node: str, lower: torch.Tensor, upper: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[lower, upper]`` of ``node`` intersected with its split constraints: sound for
        the sub-domain of inputs whose pre-activation values satisfy them."""
        found = None if self.splits is None else self.splits.get(node)
        if found is None:
            return lower, upper
        return (torch.maximum(lower, found[0].reshape(lower.shape)),
                torch.minimum(upper, found[1].reshape(upper.shape)))
