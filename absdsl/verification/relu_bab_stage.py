"""The certification cascade's ``bab`` stage: ReLU branch and bound
(:class:`absdsl.verification.relu_bab.ReluBab`) on the inputs the bounds and PGD leave
undecided. Importing this module registers the stage (training cannot import applications,
so ``absdsl.training.cli_certify.load_complete_stage("bab")`` imports it)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from absdsl.errors import AbsdslError
from absdsl.training.certify import register_stage
from absdsl.verification.relu_bab import (
    RELU_BAB_DOMAINS,
    ReluBab,
    ReluBabOutcome,
    compile_domain,
    seconds_left,
)


@dataclass
class _MarginPolytope:
    """The counterexamples of one class: ``f_label - f_other <= 0`` as ``A y <= b``."""

    A: np.ndarray
    b: np.ndarray


class ReluBabStage:
    """The certification cascade's ``bab`` stage (``absdsl certify --complete``): ReLU
    branch and bound on every input still pending, one class per polytope, within
    ``milp_time_limit`` seconds per input. ``certified`` when every class is refuted under
    the cascade's threshold (``tolerance`` + ``rel_tolerance`` x the magnitude, per
    sub-problem); ``falsified`` when a point of the ball flips the float64 model's label;
    else the input stays pending (``unknown``)."""

    name = "bab"

    def __init__(self, model: nn.Module, info: Any, options: Any) -> None:
        from absdsl.training.milp import check_time_limit  # lazy: heavy dependency scipy

        self.time_limit = check_time_limit(getattr(options, "milp_time_limit", 30.0))
        self.shape = tuple(info.shape)
        self.programs: dict[str, Any] = {}
        self.stats: list[dict[str, Any]] = []  # one entry per input this stage ran on
        self._model: nn.Module | None = None

    def _programs(self, model: nn.Module) -> dict[str, Any]:
        if self._model is not model:  # compiled once per float64 model of the cascade
            self._model = model
            self.programs = {}
            for name in RELU_BAB_DOMAINS:
                try:
                    self.programs[name] = compile_domain(model, name, self.shape)
                except AbsdslError:
                    continue
        return self.programs

    def run(self, ctx: Any) -> None:
        idx = ctx.pending()
        if idx.numel() == 0:
            return
        eps, tol = ctx.options.eps, ctx.options.tolerance
        model = ctx.model
        programs = self._programs(model)
        for i in idx.tolist():
            x, label = ctx.x[i:i + 1], int(ctx.y[i])
            lo = torch.clamp(x - eps, 0.0, 1.0).reshape(-1)  # the bound stages' clipped ball
            hi = torch.clamp(x + eps, 0.0, 1.0).reshape(-1)
            with torch.no_grad():
                n_out = int(model(x).shape[1])
            polys = []
            for other in range(n_out):
                if other != label:
                    row = np.zeros((1, n_out))
                    row[0, label], row[0, other] = 1.0, -1.0
                    polys.append(_MarginPolytope(row, np.zeros(1)))

            def confirm(k: int, point: np.ndarray, lo: torch.Tensor = lo, hi: torch.Tensor = hi,
                        label: int = label) -> torch.Tensor | None:
                t = torch.minimum(torch.maximum(torch.from_numpy(point).double(), lo), hi)
                with torch.no_grad():
                    flips = int(model(t.reshape(1, *self.shape)).argmax(1)[0]) != label
                return t.reshape(self.shape) if flips else None

            start = time.perf_counter()
            try:
                search = ReluBab(model, self.shape, polys, tol,
                                 seconds_left(start + self.time_limit), confirm,
                                 seed=ctx.options.seed, programs=programs,
                                 rel_tolerance=ctx.options.rel_tolerance)
                outcome = search.run(lo.numpy(), hi.numpy())
            except AbsdslError as err:
                outcome = ReluBabOutcome("unknown", note=str(err).splitlines()[0])
            rec = ctx.records[i]
            if outcome.status == "unsat":
                rec.status, rec.stage = "certified", self.name
            elif outcome.status == "sat":
                rec.status, rec.stage = "falsified", self.name
            self.stats.append({"index": rec.index, "status": rec.status if rec.stage ==
                               self.name else "unknown", "bab": outcome.status,
                               "seconds": time.perf_counter() - start,
                               "branches": outcome.branches, "note": outcome.note})


register_stage("bab", ReluBabStage)

__all__ = ["ReluBabStage"]
