"""Dense back-substitution rows: channels-last storage and sparse relaxation lines.

Outside vmap, dense rows over [C, H, W] maps are kept channels last (transposed convs run
2-3x faster so), and an activation whose sign-dependent columns are few in every sample
relaxes only those columns; a Linear layer's transposed product skips each sample's
all-zero columns (its stably inactive neurons). All are storage and scheduling choices: these
tests pin the bounds to the plain form (default layout, every column) in float64.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import DTYPE, box

import absdsl
from absdsl.compiler.backsub import rows as rt
from absdsl.compiler.context import Context, EngineOptions


def relu_lines(batch: int, shape: tuple[int, ...], unstable: float, seed: int) -> tuple:
    """DeepPoly ReLU lines with about ``unstable`` of the neurons unstable, the rest split
    between active (slope 1) and dead (slope 0)."""
    g = torch.Generator().manual_seed(seed)
    kind = torch.rand(batch, *shape, generator=g, dtype=DTYPE)
    lower = torch.rand(batch, *shape, generator=g, dtype=DTYPE) - 1.0
    upper = torch.rand(batch, *shape, generator=g, dtype=DTYPE) + 0.01
    dead, active = kind > unstable + (1 - unstable) / 2, kind > unstable
    lower = torch.where(active, -lower * 0.5 + 0.01, lower)
    upper = torch.where(dead, -upper, upper)
    lam_up = upper / (upper - lower)
    zeros, ones = torch.zeros_like(lower), torch.ones_like(lower)
    is_unstable = (lower < 0) & (upper > 0)
    stable_slope = torch.where(upper <= 0, zeros, ones)
    a_lo = torch.where(is_unstable, (upper > -lower).to(DTYPE), stable_slope)
    a_hi = torch.where(is_unstable, lam_up, stable_slope)
    b_hi = torch.where(is_unstable, -lam_up * lower, zeros)
    return a_lo, zeros, a_hi, b_hi


def _ctx(compact: bool) -> Context:
    """A call's context with the default engine options (``compact`` false: as under vmap)."""
    return Context(compact=compact, rows_per_chunk=1 << 30)


@pytest.mark.parametrize("shape", [(6, 5, 4), (40,)])
@pytest.mark.parametrize("rows_batch", [1, 3])
def test_sparse_lines_equal_dense_lines(shape, rows_batch) -> None:
    batch, k = 3, 4
    lines = relu_lines(batch, shape, unstable=0.1, seed=1)
    dense, sparse = rt.back_lines(lines, _ctx(False)), rt.back_lines(lines, _ctx(True))
    assert dense.columns is None and sparse.columns is not None
    assert sparse.columns.shape[1] <= EngineOptions().sparse_lines * torch.Size(shape).numel()
    lam = torch.randn(rows_batch, 2 * k, *shape, dtype=DTYPE, requires_grad=True)
    acc = torch.randn(batch, 2 * k, dtype=DTYPE)
    want, want_acc = rt.relax_back(lam, k, dense, acc)
    got, got_acc = rt.relax_back(lam, k, sparse, acc)
    assert got.shape == want.shape == (batch, 2 * k, *shape)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_acc, want_acc, rtol=1e-12, atol=1e-12)
    if len(shape) == 3:  # channels-last lines give channels-last rows
        assert rt.rows_channels_last(got, True)
    weights = torch.randn_like(want)
    g_want, = torch.autograd.grad((want * weights).sum() + want_acc.sum(), lam)
    g_got, = torch.autograd.grad((got * weights).sum() + got_acc.sum(), lam)
    torch.testing.assert_close(g_got, g_want, rtol=1e-12, atol=1e-12)


def test_many_sign_dependent_columns_keep_the_dense_form() -> None:
    lines = relu_lines(2, (30,), unstable=0.6, seed=2)
    assert rt.back_lines(lines, _ctx(True)).columns is None


@pytest.mark.parametrize(("groups", "dilation", "stride"), [(1, 1, 2), (2, 2, 1), (4, 1, 3)])
def test_channels_last_conv_back_equals_conv_transpose(groups, dilation, stride) -> None:
    torch.manual_seed(groups)
    weight = torch.randn(8, 8 // groups, 3, 3, dtype=DTYPE)
    rows = torch.randn(2, 5, 8, 6, 6, dtype=DTYPE)
    want = F.conv_transpose2d(rows.flatten(0, 1), weight, None, stride, 1, 0, groups,
                              dilation).unflatten(0, (2, 5))
    got = rt.conv_back(rows, weight, (stride,) * 2, (1, 1), (0, 0), groups, (dilation,) * 2,
                       True)
    assert rt.rows_channels_last(got, True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias_shape", [(4, 1, 1), (4, 3, 5), (3, 5), ()])
def test_bias_dot_in_either_layout(bias_shape) -> None:
    torch.manual_seed(0)
    shape = (4, 3, 5)
    lam = torch.randn(2, 6, *shape, dtype=DTYPE)
    bias = torch.randn(bias_shape, dtype=DTYPE)
    want = (lam * bias).flatten(2).sum(-1)
    stored_cl = lam.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (2, 6))
    assert rt.rows_channels_last(stored_cl, True)
    for rows in (lam, stored_cl):
        torch.testing.assert_close(rt.bias_dot(rows, bias, shape, True), want)


def _cnn() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 6, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 4 * 4, 20), nn.ReLU(),
                         nn.Linear(20, 3)).to(DTYPE).eval()


def _assert_same_as_plain_and_vmap(fast, prog, model, lo, hi, C) -> None:
    """``fast`` equals the bounds of ``prog`` (compiled by the caller with the faster form
    switched off) and under vmap (which turns the data-dependent forms off)."""
    plain = prog(lo, hi, spec=C)
    params = {k: v.detach().unsqueeze(0) for k, v in model.named_parameters()}
    mapped = torch.func.vmap(lambda p: prog.functional(p, lo, hi, C))(params)
    for got in (plain, (mapped[0][0], mapped[1][0])):
        torch.testing.assert_close(fast[0], got[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fast[1], got[1], rtol=1e-10, atol=1e-10)


def test_programs_give_the_same_bounds_in_every_form(monkeypatch) -> None:
    """Sparse lines + channels-last rows (forced on) against the plain form (vmap, which
    turns both off) and against sparse lines switched off."""
    model = _cnn()
    lo, hi = box((1, 16, 16), batch=3, eps=0.15, seed=7)
    C = absdsl.margin_spec(torch.tensor([0, 2, 1]), 3).to(DTYPE)
    dense_rows = EngineOptions(patch_saving=-1.0)  # dense rows through the convs
    prog = absdsl.compile(model, "deeppoly", options=EngineOptions(patch_saving=-1.0,
                                                                   sparse_lines=1.0))
    seen = {"sparse": 0, "channels_last": 0}
    relax = rt.relax_back

    def spy(lam, k, lines, acc):
        seen["sparse"] += lines.columns is not None
        seen["channels_last"] += lines.channels_last
        return relax(lam, k, lines, acc)

    monkeypatch.setattr(rt, "relax_back", spy)
    fast = prog(lo, hi, spec=C)
    assert seen["sparse"] > 0 and seen["channels_last"] > 0
    plain = absdsl.compile(model, "deeppoly", options=replace(dense_rows, sparse_lines=-1.0))
    _assert_same_as_plain_and_vmap(fast, plain, model, lo, hi, C)
    box_lb = absdsl.compile(model, "box")(lo, hi, spec=C)[0]
    assert (fast[0] - box_lb).max() > 1e-3  # back-substitution did tighten something


def test_float32_rows_run_channels_last_and_match_the_plain_form(monkeypatch) -> None:
    """oneDNN keeps float32 transposed convs channels last (float64 falls back to the default
    layout), so this path is checked in float32, to float32 rounding."""
    model = _cnn().float()
    lo, hi = (t.float() for t in box((1, 16, 16), batch=3, eps=0.15, seed=8))
    C = absdsl.margin_spec(torch.tensor([1, 0, 2]), 3)
    prog = absdsl.compile(model, "deeppoly", options=EngineOptions(patch_saving=-1.0))
    outputs = []
    conv_back = rt.conv_back

    def spy(*args, **kwargs):
        outputs.append(conv_back(*args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(rt, "conv_back", spy)
    lb, ub = prog(lo, hi, spec=C)
    assert outputs and all(rt.rows_channels_last(o, True) for o in outputs)
    params = {k: v.detach().unsqueeze(0) for k, v in model.named_parameters()}
    plain = torch.func.vmap(lambda p: prog.functional(p, lo, hi, C))(params)
    torch.testing.assert_close(lb, plain[0][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ub, plain[1][0], rtol=1e-4, atol=1e-4)


# ---- Linear layers skip each sample's all-zero columns ----------------------------------

def test_dense_back_skips_each_samples_zero_columns() -> None:
    """Rows zero at different columns per sample (stably inactive neurons): the gathered
    product equals ``lam @ W`` and so do its gradients, to the rows and to the weight."""
    g = torch.Generator().manual_seed(3)
    batch, rows, n, n_in = 4, 128, 40, 30
    dead = torch.rand(batch, 1, n, generator=g, dtype=DTYPE) < 0.7
    dead[0, 0, :] = False  # the sample with the fewest zero columns pads the others' counts
    dead[0, 0, :20] = True
    lam = torch.where(dead, 0.0, torch.randn(batch, rows, n, generator=g, dtype=DTYPE))
    lam.requires_grad_(True)
    weight = torch.randn(n, n_in, generator=g, dtype=DTYPE, requires_grad=True)
    order = rt.live_columns(lam)
    assert order is not None and order.shape == (batch, n - 20)
    for b in range(batch):  # every live column is kept (so nothing nonzero is dropped)
        live = set((lam[b] != 0).any(0).nonzero().squeeze(1).tolist())
        assert live <= set(order[b].tolist())
    got = rt.dense_back(lam, weight, _ctx(True))
    want = lam @ weight
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(want)
    g_got = torch.autograd.grad((got * w).sum(), (lam, weight))
    g_want = torch.autograd.grad((want * w).sum(), (lam, weight))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_dense_back_keeps_the_plain_product_when_skipping_does_not_pay() -> None:
    g = torch.Generator().manual_seed(4)
    lam = torch.randn(3, 64, 40, generator=g, dtype=DTYPE)
    assert rt.live_columns(lam) is None  # no zero column
    lam[:, :, :2] = 0.0
    assert rt.live_columns(lam) is None  # 38 of 40 kept: above the zero_columns share
    few = torch.randn(3, 2, 40, generator=g, dtype=DTYPE)
    few[:, :, :20] = 0.0
    assert rt.live_columns(few) is None  # 2 rows (a spec's): gathering the weight costs more
    many = torch.randn(1, 256, 40, generator=g, dtype=DTYPE)
    many[:, :, :20] = 0.0
    order = rt.live_columns(many)  # one sample, or rows shared by the batch, pays as well
    assert order is not None and sorted(order[0].tolist()) == list(range(20, 40))


def _half_dead_mlp():
    """An MLP whose first layer is half stably inactive on the box, with its inputs."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(),
                          nn.Linear(24, 4)).to(DTYPE).eval()
    with torch.no_grad():
        model[0].bias[:24] -= 3.0
    lo, hi = box((6,), batch=5, eps=0.2, seed=6)
    C = absdsl.margin_spec(torch.tensor([0, 1, 2, 3, 0]), 4).to(DTYPE)
    return model, lo, hi, C


def test_programs_skip_zero_columns_with_the_same_bounds(monkeypatch) -> None:
    """The program takes the gathered product where the first layer is inactive, and its
    bounds equal those with skipping switched off and under vmap."""
    model, lo, hi, C = _half_dead_mlp()
    prog = absdsl.compile(model, "deeppoly")
    taken = []
    live_columns = rt.live_columns

    def spy(lam, share):
        taken.append(live_columns(lam, share) is not None)
        return None if not taken[-1] else live_columns(lam, share)

    monkeypatch.setattr(rt, "live_columns", spy)
    fast = prog(lo, hi, spec=C)
    assert any(taken)
    assert prog.engine_paths["live columns"] == sum(taken)
    off = absdsl.compile(model, "deeppoly", options=EngineOptions(zero_columns=-1.0))
    _assert_same_as_plain_and_vmap(fast, off, model, lo, hi, C)
    grads = []
    for program in (off, prog):  # off, then on: same gradients
        model.zero_grad()
        lb, ub = program(lo, hi, spec=C)
        (lb.sum() - 0.5 * ub.sum()).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert float(grads[1][0].abs().sum()) > 0


def test_zero_column_skipping_under_torch_func_and_forward_mode(monkeypatch) -> None:
    """grad, jacrev, jvp and forward-mode AD run through the gathered product (it takes the
    plain product's derivatives) and agree with skipping switched off."""
    import torch.autograd.forward_ad as fwAD

    model, lo, hi, C = _half_dead_mlp()
    prog = absdsl.compile(model, "deeppoly")
    calls = []
    product = rt._LiveColumnsProduct.apply

    def spy(*args):
        calls.append(1)
        return product(*args)

    monkeypatch.setattr(rt._LiveColumnsProduct, "apply", spy)
    tangent = torch.randn_like(lo)

    def margins(low):
        return prog(low, hi, spec=C)[0].sum()

    def derivatives():
        grad = torch.func.grad(margins)(lo)
        jac = torch.func.jacrev(margins)(lo)
        _, jvp = torch.func.jvp(margins, (lo,), (tangent,))
        with fwAD.dual_level():
            dual = prog(fwAD.make_dual(lo, tangent), hi, spec=C)[0].sum()
            forward = fwAD.unpack_dual(dual).tangent
        return grad, jac, jvp, forward

    skipping = derivatives()
    assert len(calls) >= 4  # every transform went through the gathered product
    prog = absdsl.compile(model, "deeppoly", options=EngineOptions(zero_columns=-1.0))
    calls.clear()
    plain = derivatives()
    assert not calls
    for a, b in zip(skipping, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert float(skipping[0].abs().sum()) > 0
