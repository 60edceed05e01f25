"""Certification as a cascade of stages, run in float64 with a positive tolerance.

Each input passes through the stages until one decides it:

1. ``clean``: a wrong prediction on x itself -> ``misclassified`` (never certified);
2. one ``bound:<domain>`` stage per domain: the lower bound on every margin f_y - f_i,
   computed in float64 on a float64 copy of the model, exceeds ``tolerance`` -> ``certified``;
3. ``pgd``: a PGD point in the ball that the float64 model misclassifies -> ``falsified``;
4. stages registered by other modules (an exact MILP stage, ``--complete``) for the rest;

anything left is ``unknown``. Working in float64 and demanding a margin above a stated
positive tolerance is how a certificate is kept from being claimed by floating-point
accident (DESIGN.md section 8); the report says so.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from absdsl.errors import AbsdslError

from .attacks import PGDConfig, pgd_attack
from .data import DatasetInfo, Split, eval_batches
from .programs import CASCADE_ORDER, canonical_domain

PRECISION = "float64"


class CertifyError(AbsdslError):
    """Bad certification input: unknown domain, eps out of range, unknown stage."""


@dataclass
class CertifyOptions:
    eps: float
    domain: str = "box"  # a domain, a domain file, or "tightest" (every built-in, cheap first)
    tolerance: float = 1e-6
    pgd_steps: int = 20
    pgd_restarts: int = 3
    batch_size: int = 250
    extra_stages: list[str] = field(default_factory=list)  # e.g. ["milp"] for --complete
    milp_time_limit: float = 30.0  # seconds per input for the milp stage (--complete)
    seed: int = 0


@dataclass
class InputResult:
    index: int
    label: int
    prediction: int
    status: str = "unknown"  # misclassified | certified | falsified | unknown
    stage: str | None = None  # the stage that decided it
    margin_lower: dict[str, float] = field(default_factory=dict)  # per domain: min_i lb


@dataclass
class StageContext:
    """What a stage sees: the float64 model, the batch, the options, and its results."""

    model: nn.Module  # float64, eval mode
    model32: nn.Module  # float32 copy for attacks
    x: torch.Tensor  # float64
    y: torch.Tensor
    options: CertifyOptions
    records: list[InputResult]  # one per row of x

    def pending(self) -> torch.Tensor:
        """Row indices not yet decided."""
        return torch.tensor([i for i, r in enumerate(self.records) if r.stage is None],
                            dtype=torch.long)


class Stage(Protocol):
    name: str

    def run(self, ctx: StageContext) -> None:
        """Decide some pending rows of ``ctx`` (set their status and stage)."""
        ...


StageFactory = Callable[[nn.Module, DatasetInfo, CertifyOptions], Stage]
_STAGES: dict[str, StageFactory] = {}


def register_stage(name: str, factory: StageFactory) -> None:
    """Add a stage that runs after PGD when named in ``CertifyOptions.extra_stages``."""
    _STAGES[name] = factory


class CleanStage:
    name = "clean"

    def run(self, ctx: StageContext) -> None:
        for r in ctx.records:
            if r.prediction != r.label:
                r.status, r.stage = "misclassified", self.name


class BoundStage:
    """Certify with one domain's margin lower bounds in float64."""

    def __init__(self, domain: str, prog: Any, num_classes: int) -> None:
        self.domain = domain
        self.name = f"bound:{domain}"
        self.prog = prog
        self.num_classes = num_classes

    def run(self, ctx: StageContext) -> None:
        from absdsl.compiler.specs import margin_spec

        idx = ctx.pending()
        if idx.numel() == 0:
            return
        x, y = ctx.x[idx], ctx.y[idx]
        lo = torch.clamp(x - ctx.options.eps, 0.0, 1.0)
        hi = torch.clamp(x + ctx.options.eps, 0.0, 1.0)
        with torch.no_grad():
            lb, _ = self.prog(lo, hi, spec=margin_spec(y, self.num_classes).to(torch.float64))
        worst = lb.min(dim=1).values
        for j, i in enumerate(idx.tolist()):
            rec = ctx.records[i]
            rec.margin_lower[self.domain] = float(worst[j])
            if bool(worst[j] > ctx.options.tolerance):
                rec.status, rec.stage = "certified", self.name


class PGDStage:
    """Falsify with PGD; the point must be misclassified by the float64 model."""

    name = "pgd"

    def run(self, ctx: StageContext) -> None:
        idx = ctx.pending()
        if idx.numel() == 0 or ctx.options.eps <= 0:
            return
        opts = ctx.options
        cfg = PGDConfig(steps=opts.pgd_steps, restarts=opts.pgd_restarts)
        gen = torch.Generator().manual_seed(opts.seed)
        x32 = ctx.x[idx].float()
        adv = pgd_attack(ctx.model32, x32, ctx.y[idx], opts.eps, cfg, generator=gen).double()
        # the float64 point must lie in the float64 ball, and fool the float64 model
        x = ctx.x[idx]
        adv = torch.minimum(torch.maximum(adv, torch.clamp(x - opts.eps, 0.0, 1.0)),
                            torch.clamp(x + opts.eps, 0.0, 1.0))
        with torch.no_grad():
            wrong = ctx.model(adv).argmax(1) != ctx.y[idx]
        for j, i in enumerate(idx.tolist()):
            if bool(wrong[j]):
                ctx.records[i].status, ctx.records[i].stage = "falsified", self.name


@dataclass
class CertifyReport:
    options: CertifyOptions
    domains: list[str]
    records: list[InputResult]
    seconds: float
    skipped_domains: dict[str, str] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for r in self.records if r.status == status)

    def summary(self) -> dict[str, Any]:
        n = max(len(self.records), 1)
        correct = len(self.records) - self.count("misclassified")
        domain = self.options.domain
        return {
            "natural_acc": correct / n,
            "adversarial_acc": (correct - self.count("falsified")) / n,
            "certified_acc": self.count("certified") / n,
            "domain": domain,
            "certify_domains": self.domains,
            "eps": self.options.eps,
            "n": len(self.records),
            "counts": {s: self.count(s) for s in
                       ("certified", "falsified", "unknown", "misclassified")},
            "precision": PRECISION,
            "tolerance": self.options.tolerance,
            "certificate_rule": (
                f"certified iff every margin lower bound > {self.options.tolerance:g}, "
                f"computed in {PRECISION} on a {PRECISION} copy of the model"
            ),
            "certify_seconds": self.seconds,
        }

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"summary": self.summary(),
                               "inputs": [asdict(r) for r in self.records]}
        if self.skipped_domains:
            out["summary"]["skipped_domains"] = self.skipped_domains
        return out


def _domains(option: str) -> list[str]:
    if option == "tightest":
        return list(CASCADE_ORDER)
    return [canonical_domain(option)]


def certify_model(
    model: nn.Module,
    info: DatasetInfo,
    split: Split,
    options: CertifyOptions,
    progress: bool = False,
) -> CertifyReport:
    """Run the cascade on every input of ``split``; the model is not modified."""
    import absdsl

    if not (0.0 <= options.eps <= 1.0):
        raise CertifyError(f"eps must lie in [0, 1] (pixel units), got {options.eps}")
    if options.tolerance <= 0:
        raise CertifyError(f"tolerance must be > 0, got {options.tolerance}")
    start = time.perf_counter()
    model32 = copy.deepcopy(model).float().cpu().eval()
    model64 = copy.deepcopy(model).double().cpu().eval()
    stages: list[Any] = [CleanStage()]
    used: list[str] = []
    skipped: dict[str, str] = {}
    for name in _domains(options.domain):
        try:
            prog = absdsl.compile(model64, domain=name)
        except AbsdslError as err:
            if options.domain != "tightest":
                raise
            skipped[name] = str(err).splitlines()[0]
            continue
        stages.append(BoundStage(name, prog, info.num_classes))
        used.append(name)
    stages.append(PGDStage())
    for name in options.extra_stages:
        if name not in _STAGES:
            raise CertifyError(f"no certification stage {name!r} is available "
                               f"(registered: {', '.join(sorted(_STAGES)) or 'none'})")
        stages.append(_STAGES[name](model64, info, options))
    records: list[InputResult] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(split), desc="certify", leave=False)
    offset = 0
    for x, y in eval_batches(split, options.batch_size):
        x64 = x.double()
        with torch.no_grad():
            pred = model64(x64).argmax(1)
        batch_records = [
            InputResult(offset + i, int(y[i]), int(pred[i])) for i in range(y.shape[0])
        ]
        ctx = StageContext(model64, model32, x64, y, options, batch_records)
        for stage in stages:
            stage.run(ctx)
        for r in batch_records:
            if r.stage is None:
                r.status = "unknown"
        records.extend(batch_records)
        offset += y.shape[0]
        if bar is not None:
            bar.update(y.shape[0])
    if bar is not None:
        bar.close()
    return CertifyReport(options, used, records, time.perf_counter() - start, skipped)
