"""The op table (compiler/ops.py) and what it feeds: derivatives, minima, dips, curvature and
the emitted slope bound checked numerically; every activation in every built-in domain (sound,
exact on points, DeepPoly tighter than Box, exact on ReLU6's linear part); the linear shape
ops (sound, exact, differentiable, vmap-able, DeepPoly exact on affine nets); max pooling
(Box's direct rule, the ReLU decomposition elsewhere); and the errors of ops without a rule."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import DTYPE, Fn, assert_sound

import absdsl
from absdsl.compiler import ops
from absdsl.domains import NAMES as DOMAINS
from absdsl.errors import InputError, TraceError

# ---- 1. the table itself -------------------------------------------------------------------

OP_CASES = [pytest.param(op, p, id=f"{op.name}-{'-'.join(f'{v:g}' for v in p.values())}"
                         if p else op.name)
            for op in ops.ELEMENTWISE for p in op.sample_params()]
# f' jumps at the dip to a one-sided limit a grid cannot reach (-0.5 eps^-1.5 as v -> 0+)
STEEP_DIPS = ("rsqrt_eps", "inv_norm")
# ops a model spells directly (the others are steps of lowerings: LayerNorm, F.normalize,
# softmax, checked through those below and by the table tests above)
SPELLED_CASES = [c for c in OP_CASES if c.values[0].functions or c.values[0].modules]


def _span(op: ops.Op) -> tuple[float, float]:
    """The stretch of the line the numeric checks use (inside the op's valid range)."""
    return (0.05, 5.0) if op.valid is not None else (-6.0, 6.0)


def _deriv(op: ops.Op, p: ops.Params):
    return op.deriv_fn(p)


def _grid(a: float, b: float, n: int) -> torch.Tensor:
    # shifted by an irrational amount: no point lands on a kink (0, +-3, min_val, ...)
    step = (b - a) / n
    return torch.linspace(a, b - step, n, dtype=DTYPE) + step * (math.sqrt(2) - 1)


def _clip(interval: tuple[float, float], span: tuple[float, float]) -> tuple[float, float]:
    return max(interval[0], span[0]), min(interval[1], span[1])


def test_every_elementwise_op_has_code_and_derivative() -> None:
    assert set(ops.ACTIVATIONS) == {op.name for op in ops.ELEMENTWISE}
    assert len(OP_CASES) > len(ops.ELEMENTWISE)  # sample params give more cases
    for op in ops.ELEMENTWISE:
        assert op.code is not None and op.deriv is not None, op.name
        assert op.elementwise and "activation" in op.groups


@pytest.mark.parametrize("op,p", OP_CASES)
def test_deriv_equals_autograd(op: ops.Op, p: ops.Params) -> None:
    x = _grid(*_span(op), 3001).requires_grad_(True)
    f = op.torch_fn(p)
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    want = _deriv(op, p)(x.detach())
    assert want.dtype == DTYPE
    if op.name == "hardsigmoid":
        # torch's own hardsigmoid backward scales by a float32 1/6; the exact slope instead
        x = x.detach()
        grad = ((x > -3) & (x < 3)).to(DTYPE) / 6.0
        h = 1e-4  # and central differences away from the kinks
        far = ((x.abs() - 3).abs() > 2 * h)
        fd = (f(x + h) - f(x - h)) / (2 * h)
        torch.testing.assert_close(want[far], fd[far], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(want, grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("op,p", [c for c in OP_CASES if c.values[0].argmin is not None])
def test_argmin_is_the_minimum(op: ops.Op, p: ops.Params) -> None:
    f = op.torch_fn(p)
    at, value = op.argmin(p)
    lo, hi = _span(op)
    x = torch.cat([torch.linspace(lo, hi, 200001, dtype=DTYPE),
                   torch.tensor([at], dtype=DTYPE)])
    y = f(x)
    f_at = float(f(torch.tensor([at], dtype=DTYPE)))
    assert float(y.min()) >= value - 1e-15           # a lower bound of f everywhere ...
    assert f_at - value <= 1e-9                     # ... within 1e-9 of f(argmin) ...
    assert f_at <= float(y.min()) + 1e-12           # ... which is the minimum of f


@pytest.mark.parametrize("op,p", [c for c in OP_CASES if c.values[0].dips(c.values[1])])
def test_dips_are_minima_of_the_derivative(op: ops.Op, p: ops.Params) -> None:
    df = _deriv(op, p)
    if op.name in STEEP_DIPS:  # a one-sided limit no grid reaches: a lower bound only
        for at, value in op.dips(p):
            x = at + torch.logspace(-12, 1, 3001, dtype=DTYPE)
            assert float(df(x).min()) >= value - 1e-12 * abs(value)
        return
    for at, value in op.dips(p):
        x = torch.linspace(at - 1.5, at + 1.5, 30001, dtype=DTYPE)
        d = df(x)
        d_at = float(df(torch.tensor([at], dtype=DTYPE)))
        assert float(d.min()) >= value - 1e-15, (at, float(d.min()), value)
        if op.name != "hardswish":  # f' jumps at -3; the dip is its one-sided limit
            assert d_at - value <= 1e-9 and d_at <= float(d.min()) + 1e-12
        else:
            assert abs(float(d.min()) - value) < 1e-3


@pytest.mark.parametrize("op,p", OP_CASES)
def test_curvature_intervals(op: ops.Op, p: ops.Params) -> None:
    f = op.torch_fn(p)
    span = _span(op)
    h = 1e-3
    checked = 0
    for sign, intervals in ((1.0, op.convex(p)), (-1.0, op.concave(p))):
        for interval in intervals:
            a, b = _clip(interval, span)
            if b - a <= 4 * h:
                continue
            x = _grid(a + h, b - h, 4001)
            second = f(x + h) - 2 * f(x) + f(x - h)
            tol = 1e-12 * (1 + f(x).abs())
            bad = sign * second < -tol
            assert not bad.any(), (f"{op.name} {p} claimed {'convex' if sign > 0 else 'concave'}"
                                   f" on {interval} but not at {x[bad][:3].tolist()}")
            checked += 1
    if op.name not in ("sigmoid", "tanh") and (op.convex(p) or op.concave(p)):
        assert checked


def _slope_min(op: ops.Op, p: ops.Params, l: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return op.slope_min_fn(p)(l, u)


@pytest.mark.parametrize("op,p", OP_CASES)
def test_slope_min_code_bounds_the_derivative(op: ops.Op, p: ops.Params) -> None:
    g = torch.Generator().manual_seed(sum(map(ord, op.name)))
    lo, hi = _span(op)
    ends = lo + (hi - lo) * torch.rand(40, 2, generator=g, dtype=DTYPE)
    l, u = ends.min(1).values, ends.max(1).values
    extra = [(at - 0.3, at + 0.2) for at, _ in op.dips(p)]  # straddle every dip
    extra += [(at - 1e-3, at + 1e-3) for at, _ in op.dips(p)]
    extra += [(lo, hi), (lo + 0.5, lo + 0.5)]
    l = torch.cat([l, torch.tensor([a for a, _ in extra], dtype=DTYPE)])
    u = torch.cat([u, torch.tensor([b for _, b in extra], dtype=DTYPE)])
    bound = _slope_min(op, p, l, u)
    assert bound.shape == l.shape
    df = _deriv(op, p)
    t = torch.linspace(0, 1, 4001, dtype=DTYPE)
    pts = l[:, None] + t[None, :] * (u - l)[:, None]
    true_min = df(pts).min(1).values
    assert (bound <= true_min + 1e-12).all(), (l, u, bound - true_min)
    # and it is the minimum (up to the grid), not just any lower bound
    if op.name not in STEEP_DIPS:
        assert (bound >= true_min - 1e-2 * (1 + true_min.abs())).all(), (bound, true_min)


# ---- 2. every activation in an MLP, in every domain -----------------------------------------

class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def _activation(op: ops.Op, p: ops.Params) -> nn.Module:
    name = op.name
    if name == "leaky_relu":
        return nn.LeakyReLU(p["negative_slope"])
    if name == "hardtanh":
        if (p["min_val"], p["max_val"]) == (0.0, 6.0):
            return nn.ReLU6()
        return nn.Hardtanh(p["min_val"], p["max_val"])
    if name == "softplus":
        return nn.Softplus(beta=p["sharpness"], threshold=p["threshold"])
    if name == "elu":
        return nn.ELU(p["alpha"])
    if name in ("pow", "pow_odd"):
        n = int(p["exponent"])
        return Square() if n == 2 else Fn(lambda x: x ** n)
    simple = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU,
              "silu": nn.SiLU, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid}
    if name in simple:
        return simple[name]()
    functions = {"abs": torch.abs, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
                 "reciprocal": torch.reciprocal}
    return Fn(functions.get(name) or op.torch_fn(p))  # any other op: its own torch code


def act_net(op: ops.Op, p: ops.Params, seed: int = 0, widths=(3, 5, 4, 2)) -> nn.Sequential:
    """Linear-act-Linear-act-Linear whose pre-activations stay where the op is safe: positive
    for log, sqrt and reciprocal, of moderate size for exp and powers."""
    g = torch.Generator().manual_seed(seed)
    positive = op.valid is not None
    scale = 0.15 if positive else (0.4 if op.name in ("exp", "pow", "pow_odd") else 1.0)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        lin = nn.Linear(a, b).to(DTYPE)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g, dtype=DTYPE) * scale)
            bias = torch.randn(b, generator=g, dtype=DTYPE) * 0.5 * scale
            lin.bias.copy_(bias + 2.0 if positive else bias)
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(_activation(op, p))
    return nn.Sequential(*layers).eval()


def _box(shape, batch, eps, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=g, dtype=DTYPE)
    return x - eps, x + eps


def _boxes_and_points(shape, seed: int, eps=(0.05, 0.4, 1.0), per: int = 2):
    """``per`` boxes of each width, then two degenerate boxes (lo == hi), in one batch."""
    boxes = [_box(shape, per, e, seed=seed + i) for i, e in enumerate(eps)]
    x = _box(shape, 2, 0.0, seed=seed + 99)[0]
    lo = torch.cat([b[0] for b in boxes] + [x])
    hi = torch.cat([b[1] for b in boxes] + [x.clone()])
    return lo, hi, x


def _check_sound_and_exact(model, prog, lo, hi, x, what) -> None:
    lb, ub = prog(lo, hi)
    n = x.shape[0]
    assert torch.isfinite(lb).all() and torch.isfinite(ub).all(), what
    assert (lb <= ub + 1e-9 * (1 + ub.abs())).all(), what
    assert_sound(model, lb[:-n], ub[:-n], lo[:-n], hi[:-n])
    with torch.no_grad():
        y = model(x)
    tol = 1e-9 * (1 + y.abs())
    assert ((lb[-n:] - y).abs() <= tol).all(), (what, (lb[-n:] - y).abs().max())
    assert ((ub[-n:] - y).abs() <= tol).all(), (what, (ub[-n:] - y).abs().max())


@pytest.mark.parametrize("op,p", SPELLED_CASES)
def test_activation_sound_and_exact_in_every_domain(op: ops.Op, p: ops.Params) -> None:
    model = act_net(op, p)
    lo, hi, x = _boxes_and_points((3,), seed=1)
    ir = absdsl.compile(model, "box", input_shape=(3,)).ir
    assert any(n.op == op.name for n in ir.nodes)
    for domain in DOMAINS:
        _check_sound_and_exact(model, absdsl.compile(model, domain), lo, hi, x, domain)


@pytest.mark.parametrize("act", [nn.Sigmoid, nn.GELU])
def test_deeppoly_tighter_than_box(act) -> None:
    op = ops.get("sigmoid" if act is nn.Sigmoid else "gelu")
    model = act_net(op, {}, seed=3, widths=(3, 8, 8, 3))
    lo, hi = _box((3,), 4, 0.1, seed=3)
    bl, bu = absdsl.compile(model, "box")(lo, hi)
    dl, du = absdsl.compile(model, "deeppoly")(lo, hi)
    assert_sound(model, dl, du, lo, hi)
    box_w, dp_w = (bu - bl).sum(1), (du - dl).sum(1)
    assert (dp_w < 0.95 * box_w).all(), (dp_w, box_w)


def _relu6_net(act: type[nn.Module]) -> nn.Sequential:
    g = torch.Generator().manual_seed(4)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate([(3, 6), (6, 5), (5, 2)]):
        lin = nn.Linear(a, b).to(DTYPE)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=g, dtype=DTYPE) * 0.1)
            lin.bias.copy_(3.0 + 0.3 * torch.randn(b, generator=g, dtype=DTYPE))
        layers.append(lin)
        if i < 2:
            layers.append(act())
    return nn.Sequential(*layers).eval()


def test_relu6_exact_on_its_linear_part() -> None:
    model, linear = _relu6_net(nn.ReLU6), _relu6_net(nn.Identity)
    lo, hi = _box((3,), 4, 0.5, seed=4)
    prog = absdsl.compile(model, "deeppoly")
    # premise: every pre-activation lies strictly inside (0, 6), even by Box
    for l, u in absdsl.compile(model, "box").intermediate_bounds(lo, hi).values():
        assert (l > 0.1).all() and (u < 5.9).all()
    lb, ub = prog(lo, hi)
    want_l, want_u = absdsl.compile(linear, "deeppoly")(lo, hi)
    torch.testing.assert_close(lb, want_l, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ub, want_u, rtol=1e-9, atol=1e-9)
    # and that is the exact interval of the affine map
    W, b = _affine_of(linear, (3,))
    c, r = (hi + lo) / 2, (hi - lo) / 2
    torch.testing.assert_close(lb, c @ W.T + b - r @ W.abs().T, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ub, c @ W.T + b + r @ W.abs().T, rtol=1e-9, atol=1e-9)


# ---- 3. linear shape ops --------------------------------------------------------------------

def _affine_of(model: nn.Module, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of an affine model by autograd: W the Jacobian at 0, b = model(0)."""
    zero = torch.zeros(1, *shape, dtype=DTYPE)
    with torch.no_grad():
        b = model(zero).reshape(-1)
    jac = torch.autograd.functional.jacobian(lambda t: model(t).reshape(-1), zero)
    return jac.reshape(b.numel(), -1), b


class ShapeNet(nn.Module):
    """Every linear shape op of the front end, with activations between (or identities)."""

    def __init__(self, act: type[nn.Module] = nn.ReLU, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():  # seeded weights, the global generator untouched
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(2, 3, 3, padding=1)
            self.convt = nn.ConvTranspose2d(2, 2, 3, stride=2, padding=1)
            self.fc = nn.Linear(24, 3)
        self.act1, self.act2 = act(), act()
        self.pad = nn.ZeroPad2d((1, 0, 0, 1))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.pool = nn.AdaptiveAvgPool2d((3, 2))
        self.unflat = nn.Unflatten(1, (2, 12))
        self.to(DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:      # x: [B, 2, 4, 4]
        h = self.act1(self.conv(x))                           # [B, 3, 4, 4]
        h = h.permute(0, 2, 3, 1).transpose(1, 2)             # [B, 4, 4, 3]
        h = h.permute(0, 3, 2, 1)                             # [B, 3, 4, 4]
        h = F.pad(self.pad(h), (0, 1, 1, 0))                  # [B, 3, 6, 6]
        a, b, c = torch.chunk(h, 3, dim=1)                    # [B, 1, 6, 6] each
        s1, s2 = torch.split(h, [2, 1], dim=1)
        s = torch.stack([a[:, 0], b[:, 0] + c[:, 0]], dim=1)  # [B, 2, 6, 6]
        s = s + s1 - s2.expand(-1, 2, -1, -1)
        s = s[:, :, 1:5, ::2]                                 # [B, 2, 4, 3]
        row = s.mean(dim=2, keepdim=True).expand(-1, -1, 4, -1)
        s = s + row - s.sum(dim=(1,), keepdim=True).expand_as(s) * 0.5
        t = F.interpolate(s, size=(5, 4), mode="bilinear", align_corners=False)  # [B,2,5,4]
        n = self.up(s)                                        # [B, 2, 8, 6]
        n = F.interpolate(n, size=(5, 4), mode="nearest")     # [B, 2, 5, 4]
        m = self.act2(t + n)
        m = self.convt(m)                                     # [B, 2, 9, 7]
        m = self.pool(m)                                      # [B, 2, 3, 2] (9 -> 3, 7 -> 2)
        f = m.flatten(1)                                      # [B, 12]
        g = torch.cat([f, m[:, 1].flatten(1)], 1)             # [B, 18]
        z = self.unflat(torch.cat([g, m[:, 0, 0, :], m[:, 1, :, 1], m[:, 0, 2, :1]], 1))
        return self.fc(z.flatten(1))                          # z: [B, 2, 12]


SHAPE = (2, 4, 4)


def test_shape_net_traces_every_shape_op() -> None:
    prog = absdsl.compile(ShapeNet(), "box", input_shape=SHAPE)
    labels = " ".join(n.describe() for n in prog.ir.nodes)
    for word in ("permute", "transpose", "pad", "narrow", "expand", "mean", "sum",
                 "interpolate bilinear", "interpolate nearest", "conv_transpose2d",
                 "adaptive_avg_pool2d", "index"):
        assert word in labels, word
    assert any(n.op == "cat" for n in prog.ir.nodes)


@pytest.mark.parametrize("domain", DOMAINS)
def test_shape_ops_sound_exact_differentiable(domain: str) -> None:
    model = ShapeNet().eval()
    prog = absdsl.compile(model, domain)
    for eps in (0.02, 0.3):
        lo, hi = _box(SHAPE, 2, eps, seed=5)
        lb, ub = prog(lo, hi)
        assert lb.shape == (2, 3)
        assert_sound(model, lb, ub, lo, hi)
    x = _box(SHAPE, 2, 0.0, seed=6)[0]
    with torch.no_grad():
        y = model(x)
    lb, ub = prog(x, x.clone())
    torch.testing.assert_close(lb, y, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ub, y, rtol=1e-9, atol=1e-9)
    lo, hi = _box(SHAPE, 2, 0.1, seed=7)
    lb, ub = prog(lo, hi)
    (ub - lb).sum().backward()
    for name in ("conv.weight", "convt.weight", "fc.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


@pytest.mark.parametrize("domain", DOMAINS)
def test_shape_ops_vmap_over_functional(domain: str) -> None:
    model = ShapeNet().eval()
    prog = absdsl.compile(model, domain)
    lo, hi = _box(SHAPE, 2, 0.1, seed=8)
    base = {k: v.detach() for k, v in prog.params().items()}
    g = torch.Generator().manual_seed(8)
    sets = [base] + [{k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype)
                      for k, v in base.items()} for _ in range(2)]
    stacked = {k: torch.stack([s[k] for s in sets]) for k in base}
    vl, vu = torch.func.vmap(lambda ps: prog.functional(ps, lo, hi))(stacked)
    assert (vl[1] - vl[0]).abs().max() > 1e-4  # the parameter sets do differ
    for i, s in enumerate(sets):
        pl, pu = prog.functional(s, lo, hi)
        torch.testing.assert_close(vl[i], pl, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(vu[i], pu, rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        cl, cu = prog(lo, hi)
    torch.testing.assert_close(vl[0], cl, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(vu[0], cu, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("domain", ["deeppoly", "zonotope", "crown-ibp"])
def test_linear_shape_net_exact(domain: str) -> None:
    model = ShapeNet(act=nn.Identity).eval()
    prog = absdsl.compile(model, domain)
    lo, hi = _box(SHAPE, 3, 0.2, seed=9)
    lb, ub = prog(lo, hi)
    W, b = _affine_of(model, SHAPE)
    c, r = ((hi + lo) / 2).flatten(1), ((hi - lo) / 2).flatten(1)
    torch.testing.assert_close(lb, c @ W.T + b - r @ W.abs().T, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ub, c @ W.T + b + r @ W.abs().T, rtol=1e-9, atol=1e-9)
    # the IR's own affine matrices agree with the model (the ConvTranspose2d node)
    cg = prog.concrete(SHAPE)
    node = next(n for n in prog.ir.nodes if "conv_transpose2d" in n.describe())
    Wn, bn = cg.affine_matrix(node.name)
    src = cg.graph.by_name[node.inputs[0]]
    z = torch.randn(1, *src.shape, dtype=DTYPE)
    with torch.no_grad():
        want = model.convt(z).reshape(-1)
    torch.testing.assert_close(Wn @ z.reshape(-1) + bn, want, rtol=1e-9, atol=1e-9)


# ---- 4. max pooling -------------------------------------------------------------------------

POOLS = [dict(kernel_size=2), dict(kernel_size=3), dict(kernel_size=2, stride=1),
         dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, ceil_mode=True),
         dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)]
POOL_IDS = ["k2", "k3", "k2s1", "k3s2p1", "k2ceil", "k3s2p1ceil"]


class PoolNet(nn.Module):
    def __init__(self, pool: dict, head: bool = True, functional: bool = False) -> None:
        super().__init__()
        self.pool_kw = pool
        self.pool = nn.MaxPool2d(**pool)
        self.functional = functional
        self.head = head
        n = nn.MaxPool2d(**pool)(torch.zeros(1, 2, 5, 5)).numel()
        with torch.random.fork_rng():
            torch.manual_seed(10)
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.fc = nn.Linear(n, 3)
        self.to(DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = F.max_pool2d(h, **self.pool_kw) if self.functional else self.pool(h)
        return self.fc(h.flatten(1)) if self.head else h


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_max_pool_sound_and_exact(pool: dict) -> None:
    lo, hi, x = _boxes_and_points((1, 5, 5), seed=11, eps=(0.02, 0.2), per=1)
    model = PoolNet(pool).eval()
    for domain in DOMAINS:
        _check_sound_and_exact(model, absdsl.compile(model, domain), lo, hi, x, domain)
    model = PoolNet(pool, functional=True).eval()  # F.max_pool2d
    for domain in ("box", "deeppoly"):
        _check_sound_and_exact(model, absdsl.compile(model, domain), lo, hi, x, domain)


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_box_max_pool_is_max_pool_of_the_bounds(pool: dict) -> None:
    model = PoolNet(pool, head=False).eval()
    lo, hi = _box((1, 5, 5), 3, 0.3, seed=13)
    prog = absdsl.compile(model, "box", input_shape=(1, 5, 5))
    assert any(n.op == "max_pool2d" for n in prog.ir.nodes)
    lb, ub = prog(lo, hi)
    w, b = model.conv.weight.detach(), model.conv.bias.detach()
    c, r = (hi + lo) / 2, (hi - lo) / 2
    mid, rad = F.conv2d(c, w, b, padding=1), F.conv2d(r, w.abs(), None, padding=1)
    torch.testing.assert_close(lb, F.max_pool2d(mid - rad, **pool), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ub, F.max_pool2d(mid + rad, **pool), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_decomposed_max_pool_is_the_model(pool: dict) -> None:
    model = PoolNet(pool).eval()
    # zonotope has no rule for a max: the pool is lowered to ReLUs (back-substitution
    # domains relax it as one op, tests/core/test_max_relaxation.py)
    prog = absdsl.compile(model, "zonotope", input_shape=(1, 5, 5))
    assert not any(n.op == "max_pool2d" for n in prog.ir.nodes)
    assert sum(n.op == "relu" for n in prog.ir.nodes) >= 2
    cg = prog.concrete((1, 5, 5))
    x = torch.randn(6, 1, 5, 5, dtype=DTYPE, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        values = cg.forward(x)
        torch.testing.assert_close(values[prog.ir.output], model(x), rtol=1e-12, atol=1e-12)
        # the node that replaces the pool holds exactly the pooled map
        pooled = model.pool(model.conv(x))
        assert any(v.shape == pooled.shape and torch.allclose(v, pooled, rtol=0, atol=1e-12)
                   for v in values.values())


# ---- 5. bad input ---------------------------------------------------------------------------

class LogOf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2).to(DTYPE)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, 0.5], [0.2, -1.0]], dtype=DTYPE))
            self.lin.bias.copy_(torch.tensor([0.1, 3.0], dtype=DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.lin(x))


@pytest.mark.parametrize("domain", DOMAINS)
def test_log_of_a_range_crossing_zero(domain: str) -> None:
    model = LogOf().eval()
    lo = torch.tensor([[-1.0, -1.0]], dtype=DTYPE)
    hi = torch.tensor([[1.0, 1.0]], dtype=DTYPE)
    with pytest.raises(InputError) as err:
        absdsl.compile(model, domain)(lo, hi)
    msg = str(err.value)
    # the Linear's range: [0.1 - 1.5, 3 + 1.2] over both neurons
    assert "log" in msg and "[-1.4, 4.2]" in msg, msg
    lb, ub = absdsl.compile(model, domain)(lo * 0.05, hi * 0.05)   # inside (0, inf): fine
    assert torch.isfinite(lb).all() and torch.isfinite(ub).all()


class Product(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(2, 2).to(DTYPE), nn.Linear(2, 2).to(DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) * self.b(x)


class Pow(nn.Module):
    def __init__(self, n: float, method: bool) -> None:
        super().__init__()
        self.lin, self.n, self.method = nn.Linear(2, 2).to(DTYPE), n, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        return torch.pow(h, self.n) if self.method else h ** self.n


def _compile_and_run(model: nn.Module, domain: str = "box"):
    lo, hi = _box((2,), 1, 0.1)
    return absdsl.compile(model, domain)(lo, hi)


class Attention(nn.Module):
    """Products, quotients and the lowered ops: a squeeze-excitation product, LayerNorm,
    softmax attention, a class token joined by cat, F.normalize, GroupNorm, log_softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 4))
        self.norm = nn.LayerNorm(4)
        self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.gate = nn.Linear(4, 4)
        self.group = nn.GroupNorm(2, 4)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 2, 3]
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), self.embed(x)], dim=1)
        h = self.norm(t)
        a = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2) / 2.0, dim=-1)
        t = t + a @ self.v(h)
        t = t * torch.sigmoid(self.gate(t))                       # squeeze-excitation style
        t = t / (1.5 + torch.abs(t))                              # a quotient (y > 0)
        g = self.group(t.transpose(1, 2).unsqueeze(-1)).flatten(1)[:, :4]
        return torch.log_softmax(self.head(torch.cat([F.normalize(t[:, 0], dim=1), g], 1)),
                                 dim=-1)


def test_products_and_lowered_ops_sound_and_exact_in_every_domain() -> None:
    torch.manual_seed(0)
    model = Attention().to(DTYPE).eval()
    lo, hi, x = _boxes_and_points((2, 3), seed=5, eps=(0.01, 0.05))
    ir_ops = {n.op for n in absdsl.compile(model, "box", input_shape=(2, 3)).ir.nodes}
    assert {"mul", "reciprocal", "rsqrt_eps", "inv_norm", "exp", "neg_log1p", "pow"} <= ir_ops
    for domain in DOMAINS:
        _check_sound_and_exact(model, absdsl.compile(model, domain), lo, hi, x, domain)


def test_product_bounds_are_corners_and_mccormick_planes() -> None:
    """Box takes the extremes of the four corner products; the McCormick planes DeepPoly and
    CROWN-IBP use are valid on the box (sound) and exact on degenerate boxes."""
    model = Product().eval()
    lo, hi = _box((2,), 8, 0.3, seed=2)
    bl, bu = absdsl.compile(model, "box")(lo, hi)
    with torch.no_grad():
        ya_lo, ya_hi = absdsl.compile(nn.Sequential(model.a), "box")(lo, hi)
        yb_lo, yb_hi = absdsl.compile(nn.Sequential(model.b), "box")(lo, hi)
    corners = torch.stack([ya_lo * yb_lo, ya_lo * yb_hi, ya_hi * yb_lo, ya_hi * yb_hi])
    assert torch.allclose(bl, corners.min(0).values, atol=1e-12)
    assert torch.allclose(bu, corners.max(0).values, atol=1e-12)
    lo2, hi2, x = _boxes_and_points((2,), seed=4)
    for domain in ("deeppoly", "crown-ibp", "zonotope", "hbox"):
        _check_sound_and_exact(model, absdsl.compile(model, domain), lo2, hi2, x, domain)


@pytest.mark.parametrize("method", [False, True])
def test_pow_with_fractional_exponent_outside_its_domain(method: bool) -> None:
    """x ** 2.5 is sqrt then a cube: on a box reaching below 0 the call names the node, the
    op and the range (docs/ops.md); test_peer_ops checks it inside its domain."""
    with pytest.raises(InputError) as err:
        _compile_and_run(Pow(2.5, method))
    msg = str(err.value)
    assert "sqrt %pow" in msg and "outside the op's domain [0, inf]" in msg, msg


@pytest.mark.parametrize("functional", [False, True])
def test_gelu_tanh_approximation_has_no_rule(functional: bool) -> None:
    act: nn.Module = Fn(lambda x: F.gelu(x, approximate="tanh")) if functional \
        else nn.GELU(approximate="tanh")
    model = nn.Sequential(nn.Linear(2, 2), act).to(DTYPE).eval()
    with pytest.raises(TraceError) as err:
        _compile_and_run(model)
    assert "approximate='tanh'" in str(err.value)
    _compile_and_run(nn.Sequential(nn.Linear(2, 2), nn.GELU()).to(DTYPE).eval())


NO_GELU = """domain Monotone {
  state { l: bound; u: bound }
  gamma { l <= x <= u }
  rule input { l = lo; u = hi }
  rule affine { c = (u + l) / 2; r = (u - l) / 2; l = W @ c + b - |W| @ r; u = W @ c + b + |W| @ r }
  rule add(p, q) { l = p.l + q.l; u = p.u + q.u }
  rule monotone { l = f(l); u = f(u) }
}
"""


def test_missing_gelu_rule_names_the_domains_that_have_one(tmp_path: Path) -> None:
    path = tmp_path / "mono.absd"
    path.write_text(NO_GELU)
    relu_net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).to(DTYPE).eval()
    _compile_and_run(relu_net, str(path))                  # the file itself is fine
    model = nn.Sequential(nn.Linear(2, 3), nn.GELU(), nn.Linear(3, 2)).to(DTYPE).eval()
    with pytest.raises(TraceError) as err:
        _compile_and_run(model, str(path))
    msg = str(err.value)
    assert "gelu" in msg and "built-in domains with a rule for gelu" in msg, msg
    listed = msg.split("built-in domains with a rule for gelu:")[1]
    for name in DOMAINS:
        assert name in listed, (name, msg)


def test_check_rejects_a_product_relaxation_that_is_not_valid(tmp_path: Path) -> None:
    """``absdsl check`` tests a two-input relaxation on a grid of boxes: lines raised by
    0.1 % of the box are refuted with the box, the point and the planes."""
    from absdsl.dsl.loader import builtin_path
    from absdsl.soundness import check_domain

    for name in ("relax.absd", "box.absd", "deeppoly.absd"):
        (tmp_path / name).write_text(Path(str(builtin_path(name))).read_text())
    text = (tmp_path / "deeppoly.absd").read_text()
    bad = ("relax mul(x, y; lx, ux, ly, uy) {\n"
           "  else: lower ly * x + lx * y - lx * ly + 1e-3 * (ux - lx), "
           "upper uy * x + lx * y - lx * uy\n}\n")
    (tmp_path / "deeppoly.absd").write_text(text.replace('import "relax.absd"\n',
                                                         'import "relax.absd"\n' + bad))
    report = check_domain(str(tmp_path / "deeppoly.absd"), max_examples=4, seed=0,
                          properties=("relaxations",))
    assert not report.ok
    failed = [r for r in report.results if not r.passed]
    assert failed[0].name.startswith("relaxations: the product's planes")
    cex = failed[0].counterexample
    assert cex is not None and cex.network == "mul" and "lower plane" in cex.which
    ok = check_domain("deeppoly", max_examples=4, seed=0, properties=("relaxations",))
    assert any("product's planes" in r.name and r.passed for r in ok.results)


class AmaxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(36, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.fc(torch.cat([torch.amax(y, dim=2).flatten(1),
                                  y.amax(dim=-1, keepdim=True).flatten(1)], 1))


def test_amax_over_a_dim_in_every_domain() -> None:
    """Box maps the bounds through amax (monotone); the other domains get the slices and
    the max tree; all sound and exact on points; the MILP-facing IR has no amax left."""
    torch.manual_seed(0)
    model = AmaxNet().to(DTYPE).eval()
    lo, hi, x = _boxes_and_points((1, 6, 6), seed=7)
    for domain in DOMAINS:
        _check_sound_and_exact(model, absdsl.compile(model, domain), lo, hi, x, domain)
    cl, cu = absdsl.compile(nn.Sequential(model.conv), "box")(lo, hi)
    pooled = nn.Sequential(model.conv, Fn(lambda t: torch.amax(t, dim=2)))
    pl, pu = absdsl.compile(pooled, "box")(lo, hi)
    assert torch.equal(pl, torch.amax(cl, dim=2)) and torch.equal(pu, torch.amax(cu, dim=2))
    assert any(n.op == "amax" for n in absdsl.compile(model, "box", input_shape=(1, 6, 6)).ir.nodes)
    # back-substitution relaxes the max as one op; the MILP-facing graph decomposes it
    prog = absdsl.compile(model, "deeppoly", input_shape=(1, 6, 6))
    assert any(n.op == "amax" for n in prog.ir.nodes)
    assert not any(n.op == "amax" for n in prog.concrete().without_max().graph.nodes)


class MaxMinNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(3, 6)
        self.fc = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.maximum(self.a(x), self.b(x))
        z = torch.min(self.a(x), self.b(x))
        v = torch.max(y.reshape(-1, 2, 3), dim=2).values
        w = torch.max(z.reshape(-1, 2, 3), 1)[0]
        return self.fc(torch.cat([v, w, z[:, :2]], 1))


def test_elementwise_max_min_and_max_over_a_dim_in_every_domain() -> None:
    torch.manual_seed(0)
    model = MaxMinNet().to(DTYPE).eval()
    lo, hi, x = _boxes_and_points((3,), seed=8)
    for domain in DOMAINS:
        _check_sound_and_exact(model, absdsl.compile(model, domain), lo, hi, x, domain)


def test_the_indices_of_a_max_are_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 4), Fn(lambda t: torch.max(t, dim=1)[1].to(t.dtype)))
    with pytest.raises(TraceError, match="indices of a max"):
        absdsl.compile(model.to(DTYPE), "box", input_shape=(3,))
