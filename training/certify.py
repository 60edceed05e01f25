"""Certification as a cascade of stages, run in float64 with a positive tolerance.

Each input passes through the stages until one decides it:

1. ``clean``: a wrong prediction on x itself -> ``misclassified`` (never certified);
2. one ``bound:<domain>`` stage per domain: the lower bound on every margin f_y - f_i,
   computed in float64 on a float64 copy of the model, exceeds ``tolerance`` -> ``certified``;
3. ``pgd``: a PGD point in the ball that the float64 model misclassifies -> ``falsified``;
4. stages registered by other modules (an exact MILP stage, ``--complete``) for the rest;

anything left is ``unknown``. Working in float64 and demanding a margin above a stated
positive tolerance is how a certificate is kept from being claimed by floating-point
accident; the tolerance grows with the magnitude of the computation: an input is certified
only when its margin lower bound exceeds ``tolerance + rel_tolerance * M``, M the largest
magnitude of the input box, every activation's bounds and the margin bounds for that input
(``certificate_threshold``). PGD then also attacks the certified inputs: a counterexample to a
certificate is a soundness error of the domain, reported as such and never counted.

Trust (``domain_trust``, called by every certification path through ``certify_model``): a
domain that is not built in certifies only when that exact file (content hash, imports
included) has passed ``absdsl check`` (``absdsl.checkcache``), or when the caller passes
``uncertified_domain=True``, which marks every result as coming from an unchecked domain.
Every report names the domain files and their hashes.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

import absdsl
from absdsl import checkcache
from absdsl.compiler.specs import margin_spec
from absdsl.dsl.loader import BUILTIN_FILES, builtin_path
from absdsl.errors import AbsdslError

from .attacks import PGDConfig, pgd_attack
from .data import DatasetInfo, Split, eval_batches
from .programs import CASCADE_ORDER, canonical_domain
from .progress import progress_bar

PRECISION = "float64"
REL_TOLERANCE = 1e-9  # per unit of magnitude of the computation (the property tests' policy)


class CertifyError(AbsdslError):
    """Bad certification input: unknown domain, eps out of range, unknown stage."""


class UncheckedDomainError(CertifyError):
    """A domain file that has not passed ``absdsl check`` (as it is now) was asked to certify."""


@dataclass
class DomainTrust:
    """Where a certifying domain comes from and why its certificates are trusted."""

    domain: str
    file: str
    sha256: str
    trust: str  # built-in | checked | uncertified-domain
    check: dict[str, Any] | None = None  # the absdsl check cache entry (trust "checked")


_ALLOW_UNCHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "absdsl_allow_unchecked_domain", default=False)


@contextlib.contextmanager
def allow_unchecked_domains() -> Iterator[None]:
    """Certifications inside run with unchecked domain files, marked uncertified-domain
    (for callers that do not build the options themselves, e.g. the end of training)."""
    token = _ALLOW_UNCHECKED.set(True)
    try:
        yield
    finally:
        _ALLOW_UNCHECKED.reset(token)


def domain_trust(domain: str, uncertified_domain: bool = False) -> DomainTrust:
    """The gate every certification passes: built-in domains (by name, or a file whose
    content and imports equal a shipped one) and files that passed ``absdsl check`` as they
    are now are trusted; any other file raises :class:`UncheckedDomainError` unless
    ``uncertified_domain`` (or :func:`allow_unchecked_domains`) marks the results."""
    key = domain.strip().lower()
    if key in BUILTIN_FILES:
        path = builtin_path(BUILTIN_FILES[key])
        return DomainTrust(key, str(path), checkcache.domain_digest(path), "built-in")
    path = checkcache.domain_file(domain)
    if not path.is_file():
        canonical_domain(domain)  # not a built-in name, nor a file: the usual clear error
        raise CertifyError(f"domain {domain!r}: no such file {path}")
    digest = checkcache.domain_digest(path)
    if digest in checkcache.builtin_digests():
        return DomainTrust(domain, str(path.resolve()), digest, "built-in")
    entry = checkcache.lookup(path)
    if entry is not None:
        return DomainTrust(domain, str(path.resolve()), digest, "checked", entry)
    if uncertified_domain or _ALLOW_UNCHECKED.get():
        return DomainTrust(domain, str(path.resolve()), digest, "uncertified-domain")
    raise UncheckedDomainError(
        f"domain file {path} (sha256 {digest[:12]}...) has not passed absdsl check as it is "
        f"now, so it cannot certify: run 'absdsl check {domain}' first, or pass "
        f"--uncertified-domain to mark every result as coming from an unchecked domain "
        f"(cache: {checkcache.cache_path()})")


def certificate_threshold(prog: Any, lo: torch.Tensor, hi: torch.Tensor, lb: torch.Tensor,
                          ub: torch.Tensor, tolerance: float,
                          rel_tolerance: float = REL_TOLERANCE) -> torch.Tensor:
    """Per input, what its worst margin lower bound must exceed: ``tolerance +
    rel_tolerance * M``, M the largest magnitude in the computation of its bounds (the input
    box, every activation's pre-activation bounds, the margin bounds). A non-finite value
    makes M infinite, so nothing is certified from it. Costs one extra bound pass, run by
    callers only for the inputs whose margin already exceeds ``tolerance``."""
    tensors = [lo, hi, lb, ub]
    inter = getattr(prog, "intermediate_bounds", None)
    if inter is not None and lo.shape[0] > 0:
        with torch.no_grad():
            for a, b in inter(lo, hi).values():
                tensors += [a, b]
    mags = []
    for t in tensors:
        flat = t.detach().reshape(t.shape[0], -1).double().abs()
        flat = torch.where(torch.isnan(flat), torch.full_like(flat, math.inf), flat)
        mags.append(flat.max(1).values if flat.shape[1] else torch.zeros(t.shape[0],
                                                                         dtype=flat.dtype))
    m = torch.stack(mags, 1).max(1).values
    return tolerance + rel_tolerance * m


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
    rel_tolerance: float = REL_TOLERANCE  # the threshold grows by this per unit of magnitude
    uncertified_domain: bool = False  # allow unchecked domain files, marking every result


@dataclass
class InputResult:
    index: int
    label: int
    prediction: int
    status: str = "unknown"  # misclassified | certified | falsified | unknown
    stage: str | None = None  # the stage that decided it
    margin_lower: dict[str, float] = field(default_factory=dict)  # per domain: min_i lb
    threshold: float | None = None  # what the certifying stage's margin had to exceed
    soundness_error: str | None = None  # a certificate that PGD refuted
    uncertified_domain: bool = False  # certified by a domain file absdsl check never passed


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
        idx = ctx.pending()
        if idx.numel() == 0:
            return
        x, y = ctx.x[idx], ctx.y[idx]
        lo = torch.clamp(x - ctx.options.eps, 0.0, 1.0)
        hi = torch.clamp(x + ctx.options.eps, 0.0, 1.0)
        with torch.no_grad():
            lb, ub = self.prog(lo, hi, spec=margin_spec(y, self.num_classes).to(torch.float64))
        worst = lb.min(dim=1).values
        opts = ctx.options
        cand = (worst > opts.tolerance).nonzero().flatten()
        threshold = torch.full_like(worst, math.inf)
        if cand.numel():
            threshold[cand] = certificate_threshold(
                self.prog, lo[cand], hi[cand], lb[cand], ub[cand], opts.tolerance,
                opts.rel_tolerance).to(threshold.dtype)
        for j, i in enumerate(idx.tolist()):
            rec = ctx.records[i]
            rec.margin_lower[self.domain] = float(worst[j])
            if bool(worst[j] > threshold[j]):
                rec.status, rec.stage = "certified", self.name
                rec.threshold = float(threshold[j])


class PGDStage:
    """Falsify with PGD; the point must be misclassified by the float64 model.

    It attacks the certified inputs too: a PGD point that breaks a certificate is a
    soundness error of the certifying domain (the input is falsified, never certified).
    """

    name = "pgd"

    def run(self, ctx: StageContext) -> None:
        idx = torch.tensor([i for i, r in enumerate(ctx.records)
                            if r.stage is None or r.status == "certified"], dtype=torch.long)
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
                rec = ctx.records[i]
                if rec.status == "certified":
                    dom = str(rec.stage).removeprefix("bound:")
                    rec.soundness_error = (
                        f"{rec.stage} certified this input (margin lower bound "
                        f"{rec.margin_lower.get(dom, math.nan):.6g}) but PGD found "
                        f"a point in the ball that the float64 model misclassifies: the domain "
                        f"is unsound")
                rec.status, rec.stage = "falsified", self.name


@dataclass
class CertifyReport:
    options: CertifyOptions
    domains: list[str]
    records: list[InputResult]
    seconds: float
    skipped_domains: dict[str, str] = field(default_factory=dict)
    trust: list[DomainTrust] = field(default_factory=list)

    @property
    def uncertified_domain(self) -> bool:
        return any(t.trust == "uncertified-domain" for t in self.trust)

    @property
    def soundness_errors(self) -> list[InputResult]:
        return [r for r in self.records if r.soundness_error is not None]

    def count(self, status: str) -> int:
        return sum(1 for r in self.records if r.status == status)

    def summary(self) -> dict[str, Any]:
        n = max(len(self.records), 1)
        correct = len(self.records) - self.count("misclassified")
        domain = self.options.domain
        out: dict[str, Any] = {
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
            "rel_tolerance": self.options.rel_tolerance,
            "certificate_rule": (
                ("UNCERTIFIED DOMAIN (a domain file that has not passed absdsl check; not "
                 "certificates): " if self.uncertified_domain else "")
                + f"certified iff every margin lower bound > {self.options.tolerance:g} + "
                f"{self.options.rel_tolerance:g} * M (M: the largest magnitude in the input's "
                f"bound computation), computed in {PRECISION} on a {PRECISION} copy of the "
                f"model; PGD also attacks certified inputs"
            ),
            "domain_files": [asdict(t) for t in self.trust],
            "uncertified_domain": self.uncertified_domain,
            "soundness_errors": [{"index": r.index, "error": r.soundness_error}
                                 for r in self.soundness_errors],
            "certify_seconds": self.seconds,
        }
        if len(self.trust) == 1:
            out["domain_file"], out["domain_sha256"] = self.trust[0].file, self.trust[0].sha256
        return out

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
    if not (0.0 <= options.eps <= 1.0):
        raise CertifyError(f"eps must lie in [0, 1] (pixel units), got {options.eps}")
    if options.tolerance <= 0:
        raise CertifyError(f"tolerance must be > 0, got {options.tolerance}")
    if options.rel_tolerance < 0:
        raise CertifyError(f"rel_tolerance must be >= 0, got {options.rel_tolerance}")
    trust = {name: domain_trust(name, options.uncertified_domain)
             for name in _domains(options.domain)}  # the gate, before any work
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
    bar = progress_bar(len(split), "certify") if progress else None  # a bar on a terminal
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
        unchecked = any(trust[d].trust == "uncertified-domain" for d in used)
        for r in batch_records:
            if r.stage is None:
                r.status = "unknown"
            r.uncertified_domain = unchecked
        records.extend(batch_records)
        offset += y.shape[0]
        if bar is not None:
            bar.update(y.shape[0])
    if bar is not None:
        bar.close()
    return CertifyReport(options, used, records, time.perf_counter() - start, skipped,
                         [trust[d] for d in used])
