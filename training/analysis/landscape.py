"""Continuity and sensitivity of a domain's loss in weight space (issue 6 item 2).

Along a unit direction d in weight space this measures

* the loss ``L(theta + t d)`` on a fine grid of t, with its jumps (discontinuities) found by
  :func:`find_jumps`;
* the Gaussian-smoothed loss ``L_sigma(t) = E[L(theta + t d + sigma eps)]``, eps ~ N(0, I),
  for several sigma, each from n samples with a 95% confidence band;
* the sensitivity ``S(r) = mean_u |L(theta + r u) - L(theta)| / r`` over random unit
  directions u, for several radii r: bounded as r -> 0 for a Lipschitz loss, growing like
  1/r near a discontinuity.

The loss is the one certified training minimises (``training/objective.py:
certified_loss``), evaluated in float64 for whole populations of weight vectors at once by
the PGPE code's :class:`~absdsl.training.smoothing.fitness.PopulationObjective`
(``torch.func.vmap`` over ``prog.functional`` in memory-bounded chunks).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from absdsl.training.objective import certified_loss
from absdsl.training.programs import canonical_domain
from absdsl.training.smoothing.fitness import PopulationObjective
from absdsl.training.smoothing.params import ParamLayout

from .tightness import (
    AnalysisError,
    check_data,
    check_labels,
    compile_domain,
    float64_copy,
    num_outputs,
)

DEFAULT_SIGMAS = (1e-6, 5e-5, 5e-4)  # the paradox paper's figure 6
DEFAULT_RADII = (1e-5, 1e-4, 1e-3, 1e-2)
DEFAULT_DOMAINS = ("box", "crown-ibp", "deeppoly")  # figure 6's relaxations
JUMP_RULE = (
    "interval [t_i, t_i+1] holds a jump when |L(t_i+1) - L(t_i)| > ratio * s_i and > "
    "min_jump * |L(0)|, where s_i is the larger of the medians of |L(t_j+1) - L(t_j)| over the "
    "`window` intervals on each side (the local slope times the grid step): a jump must "
    "exceed the change that the local slope makes over `ratio` grid steps, so kinks "
    "(slope changes) are never reported"
)
SMOOTHING_RULE = (
    "L_sigma(t) = mean over n independent draws eps ~ N(0, I) of L(theta + t d + sigma eps), "
    "per grid point; band = mean +- 1.96 std / sqrt(n) (std with Bessel's correction)"
)
SENSITIVITY_RULE = (
    "S(r) = mean over m independent isotropic unit directions u (Gaussian, normalised to "
    "L2 norm 1 over all trainable parameters) of |L(theta + r u) - L(theta)| / r"
)
DIRECTION_RULE = (
    "every direction is scaled to L2 norm 1 over all trainable parameters, so t is the "
    "Euclidean distance moved in weight space; random: Gaussian, each filter (row of a "
    "weight matrix or kernel, or whole 1-D tensor) rescaled to the norm of the same filter "
    "of theta (filter normalisation, Li et al. 2018), then normalised globally; gradient: "
    "the gradient of the chosen domain's loss at theta (t > 0 ascends); file: a .pt dict "
    "parameter name -> tensor"
)


@dataclass
class Direction:
    """A unit vector in the flat trainable-parameter space of the model."""

    kind: str  # random | gradient | file
    vector: torch.Tensor  # flat, float64, L2 norm 1
    detail: str  # seed, domain or file


@dataclass
class Jump:
    index: int  # the interval [t[index], t[index + 1]]
    t_left: float
    t_right: float
    delta: float  # L(t_right) - L(t_left)
    local_scale: float  # s_i of the rule


@dataclass
class LandscapeResult:
    """Everything measured, as plain numbers (``to_json``) ready for plotting."""

    domains: list[str]
    eps: float
    n_inputs: int
    direction: dict[str, Any]
    t: list[float]
    loss: dict[str, list[float]]
    loss_at_0: dict[str, float]
    jumps: dict[str, list[Jump]]
    smoothed: dict[str, dict[str, dict[str, Any]]]  # domain -> f"{sigma:g}" -> curves
    sigmas: list[float]
    samples: int
    radii: list[float]
    sensitivity: dict[str, dict[str, list[float]]]  # domain -> mean/std/max per radius
    sensitivity_samples: int
    jump_options: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "domains": self.domains, "eps": self.eps, "n_inputs": self.n_inputs,
            "dtype": "float64", "direction": self.direction,
            "direction_rule": DIRECTION_RULE,
            "t": self.t, "loss": self.loss, "loss_at_0": self.loss_at_0,
            "jumps": {d: [j.__dict__ for j in js] for d, js in self.jumps.items()},
            "jump_rule": JUMP_RULE, "jump_options": self.jump_options,
            "sigmas": self.sigmas, "samples": self.samples, "smoothed": self.smoothed,
            "smoothing_rule": SMOOTHING_RULE,
            "sensitivity": {"radii": self.radii, "samples": self.sensitivity_samples,
                            "rule": SENSITIVITY_RULE, "per_domain": self.sensitivity},
            "figure_normalisation": "in the figure every loss curve is divided by its "
                                    "domain's L(0) (the unperturbed weights), as in the "
                                    "paper's figure 6",
            "seconds": self.seconds,
        }


# -- checks --------------------------------------------------------------------------------
def check_options(span: float, points: int, sigmas: Sequence[float], samples: int,
                  radii: Sequence[float], sensitivity_samples: int) -> None:
    """Every numeric option, checked before any work (one clear message each)."""
    _check_positive([span], "span must be a positive number")
    _check_integer(points, 3, "points")
    _check_positive(sigmas, "every sigma must be > 0")
    _check_integer(samples, 2, "samples", " (a confidence band needs a spread)")
    _check_positive(radii, "every sensitivity radius must be > 0")
    _check_integer(sensitivity_samples, 1, "sensitivity samples")


def _check_positive(values: Sequence[float], message: str) -> None:
    for v in values:
        if not v > 0 or not math.isfinite(v):
            raise AnalysisError(f"{message}, got {v}")


def _check_integer(value: float, least: int, name: str, why: str = "") -> None:
    if int(value) != value or value < least:
        raise AnalysisError(f"{name} must be an integer >= {least}{why}, got {value}")


# -- directions ----------------------------------------------------------------------------
def _unit(flat: torch.Tensor, what: str) -> torch.Tensor:
    norm = float(flat.norm())
    if not math.isfinite(norm):
        raise AnalysisError(f"the {what} direction has a NaN or infinite entry")
    if norm == 0.0:
        raise AnalysisError(f"the {what} direction is zero: no line to walk along")
    return flat / norm


def random_direction(model: nn.Module, seed: int = 0) -> torch.Tensor:
    """Filter-normalised Gaussian direction (Li et al. 2018), then scaled to norm 1."""

    layout = ParamLayout.of(model)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(int(seed))
    pieces = []
    for name in layout.names:
        p = params[name].detach().double().cpu()
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        rows_p = p.reshape(p.shape[0], -1) if p.dim() >= 2 else p.reshape(1, -1)
        rows_g = g.reshape(rows_p.shape)
        scale = rows_p.norm(dim=1, keepdim=True) / rows_g.norm(dim=1, keepdim=True).clamp_min(
            1e-300)
        pieces.append((rows_g * scale).reshape(-1))
    flat = torch.cat(pieces)
    if float(flat.norm()) == 0.0:  # all-zero weights: no filter scale to copy
        flat = torch.randn(flat.shape, generator=gen, dtype=torch.float64)
    return _unit(flat, "random")


def load_direction(path: str | Path, model: nn.Module) -> torch.Tensor:
    """A .pt dict name -> tensor (weights_only), shape-checked per trainable parameter."""

    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"direction file {path} does not exist (use 'random', 'gradient' "
                            f"or the path of a .pt dict of tensors)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure means "not a readable direction"
        raise AnalysisError(f"direction file {path} is not a readable torch file of plain "
                            f"tensors: {type(err).__name__}: {str(err)[:200]}") from err
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor)
                                               for v in obj.values()):
        raise AnalysisError(f"direction file {path} must hold a dict parameter name -> tensor, "
                            f"found {type(obj).__name__}")
    layout = ParamLayout.of(model)
    missing = [n for n in layout.names if n not in obj]
    extra = [n for n in obj if n not in layout.names]
    if missing or extra:
        raise AnalysisError(
            f"direction file {path} does not fit the model: missing parameters "
            f"{missing or 'none'}, unknown names {extra or 'none'} (the model has "
            f"{layout.describe()})")
    pieces = []
    for name, shape in zip(layout.names, layout.shapes, strict=True):
        value = obj[name]
        if tuple(value.shape) != shape:
            raise AnalysisError(f"direction file {path}: parameter {name!r} has shape "
                                f"{tuple(value.shape)} in the file but {shape} in the model")
        if not value.is_floating_point():
            raise AnalysisError(f"direction file {path}: parameter {name!r} is {value.dtype}, "
                                f"not a floating-point tensor")
        pieces.append(value.detach().double().reshape(-1))
    return _unit(torch.cat(pieces), f"file {path}")


def gradient_direction(model64: nn.Module, prog: Any, x: torch.Tensor, y: torch.Tensor,
                       eps: float, num_classes: int) -> torch.Tensor:
    """The normalised gradient of a domain's certified loss at the model's weights."""

    layout = ParamLayout.of(model64)
    params = dict(model64.named_parameters())
    model64.zero_grad(set_to_none=True)
    loss = certified_loss(prog, None, x, y, eps, num_classes=num_classes)
    grads = torch.autograd.grad(loss, [params[n] for n in layout.names], allow_unused=True)
    flat = torch.cat([(torch.zeros_like(params[n]) if g is None else g).reshape(-1)
                      for n, g in zip(layout.names, grads, strict=True)])
    return _unit(flat.detach(), "gradient")


def direction_resolver(model64: nn.Module, direction: str | Path | torch.Tensor,
                       gradient_domain: str, seed: int, input_shape: tuple[int, ...]) -> Any:
    """Check ``direction`` now (compiling the gradient's domain for the model) and return
    ``(x, y, eps, n_out) -> (unit direction, description)``, which does the work later: so
    every input is checked before the first loss is evaluated."""

    layout = ParamLayout.of(model64)
    if isinstance(direction, torch.Tensor):
        if direction.shape != (layout.size,):
            raise AnalysisError(f"a direction tensor must be flat with {layout.size} entries "
                                f"(the trainable parameters), got shape "
                                f"{tuple(direction.shape)}")
        d = _unit(direction.detach().double().cpu(), "given")
        info: dict[str, Any] = {"kind": "tensor", "detail": "given as a flat tensor"}
    elif direction == "random":
        d = random_direction(model64, seed)
        info = {"kind": "random", "detail": f"seed {seed}"}
    elif direction == "gradient":
        grad_prog = compile_domain(model64, gradient_domain, input_shape)
        info = {"kind": "gradient", "n_parameters": layout.size,
                "detail": f"gradient of the {canonical_domain(gradient_domain)} loss at theta"}

        def gradient(x: torch.Tensor, y: torch.Tensor, eps: float,
                     n_out: int) -> tuple[torch.Tensor, dict[str, Any]]:
            return gradient_direction(model64, grad_prog, x, y, eps, n_out), info

        return gradient
    else:
        d = load_direction(direction, model64)
        info = {"kind": "file", "detail": str(direction)}
    info["n_parameters"] = layout.size

    def fixed(x: torch.Tensor, y: torch.Tensor, eps: float,
              n_out: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return d, info

    return fixed


def check_direction_option(direction: str, inputs: int) -> None:
    """The CLI's ``--direction`` and ``--inputs``, checked before the run is loaded."""
    if inputs < 1:
        raise AnalysisError(f"--inputs must be >= 1, got {inputs}")
    if direction not in ("random", "gradient") and not Path(direction).is_file():
        raise AnalysisError(f"--direction must be 'random', 'gradient' or an existing .pt "
                            f"file; {direction!r} is none of these")


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt  # lazy: heavy dependency matplotlib

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


# -- jumps ---------------------------------------------------------------------------------
def find_jumps(t: Sequence[float], loss: Sequence[float], ratio: float = 10.0,
               window: int = 3, min_jump: float = 1e-6) -> list[Jump]:
    """Grid intervals where the loss changes far more than its local slope explains.

    See :data:`JUMP_RULE`; ``min_jump`` is relative to |L| at the middle of the grid
    (t = 0 for a symmetric grid), a floor below which changes are numerical noise.
    """
    if ratio <= 1:
        raise AnalysisError(f"jump ratio must be > 1, got {ratio}")
    if window < 1:
        raise AnalysisError(f"jump window must be >= 1, got {window}")
    values = torch.tensor(list(loss), dtype=torch.float64)
    diffs = values[1:] - values[:-1]
    size = diffs.abs()
    floor = min_jump * max(float(values[len(values) // 2].abs()), 1e-300)
    found: list[Jump] = []
    for i in range(size.shape[0]):
        left, right = size[max(0, i - window):i], size[i + 1:i + 1 + window]
        scale = max(float(left.median()) if left.numel() else 0.0,
                    float(right.median()) if right.numel() else 0.0)
        if float(size[i]) > ratio * scale and float(size[i]) > floor:
            found.append(Jump(i, float(t[i]), float(t[i + 1]), float(diffs[i]), scale))
    return found


# -- the measurement -----------------------------------------------------------------------
def _objectives(model64: nn.Module, domains: Sequence[str], x: torch.Tensor, y: torch.Tensor,
                eps: float, num_classes: int, chunk_size: int | None,
                memory_budget_mb: float | None) -> dict[str, Any]:

    out: dict[str, Any] = {}
    shape = tuple(x.shape[1:])
    for name in domains:
        prog = compile_domain(model64, name, shape)
        budget = None if memory_budget_mb is None else int(memory_budget_mb * 2**20)
        obj = PopulationObjective(model64, {name: prog}, name, num_classes,
                                  chunk_size=chunk_size, memory_budget=budget)
        obj.set_batch(x, y, eps)
        out[name] = obj
    return out


def _losses(obj: Any, values: torch.Tensor, block_bytes: int = 64 * 2**20) -> torch.Tensor:
    """Losses of flat weight vectors [P, n], in blocks that bound the stacked weights."""
    per = max(values.shape[1] * values.element_size(), 1)
    step = max(1, block_bytes // per)
    return torch.cat([obj.losses(values[s:s + step]) for s in range(0, values.shape[0], step)])


def loss_landscape(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                   domains: Sequence[str] = DEFAULT_DOMAINS,
                   direction: str | Path | torch.Tensor = "random",
                   gradient_domain: str = "deeppoly", span: float = 0.05, points: int = 41,
                   sigmas: Sequence[float] = DEFAULT_SIGMAS, samples: int = 16,
                   radii: Sequence[float] = DEFAULT_RADII, sensitivity_samples: int = 8,
                   seed: int = 0, jump_ratio: float = 10.0, jump_window: int = 3,
                   min_jump: float = 1e-6, chunk_size: int | None = None,
                   memory_budget_mb: float | None = None,
                   device: str | torch.device = "cpu", progress: Any = None
                   ) -> LandscapeResult:
    """Loss, jumps, smoothed loss and sensitivity of each domain along one direction.

    ``direction``: "random", "gradient" (of ``gradient_domain``'s loss), a .pt file path, or
    a flat tensor over the trainable parameters. Every input is checked (and every domain
    compiled) before the first loss is evaluated. ``progress(message)`` is called per stage.
    """

    check_data(x, y)
    if not 0 <= eps <= 1:
        raise AnalysisError(f"eps must lie in [0, 1] (pixel units), got {eps}")
    check_options(span, points, sigmas, samples, radii, sensitivity_samples)
    _check_run_options(memory_budget_mb, jump_ratio, jump_window, min_jump)
    names = [canonical_domain(d) for d in domains]
    if not names:
        raise AnalysisError("no domain given")
    note = progress or (lambda message: None)
    dev = _device(device)
    model64 = float64_copy(model).to(dev)
    for p in model64.parameters():
        p.requires_grad_(True)
    x64 = x.detach().double().to(dev)
    y = y.detach().long().to(dev)
    n_out = num_outputs(model64, x64)
    check_labels(y, n_out)
    layout = ParamLayout.of(model64)
    resolve = direction_resolver(model64, direction, gradient_domain, seed,
                                 tuple(x64.shape[1:]))
    objectives = _objectives(model64, names, x64, y, eps, n_out, chunk_size, memory_budget_mb)
    d, info = resolve(x64, y, eps, n_out)
    d = d.to(dev)
    theta = layout.flatten(model64).double()
    grid = torch.linspace(-span, span, int(points), dtype=torch.float64, device=dev)
    line = theta.unsqueeze(0) + grid.unsqueeze(1) * d.unsqueeze(0)
    timings: dict[str, float] = {}
    loss: dict[str, list[float]] = {}
    loss0: dict[str, float] = {}
    jumps: dict[str, list[Jump]] = {}
    smoothed: dict[str, dict[str, dict[str, Any]]] = {}
    sensitivity: dict[str, dict[str, list[float]]] = {}
    for k, name in enumerate(names):
        obj = objectives[name]
        start = time.perf_counter()
        note(f"{name}: loss on {points} grid points")
        centre = float(_losses(obj, theta.unsqueeze(0))[0])
        values = _losses(obj, line)
        loss[name] = [float(v) for v in values]
        loss0[name] = centre
        jumps[name] = find_jumps(grid.tolist(), loss[name], jump_ratio, jump_window, min_jump)
        smoothed[name] = {}
        for j, sigma in enumerate(sigmas):
            note(f"{name}: smoothed loss, sigma {sigma:g}, {samples} samples x {points} points")
            gen = torch.Generator().manual_seed(int(seed) * 7919 + 101 * k + j + 1)
            smoothed[name][f"{sigma:g}"] = _smoothed_loss(obj, line, float(sigma), int(samples),
                                                          gen)
        note(f"{name}: sensitivity at {len(radii)} radii, {sensitivity_samples} directions")
        gen = torch.Generator().manual_seed(int(seed) * 7919 + 101 * k + 997)
        sensitivity[name] = _sensitivity(obj, theta, centre, radii, int(sensitivity_samples),
                                         gen)
        timings[name] = time.perf_counter() - start
    return LandscapeResult(
        domains=names, eps=float(eps), n_inputs=int(x64.shape[0]), direction=info,
        t=grid.tolist(), loss=loss, loss_at_0=loss0, jumps=jumps, smoothed=smoothed,
        sigmas=[float(s) for s in sigmas], samples=int(samples),
        radii=[float(v) for v in radii], sensitivity=sensitivity,
        sensitivity_samples=int(sensitivity_samples),
        jump_options={"ratio": jump_ratio, "window": jump_window, "min_jump": min_jump},
        seconds=timings,
    )


def _check_run_options(memory_budget_mb: float | None, jump_ratio: float, jump_window: int,
                       min_jump: float) -> None:
    if memory_budget_mb is not None and not memory_budget_mb > 0:
        raise AnalysisError(f"memory budget must be > 0 MiB, got {memory_budget_mb}")
    if jump_ratio <= 1 or jump_window < 1 or min_jump < 0:
        raise AnalysisError(f"jump options: ratio > 1, window >= 1, min_jump >= 0; got "
                            f"{jump_ratio}, {jump_window}, {min_jump}")


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise AnalysisError(f"unknown device {device!r}: {err}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AnalysisError(f"device {device!r} was asked for but CUDA is not available")
    return dev


def _smoothed_loss(obj: Any, line: torch.Tensor, sigma: float, samples: int,
                   gen: torch.Generator) -> dict[str, Any]:
    """Monte-Carlo mean of the loss under N(0, sigma^2) weight noise at every grid point."""
    points, size = line.shape
    noise = torch.randn(points, samples, size, generator=gen,
                        dtype=torch.float64).to(line.device)
    members = (line.unsqueeze(1) + sigma * noise).reshape(-1, size)
    draws = _losses(obj, members).reshape(points, samples)
    mean, std = draws.mean(1), draws.std(1)
    half = 1.96 * std / math.sqrt(samples)
    return {"sigma": sigma, "n": samples, "mean": mean.tolist(), "std": std.tolist(),
            "lower": (mean - half).tolist(), "upper": (mean + half).tolist()}


def _sensitivity(obj: Any, theta: torch.Tensor, centre: float, radii: Sequence[float],
                 samples: int, gen: torch.Generator) -> dict[str, list[float]]:
    """|L(theta + r u) - L(theta)| / r over random unit directions u, per radius r."""
    size = theta.shape[0]
    u = torch.randn(samples, size, generator=gen, dtype=torch.float64).to(theta.device)
    u = u / u.norm(dim=1, keepdim=True)
    r = torch.tensor(list(radii), dtype=torch.float64, device=theta.device)
    members = (theta + r.view(-1, 1, 1) * u.unsqueeze(0)).reshape(-1, size)
    change = (_losses(obj, members).reshape(len(radii), -1) - centre).abs() / r.view(-1, 1)
    return {"mean": change.mean(1).tolist(),
            "std": (change.std(1) if change.shape[1] > 1 else torch.zeros_like(r)).tolist(),
            "max": change.max(1).values.tolist()}


# -- the figure ----------------------------------------------------------------------------
def plot_landscape(data: Mapping[str, Any], path: str | Path) -> Path:
    """PNG laid out like the paper's figure 6: (a) the loss, one panel per sigma, then S(r).

    ``data`` is :meth:`LandscapeResult.to_json`. Every curve is divided by its domain's
    L(0); jumps are marked on panel (a); the shaded bands are the 95% confidence bands.
    """
    import matplotlib  # lazy: heavy dependency matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: heavy dependency matplotlib

    sigmas = [f"{s:g}" for s in data["sigmas"]]
    n_panels = 2 + len(sigmas)
    fig, axes = plt.subplots(1, n_panels, figsize=(3.4 * n_panels, 3.2), squeeze=False)
    axes = axes[0]
    t = data["t"]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    letters = "abcdefghijklmnopqrstuvwxyz"
    for k, name in enumerate(data["domains"]):
        colour = colours[k % len(colours)]
        base = data["loss_at_0"][name]
        scale = base if base > 0 else 1.0
        loss = [v / scale for v in data["loss"][name]]
        axes[0].plot(t, loss, color=colour, lw=1.2, label=name)
        marks = [j["t_right"] for j in data["jumps"][name]]
        if marks:
            idx = [t.index(m) for m in marks]
            axes[0].plot(marks, [loss[i] for i in idx], "x", color=colour, ms=6)
        for p, key in enumerate(sigmas, start=1):
            curve = data["smoothed"][name][key]
            mean = [v / scale for v in curve["mean"]]
            axes[p].plot(t, mean, color=colour, lw=1.2, label=name)
            axes[p].fill_between(t, [v / scale for v in curve["lower"]],
                                 [v / scale for v in curve["upper"]], color=colour, alpha=0.25,
                                 lw=0)
        sens = data["sensitivity"]
        axes[-1].loglog(sens["radii"], sens["per_domain"][name]["mean"], "o-", color=colour,
                        label=name)
    axes[0].set_title(f"({letters[0]}) original")
    for p, key in enumerate(sigmas, start=1):
        axes[p].set_title(f"({letters[p]}) sigma = {key}, n = {data['samples']}")
    axes[-1].set_title(f"({letters[n_panels - 1]}) sensitivity")
    for ax in axes[:-1]:
        ax.set_xlabel("t (weight-space distance along d)")
    axes[0].set_ylabel("loss / loss at t = 0")
    axes[-1].set_xlabel("radius r")
    axes[-1].set_ylabel("mean |L(theta + r u) - L(theta)| / r")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{data['direction']['kind']} direction, eps = {data['eps']:g}, "
                 f"{data['n_inputs']} inputs; x: jumps", fontsize=9)
    return save_figure(fig, path)
