"""Training objectives on compiled bound programs, usable with or without explicit parameters.

Every function takes ``params``: ``None`` means the model's own parameters (GRAD training,
differentiable through ``prog(lo, hi)``); a dict name -> tensor evaluates
``prog.functional(params, ...)`` and ``torch.func.functional_call(model, params, ...)``
instead, so that PGPE can evaluate perturbed weights (and vmap over a population).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from absdsl import domains as registry

from .attacks import PGDConfig, pgd_attack
from .loss_fusion import fused_robust_loss
from .losses import robust_loss
from .margins import (  # noqa: F401 - re-exported: callers read them from here
    Params,
    _margin_rows,
    input_box,
    margin_lower,
    other_classes,
    run_program,
)
from .steprule import TrainBatch


def forward(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """model(x), with the model's own parameters or with ``params`` (functional call)."""
    if params is None:
        return model(x)
    return torch.func.functional_call(model, dict(params), (x,))


def mixed_margin(
    programs: Mapping[str, Any],
    domain: str,
    params: Params,
    lo: torch.Tensor,
    hi: torch.Tensor,
    y: torch.Tensor,
    n: int,
    beta: float = 1.0,
) -> torch.Tensor:
    """Margin lower bounds of ``domain``; for CROWN-IBP, (1-beta) m_IBP + beta m_CROWN-IBP.

    The mixture is what CROWN-IBP trains with (Zhang et al. 2020): beta = 1 is pure
    CROWN-IBP, beta = 0 pure IBP; a term with weight 0 is not computed.
    """
    loose = registry.mixed_with(domain)  # CROWN-IBP: Box
    if loose is None or loose not in programs:
        return margin_lower(programs[domain], params, lo, hi, y, n)
    if beta >= 1.0:
        return margin_lower(programs[domain], params, lo, hi, y, n)
    prog = programs[domain]
    if beta > 0.0 and getattr(prog, "shares_intermediate", False):
        # one program call: CROWN-IBP's Box forward pass also gives Box's margins (the same
        # code the Box program runs), so the Box pass and its backward are not repeated
        others, spec = _margin_rows(y, n, lo)
        lb_crown, lb_box = prog.lower_with_intermediate(params, lo, hi, spec)
        m_box = lb_box.new_zeros(lb_box.shape[0], n).scatter(1, others, lb_box)
        m_crown = lb_crown.new_zeros(lb_crown.shape[0], n).scatter(1, others, lb_crown)
        return (1.0 - beta) * m_box + beta * m_crown
    m_box = margin_lower(programs[loose], params, lo, hi, y, n)
    if beta <= 0.0:
        return m_box
    m_crown = margin_lower(prog, params, lo, hi, y, n)
    return (1.0 - beta) * m_box + beta * m_crown


def certified_loss(
    prog: Any,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    kappa: float = 0.0,
    *,
    model: nn.Module | None = None,
    natural_logits: torch.Tensor | None = None,
    num_classes: int = 10,
    clip: tuple[float, float] = (0.0, 1.0),
    programs: Mapping[str, Any] | None = None,
    domain: str | None = None,
    beta: float = 1.0,
    loss_fusion: bool = False,
) -> torch.Tensor:
    """kappa * CE(f(x), y) + (1 - kappa) * CE(z, y), z from the margin lower bounds.

    ``prog`` is the domain's bound program. For CROWN-IBP mixing pass ``programs`` (with a
    "box" entry), ``domain="crown-ibp"`` and ``beta``. The natural term needs either
    ``natural_logits`` or ``model``; it is skipped when kappa is 0. At eps = 0 the robust
    loss is the natural loss of the bound program's (degenerate) box, so no special case.
    ``loss_fusion`` bounds the robust CE itself (``training/loss_fusion.py``; needs
    ``programs`` with "box" and ``domain``).
    """
    lo, hi = input_box(x, eps, clip)
    if loss_fusion and programs is not None and domain is not None:
        robust = _fused_loss(programs, domain, params, lo, hi, y, num_classes, beta)[0]
    elif programs is not None and domain is not None:
        robust = robust_loss(mixed_margin(programs, domain, params, lo, hi, y, num_classes,
                                          beta), y)
    else:
        robust = robust_loss(margin_lower(prog, params, lo, hi, y, num_classes), y)
    if kappa <= 0.0:
        return robust
    if natural_logits is None:
        if model is None:
            raise ValueError("certified_loss: kappa > 0 needs natural_logits or model")
        natural_logits = forward(model, params, x)
    return kappa * F.cross_entropy(natural_logits, y) + (1.0 - kappa) * robust


def sabr_box(
    model: nn.Module,
    params: Params,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    lam: float,
    pgd: PGDConfig,
    clip: tuple[float, float] = (0.0, 1.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """SABR's small box: radius lam*eps around a PGD point whose box stays in the eps-ball.

    PGD searches the ball of radius (1 - lam) eps around x (clipped so that the small box
    lies inside the valid range too); the box around the found point is what is propagated.
    """
    r = lam * eps
    lo_all, hi_all = input_box(x, eps, clip)
    inner_lo, inner_hi = lo_all + r, hi_all - r
    inner_hi = torch.maximum(inner_hi, inner_lo)  # very small pixels range: collapse
    center = torch.minimum(torch.maximum(x, inner_lo), inner_hi)
    with torch.no_grad():
        adv = pgd_attack(
            lambda z: forward(model, params, z), center, y, (1.0 - lam) * eps, pgd,
            clip=clip, center=center,
        )
    adv = torch.minimum(torch.maximum(adv, inner_lo), inner_hi)
    return adv - r, adv + r


def batch_loss(
    model: nn.Module,
    programs: Mapping[str, Any],
    cfg: Any,
    batch: TrainBatch,
    params: Params = None,
    num_classes: int = 10,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of the configured method on one batch, and metrics to log.

    ``cfg`` needs ``method``, ``domain`` (a key of ``programs``), ``sabr_lambda``,
    ``mtl_alpha``, ``pgd_steps`` and ``pgd_restarts``. Batch norm: the natural forward runs in
    the model's current mode; bound programs always see the model in eval mode (running
    statistics), since the compiler refuses training-mode batch norm.
    """
    x, y, eps = batch.x, batch.y, batch.eps
    method = cfg.method
    domain = cfg.domain
    pgd = PGDConfig(steps=cfg.pgd_steps, restarts=cfg.pgd_restarts, loss="ce")
    metrics: dict[str, float] = {}
    needs_natural = method in ("natural", "pgd") or batch.kappa > 0 or _has_bn(model)
    logits = forward(model, params, x) if needs_natural else None
    if logits is not None:
        metrics["train_acc"] = float((logits.argmax(1) == y).float().mean())
    if method == "natural" or (method != "pgd" and eps <= 0.0):
        # at eps = 0 every domain's robust loss equals the natural loss: skip the bounds
        if logits is None:
            logits = forward(model, params, x)
            metrics["train_acc"] = float((logits.argmax(1) == y).float().mean())
        return F.cross_entropy(logits, y), metrics
    with _eval_mode(model):
        if method == "pgd":
            adv = pgd_attack(lambda z: forward(model, params, z), x, y, eps, pgd)
            adv_logits = forward(model, params, adv)
            loss = F.cross_entropy(adv_logits, y)
        elif method == "certified" and getattr(cfg, "loss_fusion", False):
            lo, hi = input_box(x, eps)
            loss, certified = _fused_loss(programs, domain, params, lo, hi, y, num_classes,
                                          batch.beta)
            metrics["train_cert_acc"] = float(certified.float().mean())
            if batch.kappa > 0 and logits is not None:
                loss = batch.kappa * F.cross_entropy(logits, y) + (1 - batch.kappa) * loss
        elif method == "certified":
            lo, hi = input_box(x, eps)
            m = mixed_margin(programs, domain, params, lo, hi, y, num_classes, batch.beta)
            loss = robust_loss(m, y)
            metrics["train_cert_acc"] = _certified_fraction(m, y)
            if batch.kappa > 0 and logits is not None:
                loss = batch.kappa * F.cross_entropy(logits, y) + (1 - batch.kappa) * loss
        elif method == "sabr":
            lo, hi = sabr_box(model, params, x, y, eps, cfg.sabr_lambda, pgd)
            loss = _robust(programs, domain, params, lo, hi, y, num_classes, batch.beta, cfg)
            if batch.kappa > 0 and logits is not None:
                loss = batch.kappa * F.cross_entropy(logits, y) + (1 - batch.kappa) * loss
        elif method == "mtl-ibp":
            adv = pgd_attack(lambda z: forward(model, params, z), x, y, eps, pgd)
            adv_loss = F.cross_entropy(forward(model, params, adv), y)
            lo, hi = input_box(x, eps)
            robust = _robust(programs, domain, params, lo, hi, y, num_classes, batch.beta, cfg)
            loss = cfg.mtl_alpha * robust + (1.0 - cfg.mtl_alpha) * adv_loss
        else:  # pragma: no cover - validated in config
            raise ValueError(f"unknown method {method!r}")
    return loss, metrics


# -- loss fusion hooks (training/loss_fusion.py) ---------------------------------------------
def _fused_loss(
    programs: Mapping[str, Any], domain: str, params: Params, lo: torch.Tensor,
    hi: torch.Tensor, y: torch.Tensor, n: int, beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused robust loss and per-sample certified flags."""
    return fused_robust_loss(programs, domain, params, lo, hi, y, n, beta)


def _robust(
    programs: Mapping[str, Any], domain: str, params: Params, lo: torch.Tensor,
    hi: torch.Tensor, y: torch.Tensor, n: int, beta: float, cfg: Any,
) -> torch.Tensor:
    """The robust CE of the box: fused when ``cfg.loss_fusion``, else on margin bounds."""
    if getattr(cfg, "loss_fusion", False):
        return _fused_loss(programs, domain, params, lo, hi, y, n, beta)[0]
    return robust_loss(mixed_margin(programs, domain, params, lo, hi, y, n, beta), y)


def _certified_fraction(m: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of the batch whose margins (other than y's zero) are all positive."""
    masked = m.detach().scatter(1, y.unsqueeze(1), float("inf"))
    return float((masked.min(1).values > 0).float().mean())


def _has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class _eval_mode:
    """Context: the model in eval mode (for bound programs and attacks), restored after."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)
