"""Back-substitution in patches (chains of convolutions) against dense rows and a reference.

Neurons of a conv layer are back-substituted with rows that span only their receptive
windows (``rt.patch_*``). These tests pin that form to two independent computations: the
same program with patches switched off (dense rows over whole maps), and the plain float64
DeepPoly reference of ``test_exactness`` run on the network rewritten as dense matrices.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from core_helpers import DTYPE, box
from test_exactness import deeppoly_reference

import absdsl
from absdsl.compiler.backsub import patches as patch_rows
from absdsl.compiler.backsub import rows as dense_rows
from absdsl.compiler.context import EngineOptions


class Mixed(nn.Module):
    """Every op patches handle: normalisation, dilation, groups, a conv feeding a conv with no
    activation between (windows overhang the map there), batch norm after a ReLU (its own
    elementwise node), constants, average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, stride=1, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2)
        self.c3 = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.c4 = nn.Conv2d(4, 4, (3, 2), stride=(1, 2), padding=(1, 0))
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 4 * 2, 3)
        self.register_buffer("mean", torch.tensor([0.1, -0.2]).view(1, 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / 0.5
        x = torch.relu(self.c1(x))
        x = self.c3(self.c2(x))
        x = self.bn(torch.relu(x)) * 1.5 - 0.2
        x = torch.relu(self.c4(x))
        x = torch.relu(self.pool(x) + 0.1)
        return self.fc(x.flatten(1))


def mixed() -> nn.Module:
    torch.manual_seed(0)
    model = Mixed().to(DTYPE)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 1.5)
        model.bn.weight.uniform_(-1.0, 1.0)  # negative scales too
    return model.eval()


def conv_chain(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(3, 4, 3, stride=1, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 3, 2, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(3 * 2 * 2, 3)).to(DTYPE).eval()


def _compile(model: nn.Module, patches: bool, monkeypatch) -> absdsl.compiler.program.BoundProgram:
    return absdsl.compile(model, "deeppoly",
                          options=EngineOptions(patch_saving=0.5 if patches else -1.0))


def _uses_patches(prog, lo) -> int:
    prog(lo, lo)
    return prog.code.count("def backsub_patches_")


@pytest.mark.parametrize("kind", ["mixed", "chain"])
def test_patch_rows_equal_dense_rows(kind, monkeypatch) -> None:
    model, shape = (mixed(), (2, 16, 16)) if kind == "mixed" else (conv_chain(1), (1, 8, 8))
    lo, hi = box(shape, batch=3, eps=0.4, seed=2)
    C = absdsl.margin_spec(torch.tensor([0, 2, 1]), 3).to(DTYPE)
    out = {}
    for patches in (True, False):
        prog = _compile(model, patches, monkeypatch)
        n = _uses_patches(prog, lo)
        assert (n > 0) == patches, prog.code
        out[patches] = (prog(lo, hi, spec=C), prog(lo, hi), prog.intermediate_bounds(lo, hi))
    for (a, b) in zip(out[True][:2], out[False][:2], strict=True):
        torch.testing.assert_close(a[0], b[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a[1], b[1], rtol=1e-10, atol=1e-10)
    for name, (l, u) in out[False][2].items():
        torch.testing.assert_close(out[True][2][name][0], l, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out[True][2][name][1], u, rtol=1e-10, atol=1e-10)
    # back-substitution changed something, so the comparison is not between two Box runs
    box_bounds = absdsl.compile(model, "box").intermediate_bounds(lo, hi)
    gain = max(float((out[False][2][k][0] - box_bounds[k][0]).max().detach())
               for k in box_bounds)
    assert gain > 1e-3


def _dense_equivalent(model: nn.Sequential, shape: tuple[int, ...]) -> nn.Sequential:
    """The network as Linear/ReLU layers: each affine block's matrix by autograd."""
    blocks: list[list[nn.Module]] = [[]]
    for m in model:
        if isinstance(m, nn.ReLU):
            blocks.append([])
        else:
            blocks[-1].append(m)
    layers: list[nn.Module] = []
    in_shape = shape
    for i, block in enumerate(blocks):
        f = nn.Sequential(*block)
        zero = torch.zeros(1, *in_shape, dtype=DTYPE)
        with torch.no_grad():
            bias = f(zero).flatten()
            out_shape = tuple(f(zero).shape[1:])
        jac = torch.autograd.functional.jacobian(lambda x, f=f: f(x).flatten(), zero)
        lin = nn.Linear(zero.numel(), bias.numel()).to(DTYPE)
        with torch.no_grad():
            lin.weight.copy_(jac.reshape(bias.numel(), -1))
            lin.bias.copy_(bias)
        layers.append(lin)
        if i < len(blocks) - 1:
            layers.append(nn.ReLU())
        in_shape = out_shape
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("seed_", [0, 1, 2])
def test_patches_equal_the_dense_reference(seed_, monkeypatch) -> None:
    model = conv_chain(seed_)
    dense = _dense_equivalent(model, (1, 8, 8))
    prog = _compile(model, True, monkeypatch)
    for sample in range(3):  # one sample per call: the reference has no batch
        lo, hi = box((1, 8, 8), batch=1, eps=0.3, seed=10 * seed_ + sample)
        assert _uses_patches(prog, lo) >= 1
        C = absdsl.margin_spec(torch.tensor([sample % 3]), 3).to(DTYPE)
        lb, ub = prog(lo, hi, spec=C)
        rl, ru = deeppoly_reference(dense, lo[0].flatten(), hi[0].flatten(), C[0])
        torch.testing.assert_close(lb[0], rl, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(ub[0], ru, rtol=1e-9, atol=1e-9)


def test_patches_under_vmap_and_grad(monkeypatch) -> None:
    model = conv_chain(3)
    lo, hi = box((1, 8, 8), batch=2, eps=0.2, seed=4)
    C = absdsl.margin_spec(torch.tensor([0, 1]), 3).to(DTYPE)
    prog = _compile(model, True, monkeypatch)
    assert _uses_patches(prog, lo) >= 1
    base = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(5)
    stacked = {k: v.unsqueeze(0) + 0.05 * torch.randn((4, *v.shape), generator=g, dtype=DTYPE)
               for k, v in base.items()}
    lb_v, ub_v = torch.func.vmap(lambda p: prog.functional(p, lo, hi, C))(stacked)
    for i in range(4):
        lb, ub = prog.functional({k: v[i] for k, v in stacked.items()}, lo, hi, C)
        torch.testing.assert_close(lb_v[i], lb, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ub_v[i], ub, rtol=1e-10, atol=1e-10)
    assert (lb_v[0] - lb_v[1]).abs().max() > 1e-6
    grads = {}
    for patches in (True, False):
        model.zero_grad()
        p = _compile(model, patches, monkeypatch)
        p(lo, hi, spec=C)[0].sum().backward()
        grads[patches] = {k: v.grad.clone() for k, v in model.named_parameters()}
    for k, v in grads[False].items():
        assert v.abs().max() > 0
        torch.testing.assert_close(grads[True][k], v, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("geom", [(5, 5, 2, 2, -2, -2, 7, 7), (3, 4, 1, 2, -1, 0, 9, 4),
                                  (9, 9, 4, 4, -4, -4, 3, 3)])
def test_window_reads_agree_for_few_and_many_rows(geom) -> None:
    """``patch_gather`` reads windows one way for few rows and another for many: both must
    equal a plain loop over the padded map (zeros outside)."""
    kh, kw, sh, sw, oh, ow, gh, gw = geom
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 3, 11, 10, generator=g, dtype=DTYPE)
    padded = torch.zeros(2, 3, 40, 40, dtype=DTYPE)
    padded[:, :, 10:21, 10:20] = maps
    for count in (1, gh * gw):  # 1 row: windows read directly; all rows: unfolded
        pos = torch.randperm(gh * gw, generator=g)[:count]
        got = patch_rows.patch_gather(maps, geom, pos)
        for j, p in enumerate(pos.tolist()):
            y0, x0 = 10 + oh + (p // gw) * sh, 10 + ow + (p % gw) * sw
            want = padded[:, :, y0:y0 + kh, x0:x0 + kw].flatten(1)
            torch.testing.assert_close(got[:, j], want, rtol=0, atol=0)


def test_windows_that_end_before_the_map_starts_read_zeros() -> None:
    """A window wholly in the padding (a conv output column that reads padding only)."""
    geom = (3, 1, 1, 16, -1, -2, 12, 1)  # one grid column, its window is column -2
    maps = torch.randn(2, 3, 12, 12, dtype=DTYPE)
    got = patch_rows.patch_gather(maps, geom, torch.arange(12))
    assert torch.equal(got, torch.zeros(2, 12, 3 * 3, dtype=DTYPE))


def test_patches_equal_dense_when_a_conv_output_reads_only_padding(monkeypatch) -> None:
    # output width floor((12 + 2 * 2 - 1) / 16) + 1 = 1: that column is padding (bias) only;
    # the sigmoid's relaxation reads l and u everywhere, so every neuron is back-substituted
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, (3, 1), stride=(1, 16), padding=(1, 2)), nn.Sigmoid(),
                          nn.Flatten(), nn.Linear(4 * 12 * 1, 3)).to(DTYPE).eval()
    lo, hi = box((1, 12, 12), batch=2, eps=0.3, seed=1)
    out = {}
    for patches in (True, False):
        prog = _compile(model, patches, monkeypatch)
        assert (_uses_patches(prog, lo) > 0) == patches
        out[patches] = prog(lo, hi)
    torch.testing.assert_close(out[True][0], out[False][0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("patches", [True, False])
def test_a_samples_bounds_do_not_depend_on_its_batch(patches, monkeypatch) -> None:
    """Neurons are refined where their own sample needs it (patch rows: only those run),
    so a sample bounded in a batch gets what it gets alone."""
    model = conv_chain(4)
    lo, hi = box((1, 8, 8), batch=5, eps=0.25, seed=11)
    hi = lo + (hi - lo) * torch.linspace(0.2, 1.0, 5, dtype=DTYPE).view(5, 1, 1, 1)
    C = absdsl.margin_spec(torch.tensor([0, 1, 2, 0, 1]), 3).to(DTYPE)
    prog = _compile(model, patches, monkeypatch)
    assert (_uses_patches(prog, lo) > 0) == patches
    widths = []
    refine = dense_rows.refine

    def spy(backsub, lower, upper, needs, rows_per_chunk, per_sample, ctx):
        widths.append((per_sample, needs.flatten(1).sum(1).tolist(),
                       int(needs.flatten(1).any(0).sum())))
        return refine(backsub, lower, upper, needs, rows_per_chunk, per_sample, ctx)

    monkeypatch.setattr(dense_rows, "refine", spy)
    together = prog(lo, hi, spec=C)
    # the samples differ in which neurons they need, so per-sample rows are fewer
    assert any(max(per) < union for _, per, union in widths)
    assert any(p for p, _, _ in widths) == patches
    for i in range(5):
        alone = prog(lo[i:i + 1], hi[i:i + 1], spec=C[i:i + 1])
        torch.testing.assert_close(together[0][i:i + 1], alone[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(together[1][i:i + 1], alone[1], rtol=1e-10, atol=1e-10)


def test_per_sample_rows_when_one_sample_needs_every_neuron(monkeypatch) -> None:
    """A huge box makes every neuron of a layer unstable for its sample; the other samples'
    results (in their own neuron order) must still land on their own neurons."""
    model = conv_chain(1)
    lo, hi = box((1, 8, 8), batch=2, eps=0.02, seed=12)
    lo[0], hi[0] = lo[0] - 3.0, hi[0] + 3.0
    C = absdsl.margin_spec(torch.tensor([1, 2]), 3).to(DTYPE)
    prog = _compile(model, True, monkeypatch)
    assert _uses_patches(prog, lo) > 0
    full = []
    refine = dense_rows.refine

    def spy(backsub, lower, upper, needs, rows_per_chunk, per_sample, ctx):
        per = needs.flatten(1).sum(1)
        full.append(per_sample and int(per.max()) == needs[0].numel() and int(per.min()) > 0)
        return refine(backsub, lower, upper, needs, rows_per_chunk, per_sample, ctx)

    monkeypatch.setattr(dense_rows, "refine", spy)
    together = prog(lo, hi, spec=C)
    inter = prog.intermediate_bounds(lo, hi)
    assert any(full)
    alone = prog(lo[1:], hi[1:], spec=C[1:])
    torch.testing.assert_close(together[0][1:], alone[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(together[1][1:], alone[1], rtol=1e-10, atol=1e-10)
    g = torch.Generator().manual_seed(3)
    x = lo[1:] + (hi[1:] - lo[1:]) * torch.rand(2000, 1, 8, 8, generator=g, dtype=DTYPE)
    with torch.no_grad():
        margins = torch.einsum("kn,sn->sk", C[1], model(x))
        pre = model[0](x)  # the first pre-activation node's values
    assert (margins >= together[0][1] - 1e-9).all() and (margins <= together[1][1] + 1e-9).all()
    first = next(iter(inter.values()))
    assert (pre >= first[0][1] - 1e-9).all() and (pre <= first[1][1] + 1e-9).all()
