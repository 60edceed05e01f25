"""The values of a traced fx graph as the front end sees them, and the fx targets it knows.

A value is input-dependent (:class:`_Bound`, an IR node), a constant tensor (:class:`_Const`,
a prelude value), a number, or a marker (:class:`_Meta`, :class:`_MaxPair`, :class:`_Parts`).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..errors import TraceError
from . import ops
from .ir import Node, Prelude
from .namespace import GLOBALS

_PROBE_BATCH = 2  # a batch size >1 lets us see reshapes that mix samples


@dataclass
class _Bound:
    """An input-dependent value: the IR node that computes it."""

    node: str


@dataclass
class _Const:
    """A constant tensor: the prelude variable holding it and its traced shape."""

    var: str
    shape: tuple[int, ...]


@dataclass
class _Meta:
    """A non-tensor value (a size, a shape tuple): allowed only as reshape arguments."""


@dataclass
class _Varargs:
    """The tuple of ``forward(self, *inputs)``: its first item is the model's input."""

    placeholder: fx.Node
    first: _Bound | None = None  # the input node, once inputs[0] is read


@dataclass
class _MaxPair:
    """``torch.max(x, dim)``: (values, indices); the values are an amax node."""

    values: _Bound


@dataclass
class _Parts:
    """The tuple of ``chunk``/``split``: each part becomes a slice when it is read."""

    source: _Bound
    dim: int  # per-sample dimension
    sizes: list[int]


def _supported_modules() -> str:
    names = ["Linear", "Conv1d/2d", "ConvTranspose2d", "BatchNorm1d/2d", "AvgPool2d",
             "AdaptiveAvgPool2d", "Flatten", "Unflatten", "ZeroPad2d", "Upsample", "Identity",
             "Dropout"]
    names += [t.__name__ for t in ops.BY_MODULE]
    return ", ".join(names)


_ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
_SUB = {operator.sub, operator.isub, torch.sub, torch.subtract, "sub", "sub_"}
_MUL = {operator.mul, operator.imul, torch.mul, torch.multiply, "mul", "mul_"}
_DIV = {operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_",
        "true_divide"}
_NEG = {operator.neg, torch.neg, "neg"}
_POW = {operator.pow, torch.pow, "pow"}
# elementwise max / min of two input-dependent tensors (True: max)
_MAX_MIN = {torch.maximum: True, "maximum": True, torch.minimum: False, "minimum": False,
            torch.max: True, "max": True, torch.min: False, "min": False}
_RESHAPE = {torch.flatten, torch.reshape, "view", "reshape", "flatten", "squeeze", "unsqueeze",
            torch.squeeze, torch.unsqueeze, "unflatten", torch.unflatten}
_ALIAS = {F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout, "contiguous", "clone",
          torch.clone, "detach"}
# shape ops: linear maps given by torch code (see linear_maps.Traced)
_PERMUTE = {torch.permute, "permute"}
_TRANSPOSE = {torch.transpose, "transpose", torch.swapaxes, "swapaxes", torch.swapdims,
              "swapdims"}
_EXPAND = {"expand", "expand_as", torch.broadcast_to, "broadcast_to"}
_MEAN_SUM = {torch.mean: "mean", "mean": "mean", torch.sum: "sum", "sum": "sum"}
_SPLIT = {torch.chunk: "chunk", "chunk": "chunk", torch.split: "split", "split": "split"}
_STACK = {torch.stack}
_MATMUL = {operator.matmul, torch.matmul, "matmul", torch.bmm, "bmm"}
_SOFTMAX = {F.softmax: False, torch.softmax: False, "softmax": False,
            F.log_softmax: True, torch.log_softmax: True, "log_softmax": True}
_FIXED = {F.relu6: ("hardtanh", {"min_val": 0.0, "max_val": 6.0}),
          torch.square: ("pow", {"exponent": 2.0}), "square": ("pow", {"exponent": 2.0})}
_CAT = {torch.cat, torch.concat, torch.concatenate}
_META_FUNCS = {getattr, operator.getitem, "size", "dim"}


def _fn_name(target: Any) -> str:
    if isinstance(target, str):
        return f"Tensor.{target}"
    mod = (getattr(target, "__module__", "") or "").lstrip("_")
    return f"{mod}.{getattr(target, '__name__', repr(target))}".lstrip(".")


def _user_line(node: fx.Node) -> str:
    """The last frame of the user's code in the node's stack trace, as 'file:line'."""
    trace = node.stack_trace or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    for path, line in reversed(frames):
        if "/torch/" not in path:
            return f"{path}:{line}"
    return ""


def _module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1]
        return str(path[0] if isinstance(path, tuple) else path)
    return ""


def _origin(node: fx.Node, model: nn.Module) -> str:
    parts = []
    path = _module_path(node)
    if node.op == "call_module":
        mod = model.get_submodule(str(node.target))
        parts.append(f"module '{path}' ({type(mod).__name__})")
    else:
        parts.append(f"{_fn_name(node.target)}" + (f" in module '{path}'" if path else ""))
    line = _user_line(node)
    if line:
        parts.append(f"at {line}")
    return " ".join(parts)


def _pair(value: Any, dims: int) -> tuple[int, ...]:
    """An int or a sequence of ints (whole numbers traced as floats included) as a tuple."""
    def whole(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer():
            raise ValueError(f"expected a whole number, got {v!r}")
        return int(v)

    if isinstance(value, (int, float)):
        return (whole(value),) * dims
    if isinstance(value, (list, tuple)) and len(value) == dims:
        return tuple(whole(v) for v in value)
    raise ValueError(f"expected a whole number or {dims} of them, got {value!r}")


class _LoweringBase:
    """The state of one lowering (IR nodes, prelude values, fx values) and what every
    lowering step uses to add to it."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule) -> None:
        self.model = model
        self.gm = gm
        self.nodes: list[Node] = []
        self.prelude: list[Prelude] = []
        self.param_names: list[str] = []
        self.constants: dict[str, torch.Tensor] = {}
        self.values: dict[str, Any] = {}
        self._named = dict(model.named_parameters()) | dict(model.named_buffers())
        self._taken: set[str] = set(GLOBALS)  # names generated code reads

    def fresh(self, stem: str) -> str:
        """A readable, unique identifier: the stem itself, or stem_2, stem_3, ..."""
        base = re.sub(r"[^0-9A-Za-z_]", "_", stem).strip("_") or "v"
        if base[0].isdigit():
            base = "n" + base
        name, i = base, 1
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        return name

    def define(self, stem: str, code: str, reads: tuple[str, ...] = ()) -> str:
        name = self.fresh(stem)
        self.prelude.append(Prelude(name, code, reads))
        return name

    def param(self, qualified: str) -> str:
        """A prelude variable for parameter/buffer/tensor attribute ``qualified``."""
        for p in self.prelude:
            if p.code == f"p[{qualified!r}]":
                return p.name
        if qualified not in self._named:
            value = self.gm.get_parameter(qualified) if False else _get_attr(self.model, qualified)
            if not isinstance(value, torch.Tensor):
                raise TraceError(f"attribute '{qualified}' used as a tensor is a "
                                 f"{type(value).__name__}")
            self.constants[qualified] = value.detach()
        self.param_names.append(qualified)
        return self.define(qualified, f"p[{qualified!r}]", (qualified,))

    def add_node(self, fx_node: fx.Node, op: str, inputs: list[str], attrs: dict[str, Any],
                 shape: tuple[int, ...] | None = None) -> _Bound:
        name = self.fresh(fx_node.name)
        if shape is None:
            shape = self.shape_of(fx_node)
        origin = "the model's input" if op == "input" else _origin(fx_node, self.model)
        self.nodes.append(Node(name, op, inputs, shape, attrs, origin))
        return _Bound(name)

    def shape_of(self, fx_node: fx.Node) -> tuple[int, ...]:
        meta = fx_node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise self.error(fx_node, "produces a value that is not a single tensor")
        shape = tuple(int(s) for s in meta.shape)
        if not shape or shape[0] != _PROBE_BATCH:
            raise self.error(fx_node, f"changes the batch dimension (shape {shape} for a "
                                      f"batch of {_PROBE_BATCH})")
        return shape[1:]

    def error(self, fx_node: fx.Node, message: str) -> TraceError:
        return TraceError(f"{_origin(fx_node, self.model)}: {message}")

    def value(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.values[arg.name]
        if isinstance(arg, (int, float)) and not isinstance(arg, bool):
            return float(arg)
        return arg

    def number_arg(self, fx_node: fx.Node, args: list[Any], name: str, index: int,
                   default: float) -> float:
        """An op's number argument, by keyword or position: a computed one has no rule and is
        reported as such rather than failing inside ``float()``."""
        raw = fx_node.kwargs[name] if name in fx_node.kwargs else (
            args[index] if len(args) > index else default)
        value = self.value(raw)
        if not isinstance(value, float):
            raise self.error(fx_node, f"argument {name!r} must be a number, not a computed "
                                      f"value ({type(value).__name__}); no rule")
        return value

    def per_sample_const(self, fx_node: fx.Node, c: _Const, out_shape: tuple[int, ...]) -> str:
        """A constant operand as a tensor that broadcasts against per-sample shape."""
        if len(c.shape) > len(out_shape):
            lead = c.shape[: len(c.shape) - len(out_shape)]
            if any(s != 1 for s in lead):
                raise self.error(fx_node, f"a constant of shape {c.shape} varies along the "
                                          f"batch dimension")
            return self.define(c.var + "_s", f"{c.var}.reshape({tuple(c.shape[len(lead):])})")
        return c.var

    def bias(self, path: str, bias: Any, trailing: int, fx_node: fx.Node) -> str | None:
        if bias is None:
            return None
        b = self.param(f"{path}.bias")
        if trailing <= 1:
            return b
        view = (-1,) + (1,) * (trailing - 1)
        return self.define(b + "_v", f"{b}.reshape{view}")

    def affine(self, fx_node: fx.Node, x: _Bound, linear: Any, **attrs: Any) -> _Bound:
        return self.add_node(fx_node, "affine", [x.node], {"map": linear, **attrs})

    def _node_shape(self, x: _Bound) -> tuple[int, ...]:
        return next(n.shape for n in self.nodes if n.name == x.node)


def _get_attr(model: nn.Module, qualified: str) -> Any:
    obj: Any = model
    for part in qualified.split("."):
        obj = getattr(obj, part)
    return obj
