"""Review of the new ops: the cases a review found failing (float64, degenerate and small
boxes), kept as regression tests."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import absdsl
from absdsl.domains import NAMES as DOMAINS

DTYPE = torch.float64


class _Interp(nn.Module):
    def __init__(self, **kw: object) -> None:
        super().__init__()
        self.kw = kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, **self.kw).flatten(1)


# F.interpolate with a non-integer scale_factor: torch samples at 1 / scale_factor, the
# front end re-traces the map with size=<output shape>, which samples at in/out instead.
@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("kw", [dict(scale_factor=0.6, mode="bilinear", align_corners=False),
                                dict(scale_factor=(2.0, 0.7), mode="nearest")],
                         ids=["bilinear-0.6", "nearest-2x0.7"])
def test_interpolate_scale_factor_exact_on_a_point(domain: str, kw: dict) -> None:
    model = _Interp(**kw).eval()
    x = torch.arange(20, dtype=DTYPE).reshape(1, 1, 4, 5) ** 2
    lb, ub = absdsl.compile(model, domain)(x, x)
    y = model(x)
    torch.testing.assert_close(lb, y, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ub, y, rtol=1e-9, atol=1e-9)


# The same through nn.Upsample (the module path of the front end).
@pytest.mark.parametrize("domain", DOMAINS)
def test_upsample_scale_factor_exact_on_a_point(domain: str) -> None:
    model = nn.Sequential(nn.Upsample(scale_factor=1.5, mode="bilinear"), nn.Flatten()).eval()
    x = torch.arange(25, dtype=DTYPE).reshape(1, 1, 5, 5) ** 2
    lb, ub = absdsl.compile(model, domain)(x, x)
    torch.testing.assert_close(lb, model(x), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ub, model(x), rtol=1e-9, atol=1e-9)


class _LogSoftmax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(30 * x, dim=-1)


# log_softmax with large logits: s = exp(30 (x1 - x0)) spans [exp(64.4), exp(100.4)]; the
# linear sum over j != i, bounded as centre - radius, rounds the lower end of s at the ulp of
# exp(100.4) (9.90e27 for the true 9.45e27), so -log1p(s) gets the upper bound -64.4627
# below the output -64.416 at a corner (every domain: their intermediate bounds of s).
@pytest.mark.parametrize("domain", DOMAINS)
def test_log_softmax_large_logits_sound(domain: str) -> None:
    model = _LogSoftmax().eval()
    lo = torch.tensor([[-2.4788, 0.2684]], dtype=DTYPE)
    hi = lo + 0.6
    lb, ub = absdsl.compile(model, domain)(lo, hi)
    x = torch.tensor([[hi[0, 0], lo[0, 1]]], dtype=DTYPE)  # a corner of the box
    y = model(x)
    tol = 1e-9 * (1 + y.abs())
    assert (y <= ub + tol).all(), f"upper bound {ub.tolist()} below the output {y.tolist()}"
    assert (y >= lb - tol).all(), f"lower bound {lb.tolist()} above the output {y.tolist()}"


class _Fn(nn.Module):
    def __init__(self, fn: object) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _exact_or_clear_error(fn: object) -> None:
    """Compiles and is exact on a point, or refuses with an AbsdslError that names the cause."""
    model = _Fn(fn).eval()
    x = torch.arange(12, dtype=DTYPE).reshape(2, 6)
    try:
        lb, ub = absdsl.compile(model, "box")(x, x)
    except absdsl.AbsdslError as e:
        # x is no constant, and the user never wrote the front end's internal types
        assert "constants" not in str(e) and "_Meta" not in str(e), f"misleading message: {e}"
        return
    torch.testing.assert_close(lb, model(x), rtol=0, atol=0)
    torch.testing.assert_close(ub, model(x), rtol=0, atol=0)


# A slice of chunk's tuple: the front end calls int() on the slice (a bare TypeError).
def test_slice_of_chunks_exact_or_clear_error() -> None:
    _exact_or_clear_error(lambda x: torch.cat(x.chunk(3, -1)[::-1], -1))


# chunk's tuple passed whole to cat/stack (both documented ops): refused as "a computation on
# constants that absdsl cannot replay", though every part depends on the input.
@pytest.mark.parametrize("join", [lambda t: torch.cat(t, -1), lambda t: torch.stack(t, 0).sum(0)],
                         ids=["cat", "stack"])
def test_join_of_whole_chunk_tuple_exact_or_clear_error(join: object) -> None:
    _exact_or_clear_error(lambda x: join(x.chunk(3, -1)))


# Tensor.mT (an attribute, no call): refused as "a computation on constants", or with
# "operand of type _Meta has no rule" when the result is multiplied by the input.
@pytest.mark.parametrize("fn", [lambda x: x.unflatten(1, (2, 3)).mT.flatten(1),
                                lambda x: x.unflatten(1, (2, 3)).mT.flatten(1) * x],
                         ids=["mT", "mT-times-x"])
def test_tensor_mT_exact_or_clear_error(fn: object) -> None:
    _exact_or_clear_error(fn)


class _WideSoftmax(nn.Module):
    def __init__(self, log: bool) -> None:
        super().__init__()
        self.log = log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.log_softmax if self.log else torch.softmax
        return f(400 * x, dim=-1)


# Logit differences up to 800: exp overflows to inf. Box keeps infinite bounds (every op
# after the exponentials is monotone: 1 / (1 + s) -> 0, -log1p(s) -> -inf); the relational
# domains would compute inf - inf, and refuse with a clear InputError instead of returning
# NaN bounds.
@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_overflowing_logits_bounded(domain: str, log: bool) -> None:
    model = _WideSoftmax(log).eval()
    lo, hi = -torch.ones(1, 3, dtype=DTYPE), torch.ones(1, 3, dtype=DTYPE)
    prog = absdsl.compile(model, domain)
    if domain != "box":
        with pytest.raises(absdsl.InputError, match="overflowed"):
            prog(lo, hi)
        return
    lb, ub = prog(lo, hi)
    assert not torch.isnan(lb).any() and not torch.isnan(ub).any(), (lb, ub)
    corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=DTYPE)] * 3)
    y = model(corners)
    assert (y >= lb - 1e-9).all() and (y <= ub + 1e-9).all()
