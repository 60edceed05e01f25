"""Linear maps of ``affine`` nodes: one small class per op, each with one documented contract.

A map turns a per-sample tensor x of shape ``in_shape`` into ``W x`` of shape ``out_shape``.
Each class emits torch code (strings over variable names) for two things:

* ``apply(x, absolute, with_bias)``: ``W x`` (or ``|W| x``) for x of shape [N, *in_shape];
  ``with_bias`` adds ``bias`` in the same call (one pass over the output instead of two);
* its transpose ``lam W`` (back-substitution) is emitted by ``backsub.transpose``;
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

    def apply(self, x: str, absolute: bool = False, with_bias: bool = False) -> str:
        b = f", {self.bias}" if with_bias and self.bias else ""
        return f"F.linear({x}, {self.weight_abs if absolute else self.weight}{b})"


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
    in_shape: tuple[int, ...] = ()  # per-sample input shape (channels first)
    kernel: tuple[int, ...] = ()  # kernel size (patch geometry of back-substitution)

    def describe(self) -> str:
        return (f"conv{self.dims}d W={self.weight} stride={self.stride} padding={self.padding} "
                f"dilation={self.dilation} groups={self.groups}"
                + (f" b={self.bias}" if self.bias else ""))

    def apply(self, x: str, absolute: bool = False, with_bias: bool = False) -> str:
        w = self.weight_abs if absolute else self.weight
        b = f"{self.bias}.flatten()" if with_bias and self.bias else "None"  # [C, 1..] -> [C]
        return (f"F.conv{self.dims}d({x}, {w}, {b}, {self.stride}, {self.padding}, "
                f"{self.dilation}, {self.groups})")

    def uses_subpixel(self) -> bool:
        """Whether ``transpose`` runs as the sub-pixel forward conv (1-4 input channels)."""
        return (self.dims == 2 and self.groups == 1 and self.dilation == (1, 1)
                and len(self.in_shape) == 3 and self.in_shape[0] <= 4
                and min(self.stride) > 1 and self.stride[0] == self.stride[1]
                and all(o <= p for o, p in zip(self.output_padding, self.padding, strict=True)))


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

    def apply(self, x: str, absolute: bool = False, with_bias: bool = False) -> str:
        scaled = self._times(x, self.scale_abs if absolute else self.scale)
        return f"({scaled} + {self.bias})" if with_bias and self.bias else scaled


@dataclass
class Traced:
    """Any other linear map, given as torch code over ``{x}`` (batched [N, *in_shape]):
    permutes, transposes, slices, zero padding, expands, sums and means over dims,
    interpolation, non-uniform adaptive pooling, transposed convolutions.

    ``abs_code`` is ``|W| x`` (the same code for maps whose coefficients are all >= 0). The
    transpose is taken by autodiff (``dense_rows.linear_back``): the map is linear, so its
    vector-Jacobian product at any point is ``lam W``.
    """

    code: str
    abs_code: str
    bias: str | None
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    label: str

    def describe(self) -> str:
        return self.label + (f" b={self.bias}" if self.bias else "")

    def apply(self, x: str, absolute: bool = False, with_bias: bool = False) -> str:
        code = (self.abs_code if absolute else self.code).replace("{x}", x)
        return f"({code} + {self.bias})" if with_bias and self.bias else code


LinearMap = Dense | Conv | Elementwise | Traced
