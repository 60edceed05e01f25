"""The relaxations property: each relaxation's lines on a grid of guard surfaces and on random
boxes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st

from absdsl.compiler import codegen
from absdsl.compiler import ops as _ops
from absdsl.dsl.loader import load_domain

from .checks import _Test
from .common import DTYPE, RELAX_RANGE, local_tolerance
from .report import Counterexample, PropertyResult, Violation
from .strategies import SCALES, _on_surface
from .surfaces import BASE_SURFACES, Surface

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
            for pick in PARAM_PICKS if relax.params else ():
                ranges = {p.name: (p.lo, p.hi) for p in relax.params}
                out.append((op, params, lambda l, u, fn=fn, pick=pick, ranges=ranges: fn(
                    l, u, given={k: pick(l, u, lo, hi) for k, (lo, hi) in ranges.items()})[0]))
    return out


def _varying(l: torch.Tensor, u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """A value in [lo, hi] that varies with the bounds like a random draw, but is the same for
    the same point (Hypothesis replays and shrinks points)."""
    frac = torch.frac(torch.sin(l * 12.9898 + u * 78.233) * 43758.5453).abs()
    return lo + frac.nan_to_num(0.5) * (hi - lo)


#: the values of a relaxation parameter that ``absdsl check`` tests its lines at, per neuron:
#: both ends of the range, and a value that varies with the point (parameters are per neuron,
#: so every value of the range must give sound lines)
PARAM_PICKS: tuple[Callable[[torch.Tensor, torch.Tensor, float, float], torch.Tensor], ...] = (
    lambda l, u, lo, hi: torch.full_like(l, lo),
    lambda l, u, lo, hi: torch.full_like(l, hi),
    _varying,
)


def product_relaxation(domain: Any) -> Any:
    """The domain's planes of ``mul`` as fn(lx, ux, ly, uy) -> 6 tensors, or None."""
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
