"""The public entry points (the contract shown in the README)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from absdsl.compiler.context import DEFAULT as DEFAULT_OPTIONS
from absdsl.compiler.context import EngineOptions
from absdsl.compiler.frontend import with_forward_kwargs
from absdsl.compiler.program import DEFAULT_MEMORY_BUDGET_MB, BoundProgram
from absdsl.dsl.loader import LoadedDomain
from absdsl.errors import InputError


def compile(model: nn.Module, domain: str | Path | LoadedDomain = "box", *,  # noqa: A001
            input_shape: tuple[int, ...] | None = None,
            memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
            options: EngineOptions = DEFAULT_OPTIONS,
            example_kwargs: dict[str, Any] | None = None) -> BoundProgram:
    """Compile ``model`` (fx-traceable, eval mode) with ``domain`` into a bound program.

    ``domain``: a built-in name (box/ibp, hbox, zonotope/deepz, deeppoly/crown, crown-ibp),
    a DSL file path (``path`` or ``path:DomainName``) or a loaded domain. The program is
    traced per input shape on its first call (or now, given ``input_shape``).
    ``memory_budget_mb`` caps the rows back-substituted at once (DeepPoly). ``options``
    selects the engine's optimised paths (:class:`EngineOptions`; none changes a bound
    beyond rounding); ``prog.engine_paths`` counts the ones that ran.
    ``example_kwargs``: values of ``forward``'s non-tensor arguments (``{"debug": False}``),
    traced as constants; arguments with a non-tensor default take it without being named.
    """
    if example_kwargs:
        model = with_forward_kwargs(model, example_kwargs)
    # BoundProgram's loader takes a path as text (``path:DomainName`` is text, too).
    spec = str(domain) if isinstance(domain, Path) else domain
    return BoundProgram(model, spec, input_shape=input_shape,
                        memory_budget_mb=memory_budget_mb, options=options)


def linf_ball(x: torch.Tensor, eps: float | torch.Tensor,
              clip: tuple[float, float] | None = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """The L-infinity ball [x - eps, x + eps], intersected with ``clip`` (batched like x)."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError("linf_ball: x must be a floating-point tensor")
    if isinstance(eps, (int, float)) and eps < 0:
        raise InputError(f"linf_ball: eps must be >= 0, got {eps}")
    if isinstance(eps, torch.Tensor) and bool((eps < 0).any()):
        raise InputError("linf_ball: eps must be >= 0")
    lo, hi = x - eps, x + eps
    if clip is not None:
        if clip[0] > clip[1]:
            raise InputError(f"linf_ball: clip range {clip} is empty")
        lo, hi = lo.clamp(clip[0], clip[1]), hi.clamp(clip[0], clip[1])
    return lo, hi


def load_onnx(path: str | Path) -> nn.Module:
    """An ONNX network as an ``nn.Module`` (eval mode) that :func:`compile` traces.

    Needs the ``onnx`` extra; every op is checked now, so one without a rule fails here with
    the ONNX node's name and op type (``absdsl/verification/onnx_io.py``).
    """
    # lazy: upper layer absdsl.verification.onnx_io (the API sits below the applications)
    from absdsl.verification.onnx_io import load_onnx as _load

    return _load(path)
