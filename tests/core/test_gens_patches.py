"""Patch-form generators (HBox, Zonotope) equal the dense reference form.

``EngineOptions(gens_patches=False)`` runs every linear map on dense generator matrices, the
form the project used before (and the obvious implementation of the domains' rules); the patch form
must give the same bounds to 1e-10 in float64, the same gradients, the same values under
``torch.func.vmap``, and actually keep windows (not densify) on conv chains.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from core_helpers import DTYPE, assert_sound, mlp

import absdsl
from absdsl.compiler import gens
from absdsl.compiler.context import EngineOptions

DOMAINS = ["hbox", "zonotope"]


class Norm(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.linspace(0.1, 0.4, channels).view(channels, 1, 1))
        self.register_buffer("std", torch.linspace(0.2, 0.5, channels).view(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ResCat(nn.Module):
    """Normalisation, a strided conv, batch norm, a residual block whose skip is a 1x1 conv,
    a dilated conv, a grouped conv, average pooling, a concatenation and two linear layers."""

    def __init__(self, c_in: int = 2) -> None:
        super().__init__()
        self.norm = Norm(c_in)
        self.c1 = nn.Conv2d(c_in, 4, 3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, stride=1, padding=1)
        self.skip = nn.Conv2d(4, 4, 1)
        self.dil = nn.Conv2d(4, 4, 3, padding=2, dilation=2, bias=False)
        self.grp = nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2)
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(2 * 4 * 2 * 2, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.c1(self.norm(x))))
        r = torch.relu(self.c2(h) + self.skip(h))
        d = torch.relu(self.dil(r))
        g = self.pool(torch.relu(self.grp(d)))
        both = torch.cat([g, self.pool(self.grp(r))], 1)
        return self.fc2(torch.relu(self.fc1(both.flatten(1))))


def cnn3_like() -> nn.Sequential:
    # 6 channels after the first conv: rows go back through the second conv as a plain
    # (channels-last) transposed conv, not the sub-pixel form used for few channels
    return nn.Sequential(Norm(1), nn.Conv2d(1, 6, 5, stride=2, padding=2), nn.ReLU(),
                         nn.Conv2d(6, 4, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 10))


def _model(kind: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if kind == "rescat":
        model: nn.Module = ResCat()
        shape: tuple[int, ...] = (2, 8, 8)
        with torch.no_grad():
            model.bn1.running_mean.uniform_(-0.3, 0.3)
            model.bn1.running_var.uniform_(0.5, 2.0)
    elif kind == "cnn3":
        model, shape = cnn3_like(), (1, 16, 16)
    else:
        return mlp([6, 8, 7, 3], seed=1), (6,)
    return model.to(DTYPE).eval(), shape


def _bounds(prog, lo, hi, spec, patches: bool):
    prog = absdsl.compile(prog.model, prog.loaded, options=EngineOptions(gens_patches=patches))
    return prog(lo, hi), prog(lo, hi, spec=spec)


def _assert_same(got, want, tol: float) -> None:
    """Each (lower, upper) pair of ``got`` equals the one of ``want`` to ``tol``."""
    for (lb_g, ub_g), (lb_w, ub_w) in zip(got, want, strict=True):
        torch.testing.assert_close(lb_g, lb_w, rtol=tol, atol=tol)
        torch.testing.assert_close(ub_g, ub_w, rtol=tol, atol=tol)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("kind", ["rescat", "cnn3", "mlp"])
@pytest.mark.parametrize("eps", [1e-3, 0.2])
def test_patch_form_equals_dense_reference(domain, kind, eps) -> None:
    model, shape = _model(kind)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, *shape, generator=g, dtype=DTYPE)
    lo, hi = x - eps, x + eps
    n_out = 3 if kind != "cnn3" else 10
    spec = absdsl.margin_spec(torch.tensor([0, 1, 2]), n_out).to(DTYPE)
    prog = absdsl.compile(model, domain)
    dense = _bounds(prog, lo, hi, spec, patches=False)
    patch = _bounds(prog, lo, hi, spec, patches=True)
    _assert_same(patch, dense, 1e-10)
    assert_sound(model, *patch[1], lo, hi, spec)


@pytest.mark.parametrize("domain", DOMAINS)
def test_patch_form_gradients_equal_dense_reference(domain) -> None:
    model, shape = _model("rescat")
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, *shape, generator=g, dtype=DTYPE)
    lo, hi = x - 0.05, x + 0.05
    spec = absdsl.margin_spec(torch.tensor([0, 2]), 3).to(DTYPE)
    grads = []
    for flag in (False, True):
        model.zero_grad()
        prog = absdsl.compile(model, domain, options=EngineOptions(gens_patches=flag))
        lb, _ = prog(lo, hi, spec=spec)
        lb.sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    assert any(v.abs().max() > 0 for v in grads[1].values())
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("kind", ["rescat", "cnn3"])
def test_patch_form_under_vmap_equals_separate_calls(domain, kind) -> None:
    model, shape = _model(kind)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, *shape, generator=g, dtype=DTYPE)
    lo, hi = x - 0.05, x + 0.05
    spec = absdsl.margin_spec(torch.tensor([0, 2]), 3 if kind == "rescat" else 10).to(DTYPE)
    prog = absdsl.compile(model, domain)
    stacked = {k: v.detach().unsqueeze(0) + 0.05 * torch.randn((3, *v.shape), generator=g,
                                                                dtype=DTYPE)
               for k, v in model.named_parameters()}
    lb_v, ub_v = torch.func.vmap(lambda p: prog.functional(p, lo, hi, spec))(stacked)
    dense = absdsl.compile(model, domain, options=EngineOptions(gens_patches=False))
    for i in range(3):
        one = {k: v[i] for k, v in stacked.items()}
        lb, ub = dense.functional(one, lo, hi, spec)
        torch.testing.assert_close(lb_v[i], lb, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ub_v[i], ub, rtol=1e-10, atol=1e-10)


def test_conv_chain_keeps_windows() -> None:
    """After two convs of a 16x16 input the input block is still a patch block whose
    windows hold 11x11 pixels, not a dense matrix over all 256 of them."""
    lo = torch.zeros(2, 1, 16, 16, dtype=DTYPE)
    g = gens.Gens.fresh("x", lo + 0.1)
    w1 = torch.randn(4, 1, 5, 5, dtype=DTYPE)
    w2 = torch.randn(4, 4, 4, 4, dtype=DTYPE)
    g = g.conv2d(weight=w1, stride=(2, 2), padding=(2, 2), dilation=(1, 1), groups=1,
                 fn=lambda t: torch.conv2d(t, w1, None, 2, 2), compact=True)
    g = g.scale(torch.rand(2, 4, 8, 8, dtype=DTYPE))
    g = g.conv2d(weight=w2, stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=1,
                 fn=lambda t: torch.conv2d(t, w2, None, 2, 1), compact=True)
    block = g.blocks["x"]
    assert block.patch is not None and block.patch.window == (11, 11)
    assert block.data.shape == (2, 4, 4, 4, 1, 11, 11)
    assert g.shape == (4, 4, 4)


@pytest.mark.parametrize("domain", DOMAINS)
def test_rows_of_a_fully_connected_layer_in_chunks(domain, monkeypatch) -> None:
    """A fully connected layer on patch windows, one row per chunk, gives the same bounds."""
    model, shape = _model("cnn3")
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, *shape, generator=g, dtype=DTYPE)
    lo, hi = x - 0.05, x + 0.05
    spec = absdsl.margin_spec(torch.tensor([0, 4]), 10).to(DTYPE)
    prog = absdsl.compile(model, domain)
    whole = _bounds(prog, lo, hi, spec, patches=True)
    monkeypatch.setattr(gens, "_ROW_CHUNK_ELEMENTS", 1)
    chunked = _bounds(prog, lo, hi, spec, patches=True)
    _assert_same(chunked, whole, 1e-12)


class SharedConv(nn.Module):
    """One conv applied to the input scaled two ways: both branches' windows are the same
    kernel tensor, but over different origin values, so they must not be merged by factor."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x * 2.0)) + torch.relu(self.conv(x * -3.0))
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("domain", DOMAINS)
def test_one_kernel_over_differently_scaled_inputs(domain) -> None:
    torch.manual_seed(0)
    model = SharedConv().to(DTYPE).eval()
    g = torch.Generator().manual_seed(8)
    x = torch.rand(2, 1, 6, 6, generator=g, dtype=DTYPE)
    lo, hi = x - 0.1, x + 0.1
    spec = absdsl.margin_spec(torch.tensor([0, 1]), 2).to(DTYPE)
    prog = absdsl.compile(model, domain)
    dense = _bounds(prog, lo, hi, spec, patches=False)
    patch = _bounds(prog, lo, hi, spec, patches=True)
    _assert_same(patch, dense, 1e-10)
