"""The op table: every IR op with its arity, kind, fx spellings, parameters and semantics.

One entry per op is the single source of truth that the front end (which fx targets and
modules lower to it, and how its parameters are read), the code generator (its torch code and
derivative, the rule groups that cover it), the DSL checker and the property suite (sample
parameters), the concrete evaluator and the MILP encoder (whether it is piecewise linear) read.

Kinds:

* ``input``, ``affine`` (a linear map, see :mod:`linear_maps`), ``add``, ``cat``, ``reshape``:
  the structural ops every domain handles;
* ``elementwise``: an activation ``y = f(x)`` per neuron;
* ``pool``: a monotone reduction over windows (max pooling): Box maps its ends through it,
  other domains get its decomposition into linear selections and ReLUs;
* ``product``: ``x * y`` of two input-dependent tensors (a two-input rule, ``rule mul(p, q)``,
  and a two-input relaxation, ``relax mul(x, y; lx, ux, ly, uy)``).

An elementwise op names the rule *groups* that cover it when a domain has no rule of its own:
``monotone`` (non-decreasing: Box maps ends to ends), ``valley`` (non-increasing up to
``argmin``, then non-decreasing) and ``activation`` (any activation: the generic zonotope
and relaxation rules, which read ``df``, ``dmin``, ``convex`` and ``concave``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .namespace import load_generated

Params = dict[str, float]
Code = Callable[[str, Params], str]
INF = math.inf


@dataclass(frozen=True)
class Param:
    """A number parameter of an op: its fx keyword, position after the input, default, and
    the values the DSL checker and the property suite try."""

    name: str
    default: float
    samples: tuple[float, ...]
    position: int = -1  # index in the function's positional arguments (0 is the input)
    keyword: str = ""  # the fx keyword when it differs from the name rules see

    @property
    def fx_name(self) -> str:
        return self.keyword or self.name


@dataclass(frozen=True)
class Op:
    name: str
    kind: str
    arity: int = 1  # input-dependent operands; -1: any number (cat)
    groups: tuple[str, ...] = ()
    modules: dict[type, Callable[[Any], Params]] = field(default_factory=dict)
    functions: tuple[Any, ...] = ()  # torch functions and Tensor method names
    params: tuple[Param, ...] = ()
    code: Code | None = None  # torch code of y = f(x), batched
    deriv: Code | None = None  # torch code of f'(x)
    piecewise_linear: bool = False  # exactly encodable by the MILP stage
    convex: Callable[[Params], tuple[tuple[float, float], ...]] = lambda p: ()
    concave: Callable[[Params], tuple[tuple[float, float], ...]] = lambda p: ()
    # interior local minima of f' as (x, a value <= f'(x)); min f' on [l, u] is at an end or
    # at one of these
    dips: Callable[[Params], tuple[tuple[float, float], ...]] = lambda p: ()
    argmin: Callable[[Params], tuple[float, float]] | None = None  # valley: (x*, <= f(x*))
    valid: tuple[float, float, bool] | None = None  # (lo, hi, open ends): defined range
    check: Callable[[Params], str | None] = lambda p: None  # a reason the params have no rule
    summary: str = ""
    # the parameters and per-sample (input, output) shapes the DSL checker compiles a rule of
    # this op at, when its table defaults (and a [4] vector) do not fit it (pooling)
    example: tuple[Params, tuple[int, ...], tuple[int, ...]] | None = None
    # torch code of min f' on [l, u] (l, u, params), for ops whose dips cannot be listed
    # (periodic ones); None: from deriv and dips
    slope_min: Callable[[str, str, Params], str] | None = None
    # torch code of the inflection point of f nearest x (x, params), for ops with several
    # (periodic ones): what ``inflection(e)`` compiles to; None: the op has none listed
    inflection: Code | None = None

    @property
    def elementwise(self) -> bool:
        return self.kind == "elementwise"

    def sample_params(self) -> list[Params]:
        """Parameter sets the checker and property suite try (the defaults first)."""
        if not self.params:
            return [{}]
        base = {p.name: p.default for p in self.params}
        out = [base]
        for p in self.params:
            for v in p.samples:
                cand = dict(base, **{p.name: v})
                if cand not in out and self.check(cand) is None:
                    out.append(cand)
        return out

    def torch_fn(self, params: Params) -> Callable[[torch.Tensor], torch.Tensor]:
        """The op as a torch function of one batched tensor (concrete semantics)."""
        assert self.code is not None, self.name
        return _function(self.code("x", params), ("x",), f"op {self.name}")

    def deriv_fn(self, params: Params) -> Callable[[torch.Tensor], torch.Tensor]:
        """f' as a torch function (what ``df`` compiles to)."""
        assert self.deriv is not None, self.name
        return _function(self.deriv("x", params), ("x",), f"op {self.name} df")

    def slope_min_fn(self, params: Params) -> Callable[[torch.Tensor, torch.Tensor],
                                                       torch.Tensor]:
        """dmin(l, u) as a torch function (what ``dmin`` compiles to)."""
        return _function(slope_min_code(self, params, "l", "u"), ("l", "u"),
                         f"op {self.name} dmin")


def _function(body: str, args: tuple[str, ...], label: str) -> Callable[..., torch.Tensor]:
    """Table code (ours: numbers pass through repr(float)) as a function, loaded the way
    every generated program is (:func:`namespace.load_generated`)."""
    source = f"def fn({', '.join(args)}):\n    return {body}\n"
    return load_generated(source, label)["fn"]


def _num(v: float) -> str:
    return repr(float(v))


def _where_between(x: str, lo: float, hi: float) -> str:
    return f"(({x} > {_num(lo)}) & ({x} < {_num(hi)}))"


_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# GELU and SiLU: where f' has its interior minimum and that minimum (rounded down), and where
# f has its minimum and that minimum (rounded down); computed by Newton's method in float64
_GELU_DIP = (-_SQRT2, -0.12890414518515478 - 1e-12)
_GELU_MIN = (-0.7517915246935645, -0.16997120747990369 - 1e-12)
_SILU_INFLECTION = 2.3993572805336463
_SILU_DIP = (-_SILU_INFLECTION, -0.09983932012886691 - 1e-12)
_SILU_MIN = (-1.2784645427610737, -0.2784645427610738 - 1e-12)
_SILU_CONVEX = _SILU_INFLECTION - 1e-9  # claimed convex only strictly inside


def _hardtanh_check(p: Params) -> str | None:
    return None if p["min_val"] < p["max_val"] else "hardtanh needs min_val < max_val"


def _leaky_check(p: Params) -> str | None:
    s = p["negative_slope"]
    return None if 0.0 <= s <= 1.0 else (f"LeakyReLU slope {s} outside [0, 1] is not monotone "
                                         f"and convex")


def _elu_check(p: Params) -> str | None:
    return None if p["alpha"] >= 0.0 else f"ELU alpha {p['alpha']} < 0 is not monotone"


def _softplus_check(p: Params) -> str | None:
    return None if p["sharpness"] > 0.0 else f"Softplus beta {p['sharpness']} must be positive"


def _pow_check(p: Params, even: bool) -> str | None:
    n = p["exponent"]
    if not float(n).is_integer() or n < 2:
        return f"pow with exponent {n}: only whole exponents >= 2 have a rule"
    if (int(n) % 2 == 0) != even:
        return f"exponent {n} is {'odd' if even else 'even'}"
    return None


_TWO_PI = 2.0 * math.pi


def _periodic_slope_min(deriv: Code, first_dip: float) -> Callable[[str, str, Params], str]:
    """min f' on [l, u] for sin and cos: -1 where a minimum of f' (at first_dip + 2 k pi)
    lies in [l, u], the smaller end value otherwise. The position test errs towards 'inside'
    (a slack of 1e-9), which only lowers the bound."""
    def code(l: str, u: str, p: Params) -> str:
        dip = (f"(torch.ceil(({l} - {_num(first_dip)}) / {_num(_TWO_PI)} - 1e-9) * "
               f"{_num(_TWO_PI)} + {_num(first_dip)})")
        return (f"torch.where({dip} <= {u} + 1e-9 * (1 + torch.abs({u})), -1.0, "
                f"torch.minimum({deriv(l, p)}, {deriv(u, p)}))")
    return code


def _nearest_of_period(x: str, start: float) -> str:
    """Code of the point start + k pi nearest x (sin's and cos's inflection points)."""
    return (f"(torch.round(({x} - {_num(start)}) / {_num(math.pi)}) * {_num(math.pi)} + "
            f"{_num(start)})")


def _periodic_intervals(start: float) -> tuple[tuple[float, float], ...]:
    """[start + 2 k pi, start + (2 k + 1) pi] for |k| <= 8 (|x| up to about 50), shrunk by 1e-9
    so that rounding of pi never claims a curvature across an inflection point."""
    return tuple((start + k * _TWO_PI + 1e-9, start + k * _TWO_PI + math.pi - 1e-9)
                 for k in range(-8, 9))


ELEMENTWISE: tuple[Op, ...] = (
    Op("relu", "elementwise", groups=("monotone", "activation"),
       modules={nn.ReLU: lambda m: {}},
       functions=(F.relu, torch.relu, torch.relu_, "relu", "relu_"),
       code=lambda x, p: f"torch.relu({x})",
       deriv=lambda x, p: f"({x} > 0).to({x}.dtype)",
       piecewise_linear=True, convex=lambda p: ((-INF, INF),),
       summary="max(x, 0)"),
    Op("leaky_relu", "elementwise", groups=("monotone", "activation"),
       modules={nn.LeakyReLU: lambda m: {"negative_slope": float(m.negative_slope)}},
       functions=(F.leaky_relu, "leaky_relu"),
       params=(Param("negative_slope", 0.01, (0.0, 0.3, 1.0), 1),),
       code=lambda x, p: f"F.leaky_relu({x}, {_num(p['negative_slope'])})",
       deriv=lambda x, p: f"torch.where({x} > 0, 1.0, torch.full_like({x}, "
                          f"{_num(p['negative_slope'])}))",
       piecewise_linear=True, convex=lambda p: ((-INF, INF),), check=_leaky_check,
       summary="x if x > 0 else a x, a in [0, 1]"),
    Op("hardtanh", "elementwise", groups=("monotone", "activation"),
       modules={nn.Hardtanh: lambda m: {"min_val": float(m.min_val),
                                        "max_val": float(m.max_val)},
                nn.ReLU6: lambda m: {"min_val": 0.0, "max_val": 6.0}},
       functions=(F.hardtanh, "hardtanh"),
       params=(Param("min_val", -1.0, (0.0,), 1), Param("max_val", 1.0, (6.0,), 2)),
       code=lambda x, p: f"F.hardtanh({x}, {_num(p['min_val'])}, {_num(p['max_val'])})",
       deriv=lambda x, p: f"{_where_between(x, p['min_val'], p['max_val'])}.to({x}.dtype)",
       piecewise_linear=True,
       convex=lambda p: ((-INF, p["max_val"]),), concave=lambda p: ((p["min_val"], INF),),
       check=_hardtanh_check, summary="clamp(x, min_val, max_val); ReLU6 is (0, 6)"),
    Op("sigmoid", "elementwise", groups=("monotone", "activation"),
       modules={nn.Sigmoid: lambda m: {}}, functions=(torch.sigmoid, F.sigmoid, "sigmoid"),
       code=lambda x, p: f"torch.sigmoid({x})",
       deriv=lambda x, p: f"(torch.sigmoid({x}) * (1 - torch.sigmoid({x})))",
       convex=lambda p: ((-INF, 0.0),), concave=lambda p: ((0.0, INF),),
       summary="1 / (1 + exp(-x))"),
    Op("tanh", "elementwise", groups=("monotone", "activation"),
       modules={nn.Tanh: lambda m: {}}, functions=(torch.tanh, F.tanh, "tanh"),
       code=lambda x, p: f"torch.tanh({x})",
       deriv=lambda x, p: f"(1 - torch.tanh({x}) ** 2)",
       convex=lambda p: ((-INF, 0.0),), concave=lambda p: ((0.0, INF),)),
    Op("softsign", "elementwise", groups=("monotone", "activation"),
       modules={nn.Softsign: lambda m: {}}, functions=(F.softsign, "softsign"),
       code=lambda x, p: f"F.softsign({x})",
       deriv=lambda x, p: f"(1 / (1 + torch.abs({x})) ** 2)",
       convex=lambda p: ((-INF, 0.0),), concave=lambda p: ((0.0, INF),),
       summary="x / (1 + |x|)"),
    Op("hardsigmoid", "elementwise", groups=("monotone", "activation"),
       modules={nn.Hardsigmoid: lambda m: {}}, functions=(F.hardsigmoid, "hardsigmoid"),
       code=lambda x, p: f"F.hardsigmoid({x})",
       deriv=lambda x, p: f"({_where_between(x, -3.0, 3.0)}.to({x}.dtype) / 6)",
       piecewise_linear=True,
       convex=lambda p: ((-INF, 3.0),), concave=lambda p: ((-3.0, INF),),
       summary="clamp(x / 6 + 1/2, 0, 1)"),
    Op("softplus", "elementwise", groups=("monotone", "activation"),
       modules={nn.Softplus: lambda m: {"sharpness": float(m.beta),
                                        "threshold": float(m.threshold)}},
       functions=(F.softplus, "softplus"),
       # torch's beta is 'sharpness' in rules: HBox's state has a beta of its own
       params=(Param("sharpness", 1.0, (2.0, 0.5), 1, "beta"),
               Param("threshold", 20.0, (), 2)),
       code=lambda x, p: f"F.softplus({x}, {_num(p['sharpness'])}, {_num(p['threshold'])})",
       deriv=lambda x, p: (f"torch.where({x} * {_num(p['sharpness'])} > "
                           f"{_num(p['threshold'])}, 1.0, torch.sigmoid({x} * "
                           f"{_num(p['sharpness'])})).to({x}.dtype)"),
       convex=lambda p: ((-INF, INF),), check=_softplus_check,
       summary="log(1 + exp(beta x)) / beta"),
    Op("elu", "elementwise", groups=("monotone", "activation"),
       modules={nn.ELU: lambda m: {"alpha": float(m.alpha)}}, functions=(F.elu, "elu"),
       params=(Param("alpha", 1.0, (0.5, 2.0), 1),),
       code=lambda x, p: f"F.elu({x}, {_num(p['alpha'])})",
       deriv=lambda x, p: (f"torch.where({x} > 0, 1.0, {_num(p['alpha'])} * "
                           f"torch.exp(torch.clamp({x}, max=0.0))).to({x}.dtype)"),
       convex=lambda p: ((-INF, INF),) if p["alpha"] <= 1.0 else ((-INF, 0.0), (0.0, INF)),
       concave=lambda p: () if p["alpha"] <= 1.0 else ((0.0, INF),),
       check=_elu_check, summary="x if x > 0 else alpha (exp(x) - 1)"),
    Op("gelu", "elementwise", groups=("valley", "activation"),
       modules={nn.GELU: lambda m: {"tanh_approximation": float(m.approximate == "tanh")}},
       functions=(F.gelu, "gelu"),
       params=(Param("tanh_approximation", 0.0, ()),),
       code=lambda x, p: f"F.gelu({x})",
       deriv=lambda x, p: (f"(0.5 * (1 + torch.erf({x} * {_num(1 / _SQRT2)})) + {x} * "
                           f"torch.exp(-0.5 * {x} * {x}) * {_num(_INV_SQRT_2PI)})"),
       convex=lambda p: ((-_SQRT2, _SQRT2),),
       concave=lambda p: ((-INF, -_SQRT2), (_SQRT2, INF)),
       dips=lambda p: (_GELU_DIP,), argmin=lambda p: _GELU_MIN,
       check=lambda p: None if p["tanh_approximation"] == 0.0 else
       "GELU with approximate='tanh' has no rule (only the exact erf form)",
       summary="x Phi(x) (the exact erf form)"),
    Op("silu", "elementwise", groups=("valley", "activation"),
       modules={nn.SiLU: lambda m: {}}, functions=(F.silu, "silu"),
       code=lambda x, p: f"F.silu({x})",
       deriv=lambda x, p: (f"(torch.sigmoid({x}) * (1 + {x} * (1 - torch.sigmoid({x}))))"),
       convex=lambda p: ((-_SILU_CONVEX, _SILU_CONVEX),),
       concave=lambda p: ((-INF, -_SILU_INFLECTION - 1e-9), (_SILU_INFLECTION + 1e-9, INF)),
       dips=lambda p: (_SILU_DIP,), argmin=lambda p: _SILU_MIN,
       summary="x sigmoid(x) (Swish)"),
    Op("hardswish", "elementwise", groups=("valley", "activation"),
       modules={nn.Hardswish: lambda m: {}}, functions=(F.hardswish, "hardswish"),
       code=lambda x, p: f"F.hardswish({x})",
       deriv=lambda x, p: (f"torch.where({x} < -3, 0.0, torch.where({x} > 3, 1.0, "
                           f"{x} / 3 + 0.5)).to({x}.dtype)"),
       convex=lambda p: ((-3.0, 3.0),), concave=lambda p: ((-INF, -3.0), (3.0, INF)),
       dips=lambda p: ((-3.0, -0.5),), argmin=lambda p: (-1.5, -0.375),
       summary="x relu6(x + 3) / 6"),
    Op("abs", "elementwise", groups=("valley", "activation"),
       functions=(torch.abs, "abs"), code=lambda x, p: f"torch.abs({x})",
       deriv=lambda x, p: f"torch.sign({x})", piecewise_linear=True,
       convex=lambda p: ((-INF, INF),), argmin=lambda p: (0.0, 0.0)),
    Op("pow", "elementwise", groups=("valley", "activation"),
       functions=(torch.pow, "pow", torch.square, "square"),
       params=(Param("exponent", 2.0, (4.0,)),),
       code=lambda x, p: f"({x} ** {int(p['exponent'])})",
       deriv=lambda x, p: f"({int(p['exponent'])} * {x} ** {int(p['exponent']) - 1})",
       convex=lambda p: ((-INF, INF),), argmin=lambda p: (0.0, 0.0),
       check=lambda p: _pow_check(p, even=True),
       summary="x ** n, n even (x * x too)"),
    Op("pow_odd", "elementwise", groups=("monotone", "activation"),
       params=(Param("exponent", 3.0, (5.0,)),),
       code=lambda x, p: f"({x} ** {int(p['exponent'])})",
       deriv=lambda x, p: f"({int(p['exponent'])} * {x} ** {int(p['exponent']) - 1})",
       convex=lambda p: ((0.0, INF),), concave=lambda p: ((-INF, 0.0),),
       dips=lambda p: ((0.0, 0.0),), check=lambda p: _pow_check(p, even=False),
       summary="x ** n, n odd (monotone)"),
    Op("exp", "elementwise", groups=("monotone", "activation"),
       functions=(torch.exp, "exp"), code=lambda x, p: f"torch.exp({x})",
       deriv=lambda x, p: f"torch.exp({x})", convex=lambda p: ((-INF, INF),)),
    Op("log", "elementwise", groups=("monotone", "activation"),
       functions=(torch.log, "log"), code=lambda x, p: f"torch.log({x})",
       deriv=lambda x, p: f"(1 / {x})", concave=lambda p: ((0.0, INF),),
       valid=(0.0, INF, True)),
    Op("log1p", "elementwise", groups=("monotone", "activation"),
       functions=(torch.log1p, "log1p"), code=lambda x, p: f"torch.log1p({x})",
       deriv=lambda x, p: f"(1 / (1 + {x}))", concave=lambda p: ((-1.0, INF),),
       valid=(-1.0, INF, True), summary="log(1 + x) on x > -1 (log_softmax)"),
    Op("neg_log1p", "elementwise", groups=("antitone", "activation"),
       code=lambda x, p: f"(-torch.log1p({x}))",
       deriv=lambda x, p: f"(-1 / (1 + {x}))", convex=lambda p: ((-1.0, INF),),
       valid=(-1.0, INF, True), summary="-log(1 + x) on x > -1 (log_softmax)"),
    Op("inv1p", "elementwise", groups=("antitone", "activation"),
       code=lambda x, p: f"(1 / (1 + {x}))",
       deriv=lambda x, p: f"(-1 / ((1 + {x}) * (1 + {x})))", convex=lambda p: ((-1.0, INF),),
       valid=(-1.0, INF, True), summary="1 / (1 + x) on x > -1 (softmax)"),
    # the last steps of LayerNorm / GroupNorm and F.normalize, as single ops defined on the
    # whole line (exact where a variance or squared norm is >= 0, which it always is), so
    # that no domain's rounding or relaxation can push them out of a defined range
    Op("rsqrt_eps", "elementwise", groups=("antitone", "activation"),
       params=(Param("eps", 1e-5, (1e-2, 1.0)),),
       code=lambda x, p: f"(torch.clamp({x}, min=0.0) + {_num(p['eps'])}) ** -0.5",
       deriv=lambda x, p: (f"torch.where({x} > 0, -0.5 * (torch.clamp({x}, min=0.0) + "
                           f"{_num(p['eps'])}) ** -1.5, torch.zeros_like({x}))"),
       convex=lambda p: ((-INF, 0.0), (0.0, INF)),
       dips=lambda p: ((0.0, -0.5 * p["eps"] ** -1.5),),
       check=lambda p: None if p["eps"] > 0 else "rsqrt_eps needs eps > 0",
       summary="1 / sqrt(max(v, 0) + eps) (layer and group norm)"),
    Op("inv_norm", "elementwise", groups=("antitone", "activation"),
       params=(Param("eps", 1e-12, (1e-2, 1.0)),),
       code=lambda x, p: (f"1 / torch.clamp(torch.sqrt(torch.clamp({x}, min=0.0)), "
                          f"min={_num(p['eps'])})"),
       deriv=lambda x, p: (f"torch.where({x} > {_num(p['eps'] ** 2)}, -0.5 * torch.clamp("
                           f"{x}, min={_num(p['eps'] ** 2)}) ** -1.5, torch.zeros_like({x}))"),
       convex=lambda p: ((-INF, p["eps"] ** 2), (p["eps"] ** 2, INF)),
       dips=lambda p: ((p["eps"] ** 2, -0.5 * p["eps"] ** -3),),
       check=lambda p: None if p["eps"] > 0 else "inv_norm needs eps > 0",
       summary="1 / max(sqrt(max(s, 0)), eps) (F.normalize of a squared norm s)"),
    Op("sqrt", "elementwise", groups=("monotone", "activation"),
       functions=(torch.sqrt, "sqrt"), code=lambda x, p: f"torch.sqrt({x})",
       # f' is infinite at 0: df is clamped there (a lower bound of f' is all dmin needs),
       # and tangents are only drawn away from 0
       deriv=lambda x, p: f"(0.5 / torch.sqrt(torch.clamp({x}, min=1e-12)))",
       concave=lambda p: ((1e-12, INF),), valid=(0.0, INF, False)),
    Op("reciprocal", "elementwise", groups=("antitone", "activation"),
       functions=(torch.reciprocal, "reciprocal"), code=lambda x, p: f"torch.reciprocal({x})",
       deriv=lambda x, p: f"(-1 / ({x} * {x}))", convex=lambda p: ((0.0, INF),),
       valid=(0.0, INF, True), summary="1 / x on x > 0"),
    Op("arctan", "elementwise", groups=("monotone", "activation"),
       functions=(torch.arctan, torch.atan, "arctan", "atan"),
       code=lambda x, p: f"torch.arctan({x})", deriv=lambda x, p: f"(1 / (1 + {x} * {x}))",
       convex=lambda p: ((-INF, 0.0),), concave=lambda p: ((0.0, INF),),
       summary="arctan(x) (sigmoid-like)"),
    Op("sign", "elementwise", groups=("monotone", "activation"),
       functions=(torch.sign, "sign"), code=lambda x, p: f"torch.sign({x})",
       deriv=lambda x, p: f"torch.zeros_like({x})",
       summary="-1, 0 or 1 (a step: relaxed by its two constant lines f(l), f(u))"),
    Op("sin", "elementwise", groups=("activation",),
       functions=(torch.sin, "sin"), code=lambda x, p: f"torch.sin({x})",
       deriv=lambda x, p: f"torch.cos({x})",
       convex=lambda p: _periodic_intervals(-math.pi), concave=lambda p: _periodic_intervals(0.0),
       slope_min=_periodic_slope_min(lambda x, p: f"torch.cos({x})", math.pi),
       inflection=lambda x, p: _nearest_of_period(x, 0.0),
       summary="sin(x) (curvature known for |x| < 50; dmin exact everywhere)"),
    Op("cos", "elementwise", groups=("activation",),
       functions=(torch.cos, "cos"), code=lambda x, p: f"torch.cos({x})",
       deriv=lambda x, p: f"(-torch.sin({x}))",
       convex=lambda p: _periodic_intervals(math.pi / 2),
       concave=lambda p: _periodic_intervals(-math.pi / 2),
       slope_min=_periodic_slope_min(lambda x, p: f"(-torch.sin({x}))", math.pi / 2),
       inflection=lambda x, p: _nearest_of_period(x, math.pi / 2),
       summary="cos(x) (curvature known for |x| < 50; dmin exact everywhere)"),
)
"""Elementwise activations. Pow is also reached from ``x * x`` and ``x ** n``."""

POOL: tuple[Op, ...] = (
    Op("max_pool2d", "pool", groups=("monotone",),
       modules={nn.MaxPool2d: lambda m: {}}, functions=(F.max_pool2d, "max_pool2d"),
       piecewise_linear=True,
       summary="max over k x k windows (any stride, padding; dilation 1)",
       code=lambda x, p: _max_pool_code(x, p),
       example=({"kernel_h": 2.0, "kernel_w": 2.0, "stride_h": 2.0, "stride_w": 2.0,
                 "padding_h": 0.0, "padding_w": 0.0, "ceil_mode": 0.0}, (1, 4, 4), (1, 2, 2))),
    Op("amax", "pool", groups=("monotone",), functions=(torch.amax, "amax"),
       piecewise_linear=True, summary="max over one per-sample dim (torch.amax)",
       # dim counts the batch
       code=lambda x, p: (f"torch.amax({x}, dim={int(p['dim'])}, "
                          f"keepdim={bool(p['keepdim'])})"),
       example=({"dim": 3.0, "keepdim": 0.0}, (1, 4, 4), (1, 4))),
)

PRODUCTS: tuple[Op, ...] = (
    Op("mul", "product", arity=2,
       summary="x * y of two input-dependent tensors of one shape (McCormick planes); "
               "also x / y = x * reciprocal(y), matmul and attention"),
)

STRUCTURAL: tuple[Op, ...] = (
    Op("input", "input", arity=0, piecewise_linear=True, summary="the model's input"),
    Op("affine", "affine", piecewise_linear=True,
       summary="a linear map plus bias (Linear, Conv, BatchNorm, pooling, shape ops, ...)"),
    Op("add", "add", arity=2, piecewise_linear=True,
       summary="sum of two input-dependent tensors"),
    Op("cat", "cat", arity=-1, piecewise_linear=True, summary="concatenation"),
    Op("reshape", "reshape", piecewise_linear=True, summary="a relabelling of neurons"),
)

OPS: dict[str, Op] = {op.name: op for op in STRUCTURAL + ELEMENTWISE + POOL + PRODUCTS}
ACTIVATIONS: tuple[str, ...] = tuple(op.name for op in ELEMENTWISE)
GROUPS = ("monotone", "valley", "antitone", "activation")
"""Rule names that cover several ops (see the module docstring)."""

# op of every fx function / method target and module type, with how its params are read
BY_FUNCTION: dict[Any, Op] = {t: op for op in ELEMENTWISE + POOL for t in op.functions}
BY_MODULE: dict[type, Op] = {t: op for op in ELEMENTWISE + POOL for t in op.modules}


def _max_pool_code(x: str, p: Params) -> str:
    """Max pooling of ``x`` with the node's parameters (whole numbers stored as floats)."""
    def pair(a: str, b: str) -> str:
        return f"({int(p[a])}, {int(p[b])})"
    return (f"F.max_pool2d({x}, {pair('kernel_h', 'kernel_w')}, {pair('stride_h', 'stride_w')}, "
            f"{pair('padding_h', 'padding_w')}, 1, {bool(p['ceil_mode'])})")


def get(name: str) -> Op:
    if name not in OPS:
        raise KeyError(f"no op {name!r} in the op table (ops: {', '.join(OPS)})")
    return OPS[name]


def covering(name: str) -> tuple[str, ...]:
    """Rule names that apply to op ``name``, most specific first."""
    op = OPS.get(name)
    return (name,) + (op.groups if op is not None else ())


def is_pool(name: str) -> bool:
    return name in OPS and OPS[name].kind == "pool"


def interval_test(intervals: tuple[tuple[float, float], ...], l: str, u: str) -> str:
    """Torch code of the mask '[l, u] lies inside one of ``intervals``'."""
    parts = []
    for a, b in intervals:
        conds = []
        if a > -INF:
            conds.append(f"({l} >= {_num(a)})")
        if b < INF:
            conds.append(f"({u} <= {_num(b)})")
        parts.append(" & ".join(conds) if conds else f"torch.ones_like({l}, dtype=torch.bool)")
    if not parts:
        return f"torch.zeros_like({l}, dtype=torch.bool)"
    return "(" + " | ".join(f"({p})" for p in parts) + ")"


def slope_min_code(op: Op, params: Params, l: str, u: str) -> str:
    """Torch code of a lower bound of f' on [l, u] (its exact minimum for these ops)."""
    if op.slope_min is not None:
        return op.slope_min(l, u, params)
    assert op.deriv is not None
    code = f"torch.minimum({op.deriv(l, params)}, {op.deriv(u, params)})"
    for x, value in op.dips(params):
        # widen the test a little, relative to where the dip is: a dip just outside [l, u]
        # only makes the bound looser. Not by an absolute width: inv_norm's dip at 0 is
        # -5e35, and taking it on [1e-6, 1e-6] cancelled the whole value away in the
        # zonotope's DeepZ rule (F.normalize of (-1e-3, 0) bounded as [0, 0], found by the
        # checker's rule sweep)
        width = 1e-6 * abs(x)
        code = (f"torch.where(({l} <= {_num(x + width)}) & ({u} >= {_num(x - width)}), "
                f"torch.clamp({code}, max={_num(value)}), {code})")
    return code
