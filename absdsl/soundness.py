"""Hypothesis-driven soundness checking of any abstract domain (built-in or a user's file).

    from absdsl.soundness import check_domain
    report = check_domain("my_domain.absd", max_examples=50, seed=0)
    print(report.format()); assert report.ok

Properties checked (each reported PASS or with a shrunk counterexample):

- ``bounds``: on small random networks (Linear, Conv2d with stride/padding/groups, eval
  BatchNorm, AvgPool2d, Flatten, residual ``x + f(x)``, ``cat``, ReLU, LeakyReLU, Sigmoid,
  Tanh, Hardtanh), every network prefix (so the output ends at every kind of op) is
  bounded: for concrete points x in the input box (corners first, then uniform), the
  concrete output lies in the program's [lb, ub]. The oracle is the domain's own
  concretisation (the program's output bounds).
- ``spec``: the same for ``C @ f(x)`` with a margin spec and a random spec matrix.
- ``relaxations`` (domains with relaxations): for each relaxation, l <= u (l = u, l = 0,
  u = 0, u = -l and random) and x in [l, u]: lower line <= f(x) <= upper line.

Floating-point policy (docs/testing.md states the same): programs and concrete runs in
float64; a bound counts as violated only by more than
``tol = 1e-9 * (1 + max |value| seen in the concrete run and bounds)``. NaN bounds are
always a violation.

Ops the domain has no rule for (a ``TraceError`` naming "no rule"/"no relaxation" when a
one-op network is compiled) are not drawn for that domain and are listed as skipped.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st
from hypothesis.reporting import with_reporter

DTYPE = torch.float64
REL_TOL = 1e-9

ACTIVATION_OPS = ("relu", "leaky_relu", "sigmoid", "tanh", "hardtanh")
LAYER_OPS = ("linear", "conv", "bn", "avgpool", "flatten", "residual", "cat")
ALL_OPS = LAYER_OPS + ACTIVATION_OPS


def tolerance(*tensors: torch.Tensor) -> float:
    """The policy: ``1e-9 * (1 + max |finite value|)`` over the given tensors."""
    m = 0.0
    for t in tensors:
        if t.numel():
            finite = t.detach()[torch.isfinite(t.detach())]
            if finite.numel():
                m = max(m, float(finite.abs().max()))
    return REL_TOL * (1.0 + m)


# ---- network descriptions ------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One layer of a drawn network: ``op`` plus its hyper-parameters and weights.

    ``weights`` is a flat list of floats consumed in parameter order; ``inner`` holds the
    branch layers of ``residual`` (x + f(x)) and ``cat`` (cat([f(x), g(x)], 1)).
    """

    op: str
    args: tuple = ()
    weights: tuple[float, ...] = ()
    inner: tuple[tuple[Layer, ...], ...] = ()

    def describe(self) -> str:
        if self.op in ("residual", "cat"):
            branches = " | ".join(", ".join(la.describe() for la in b) or "identity"
                                  for b in self.inner)
            return f"{self.op}({branches})"
        args = ", ".join(str(a) for a in self.args)
        w = ""
        if self.weights:
            w = " w=[" + ", ".join(f"{v:.6g}" for v in self.weights) + "]"
        return f"{self.op}({args}){w}"


@dataclass(frozen=True)
class NetSpec:
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]

    def describe(self) -> str:
        lines = [f"input {list(self.input_shape)}"]
        lines += [f"  {i}: {la.describe()}" for i, la in enumerate(self.layers)]
        return "\n".join(lines)


class _Residual(nn.Module):
    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f = f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class _Cat(nn.Module):
    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        self.f = f
        self.g = g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.f(x), self.g(x)], dim=1)


def _fill(params: list[torch.Tensor], weights: tuple[float, ...]) -> None:
    flat = torch.tensor(weights, dtype=DTYPE) if weights else torch.zeros(0, dtype=DTYPE)
    i = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            chunk = flat[i:i + n]
            if chunk.numel() < n:  # cycle the drawn values if too few were drawn
                reps = math.ceil(n / max(flat.numel(), 1))
                chunk = flat.repeat(reps)[:n] if flat.numel() else torch.zeros(n, dtype=DTYPE)
            p.copy_(chunk.reshape(p.shape))
            i += n


def n_weights(layer: Layer, shape: tuple[int, ...]) -> int:
    """Number of floats a layer consumes on an input of ``shape``."""
    op, a = layer.op, layer.args
    if op == "linear":
        return a[0] * shape[0] + a[0]
    if op == "conv":
        out_ch, k, _s, _p, groups = a
        return out_ch * (shape[0] // groups) * k * k + out_ch
    if op == "bn":
        return 4 * shape[0]
    return 0


def build_layer(layer: Layer, shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    """The module of a layer on inputs of per-sample ``shape`` and its output shape."""
    op, a = layer.op, layer.args
    mod: nn.Module
    if op == "linear":
        linear = nn.Linear(shape[0], a[0]).to(DTYPE)
        _fill([linear.weight, linear.bias], layer.weights)
        mod = linear
    elif op == "conv":
        out_ch, k, s, p, groups = a
        conv = nn.Conv2d(shape[0], out_ch, k, stride=s, padding=p, groups=groups).to(DTYPE)
        assert conv.bias is not None  # built with bias=True (the default)
        _fill([conv.weight, conv.bias], layer.weights)
        mod = conv
    elif op == "bn":
        bn_cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        bn = bn_cls(shape[0]).to(DTYPE)
        # affine and track_running_stats (the defaults): all four tensors exist
        assert bn.running_mean is not None and bn.running_var is not None
        w = layer.weights
        c = shape[0]
        with torch.no_grad():
            vals = torch.tensor(w, dtype=DTYPE) if w else torch.ones(4 * c, dtype=DTYPE)
            bn.weight.copy_(vals[:c])
            bn.bias.copy_(vals[c:2 * c])
            bn.running_mean.copy_(vals[2 * c:3 * c])
            bn.running_var.copy_(vals[3 * c:4 * c].abs() + 1e-3)
        mod = bn.eval()
    elif op == "avgpool":
        k, s, p = a
        mod = nn.AvgPool2d(k, stride=s, padding=p)
    elif op == "flatten":
        mod = nn.Flatten()
    elif op == "relu":
        mod = nn.ReLU()
    elif op == "leaky_relu":
        mod = nn.LeakyReLU(a[0])
    elif op == "sigmoid":
        mod = nn.Sigmoid()
    elif op == "tanh":
        mod = nn.Tanh()
    elif op == "hardtanh":
        mod = nn.Hardtanh(a[0], a[1])
    elif op == "residual":
        f, out = build_seq(layer.inner[0], shape)
        if out != shape:
            raise ValueError(f"residual branch changes the shape {shape} -> {out}")
        mod = _Residual(f)
    elif op == "cat":
        f, s1 = build_seq(layer.inner[0], shape)
        g, s2 = build_seq(layer.inner[1], shape)
        if s1[1:] != s2[1:]:
            raise ValueError(f"cat branches disagree: {s1} vs {s2}")
        mod = _Cat(f, g)
    else:
        raise ValueError(f"unknown op {op!r}")
    with torch.no_grad():
        out_shape = tuple(mod.eval()(torch.zeros((1, *shape), dtype=DTYPE)).shape[1:])
    return mod, out_shape


def build_seq(layers: tuple[Layer, ...], shape: tuple[int, ...]
              ) -> tuple[nn.Sequential, tuple[int, ...]]:
    mods = []
    for la in layers:
        m, shape = build_layer(la, shape)
        mods.append(m)
    return nn.Sequential(*mods).eval(), shape


def build_net(spec: NetSpec) -> nn.Sequential:
    return build_seq(spec.layers, spec.input_shape)[0]


# ---- strategies ----------------------------------------------------------------------------

def weight_values() -> st.SearchStrategy[float]:
    """Weights: mostly moderate, with exact zeros, huge (1e3) and tiny (1e-6) values."""
    return st.one_of(
        st.floats(-2.0, 2.0, allow_nan=False, width=64),
        st.sampled_from([0.0, 0.0, 1.0, -1.0, 1e3, -1e3, 1e-6, -1e-6, 0.5]),
    )


def _weights(draw: Any, n: int) -> tuple[float, ...]:
    return tuple(draw(st.lists(weight_values(), min_size=n, max_size=n)))


@st.composite
def _activation(draw: Any, ops: frozenset[str]) -> Layer:
    names = [o for o in ACTIVATION_OPS if o in ops]
    op = draw(st.sampled_from(names))
    if op == "leaky_relu":
        return Layer(op, (draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0])),))
    if op == "hardtanh":
        lo = draw(st.sampled_from([-1.0, -2.0, 0.0, -0.5]))
        hi = draw(st.sampled_from([1.0, 0.5, 2.0]))
        return Layer(op, (lo, hi))
    return Layer(op)


@st.composite
def _layer(draw: Any, shape: tuple[int, ...], ops: frozenset[str], depth: int) -> Layer:
    """One layer valid on ``shape`` (its weights drawn for that shape)."""
    image = len(shape) == 3
    choices = [o for o in ACTIVATION_OPS if o in ops]
    if image:
        choices += [o for o in ("conv", "bn", "avgpool", "flatten") if o in ops]
        if "avgpool" in choices and min(shape[1:]) < 2:
            choices.remove("avgpool")
    else:
        choices += [o for o in ("linear", "bn") if o in ops]
    if depth == 0:
        choices += [o for o in ("residual", "cat") if o in ops]
    if not choices:
        choices = ["linear"] if not image else ["flatten"]
    op = draw(st.sampled_from(choices))
    if op in ACTIVATION_OPS:
        return draw(_activation(ops))
    if op == "linear":
        out = draw(st.integers(1, 4))
        la = Layer("linear", (out,))
    elif op == "conv":
        c = shape[0]
        groups = draw(st.sampled_from([g for g in (1, 2) if c % g == 0]))
        out_ch = groups * draw(st.integers(1, 2))
        k = draw(st.integers(1, min(3, shape[1] + 2, shape[2] + 2)))
        p = draw(st.integers(0, 1))
        k = min(k, shape[1] + 2 * p, shape[2] + 2 * p)
        s = draw(st.integers(1, 2))
        la = Layer("conv", (out_ch, k, s, p, groups))
    elif op == "bn":
        la = Layer("bn")
    elif op == "avgpool":
        k = draw(st.integers(1, 2))
        s = draw(st.integers(1, 2))
        p = draw(st.integers(0, k // 2))
        return Layer("avgpool", (k, s, p))
    elif op == "flatten":
        return Layer("flatten")
    elif op == "residual":
        # a shape-preserving branch: same-size linear / 3x3-pad-1 conv, then maybe an act.
        if image:
            inner: list[Layer] = [_shape_conv(draw, shape)]
        else:
            inner = [Layer("linear", (shape[0],), _weights(draw, shape[0] * shape[0]
                                                           + shape[0]))]
        if draw(st.booleans()) and any(o in ops for o in ACTIVATION_OPS):
            inner.append(draw(_activation(ops)))
        return Layer("residual", inner=(tuple(inner),))
    else:  # cat along dim 1 of two branches
        def branch() -> tuple[Layer, ...]:
            if draw(st.booleans()) and any(o in ops for o in ACTIVATION_OPS):
                return (draw(_activation(ops)),)
            if image:
                return (_shape_conv(draw, shape),)
            out = draw(st.integers(1, 3))
            return (Layer("linear", (out,), _weights(draw, out * shape[0] + out)),)
        return Layer("cat", inner=(branch(), branch()))
    return Layer(la.op, la.args, _weights(draw, n_weights(la, shape)))


def _shape_conv(draw: Any, shape: tuple[int, ...]) -> Layer:
    la = Layer("conv", (shape[0], 3, 1, 1, 1))
    return Layer("conv", la.args, _weights(draw, n_weights(la, shape)))


@st.composite
def networks(draw: Any, ops: frozenset[str] = frozenset(ALL_OPS), max_layers: int = 5
             ) -> NetSpec:
    """Small networks over the supported ``ops``; image or vector input."""
    image = draw(st.booleans()) and ("conv" in ops or "flatten" in ops)
    if image:
        shape: tuple[int, ...] = (draw(st.integers(1, 2)), draw(st.integers(1, 4)),
                                  draw(st.integers(1, 4)))
    else:
        shape = (draw(st.integers(1, 4)),)
    start = shape
    layers = []
    for _ in range(draw(st.integers(1, max_layers))):
        la = draw(_layer(shape, ops, 0))
        try:
            _, new_shape = build_layer(la, shape)
        except (ValueError, RuntimeError):
            continue
        if math.prod(new_shape) == 0 or math.prod(new_shape) > 64:
            continue
        layers.append(la)
        shape = new_shape
    if not layers:
        layers.append(Layer("flatten") if len(shape) == 3 else
                      Layer("linear", (2,), _weights(draw, 2 * shape[0] + 2)))
    return NetSpec(start, tuple(layers))


@st.composite
def input_boxes(draw: Any, shape: tuple[int, ...], batch: int = 2
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes [lo, hi] (batched): degenerate (l = u), touching 0, symmetric, random."""
    n = batch * math.prod(shape)
    kind = draw(st.sampled_from(["random", "degenerate", "touch0", "symmetric", "mixed"]))
    centre = draw(st.lists(st.floats(-2, 2, width=64), min_size=n, max_size=n))
    radius = draw(st.lists(st.one_of(st.floats(0, 1.5, width=64),
                                     st.sampled_from([0.0, 1e-6, 1e3])),
                           min_size=n, max_size=n))
    c = torch.tensor(centre, dtype=DTYPE)
    r = torch.tensor(radius, dtype=DTYPE)
    if kind == "degenerate":
        lo, hi = c, c.clone()
    elif kind == "touch0":
        side = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        lo = torch.where(side, torch.zeros_like(r), -r)
        hi = torch.where(side, r, torch.zeros_like(r))
    elif kind == "symmetric":
        lo, hi = -r, r
    elif kind == "mixed":
        pick = torch.tensor(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
        lo = torch.where(pick == 0, c, torch.where(pick == 1, torch.zeros_like(c),
                                                   torch.where(pick == 2, -r, c - r)))
        hi = torch.where(pick == 0, c, torch.where(pick == 1, r,
                                                   torch.where(pick == 2, r, c + r)))
    else:
        lo, hi = c - r, c + r
    return lo.reshape(batch, *shape), hi.reshape(batch, *shape)


def sample_points(lo: torch.Tensor, hi: torch.Tensor, n_uniform: int = 16, max_corners: int = 32,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Points in each box: lo, hi, the centre, corners (all, or a random subset), uniform.

    Returns [batch, n_points, *shape].
    """
    batch, shape = lo.shape[0], tuple(lo.shape[1:])
    d = math.prod(shape)
    flo, fhi = lo.reshape(batch, d), hi.reshape(batch, d)
    g = generator or torch.Generator().manual_seed(0)
    masks = []
    if d <= 5:
        masks = [torch.tensor(bits, dtype=torch.bool) for bits in
                 itertools.product([False, True], repeat=d)]
    else:
        masks = [torch.zeros(d, dtype=torch.bool), torch.ones(d, dtype=torch.bool)]
        masks += [torch.rand(d, generator=g) < 0.5 for _ in range(max_corners - 2)]
    corners = torch.stack([torch.where(m, fhi, flo) for m in masks], 1)  # [B, nc, d]
    mid = ((flo + fhi) / 2).unsqueeze(1)
    t = torch.rand(batch, n_uniform, d, generator=g, dtype=DTYPE)
    uni = flo.unsqueeze(1) + t * (fhi - flo).unsqueeze(1)
    pts = torch.cat([corners, mid, uni], 1)
    return pts.reshape(batch, pts.shape[1], *shape)


# ---- reports -------------------------------------------------------------------------------

@dataclass
class Counterexample:
    prop: str
    network: str
    lo: list
    hi: list
    point: list | None
    which: str           # "lower bound", "upper bound", "NaN bound", relaxation line ...
    index: tuple
    value: float
    bound: float
    excess: float
    tol: float
    spec: list | None = None
    note: str = ""

    def format(self) -> str:
        lines = [f"counterexample ({self.prop}): {self.which} violated by {self.excess:.6g} "
                 f"(tolerance {self.tol:.3g})", "network:", self.network,
                 f"box lo = {self.lo}", f"box hi = {self.hi}"]
        if self.spec is not None:
            lines.append(f"spec C = {self.spec}")
        if self.point is not None:
            lines.append(f"point x = {self.point}")
        lines.append(f"at output index {self.index}: concrete value {self.value:.17g}, "
                     f"bound {self.bound:.17g}")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


@dataclass
class PropertyResult:
    name: str
    passed: bool
    examples: int
    counterexample: Counterexample | None = None
    error: str = ""

    def format(self) -> str:
        if self.passed:
            return f"PASS  {self.name} ({self.examples} examples)"
        body = self.counterexample.format() if self.counterexample else self.error
        return f"FAIL  {self.name}\n" + "\n".join("      " + ln for ln in body.splitlines())


@dataclass
class CheckReport:
    domain: str
    results: list[PropertyResult] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def counterexample(self) -> Counterexample | None:
        return next((r.counterexample for r in self.results if r.counterexample), None)

    def format(self) -> str:
        lines = [f"absdsl check: domain {self.domain}"]
        if self.unsupported:
            lines.append(f"SKIP  ops without a rule in this domain: {', '.join(self.unsupported)}")
        lines += [r.format() for r in self.results]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


class Violation(AssertionError):
    def __init__(self, cex: Counterexample) -> None:
        super().__init__(cex.format())
        self.cex = cex


# ---- the checks ----------------------------------------------------------------------------

def _tolist(t: torch.Tensor) -> list:
    return t.detach().cpu().tolist()


def compare(prop: str, net: str, lo: torch.Tensor, hi: torch.Tensor, pts: torch.Tensor,
            values: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor, extra: tuple = (),
            spec: torch.Tensor | None = None) -> None:
    """Raise :class:`Violation` unless every value lies in [lb, ub] up to the tolerance.

    ``values``: [B, P, n]; ``lb``/``ub``: [B, n].
    """
    tol = tolerance(values, lb, ub, *extra)
    spec_l = _tolist(spec) if spec is not None else None
    for which, bad in (("lower bound", torch.isnan(lb)), ("upper bound", torch.isnan(ub))):
        if bool(bad.any()):
            b, i = (int(v) for v in bad.nonzero()[0])
            raise Violation(Counterexample(prop, net, _tolist(lo[b]), _tolist(hi[b]), None,
                                           f"NaN {which}", (b, i), float("nan"), float("nan"),
                                           float("inf"), tol, spec_l))
    below = lb.unsqueeze(1) - values   # > tol: value under the lower bound
    above = values - ub.unsqueeze(1)
    for which, excess, bnd in (("lower bound", below, lb), ("upper bound", above, ub)):
        worst = float(excess.max()) if excess.numel() else 0.0
        if worst > tol or math.isnan(worst):
            b, p, i = (int(v) for v in (excess == excess.max()).nonzero()[0])
            raise Violation(Counterexample(
                prop, net, _tolist(lo[b]), _tolist(hi[b]), _tolist(pts[b, p]), which,
                (b, i), float(values[b, p, i]), float(bnd[b, i]), worst, tol,
                spec_l[b] if spec_l is not None else None))


def _settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None,
                    derandomize=False, print_blob=False, report_multiple_bugs=False,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target,
                            Phase.shrink],
                    suppress_health_check=list(HealthCheck))


def supported_ops(domain: Any) -> tuple[frozenset[str], list[str]]:
    """Probe the domain with one-op networks: (ops it has rules for, ops it lacks)."""
    import absdsl
    from absdsl.errors import TraceError

    ok, missing = set(), []
    probes: dict[str, NetSpec] = {
        "linear": NetSpec((2,), (Layer("linear", (2,), (1.0, -1.0, 0.5, 2.0, 0.0, 1.0)),)),
        "conv": NetSpec((1, 3, 3), (Layer("conv", (1, 2, 1, 0, 1), (1.0, -1.0, 0.5, 2.0, 0.0)),)),
        "bn": NetSpec((2,), (Layer("bn", (), (1.0, 2.0, 0.0, 1.0, 0.5, -0.5, 1.0, 2.0)),)),
        "avgpool": NetSpec((1, 2, 2), (Layer("avgpool", (2, 2, 0)),)),
        "flatten": NetSpec((1, 2, 2), (Layer("flatten"),)),
        "residual": NetSpec((2,), (Layer("residual", inner=((
            Layer("linear", (2,), (1.0, -1.0, 0.5, 2.0, 0.0, 1.0)),),)),)),
        "cat": NetSpec((2,), (Layer("cat", inner=((Layer("linear", (1,), (1.0, 1.0, 0.0)),),
                                                   (Layer("linear", (1,), (1.0, -1.0, 0.0)),))),)),
        "relu": NetSpec((2,), (Layer("relu"),)),
        "leaky_relu": NetSpec((2,), (Layer("leaky_relu", (0.1,)),)),
        "sigmoid": NetSpec((2,), (Layer("sigmoid"),)),
        "tanh": NetSpec((2,), (Layer("tanh"),)),
        "hardtanh": NetSpec((2,), (Layer("hardtanh", (-1.0, 1.0)),)),
    }
    for op, spec in probes.items():
        # a linear layer in front so that every op sees an input-dependent affine value
        try:
            absdsl.compile(build_net(spec), domain, input_shape=spec.input_shape)
        except TraceError as err:
            text = str(err)
            if "domain" in text and ("no rule" in text or "no relaxation" in text):
                missing.append(op)
            else:  # the front end itself cannot lower the op: not the domain's fault
                missing.append(f"{op} (front end: {text})")
            continue
        ok.add(op)
    return frozenset(ok), missing


def _check_net(domain: Any, spec_net: NetSpec, boxes: tuple[torch.Tensor, torch.Tensor],
               prop: str, use_spec: bool, spec_seed: int) -> None:
    import absdsl

    lo, hi = boxes
    net = build_net(spec_net)
    pts = sample_points(lo, hi, generator=torch.Generator().manual_seed(spec_seed))
    batch, npts = pts.shape[:2]
    flat_pts = pts.reshape(batch * npts, *spec_net.input_shape)
    # every prefix: the output ends at every kind of layer of the network
    acts = [flat_pts]
    with torch.no_grad():
        cur = flat_pts
        for mod in net:
            cur = mod(cur)
            acts.append(cur)
    seen = tuple(a.detach() for a in acts)
    ends = range(1, len(net) + 1) if not use_spec else [len(net)]
    for end in ends:
        sub = nn.Sequential(*list(net)[:end]).eval()
        desc = NetSpec(spec_net.input_shape, spec_net.layers[:end]).describe()
        prog = absdsl.compile(sub, domain, input_shape=spec_net.input_shape)
        values = acts[end].reshape(batch, npts, -1)
        n_out = values.shape[-1]
        if not use_spec:
            with torch.no_grad():
                lb, ub = prog(lo, hi)
            compare(prop, desc, lo, hi, pts, values, lb.reshape(batch, -1),
                    ub.reshape(batch, -1), seen)
            continue
        g = torch.Generator().manual_seed(spec_seed)
        specs = []
        if n_out >= 2:
            labels = torch.randint(0, n_out, (batch,), generator=g)
            specs.append(absdsl.margin_spec(labels, n_out).to(DTYPE))
        rnd = torch.randn(batch, 2, n_out, generator=g, dtype=DTYPE)
        rnd[:, 1] = rnd[:, 1] * (torch.rand(batch, n_out, generator=g) < 0.5)  # exact zeros
        specs.append(rnd)
        for C in specs:
            with torch.no_grad():
                lb, ub = prog(lo, hi, spec=C)
            cv = torch.einsum("bkn,bpn->bpk", C, values)
            compare(prop, desc, lo, hi, pts, cv, lb, ub, seen, spec=C)


@contextlib.contextmanager
def shrink_time_limit(seconds: float) -> Iterator[None]:
    """Cap Hypothesis's shrinking time (each shrink step compiles programs: slow)."""
    from hypothesis.internal.conjecture import engine

    old = getattr(engine, "MAX_SHRINKING_SECONDS", None)
    if old is None:  # another Hypothesis version: keep its default
        yield
        return
    engine.MAX_SHRINKING_SECONDS = math.ceil(seconds)  # declared int; whole seconds suffice
    try:
        yield
    finally:
        engine.MAX_SHRINKING_SECONDS = old


def _run_property(name: str, test: Any, max_examples: int, seed: int,
                  shrink_seconds: float = 30.0) -> PropertyResult:
    """Run a Hypothesis test; the last Violation recorded is the shrunk counterexample."""
    last: dict[str, Any] = {}

    def record(fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> None:
            try:
                fn(*args, **kwargs)
            except Violation as v:
                last["cex"] = v.cex
                raise
        return wrapped

    counter = {"n": 0}

    def counted(*args: Any, **kwargs: Any) -> None:
        counter["n"] += 1
        last["case"] = describe_case(kwargs)
        record(test.inner)(*args, **kwargs)

    runner = hyp_seed(seed)(_settings(max_examples)(given(**test.strategies)(counted)))
    try:
        with shrink_time_limit(shrink_seconds), with_reporter(lambda _msg: None):
            runner()  # Hypothesis's own prints are replaced by the report
    except Violation:
        return PropertyResult(name, False, counter["n"], last.get("cex"))
    except Exception as err:  # a crash of the program is a failure too
        import traceback

        frames = traceback.extract_tb(err.__traceback__)
        where = next((f"{f.filename}:{f.lineno} ({f.name})" for f in reversed(frames)
                      if "hypothesis" not in f.filename), "")
        msg = str(err).split("\nFalsifying example")[0].strip()
        text = (f"the program crashed: {type(err).__name__}: {msg}\n"
                f"raised at {where}\n{last.get('case', '')}")
        return PropertyResult(name, False, counter["n"], None, text)
    return PropertyResult(name, True, counter["n"])


def describe_case(kwargs: dict[str, Any]) -> str:
    """A readable description of a drawn case (network, box) for crash reports."""
    case = kwargs.get("case")
    if isinstance(case, tuple) and len(case) == 3 and isinstance(case[0], NetSpec):
        net, (lo, hi), _ = case
        return (f"network:\n{net.describe()}\nbox lo = {_tolist(lo)}\n"
                f"box hi = {_tolist(hi)}")
    return ", ".join(f"{k} = {v!r}" for k, v in kwargs.items())


@dataclass
class _Test:
    strategies: dict[str, Any]
    inner: Any


def soundness_property(domain: Any, ops: frozenset[str], use_spec: bool) -> _Test:
    prop = "spec" if use_spec else "bounds"

    @st.composite
    def case(draw: Any) -> tuple[NetSpec, tuple[torch.Tensor, torch.Tensor], int]:
        net = draw(networks(ops))
        boxes = draw(input_boxes(net.input_shape))
        return net, boxes, draw(st.integers(0, 2**16))

    def inner(case: tuple) -> None:
        net, boxes, s = case
        _check_net(domain, net, boxes, prop, use_spec, s)

    return _Test({"case": case()}, inner)


# ---- relaxations ---------------------------------------------------------------------------

RELAX_PARAMS: dict[str, list[dict[str, float]]] = {
    "relu": [{}], "sigmoid": [{}], "tanh": [{}],
    "leaky_relu": [{"negative_slope": s} for s in (0.0, 0.01, 0.3, 1.0)],
    "hardtanh": [{"min_val": -1.0, "max_val": 1.0}, {"min_val": 0.0, "max_val": 6.0}],
}


def concrete_activation(op: str, params: dict[str, float]):
    return {
        "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
        "leaky_relu": lambda x: F.leaky_relu(x, params.get("negative_slope", 0.01)),
        "hardtanh": lambda x: F.hardtanh(x, params.get("min_val", -1.0),
                                         params.get("max_val", 1.0)),
    }[op]


def relaxation_functions(domain: Any) -> list[tuple[str, dict[str, float], Any]]:
    """(op, params, fn) for every relaxation of the domain; fn(l, u) -> (a_lo, b_lo, a_hi, b_hi).

    Generated exactly as bound programs generate them (``codegen.relax_function``).
    """
    from absdsl.compiler import codegen
    from absdsl.dsl.loader import load_domain

    loaded = load_domain(domain)
    out: list[tuple[str, dict[str, float], Any]] = []
    for op in ACTIVATION_OPS:
        relax = codegen.relax_for(op, loaded.relaxes)
        if relax is None:
            continue
        for params in RELAX_PARAMS[op]:
            em = codegen.Emitter(indent=0)
            name = codegen.relax_function(relax, op, params, em, loaded.domain,
                                          relax.filename, relax.source)
            fn = codegen.load_generated("\n".join(em.lines), f"relax {op}")[name]
            out.append((op, params, lambda l, u, fn=fn: fn(l, u)[0]))
    return out


def check_relaxation(op: str, params: dict[str, float], fn: Any, l: torch.Tensor,
                     u: torch.Tensor, x: torch.Tensor) -> None:
    """Raise :class:`Violation` unless lower(x) <= f(x) <= upper(x) (elementwise)."""
    a_lo, b_lo, a_hi, b_hi = (torch.as_tensor(t, dtype=DTYPE).expand_as(l) for t in fn(l, u))
    f = concrete_activation(op, params)(x)
    low, up = a_lo * x + b_lo, a_hi * x + b_hi
    tol = tolerance(l, u, x, f, low, up)
    checks = (("lower line > f(x)", low - f), ("f(x) > upper line", f - up),
              ("lower line > upper line", low - up))
    for which, excess in checks:
        bad = torch.isnan(excess) | (excess > tol)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise Violation(Counterexample(
                "relaxations", f"{op}{params or ''}", [float(l[i])], [float(u[i])],
                [float(x[i])], which, (i,), float(f[i]), float((low if 'lower' in which
                                                                else up)[i]),
                float(excess[i]), tol,
                note=f"lines: lower {float(a_lo[i]):.17g} * x + {float(b_lo[i]):.17g}, "
                     f"upper {float(a_hi[i]):.17g} * x + {float(b_hi[i]):.17g}"))


@st.composite
def relax_points(draw: Any) -> tuple[float, float, float]:
    """(l, u, x) with l <= u, x in [l, u]; l = u, l = 0, u = 0, u = -l included."""
    mag = st.one_of(st.floats(0, 5, width=64), st.sampled_from([0.0, 1e-6, 1.0, 1e3]))
    kind = draw(st.sampled_from(["random", "l=u", "l=0", "u=0", "u=-l", "near u=-l"]))
    a, b = draw(st.floats(-5, 5, width=64)), draw(mag)
    if kind == "l=u":
        l, u = a, a
    elif kind == "l=0":
        l, u = 0.0, b
    elif kind == "u=0":
        l, u = -b, 0.0
    elif kind == "u=-l":
        l, u = -b, b
    elif kind == "near u=-l":
        l, u = -b, b * (1 + draw(st.sampled_from([1e-12, -1e-12, 1e-6, -1e-6])))
        l, u = min(l, u), max(l, u)
    else:
        l, u = min(a, a + b), a + b
    t = draw(st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0, 1, width=64)))
    x = min(max(l + t * (u - l), l), u)
    return l, u, x


def relax_grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A deterministic sweep over the guard surfaces (vectorised)."""
    vals = [-1e3, -3.0, -1.0, -0.5, -1e-6, 0.0, 1e-6, 0.5, 1.0, 3.0, 1e3]
    ls, us = [], []
    for a in vals:
        for b in vals:
            if a <= b:
                ls.append(a)
                us.append(b)
        ls.append(-abs(a))
        us.append(abs(a))
    l = torch.tensor(ls, dtype=DTYPE)
    u = torch.tensor(us, dtype=DTYPE)
    ts = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=DTYPE)
    L = l.repeat_interleave(len(ts))
    U = u.repeat_interleave(len(ts))
    X = (L + ts.repeat(len(l)) * (U - L)).clamp(min=L, max=U)
    return L, U, X


def relaxation_property(domain: Any) -> _Test:
    fns = relaxation_functions(domain)

    def inner(point: tuple[float, float, float]) -> None:
        l, u, x = (torch.tensor([v], dtype=DTYPE) for v in point)
        for op, params, fn in fns:
            check_relaxation(op, params, fn, l, u, x)

    return _Test({"point": relax_points()}, inner)


# ---- entry point ---------------------------------------------------------------------------

def check_domain(domain_spec: str | Path | Any, max_examples: int = 50, seed: int = 0,
                 properties: tuple[str, ...] = ("bounds", "spec", "relaxations"),
                 shrink_seconds: float = 30.0) -> CheckReport:
    """Property-test ``domain_spec`` (a built-in name, a file path, ``path:Name``).

    Returns a :class:`CheckReport`: one :class:`PropertyResult` per property, a failing one
    holding the shrunk :class:`Counterexample`. DSL errors in the file propagate
    (:class:`absdsl.errors.DSLError`).
    """
    from absdsl.dsl.loader import load_domain

    loaded = load_domain(domain_spec)  # raises DSLError / AbsdslError before any work
    name = loaded.name
    domain = str(domain_spec) if not hasattr(domain_spec, "domain") else domain_spec
    report = CheckReport(name)
    ops, missing = supported_ops(domain)
    report.unsupported = missing
    if "bounds" in properties:
        report.results.append(_run_property(
            "sound: concrete outputs of every layer lie in the bounds",
            soundness_property(domain, ops, False), max_examples, seed, shrink_seconds))
    if "spec" in properties:
        report.results.append(_run_property(
            "sound: C @ f(x) lies in the spec bounds (margin and random C)",
            soundness_property(domain, ops, True), max_examples, seed + 1, shrink_seconds))
    if "relaxations" in properties and relaxation_functions(domain):
        fns = relaxation_functions(domain)
        grid_result = PropertyResult("relaxations: lower <= f <= upper on the guard grid",
                                     True, 0)
        L, U, X = relax_grid()
        try:
            for op, params, fn in fns:
                check_relaxation(op, params, fn, L, U, X)
                grid_result.examples += L.numel()
        except Violation as v:
            grid_result.passed = False
            grid_result.counterexample = v.cex
        report.results.append(grid_result)
        report.results.append(_run_property(
            "relaxations: lower <= f <= upper (random l <= u, x in [l, u])",
            relaxation_property(domain), max_examples * 4, seed + 2, shrink_seconds))
    return report
