"""L-infinity PGD with random restarts and a step-size schedule.

Used two ways: for adversarial accuracy (evaluation and the certification cascade, where a
found counterexample falsifies an input) and to make training points (PGD training, SABR,
MTL-IBP). The model is called as is; switch it to eval mode first if it has batch norm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PGDConfig:
    """steps per restart; step size = step_scale * eps / steps, multiplied by ``decay`` at
    each fraction of the steps listed in ``decay_at`` (coarse to fine). With the default
    scale 4 the steps before the first decay can cross the whole ball (2 eps) from any start.
    """

    steps: int = 20
    restarts: int = 1
    step_scale: float = 4.0
    decay_at: tuple[float, ...] = (0.5, 0.75)
    decay: float = 0.2
    loss: str = "margin"  # "margin" (max_{i!=y} f_i - f_y) or "ce"


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example max_{i != y} f_i - f_y: positive exactly when x is misclassified."""
    true = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y.unsqueeze(1), float("-inf"))
    return other.max(dim=1).values - true


def _per_example_loss(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    return margin_loss(logits, y)


def pgd_attack(
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    cfg: PGDConfig = PGDConfig(),
    clip: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
    center: torch.Tensor | None = None,
) -> torch.Tensor:
    """The strongest point found in the eps-ball around x (per example, over restarts).

    ``center`` defaults to x; SABR uses it to search a ball around x while keeping the box
    inside the clip range. The returned tensor is detached.
    """
    x = x.detach()
    if eps <= 0:
        return x.clone()
    lo = torch.clamp(x - eps, *clip)
    hi = torch.clamp(x + eps, *clip)
    best = x.clone()
    best_loss = torch.full((x.shape[0],), float("-inf"), dtype=x.dtype, device=x.device)
    milestones = [int(f * cfg.steps) for f in cfg.decay_at]
    for restart in range(max(1, cfg.restarts)):
        if restart == 0 and center is not None:
            adv = center.detach().clone()
        else:
            noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            adv = lo + (hi - lo) * noise
        step = cfg.step_scale * eps / max(cfg.steps, 1)
        for it in range(cfg.steps):
            if it in milestones:
                step *= cfg.decay
            adv.requires_grad_(True)
            with torch.enable_grad():
                loss = _per_example_loss(cfg.loss, forward(adv), y)
                (grad,) = torch.autograd.grad(loss.sum(), adv)
            adv = torch.minimum(torch.maximum(adv.detach() + step * grad.sign(), lo), hi)
        with torch.no_grad():
            final = _per_example_loss(cfg.loss, forward(adv), y)
        better = final > best_loss
        best[better] = adv[better]
        best_loss = torch.where(better, final, best_loss)
    return best.detach()


@torch.no_grad()
def adversarial_correct(
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    cfg: PGDConfig = PGDConfig(),
    clip: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example bools (robust to the attack, and the adversarial points found)."""
    adv = pgd_attack(forward, x, y, eps, cfg, clip, generator)
    correct = forward(adv).argmax(1) == y
    return correct & (forward(x).argmax(1) == y), adv
