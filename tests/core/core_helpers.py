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


def assert_sound_and_exact(model: nn.Module, domain: str, shape: tuple[int, ...] = (3,),
                           eps: float = 0.3) -> None:
    """``domain``'s bounds of ``model`` on a box of radius ``eps`` contain its outputs at
    sampled points, and on a degenerate box (a point) equal its output (to 1e-9)."""
    import absdsl

    program = absdsl.compile(model, domain)
    lo, hi = box(shape, batch=3, eps=eps, seed=1)
    lb, ub = program(lo, hi)
    assert_sound(model, lb, ub, lo, hi)
    x = box(shape, batch=2, eps=0.0, seed=2)[0]
    pl, pu = program(x, x.clone())
    with torch.no_grad():
        y = model(x)
    torch.testing.assert_close(pl, y, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pu, y, rtol=1e-9, atol=1e-9)
