"""Shared helpers for the core tests (float64 throughout, see docs/testing.md)."""

from __future__ import annotations

import torch
import torch.nn as nn

from absdsl.soundness import sample_points, tolerance

DTYPE = torch.float64


def mlp(widths: list[int], seed: int = 0, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear-act-...-Linear in float64, eval mode, deterministic weights."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        lin = nn.Linear(a, b).to(DTYPE)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g, dtype=DTYPE))
            lin.bias.copy_(torch.randn(b, generator=g, dtype=DTYPE) * 0.5)
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(act())
    return nn.Sequential(*layers).eval()


class Fn(nn.Module):
    """A torch function as a module (a model of one op, or a lambda inside a Sequential)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def box(shape: tuple[int, ...], batch: int = 3, eps: float = 0.3, seed: int = 0
        ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g, dtype=DTYPE)
    return x - eps, x + eps


def assert_sound(model: nn.Module, lb: torch.Tensor, ub: torch.Tensor, lo: torch.Tensor,
                 hi: torch.Tensor, spec: torch.Tensor | None = None) -> None:
    """Concrete outputs at corners/uniform points of [lo, hi] lie in [lb, ub] (+ tol)."""
    pts = sample_points(lo, hi, n_uniform=64)
    b, p = pts.shape[:2]
    with torch.no_grad():
        out = model(pts.reshape(b * p, *lo.shape[1:])).reshape(b, p, -1)
    if spec is not None:
        out = torch.einsum("bkn,bpn->bpk", spec, out)
    lb, ub = lb.reshape(b, 1, -1), ub.reshape(b, 1, -1)
    tol = tolerance(out, lb, ub)
    assert not torch.isnan(lb).any() and not torch.isnan(ub).any()
    assert (out >= lb - tol).all(), f"lower bound violated by {float((lb - out).max())}"
    assert (out <= ub + tol).all(), f"upper bound violated by {float((out - ub).max())}"
