"""The robust loss of a compiled bound program as a function of flat weight vectors.

A population of ``popsize`` weight vectors is evaluated by ``torch.func.vmap`` over the
program's functional form: one batched call per chunk, all members on the same minibatch
(as the paper does), chunks sized so that the call fits a memory budget. The same object
gives member-by-member losses (for tests and the benchmark) and vmapped gradients (RGS).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..objective import certified_loss
from .errors import MemoryBudgetError, SmoothingConfigError
from .memory import peak_bytes
from .params import ParamLayout

MiB = 1024 * 1024


CPU_DEFAULT_BUDGET = 256 * MiB


def default_memory_budget(device: torch.device) -> int:
    """Bytes a population call may use when no budget is given.

    On a GPU most of the free memory: big calls amortise kernel launches. On the CPU a
    working set of a few hundred MiB: larger chunks fall out of the caches and run slower
    than smaller ones (CNN3 + Box, batch 128: chunks of 8-16 members were 2x faster than 64).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.7 * free)
    return CPU_DEFAULT_BUDGET


@dataclass
class MiniBatch:
    """What every member is evaluated on (the same minibatch for the whole population)."""

    x: torch.Tensor
    y: torch.Tensor
    eps: float
    kappa: float = 0.0
    beta: float = 1.0


class PopulationObjective:
    """``L(theta)`` = the certified-training loss of ``domain`` on the current minibatch.

    The loss is :func:`absdsl.training.objective.certified_loss`, the one GRAD training
    minimises (robust CE on the margin lower bounds, kappa-mixed with the natural loss,
    CROWN-IBP mixed with Box by beta), evaluated at explicit weights ``params``.
    ``programs`` maps domain names to compiled bound programs of ``model``.
    """

    def __init__(
        self,
        model: nn.Module,
        programs: Mapping[str, Any],
        domain: str,
        num_classes: int,
        *,
        memory_budget: int | None = None,
        chunk_size: int | None = None,
        clip: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        if memory_budget is not None and memory_budget <= 0:
            raise SmoothingConfigError(f"memory budget must be positive, got {memory_budget} bytes")
        if chunk_size is not None and chunk_size < 1:
            raise SmoothingConfigError(f"chunk size must be at least 1, got {chunk_size}")
        if domain not in programs:
            raise SmoothingConfigError(
                f"no bound program for domain {domain!r} (have: {', '.join(programs)})"
            )
        self.model = model
        self.programs = dict(programs)
        self.domain = domain
        self.num_classes = int(num_classes)
        self.layout = ParamLayout.of(model)
        self.clip = clip
        self.memory_budget = memory_budget
        self._fixed_chunk = chunk_size
        self._chunks: dict[tuple[str, int], int] = {}
        self.batch: MiniBatch | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def layout_dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: torch.device) -> PopulationObjective:
        """Move the model (and so the weights the programs read) to ``device``."""
        self.model.to(device)
        self._chunks.clear()
        return self

    def set_batch(
        self, x: torch.Tensor, y: torch.Tensor, eps: float, kappa: float = 0.0, beta: float = 1.0
    ) -> MiniBatch:
        """Fix the minibatch that every member of the next population is evaluated on."""
        self.batch = MiniBatch(x=x, y=y, eps=float(eps), kappa=float(kappa), beta=float(beta))
        return self.batch

    def _require_batch(self) -> MiniBatch:
        if self.batch is None:
            raise RuntimeError("set_batch() must be called before evaluating a population")
        return self.batch

    # -- one member ----------------------------------------------------------------------
    def member_loss(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Scalar loss of one member given as named tensors (pure, vmap-able)."""
        b = self._require_batch()
        return certified_loss(
            self.programs[self.domain], params, b.x, b.y, b.eps, b.kappa,
            model=self.model, num_classes=self.num_classes, clip=self.clip,
            programs=self.programs, domain=self.domain, beta=b.beta,
        )

    def flat_loss(self, flat: torch.Tensor) -> torch.Tensor:
        """Scalar loss of one flat weight vector."""
        return self.member_loss(self.layout.unflatten(flat))

    # -- populations ---------------------------------------------------------------------
    def _batched(self, kind: str) -> Callable[[torch.Tensor], Any]:
        if kind == "loss":
            return torch.func.vmap(self.flat_loss)
        return torch.func.vmap(torch.func.grad_and_value(self.flat_loss))

    def chunk_size(self, kind: str = "loss", popsize: int | None = None) -> int:
        """Members per vmapped call so that one call stays within the memory budget.

        Probes the peak memory of a call with 1 and with 2 members on the current minibatch
        (peak = fixed + per_member * members) and divides the budget. Raises
        :class:`MemoryBudgetError` when even one member does not fit.
        """
        if self._fixed_chunk is not None:
            return self._fixed_chunk
        b = self._require_batch()
        key = (kind, int(b.x.shape[0]))
        if key not in self._chunks:
            fixed, per_member = self.probe(kind)
            budget = self.memory_budget
            if budget is None:
                budget = default_memory_budget(b.x.device)
            if fixed + per_member > budget:
                raise MemoryBudgetError(
                    f"memory budget {budget / MiB:.1f} MiB is below one population member "
                    f"({(fixed + per_member) / MiB:.1f} MiB for a minibatch of {b.x.shape[0]}); "
                    "raise --memory-budget or lower the batch size"
                )
            self._chunks[key] = max(1, int((budget - fixed) // max(per_member, 1)))
        chunk = self._chunks[key]
        return chunk if popsize is None else min(chunk, popsize)

    def probe(self, kind: str = "loss") -> tuple[int, int]:
        """(fixed bytes, bytes per member) of one vmapped call on the current minibatch."""
        centre = self.layout.flatten(self.model)
        fn = self._batched(kind)
        peaks = []
        for members in (1, 2):
            values = centre.unsqueeze(0).repeat(members, 1)
            with torch.set_grad_enabled(kind != "loss"):
                _, peak = peak_bytes(functools.partial(fn, values))
            peaks.append(peak)
        per_member = max(peaks[1] - peaks[0], 1)
        fixed = max(peaks[0] - per_member, 0)
        return fixed, per_member

    @torch.no_grad()
    def losses(self, values: torch.Tensor) -> torch.Tensor:
        """Losses ``[popsize]`` of flat vectors ``[popsize, n]``: vmapped, chunked calls."""
        fn = self._batched("loss")
        chunk = self.chunk_size("loss", values.shape[0])
        return torch.cat([fn(part) for part in torch.split(values, chunk)])

    @torch.no_grad()
    def losses_one_by_one(self, values: torch.Tensor) -> torch.Tensor:
        """The same losses, one program call per member (the baseline vmap must match)."""
        return torch.stack([self.flat_loss(v) for v in values])

    def gradients(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(losses ``[popsize]``, gradients ``[popsize, n]``) at each member, vmapped."""
        fn = self._batched("grad")
        chunk = self.chunk_size("grad", values.shape[0])
        grads, losses = [], []
        for part in torch.split(values.detach(), chunk):
            g, v = fn(part)
            grads.append(g)
            losses.append(v)
        return torch.cat(losses).detach(), torch.cat(grads).detach()
