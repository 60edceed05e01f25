"""The max relaxation of back-substitution (max pooling, ``torch.amax``, max/min of two
tensors as one op, ``compiler/backsub/pool.py``): its lines are sound and as the module
says, bounds contain sampled outputs, and a max pool followed by a linear layer matches a
reference written here from the relaxation's definition (no code shared with the engine)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import DTYPE

import absdsl
from absdsl.compiler.backsub import pool as pool_rows
from absdsl.domains import NAMES as DOMAINS

# float64 throughout: sound up to rounding (docs/testing.md), relative 1e-9
TOL = 1e-9


def _windows_box(seed: int, batch: int = 400, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes of k inputs: random, with ties, with one input dominating, points."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.randn(batch, k, generator=g, dtype=DTYPE)
    width = torch.rand(batch, k, generator=g, dtype=DTYPE) * torch.tensor(
        [0.0, 0.1, 1.0, 3.0], dtype=DTYPE)[torch.randint(0, 4, (batch, k), generator=g)]
    hi = lo + width
    hi[::7, 1] = torch.maximum(hi[::7, 0], lo[::7, 1])  # tied upper bounds (most of them)
    lo[::5, 2] = hi[::5].amax(1) + 0.5  # input 2 dominates
    hi[::5, 2] = lo[::5, 2] + 1.0
    return lo, hi


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lines_hold_on_the_box_and_are_exact_when_one_input_dominates(seed: int) -> None:
    lo, hi = _windows_box(seed)
    members = torch.arange(4).reshape(1, 4)
    lines = pool_rows.max_lines(lo, hi, members)
    g = torch.Generator().manual_seed(seed + 10)
    t = torch.rand(500, *lo.shape, generator=g, dtype=DTYPE)
    t[0], t[1] = 0.0, 1.0
    pts = lo + t * (hi - lo)  # [P, B, 4]
    top = pts.amax(-1)  # [P, B]
    below = pts.gather(-1, lines.low.expand(500, -1, -1)).squeeze(-1)
    at_high = pts.gather(-1, lines.high.expand(500, -1, -1)).squeeze(-1)
    above = lines.slope.squeeze(-1) * at_high + lines.offset.squeeze(-1)
    scale = 1 + top.abs()
    assert bool((below <= top + TOL * scale).all())
    assert bool((above >= top - TOL * scale).all())
    # the lower line's input has the largest lower bound; the upper one the largest upper
    assert torch.equal(lo.gather(1, lines.low), lo.amax(1, keepdim=True))
    assert torch.equal(hi.gather(1, lines.high), hi.amax(1, keepdim=True))
    # the chord is never above the constant max u (the peer's line) on [l_m, u_m], and
    # exact (slope 1, offset 0) where one input dominates
    slope, offset = lines.slope.squeeze(-1), lines.offset.squeeze(-1)
    l_m, u_m = lo.gather(1, lines.high).squeeze(1), hi.gather(1, lines.high).squeeze(1)
    assert bool((slope >= 0).all() and (slope <= 1).all())
    assert bool((slope * l_m + offset <= u_m + TOL).all())
    assert bool((slope * u_m + offset <= u_m + TOL * (1 + u_m.abs())).all())
    dominated = torch.zeros(lo.shape[0], dtype=torch.bool)
    dominated[::5] = True
    assert bool((slope[dominated] == 1).all() and (offset[dominated] == 0).all())


def test_needs_skips_inputs_that_cannot_hold_the_max() -> None:
    lo = torch.tensor([[0.0, 2.0, -1.0, 0.5], [5.0, 0.0, 1.0, 1.0]], dtype=DTYPE)
    hi = torch.tensor([[1.0, 3.0, 2.5, 0.6], [6.0, 1.0, 2.0, 3.0]], dtype=DTYPE)
    got = pool_rows.needs(lo, hi, torch.arange(4).reshape(1, 4))
    # window 1: max l = 2; inputs 1 (u 3) and 2 (u 2.5) may hold it, 0 and 3 may not;
    # window 2: input 0 dominates (5 > 3): nothing needs refining
    assert got.tolist() == [[False, True, True, False], [False, False, False, False]]


class PoolNet(nn.Module):
    def __init__(self, kernel: int, stride: int, padding: int, ceil: bool, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(2, 3, 3, padding=1).to(DTYPE)
            self.pool = nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil)
            n = self.pool(torch.zeros(1, 3, 7, 7, dtype=DTYPE)).numel()
            self.fc = nn.Linear(n, 4).to(DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


class AmaxNet(nn.Module):
    """amax over channels and over a row, max and min of two maps, after a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(3)
            self.lin = nn.Linear(6, 24).to(DTYPE)
            self.out = nn.Linear(4 * 3 + 4 + 2 * 12, 3).to(DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.lin(x))
        grid = h.reshape(-1, 2, 4, 3)
        a, b = h[:, :12], h[:, 12:]
        parts = [torch.amax(grid, 1).flatten(1), torch.amax(grid[:, 0], 2),
                 torch.max(a, b), torch.min(a, b)]
        return self.out(torch.cat(parts, 1))


MODELS = {
    "k2": (lambda: PoolNet(2, 2, 0, False, 0), (2, 7, 7)),
    "k3s2p1": (lambda: PoolNet(3, 2, 1, False, 1), (2, 7, 7)),
    "k2s1 overlapping": (lambda: PoolNet(2, 1, 0, False, 2), (2, 7, 7)),
    "k2 ceil": (lambda: PoolNet(2, 2, 1, True, 4), (2, 7, 7)),
    "amax": (AmaxNet, (6,)),
}


def _sampled(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, n: int = 2000
             ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    t = torch.rand(n, *lo.shape, generator=g, dtype=DTYPE)
    t[0], t[1] = 0.0, 1.0
    with torch.no_grad():
        y = model((lo + t * (hi - lo)).flatten(0, 1)).reshape(n, lo.shape[0], -1)
    return y.min(0).values, y.max(0).values


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_domain_contains_the_sampled_range(name: str) -> None:
    make, shape = MODELS[name]
    model = make().eval()
    g = torch.Generator().manual_seed(8)
    lo = torch.randn(3, *shape, generator=g, dtype=DTYPE)
    hi = lo + 0.3
    inner_lo, inner_hi = _sampled(model, lo, hi)
    tol = TOL * (1 + inner_lo.abs() + inner_hi.abs())
    for domain in DOMAINS:
        lb, ub = absdsl.compile(model, domain)(lo, hi)
        assert bool((lb <= inner_lo + tol).all()), (name, domain)
        assert bool((ub >= inner_hi - tol).all()), (name, domain)


def _reference_crown_ibp(model: PoolNet, lo: torch.Tensor, hi: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """CROWN-IBP of fc(pool(relu(conv(x)))) with the pool relaxed as the module docstring of
    pool.py says, written out window by window from the definition: below, the input of
    largest lower bound; above, the chord of max(x_m, v) over [l_m, u_m]."""
    conv, pool, fc = model.conv, model.pool, model.fc
    w_abs = conv.weight.abs()
    centre, radius = (hi + lo) / 2, (hi - lo) / 2
    mid = conv(centre)
    rad = F.conv2d(radius, w_abs, padding=1)
    l_in, u_in = torch.relu(mid - rad), torch.relu(mid + rad)  # IBP bounds of the pool input
    batch, c, h, w = l_in.shape
    kh = pool.kernel_size
    st, pad = pool.stride, pool.padding
    oh, ow = pool(l_in).shape[-2:]
    rows = []  # per sample: coefficients on the relu outputs and constants, lower and upper
    for b in range(batch):
        coef = torch.zeros(2, fc.out_features, c, h, w, dtype=DTYPE)
        const = torch.zeros(2, fc.out_features, dtype=DTYPE)
        weight = fc.weight.reshape(fc.out_features, c, oh, ow)
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    cells = [(y, x) for y in range(i * st - pad, i * st - pad + kh)
                             for x in range(j * st - pad, j * st - pad + kh)
                             if 0 <= y < h and 0 <= x < w]
                    ls = torch.stack([l_in[b, ch, y, x] for y, x in cells])
                    us = torch.stack([u_in[b, ch, y, x] for y, x in cells])
                    low = cells[int(ls.argmax())]
                    m = int(us.argmax())
                    v = max((float(us[q]) for q in range(len(cells)) if q != m), default=-math.inf)
                    lm_, um_ = float(ls[m]), float(us[m])
                    slope, offset = (1.0, 0.0) if lm_ >= v else (
                        (um_ - v) / (um_ - lm_), v - (um_ - v) / (um_ - lm_) * lm_)
                    for side, sign in ((0, 1.0), (1, -1.0)):  # lower rows, upper rows
                        wt = weight[:, ch, i, j]
                        on_low = (sign * wt).clamp(min=0) * sign  # weight taking y >= x_low
                        on_high = wt - on_low
                        coef[side, :, ch, low[0], low[1]] += on_low
                        coef[side, :, ch, cells[m][0], cells[m][1]] += on_high * slope
                        const[side] += on_high * offset
        rows.append((coef, const))
    lbs, ubs = [], []
    for b, (coef, const) in enumerate(rows):
        out = []
        for side, sign in ((0, 1.0), (1, -1.0)):
            # relu: exact on stable neurons; on unstable ones the chord above, and below the
            # line x or 0 as CROWN picks it (u > -l)
            pre_l, pre_u = mid[b] - rad[b], mid[b] + rad[b]
            unstable = (pre_l < 0) & (pre_u > 0)
            up_slope = torch.where(unstable, pre_u / (pre_u - pre_l).clamp(min=1e-300),
                                   (pre_l >= 0).to(DTYPE))
            up_off = torch.where(unstable, -up_slope * pre_l, torch.zeros_like(pre_l))
            lo_slope = torch.where(unstable, (pre_u > -pre_l).to(DTYPE), (pre_l >= 0).to(DTYPE))
            cf = coef[side]
            takes_lower = (sign * cf) >= 0
            a = torch.where(takes_lower, lo_slope, up_slope)
            off = torch.where(takes_lower, torch.zeros_like(up_off), up_off)
            lam = cf * a  # on the conv's outputs
            total = const[side] + fc.bias + (cf * off).flatten(1).sum(1)
            total = total + (lam * mid[b]).flatten(1).sum(1)
            back = F.conv_transpose2d(lam, conv.weight, padding=1)  # [out, 2, H, W]
            spread = (back.abs() * radius[b]).flatten(1).sum(1)
            out.append(total - sign * spread)
        lbs.append(out[0])
        ubs.append(out[1])
    return torch.stack(lbs), torch.stack(ubs)


@pytest.mark.parametrize("name", ["k2", "k3s2p1"])
def test_crown_ibp_matches_a_reference_written_from_the_definition(name: str) -> None:
    make, shape = MODELS[name]
    model = make().eval()
    g = torch.Generator().manual_seed(9)
    lo = torch.randn(2, *shape, generator=g, dtype=DTYPE)
    hi = lo + 0.2
    with torch.no_grad():
        want_l, want_u = _reference_crown_ibp(model, lo, hi)
        lb, ub = absdsl.compile(model, "crown-ibp")(lo, hi)
    torch.testing.assert_close(lb, want_l, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ub, want_u, rtol=1e-9, atol=1e-9)


def test_pool_on_the_input_is_exact_in_every_domain() -> None:
    """Max pooling straight on the input box: its exact range [max l, max u] per window in
    Box and in both back-substitution domains (the lines meet it at their ends)."""
    pool = nn.MaxPool2d(3, 2, 1)
    g = torch.Generator().manual_seed(11)
    lo = torch.randn(3, 2, 6, 6, generator=g, dtype=DTYPE)
    hi = lo + torch.rand(3, 2, 6, 6, generator=g, dtype=DTYPE)
    for domain in ("box", "deeppoly", "crown-ibp"):
        lb, ub = absdsl.compile(pool, domain)(lo, hi)
        torch.testing.assert_close(lb, pool(lo), rtol=0, atol=1e-12)
        torch.testing.assert_close(ub, pool(hi), rtol=0, atol=1e-12)


def test_crown_ibp_is_tighter_than_the_relu_tree_on_max_pooling(monkeypatch) -> None:
    """CROWN-IBP's output widths with the max relaxation against the same program with the
    pool lowered to a tree of ReLUs (as it was before): no wider on average on each model."""
    from absdsl.compiler import codegen, ops

    real = codegen.has_rule

    def without_max(loaded, op: str) -> bool:
        return not ops.is_pool(op) and real(loaded, op)

    for name in ("k2", "k3s2p1", "k2s1 overlapping"):
        make, shape = MODELS[name]
        model = make().eval()
        g = torch.Generator().manual_seed(12)
        lo = torch.randn(4, *shape, generator=g, dtype=DTYPE)
        hi = lo + 0.2
        direct = absdsl.compile(model, "crown-ibp", input_shape=shape)
        with monkeypatch.context() as m:
            m.setattr(codegen, "has_rule", without_max)
            tree = absdsl.compile(model, "crown-ibp", input_shape=shape)
        assert any(n.op == "max_pool2d" for n in direct.ir.nodes)
        assert "pool_rows" in direct.code and "pool_rows" not in tree.code
        with torch.no_grad():
            lb, ub = direct(lo, hi)
            tl, tu = tree(lo, hi)
        assert float((ub - lb).mean()) < float((tu - tl).mean()), name


@pytest.mark.parametrize("domain", ["deeppoly", "crown-ibp"])
def test_vmap_over_parameter_sets_and_gradients_through_the_max(domain: str) -> None:
    """prog.functional under vmap (no compact rows, the other layout of max_back) equals
    separate calls, and the lower bounds' gradients reach the conv before the pool, finite."""
    model = PoolNet(3, 2, 1, False, 5).eval()
    g = torch.Generator().manual_seed(13)
    lo = torch.randn(2, 2, 7, 7, generator=g, dtype=DTYPE)
    hi = lo + 0.2
    spec = absdsl.margin_spec(torch.tensor([0, 3]), 4).to(DTYPE)
    prog = absdsl.compile(model, domain)
    base = {k: v.detach() for k, v in model.named_parameters()}
    stacked = {k: v.unsqueeze(0) + 0.05 * torch.randn((4, *v.shape), generator=g, dtype=DTYPE)
               for k, v in base.items()}
    lb_v, ub_v = torch.func.vmap(lambda p: prog.functional(p, lo, hi, spec))(stacked)
    for i in range(4):
        lb, ub = prog.functional({k: v[i] for k, v in stacked.items()}, lo, hi, spec)
        torch.testing.assert_close(lb_v[i], lb, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ub_v[i], ub, rtol=1e-10, atol=1e-10)
    assert (lb_v[0] - lb_v[1]).abs().max() > 1e-6
    lb, _ = prog(lo, hi, spec)
    lb.sum().backward()
    grad = model.conv.weight.grad
    assert grad is not None and bool(torch.isfinite(grad).all()) and grad.abs().max() > 0
