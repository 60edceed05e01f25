"""``absdsl analyze smoothing-gradient``: estimators of grad L_sigma compared at equal cost.

For each domain and sigma, every estimator of
:mod:`absdsl.training.smoothing.estimators` gets the same budget of B *loss-evaluation
units*; one gradient evaluation (forward + backward of the bound program, per member)
costs ``c`` units, where ``c`` is measured per domain as the ratio of the fastest per-member
time of a vmapped gradient call to that of a vmapped loss call (or given). So at budget B:
``pgpe`` gets B loss values, ``rgs`` B / c gradients, ``antithetic-cv`` one gradient and
B - c loss values (each rounded down to an even count of antithetic members, at least 2;
the cost actually spent is reported).

Quality is measured against a reference smoothed gradient: the ``antithetic-cv`` estimate
(unbiased wherever grad L(theta) exists, including where L jumps, which RGS is not) from
``reference_samples`` independent perturbations, computed as two independent halves whose
cosine tells how noisy the reference itself is. Per estimator, over ``repeats`` independent
estimates: the mean cosine to the reference, the total variance (trace of the covariance,
``sum_j var(g_j)``), and ``variance x cost``, the variance of a one-unit estimate: the lower,
the better the gradient per unit of compute for an unbiased estimator.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..programs import canonical_domain
from ..smoothing.errors import SmoothingConfigError
from ..smoothing.estimators import (
    ESTIMATORS,
    Estimate,
    antithetic_cv_gradient,
    check_estimator,
    estimate,
)
from ..smoothing.fitness import PopulationObjective
from ..smoothing.params import ParamLayout
from .landscape import save_figure
from .tightness import AnalysisError, compile_domain, float64_copy, num_outputs

DEFAULT_SIGMAS = (1e-4, 1e-3, 1e-2)
DEFAULT_DOMAINS = ("box", "crown-ibp", "deeppoly")
COST_RULE = (
    "cost in loss-evaluation units: a loss value of one member costs 1, a gradient of one "
    "member costs c = (fastest per-member seconds of a vmapped gradient call) / (fastest "
    "per-member seconds of a vmapped loss call), measured per domain on the analysed "
    "weights and inputs, 3 timings each after a warm-up, unless --grad-cost gives c"
)
REFERENCE_RULE = (
    "reference = antithetic-cv estimate from reference_samples perturbations (two "
    "independent halves, averaged; their cosine is reported as reference_half_cosine)"
)


def check_options(sigmas: Sequence[float], estimators: Sequence[str], budget: float,
                  repeats: int, reference_samples: int, grad_cost: float | None) -> None:
    """Every option checked before any work; SmoothingConfigError names the allowed values."""
    if not estimators:
        raise SmoothingConfigError(f"no estimator given; allowed: {', '.join(ESTIMATORS)}")
    if not sigmas:
        raise SmoothingConfigError("no sigma given")
    for sigma in sigmas:
        for name in estimators:
            check_estimator(name, sigma, 2)
    if isinstance(reference_samples, bool) or int(reference_samples) != reference_samples \
            or reference_samples < 4 or reference_samples % 4:
        raise SmoothingConfigError(
            f"reference samples must be a multiple of 4 (two halves of antithetic pairs), "
            f"got {reference_samples}")
    if int(repeats) != repeats or repeats < 2:
        raise SmoothingConfigError(f"repeats must be an integer >= 2 (a variance needs two "
                                   f"estimates), got {repeats}")
    if grad_cost is not None and not (math.isfinite(grad_cost) and grad_cost > 0):
        raise SmoothingConfigError(f"grad cost must be a number > 0 (loss evaluations per "
                                   f"gradient evaluation) or 'auto', got {grad_cost}")
    if not (math.isfinite(budget) and budget >= 2):
        raise SmoothingConfigError(f"budget must be >= 2 loss evaluations, got {budget}")
    if grad_cost is not None:
        samples_for(estimators, budget, grad_cost)


def samples_for(estimators: Sequence[str], budget: float, grad_cost: float) -> dict[str, int]:
    """Even member counts each estimator affords within ``budget``; too small a budget fails."""
    room = {"pgpe": budget, "rgs": budget / grad_cost, "antithetic-cv": budget - grad_cost}
    out = {}
    for name in estimators:
        samples = 2 * int(room[name] // 2)
        if samples < 2:
            raise SmoothingConfigError(
                f"budget {budget:g} loss evaluations is too small for {name} when a "
                f"gradient costs {grad_cost:.3g} of them (it needs 2 members"
                f"{' and the centre gradient' if name == 'antithetic-cv' else ''})")
        out[name] = samples
    return out


def measure_grad_cost(objective: Any, theta: torch.Tensor, members: int = 4,
                      rounds: int = 3) -> dict[str, float]:
    """Fastest per-member seconds of a loss and of a gradient call, and their ratio."""
    values = theta.unsqueeze(0).repeat(members, 1)
    objective.losses(values)  # warm-up: compiles and tunes on the first calls
    objective.gradients(values)
    loss_s, grad_s = math.inf, math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        objective.losses(values)
        loss_s = min(loss_s, (time.perf_counter() - t0) / members)
        t0 = time.perf_counter()
        objective.gradients(values)
        grad_s = min(grad_s, (time.perf_counter() - t0) / members)
    return {"loss_seconds": loss_s, "grad_seconds": grad_s, "ratio": grad_s / loss_s}


def _blocked(fn: Callable[[], Estimate], blocks: int) -> torch.Tensor:
    """Mean of ``blocks`` independent estimates of equal size (one big estimate, in pieces)."""
    return torch.stack([fn().gradient for _ in range(blocks)]).mean(0)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else float("nan")


def compare_estimators(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                       domains: Sequence[str] = DEFAULT_DOMAINS,
                       sigmas: Sequence[float] = DEFAULT_SIGMAS,
                       estimators: Sequence[str] = ESTIMATORS, budget: float = 64,
                       repeats: int = 8, reference_samples: int = 4096,
                       grad_cost: float | None = None, seed: int = 0,
                       block_samples: int = 64, memory_budget_mb: float = 1024.0,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The measurement as a JSON-ready dict (see the module docstring)."""
    check_options(sigmas, estimators, budget, repeats, reference_samples, grad_cost)
    if not 0 <= eps <= 1:
        raise AnalysisError(f"eps must lie in [0, 1] (pixel units), got {eps}")
    note = progress or (lambda message: None)
    names = [canonical_domain(d) for d in domains]
    if not names:
        raise AnalysisError("no domain given")
    model64 = float64_copy(model)
    for p in model64.parameters():
        p.requires_grad_(True)
    x64, y = x.detach().double(), y.detach().long()
    n_out = num_outputs(model64, x64)
    shape = tuple(x64.shape[1:])
    programs = {name: compile_domain(model64, name, shape) for name in names}
    layout = ParamLayout.of(model64)
    theta = layout.flatten(model64).double().detach()
    half = reference_samples // 2
    block = max(2, min(block_samples, half) // 2 * 2)
    while half % block:
        block -= 2
    results: dict[str, Any] = {}
    for k, name in enumerate(names):
        obj = PopulationObjective(model64, {name: programs[name]}, name, n_out,
                                  memory_budget=int(memory_budget_mb * 2**20))
        obj.set_batch(x64, y, eps)
        timing = measure_grad_cost(obj, theta)
        cost = grad_cost if grad_cost is not None else timing["ratio"]
        samples = samples_for(estimators, budget, cost)
        _, centre = obj.gradients(theta.unsqueeze(0))
        loss_at_centre = float(obj.losses(theta.unsqueeze(0))[0])
        per_sigma: dict[str, Any] = {}
        for j, sigma in enumerate(sigmas):
            start = time.perf_counter()
            note(f"{name} sigma {sigma:g}: reference from {reference_samples} samples")
            gen = torch.Generator().manual_seed(seed * 1_000_003 + 7919 * k + 101 * j + 1)

            def ref_block(sigma: float = sigma, gen: torch.Generator = gen, obj: Any = obj,
                          centre: torch.Tensor = centre) -> Estimate:
                return antithetic_cv_gradient(obj.losses, obj.gradients, theta, sigma, block,
                                              gen, centre_gradient=centre[0])

            halves = [_blocked(ref_block, half // block) for _ in range(2)]
            reference = (halves[0] + halves[1]) / 2
            rows: dict[str, Any] = {}
            for name_e in estimators:
                note(f"{name} sigma {sigma:g}: {name_e}, {repeats} x {samples[name_e]} members")
                draws, spent = [], 0.0
                for _ in range(int(repeats)):
                    est = estimate(name_e, obj.losses, obj.gradients, theta, sigma,
                                   samples[name_e], gen)
                    draws.append(est.gradient)
                    spent = est.cost(cost)
                stacked = torch.stack(draws)
                variance = float(stacked.var(0).sum())
                cosines = torch.tensor([_cosine(g, reference) for g in draws])
                rel = torch.stack([(g - reference).norm() for g in draws]) / reference.norm()
                rows[name_e] = {
                    "samples": samples[name_e], "cost": spent,
                    "cosine_mean": float(cosines.mean()), "cosine_std": float(cosines.std()),
                    "relative_error_mean": float(rel.mean()),
                    "variance": variance, "variance_x_cost": variance * spent,
                    "mean_norm": float(stacked.mean(0).norm()),
                }
            per_sigma[f"{sigma:g}"] = {
                "sigma": float(sigma), "reference_norm": float(reference.norm()),
                "reference_half_cosine": _cosine(halves[0], halves[1]),
                "centre_gradient_cosine": _cosine(centre[0], reference),
                "estimators": rows, "seconds": time.perf_counter() - start,
            }
        results[name] = {"grad_cost": cost, "timing": timing, "loss": loss_at_centre,
                         "centre_gradient_norm": float(centre[0].norm()),
                         "sigmas": per_sigma}
    return {"domains": names, "sigmas": [float(s) for s in sigmas],
            "estimators": list(estimators), "budget": float(budget), "repeats": int(repeats),
            "reference_samples": int(reference_samples), "eps": float(eps),
            "n_inputs": int(x64.shape[0]), "n_parameters": layout.size, "dtype": "float64",
            "cost_rule": COST_RULE, "reference_rule": REFERENCE_RULE,
            "grad_cost_given": grad_cost, "results": results}


def best_per_domain(data: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Per domain and sigma, the estimator with the highest mean cosine at equal cost."""
    out: dict[str, dict[str, str]] = {}
    for name in data["domains"]:
        out[name] = {}
        for key, cell in data["results"][name]["sigmas"].items():
            rows = cell["estimators"]
            out[name][key] = max(rows, key=lambda e: rows[e]["cosine_mean"])
    return out


def cosine_ceiling(half_cosine: float) -> float:
    """Expected cosine of the *exact* smoothed gradient to the reference, from the cosine h of
    the reference's two halves (independent isotropic noise): sqrt(2h / (1 + h)). An
    estimator cannot be expected to beat it; near it, the reference's noise dominates."""
    h = max(half_cosine, 0.0)
    return math.sqrt(2 * h / (1 + h))


def format_table(data: Mapping[str, Any]) -> str:
    """A Markdown table: one row per domain, sigma and estimator."""
    lines = ["| domain | c (grad/loss) | sigma | estimator | members | cost | cos to ref "
             "(mean +- std) | variance | variance x cost | ref half-cos | ceiling |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in data["domains"]:
        res = data["results"][name]
        for key, cell in res["sigmas"].items():
            for est, row in cell["estimators"].items():
                lines.append(
                    f"| {name} | {res['grad_cost']:.2f} | {key} | {est} | {row['samples']} | "
                    f"{row['cost']:.1f} | {row['cosine_mean']:.3f} +- {row['cosine_std']:.3f} "
                    f"| {row['variance']:.3g} | {row['variance_x_cost']:.3g} | "
                    f"{cell['reference_half_cosine']:.3f} | "
                    f"{cosine_ceiling(cell['reference_half_cosine']):.2f} |")
    return "\n".join(lines)


def plot(data: Mapping[str, Any], path: str | Path) -> Path:
    """Cosine to the reference (top) and variance x cost (bottom) against sigma, per domain."""
    import matplotlib  # lazy: heavy dependency matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: heavy dependency matplotlib

    names = data["domains"]
    fig, axes = plt.subplots(2, len(names), figsize=(3.6 * len(names), 6.0), squeeze=False)
    sigmas = data["sigmas"]
    for col, name in enumerate(names):
        cells = data["results"][name]["sigmas"]
        for est in data["estimators"]:
            rows = [cells[f"{s:g}"]["estimators"][est] for s in sigmas]
            axes[0][col].errorbar(sigmas, [r["cosine_mean"] for r in rows],
                                  yerr=[r["cosine_std"] for r in rows], marker="o",
                                  capsize=3, label=est)
            axes[1][col].plot(sigmas, [max(r["variance_x_cost"], 1e-300) for r in rows],
                              "o-", label=est)
        axes[0][col].set_xscale("log")
        axes[0][col].set_title(f"{name} (c = {data['results'][name]['grad_cost']:.2f})")
        axes[0][col].set_ylabel("cosine to reference")
        axes[1][col].set_xscale("log")
        axes[1][col].set_yscale("log")
        axes[1][col].set_xlabel("sigma")
        axes[1][col].set_ylabel("variance x cost")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"equal budget {data['budget']:g} loss evaluations, {data['repeats']} repeats, "
                 f"reference {data['reference_samples']} samples, {data['n_inputs']} inputs",
                 fontsize=9)
    return save_figure(fig, path, dpi=110)
