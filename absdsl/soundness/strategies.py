"""Hypothesis strategies: networks, input boxes, aiming plans, and the sample points
checked inside a box."""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

import torch
import torch.nn as nn
from hypothesis import strategies as st

from absdsl.compiler import ops as _ops

from .common import ACTIVATION_OPS, ALL_OPS, DTYPE
from .nets import Layer, NetSpec, build_layer, n_weights
from .surfaces import BASE_SURFACES, Surface


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
        choices += [o for o in ("conv", "bn", "avgpool", "maxpool", "adaptive", "flatten")
                    if o in ops]
        if min(shape[1:]) < 2:
            choices = [o for o in choices if o not in ("avgpool", "maxpool", "adaptive")]
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
    if op == "maxpool":  # windows of 2 or 3, overlapping (stride 1) or not, padded
        k = draw(st.integers(2, min(3, *shape[1:])))
        return Layer("maxpool", (k, draw(st.integers(1, k)), draw(st.integers(0, k // 2))))
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
