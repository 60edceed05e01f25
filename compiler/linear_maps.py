"""Linear maps of ``affine`` nodes: one small class per op, each with one documented contract.

A map turns a per-sample tensor x of shape ``in_shape`` into ``W x`` of shape ``out_shape``.
Each class emits torch code (strings over variable names) for three things:

* ``apply(x, absolute)``: ``W x`` (or ``|W| x``) for x of shape [N, *in_shape];
* ``transpose(lam)``: ``lam W`` for rows lam of shape [B, k, *out_shape] -> [B, k, *in_shape]
  (back-substitution);
* ``bias``: the name of a per-sample tensor broadcastable to ``out_shape``, or None.

Weights are names of prelude values, so a program reads the current parameters each call.
"""

from __future__ import annotations

from dataclasses import dataclass


def _num(value: float) -> str:
    return repr(float(value))


@dataclass
class Dense:
    """``nn.Linear``: W is [out, in] and acts on the last dimension."""

    weight: str
    weight_abs: str
    bias: str | None

    def describe(self) -> str:
        return f"linear W={self.weight}" + (f" b={self.bias}" if self.bias else "")

    def apply(self, x: str, absolute: bool = False) -> str:
        return f"F.linear({x}, {self.weight_abs if absolute else self.weight})"

    def transpose(self, lam: str) -> str:
        return f"({lam} @ {self.weight})"


@dataclass
class Conv:
    """``nn.Conv1d`` / ``nn.Conv2d`` (stride, padding, dilation, groups); avg pooling too."""

    dims: int
    weight: str
    weight_abs: str
    bias: str | None
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    output_padding: tuple[int, ...]  # makes the transposed conv land on in_shape exactly

    def describe(self) -> str:
        return (f"conv{self.dims}d W={self.weight} stride={self.stride} padding={self.padding} "
                f"dilation={self.dilation} groups={self.groups}"
                + (f" b={self.bias}" if self.bias else ""))

    def apply(self, x: str, absolute: bool = False) -> str:
        w = self.weight_abs if absolute else self.weight
        return (f"F.conv{self.dims}d({x}, {w}, None, {self.stride}, {self.padding}, "
                f"{self.dilation}, {self.groups})")

    def transpose(self, lam: str) -> str:
        return (f"F.conv_transpose{self.dims}d({lam}.flatten(0, 1), {self.weight}, None, "
                f"{self.stride}, {self.padding}, {self.output_padding}, {self.groups}, "
                f"{self.dilation}).unflatten(0, {lam}.shape[:2])")


@dataclass
class Elementwise:
    """``x * scale + shift`` with scale/shift broadcastable per-sample tensors or numbers.

    Covers input normalisation, batch norm in eval mode, constants added or multiplied.
    """

    scale: str | float | None
    scale_abs: str | float | None
    bias: str | None

    def describe(self) -> str:
        parts = []
        if self.scale is not None:
            parts.append(f"scale={self.scale}")
        if self.bias is not None:
            parts.append(f"b={self.bias}")
        return "elementwise " + " ".join(parts)

    def _times(self, x: str, s: str | float | None) -> str:
        if s is None:
            return x
        return f"({x} * {_num(s) if isinstance(s, float) else s})"

    def apply(self, x: str, absolute: bool = False) -> str:
        return self._times(x, self.scale_abs if absolute else self.scale)

    def transpose(self, lam: str) -> str:
        return self._times(lam, self.scale)


LinearMap = Dense | Conv | Elementwise
