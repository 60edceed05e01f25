"""The effect of PGPE's population size on the smoothed loss it sees (the paper's figure 7).

PGPE never evaluates the smoothed loss L_sigma itself: each generation it sees the mean loss
of its ``n_ps`` members theta +- eps_i (antithetic pairs, eps_i ~ N(0, sigma^2 I)) and the
zeroth-order gradient built from them. Along a line theta + t d (by default the DeepPoly
gradient, as in *Overcoming the Paradox of Certified Training with Gaussian Smoothing*,
figure 7) this measures, per population size:

* the **induced loss curve**: at every grid point the mean loss of an independent
  population of ``n_ps`` members (the smaller populations are the first members of the
  largest one at that point, so every curve is an honest ``n_ps``-sample estimate and one
  set of evaluations serves all sizes), with its 95% band;
* its **roughness**: the mean |second difference| of the curve over the grid, divided by
  |L(0)| (Monte-Carlo noise is rough, the smoothed loss itself is smooth, so roughness
  falls like 1 / sqrt(n_ps) until the noise is below the curve's own curvature);
* the **gradient** PGPE's update follows: the cosine of the raw antithetic estimate from
  ``n_ps`` members (the ``pgpe`` estimator of :mod:`~absdsl.training.smoothing.estimators`,
  a vector in an ``n_ps / 2``-dimensional subspace of the weights) to a reference smoothed
  gradient, over ``repeats`` independent populations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from absdsl.training.programs import canonical_domain
from absdsl.training.smoothing.estimators import antithetic_cv_gradient, pgpe_gradient
from absdsl.training.smoothing.params import ParamLayout

from .landscape import _losses, _objectives, direction_resolver, save_figure
from .tightness import AnalysisError, check_data, check_labels, float64_copy, num_outputs

DEFAULT_POPSIZES = (8, 32, 128, 512)
ROUGHNESS_RULE = (
    "roughness = mean over interior grid points of |L(t_i+1) - 2 L(t_i) + L(t_i-1)|, "
    "divided by |L(0)|, of the induced curve (the population's mean loss at each point)"
)
CURVE_RULE = (
    "induced curve at t_i: mean loss of n_ps members theta + t_i d +- eps_j (n_ps / 2 "
    "antithetic pairs, eps_j ~ N(0, sigma^2 I)), independent across grid points; the first "
    "n_ps members of the largest population at each point; band = mean +- 1.96 std / "
    "sqrt(n_ps)"
)
GRADIENT_RULE = (
    "cosine of the raw antithetic PGPE estimate sum_j eps_j (L(theta+eps_j) - "
    "L(theta-eps_j)) / (n_ps sigma^2) to the reference: the antithetic-cv estimate (centre "
    "gradient as control variate) from reference_samples perturbations; mean and std over "
    "repeats independent populations"
)


def check_options(popsizes: Sequence[int], sigma: float, span: float, points: int,
                  repeats: int, reference_samples: int) -> list[int]:
    """Every option checked before any work; returns the population sizes sorted."""
    sizes = list(popsizes)
    if not sizes:
        raise AnalysisError("no population size given")
    for n in sizes:
        if isinstance(n, bool) or int(n) != n or n < 2 or n % 2:
            raise AnalysisError(f"every population size must be an even integer >= 2 "
                                f"(antithetic pairs theta +- eps), got {n}")
    if len(set(sizes)) != len(sizes):
        raise AnalysisError(f"population sizes repeat: {sizes}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise AnalysisError(f"sigma must be a number > 0, got {sigma}")
    if not (math.isfinite(span) and span > 0):
        raise AnalysisError(f"span must be a positive number, got {span}")
    if int(points) != points or points < 3:
        raise AnalysisError(f"points must be an integer >= 3 (a second difference needs "
                            f"three), got {points}")
    if int(repeats) != repeats or repeats < 2:
        raise AnalysisError(f"repeats must be an integer >= 2 (a spread needs two), "
                            f"got {repeats}")
    if int(reference_samples) != reference_samples or reference_samples < 2 \
            or reference_samples % 2:
        raise AnalysisError(f"reference samples must be an even integer >= 2, "
                            f"got {reference_samples}")
    return sorted(int(n) for n in sizes)


def roughness(curve: Sequence[float], scale: float) -> float:
    """Mean |second difference| of ``curve`` divided by |scale| (see ROUGHNESS_RULE)."""
    v = torch.tensor(list(curve), dtype=torch.float64)
    second = (v[2:] - 2 * v[1:-1] + v[:-2]).abs()
    return float(second.mean()) / max(abs(scale), 1e-300)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else float("nan")


def population_effect(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                      domain: str = "deeppoly", direction: str | Path | torch.Tensor = "gradient",
                      gradient_domain: str = "deeppoly", sigma: float = 1e-3,
                      popsizes: Sequence[int] = DEFAULT_POPSIZES, span: float = 0.05,
                      points: int = 21, repeats: int = 4, reference_samples: int = 1024,
                      seed: int = 0, memory_budget_mb: float | None = None,
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The measurement (see the module docstring) as a JSON-ready dict."""
    sizes = check_options(popsizes, sigma, span, points, repeats, reference_samples)
    check_data(x, y)
    if not 0 <= eps <= 1:
        raise AnalysisError(f"eps must lie in [0, 1] (pixel units), got {eps}")
    if memory_budget_mb is not None and not memory_budget_mb > 0:
        raise AnalysisError(f"memory budget must be > 0 MiB, got {memory_budget_mb}")
    note = progress or (lambda message: None)
    name = canonical_domain(domain)
    model64 = float64_copy(model)
    for p in model64.parameters():
        p.requires_grad_(True)
    x64, y = x.detach().double(), y.detach().long()
    n_out = num_outputs(model64, x64)
    check_labels(y, n_out)
    resolve = direction_resolver(model64, direction, gradient_domain, seed,
                                 tuple(x64.shape[1:]))
    obj = _objectives(model64, [name], x64, y, eps, n_out, None, memory_budget_mb)[name]
    start = time.perf_counter()
    d, info = resolve(x64, y, eps, n_out)
    layout = ParamLayout.of(model64)
    theta = layout.flatten(model64).double().detach()
    grid = torch.linspace(-span, span, int(points), dtype=torch.float64)
    line = theta.unsqueeze(0) + grid.unsqueeze(1) * d.unsqueeze(0)
    loss0 = float(_losses(obj, theta.unsqueeze(0))[0])
    note(f"{name}: loss on {points} grid points")
    original = [float(v) for v in _losses(obj, line)]
    gen = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    largest = sizes[-1]
    note(f"{name}: {largest} members x {points} points (every population size)")
    rows = []
    for point in line:  # one population per grid point: the weights stay a few MiB
        noise = sigma * torch.randn(largest // 2, layout.size, generator=gen,
                                    dtype=torch.float64)
        pairs = torch.stack([point + noise, point - noise], dim=1)
        rows.append(_losses(obj, pairs.reshape(-1, layout.size)))
    draws = torch.stack(rows)
    _, centre = obj.gradients(theta.unsqueeze(0))
    note(f"{name}: reference gradient from {reference_samples} samples")
    reference = antithetic_cv_gradient(obj.losses, obj.gradients, theta, sigma,
                                       int(reference_samples), gen,
                                       centre_gradient=centre[0]).gradient
    per_size: dict[str, Any] = {}
    for n in sizes:
        sample = draws[:, :n]
        mean, std = sample.mean(1), sample.std(1)
        half = 1.96 * std / math.sqrt(n)
        note(f"{name}: PGPE gradient, {repeats} populations of {n}")
        cosines = torch.tensor([
            _cosine(pgpe_gradient(obj.losses, theta, sigma, n, gen).gradient, reference)
            for _ in range(int(repeats))])
        per_size[str(n)] = {
            "popsize": n, "mean": mean.tolist(), "lower": (mean - half).tolist(),
            "upper": (mean + half).tolist(),
            "standard_error": float((std / math.sqrt(n)).mean()) / max(abs(loss0), 1e-300),
            "roughness": roughness(mean.tolist(), loss0),
            "gradient_cosine_mean": float(cosines.mean()),
            "gradient_cosine_std": float(cosines.std()),
            "subspace_dimension": n // 2,
        }
    return {
        "domain": name, "eps": float(eps), "n_inputs": int(x64.shape[0]), "dtype": "float64",
        "sigma": float(sigma), "popsizes": sizes, "t": grid.tolist(), "loss": original,
        "loss_at_0": loss0, "original_roughness": roughness(original, loss0),
        "direction": info, "n_parameters": layout.size, "repeats": int(repeats),
        "reference_samples": int(reference_samples),
        "centre_gradient_cosine": _cosine(centre[0], reference),
        "per_popsize": per_size, "curve_rule": CURVE_RULE, "roughness_rule": ROUGHNESS_RULE,
        "gradient_rule": GRADIENT_RULE, "seconds": time.perf_counter() - start,
    }


def plot_popsize(data: Mapping[str, Any], path: str | Path) -> Path:
    """One panel per population size (induced curve, band, the original loss dashed), then
    roughness and gradient cosine against n_ps; every loss divided by L(0)."""
    import matplotlib  # lazy: heavy dependency matplotlib
    import matplotlib.ticker  # lazy: heavy dependency matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: heavy dependency matplotlib

    sizes = data["popsizes"]
    n_panels = len(sizes) + 1
    fig, axes = plt.subplots(1, n_panels, figsize=(3.3 * n_panels, 3.2), squeeze=False)
    ax = axes[0]
    t = data["t"]
    scale = data["loss_at_0"] if data["loss_at_0"] > 0 else 1.0
    for k, n in enumerate(sizes):
        cell = data["per_popsize"][str(n)]
        ax[k].plot(t, [v / scale for v in data["loss"]], "k--", lw=0.8, label="original")
        ax[k].plot(t, [v / scale for v in cell["mean"]], lw=1.2, label=f"n_ps = {n}")
        ax[k].fill_between(t, [v / scale for v in cell["lower"]],
                           [v / scale for v in cell["upper"]], alpha=0.25, lw=0)
        ax[k].set_title(f"({chr(97 + k)}) n_ps = {n}, sigma = {data['sigma']:g}")
        ax[k].set_xlabel("t (weight-space distance along d)")
    ax[0].set_ylabel("loss / loss at t = 0")
    ax[0].legend(fontsize=7)
    last = ax[-1]
    rough = [data["per_popsize"][str(n)]["roughness"] for n in sizes]
    last.loglog(sizes, rough, "o-", label="roughness of the curve")
    last.axhline(data["original_roughness"], color="k", ls="--", lw=0.8,
                 label="roughness of the original")
    last.set_xticks(sizes, labels=[str(n) for n in sizes])
    last.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    last.set_xlabel("population size n_ps")
    last.set_ylabel("roughness (|2nd difference| / L(0))")
    twin = last.twinx()
    cos = [data["per_popsize"][str(n)]["gradient_cosine_mean"] for n in sizes]
    err = [data["per_popsize"][str(n)]["gradient_cosine_std"] for n in sizes]
    twin.errorbar(sizes, cos, yerr=err, color="C3", marker="s", capsize=3,
                  label="PGPE gradient cosine")
    twin.set_ylabel("cosine to the reference gradient", color="C3")
    last.set_title(f"({chr(97 + len(sizes))}) noise and gradient vs n_ps")
    last.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{data['domain']} loss along the {data['direction']['detail']}, eps = "
                 f"{data['eps']:g}, {data['n_inputs']} inputs, {data['n_parameters']} weights",
                 fontsize=9)
    return save_figure(fig, path)
