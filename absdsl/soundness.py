"""Hypothesis-driven soundness checking of any abstract domain (built-in or a user's file).

    from absdsl.soundness import check_domain
    report = check_domain("my_domain.absd", max_examples=50, seed=0)
    print(report.format()); assert report.ok

Properties (each reported PASS or with a shrunk counterexample; docs/testing.md has the
details and what the checker can still miss):

- ``bounds``: small random networks (Linear and Conv1d/Conv2d with stride, padding incl.
  ``'same'``, dilation, groups, with or without bias; eval BatchNorm; AvgPool2d;
  AdaptiveAvgPool2d; Flatten; residual ``x + f(x)`` and ``x - f(x)``; ``cat`` incl.
  ``cat([z, act(z)])``; ReLU, LeakyReLU, Sigmoid, Tanh, Hardtanh, ReLU6) whose biases are
  then *aimed*: each pre-activation neuron's bounds, as the domain under test computes them,
  are moved on, just beside (either side, 1e-12 to 0.3 of the scale) or far from a guard
  surface of the domain (``l = 0``, ``u = 0``, ``u = -l`` and every surface its guards,
  ``max``/``min``/``relu``/``|.|`` kinks and ternaries compare, read from the parsed AST),
  or made stably active, inactive or unstable. Input boxes are drawn at scales 1e-6 to 1e3,
  degenerate, touching 0, symmetric, or on those surfaces. Every network prefix is bounded
  and concrete points (corners first) must lie in the bounds.
- ``spec``: the same for ``C @ f(x)`` at every prefix, with margin rows, sums and
  differences of output pairs (they expose wrong correlations) and random rows.
- ``engine``: larger networks (conv chains on 6x6 to 9x9 maps, 16-40 wide Linear layers)
  with mostly stable neurons, so the optimised paths run: patches, live columns, sparse
  relaxation lines, chunked back-substitution under a small memory budget. Sound at concrete
  points, and equal (to the tolerance) to the vmap form and to the plain engine (patches,
  live columns and sparse lines switched off). :data:`ENGINE_COVERAGE` counts the paths hit.
- ``relaxations`` (domains with relaxations): each relaxation's lines on a grid of the guard
  surfaces (constants from the AST included) at scales 1e-6 to 1e3, and on random l <= u.
- ``continuity`` (opt-in, not a soundness property): for the ops a domain declares
  ``continuous``, the robust loss along a direction in weight space has no jump (grid,
  then refinement around the largest difference).

Floating-point policy (docs/testing.md states the same): float64 throughout; a bound at
output ``i`` of sample ``b`` is violated only by more than
``1e-9 * (M[b, i] + |value| + |bound|)``, where ``M`` bounds the magnitude of every term
summed into that output (the network run with ``|W|``, ``|b|`` on ``max(|lo|, |hi|)``): a
tolerance local to the values involved, so a 1 % error at scale 1e-6 is found next to 1e3
entries. NaN bounds are always a violation.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
from collections.abc import Callable, Iterator
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

from absdsl.compiler import ops as _ops
from absdsl.compiler.context import PLAIN as PLAIN_ENGINE

DTYPE = torch.float64
REL_TOL = 1e-9

# every activation of the op table that random networks can take (those defined on a half
# line, or growing too fast for the drawn weights, are checked by their relaxations only),
# plus relu6 (a spelling of hardtanh)
_NOT_IN_NETS = ("exp", "log", "log1p", "neg_log1p", "sqrt", "reciprocal", "inv1p", "pow",
                "pow_odd",
                "rsqrt_eps", "inv_norm")
ACTIVATION_OPS = tuple(o for o in _ops.ACTIVATIONS if o not in _NOT_IN_NETS) + ("relu6",)
# where an op's relaxation is checked (l and u inside): the rest of the line is not its domain
# or overflows float64
RELAX_RANGE: dict[str, tuple[float, float]] = {
    "exp": (-1e3, 50.0), "log": (1e-6, 1e3), "sqrt": (0.0, 1e3), "reciprocal": (1e-3, 1e3),
    "log1p": (-1.0 + 1e-6, 1e3), "neg_log1p": (-1.0 + 1e-6, 1e3), "inv1p": (-1.0 + 1e-3, 1e3),
    "pow": (-1e3, 1e3), "pow_odd": (-1e3, 1e3)}
LAYER_OPS = ("linear", "conv", "bn", "avgpool", "adaptive", "flatten", "residual", "cat")
ALL_OPS = LAYER_OPS + ACTIVATION_OPS
#: the properties ``check_domain`` runs by default (``continuity`` is opt-in)
DEFAULT_PROPERTIES = ("rules", "bounds", "spec", "engine", "relaxations")
PROPERTIES = DEFAULT_PROPERTIES + ("continuity",)
RULE_OP = {"relu6": "hardtanh"}  # ops lowered to another op's rule


def tolerance(*tensors: torch.Tensor) -> float:
    """``1e-9 * (1 + max |finite value|)`` over the given tensors (a global tolerance, for
    tests that compare whole tensors; the checker itself uses :func:`local_tolerance`)."""
    m = 0.0
    for t in tensors:
        if t.numel():
            finite = t.detach()[torch.isfinite(t.detach())]
            if finite.numel():
                m = max(m, float(finite.abs().max()))
    return REL_TOL * (1.0 + m)


def local_tolerance(*magnitudes: torch.Tensor) -> torch.Tensor:
    """Elementwise ``1e-9 * sum of |magnitudes|`` (broadcast), floored at 1e-300."""
    total = torch.zeros((), dtype=DTYPE)
    for m in magnitudes:
        total = total + torch.nan_to_num(m.detach().abs(), nan=0.0, posinf=1e300)
    return REL_TOL * total + 1e-300


# ---- network descriptions ------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One layer of a drawn network: ``op`` plus its hyper-parameters and weights.

    ``weights`` is a flat list of floats consumed in parameter order (cycled if short);
    ``seed`` (when ``weights`` is empty) draws them from a normal distribution instead (wide
    engine layers). ``inner`` holds the branches of ``residual`` (x + sign * f(x)) and
    ``cat`` (cat([f(x), g(x)], 1); an empty branch is the identity).

    Args: linear ``(out, bias)``; conv ``(out_ch, k, stride, padding, groups, dilation,
    bias, dims)`` (padding an int or ``'same'``); avgpool ``(k, stride, padding)``; adaptive
    ``(out_h, out_w)``; residual ``(sign,)``; leaky_relu ``(slope,)``; hardtanh
    ``(min, max)``.
    """

    op: str
    args: tuple = ()
    weights: tuple[float, ...] = ()
    inner: tuple[tuple[Layer, ...], ...] = ()
    seed: int | None = None

    def describe(self) -> str:
        if self.op in ("residual", "cat"):
            branches = " | ".join(", ".join(la.describe() for la in b) or "identity"
                                  for b in self.inner)
            sign = "-" if self.op == "residual" and self.args and self.args[0] < 0 else ""
            return f"{self.op}{sign}({branches})"
        args = ", ".join(str(a) for a in self.args)
        w = ""
        if len(self.weights) > 300:  # an engine network's layer: the first few values
            w = (" w=[" + ", ".join(f"{v:.6g}" for v in self.weights[:12])
                 + f", ... ({len(self.weights)} values)]")
        elif self.weights:
            w = " w=[" + ", ".join(f"{v:.17g}" for v in self.weights) + "]"
        elif self.seed is not None:
            w = f" seed={self.seed}"
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
    def __init__(self, f: nn.Module, sign: float = 1.0) -> None:
        super().__init__()
        self.f = f
        self.sign = sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sign < 0:
            return x - self.f(x)
        return x + self.f(x)


class TapNet(nn.Module):
    """The network with every layer's output, flattened, as one output (``cat``): one
    program bounds every prefix, and spec rows can pair a layer with the one before it."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for mod in self.net:
            x = mod(x)
            outs.append(torch.flatten(x, 1))
        return torch.cat(outs, 1)


class _Cat(nn.Module):
    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        self.f = f
        self.g = g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.f(x), self.g(x)], dim=1)


def _conv_args(a: tuple) -> tuple[int, int, int, int | str, int, int, bool, int]:
    """Conv args with the defaults of the old 5-tuple form (dilation 1, bias, 2-d)."""
    full = tuple(a) + (1, True, 2)[len(a) - 5:] if len(a) < 8 else tuple(a)
    out_ch, k, s, p, groups, dil, bias, dims = full
    return int(out_ch), int(k), int(s), p, int(groups), int(dil), bool(bias), int(dims)


def _fill(params: list[torch.Tensor], weights: tuple[float, ...], seed: int | None) -> None:
    with torch.no_grad():
        if not weights and seed is not None:
            g = torch.Generator().manual_seed(seed)
            for p in params:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g, dtype=DTYPE) / math.sqrt(fan_in))
            return
        flat = torch.tensor(weights, dtype=DTYPE) if weights else torch.zeros(0, dtype=DTYPE)
        i = 0
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
        bias = a[1] if len(a) > 1 else True
        return a[0] * shape[0] + (a[0] if bias else 0)
    if op == "conv":
        out_ch, k, _s, _p, groups, _d, bias, dims = _conv_args(a)
        return out_ch * (shape[0] // groups) * k ** dims + (out_ch if bias else 0)
    if op == "bn":
        return 4 * shape[0]
    return 0


def _params(mod: nn.Module) -> list[torch.Tensor]:
    return [p for p in (getattr(mod, "weight", None), getattr(mod, "bias", None))
            if p is not None]


def build_layer(layer: Layer, shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
    """The module of a layer on inputs of per-sample ``shape`` and its output shape."""
    op, a = layer.op, layer.args
    mod: nn.Module
    if op == "linear":
        linear = nn.Linear(shape[0], a[0], bias=a[1] if len(a) > 1 else True).to(DTYPE)
        _fill(_params(linear), layer.weights, layer.seed)
        mod = linear
    elif op == "conv":
        out_ch, k, s, p, groups, dil, bias, dims = _conv_args(a)
        cls = nn.Conv1d if dims == 1 else nn.Conv2d
        conv = cls(shape[0], out_ch, k, stride=s, padding=p, dilation=dil, groups=groups,
                   bias=bias).to(DTYPE)
        _fill(_params(conv), layer.weights, layer.seed)
        mod = conv
    elif op == "bn":
        bn_cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        bn = bn_cls(shape[0]).to(DTYPE)
        assert bn.running_mean is not None and bn.running_var is not None
        c = shape[0]
        with torch.no_grad():
            if layer.weights:
                vals = torch.tensor(layer.weights, dtype=DTYPE)
                vals = vals.repeat(math.ceil(4 * c / vals.numel()))[:4 * c]
            elif layer.seed is not None:
                g = torch.Generator().manual_seed(layer.seed)
                vals = torch.randn(4 * c, generator=g, dtype=DTYPE)
            else:
                vals = torch.ones(4 * c, dtype=DTYPE)
            bn.weight.copy_(vals[:c])
            bn.bias.copy_(vals[c:2 * c])
            bn.running_mean.copy_(vals[2 * c:3 * c])
            bn.running_var.copy_(vals[3 * c:4 * c].abs() + 1e-3)
        mod = bn.eval()
    elif op == "avgpool":
        k, s, p = a
        mod = nn.AvgPool2d(k, stride=s, padding=p)
    elif op == "adaptive":
        mod = nn.AdaptiveAvgPool2d(tuple(a))
    elif op == "flatten":
        mod = nn.Flatten()
    elif op == "relu6":
        mod = nn.ReLU6()
    elif op in _ops.ACTIVATIONS:
        mod = _Activation(op, a)
    elif op == "residual":
        f, out = build_seq(layer.inner[0], shape)
        if out != shape:
            raise ValueError(f"residual branch changes the shape {shape} -> {out}")
        mod = _Residual(f, float(a[0]) if a else 1.0)
    elif op == "cat":
        f1, s1 = build_seq(layer.inner[0], shape)
        f2, s2 = build_seq(layer.inner[1], shape)
        if s1[1:] != s2[1:] or len(s1) != len(s2):
            raise ValueError(f"cat branches disagree: {s1} vs {s2}")
        mod = _Cat(f1, f2)
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


def harvest(layers: tuple[Layer, ...], seq: nn.Module) -> tuple[Layer, ...]:
    """The layers with the weights the modules hold now (after aiming), for reports."""
    out = []
    assert isinstance(seq, nn.Sequential)
    for la, mod in zip(layers, seq, strict=True):
        if la.op in ("linear", "conv"):
            vals = torch.cat([p.detach().flatten() for p in _params(mod)])
            out.append(Layer(la.op, la.args, tuple(vals.tolist())))
        elif la.op == "bn":
            assert isinstance(mod, nn.modules.batchnorm._BatchNorm)
            assert mod.running_mean is not None and mod.running_var is not None
            vals = torch.cat([mod.weight.detach(), mod.bias.detach(), mod.running_mean,
                              mod.running_var - 1e-3])
            out.append(Layer("bn", la.args, tuple(vals.tolist())))
        elif la.op == "residual":
            assert isinstance(mod, _Residual)
            out.append(Layer(la.op, la.args, inner=(harvest(la.inner[0], mod.f),)))
        elif la.op == "cat":
            assert isinstance(mod, _Cat)
            out.append(Layer(la.op, la.args, inner=(harvest(la.inner[0], mod.f),
                                                    harvest(la.inner[1], mod.g))))
        else:
            out.append(la)
    return tuple(out)


# ---- magnitudes: the scale of every term summed into a value (for the local tolerance) -----

def magnitude(mod: nn.Module, m: torch.Tensor) -> torch.Tensor:
    """An upper bound on |every term| computed for ``mod``'s output, given one on its input.

    Affine maps run with |W| and |b|; activations keep the input's scale (plus their
    constant range); so ``M`` bounds the values a sound domain sums for that output.
    """
    if isinstance(mod, nn.Sequential):
        for sub in mod:
            m = magnitude(sub, m)
        return m
    if isinstance(mod, nn.Linear):
        return F.linear(m, mod.weight.abs(), None if mod.bias is None else mod.bias.abs())
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        conv = F.conv1d if isinstance(mod, nn.Conv1d) else F.conv2d
        bias = None if mod.bias is None else mod.bias.abs()
        return conv(m, mod.weight.abs(), bias, mod.stride, mod.padding, mod.dilation,
                    mod.groups)
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        assert mod.running_mean is not None and mod.running_var is not None
        shape = (1, -1) + (1,) * (m.dim() - 2)
        scale = (mod.weight.abs() / torch.sqrt(mod.running_var + mod.eps)).reshape(shape)
        return ((m + mod.running_mean.abs().reshape(shape)) * scale
                + mod.bias.abs().reshape(shape))
    if isinstance(mod, (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)):
        return mod(m)
    if isinstance(mod, nn.Hardtanh):  # ReLU6
        return m + max(abs(mod.min_val), abs(mod.max_val))
    if isinstance(mod, _Activation):  # |f(x)| <= |x| + c for every drawn activation
        return m + mod.offset
    if isinstance(mod, _Residual):
        return m + magnitude(mod.f, m)
    if isinstance(mod, _Cat):
        return torch.cat([magnitude(mod.f, m), magnitude(mod.g, m)], 1)
    return m  # relu, leaky relu, tanh, identity: |f(x)| <= |x|


# ---- guard surfaces from the AST -------------------------------------------------------------

@dataclass(frozen=True)
class Surface:
    """``a * l + b * u + c = 0`` in the bounds ``l, u`` a rule reads; ``where`` names it."""

    a: float
    b: float
    c: float
    where: str = "built in"

    def value(self, l: float, u: float) -> float:
        return self.a * l + self.b * u + self.c


BASE_SURFACES = (Surface(1, 0, 0, "l = 0"), Surface(0, 1, 0, "u = 0"),
                 Surface(1, 1, 0, "u = -l"))

_Form = dict[str, float] | None  # a linear form over {"l", "u", "1"}; None: not linear


def _form_add(x: _Form, y: _Form, s: float = 1.0) -> _Form:
    if x is None or y is None:
        return None
    out = dict(x)
    for k, v in y.items():
        out[k] = out.get(k, 0.0) + s * v
    return out


def _form_scale(x: _Form, s: float) -> _Form:
    return None if x is None else {k: v * s for k, v in x.items()}


def _const(x: _Form) -> float | None:
    if x is None or any(v != 0 for k, v in x.items() if k != "1"):
        return None
    return x.get("1", 0.0)


class _SurfaceFinder:
    """Walks rules and relaxations, evaluating expressions as linear forms in l and u, and
    records the surface of every comparison, max/min, relu and |.| it meets."""

    def __init__(self) -> None:
        self.found: list[Surface] = []

    def note(self, form: _Form, where: str) -> None:
        if form is None:
            return
        a, b, c = form.get("l", 0.0), form.get("u", 0.0), form.get("1", 0.0)
        if (a, b) == (0.0, 0.0) or not all(math.isfinite(v) for v in (a, b, c)):
            return
        scale = max(abs(a), abs(b))
        self.found.append(Surface(a / scale, b / scale, c / scale, where))

    def expr(self, e: Any, env: dict[str, _Form], where: str) -> _Form:
        from absdsl.dsl import ast

        if isinstance(e, ast.Num):
            return {"1": e.value}
        if isinstance(e, ast.Name):
            return env.get(e.ident)
        if isinstance(e, ast.Neg):
            return _form_scale(self.expr(e.operand, env, where), -1.0)
        if isinstance(e, ast.BinOp):
            x, y = self.expr(e.left, env, where), self.expr(e.right, env, where)
            if e.op in "+-":
                return _form_add(x, y, 1.0 if e.op == "+" else -1.0)
            if e.op == "*":
                cx, cy = _const(x), _const(y)
                return _form_scale(y, cx) if cx is not None else (
                    _form_scale(x, cy) if cy is not None else None)
            if e.op == "/":
                cy = _const(y)
                return _form_scale(x, 1.0 / cy) if cy not in (None, 0.0) else None
            return None
        if isinstance(e, ast.Compare):
            x, y = self.expr(e.left, env, where), self.expr(e.right, env, where)
            self.note(_form_add(x, y, -1.0), f"{where}: comparison at {e.pos.line}:{e.pos.column}")
            return None
        if isinstance(e, ast.BoolOp):
            for o in e.operands:
                self.expr(o, env, where)
            return None
        if isinstance(e, ast.Ternary):
            self.expr(e.cond, env, where)
            self.expr(e.then, env, where)
            self.expr(e.other, env, where)
            return None
        if isinstance(e, ast.Abs):
            self.note(self.expr(e.operand, env, where), f"{where}: |.| at {e.pos.line}")
            return None
        if isinstance(e, ast.Call):
            args = [self.expr(a, env, where) for a in e.args]
            if e.func in ("max", "min") and len(args) == 2:
                self.note(_form_add(args[0], args[1], -1.0), f"{where}: {e.func} at {e.pos.line}")
            elif e.func in ("relu", "abs") and args:
                self.note(args[0], f"{where}: {e.func} at {e.pos.line}")
            return None
        return None

    def stmts(self, body: tuple, env: dict[str, _Form], where: str) -> None:
        from absdsl.dsl import ast

        for s in body:
            if isinstance(s, ast.Assign):
                form = self.expr(s.value, env, where)
                for t in s.targets:
                    env[t] = form if len(s.targets) == 1 else None
            elif isinstance(s, ast.Guarded):
                for br in s.branches:
                    if br.cond is not None:
                        self.expr(br.cond, env, where)
                    self.stmts(br.body, dict(env), where)


def guard_surfaces(loaded: Any) -> list[Surface]:
    """Every surface a rule or relaxation of the domain switches on (plus l = 0, u = 0 and
    u = -l), in terms of the bounds the rule reads."""
    finder = _SurfaceFinder()
    domains = [loaded.domain] + ([loaded.intermediate] if loaded.intermediate else [])
    for dom in domains:
        for rule in dom.rules:
            env: dict[str, _Form] = {"l": {"l": 1.0}, "u": {"u": 1.0}}
            finder.stmts(rule.body, env, f"rule {', '.join(rule.ops)} ({dom.filename}:"
                                         f"{rule.pos.line})")
    for relax in loaded.relaxes:
        env = {relax.lower_name: {"l": 1.0}, relax.upper_name: {"u": 1.0}}
        where = f"relax {', '.join(relax.ops)} ({relax.filename}:{relax.pos.line})"
        for case in relax.cases:
            if case.cond is not None:
                finder.expr(case.cond, env, where)
            finder.expr(case.lower, env, where)
            finder.expr(case.upper, env, where)
    out = list(BASE_SURFACES)
    for s in finder.found:
        if not any(abs(s.a - o.a) + abs(s.b - o.b) + abs(s.c - o.c) < 1e-15 for o in out):
            out.append(s)
    return out


# ---- strategies ----------------------------------------------------------------------------

def weight_values() -> st.SearchStrategy[float]:
    """Weights: mostly moderate, with exact zeros, huge (1e3) and tiny (1e-6) values."""
    return st.one_of(
        st.floats(-2.0, 2.0, allow_nan=False, width=64),
        st.sampled_from([0.0, 0.0, 1.0, -1.0, 1e3, -1e3, 1e-6, -1e-6, 0.5]),
    )


def _weights(draw: Any, n: int) -> tuple[float, ...]:
    return tuple(draw(st.lists(weight_values(), min_size=n, max_size=n)))


def _act_names(ops: frozenset[str]) -> list[str]:
    return [o for o in ACTIVATION_OPS if o in ops]


class _Activation(nn.Module):
    """A table activation called as its torch function with positional parameters (how
    model code spells it; the front end reads them back by position)."""

    def __init__(self, op: str, args: tuple[float, ...]) -> None:
        super().__init__()
        info = _ops.get(op)
        self.fn = next(t for t in info.functions if callable(t))
        self.args = tuple(args)
        params = dict(zip([p.name for p in info.params if p.position >= 0], args,
                          strict=False))
        full = {p.name: p.default for p in info.params} | params
        # |f(x)| <= |x| + offset: the magnitude the tolerance of a comparison scales with; as
        # small as it is true (a larger one would hide errors of tiny boxes)
        self.offset = {"sigmoid": 1.0, "hardsigmoid": 1.0, "elu": abs(full.get("alpha", 0.0)),
                       "softplus": math.log(2.0) / full.get("sharpness", 1.0),
                       "hardtanh": max(abs(full.get("min_val", 0.0)),
                                       abs(full.get("max_val", 0.0)))}.get(op, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.args)


@st.composite
def _activation(draw: Any, ops: frozenset[str]) -> Layer:
    op = draw(st.sampled_from(_act_names(ops)))
    if op == "leaky_relu":
        return Layer(op, (draw(st.sampled_from([0.01, 0.1, 0.5, 0.0, 1.0])),))
    if op == "hardtanh":
        return Layer(op, draw(st.sampled_from([(-1.0, 1.0), (0.0, 1.0), (-2.0, 2.0),
                                               (-0.5, 0.5), (-1.0, 2.0)])))
    if op in _ops.OPS and _ops.get(op).params:
        info = _ops.get(op)
        params = draw(st.sampled_from(info.sample_params()))
        positional = [p for p in info.params if p.position >= 0]
        return Layer(op, tuple(params[p.name] for p in positional))
    return Layer(op)


def _affine_layer(draw: Any, shape: tuple[int, ...], ops: frozenset[str], engine: bool,
                  keep_shape: bool = False) -> Layer | None:
    """A linear or conv layer valid on ``shape`` (same shape when ``keep_shape``)."""
    if len(shape) == 1:
        if "linear" not in ops:
            return None
        out = shape[0] if keep_shape else draw(st.integers(16, 40) if engine
                                               else st.integers(1, 4))
        bias = draw(st.sampled_from([True, True, True, False]))
        la = Layer("linear", (out, bias))
    else:
        if "conv" not in ops:
            return None
        dims = len(shape) - 1
        c = shape[0]
        groups = draw(st.sampled_from([g for g in (1, 2) if c % g == 0]))
        if keep_shape:
            out_ch, s, dil = c, 1, draw(st.sampled_from([1, 1, 2]))
            k, p = draw(st.sampled_from([1, 3])), "same"
            groups = 1
        else:
            out_ch = groups * draw(st.integers(1, 2))
            s = draw(st.sampled_from([1, 1, 2]))
            dil = draw(st.sampled_from([1, 1, 2]))
            k = draw(st.integers(1, 3))
            p = draw(st.sampled_from([0, 1, "same"] if s == 1 and k % 2 else [0, 1]))
        la = Layer("conv", (out_ch, k, s, p, groups, dil,
                            draw(st.sampled_from([True, True, True, False])), dims))
    if engine:
        return Layer(la.op, la.args, (), seed=draw(st.integers(0, 2**16)))
    return Layer(la.op, la.args, _weights(draw, n_weights(la, shape)))


@st.composite
def _layer(draw: Any, shape: tuple[int, ...], ops: frozenset[str], engine: bool) -> Layer:
    """One layer valid on ``shape`` (its weights drawn for that shape)."""
    image = len(shape) == 3
    acts = _act_names(ops)
    # activations as a whole weigh as three layer kinds (however many the table holds), so
    # that residuals, cats and the other layers are drawn often enough to be checked
    choices = ["activation"] * min(len(acts), 3)
    if image:
        choices += [o for o in ("conv", "bn", "avgpool", "adaptive", "flatten") if o in ops]
        if min(shape[1:]) < 2:
            choices = [o for o in choices if o not in ("avgpool", "adaptive")]
    elif len(shape) == 2:
        choices += [o for o in ("conv", "bn", "flatten") if o in ops]
    else:
        choices += [o for o in ("linear", "bn") if o in ops]
        if engine:
            choices += ["linear"] * 3
    choices += [o for o in ("residual", "cat") if o in ops]
    if "conv" in choices and engine:
        choices += ["conv"] * 3
    if not choices:
        choices = ["linear"] if len(shape) == 1 else ["flatten"]
    op = draw(st.sampled_from(choices))
    if op == "activation":
        return draw(_activation(ops))
    if op in ("linear", "conv"):
        la = _affine_layer(draw, shape, ops, engine)
        assert la is not None
        return la
    if op == "bn":
        if engine:
            return Layer("bn", seed=draw(st.integers(0, 2**16)))
        return Layer("bn", (), _weights(draw, 4 * shape[0]))
    if op == "avgpool":
        k = draw(st.integers(1, 2))
        return Layer("avgpool", (k, draw(st.integers(1, 2)), draw(st.integers(0, k // 2))))
    if op == "adaptive":
        divs = [[d for d in range(1, n + 1) if n % d == 0] for n in shape[1:]]
        return Layer("adaptive", (draw(st.sampled_from(divs[0])), draw(st.sampled_from(divs[1]))))
    if op == "flatten":
        return Layer("flatten")
    if op == "residual":
        kind = draw(st.sampled_from(["act", "affine", "affine+act"] if acts else ["affine"]))
        inner: list[Layer] = []
        if kind != "act":
            aff = _affine_layer(draw, shape, ops, engine, keep_shape=True)
            if aff is not None:
                inner.append(aff)
        if kind != "affine" and acts:
            inner.append(draw(_activation(ops)))
        return Layer("residual", (draw(st.sampled_from([1.0, 1.0, -1.0])),),
                     inner=(tuple(inner),))
    # cat along dim 1 of two branches: identity, an activation, or an affine map

    def branch() -> tuple[Layer, ...]:
        kind = draw(st.sampled_from(["id", "act", "affine"] if acts else ["id", "affine"]))
        if kind == "act":
            return (draw(_activation(ops)),)
        if kind == "affine":
            aff = _affine_layer(draw, shape, ops, engine, keep_shape=len(shape) > 1)
            return (aff,) if aff is not None else ()
        return ()
    first = branch()
    second = (draw(_activation(ops)),) if not first and acts else branch()
    return Layer("cat", inner=(first, second))


@st.composite
def networks(draw: Any, ops: frozenset[str] = frozenset(ALL_OPS), max_layers: int = 5,
             engine: bool = False) -> NetSpec:
    """Networks over the supported ``ops``: vector, [C, L] or [C, H, W] input; small, or
    (``engine``) larger with wide layers and conv chains for the engine's optimised paths."""
    kinds = ["vector"]
    if "conv" in ops or "flatten" in ops:
        kinds += ["image", "image"]
    if "conv" in ops and not engine:
        kinds.append("seq")
    kind = draw(st.sampled_from(kinds))
    if kind == "image":
        side = st.integers(6, 9) if engine else st.integers(1, 4)
        shape: tuple[int, ...] = (draw(st.integers(1, 2)), draw(side), draw(side))
    elif kind == "seq":
        shape = (draw(st.integers(1, 2)), draw(st.integers(2, 6)))
    else:
        shape = (draw(st.integers(8, 24) if engine else st.integers(1, 4)),)
    start = shape
    limit = 400 if engine else 64
    layers = []
    for _ in range(draw(st.integers(2 if engine else 1, max_layers))):
        la = draw(_layer(shape, ops, engine))
        try:
            _, new_shape = build_layer(la, shape)
        except (ValueError, RuntimeError):
            continue
        if math.prod(new_shape) == 0 or math.prod(new_shape) > limit:
            continue
        layers.append(la)
        shape = new_shape
    if engine or not layers:
        if len(shape) > 1:
            layers.append(Layer("flatten"))
            shape = (math.prod(shape),)
        if "linear" in ops:
            n = draw(st.integers(2, 4))
            layers.append(Layer("linear", (n, True), seed=draw(st.integers(0, 2**16)))
                          if engine else Layer("linear", (n,), _weights(draw, n * shape[0] + n)))
    return NetSpec(start, tuple(layers))


@st.composite
def engine_networks(draw: Any, ops: frozenset[str]) -> NetSpec:
    """Chains the optimised paths need: convs on 6x6 to 9x9 maps (patches), or 16 to 40 wide
    Linear layers (live columns, sparse lines), each followed by an activation, optionally
    batch norm; then a Linear head."""
    acts = [a for a in ("relu", "relu", "leaky_relu", "hardtanh") if a in ops] or ["relu"]
    image = "conv" in ops and draw(st.booleans())
    shape: tuple[int, ...]
    if image:
        side = st.integers(6, 8)
        shape = (draw(st.integers(1, 2)), draw(side), draw(side))
    else:
        shape = (draw(st.integers(8, 24)),)
    start = shape
    layers: list[Layer] = []
    for _ in range(draw(st.integers(2, 3))):
        la = _affine_layer(draw, shape, ops, True)
        if la is None:
            break
        try:
            _, new_shape = build_layer(la, shape)
        except (ValueError, RuntimeError):
            continue
        if math.prod(new_shape) == 0 or math.prod(new_shape) > 400:
            continue
        layers.append(la)
        if "bn" in ops and draw(st.integers(0, 3)) == 0:
            layers.append(Layer("bn", seed=draw(st.integers(0, 2**16))))
        act = draw(st.sampled_from(acts))
        layers.append(draw(_activation(frozenset({act}))))
        shape = new_shape
    if len(shape) > 1:
        layers.append(Layer("flatten"))
        shape = (math.prod(shape),)
    layers.append(Layer("linear", (draw(st.integers(2, 4)), True),
                        seed=draw(st.integers(0, 2**16))))
    return NetSpec(start, tuple(layers))


SCALES = (1.0, 1.0, 1e-6, 1e-3, 1e3)


def _on_surface(s: Surface, width: float, offset: float, centre: float) -> tuple[float, float]:
    """(l, u) with u - l = width (when free) and a l + b u + c = offset."""
    if abs(s.a + s.b) > 1e-12:
        l = (offset - s.c - s.b * width) / (s.a + s.b)
        return l, l + width
    w = (s.c - offset) / s.a if s.a != 0 else width  # a (l - u) + c = offset
    w = abs(w)
    return centre - w / 2, centre + w / 2


@st.composite
def input_boxes(draw: Any, shape: tuple[int, ...], batch: int = 2,
                surfaces: tuple[Surface, ...] = BASE_SURFACES
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes [lo, hi] (batched) at a drawn scale: degenerate (l = u), touching 0, symmetric,
    random, mixed, or each entry on or beside a guard surface."""
    n = batch * math.prod(shape)
    scale = draw(st.sampled_from(SCALES))
    kind = draw(st.sampled_from(["random", "degenerate", "touch0", "symmetric", "mixed",
                                 "surface", "surface"]))
    if n <= 64:
        centre = draw(st.lists(st.floats(-2, 2, width=64), min_size=n, max_size=n))
        radius = draw(st.lists(st.one_of(st.floats(0, 1.5, width=64),
                                         st.sampled_from([0.0, 1e-6, 1e3])),
                               min_size=n, max_size=n))
        c = torch.tensor(centre, dtype=DTYPE) * scale
        r = torch.tensor(radius, dtype=DTYPE) * scale
        ints = st.integers(0, 2**16)
    else:  # large inputs: values from a drawn seed (Hypothesis draws stay small)
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
        c = (torch.rand(n, generator=g, dtype=DTYPE) * 4 - 2) * scale
        r = torch.rand(n, generator=g, dtype=DTYPE) * 1.5 * scale
        special = torch.tensor([0.0, 1e-6, 1e3], dtype=DTYPE)[torch.randint(0, 3, (n,),
                                                                          generator=g)]
        r = torch.where(torch.rand(n, generator=g) < 0.1, special * scale, r)
        ints = st.just(int(torch.randint(0, 2**16, (), generator=g)))
    pick_g = torch.Generator().manual_seed(draw(ints))
    if kind == "degenerate":
        lo, hi = c, c.clone()
    elif kind == "touch0":
        side = torch.rand(n, generator=pick_g) < 0.5
        lo = torch.where(side, torch.zeros_like(r), -r)
        hi = torch.where(side, r, torch.zeros_like(r))
    elif kind == "symmetric":
        lo, hi = -r, r
    elif kind == "mixed":
        pick = torch.randint(0, 4, (n,), generator=pick_g)
        lo = torch.where(pick == 0, c, torch.where(pick == 1, torch.zeros_like(c),
                                                   torch.where(pick == 2, -r, c - r)))
        hi = torch.where(pick == 0, c, torch.where(pick == 1, r,
                                                   torch.where(pick == 2, r, c + r)))
    elif kind == "surface":
        ls, us = [], []
        which = torch.randint(0, len(surfaces), (n,), generator=pick_g).tolist()
        size = torch.randint(0, len(AIM_SIZES), (n,), generator=pick_g).tolist()
        sign = (torch.rand(n, generator=pick_g) < 0.5).tolist()
        for i in range(n):
            s = surfaces[which[i]]
            width = 2 * float(r[i])
            base = abs(s.c) if s.c != 0 else max(width, scale)
            off = AIM_SIZES[size[i]] * base * (1.0 if sign[i] else -1.0)
            l, u = _on_surface(s, width, off, float(c[i]))
            ls.append(min(l, u))
            us.append(max(l, u))
        lo, hi = torch.tensor(ls, dtype=DTYPE), torch.tensor(us, dtype=DTYPE)
    else:
        lo, hi = c - r, c + r
    return lo.reshape(batch, *shape), hi.reshape(batch, *shape)


# How aiming moves one pre-activation neuron (a plan token is (mode, surface, size, sign, pos)).
AIM_MODES = ("free", "surface", "inactive", "active", "unstable")
AIM_SIZES = (0.0, 1e-12, 1e-9, 1e-6, 1e-3, 0.05, 0.3)


def plan_tokens(weights: tuple[int, ...] = (2, 5, 1, 1, 1), min_size: int = 1,
                max_size: int = 24) -> st.SearchStrategy[list]:
    """Aiming plans: tokens drawn with the given weights per mode (see :data:`AIM_MODES`)."""
    modes = [i for i, w in enumerate(weights) for _ in range(w)]
    token = st.tuples(st.sampled_from(modes), st.integers(0, 63),
                      st.integers(0, len(AIM_SIZES) - 1), st.sampled_from([1.0, -1.0]),
                      st.integers(0, 2**16))
    return st.lists(token, min_size=min_size, max_size=max_size)


_MODULE_RE = re.compile(r"module '([^']+)' \((Linear|Conv1d|Conv2d|BatchNorm1d|BatchNorm2d)\)")


def aim(net: nn.Module, prog: Any, lo: torch.Tensor, hi: torch.Tensor, plan: list,
        surfaces: tuple[Surface, ...], sample: int = 0) -> int:
    """Move the bias (or scale the row) of every biased layer that feeds an activation so
    that the bounds the domain relaxes with (``prog.intermediate_bounds``), for ``sample``,
    land where the plan says; layers in network order, bounds recomputed after each.
    ``plan``: tokens (cycled over all neurons), or one token list per layer (cycled).

    Returns the number of neurons aimed. ``net`` is changed in place (``prog`` reads the
    module's parameters at call time).
    """
    if not plan:
        return 0
    per_node = isinstance(plan[0], list)  # one token list per aimed node, cycled
    node_plans = itertools.cycle(plan if per_node else [plan])
    aimed = 0
    with torch.no_grad():
        bounds = prog.intermediate_bounds(lo, hi)
        names = [n.name for n in prog.ir.nodes if n.name in bounds]
        for name in names:
            node = prog.ir.by_name[name]
            found = _MODULE_RE.findall(node.origin or "")
            if not found:
                continue
            mod = net.get_submodule(found[-1][0])
            bias = getattr(mod, "bias", None)
            weight = getattr(mod, "weight", None)
            if bias is None or weight is None:
                continue
            tokens = itertools.cycle(next(node_plans))
            l_all, u_all = (t[sample].reshape(node.shape[0], -1)
                            for t in prog.intermediate_bounds(lo, hi)[name])
            for unit in range(node.shape[0]):
                mode, si, ki, sign, pos = next(tokens)
                j = pos % l_all.shape[1]
                l, u = float(l_all[unit, j]), float(u_all[unit, j])
                if not (math.isfinite(l) and math.isfinite(u)):
                    continue
                width = u - l
                size = AIM_SIZES[ki]
                base = width if width > 0 else max(abs(l), 1e-12)
                shift, scale = 0.0, 1.0
                if AIM_MODES[mode] == "surface":
                    s = surfaces[si % len(surfaces)]
                    off = sign * size * (abs(s.c) if s.c != 0 and size >= 1e-3 else base)
                    if abs(s.a + s.b) > 1e-12:
                        shift = (off - s.value(l, u)) / (s.a + s.b)
                    elif s.a * l + s.b * u != 0:
                        k = (off - s.c) / (s.a * l + s.b * u)
                        scale = k if 1e-12 < k < 1e12 else 1.0
                elif AIM_MODES[mode] == "inactive":
                    shift = -u - max(size, 1e-6) * base
                elif AIM_MODES[mode] == "active":
                    shift = -l + max(size, 1e-6) * base
                elif AIM_MODES[mode] == "unstable":
                    shift = -l - (0.5 if size == 0 else min(size * 3, 0.9)) * base
                else:
                    continue
                if scale != 1.0:
                    weight[unit].mul_(scale)
                    bias[unit].mul_(scale)
                elif math.isfinite(shift):
                    bias[unit].add_(shift)
                aimed += 1
    return aimed


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
    surfaces: list[Surface] = field(default_factory=list)
    reach: list[RuleReach] = field(default_factory=list)  # examples per rule ("rules")

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
        extra = [s for s in self.surfaces if s.where != "built in"
                 and s not in BASE_SURFACES]
        if extra:
            lines.append("aimed at the guard surfaces " + "; ".join(
                f"{s.a:g} l + {s.b:g} u + {s.c:g} = 0" for s in extra[:8])
                + (f" (+{len(extra) - 8})" if len(extra) > 8 else ""))
        lines += [r.format() for r in self.results]
        for r in self.reach:
            state = "REACH" if r.examples else "FAIL "
            ops = f" via {', '.join(sorted(r.ops))}" if r.ops else ""
            lines.append(f"{state} {r.rule}: {r.examples} examples{ops}")
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
            values: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor,
            mag: torch.Tensor | None = None, spec: torch.Tensor | None = None) -> None:
    """Raise :class:`Violation` unless every value lies in [lb, ub] up to the local tolerance.

    ``values``: [B, P, n]; ``lb``/``ub``: [B, n]; ``mag``: [B, n], the magnitude of the
    terms summed into each output (:func:`magnitude`; 0 when omitted).
    """
    def spec_of(b: int) -> list | None:  # only a counterexample's row (specs can be large)
        return _tolist(spec[b]) if spec is not None else None

    for which, bad in (("lower bound", torch.isnan(lb)), ("upper bound", torch.isnan(ub))):
        if bool(bad.any()):
            b, i = (int(v) for v in bad.nonzero()[0])
            raise Violation(Counterexample(prop, net, _tolist(lo[b]), _tolist(hi[b]), None,
                                           f"NaN {which}", (b, i), float("nan"), float("nan"),
                                           float("inf"), 0.0, spec_of(b)))
    m = mag if mag is not None else torch.zeros_like(lb)
    vmax = values.abs().amax(1) if values.shape[1] else torch.zeros_like(lb)
    tol = local_tolerance(m, vmax, lb, ub)  # [B, n]
    below = lb.unsqueeze(1) - values   # > tol: value under the lower bound
    above = values - ub.unsqueeze(1)
    for which, excess, bnd in (("lower bound", below, lb), ("upper bound", above, ub)):
        if not excess.numel():
            continue
        ratio = torch.nan_to_num(excess / tol.unsqueeze(1), nan=math.inf)
        worst = float(ratio.max())
        if worst > 1.0:
            b, p, i = (int(v) for v in (ratio == ratio.max()).nonzero()[0])
            raise Violation(Counterexample(
                prop, net, _tolist(lo[b]), _tolist(hi[b]), _tolist(pts[b, p]), which,
                (b, i), float(values[b, p, i]), float(bnd[b, i]), float(excess[b, p, i]),
                float(tol[b, i]), spec_of(b)))


def _settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None,
                    derandomize=False, print_blob=False, report_multiple_bugs=False,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target,
                            Phase.shrink],
                    suppress_health_check=list(HealthCheck))


def _probe_nets() -> dict[str, NetSpec]:
    lin = Layer("linear", (2,), (1.0, -1.0, 0.5, 2.0, 0.0, 1.0))
    return {
        "linear": NetSpec((2,), (lin,)),
        "conv": NetSpec((1, 3, 3), (Layer("conv", (1, 2, 1, 0, 1), (1.0, -1.0, 0.5, 2.0, 0.0)),
                                    Layer("conv", (1, 2, 1, "same", 1, 2, False, 2),
                                          (1.0, -1.0, 0.5, 2.0)))),
        "bn": NetSpec((2,), (Layer("bn", (), (1.0, 2.0, 0.0, 1.0, 0.5, -0.5, 1.0, 2.0)),)),
        "avgpool": NetSpec((1, 2, 2), (Layer("avgpool", (2, 2, 0)),)),
        "adaptive": NetSpec((1, 2, 2), (Layer("adaptive", (1, 1)),)),
        "flatten": NetSpec((1, 2, 2), (Layer("flatten"),)),
        "residual": NetSpec((2,), (Layer("residual", (1.0,), inner=((lin,),)),)),
        "cat": NetSpec((2,), (Layer("cat", inner=((Layer("linear", (1,), (1.0, 1.0, 0.0)),),
                                                   (Layer("linear", (1,), (1.0, -1.0, 0.0)),))),)),
        **{op: NetSpec((2,), (Layer(op, tuple(
            p.default for p in _ops.get(op).params if p.position >= 0)),))
           for op in ACTIVATION_OPS if op != "relu6"},
        "relu6": NetSpec((2,), (Layer("relu6"),)),
    }


def supported_ops(domain: Any) -> tuple[frozenset[str], list[str]]:
    """Probe the domain with one-op networks: (ops it has rules for, ops it lacks)."""
    import absdsl
    from absdsl.errors import TraceError

    ok, missing = set(), []
    for op, spec in _probe_nets().items():
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


def spec_rows(n_out: int, batch: int, g: torch.Generator,
              pairs: list[tuple[int, int]] | None = None) -> list[torch.Tensor]:
    """Spec matrices [batch, k, n_out]: margins, sums and differences of output pairs (a
    wrong correlation between two outputs shows in one of them: ``pairs`` first, then
    random ones), random rows with exact zeros."""
    specs = []
    if n_out >= 2:
        import absdsl
        labels = torch.randint(0, n_out, (batch,), generator=g)
        specs.append(absdsl.margin_spec(labels, n_out).to(DTYPE))
        chosen = list(pairs or [])
        if len(chosen) > 16:
            keep = torch.randperm(len(chosen), generator=g)[:16]
            chosen = [chosen[int(i)] for i in keep]
        if n_out <= 6:
            chosen += list(itertools.combinations(range(n_out), 2))
        else:
            for _ in range(8):
                i, j = torch.randperm(n_out, generator=g)[:2].tolist()
                chosen.append((i, j))
        rows = torch.zeros(2 * len(chosen), n_out, dtype=DTYPE)
        for r, (i, j) in enumerate(chosen):
            rows[2 * r, i], rows[2 * r, j] = 1.0, -1.0
            rows[2 * r + 1, i], rows[2 * r + 1, j] = 1.0, 1.0
        specs.append(rows.expand(batch, -1, -1).clone())
    rnd = torch.randn(batch, 2, n_out, generator=g, dtype=DTYPE)
    rnd[:, 1] = rnd[:, 1] * (torch.rand(batch, n_out, generator=g) < 0.5)  # exact zeros
    specs.append(rnd)
    return specs


def tap_pairs(net: nn.Sequential, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Index pairs (after, before) in :class:`TapNet`'s output: the same neuron before and
    after every shape-preserving layer (an activation's f(z) and z, a residual's x + f(x)
    and x)."""
    pairs = []
    start = 0
    prev: tuple[int, int] | None = None  # (offset, size) of the previous layer's output
    cur_shape = shape
    with torch.no_grad():
        x = torch.zeros(1, *shape, dtype=DTYPE)
        for mod in net:
            x = mod(x)
            size = x[0].numel()
            if prev is not None and tuple(x.shape[1:]) == cur_shape:
                pairs += [(start + i, prev[0] + i) for i in range(size)]
            prev = (start, size)
            start += size
            cur_shape = tuple(x.shape[1:])
    return pairs


@dataclass
class _Case:
    """A drawn case, made concrete: the aimed network, its modules, box and points."""

    spec: NetSpec
    net: nn.Sequential
    lo: torch.Tensor
    hi: torch.Tensor
    pts: torch.Tensor
    acts: list[torch.Tensor]   # concrete values after each layer [B * P, ...]
    mags: list[torch.Tensor]   # magnitudes after each layer [B, ...]


def _prepare(domain: Any, spec_net: NetSpec, boxes: tuple[torch.Tensor, torch.Tensor],
             plan: list, surfaces: tuple[Surface, ...], seed_: int,
             prog_kwargs: dict | None = None) -> tuple[_Case, Any]:
    import absdsl

    lo, hi = boxes
    net = build_net(spec_net)
    prog = absdsl.compile(net, domain, input_shape=spec_net.input_shape, **(prog_kwargs or {}))
    if plan:
        aim(net, prog, lo, hi, plan, surfaces)
    final = NetSpec(spec_net.input_shape, harvest(spec_net.layers, net))
    pts = sample_points(lo, hi, generator=torch.Generator().manual_seed(seed_))
    batch, npts = pts.shape[:2]
    cur = pts.reshape(batch * npts, *spec_net.input_shape)
    m = torch.maximum(lo.abs(), hi.abs())
    acts, mags = [cur], [m]
    with torch.no_grad():
        for mod in net:
            cur = mod(cur)
            m = magnitude(mod, m)
            acts.append(cur)
            mags.append(m)
    return _Case(final, net, lo, hi, pts, acts, mags), prog


def _check_case(domain: Any, case: _Case, prop: str, use_spec: bool, seed_: int,
                full_prog: Any) -> None:
    """The network's output (``full_prog``) and every layer's output at once (a
    :class:`TapNet` program): concrete values in the bounds, or in the spec bounds."""
    import absdsl

    lo, hi, pts = case.lo, case.hi, case.pts
    batch, npts = pts.shape[:2]
    tap = TapNet(case.net).eval()
    tap_prog = absdsl.compile(tap, domain, input_shape=case.spec.input_shape)
    tap_values = torch.cat([a.reshape(batch, npts, -1) for a in case.acts[1:]], 2)
    tap_mag = torch.cat([m.reshape(batch, -1) for m in case.mags[1:]], 1)
    runs = [(full_prog, case.acts[-1].reshape(batch, npts, -1), case.mags[-1].reshape(batch, -1),
             case.spec.describe(), None),
            (tap_prog, tap_values, tap_mag, case.spec.describe()
             + "\noutput: every layer's output, flattened and concatenated",
             tap_pairs(case.net, case.spec.input_shape))]
    for prog, values, mag, desc, pairs in runs:
        if not use_spec:
            with torch.no_grad():
                lb, ub = prog(lo, hi)
            compare(prop, desc, lo, hi, pts, values, lb.reshape(batch, -1),
                    ub.reshape(batch, -1), mag)
            continue
        g = torch.Generator().manual_seed(seed_)
        for C in spec_rows(values.shape[-1], batch, g, pairs):
            with torch.no_grad():
                lb, ub = prog(lo, hi, spec=C)
            cv = torch.einsum("bkn,bpn->bpk", C, values)
            cmag = torch.einsum("bkn,bn->bk", C.abs(), mag)
            compare(prop, desc, lo, hi, pts, cv, lb, ub, cmag, spec=C)


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


@contextlib.contextmanager
def without_local_constants() -> Iterator[None]:
    """Draw as if no module of the caller's were loaded: the same run in every process.

    Hypothesis mixes literal constants of the loaded "local" modules (any module outside
    site-packages: an editable absdsl, the tests, the user's scripts) into its draws, so a
    seeded run depended on which modules were imported before it: a CLI process, a test run
    alone and the same test after another file drew different networks, and a mutant caught in
    one was missed in the other. Its built-in constant pool (NaN, 0.5, 1e-5, ...) stays: it is
    fixed for a Hypothesis version. Hypothesis versions without local constants need nothing.
    """
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # another Hypothesis layout: nothing to switch off
        yield
        return
    get_local = getattr(providers, "_get_local_constants", None)
    cache = getattr(providers, "CONSTANTS_CACHE", None)
    empty_type = getattr(providers, "Constants", None)
    if get_local is None or cache is None or empty_type is None:
        yield
        return
    empty = empty_type()
    cache.cache.clear()  # cached pools were filtered from the local constants too
    providers._get_local_constants = lambda: empty
    try:
        yield
    finally:
        providers._get_local_constants = get_local
        cache.cache.clear()


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
        with shrink_time_limit(shrink_seconds), without_local_constants(), \
                with_reporter(lambda _msg: None):
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
    if isinstance(case, tuple) and len(case) >= 3 and isinstance(case[0], NetSpec):
        net, (lo, hi) = case[0], case[1]
        return (f"network (before aiming):\n{net.describe()}\nbox lo = {_tolist(lo)}\n"
                f"box hi = {_tolist(hi)}")
    return ", ".join(f"{k} = {v!r}" for k, v in kwargs.items())


@dataclass
class _Test:
    strategies: dict[str, Any]
    inner: Any


def soundness_property(domain: Any, ops: frozenset[str], use_spec: bool,
                       surfaces: tuple[Surface, ...] = BASE_SURFACES) -> _Test:
    prop = "spec" if use_spec else "bounds"

    @st.composite
    def case(draw: Any) -> tuple:
        net = draw(networks(ops))
        boxes = draw(input_boxes(net.input_shape, surfaces=surfaces))
        return net, boxes, draw(plan_tokens()), draw(st.integers(0, 2**16))

    def inner(case: tuple) -> None:
        net, boxes, plan, s = case
        made, prog = _prepare(domain, net, boxes, plan, surfaces, s)
        _check_case(domain, made, prop, use_spec, s, prog)

    return _Test({"case": case()}, inner)


# ---- the engine's optimised paths -------------------------------------------------------------

#: how often the ``engine`` property reached each optimised path (reset by each run)
ENGINE_COVERAGE: dict[str, int] = {}


@contextlib.contextmanager
def _count_engine_paths(prog: Any) -> Iterator[None]:
    """Add the optimised paths the program ran in the block (live-column products, sparse
    relaxation lines, chunked refinements: ``prog.engine_paths``) to the coverage."""
    before = dict(prog.engine_paths)
    yield
    for key, count in prog.engine_paths.items():
        if count > before.get(key, 0):
            ENGINE_COVERAGE[key] = ENGINE_COVERAGE.get(key, 0) + count - before.get(key, 0)


def _chunk_budget(net: nn.Sequential, shape: tuple[int, ...], batch: int, rows: int) -> float:
    """A memory budget (MiB) that gives about ``rows`` back-substitution rows per chunk."""
    try:
        from absdsl.compiler.program import _BYTES_PER_ROW_FACTOR as factor
    except ImportError:  # the engine changed: a small budget still chunks
        factor = 6
    widest = math.prod(shape)
    with torch.no_grad():
        cur = torch.zeros(1, *shape, dtype=DTYPE)
        for mod in net:
            cur = mod(cur)
            widest = max(widest, cur[0].numel())
    per_row = 2 * batch * widest * 8 * factor
    return rows * per_row / 2**20


def engine_property(domain: Any, ops: frozenset[str], surfaces: tuple[Surface, ...]) -> _Test:
    """Larger, mostly stable networks; sound at concrete points and equal to the plain
    engine and to the vmap form."""
    import absdsl
    from absdsl.dsl.loader import load_domain

    backsub = load_domain(domain).intermediate is not None
    ops = ops - {"residual", "cat", "sigmoid", "tanh"} if "conv" in ops else ops

    @st.composite
    def case(draw: Any) -> tuple:
        net = draw(engine_networks(ops) if draw(st.integers(0, 3)) else
                   networks(ops, max_layers=5, engine=True))
        lo, hi = draw(input_boxes(net.input_shape, batch=draw(st.integers(2, 3)),
                                  surfaces=surfaces))
        if draw(st.booleans()):  # the other samples near the first (aimed) one: every
            # sample then has few unstable neurons (the sparse paths need all of them to)
            g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
            shift = (torch.rand(lo.shape, generator=g, dtype=DTYPE) - 0.5) * 0.02 \
                * (hi[0] - lo[0] + 1e-3 * lo[0].abs())
            lo, hi = lo[:1] + shift, hi[:1] + shift
        boxes = (lo, hi)
        # per layer in turn: mostly inactive (live columns, sparse lines), then mostly
        # unstable (many rows refined at once), then mixed
        plan = [draw(plan_tokens((0, 1, 12, 1, 1))), draw(plan_tokens((0, 1, 0, 1, 10))),
                draw(plan_tokens((1, 1, 5, 3, 1)))]
        return net, boxes, plan, draw(st.integers(0, 2**16)), draw(st.sampled_from([4, 16, 0]))

    def inner(case: tuple) -> None:
        net_spec, boxes, plan, s, rows = case
        lo, hi = boxes
        kwargs = {}
        if backsub and rows:
            kwargs["memory_budget_mb"] = _chunk_budget(build_net(net_spec), net_spec.input_shape,
                                                       lo.shape[0], rows)
        made, prog = _prepare(domain, net_spec, boxes, plan, surfaces, s, kwargs)
        desc = made.spec.describe()
        batch, npts = made.pts.shape[:2]
        values = made.acts[-1].reshape(batch, npts, -1)
        mag = made.mags[-1].reshape(batch, -1)
        g = torch.Generator().manual_seed(s)
        specs: list[torch.Tensor | None] = [None] + spec_rows(values.shape[-1], batch, g)[:1]
        if "backsub_patches_" in prog.code:
            ENGINE_COVERAGE["patch programs"] = ENGINE_COVERAGE.get("patch programs", 0) + 1
        ENGINE_COVERAGE["programs"] = ENGINE_COVERAGE.get("programs", 0) + 1
        plain = absdsl.compile(made.net, domain, input_shape=net_spec.input_shape,
                               options=PLAIN_ENGINE)
        plain_out = [plain(lo, hi, spec=C) for C in specs]
        params = dict(made.net.named_parameters())
        for C, (pl, pu) in zip(specs, plain_out, strict=True):
            with torch.no_grad(), _count_engine_paths(prog):
                lb, ub = prog(lo, hi, spec=C)
            others = [((pl, pu), "the plain engine")]
            if C is None:  # the vmap form refines every neuron: once per case is enough
                with torch.no_grad():
                    others.append((prog.functional(params, lo, hi, C), "the vmap form"))
            cv = values if C is None else torch.einsum("bkn,bpn->bpk", C, values)
            cmag = mag if C is None else torch.einsum("bkn,bn->bk", C.abs(), mag)
            lb, ub = lb.detach().reshape(batch, -1), ub.detach().reshape(batch, -1)
            compare("engine", desc, lo, hi, made.pts, cv, lb, ub, cmag, spec=C)
            for other, label in others:
                ol, ou = (t.detach().reshape(batch, -1) for t in other)
                for which, a, b in (("lower bound", lb, ol), ("upper bound", ub, ou)):
                    tol = local_tolerance(cmag, a, b) * 10
                    diff = (a - b).abs()
                    bad = torch.isnan(diff) | (diff > tol)
                    if bool(bad.any()):
                        bi, i = (int(v) for v in bad.nonzero()[0])
                        raise Violation(Counterexample(
                            "engine", desc, _tolist(lo[bi]), _tolist(hi[bi]), None,
                            f"{which} differs from {label}", (bi, i), float(b[bi, i]),
                            float(a[bi, i]), float(diff[bi, i]), float(tol[bi, i]),
                            _tolist(C[bi]) if C is not None else None,
                            note="value = the other form's bound; bound = prog(lo, hi)"))

    return _Test({"case": case()}, inner)


# ---- relaxations ---------------------------------------------------------------------------

RELAX_PARAMS: dict[str, list[dict[str, float]]] = {
    op.name: op.sample_params() for op in _ops.ELEMENTWISE}
RELAX_PARAMS["hardtanh"] = [{"min_val": -1.0, "max_val": 1.0}, {"min_val": 0.0, "max_val": 6.0},
                            {"min_val": -2.0, "max_val": 0.5}]


def concrete_activation(op: str, params: dict[str, float]) -> Callable[[torch.Tensor],
                                                                      torch.Tensor]:
    """The op's torch semantics, from the op table."""
    info = _ops.get(op)
    return info.torch_fn({p.name: p.default for p in info.params} | params)


def relaxation_functions(domain: Any) -> list[tuple[str, dict[str, float], Any]]:
    """(op, params, fn) for every relaxation of the domain; fn(l, u) -> (a_lo, b_lo, a_hi, b_hi).

    Generated exactly as bound programs generate them (``codegen.relax_function``).
    """
    from absdsl.compiler import codegen
    from absdsl.dsl.loader import load_domain

    loaded = load_domain(domain)
    out: list[tuple[str, dict[str, float], Any]] = []
    for op in _ops.ACTIVATIONS:
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


def product_relaxation(domain: Any) -> Any:
    """The domain's planes of ``mul`` as fn(lx, ux, ly, uy) -> 6 tensors, or None."""
    from absdsl.compiler import codegen
    from absdsl.dsl.loader import load_domain

    loaded = load_domain(domain)
    relax = codegen.relax_for("mul", loaded.relaxes)
    if relax is None or loaded.intermediate is None:
        return None
    em = codegen.Emitter(indent=0)
    name = codegen.relax_function(relax, "mul", {}, em, loaded.domain, relax.filename,
                                  relax.source)
    fn = codegen.load_generated("\n".join(em.lines), "relax mul")[name]
    return lambda lx, ux, ly, uy: fn(lx, ux, ly, uy)[0]


def check_product_planes(planes: Any) -> PropertyResult:
    """lower(x, y) <= x y <= upper(x, y) on a grid of boxes [lx, ux] x [ly, uy] (values from
    -1e3 to 1e3, degenerate ones included), at the corners, the centre and inside."""
    vals = [-1e3, -3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 3.0, 1e3]
    pairs = [(a, b) for a in vals for b in vals if a <= b]
    lx, ux, ly, uy = (torch.tensor(v, dtype=DTYPE) for v in zip(
        *[(a, b, c, d) for a, b in pairs for c, d in pairs], strict=True))
    result = PropertyResult("relaxations: the product's planes on a grid of boxes", True, 0)
    for tx in (0.0, 0.3, 0.5, 1.0):
        for ty in (0.0, 0.7, 0.5, 1.0):
            x, y = lx + tx * (ux - lx), ly + ty * (uy - ly)
            ax_lo, ay_lo, b_lo, ax_hi, ay_hi, b_hi = (
                torch.as_tensor(t, dtype=DTYPE).expand_as(x) for t in planes(lx, ux, ly, uy))
            z = x * y
            low, up = ax_lo * x + ay_lo * y + b_lo, ax_hi * x + ay_hi * y + b_hi
            tol = local_tolerance(lx.abs() + ux.abs(), ly.abs() + uy.abs(), z, ax_lo * x,
                                  ay_lo * y, b_lo, ax_hi * x, ay_hi * y, b_hi)
            result.examples += x.numel()
            for which, excess in (("lower plane > x y", low - z), ("x y > upper plane", z - up)):
                bad = torch.isnan(excess) | (excess > tol)
                if bool(bad.any()):
                    i = int(bad.nonzero()[0, 0])
                    result.passed = False
                    result.counterexample = Counterexample(
                        "relaxations", "mul", [float(lx[i]), float(ly[i])],
                        [float(ux[i]), float(uy[i])], [float(x[i]), float(y[i])], which, (i,),
                        float(z[i]), float((low if "lower" in which else up)[i]),
                        float(excess[i]), float(tol[i]),
                        note=f"planes: lower {float(ax_lo[i]):.17g} x + {float(ay_lo[i]):.17g} "
                             f"y + {float(b_lo[i]):.17g}, upper {float(ax_hi[i]):.17g} x + "
                             f"{float(ay_hi[i]):.17g} y + {float(b_hi[i]):.17g}")
                    return result
    return result


def check_relaxation(op: str, params: dict[str, float], fn: Any, l: torch.Tensor,
                     u: torch.Tensor, x: torch.Tensor) -> None:
    """Raise :class:`Violation` unless lower(x) <= f(x) <= upper(x) (elementwise), each
    point judged with a tolerance from its own values."""
    if op in RELAX_RANGE:  # only where the op is defined and finite
        lo, hi = RELAX_RANGE[op]
        keep = (l >= lo) & (u <= hi)
        if not bool(keep.any()):
            return
        l, u, x = l[keep], u[keep], x[keep]
    a_lo, b_lo, a_hi, b_hi = (torch.as_tensor(t, dtype=DTYPE).expand_as(l) for t in fn(l, u))
    f = concrete_activation(op, params)(x)
    low, up = a_lo * x + b_lo, a_hi * x + b_hi
    tol = local_tolerance(l.abs() + u.abs(), x, f, a_lo * x, b_lo, a_hi * x, b_hi)
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
                float(excess[i]), float(tol[i]),
                note=f"lines: lower {float(a_lo[i]):.17g} * x + {float(b_lo[i]):.17g}, "
                     f"upper {float(a_hi[i]):.17g} * x + {float(b_hi[i]):.17g}"))


@st.composite
def relax_points(draw: Any, surfaces: tuple[Surface, ...] = BASE_SURFACES
                 ) -> tuple[float, float, float]:
    """(l, u, x) with l <= u, x in [l, u]; on and beside every surface, at every scale."""
    mag = st.one_of(st.floats(0, 5, width=64), st.sampled_from([0.0, 1e-6, 1.0, 1e3]))
    kind = draw(st.sampled_from(["random", "l=u", "surface", "surface", "near u=-l"]))
    scale = draw(st.sampled_from(SCALES))
    a, b = draw(st.floats(-5, 5, width=64)) * scale, draw(mag) * scale
    if kind == "l=u":
        l, u = a, a
    elif kind == "surface":
        s = surfaces[draw(st.integers(0, len(surfaces) - 1))]
        base = abs(s.c) if s.c != 0 else max(b, 1e-300)
        off = draw(st.sampled_from([0.0, 1e-12, 1e-9, 1e-6, 1e-3, 0.1])) * base
        off *= draw(st.sampled_from([1.0, -1.0]))
        l, u = _on_surface(s, b, off, a)
        l, u = min(l, u), max(l, u)
    elif kind == "near u=-l":
        l, u = -b, b * (1 + draw(st.sampled_from([1e-12, -1e-12, 1e-6, -1e-6])))
        l, u = min(l, u), max(l, u)
    else:
        l, u = min(a, a + b), a + b
    t = draw(st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0, 1, width=64)))
    x = min(max(l + t * (u - l), l), u)
    if draw(st.booleans()) and l < 0 < u:
        x = 0.0  # the kink of relu-like activations
    return l, u, x


def relax_grid(surfaces: tuple[Surface, ...] = BASE_SURFACES
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A deterministic sweep: pairs of values from -1e3 to 1e3 and, for every surface, (l, u)
    on it and just beside it at every scale; x at both ends, inside and at the kinks."""
    vals = [-1e3, -3.0, -1.0, -0.5, -1e-3, -1e-6, 0.0, 1e-6, 1e-3, 0.5, 1.0, 3.0, 1e3]
    ls, us = [], []
    for a in vals:
        for b in vals:
            if a <= b:
                ls.append(a)
                us.append(b)
        ls.append(-abs(a))
        us.append(abs(a))
    for s in surfaces:
        for width in (0.0, 1e-9, 1e-6, 1e-3, 1.0, 1e3):
            base = abs(s.c) if s.c != 0 else max(width, 1e-9)
            for off in (0.0, 1e-12, -1e-12, 1e-9, -1e-9, 1e-6, -1e-6, 1e-3, -1e-3, 0.1, -0.1):
                for centre in (0.0, 1.0, -1.0):
                    l, u = _on_surface(s, width, off * base, centre * max(width, base))
                    ls.append(min(l, u))
                    us.append(max(l, u))
    lt = torch.tensor(ls, dtype=DTYPE)
    ut = torch.tensor(us, dtype=DTYPE)
    ts = torch.tensor([0.0, 1e-9, 0.1, 0.5, 0.9, 1.0], dtype=DTYPE)
    L = lt.repeat_interleave(len(ts) + 1)
    U = ut.repeat_interleave(len(ts) + 1)
    T = torch.cat([ts, torch.tensor([-1.0], dtype=DTYPE)]).repeat(len(lt))
    X = torch.where(T < 0, torch.zeros_like(L).clamp(min=L, max=U),
                    (L + T.clamp(min=0) * (U - L)).clamp(min=L, max=U))
    return L, U, X


def relaxation_property(domain: Any, surfaces: tuple[Surface, ...] = BASE_SURFACES) -> _Test:
    fns = relaxation_functions(domain)

    def inner(point: tuple[float, float, float]) -> None:
        l, u, x = (torch.tensor([v], dtype=DTYPE) for v in point)
        for op, params, fn in fns:
            check_relaxation(op, params, fn, l, u, x)

    return _Test({"point": relax_points(surfaces)}, inner)


# ---- continuity ------------------------------------------------------------------------------

CONTINUITY_LEVELS = 8   # refinements of the grid around the largest difference
CONTINUITY_POINTS = 16  # sub-intervals per level


def continuous_ops(domain: Any) -> frozenset[str]:
    """The activations the domain declares ``continuous`` (``monotone`` covers them all).

    A forward domain's network is continuous only if its input, affine (and add) rules are
    too; a back-substitution domain's affine maps are exact, and it declares its activations
    with (empty) ``rule OP continuous {}`` entries.
    """
    from absdsl.dsl.loader import load_domain

    loaded = load_domain(domain)
    rules = loaded.domain.rules
    declared = {op for r in rules if r.continuous for op in r.ops}
    if loaded.intermediate is None and not {"input", "affine"} <= declared:
        return frozenset()
    acts = set()
    from absdsl.compiler.codegen import find_rule

    for op in ACTIVATION_OPS:
        rule = find_rule(loaded.domain, RULE_OP.get(op, op))
        if rule is not None and rule.continuous:
            acts.add(op)
    return frozenset(acts)


def robust_loss(lb: torch.Tensor) -> torch.Tensor:
    """The robust cross-entropy of margin lower bounds (z_y = 0, z_i = -m_i), per batch."""
    z = torch.cat([torch.zeros(lb.shape[0], 1, dtype=lb.dtype), -lb], 1)
    return F.cross_entropy(z, torch.zeros(lb.shape[0], dtype=torch.long))


@dataclass
class Jump:
    t: float          # where along the direction
    width: float      # of the last interval
    size: float       # |L(t + width) - L(t)| there
    history: list[float]  # the largest difference at each level


def find_jump(loss: Callable[[float], float], t0: float, t1: float,
              points: int = CONTINUITY_POINTS, levels: int = CONTINUITY_LEVELS
              ) -> Jump | None:
    """Grid [t0, t1], then refine ``levels`` times around the largest difference; a jump
    when that difference stops shrinking with the interval (a Lipschitz function's falls
    by ``points`` per level) and is above rounding."""
    a, b = t0, t1
    history: list[float] = []
    vals: list[float] = []
    at = a
    for _ in range(levels + 1):
        ts = [a + (b - a) * i / points for i in range(points + 1)]
        vals = [loss(t) for t in ts]
        diffs = [abs(vals[i + 1] - vals[i]) for i in range(points)]
        if any(math.isnan(d) for d in diffs):
            i = next(i for i, d in enumerate(diffs) if math.isnan(d))
            return Jump(ts[i], ts[i + 1] - ts[i], math.nan, history + [math.nan])
        i = max(range(points), key=lambda k: diffs[k])
        history.append(diffs[i])
        at = ts[i]
        a, b = ts[i], ts[i + 1]
    scale = 1.0 + max(abs(v) for v in vals)
    last = history[-1]
    if last > 1e-7 * scale and last > 0.05 * history[-3]:
        return Jump(at, b - a, last, history)
    return None


def continuity_property(domain: Any, acts: frozenset[str]) -> _Test:
    """The robust loss along a random direction in weight space, through a neuron aimed at
    a guard surface, has no jump (see :func:`find_jump`)."""
    import absdsl

    loaded_surfaces = guard_surfaces(_loaded(domain))

    moderate = st.floats(-2.0, 2.0, allow_nan=False, width=64)

    @st.composite
    def case(draw: Any) -> tuple:
        # moderate weights and boxes: a saturated loss (huge margins) hides any jump
        # (one input, two or more neurons: every neuron correlated with every other one)
        d = draw(st.sampled_from([1, 1, 2, 3]))
        layers: list[Layer] = []
        width = d
        for _ in range(draw(st.integers(1, 2))):
            out = draw(st.integers(2, 4))
            n = out * width + out
            layers.append(Layer("linear", (out,), tuple(draw(st.lists(moderate, min_size=n,
                                                                        max_size=n)))))
            layers.append(draw(_activation(acts)))
            width = out
        n_out = draw(st.integers(2, 3))
        n = n_out * width + n_out
        layers.append(Layer("linear", (n_out,), tuple(draw(st.lists(moderate, min_size=n,
                                                                      max_size=n)))))
        net = NetSpec((d,), tuple(layers))
        centre = torch.tensor(draw(st.lists(st.floats(-1, 1, width=64), min_size=d,
                                            max_size=d)), dtype=DTYPE)
        radius = torch.tensor(draw(st.lists(st.floats(0.05, 1, width=64), min_size=d,
                                            max_size=d)), dtype=DTYPE)
        boxes = ((centre - radius).reshape(1, d), (centre + radius).reshape(1, d))
        plan = draw(plan_tokens((1, 6, 0, 0, 1)))
        return (net, boxes, plan, draw(st.integers(0, 2**16)),
                draw(st.sampled_from([0.05, 0.2, 0.5])), draw(st.integers(0, n_out - 1)))

    def inner(case: tuple) -> None:
        net_spec, (lo, hi), plan, s, span, label = case
        net = build_net(net_spec)
        prog = absdsl.compile(net, domain, input_shape=net_spec.input_shape)
        aim(net, prog, lo, hi, plan, tuple(loaded_surfaces))
        last = net[-1]
        assert isinstance(last, nn.Linear)
        n_out = last.out_features
        C = absdsl.margin_spec(torch.tensor([label]), n_out).to(DTYPE)
        base = {k: v.detach().clone() for k, v in net.named_parameters()}
        g = torch.Generator().manual_seed(s)
        direction = {k: torch.randn(v.shape, generator=g, dtype=DTYPE) for k, v in base.items()}
        norm = math.sqrt(sum(float((v ** 2).sum()) for v in direction.values()))

        def loss(t: float) -> float:
            params = {k: base[k] + (t / norm) * direction[k] for k in base}
            with torch.no_grad():
                lb, _ = prog.functional(params, lo, hi, C)
            return float(robust_loss(lb))

        jump = find_jump(loss, -span, span)
        if jump is not None:
            final = NetSpec(net_spec.input_shape, harvest(net_spec.layers, net))
            raise Violation(Counterexample(
                "continuity", final.describe(), _tolist(lo[0]), _tolist(hi[0]), None,
                "continuity of the robust loss (value = L(t), bound = L(t + width))", (label,),
                loss(jump.t), loss(jump.t + jump.width),
                jump.size, 0.0, _tolist(C[0]),
                note=f"jump of {jump.size:.6g} between t = {jump.t:.17g} and "
                     f"t + {jump.width:.3g} along a unit direction (seed {s}); largest "
                     f"difference per refinement level: "
                     + ", ".join(f"{h:.3g}" for h in jump.history)))

    return _Test({"case": case()}, inner)


# ---- every rule, at its own special points ---------------------------------------------------
#
# Random networks reach a product, a valley op or an antitone op rarely (or never), and a box
# whose ends straddle GELU's dip or hardtanh's kink only by chance. This property sweeps every
# op of the domain on one- and two-op networks over boxes placed on and beside the op's own
# special points (read from the op table: kinks and inflections as the ends of its convex and
# concave pieces, the dips of f', argmin, the end of its domain, 0), checks the bounds of
# [x, f(x)] and, through spec rows, of f(x) - a x for slopes a at and near f' at the box's
# corners (a rule whose slope or correlation is wrong shows there), and counts per rule how
# many examples reached it. It is a fixed sweep (no random draws): the same in every process.

RULE_OFFSETS = (0.0, 1e-9, -1e-9, 1e-6, -1e-6, 1e-4, -1e-4, 1e-3, -1e-3, 0.05, -0.05)
RULE_WIDTHS = (0.0, 1e-6, 1e-3, 0.1, 1.0, 4.0)
SLOPE_FACTORS = (1.0, 1.01, 0.99, 1.03, 0.97, 1.06, 0.94)
PRODUCT_VALUES = (-2.0, -1.0, -0.3, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.0)
# ops the front end reaches from a direct spelling on the input (the others of the table are
# reached only inside composites: softmax, log_softmax, layer norm, F.normalize)
_COMPOSITE_OPS = ("neg_log1p", "inv1p", "rsqrt_eps", "inv_norm")


def special_points(op: str, params: dict[str, float]) -> list[float]:
    """Where an op's rules switch or its shape changes: 0, the finite ends of its convex and
    concave pieces (kinks such as hardtanh's min_val and max_val, inflection points), the
    dips of f', argmin and the lower end of its domain."""
    info = _ops.get(op)
    full = {p.name: p.default for p in info.params} | params
    pts = {0.0}
    for a, b in tuple(info.convex(full)) + tuple(info.concave(full)):
        pts.update(v for v in (a, b) if math.isfinite(v))
    pts.update(x for x, _ in info.dips(full))
    if info.argmin is not None:
        pts.add(info.argmin(full)[0])
    if info.valid is not None and math.isfinite(info.valid[0]):
        pts.add(info.valid[0])
    return sorted(pts)


def _op_range(op: str) -> tuple[float, float]:
    """Where boxes of ``op`` may lie: its domain (open ends kept off), finite in float64."""
    if op in RELAX_RANGE:
        return RELAX_RANGE[op]
    return (-1e3, 1e3)


def special_boxes(op: str, params: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Intervals [l, u] on and beside every special point (one end there, or centred there,
    at widths 0 to 4) and from one special point to another (exactly, a little wider and a
    little narrower), inside the op's range."""
    lo_ok, hi_ok = _op_range(op)
    pts = special_points(op, params)
    boxes: set[tuple[float, float]] = set()
    for s in pts:
        for d in RULE_OFFSETS:
            e = s + d * max(1.0, abs(s))
            for w in RULE_WIDTHS:
                boxes.update({(e, e + w), (e - w, e), (e - w / 2, e + w / 2)})
    for i, s in enumerate(pts):
        for e in pts[i + 1:]:
            boxes.update({(s, e), (s - 0.01, e + 0.01), (s + 1e-3, e - 1e-3)})
    kept = sorted((lo, hi) for lo, hi in boxes if lo <= hi and lo >= lo_ok and hi <= hi_ok)
    ends = torch.tensor(kept, dtype=DTYPE)
    return ends[:, 0], ends[:, 1]


class _OpNet(nn.Module):
    """One op on the input, output ``cat([x, f(x)])`` (so spec rows can form f(x) - a x)."""

    def __init__(self, op: str, params: dict[str, float]) -> None:
        super().__init__()
        self.op = op
        info = _ops.get("hardtanh" if op == "relu6" else op)
        self.exponent = int(params.get("exponent", 2.0))
        self.act: nn.Module | None = None
        if op == "relu6":
            self.act = nn.ReLU6()
        elif op not in ("pow", "pow_odd", "reciprocal"):
            positional = [p for p in info.params if p.position >= 0]
            full = {p.name: p.default for p in info.params} | params
            self.act = _Activation(op, tuple(full[p.name] for p in positional))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op in ("pow", "pow_odd"):
            y = x ** self.exponent
        elif self.op == "reciprocal":
            y = 1 / x
        else:
            assert self.act is not None
            y = self.act(x)
        return torch.cat([x, y], 1)


class _ProductNet(nn.Module):
    """Products of two inputs: ``x0 * x1``, ``(x0 + x1) * (x0 - x1)`` (operands sharing
    generators), ``relu(x0) * x1`` (an operand carrying a relaxation's error), ``relu(x0 x1 -
    1/4)`` (the product's bounds feed a relaxation) and ``x0 / x1``; output ``cat([x, y])``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, :1], x[:, 1:]
        if self.kind == "mul":
            y = a * b
        elif self.kind == "shared":
            y = (a + b) * (a - b)
        elif self.kind == "relu":
            y = torch.relu(a) * b
        elif self.kind == "then-relu":
            y = torch.relu(a * b - 0.25)
        else:
            y = a / b
        return torch.cat([x, y], 1)


class _CompositeNet(nn.Module):
    """The ops the front end makes only inside composites, on a 2-vector: softmax (inv1p),
    log_softmax (neg_log1p), layer norm (rsqrt_eps), F.normalize (inv_norm)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op == "inv1p":
            return torch.softmax(x, -1)
        if self.op == "neg_log1p":
            return torch.log_softmax(x, -1)
        if self.op == "rsqrt_eps":
            return F.layer_norm(x, (2,))
        return F.normalize(x, dim=-1)


def _grid_points(lo: torch.Tensor, hi: torch.Tensor, extra: list[float]) -> torch.Tensor:
    """Points of each box [B, d] -> [B, P, d]: a grid (dense in 1-d, with points at 1e-6 to
    3 % from either end), the corners, and the ``extra`` values where they lie inside."""
    d = lo.shape[1]
    if d == 1:
        ts = torch.linspace(0, 1, 33, dtype=DTYPE).tolist()
        near = [1e-6, 1e-4, 1e-3, 1e-2, 0.03]
        ts = sorted(set(ts + near + [1 - v for v in near]))
        t = torch.tensor(ts, dtype=DTYPE).reshape(1, -1, 1)
        pts = lo.unsqueeze(1) + t * (hi - lo).unsqueeze(1)
        if extra:
            e = torch.tensor(extra, dtype=DTYPE).reshape(1, -1, 1)
            e = torch.minimum(torch.maximum(e, lo.unsqueeze(1)), hi.unsqueeze(1))
            pts = torch.cat([pts, e], 1)
        return pts
    axis = torch.tensor([0.0, 1e-3, 0.5, 1 - 1e-3, 1.0], dtype=DTYPE)
    t = torch.cartesian_prod(*([axis] * d)).unsqueeze(0)  # [1, P, d]
    return lo.unsqueeze(1) + t * (hi - lo).unsqueeze(1)


def _slope_rows(net: nn.Module, lo: torch.Tensor, hi: torch.Tensor, n_in: int,
                chord: bool) -> torch.Tensor:
    """Spec rows [B, k, n_in + 1] of y - a . x: a the gradient of y at every corner and the
    centre (and the chord slope in 1-d), and +-1, +-3 along each input, each scaled by
    :data:`SLOPE_FACTORS`; plus x and y."""
    corners = _grid_points(lo, hi, [])[:, :, :] if n_in > 1 else torch.stack([lo, hi], 1)
    if n_in > 1:
        keep = ((corners == lo.unsqueeze(1)) | (corners == hi.unsqueeze(1))).all(-1)
        keep[:, :] = keep[0:1, :]  # the same grid positions in every sample
        corners = corners[:, keep[0]]
    centre = ((lo + hi) / 2).unsqueeze(1)
    at = torch.cat([corners, centre], 1).detach().requires_grad_(True)  # [B, P, d]
    y = net(at.reshape(-1, n_in))[:, -1].sum()
    (grad,) = torch.autograd.grad(y, at)
    slopes = [grad[:, i] for i in range(grad.shape[1])]  # each [B, d]
    if chord:
        width = (hi - lo).clamp(min=1e-300)
        with torch.no_grad():
            fl, fu = net(lo)[:, -1:], net(hi)[:, -1:]
        slopes.append(torch.where(hi > lo, (fu - fl) / width, slopes[0]))
    for i in range(n_in):  # fixed steep slopes: a corner where the output is flat can
        for k in (-3.0, -1.0, 1.0, 3.0):  # still be where y - a x is extreme
            unit = torch.zeros_like(slopes[0])
            unit[:, i] = k
            slopes.append(unit)
    rows = []
    for s in slopes:
        for k in SLOPE_FACTORS:
            rows.append(torch.cat([-k * s.detach(), torch.ones_like(s[:, :1])], 1))
    eye = torch.eye(n_in + 1, dtype=DTYPE).expand(lo.shape[0], -1, -1)
    out = torch.cat([torch.stack(rows, 1), eye], 1)
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


@dataclass
class RuleReach:
    """How many examples reached each rule (``rule`` as written: kind, ops and file:line)."""

    rule: str
    ops: set[str]
    examples: int = 0


def _rule_label(rule: Any, kind: str) -> str:
    return f"{kind} {', '.join(rule.ops)} (line {rule.pos.line})"


def domain_rules(domain: Any) -> dict[str, RuleReach]:
    """Every rule and relaxation of the domain (and of its intermediate-bounds domain),
    keyed by label: what the per-rule property must reach."""
    loaded = _loaded(domain)
    out: dict[str, RuleReach] = {}
    for dom in (loaded.domain, loaded.intermediate):
        if dom is None:
            continue
        for rule in dom.rules:
            label = f"{dom.name} " + _rule_label(rule, "rule")
            out[label] = RuleReach(label, set())
    for relax in loaded.relaxes:
        label = _rule_label(relax, "relax")
        out[label] = RuleReach(label, set())
    return out


def rules_of_op(domain: Any, op: str) -> list[str]:
    """Labels (as :func:`domain_rules`) of the rules that bound ``op`` in this domain."""
    from absdsl.compiler import codegen

    loaded = _loaded(domain)
    labels = []
    for dom in (loaded.domain, loaded.intermediate):
        if dom is None:
            continue
        rule = codegen.find_rule(dom, op)
        if rule is not None:
            labels.append(f"{dom.name} " + _rule_label(rule, "rule"))
    if loaded.intermediate is not None or not loaded.domain.rules:
        relax = codegen.relax_for(op, loaded.relaxes)
        if relax is not None:
            labels.append(_rule_label(relax, "relax"))
    return labels


def _rule_cases(ops: frozenset[str]) -> Iterator[tuple[str, nn.Module, int, torch.Tensor,
                                                      torch.Tensor, list[float], bool]]:
    """(what, net, input size, lo, hi, extra points, slope rows) for every case: products
    first (the rules random networks reach least), then activations, then composites."""
    vals = PRODUCT_VALUES
    ivs = [(a, b) for a in vals for b in vals if a <= b]
    pos = [(a, b) for a, b in ivs if a > 0]
    for kind, second in (("mul", ivs), ("shared", ivs), ("relu", ivs), ("then-relu", ivs),
                         ("div", pos)):
        pairs = [(a, b, c, d) for a, b in ivs for c, d in second]
        t = torch.tensor(pairs, dtype=DTYPE)
        yield (f"product {kind}", _ProductNet(kind), 2, t[:, [0, 2]], t[:, [1, 3]], [], True)
    for op in _ops.ACTIVATIONS:
        if op in _COMPOSITE_OPS or (op in ACTIVATION_OPS and op not in ops):
            continue
        for params in RELAX_PARAMS[op]:
            lo, hi = special_boxes(op, params)
            yield (f"{op}{params or ''}", _OpNet(op, params), 1, lo.unsqueeze(1),
                   hi.unsqueeze(1), special_points(op, params), True)
    if "relu6" in ops:
        lo, hi = special_boxes("hardtanh", {"min_val": 0.0, "max_val": 6.0})
        yield ("relu6", _OpNet("relu6", {}), 1, lo.unsqueeze(1), hi.unsqueeze(1),
               [0.0, 6.0], True)
    for op in _COMPOSITE_OPS:
        t = torch.tensor([(a, b, c, d) for a, b in ivs for c, d in ivs], dtype=DTYPE)
        yield (f"{op} (composite)", _CompositeNet(op), 2, t[:, [0, 2]], t[:, [1, 3]], [],
               False)


def rules_property(domain: Any, ops: frozenset[str]) -> tuple[PropertyResult,
                                                              dict[str, RuleReach]]:
    """The per-rule sweep (see the section comment): a result, and the reach of every rule.

    A rule no example reached fails the property (it was never checked)."""
    import absdsl
    from absdsl.errors import InputError, TraceError

    name = ("rules: every rule reached, one- and two-op networks on boxes at each op's "
            "special points (kinks, inflections, dips, argmin)")
    domain = _loaded(domain)  # parsed once for every case
    reach = domain_rules(domain)
    result = PropertyResult(name, True, 0)
    op_rules: dict[str, list[str]] = {}
    for what, net, n_in, lo, hi, extra, slopes in _rule_cases(ops):
        model = net.to(DTYPE).eval()
        try:
            prog = absdsl.compile(model, domain, input_shape=(n_in,))
            prog.ir  # noqa: B018 (traces now: a missing rule shows here)
        except TraceError as err:
            if "no rule" in str(err) or "no relaxation" in str(err):
                continue  # listed as unsupported by the probe
            raise
        pts = _grid_points(lo, hi, extra)  # [B, P, n_in]
        batch, npts = pts.shape[:2]
        with torch.no_grad():
            values = model(pts.reshape(-1, n_in)).reshape(batch, npts, -1)
        finite = torch.isfinite(values).all(-1).all(-1)
        if not bool(finite.all()):  # e.g. 1 / x at x = 0: outside the op's domain
            keep = finite
            lo, hi, pts, values = lo[keep], hi[keep], pts[keep], values[keep]
            batch = lo.shape[0]
        if batch == 0:
            continue
        mag_in = torch.maximum(lo.abs(), hi.abs())
        vmax = values.abs().amax(1)
        mag = torch.cat([mag_in, vmax[:, n_in:] + mag_in.amax(1, keepdim=True)], 1)
        desc = f"{what}: {type(model).__name__} on input [{n_in}]"
        try:
            with torch.no_grad():
                lb, ub = prog(lo, hi)
            compare("rules", desc, lo, hi, pts, values, lb.reshape(batch, -1),
                    ub.reshape(batch, -1), mag)
            if slopes:
                C = _slope_rows(model, lo, hi, n_in, n_in == 1)
                with torch.no_grad():
                    lb, ub = prog(lo, hi, spec=C)
                cv = torch.einsum("bkn,bpn->bpk", C, values)
                cmag = torch.einsum("bkn,bn->bk", C.abs(), mag)
                compare("rules", desc, lo, hi, pts, cv, lb, ub, cmag, spec=C)
        except Violation as v:
            result.passed = False
            result.counterexample = v.cex
            return result, reach
        except InputError as err:
            if "outside the op's domain" in str(err):
                continue  # a sound but looser rule widened an operand of 1 / x past 0
            raise
        except Exception as err:  # a crash of the generated program is a failure too
            result.passed = False
            result.error = f"the program crashed on {desc}: {type(err).__name__}: {err}"
            return result, reach
        result.examples += batch
        for op in {n.op for n in prog.ir.nodes}:
            if op not in op_rules:
                op_rules[op] = rules_of_op(domain, op)
            for label in op_rules[op]:
                if label in reach:
                    reach[label].ops.add(op)
                    reach[label].examples += batch
    missed = [r.rule for r in reach.values() if r.examples == 0]
    if missed:
        result.passed = False
        result.error = "no example reached " + "; ".join(missed)
    return result, reach


# ---- entry point ---------------------------------------------------------------------------

def _loaded(domain: Any) -> Any:
    from absdsl.dsl.loader import load_domain
    return load_domain(domain)


def check_domain(domain_spec: str | Path | Any, max_examples: int = 50, seed: int = 0,
                 properties: tuple[str, ...] = DEFAULT_PROPERTIES,
                 shrink_seconds: float = 30.0, stop_on_failure: bool = False) -> CheckReport:
    """Property-test ``domain_spec`` (a built-in name, a file path, ``path:Name``).

    ``stop_on_failure`` skips the properties after the first failing one (the mutation
    tests: whether a domain is flagged does not depend on it).

    Returns a :class:`CheckReport`: one :class:`PropertyResult` per property, a failing one
    holding the shrunk :class:`Counterexample`. DSL errors in the file propagate
    (:class:`absdsl.errors.DSLError`); an unknown property is an ``InputError``.
    """
    from absdsl.errors import InputError

    unknown = [p for p in properties if p not in PROPERTIES]
    if unknown:
        raise InputError(f"unknown property {unknown[0]!r} (properties: {', '.join(PROPERTIES)})")
    loaded = _loaded(domain_spec)  # raises DSLError / AbsdslError before any work
    domain = str(domain_spec) if not hasattr(domain_spec, "domain") else domain_spec
    report = CheckReport(loaded.name)
    surfaces = tuple(guard_surfaces(loaded))
    report.surfaces = list(surfaces)
    ops, missing = supported_ops(domain)
    if "hardtanh" not in ops:
        ops = ops - {"relu6"}
    report.unsupported = missing

    def stop() -> bool:
        return stop_on_failure and not report.ok

    if "rules" in properties:
        rules_result, reach = rules_property(domain, ops)
        report.results.append(rules_result)
        report.reach = list(reach.values())
    if not stop() and "bounds" in properties:
        report.results.append(_run_property(
            "sound: concrete outputs of every layer lie in the bounds",
            soundness_property(domain, ops, False, surfaces), max_examples, seed,
            shrink_seconds))
    if not stop() and "spec" in properties:
        report.results.append(_run_property(
            "sound: C @ f(x) lies in the spec bounds (margins, pair sums and differences, "
            "random C)", soundness_property(domain, ops, True, surfaces), max_examples,
            seed + 1, shrink_seconds))
    if not stop() and "engine" in properties:
        ENGINE_COVERAGE.clear()
        report.results.append(_run_property(
            "sound and equal to the plain engine and the vmap form on larger networks "
            "(patches, live columns, sparse lines, chunks)",
            engine_property(domain, ops, surfaces), max(max_examples // 3, 1), seed + 3,
            shrink_seconds))
    if not stop() and "relaxations" in properties and relaxation_functions(domain):
        fns = relaxation_functions(domain)
        grid_result = PropertyResult("relaxations: lower <= f <= upper on the guard grid",
                                     True, 0)
        L, U, X = relax_grid(surfaces)
        try:
            for op, params, fn in fns:
                check_relaxation(op, params, fn, L, U, X)
                grid_result.examples += L.numel()
        except Violation as v:
            grid_result.passed = False
            grid_result.counterexample = v.cex
        report.results.append(grid_result)
        planes = product_relaxation(domain)
        if planes is not None:
            report.results.append(check_product_planes(planes))
        report.results.append(_run_property(
            "relaxations: lower <= f <= upper (random l <= u, x in [l, u])",
            relaxation_property(domain, surfaces), max_examples * 4, seed + 2,
            shrink_seconds))
    if not stop() and "continuity" in properties:
        acts = continuous_ops(domain) & ops
        if acts and "linear" in ops:
            report.results.append(_run_property(
                f"continuous: no jump in the robust loss along weight directions "
                f"({', '.join(sorted(acts))})", continuity_property(domain, acts),
                max(max_examples // 3, 1), seed + 4, shrink_seconds))
        else:
            report.results.append(PropertyResult(
                "continuous: nothing declared continuous (no check)", True, 0))
    return report
