"""Network descriptions the checker draws (layers, nets, their modules) and the magnitude
bound behind the local tolerance."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from absdsl.compiler import ops as _ops

from .common import DTYPE


@dataclass(frozen=True)
class Layer:
    """One layer of a drawn network: ``op`` plus its hyper-parameters and weights.

    ``weights`` is a flat list of floats consumed in parameter order (cycled if short);
    ``seed`` (when ``weights`` is empty) draws them from a normal distribution instead (wide
    engine layers). ``inner`` holds the branches of ``residual`` (x + sign * f(x)) and
    ``cat`` (cat([f(x), g(x)], 1); an empty branch is the identity).

    Args: linear ``(out, bias)``; conv ``(out_ch, k, stride, padding, groups, dilation,
    bias, dims)`` (padding an int or ``'same'``); avgpool and maxpool ``(k, stride,
    padding)``; adaptive ``(out_h, out_w)``; residual ``(sign,)``; leaky_relu ``(slope,)``; hardtanh
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
    elif op == "maxpool":
        k, s, p = a
        mod = nn.MaxPool2d(k, stride=s, padding=p)
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
    assert isinstance(seq, nn.Sequential)
    return tuple(_HARVESTERS.get(la.op, _unchanged)(la, mod)
                 for la, mod in zip(layers, seq, strict=True))


def _unchanged(la: Layer, mod: nn.Module) -> Layer:
    return la


def _harvest_weights(la: Layer, mod: nn.Module) -> Layer:
    vals = torch.cat([p.detach().flatten() for p in _params(mod)])
    return Layer(la.op, la.args, tuple(vals.tolist()))


def _harvest_bn(la: Layer, mod: nn.Module) -> Layer:
    assert isinstance(mod, nn.modules.batchnorm._BatchNorm)
    assert mod.running_mean is not None and mod.running_var is not None
    vals = torch.cat([mod.weight.detach(), mod.bias.detach(), mod.running_mean,
                      mod.running_var - 1e-3])
    return Layer("bn", la.args, tuple(vals.tolist()))


def _harvest_branches(la: Layer, mod: nn.Module) -> Layer:
    assert isinstance(mod, (_Residual, _Cat))
    branches = (mod.f,) if isinstance(mod, _Residual) else (mod.f, mod.g)
    pairs = zip(la.inner, branches, strict=False)
    return Layer(la.op, la.args, inner=tuple(harvest(inner, branch) for inner, branch in pairs))


# how a layer reads back the weights its module holds; the other layers have none
_HARVESTERS: dict[str, Callable[[Layer, nn.Module], Layer]] = {
    "linear": _harvest_weights, "conv": _harvest_weights, "bn": _harvest_bn,
    "residual": _harvest_branches, "cat": _harvest_branches,
}


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
    if isinstance(mod, nn.MaxPool2d):  # the ReLU tree's terms: |a|, |b - a| per level
        k = mod.kernel_size
        return mod(m) * 2 * (k * k if isinstance(k, int) else k[0] * k[1])
    if isinstance(mod, nn.Hardtanh):  # ReLU6
        return m + max(abs(mod.min_val), abs(mod.max_val))
    if isinstance(mod, _Activation):  # |f(x)| <= |x| + c for every drawn activation
        return m + mod.offset
    if isinstance(mod, _Residual):
        return m + magnitude(mod.f, m)
    if isinstance(mod, _Cat):
        return torch.cat([magnitude(mod.f, m), magnitude(mod.g, m)], 1)
    return m  # relu, leaky relu, tanh, identity: |f(x)| <= |x|
