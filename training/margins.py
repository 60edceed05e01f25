"""Margin specs and program calls shared by the objectives and loss fusion.

A bound program is called with the model's own parameters (``params=None``, GRAD) or with
explicit ones (``prog.functional``, PGPE's populations); the margins f_y - f_i are its spec
rows e_y - e_i.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

Params = Mapping[str, torch.Tensor] | None


def input_box(
    x: torch.Tensor, eps: float, clip: tuple[float, float] = (0.0, 1.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """The L-infinity ball around x intersected with the valid pixel range."""
    return torch.clamp(x - eps, *clip), torch.clamp(x + eps, *clip)


def run_program(
    prog: Any, params: Params, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor | None,
    upper: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Call a bound program with the model's parameters or with ``params``; ``upper=False``
    asks for lower bounds only (back-substitution domains then skip the upper rows)."""
    if params is None:
        return prog(lo, hi, spec=spec, upper=upper)
    return prog.functional(dict(params), lo, hi, spec=spec, upper=upper)


def other_classes(y: torch.Tensor, n: int) -> torch.Tensor:
    """Per sample, the n - 1 classes other than its label, in order: [B, n - 1]."""
    rest = torch.arange(n - 1, device=y.device).expand(y.shape[0], -1)
    return rest + (rest >= y.unsqueeze(1)).long()


def margin_lower(
    prog: Any, params: Params, lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor, n: int
) -> torch.Tensor:
    """Lower bounds on f_y - f_i for every class i ([B, n], zero at i = y).

    Only the n - 1 rows e_y - e_i with i != y are bounded (the row i = y is zero, its bound
    exactly 0), and only from below: the GRAD step pays for nothing the loss does not read.
    """
    others, spec = _margin_rows(y, n, lo)
    lb, _ = run_program(prog, params, lo, hi, spec, upper=False)
    return lb.new_zeros(lb.shape[0], n).scatter(1, others, lb)


def _margin_rows(y: torch.Tensor, n: int, like: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The classes i != y per sample and the spec rows e_y - e_i, [B, n - 1, n]."""
    others = other_classes(y, n)
    eye = torch.eye(n, dtype=like.dtype, device=like.device)
    return others, eye[y].unsqueeze(1) - eye[others]
