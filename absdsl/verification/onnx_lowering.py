"""onnx2torch's modules rewritten into the torch spellings absdsl's front end lowers.

The part of ONNX import that needs onnx2torch (an optional dependency: the ``onnx`` extra),
imported by :func:`absdsl.verification.onnx_io.load_onnx` once it has checked the packages are
there. Each node without a rule raises :class:`absdsl.errors.OnnxError` naming the ONNX node
and its op type.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
from onnx2torch.node_converters.clip import OnnxClip
from onnx2torch.node_converters.concat import OnnxConcat
from onnx2torch.node_converters.flatten import OnnxFlatten
from onnx2torch.node_converters.functions import OnnxFunction
from onnx2torch.node_converters.gather import OnnxGather
from onnx2torch.node_converters.gemm import OnnxGemm
from onnx2torch.node_converters.global_average_pool import (
    OnnxGlobalAveragePool,
    OnnxGlobalAveragePoolWithKnownInputShape,
)
from onnx2torch.node_converters.matmul import OnnxMatMul
from onnx2torch.node_converters.pad import OnnxPadDynamic, OnnxPadStatic, _onnx_padding_to_torch
from onnx2torch.node_converters.reshape import OnnxReshape
from onnx2torch.node_converters.slice import OnnxSlice, OnnxSliceV9
from onnx2torch.node_converters.transpose import OnnxTranspose
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import OnnxError


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


# ---- onnx2torch modules as torch spellings ---------------------------------------

class _Binary(nn.Module):
    """ONNX Add/Sub/Mul/Div as the torch function (the front end lowers those)."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fn(a, b)


class _Reshape(nn.Module):
    """ONNX Reshape with a constant target shape, the leading (batch) axis kept."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape((-1, *self.shape))


class _Concat(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(list(xs), self.axis)


class _ClampOneSide(nn.Module):
    """Clip with one bound: max(x, lo) = relu(x - lo) + lo; min(x, hi) = hi - relu(hi - x)."""

    def __init__(self, lo: float | None, hi: float | None) -> None:
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lo is not None:
            return torch.relu(x - self.lo) + self.lo
        assert self.hi is not None
        return torch.neg(torch.relu(torch.neg(x) + self.hi)) + self.hi


class _Permute(nn.Module):
    """ONNX Transpose that keeps the batch axis first (the NHWC -> NCHW of Keras exports)."""

    def __init__(self, perm: tuple[int, ...]) -> None:
        super().__init__()
        self.perm = tuple(perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.perm)


class _Index(nn.Module):
    """ONNX Slice (positive steps) or Gather of one constant index, as basic indexing with
    the batch axis whole: ``x[:, a:b, i]``."""

    def __init__(self, items: tuple[Any, ...]) -> None:
        super().__init__()
        self.items = items

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[self.items]


class _Pad(nn.Module):
    """ONNX Pad with constant widths and value (``F.pad``), the batch and channel axes kept."""

    def __init__(self, widths: tuple[int, ...], value: float) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.value = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.widths, "constant", self.value)


def _const_of(gm: fx.GraphModule, arg: Any) -> torch.Tensor | None:
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        obj: Any = gm
        for part in str(arg.target).split("."):
            obj = getattr(obj, part)
        return obj if isinstance(obj, torch.Tensor) else None
    return None


def rewrite(gm: fx.GraphModule, nodes: dict[str, tuple[str, str]], path: Path,
             input_shape: tuple[int, ...], vector: bool = False) -> None:
    """Replace onnx2torch's own modules by modules whose forward uses lowered torch ops.

    ``vector``: the file's input is a rank-1 vector (one sample, no batch axis), so every
    value on the data path is a vector and ``W @ v`` is the linear map with matrix W.
    """
    fns: dict[str, Callable[..., torch.Tensor]] = {
        "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}
    for node in gm.graph.nodes:  # onnx2torch's Flatten(axis=0) fails to run: replace it first
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)),
                                                   OnnxFlatten):
            mod = gm.get_submodule(str(node.target))
            if mod.axis != 0:
                original, op_type = nodes.get(str(node.target), (str(node.target), "Flatten"))
                raise OnnxError(f"{path}: ONNX node {original!r} ({op_type}): Flatten with "
                                f"axis={mod.axis} mixes the batch axis into the features; "
                                f"no rule")
            gm.add_submodule(str(node.target), nn.Flatten(1))
        if vector and node.op == "call_module" and isinstance(
                gm.get_submodule(str(node.target)), OnnxMatMul) and len(node.args) == 2:
            w = _const_of(gm, node.args[0])  # W @ v on the vector v of a one-sample network
            if w is not None and w.dim() == 2 and _const_of(gm, node.args[1]) is None:
                lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
                with torch.no_grad():
                    lin.weight.data = w.detach().clone().contiguous()
                gm.add_submodule(str(node.target), lin)
                node.args = (node.args[1],)
    gm.recompile()
    probe = torch.zeros((1, *input_shape))
    shapes = _shapes_at_batch1(gm, probe)
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        name = str(node.target)
        mod = gm.get_submodule(name)
        original, op_type = nodes.get(name, (name, type(mod).__name__))
        where = f"{path}: ONNX node {original!r} ({op_type})"
        new, args = _lowered(gm, mod, op_type, list(node.args), shapes, where, fns)
        if new is not None:
            gm.add_submodule(name, new)
            node.args = tuple(args)
            node.kwargs = {}
    gm.graph.eliminate_dead_code()
    _drop_unused_initializers(gm)
    gm.recompile()


def _lowered(gm: fx.GraphModule, mod: nn.Module, op_type: str, args: list[Any],
             shapes: dict[str, tuple[int, ...]], where: str,
             fns: dict[str, Callable[..., torch.Tensor]]
             ) -> tuple[nn.Module | None, list[Any]]:
    """The module that replaces onnx2torch's ``mod``, with the arguments it takes (None:
    ``mod`` stays); an op without a rule raises OnnxError naming the node (``where``)."""
    new: nn.Module | None = None
    if isinstance(mod, OnnxBinaryMathOperation):
        if mod.broadcast == 1 and mod.axis is not None:
            raise OnnxError(f"{where}: legacy broadcast with an axis has no rule")
        new = _Binary(fns[op_type])
    elif isinstance(mod, OnnxMatMul):
        w = _const_of(gm, args[1]) if len(args) > 1 else None
        if w is None or w.dim() != 2 or _const_of(gm, args[0]) is not None:
            raise OnnxError(f"{where}: only x @ W with a constant 2-d W has a rule")
        lin = nn.Linear(w.shape[0], w.shape[1], bias=False)
        with torch.no_grad():
            lin.weight.data = w.detach().t().clone().contiguous()
        new, args = lin, args[:1]
    elif isinstance(mod, OnnxGemm):
        new, args = _gemm_linear(gm, mod, args, where), args[:1]
    elif isinstance(mod, OnnxReshape):
        target = _const_of(gm, args[1]) if len(args) > 1 else None
        if target is None:
            raise OnnxError(f"{where}: the target shape is computed from the input; only "
                            f"constant shapes have a rule")
        new, args = _Reshape(_reshape_target(shapes.get(args[0].name), target, where)), \
            args[:1]
    elif isinstance(mod, OnnxTranspose):
        rank = len(shapes.get(args[0].name, ()))
        perm = list(mod.perm) if mod.perm is not None else list(range(rank))[::-1]
        if not perm or perm[0] != 0:
            raise OnnxError(f"{where}: Transpose with perm {perm} moves the batch axis; "
                            f"only permutations that keep it first have a rule")
        new, args = _Permute(tuple(perm)), args[:1]
    elif isinstance(mod, (OnnxSlice, OnnxSliceV9)):
        new, args = _Index(_slice_items(gm, mod, args, shapes.get(args[0].name), where)), \
            args[:1]
    elif isinstance(mod, OnnxGather):
        new, args = _Index(_gather_items(gm, mod, args, shapes.get(args[0].name), where)), \
            args[:1]
    elif isinstance(mod, (OnnxPadStatic, OnnxPadDynamic)):
        if mod.mode != "constant":
            raise OnnxError(f"{where}: Pad mode {mod.mode!r} has no rule (constant only)")
        widths, value = _pad_widths(gm, mod, args, where)
        rank = len(shapes.get(args[0].name, ()))
        if len(widths) > 2 * max(rank - 2, 0) and any(widths[2 * (rank - 2):]):
            raise OnnxError(f"{where}: Pad of the batch or channel axis has no rule")
        new, args = _Pad(widths, value), args[:1]
    elif isinstance(mod, OnnxConcat):
        new = _Concat(int(mod.axis))
    elif isinstance(mod, (OnnxGlobalAveragePool, OnnxGlobalAveragePoolWithKnownInputShape)):
        in_shape = shapes.get(args[0].name)
        if in_shape is None or len(in_shape) != 4:
            raise OnnxError(f"{where}: global average pooling has a rule for [N, C, H, W] "
                            f"inputs only (got shape {in_shape})")
        new = nn.AdaptiveAvgPool2d(1)
    elif isinstance(mod, OnnxClip):
        lo = None if mod.min_val is None else float(mod.min_val)
        hi = None if mod.max_val is None else float(mod.max_val)
        if lo is not None and hi is not None:
            if lo > hi:
                raise OnnxError(f"{where}: Clip with min {lo} > max {hi}")
            new = nn.Hardtanh(lo, hi)
        else:
            new = _ClampOneSide(lo, hi)
    elif isinstance(mod, OnnxFunction) and mod.function is torch.tanh:
        new = nn.Tanh()
    elif isinstance(mod, nn.Sequential):
        raise OnnxError(f"{where}: asymmetric padding has no rule")
    elif type(mod).__module__.startswith("onnx2torch"):
        raise OnnxError(f"{where}: onnx2torch converts it to {type(mod).__name__}, which "
                        f"has no lowering in absdsl")
    return new, args


def _shapes_at_batch1(gm: fx.GraphModule, probe: torch.Tensor) -> dict[str, tuple[int, ...]]:
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(probe)
    except Exception as err:  # noqa: BLE001 - the converted graph does not run
        raise OnnxError(f"the converted network does not run on an input of shape "
                        f"{tuple(probe.shape)}: {type(err).__name__}: {_first_line(err)}") \
            from None
    out = {}
    for node in gm.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            out[node.name] = tuple(int(s) for s in meta.shape)
    return out


def _reshape_target(in_shape: tuple[int, ...] | None, target: torch.Tensor,
                    where: str) -> tuple[int, ...]:
    """The per-sample shape of an ONNX Reshape evaluated at batch 1; the batch must stay."""
    if in_shape is None:
        raise OnnxError(f"{where}: the input shape is unknown")
    t = [int(v) for v in target.reshape(-1).tolist()]
    t = [in_shape[i] if v == 0 and i < len(in_shape) else v for i, v in enumerate(t)]
    numel = int(np.prod(in_shape))
    if t.count(-1) == 1:
        known = int(np.prod([v for v in t if v != -1]))
        if known <= 0 or numel % known:
            raise OnnxError(f"{where}: cannot reshape {list(in_shape)} to {t}")
        t[t.index(-1)] = numel // known
    if int(np.prod(t)) != numel or any(v <= 0 for v in t):
        raise OnnxError(f"{where}: cannot reshape {list(in_shape)} to {t}")
    if len(t) < 2 or t[0] != 1:
        raise OnnxError(f"{where}: reshaping {list(in_shape)} to {t} at batch 1 moves the "
                        f"batch axis; only reshapes that keep it first have a rule")
    return tuple(t[1:])


def _pad_widths(gm: fx.GraphModule, mod: Any, args: list[Any], where: str
               ) -> tuple[tuple[int, ...], float]:
    """F.pad widths (last axis first) and the value of an ONNX Pad with constant pads."""
    if not hasattr(mod, "pads"):  # pads (and the value) given as constant inputs
        pads = _const_of(gm, args[1]) if len(args) > 1 else None
        value = _const_of(gm, args[2]) if len(args) > 2 else torch.zeros(())
        if pads is None or value is None:
            raise OnnxError(f"{where}: Pad with computed widths has no rule")
        widths = _onnx_padding_to_torch([int(v) for v in pads.reshape(-1).tolist()])
        return tuple(int(w) for w in widths), float(value.reshape(-1)[0]) if value.numel() \
            else 0.0
    return tuple(int(w) for w in mod.pads), float(mod.constant_value)


def _slice_items(gm: fx.GraphModule, mod: Any, args: list[Any],
                 in_shape: tuple[int, ...] | None, where: str) -> tuple[Any, ...]:
    """The index tuple of an ONNX Slice with constant starts, ends, axes, positive steps."""
    if in_shape is None:
        raise OnnxError(f"{where}: the input shape is unknown")
    if len(args) > 1:
        consts = [_const_of(gm, a) for a in args[1:]]
        if any(c is None for c in consts):
            raise OnnxError(f"{where}: Slice with computed starts or ends has no rule")
        values = [[int(v) for v in c.reshape(-1).tolist()] for c in consts if c is not None]
        starts, ends = values[0], values[1]
        axes = values[2] if len(values) > 2 else list(range(len(starts)))
        steps = values[3] if len(values) > 3 else [1] * len(starts)
    else:  # Slice-9 keeps its constants as attributes (no flips for positive steps)
        if mod._flip_dims:  # noqa: SLF001 - the converter's own fields
            raise OnnxError(f"{where}: Slice with a negative step has no rule")
        items = tuple(mod._pos_axes_slices) + tuple(mod._neg_axes_slices)  # noqa: SLF001
        if items and items[0] != slice(None):
            raise OnnxError(f"{where}: Slice of the batch axis has no rule")
        return items
    rank = len(in_shape)
    index: list[Any] = [slice(None)] * rank
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = axis + rank if axis < 0 else axis
        if axis == 0 or step < 1:
            raise OnnxError(f"{where}: Slice of the batch axis or with a step below 1 has no "
                            f"rule")
        size = in_shape[axis]
        lo = max(0, min(size, start + size if start < 0 else start))
        hi = max(0, min(size, end + size if end < 0 else end))
        index[axis] = slice(lo, hi, step)
    return tuple(index)


def _gather_items(gm: fx.GraphModule, mod: Any, args: list[Any],
                  in_shape: tuple[int, ...] | None, where: str) -> tuple[Any, ...]:
    """An ONNX Gather of one constant index on a non-batch axis, as ``x[:, ..., i]``."""
    idx = _const_of(gm, args[1]) if len(args) > 1 else None
    if in_shape is None or idx is None or idx.numel() != 1 or idx.dim() != 0:
        raise OnnxError(f"{where}: only Gather of one constant scalar index has a rule")
    rank = len(in_shape)
    axis = int(mod._axis) + rank if int(mod._axis) < 0 else int(mod._axis)  # noqa: SLF001
    if axis == 0:
        raise OnnxError(f"{where}: Gather along the batch axis has no rule")
    i = int(idx)
    return (*([slice(None)] * axis), i + in_shape[axis] if i < 0 else i)


def _gemm_linear(gm: fx.GraphModule, mod: Any, args: list[Any], where: str) -> nn.Linear:
    b = _const_of(gm, args[1]) if len(args) > 1 else None
    c = _const_of(gm, args[2]) if len(args) > 2 else None
    if mod.trans_a or b is None or b.dim() != 2:
        raise OnnxError(f"{where}: only Gemm(x, W, b) with constant W and b and transA=0 has a "
                        f"rule")
    w = (b if mod.trans_b else b.t()) * float(mod.alpha)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=c is not None or len(args) > 2)
    with torch.no_grad():
        lin.weight.data = w.detach().clone().contiguous()
        if len(args) > 2:
            if c is None:
                raise OnnxError(f"{where}: the Gemm bias is computed from the input; no rule")
            if c.numel() not in (1, w.shape[0]) or (c.dim() == 2 and c.shape[0] != 1):
                raise OnnxError(f"{where}: a Gemm bias of shape {tuple(c.shape)} varies along "
                                f"the batch; no rule")
            lin.bias.data = (c.reshape(-1).expand(w.shape[0]) * float(mod.beta)).clone()
    return lin


def _drop_unused_initializers(gm: fx.GraphModule) -> None:
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    container = getattr(gm, "initializers", None)
    if container is None:
        return
    for name in list(container._buffers):  # noqa: SLF001 - removing dead buffers
        if f"initializers.{name}" not in used:
            del container._buffers[name]  # noqa: SLF001
