"""The robust loss of a compiled bound program as a function of flat weight vectors.

A population of ``popsize`` weight vectors is evaluated by ``torch.func.vmap`` over the
program's functional form: one batched call per chunk, all members on the same minibatch
(as the paper does), chunks sized so that the call fits a memory budget. The same object
gives member-by-member losses (for tests and the benchmark) and vmapped gradients (RGS).

How a population is split into calls is an execution plan: vmapped chunks of k members, or
a loop over members. On a GPU the plan is the largest chunk the budget allows. On the CPU a
single member's call already keeps the cores busy and a vmapped chunk mostly grows the
working set, so the default (``mode="auto"``) measures seconds per member of the loop and of
a few chunk sizes on the first real populations (no extra evaluations) and keeps the fastest.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
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


MODES = ("auto", "vmap", "loop")
# the memory probe runs on this many and twice as many samples and extrapolates linearly to
# the minibatch (peak bytes are affine in the batch size for every built-in domain); the
# extrapolation is padded by PROBE_MARGIN
PROBE_BATCH = 4
PROBE_MARGIN = 1.1
LOOP_TRIAL_MEMBERS = 4  # members one timing of the loop plan covers while tuning
TUNING_TRIALS = 3  # timings per candidate plan; the fastest of them counts (load is noisy)
DROP_FACTOR = 2.0  # a candidate this many times slower than the best so far is not retimed


@dataclass(frozen=True)
class Plan:
    """How a population is split into calls: ``vmap`` chunks of ``chunk`` members, or a
    ``loop`` over members (chunk 1, the member-by-member call itself)."""

    mode: str
    chunk: int = 1

    @property
    def label(self) -> str:
        return "loop" if self.mode == "loop" else f"vmap:{self.chunk}"

    @staticmethod
    def parse(label: str) -> Plan:
        if label == "loop":
            return Plan("loop", 1)
        mode, _, chunk = label.partition(":")
        if mode != "vmap" or not chunk.isdigit() or int(chunk) < 1:
            raise SmoothingConfigError(f"bad population plan {label!r} in the checkpoint")
        return Plan("vmap", int(chunk))


@dataclass
class PlanTuner:
    """Picks the fastest plan from timings of real population calls (seconds per member).

    Each candidate is timed ``trials`` times, interleaved over the first populations; the
    minimum of its timings counts, since other work on the machine only ever adds time.
    """

    candidates: list[Plan]
    trials: int = TUNING_TRIALS
    times: dict[str, list[float]] = field(default_factory=dict)
    chosen: Plan | None = None

    def pending(self) -> list[Plan]:
        """Candidates still to be timed: fewer than ``trials`` timings, and not already
        ``DROP_FACTOR`` times slower than the best (a slow plan costs one timing only)."""
        best = self.best()
        fastest = min(self.times[best.label]) if best is not None else float("inf")
        return [
            c for c in self.candidates
            if len(self.times.get(c.label, [])) < self.trials
            and not (self.times.get(c.label) and min(self.times[c.label]) > DROP_FACTOR * fastest)
        ]

    def record(self, plan: Plan, seconds: float, members: int) -> None:
        self.times.setdefault(plan.label, []).append(seconds / max(members, 1))
        if not self.pending():
            self.chosen = self.best()

    def best(self) -> Plan | None:
        timed = [c for c in self.candidates if self.times.get(c.label)]
        if not timed:
            return None
        return min(timed, key=lambda c: min(self.times[c.label]))

    def state_dict(self) -> dict[str, Any]:
        return {
            "candidates": [c.label for c in self.candidates],
            "times": {k: list(v) for k, v in self.times.items()},
            "chosen": self.chosen.label if self.chosen is not None else "",
        }

    @staticmethod
    def from_state(state: Mapping[str, Any]) -> PlanTuner:
        tuner = PlanTuner([Plan.parse(c) for c in state["candidates"]])
        tuner.times = {str(k): [float(t) for t in v] for k, v in state["times"].items()}
        tuner.chosen = Plan.parse(state["chosen"]) if state["chosen"] else None
        return tuner


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
        mode: str = "auto",
        loss_fusion: bool = False,
    ) -> None:
        if mode not in MODES:
            raise SmoothingConfigError(
                f"unknown population evaluation mode {mode!r}; choose one of {', '.join(MODES)}"
            )
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
        self.mode = mode
        self.loss_fusion = loss_fusion  # bound the robust CE itself (training/loss_fusion.py)
        self._tuners: dict[str, PlanTuner] = {}
        self._warm: set[tuple[Any, ...]] = set()  # (kind, input shape) already called once
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
        self._tuners.clear()
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
            loss_fusion=self.loss_fusion,
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
                if b.x.device.type == "cpu":  # automatic: at least one member per call
                    budget = max(budget, fixed + per_member)
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
        """(fixed bytes, bytes per member) of one vmapped call on the current minibatch.

        Measured with 1 and 2 members. On the CPU, for a minibatch larger than
        ``2 * PROBE_BATCH``, the calls run on ``PROBE_BATCH`` and ``2 * PROBE_BATCH`` of its
        samples and the peaks are extrapolated linearly to the full batch, padded by
        ``PROBE_MARGIN``: the full-batch DeepPoly probe for CNN3 at batch 128 took 28 s on
        the shared 2-core VM, the extrapolated one 5 s (on the safe side: 1.9x the true
        peak there, since DeepPoly chunks its back-substitution at large batches).
        """
        peaks = self.probe_peaks(kind)
        per_member = max(peaks[1] - peaks[0], 1)
        fixed = max(peaks[0] - per_member, 0)
        return fixed, per_member

    def probe_peaks(self, kind: str = "loss") -> list[int]:
        """Peak bytes of a vmapped call with 1 and 2 members on the current minibatch,
        extrapolated from a few samples as :meth:`probe` describes."""
        b = self._require_batch()
        n = int(b.x.shape[0])
        if n <= 2 * PROBE_BATCH or b.x.device.type != "cpu":
            # on a GPU the full-batch probe is cheap, and exact (the extrapolation can
            # overestimate where a program chunks its work: DeepPoly at batch 128, 1.9x)
            return self._probe_peaks(kind, b)
        small = self._probe_peaks(kind, _first(b, PROBE_BATCH))
        large = self._probe_peaks(kind, _first(b, 2 * PROBE_BATCH))
        return [
            int(PROBE_MARGIN * (p2 + (p2 - p1) * (n - 2 * PROBE_BATCH) / PROBE_BATCH))
            for p1, p2 in zip(small, large, strict=True)
        ]

    def _probe_peaks(self, kind: str, batch: MiniBatch) -> list[int]:
        """Peak bytes of a vmapped call with 1 and with 2 members on ``batch``."""
        centre = self.layout.flatten(self.model)
        fn = self._batched(kind)
        saved, self.batch = self.batch, batch
        peaks = []
        try:
            for members in (1, 2):
                values = centre.unsqueeze(0).repeat(members, 1)
                with torch.set_grad_enabled(kind != "loss"):
                    _, peak = peak_bytes(functools.partial(fn, values))
                peaks.append(peak)
        finally:
            self.batch = saved
        return peaks

    # -- execution plans -----------------------------------------------------------------
    def plan(self, kind: str = "loss", popsize: int | None = None) -> Plan | None:
        """The plan population calls use now; None while ``auto`` is still measuring."""
        chunk = self.chunk_size(kind, popsize)  # also checks the memory budget
        if self.mode == "loop":
            return Plan("loop", 1)
        if not self._tunes():
            return Plan("vmap", chunk)
        tuner = self._tuner(kind, popsize)
        if tuner.chosen is None:
            return None
        if tuner.chosen.mode == "loop":
            return tuner.chosen
        return Plan("vmap", min(tuner.chosen.chunk, chunk))

    def _tunes(self) -> bool:
        """``auto`` measures plans on the CPU only; a GPU gets the largest chunk, and an
        explicit ``chunk_size`` pins a vmapped plan."""
        return self.mode == "auto" and self._fixed_chunk is None and self.device.type == "cpu"

    def _tuner(self, kind: str, popsize: int | None) -> PlanTuner:
        if kind not in self._tuners:
            limit = self.chunk_size(kind, popsize)
            candidates = [Plan("loop", 1)]
            k = 2
            while k <= limit:
                candidates.append(Plan("vmap", k))
                k *= 2
            self._tuners[kind] = PlanTuner(candidates)
        return self._tuners[kind]

    def plan_state(self) -> dict[str, Any]:
        """The measured plans (plain floats and strings), for checkpoints: a resumed run
        keeps the plan, and so the float rounding, of the run it continues."""
        return {"mode": self.mode, "tuners": {k: t.state_dict() for k, t in self._tuners.items()}}

    def load_plan_state(self, state: Mapping[str, Any]) -> None:
        if state.get("mode") != self.mode:
            return  # the run now asks for another mode: that request wins
        self._tuners = {k: PlanTuner.from_state(v) for k, v in state["tuners"].items()}

    def _segments(
        self, kind: str, values: torch.Tensor
    ) -> Iterator[tuple[Plan, torch.Tensor, bool]]:
        """(plan, members, timed) pieces covering ``values`` in order."""
        start, total = 0, values.shape[0]
        plan = self.plan(kind, total)
        if plan is None:
            # a smaller population than the first (or a tighter budget) cannot time the
            # larger chunks: they leave the race
            tuner = self._tuners[kind]
            limit = self.chunk_size(kind, total)
            tuner.candidates = [c for c in tuner.candidates if c.chunk <= limit]
            if not tuner.pending():
                tuner.chosen = tuner.best()
            plan = self.plan(kind, total)
        if plan is None:
            # tuning: one timed piece per pending candidate that still fits, largest first
            for candidate in sorted(tuner.pending(), key=lambda c: -c.chunk):
                size = LOOP_TRIAL_MEMBERS if candidate.mode == "loop" else candidate.chunk
                if candidate.mode == "vmap" and size > total - start:
                    continue
                size = min(size, total - start)
                if size == 0:
                    break
                yield candidate, values[start:start + size], True
                start += size
            plan = tuner.best() or Plan("vmap", limit)
            if plan.mode == "vmap":
                plan = Plan("vmap", min(plan.chunk, limit))
        while start < total:
            size = min(plan.chunk, total - start)
            yield plan, values[start:start + size], False
            start += size

    def _evaluate(self, kind: str, values: torch.Tensor) -> list[Any]:
        outputs = []
        shape = (kind, tuple(self._require_batch().x.shape))
        for plan, part, timed in self._segments(kind, values):
            if timed and shape not in self._warm:
                timed = False  # the first call on a new input shape compiles the program
            self._warm.add(shape)
            begin = time.perf_counter()
            out: Any
            if plan.mode == "loop" and kind == "loss":
                out = torch.stack([self.flat_loss(v) for v in part])
            elif plan.mode == "loop":
                grad_and_loss = torch.func.grad_and_value(self.flat_loss)
                pairs = [grad_and_loss(v) for v in part]
                out = (torch.stack([g for g, _ in pairs]), torch.stack([v for _, v in pairs]))
            else:
                out = self._batched(kind)(part)
            if timed:
                self._tuners[kind].record(plan, time.perf_counter() - begin, part.shape[0])
            outputs.append(out)
        return outputs

    @torch.no_grad()
    def losses(self, values: torch.Tensor) -> torch.Tensor:
        """Losses ``[popsize]`` of flat vectors ``[popsize, n]``, evaluated by the plan."""
        return torch.cat(self._evaluate("loss", values))

    @torch.no_grad()
    def losses_one_by_one(self, values: torch.Tensor) -> torch.Tensor:
        """The same losses, one program call per member (the baseline vmap must match)."""
        return torch.stack([self.flat_loss(v) for v in values])

    def gradients(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(losses ``[popsize]``, gradients ``[popsize, n]``) at each member, vmapped."""
        pieces = self._evaluate("grad", values.detach())
        losses = torch.cat([v for _, v in pieces]).detach()
        return losses, torch.cat([g for g, _ in pieces]).detach()


def _first(batch: MiniBatch, n: int) -> MiniBatch:
    """The first ``n`` samples of a minibatch."""
    return MiniBatch(batch.x[:n], batch.y[:n], batch.eps, batch.kappa, batch.beta)
