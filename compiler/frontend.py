"""torch.fx front end: trace an ``nn.Module`` and lower it to the IR of :mod:`compiler.ir`.

Tracing uses only torch.fx's public API (``Tracer``, ``ShapeProp``). Every value in the traced
graph is classified as input-dependent (an IR node), a constant tensor (parameters, buffers,
plain tensor attributes and what is computed from them) or a Python number.
"""

from __future__ import annotations

import copy
import inspect
import operator
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from absdsl.compiler import linear_maps as lm
from absdsl.compiler import ops
from absdsl.compiler.ir import Graph, Node, Prelude
from absdsl.errors import TraceError

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

    def all(self, lowering: _Lowering, fx_node: fx.Node) -> list[_Bound]:
        """Every part (the tuple passed whole to cat or stack)."""
        return [self.part(lowering, fx_node, i) for i in range(len(self.sizes))]

    def part(self, lowering: _Lowering, fx_node: fx.Node, i: int) -> _Bound:
        i = i + len(self.sizes) if i < 0 else i
        start = sum(self.sizes[:i])
        shape = list(lowering._node_shape(self.source))
        shape[self.dim] = self.sizes[i]
        return lowering.traced(fx_node, self.source,
                               f"{{x}}.narrow({self.dim + 1}, {start}, {self.sizes[i]})",
                               f"narrow({self.dim + 1}, {start}, {self.sizes[i]})",
                               shape=tuple(shape))


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


class _Lowering:
    """One pass over the fx graph, building IR nodes and prelude values."""

    def __init__(self, model: nn.Module, gm: fx.GraphModule) -> None:
        self.model = model
        self.gm = gm
        self.nodes: list[Node] = []
        self.prelude: list[Prelude] = []
        self.param_names: list[str] = []
        self.constants: dict[str, torch.Tensor] = {}
        self.values: dict[str, Any] = {}
        self._named = dict(model.named_parameters()) | dict(model.named_buffers())
        self._taken: set[str] = {"p", "lo", "hi", "spec", "rt", "torch", "F"}

    # ---- helpers -------------------------------------------------------------------------
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

    # ---- the walk ------------------------------------------------------------------------
    def run(self) -> Graph:
        output: str | None = None
        for fx_node in self.gm.graph.nodes:
            if fx_node.op == "placeholder":
                if self.values and fx_node.args:  # an argument traced as a constant
                    self.values[fx_node.name] = _Meta()
                    continue
                if str(fx_node.target).startswith("*"):  # forward(self, *inputs)
                    self.values[fx_node.name] = _Varargs(fx_node)
                    continue
                if any(isinstance(v, (_Bound, _Varargs)) for v in self.values.values()):
                    raise self.error(fx_node, "models with more than one input are not "
                                              "supported (a non-tensor argument is traced as "
                                              "a constant when it has a default, or with "
                                              "absdsl.compile(..., example_kwargs={name: "
                                              "value}))")
                self.values[fx_node.name] = self.add_node(fx_node, "input", [], {})
            elif fx_node.op == "get_attr":
                value = _get_attr(self.model, str(fx_node.target))
                if not isinstance(value, torch.Tensor):
                    self.values[fx_node.name] = _Meta()
                    continue
                self.values[fx_node.name] = _Const(self.param(str(fx_node.target)),
                                                   tuple(value.shape))
            elif fx_node.op == "call_module":
                self.values[fx_node.name] = self.lower_module(fx_node)
            elif fx_node.op in ("call_function", "call_method"):
                self.values[fx_node.name] = self.lower_function(fx_node)
            elif fx_node.op == "output":
                result = fx_node.args[0]
                val = self.value(result) if isinstance(result, fx.Node) else None
                if not isinstance(val, _Bound):
                    raise TraceError("the model's output must be one tensor that depends on "
                                     "its input (tuples, dicts and constants are not supported)")
                output = val.node
        assert output is not None
        graph = Graph(self.nodes, output, self.prelude, sorted(set(self.param_names)))
        return graph

    # ---- modules -------------------------------------------------------------------------
    def lower_module(self, fx_node: fx.Node) -> Any:
        path = str(fx_node.target)
        mod = self.model.get_submodule(path)
        (arg,) = fx_node.args[:1] or (None,)
        x = self.value(arg)
        if not isinstance(x, _Bound):
            raise self.error(fx_node, "is applied to a value that does not depend on the input")
        if isinstance(mod, (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)):
            return x
        if isinstance(mod, nn.Linear):
            w = self.param(f"{path}.weight")
            return self.affine(fx_node, x, lm.Dense(w, self.define(w + "_abs", f"{w}.abs()"),
                                                    self.bias(path, mod.bias, 1, fx_node)))
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            return self.conv(fx_node, x, mod, path)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return self.batch_norm(fx_node, x, mod, path)
        if isinstance(mod, nn.AvgPool2d):
            return self.avg_pool(fx_node, x, mod.kernel_size, mod.stride, mod.padding,
                                 mod.ceil_mode, mod.count_include_pad, mod.divisor_override)
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return self.adaptive_avg_pool(fx_node, x)
        if isinstance(mod, (nn.Flatten, nn.Unflatten)):
            return self.reshape(fx_node, x)
        if isinstance(mod, (nn.ZeroPad1d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d)):
            return self.pad(fx_node, x, tuple(mod.padding), "constant", float(mod.value))
        if isinstance(mod, nn.ConvTranspose2d):
            return self.conv_transpose(fx_node, x, mod, path)
        if isinstance(mod, nn.Upsample):
            return self.interpolate(fx_node, x, mod.mode, mod.align_corners,
                                    mod.scale_factor, mod.recompute_scale_factor)
        if isinstance(mod, nn.LayerNorm):
            return self.layer_norm(fx_node, x, tuple(mod.normalized_shape), float(mod.eps),
                                   self._affine_params(path, mod.elementwise_affine,
                                                       mod.bias is not None))
        if isinstance(mod, nn.GroupNorm):
            return self.group_norm(fx_node, x, int(mod.num_groups), float(mod.eps),
                                   self._affine_params(path, mod.affine, mod.affine))
        if isinstance(mod, (nn.Softmax, nn.LogSoftmax)):
            return self.softmax(fx_node, x, mod.dim, isinstance(mod, nn.LogSoftmax))
        if type(mod).__name__ == "StochasticDepth":  # torchvision: the identity in eval mode
            if mod.training:
                raise self.error(fx_node, "is in training mode (random); call model.eval()")
            return x
        op = next((o for t, o in ops.BY_MODULE.items() if isinstance(mod, t)), None)
        if op is not None:
            read = next(f for t, f in op.modules.items() if isinstance(mod, t))
            return self.elementwise(fx_node, x, op, read(mod))
        raise self.error(fx_node, f"has no rule: {type(mod).__name__} is not supported "
                                  f"(supported modules: {_supported_modules()})")

    def elementwise(self, fx_node: fx.Node, x: _Bound, op: ops.Op, params: dict) -> _Bound:
        """An activation (or max pooling) node, once its parameters have a rule."""
        if op.kind == "pool":
            return self.max_pool(fx_node, x, params)
        full = {p.name: p.default for p in op.params} | params
        reason = op.check(full)
        if reason is not None:
            raise self.error(fx_node, f"{reason}; no rule")
        return self.add_node(fx_node, op.name, [x.node], {"params": full} if full else {})

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

    def conv(self, fx_node: fx.Node, x: _Bound, mod: nn.Conv1d | nn.Conv2d, path: str) -> _Bound:
        dims = 1 if isinstance(mod, nn.Conv1d) else 2
        if mod.padding_mode != "zeros":
            raise self.error(fx_node, f"padding_mode={mod.padding_mode!r} has no rule; only "
                                      f"'zeros'")
        kernel = _pair(mod.kernel_size, dims)
        stride = _pair(mod.stride, dims)
        dilation = _pair(mod.dilation, dims)
        if isinstance(mod.padding, str):
            if mod.padding == "valid":
                padding = (0,) * dims
            else:  # 'same' (stride 1): symmetric only
                total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
                if any(t % 2 for t in total):
                    raise self.error(fx_node, "padding='same' with an even kernel pads "
                                              "asymmetrically; no rule")
                padding = tuple(t // 2 for t in total)
        else:
            padding = _pair(mod.padding, dims)
        w = self.param(f"{path}.weight")
        return self.conv_node(fx_node, x, dims, w, self.define(w + "_abs", f"{w}.abs()"),
                              self.bias(path, mod.bias, dims + 1, fx_node),
                              kernel, stride, padding, dilation, mod.groups)

    def conv_node(self, fx_node: fx.Node, x: _Bound, dims: int, w: str, w_abs: str,
                  b: str | None, kernel: tuple[int, ...], stride: tuple[int, ...],
                  padding: tuple[int, ...], dilation: tuple[int, ...], groups: int,
                  **attrs: Any) -> _Bound:
        in_shape = self._node_shape(x)
        out_shape = self.shape_of(fx_node)
        output_padding = tuple(
            in_shape[1 + i] - ((out_shape[1 + i] - 1) * stride[i] - 2 * padding[i]
                               + dilation[i] * (kernel[i] - 1) + 1)
            for i in range(dims))
        conv = lm.Conv(dims, w, w_abs, b, stride, padding, dilation, groups, output_padding,
                       tuple(in_shape), tuple(kernel))
        return self.affine(fx_node, x, conv, **attrs)

    def _node_shape(self, x: _Bound) -> tuple[int, ...]:
        return next(n.shape for n in self.nodes if n.name == x.node)

    def batch_norm(self, fx_node: fx.Node, x: _Bound, mod: nn.BatchNorm1d | nn.BatchNorm2d,
                   path: str) -> _Bound:
        if mod.training:
            raise self.error(fx_node, "is in training mode; bounds use running statistics, "
                                      "call model.eval() first")
        if not mod.track_running_stats or mod.running_var is None:
            raise self.error(fx_node, "has no running statistics (track_running_stats=False); "
                                      "no rule")
        trailing = len(self.shape_of(fx_node)) - 1
        view = (-1,) + (1,) * trailing
        var = self.param(f"{path}.running_var")
        mean = self.param(f"{path}.running_mean")
        gamma = self.param(f"{path}.weight") if mod.affine else "None"
        beta = self.param(f"{path}.bias") if mod.affine else "None"
        scale = self.define(f"bn_scale_{path}",
                            f"rt.bn_scale({gamma}, {var}, {float(mod.eps)!r}).reshape{view}")
        shift = self.define(f"bn_shift_{path}",
                            f"rt.bn_shift({beta}, {mean}, {scale}.reshape(-1)).reshape{view}")
        scale_abs = self.define(scale + "_abs", f"{scale}.abs()")
        return self.affine(fx_node, x, lm.Elementwise(scale, scale_abs, shift), batch_norm=True)

    def avg_pool(self, fx_node: fx.Node, x: _Bound, kernel: Any, stride: Any, padding: Any,
                 ceil_mode: bool, count_include_pad: bool, divisor_override: Any) -> _Bound:
        try:
            kernel = _pair(kernel, 2)
            stride = _pair(stride if stride else kernel, 2)
            padding = _pair(padding, 2)
        except ValueError as err:
            raise self.error(fx_node, f"avg pooling: kernel size, stride or padding: {err}"
                             ) from None
        if ceil_mode or divisor_override is not None or (any(padding) and not count_include_pad):
            raise self.error(fx_node, "avg pooling with ceil_mode, divisor_override or "
                                      "count_include_pad=False has no rule")
        channels = self._node_shape(x)[0]
        w = self.define("pool_w", f"rt.avgpool_weight({channels}, {kernel}, lo)")
        return self.conv_node(fx_node, x, 2, w, w, None, kernel, stride, padding, (1, 1),
                              channels)

    def adaptive_avg_pool(self, fx_node: fx.Node, x: _Bound) -> _Bound:
        in_shape = self._node_shape(x)
        out_shape = self.shape_of(fx_node)
        if in_shape[1] % out_shape[1] or in_shape[2] % out_shape[2]:
            # windows of different sizes: still a linear map with weights >= 0
            size = tuple(out_shape[1:])
            return self.traced(fx_node, x, f"F.adaptive_avg_pool2d({{x}}, {size})",
                               f"adaptive_avg_pool2d to {size}")
        kernel = (in_shape[1] // out_shape[1], in_shape[2] // out_shape[2])
        return self.avg_pool(fx_node, x, kernel, kernel, 0, False, True, None)

    def reshape(self, fx_node: fx.Node, x: _Bound) -> _Bound:
        shape = self.shape_of(fx_node)
        if shape == self._node_shape(x):
            return x
        return self.add_node(fx_node, "reshape", [x.node], {"shape": shape})

    # ---- functions and methods -----------------------------------------------------------
    def lower_function(self, fx_node: fx.Node) -> Any:
        target = fx_node.target
        args = [self.value(a) for a in fx_node.args]
        bound_args = [a for a in args if isinstance(a, _Bound)]
        if target is operator.getitem and args and isinstance(args[0], _Varargs):
            if args[1] not in (0, 0.0):
                raise self.error(fx_node, "models with more than one input are not supported "
                                          "(forward(*inputs) reads inputs[0] only)")
            if args[0].first is None:
                args[0].first = self.add_node(fx_node, "input", [], {})
            return args[0].first
        if target in (getattr, operator.getitem) and args and isinstance(args[0], _Const):
            return self.constant_op(fx_node)
        if target is operator.getitem and args and isinstance(args[0], _Parts):
            if not isinstance(args[1], (int, float)):
                raise self.error(fx_node, "slicing the tuple of chunk/split has no rule; take "
                                          "its parts one by one (parts[0], parts[1], ...)")
            return args[0].part(self, fx_node, int(args[1]))
        if target in _CAT | _STACK and args and isinstance(args[0], _Parts):
            args = [args[0].all(self, fx_node)] + args[1:]
        if target is getattr and args and isinstance(args[0], _Bound) and args[1] in ("mT", "T"):
            ndim = len(self._node_shape(args[0]))
            if args[1] == "T" or ndim < 2:
                raise self.error(fx_node, "Tensor.T reverses the batch dimension too; use "
                                          ".mT or transpose(-2, -1)")
            return self.traced(fx_node, args[0], "{x}.transpose(-2, -1)", "mT")
        if target in (operator.getitem, getattr) and args and isinstance(args[0], _MaxPair):
            if args[1] in (0, 0.0, "values"):
                return args[0].values
            raise self.error(fx_node, "the indices of a max have no rule (only its values)")
        if target in _MAX_MIN and len(args) >= 2 and isinstance(args[0], _Bound) \
                and isinstance(args[1], _Bound):
            return self.maximum(fx_node, args[0], args[1], _MAX_MIN[target])
        if target in (torch.max, "max") and args and isinstance(args[0], _Bound):
            if len(args) < 2 and "dim" not in fx_node.kwargs:
                raise self.error(fx_node, "max over every dim mixes the samples of a batch; "
                                          "give dim")
            return _MaxPair(self.amax(fx_node, args[0], args))
        if target is operator.getitem and args and isinstance(args[0], _Bound):
            return self.index(fx_node, args[0], fx_node.args[1])
        if target in _META_FUNCS:
            return _Meta()
        cat_parts = args[0] if target in _CAT | _STACK and args and \
            isinstance(args[0], (list, tuple)) else []
        if not bound_args and not any(isinstance(self.value(v), _Bound) for v in cat_parts):
            return self.constant_op(fx_node)
        x: Any = bound_args[0] if bound_args else None
        if target in _ALIAS:
            return x
        if _fn_name(target).endswith("stochastic_depth"):  # torchvision, fx-wrapped
            training = fx_node.kwargs.get("training", args[3] if len(args) > 3 else True)
            if training:
                raise self.error(fx_node, "stochastic depth in training mode is random; call "
                                          "model.eval()")
            return x
        if target in _RESHAPE:
            return self.reshape(fx_node, x)
        if target in _FIXED:
            name, params = _FIXED[target]
            return self.elementwise(fx_node, x, ops.get(name), params)
        if target in (torch.rsqrt, "rsqrt"):
            return self.power(fx_node, x, -0.5)
        if target in _POW and isinstance(args[0], _Bound):
            return self.power(fx_node, x, self.number_arg(fx_node, args, "exponent", 1, 2.0))
        if target in ops.BY_FUNCTION:
            op = ops.BY_FUNCTION[target]
            if op.name == "amax":
                return self.amax(fx_node, x, args)
            if op.kind == "pool":
                return self.max_pool(fx_node, x, self.pool_kwargs(fx_node, args))
            params = {}
            for p in op.params:
                if p.position >= 0 or p.fx_name in fx_node.kwargs:
                    params[p.name] = self.number_arg(fx_node, args, p.fx_name, p.position,
                                                     p.default)
            if op.name == "gelu":
                params["tanh_approximation"] = float(bool(
                    fx_node.kwargs.get("approximate", "none") == "tanh"))
            return self.elementwise(fx_node, x, op, params)
        if target is F.avg_pool2d:
            kw = dict(zip(["kernel_size", "stride", "padding", "ceil_mode",
                           "count_include_pad", "divisor_override"], args[1:], strict=False))
            kw.update(fx_node.kwargs)
            return self.avg_pool(fx_node, x, kw["kernel_size"], kw.get("stride"),
                                 kw.get("padding", 0), kw.get("ceil_mode", False),
                                 kw.get("count_include_pad", True), kw.get("divisor_override"))
        if target is F.adaptive_avg_pool2d:
            return self.adaptive_avg_pool(fx_node, x)
        if target in _CAT:
            return self.cat(fx_node, args)
        if target in _STACK:
            return self.stack(fx_node, args)
        if target in _NEG:
            return self.affine(fx_node, x, lm.Elementwise(-1.0, 1.0, None))
        if target in _ADD | _SUB | _MUL | _DIV:
            return self.binary(fx_node, target, args)
        if target in _SOFTMAX:
            dim = fx_node.kwargs.get("dim", args[1] if len(args) > 1 else None)
            return self.softmax(fx_node, x, dim, _SOFTMAX[target])
        if target is F.normalize:
            kw = dict(zip(["p", "dim", "eps"], args[1:], strict=False)) | dict(fx_node.kwargs)
            return self.l2_normalize(fx_node, x, kw.get("p", 2.0), kw.get("dim", 1),
                                     float(kw.get("eps", 1e-12)))
        if target is F.layer_norm:
            kw = dict(zip(["normalized_shape", "weight", "bias", "eps"], args[1:],
                          strict=False)) | dict(fx_node.kwargs)
            return self.layer_norm(fx_node, x, tuple(kw["normalized_shape"]),
                                   float(kw.get("eps", 1e-5)),
                                   (kw.get("weight"), kw.get("bias")))
        if target in _MATMUL and all(isinstance(v, _Bound) for v in args[:2]):
            return self.matmul(fx_node, args[0], args[1])
        if target in _MATMUL or target is F.linear:
            return self.const_matmul(fx_node, target, args)
        if target in _PERMUTE | _TRANSPOSE | _EXPAND or target in _MEAN_SUM:
            return self.shape_op(fx_node, target, x, args)
        if target in _SPLIT:
            return self.split(fx_node, target, x, args)
        if target is F.pad:
            kw = dict(zip(["pad", "mode", "value"], args[1:], strict=False)) | fx_node.kwargs
            return self.pad(fx_node, x, tuple(kw["pad"]), kw.get("mode", "constant"),
                            kw.get("value"))
        if target is F.interpolate:
            kw = dict(zip(["size", "scale_factor", "mode", "align_corners"], args[1:],
                          strict=False)) | fx_node.kwargs
            return self.interpolate(fx_node, x, kw.get("mode", "nearest"),
                                    kw.get("align_corners"), kw.get("scale_factor"),
                                    kw.get("recompute_scale_factor"))
        raise self.error(fx_node, "has no rule (the op is not supported by absdsl's front end)")

    # ---- linear shape ops (linear_maps.Traced: torch code, transposed by autodiff) ---------
    def traced(self, fx_node: fx.Node, x: _Bound, code: str, label: str,
               abs_code: str | None = None, bias: str | None = None,
               shape: tuple[int, ...] | None = None) -> _Bound:
        """An affine node whose map is ``code`` (over ``{x}``, batched); |W| x is the same
        code unless ``abs_code`` is given (every coefficient of these maps is 0 or positive).
        ``shape``: its output's, when it is not the fx node's (an inner step of a lowering)."""
        out = self.shape_of(fx_node) if shape is None else tuple(shape)
        m = lm.Traced(code, abs_code or code, bias, tuple(self._node_shape(x)), out, label)
        return self.add_node(fx_node, "affine", [x.node], {"map": m}, out)

    def _dim(self, fx_node: fx.Node, dim: Any, ndim: int) -> int:
        """A per-sample dimension (0-based, batch excluded) from a traced one."""
        if not isinstance(dim, (int, float)) or not float(dim).is_integer():
            raise self.error(fx_node, f"dimension {dim!r} is not a whole number; no rule")
        d = int(dim)
        d = d + ndim + 1 if d < 0 else d
        if d == 0:
            raise self.error(fx_node, "an op along the batch dimension has no rule")
        if not 0 < d <= ndim:
            raise self.error(fx_node, f"dimension {dim} out of range")
        return d - 1

    def shape_op(self, fx_node: fx.Node, target: Any, x: _Bound, args: list[Any]) -> _Bound:
        ndim = len(self._node_shape(x))
        rest = [self.value(a) for a in fx_node.args[1:]]
        if target in _PERMUTE:
            dims: Any = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) \
                else rest
            dims = fx_node.kwargs.get("dims", dims)
            if len(dims) != ndim + 1 or int(dims[0]) % (ndim + 1) != 0:
                raise self.error(fx_node, f"permute {tuple(dims)} moves the batch dimension; "
                                          f"no rule")
            order = [self._dim(fx_node, d, ndim) + 1 for d in dims[1:]]
            return self.traced(fx_node, x, f"{{x}}.permute(0, {', '.join(map(str, order))})",
                               f"permute{tuple(order)}")
        if target in _TRANSPOSE:
            d0 = self._dim(fx_node, fx_node.kwargs.get("dim0", rest[0] if rest else None), ndim)
            d1 = self._dim(fx_node, fx_node.kwargs.get("dim1", rest[1] if len(rest) > 1
                                                        else None), ndim)
            return self.traced(fx_node, x, f"{{x}}.transpose({d0 + 1}, {d1 + 1})",
                               f"transpose({d0 + 1}, {d1 + 1})")
        if target in _EXPAND:
            out = self.shape_of(fx_node)
            return self.traced(fx_node, x, f"{{x}}.expand(-1, *{tuple(out)})", f"expand{out}")
        reduce = _MEAN_SUM[target]
        dims = fx_node.kwargs.get("dim", rest[0] if rest else None)  # type: ignore[assignment]
        if dims is None:
            raise self.error(fx_node, f"{reduce} over every dimension mixes the samples of a "
                                      f"batch; give dim")
        dims = dims if isinstance(dims, (list, tuple)) else [dims]
        keep = bool(fx_node.kwargs.get("keepdim", rest[1] if len(rest) > 1 else False))
        per = tuple(self._dim(fx_node, d, ndim) + 1 for d in dims)
        return self.traced(fx_node, x, f"{{x}}.{reduce}(dim={per}, keepdim={keep})",
                           f"{reduce}{per}")

    # ---- non-linear ops lowered to the table's ops ------------------------------------------
    def _affine_params(self, path: str, weight: bool, bias: bool) -> tuple[Any, Any]:
        return (_Const(self.param(f"{path}.weight"), ()) if weight else None,
                _Const(self.param(f"{path}.bias"), ()) if bias else None)

    def normalize(self, fx_node: fx.Node, x: _Bound, dims: tuple[int, ...], eps: float
                  ) -> _Bound:
        """(x - mean) / sqrt(var + eps) over per-sample ``dims`` (1-based, the batch is 0):
        the centring (linear), its square, the mean, ``rsqrt_eps`` and a product. rsqrt_eps
        is 1 / sqrt(max(v, 0) + eps), exact for a variance and defined on the whole line, so
        no domain's bounds of the variance (a zonotope's may dip below 0) leave its range."""
        shape = self._node_shape(x)
        n = 1
        for d in dims:
            n *= shape[d - 1]
        mean = f"{{x}}.mean(dim={dims}, keepdim=True)"
        centred = self.traced(fx_node, x, f"({{x}} - {mean})", f"centre over {dims}",
                              abs_code=f"({{x}} * {1.0 - 2.0 / n!r} + {mean})"
                              if n >= 2 else "({x} * 0.0)", shape=shape)
        square = self.add_node(fx_node, "pow", [centred.node], {"params": {"exponent": 2.0}},
                               shape)
        reduced = tuple(1 if i + 1 in dims else s for i, s in enumerate(shape))
        var = self.traced(fx_node, square, mean, f"mean over {dims}", shape=reduced)
        inv = self.add_node(fx_node, "rsqrt_eps", [var.node], {"params": {"eps": eps}},
                            reduced)
        inv = self.broadcast(fx_node, inv, shape)
        return self.add_node(fx_node, "mul", [centred.node, inv.node], {}, shape)

    def _scale_shift(self, fx_node: fx.Node, x: _Bound, weight: Any, bias: Any,
                     view: tuple[int, ...] | None = None) -> _Bound:
        """``x * weight + bias`` with constant (parameter) weight and bias, if any."""
        def per_sample(c: Any) -> str | None:
            if c is None:
                return None
            if not isinstance(c, _Const):
                raise self.error(fx_node, "a normalisation's weight or bias that depends on "
                                          "the input has no rule")
            return c.var if view is None else self.define(c.var + "_v",
                                                          f"{c.var}.reshape{view}")
        w, b = per_sample(weight), per_sample(bias)
        if w is None and b is None:
            return x
        w_abs = self.define(w + "_abs", f"{w}.abs()") if w is not None else None
        return self.add_node(fx_node, "affine", [x.node],
                             {"map": lm.Elementwise(w, w_abs, b)}, self.shape_of(fx_node))

    def layer_norm(self, fx_node: fx.Node, x: _Bound, normalized: tuple[int, ...],
                   eps: float, affine: tuple[Any, Any]) -> _Bound:
        shape = self._node_shape(x)
        if tuple(shape[len(shape) - len(normalized):]) != tuple(normalized):
            raise self.error(fx_node, f"layer norm over {normalized} of a {shape} tensor")
        dims = tuple(range(len(shape) - len(normalized) + 1, len(shape) + 1))
        out = self.normalize(fx_node, x, dims, eps)
        return self._scale_shift(fx_node, out, *affine)

    def group_norm(self, fx_node: fx.Node, x: _Bound, groups: int, eps: float,
                   affine: tuple[Any, Any]) -> _Bound:
        shape = self._node_shape(x)
        grouped = (groups, shape[0] // groups) + tuple(shape[1:])
        g = self.add_node(fx_node, "reshape", [x.node], {"shape": grouped}, grouped)
        out = self.normalize(fx_node, g, tuple(range(2, len(grouped) + 1)), eps)
        out = self.add_node(fx_node, "reshape", [out.node], {"shape": shape}, shape)
        view = (-1,) + (1,) * (len(shape) - 1)
        return self._scale_shift(fx_node, out, *affine, view=view)

    def l2_normalize(self, fx_node: fx.Node, x: _Bound, p: Any, dim: Any, eps: float
                     ) -> _Bound:
        """``F.normalize``: x / max(||x||_2, eps) along ``dim``, as x * inv_norm(sum x^2)."""
        if float(p) != 2.0:
            raise self.error(fx_node, f"normalize with p={p} has no rule (p=2 only)")
        shape = self._node_shape(x)
        d = self._dim(fx_node, dim, len(shape)) + 1
        reduced = tuple(1 if i + 1 == d else s for i, s in enumerate(shape))
        square = self.add_node(fx_node, "pow", [x.node], {"params": {"exponent": 2.0}}, shape)
        total = self.traced(fx_node, square, f"{{x}}.sum(dim={d}, keepdim=True)",
                            f"sum over {d}", shape=reduced)
        inv = self.add_node(fx_node, "inv_norm", [total.node], {"params": {"eps": eps}},
                            reduced)
        inv = self.broadcast(fx_node, inv, shape)
        return self.add_node(fx_node, "mul", [x.node, inv.node], {}, shape)

    def softmax(self, fx_node: fx.Node, x: _Bound, dim: Any, log: bool) -> _Bound:
        """softmax_i = 1 / (1 + s_i) with s_i = sum_{k=1}^{n-1} exp(x_{i+k} - x_i) (indices
        mod n), log_softmax_i = -log1p(s_i) (``neg_log1p``). Each difference is one linear
        map (a roll minus the identity) of moderate size; the n - 1 exponentials are summed
        by add nodes, and nothing linear follows them: an affine map after exp would take
        centre and radius of intervals up to 1e43 wide, whose rounding loses the lower end.
        s_i >= 0 keeps 1 / (1 + s) and -log1p in their ranges."""
        shape = tuple(self._node_shape(x))
        if dim is None or self._dim(fx_node, dim, len(shape)) != len(shape) - 1:
            raise self.error(fx_node, "softmax over another than the last dimension has no "
                                      "rule")
        n = shape[-1]
        if n == 1:  # softmax is 1, log_softmax 0
            value = self.define("const", "0.0" if log else "1.0")
            return self.add_node(fx_node, "affine", [x.node],
                                 {"map": lm.Elementwise(0.0, 0.0, value)}, shape)
        total: _Bound | None = None
        for k in range(1, n):
            diff = self.traced(fx_node, x, f"(torch.roll({{x}}, -{k}, -1) - {{x}})",
                               f"x_(i+{k}) - x_i", shape=shape,
                               abs_code=f"(torch.roll({{x}}, -{k}, -1) + {{x}})")
            term = self.add_node(fx_node, "exp", [diff.node], {}, shape)
            total = term if total is None else self.add_node(
                fx_node, "add", [total.node, term.node], {}, shape)
        assert total is not None
        # one decreasing op each (no affine map after them: infinite bounds stay infinite)
        return self.add_node(fx_node, "neg_log1p" if log else "inv1p", [total.node], {},
                             shape)

    def broadcast(self, fx_node: fx.Node, x: _Bound, shape: tuple[int, ...]) -> _Bound:
        """``x`` expanded to ``shape`` (an operand of a broadcasting add or product)."""
        have = self._node_shape(x)
        if have == shape:
            return x
        if len(have) != len(shape):
            grown = (1,) * (len(shape) - len(have)) + tuple(have)
            x = self.add_node(fx_node, "reshape", [x.node], {"shape": grown}, grown)
        m = lm.Traced(f"{{x}}.expand(-1, *{tuple(shape)})", f"{{x}}.expand(-1, *{tuple(shape)})",
                      None, tuple(self._node_shape(x)), shape, f"expand{shape}")
        return self.add_node(fx_node, "affine", [x.node], {"map": m}, shape)

    def matmul(self, fx_node: fx.Node, a: _Bound, b: _Bound) -> _Bound:
        """``a @ b`` of two input-dependent tensors: products summed over the shared dim."""
        sa, sb = self._node_shape(a), self._node_shape(b)
        out = self.shape_of(fx_node)
        if len(sa) < 2 or len(sb) < 2:
            raise self.error(fx_node, "matmul of input-dependent vectors has no rule; use "
                                      "matrices (per sample)")
        n, kdim, m = sa[-2], sa[-1], sb[-1]
        lead = tuple(out[:-2])
        ea = lm.Traced(f"{{x}}.unsqueeze(-1).expand(-1, *{lead + (n, kdim, m)})",
                       f"{{x}}.unsqueeze(-1).expand(-1, *{lead + (n, kdim, m)})", None,
                       tuple(sa), lead + (n, kdim, m), "matmul rows")
        eb = lm.Traced(f"{{x}}.unsqueeze(-3).expand(-1, *{lead + (n, kdim, m)})",
                       f"{{x}}.unsqueeze(-3).expand(-1, *{lead + (n, kdim, m)})", None,
                       tuple(sb), lead + (n, kdim, m), "matmul columns")
        full = lead + (n, kdim, m)
        xa = self.add_node(fx_node, "affine", [a.node], {"map": ea}, full)
        xb = self.add_node(fx_node, "affine", [b.node], {"map": eb}, full)
        prod = self.add_node(fx_node, "mul", [xa.node, xb.node], {}, full)
        total = lm.Traced("{x}.sum(dim=-2)", "{x}.sum(dim=-2)", None, full, tuple(out),
                          "sum over the shared dim")
        return self.add_node(fx_node, "affine", [prod.node], {"map": total}, tuple(out))

    def const_matmul(self, fx_node: fx.Node, target: Any, args: list[Any]) -> _Bound:
        """``x @ W``, ``W @ x`` and ``F.linear(x, W, b)`` with a constant (parameter) W: a
        linear map (``nn.Linear``'s own when x is a vector per sample)."""
        if target is F.linear:
            kw = dict(zip(["input", "weight", "bias"], args, strict=False))
            kw |= {k: self.value(v) for k, v in fx_node.kwargs.items()}
            x, w, b = kw.get("input"), kw.get("weight"), kw.get("bias")
            if not isinstance(x, _Bound) or not isinstance(w, _Const) or not (
                    b is None or isinstance(b, _Const)):
                raise self.error(fx_node, "F.linear needs an input-dependent input and a "
                                          "constant weight and bias")
            if len(w.shape) != 2:
                raise self.error(fx_node, f"F.linear with a weight of shape {w.shape}")
            bias = None if b is None else self.per_sample_const(fx_node, b, self.shape_of(fx_node))
            return self.affine(fx_node, x, lm.Dense(
                w.var, self.define(w.var + "_abs", f"{w.var}.abs()"), bias))
        a, b = args[:2]
        if not (isinstance(a, _Bound) and isinstance(b, _Const)) and \
                not (isinstance(a, _Const) and isinstance(b, _Bound)):
            raise self.error(fx_node, "matmul with an operand that is neither input-dependent "
                                      "nor a constant tensor has no rule")
        if isinstance(a, _Bound):
            assert isinstance(b, _Const)
            if len(self._node_shape(a)) == 1 and len(b.shape) == 2:  # per-sample vectors
                wt = self.define(b.var + "_t", f"{b.var}.t()")
                return self.affine(fx_node, a, lm.Dense(
                    wt, self.define(wt + "_abs", f"{wt}.abs()"), None))
            code = f"torch.matmul({{x}}, {b.var})"
            abs_code = f"torch.matmul({{x}}, {self.define(b.var + '_abs', f'{b.var}.abs()')})"
            return self.traced(fx_node, a, code, f"matmul by {b.var}", abs_code=abs_code)
        assert isinstance(a, _Const) and isinstance(b, _Bound)
        if len(self._node_shape(b)) < 2:
            raise self.error(fx_node, "W @ x of a per-sample vector x mixes the batch into the "
                                      "product; write x @ W.T or F.linear(x, W)")
        code = f"torch.matmul({a.var}, {{x}})"
        abs_code = f"torch.matmul({self.define(a.var + '_abs', f'{a.var}.abs()')}, {{x}})"
        return self.traced(fx_node, b, code, f"matmul of {a.var}", abs_code=abs_code)

    def index(self, fx_node: fx.Node, x: _Bound, raw: Any) -> _Bound:
        """``x[...]`` with slices, whole numbers, None and Ellipsis (basic indexing)."""
        items = raw if isinstance(raw, tuple) else (raw,)
        parts = []
        for item in items:
            if isinstance(item, slice):
                ends = [self.value(v) for v in (item.start, item.stop, item.step)]
                if not all(v is None or (isinstance(v, float) and v.is_integer()) for v in ends):
                    raise self.error(fx_node, "a slice with computed ends has no rule")
                parts.append(repr(slice(*(None if v is None else int(v) for v in ends))))
            elif item is None or item is Ellipsis:
                parts.append(repr(item))
            elif isinstance(item, int) and not isinstance(item, bool):
                parts.append(str(item))
            else:
                raise self.error(fx_node, f"indexing with {type(item).__name__} (advanced or "
                                          f"computed indices) has no rule")
        first = items[0]
        if not (first is Ellipsis and len(items) > 1) and first != slice(None):
            raise self.error(fx_node, "indexing must keep the whole batch dimension: x[:, ...]")
        return self.traced(fx_node, x, f"{{x}}[{', '.join(parts)},]", "index")

    def split(self, fx_node: fx.Node, target: Any, x: _Bound, args: list[Any]) -> _Parts:
        how = _SPLIT[target]
        shape = self._node_shape(x)
        first: Any = fx_node.args[1] if len(fx_node.args) > 1 else fx_node.kwargs.get(
            "chunks" if how == "chunk" else "split_size_or_sections",
            fx_node.kwargs.get("split_size"))
        dim = self._dim(fx_node, fx_node.kwargs.get("dim", fx_node.args[2]
                                                    if len(fx_node.args) > 2 else 0),
                        len(shape))
        size = shape[dim]
        if how == "chunk":
            step = -(-size // int(first))
            sizes = [min(step, size - i) for i in range(0, size, step)]
        elif isinstance(first, (list, tuple)):
            sizes = [int(v) for v in first]
        else:
            sizes = [min(int(first), size - i) for i in range(0, size, int(first))]
        return _Parts(x, dim, sizes)

    def stack(self, fx_node: fx.Node, args: list[Any]) -> _Bound:
        parts = [self.value(p) for p in args[0]]
        if not all(isinstance(v, _Bound) for v in parts):
            raise self.error(fx_node, "stacking input-dependent tensors with constants has no "
                                      "rule")
        out_shape = self.shape_of(fx_node)
        dim = self._dim(fx_node, fx_node.kwargs.get("dim", args[1] if len(args) > 1 else 0),
                        len(out_shape))
        grown = []
        for v in parts:
            shape = list(self._node_shape(v))
            shape.insert(dim, 1)
            grown.append(self.add_node(fx_node, "reshape", [v.node], {"shape": tuple(shape)},
                                       tuple(shape)).node)
        return self.add_node(fx_node, "cat", grown, {"dim": dim})

    def pad(self, fx_node: fx.Node, x: _Bound, pad: tuple, mode: str, value: Any) -> _Bound:
        if mode != "constant" or value not in (None, 0, 0.0):
            raise self.error(fx_node, f"padding with mode={mode!r}, value={value!r} has no rule "
                                      f"(zero padding only)")
        widths = tuple(int(self.value(v)) for v in pad)
        return self.traced(fx_node, x, f"F.pad({{x}}, {widths})", f"pad{widths}")

    def interpolate(self, fx_node: fx.Node, x: _Bound, mode: str, align: Any,
                    scale: Any = None, recompute: Any = None) -> _Bound:
        """Interpolation as traced: by ``scale_factor`` when given (torch samples at
        1 / scale_factor, not at in / out), else to the traced size."""
        if mode not in ("nearest", "bilinear", "linear", "nearest-exact"):
            raise self.error(fx_node, f"interpolation mode {mode!r} has no rule (nearest, "
                                      f"nearest-exact, linear and bilinear do)")
        corners = "" if mode.startswith("nearest") else f", align_corners={bool(align)}"
        if scale is not None:
            factors = tuple(float(self.value(v)) for v in scale) \
                if isinstance(scale, (list, tuple)) else float(self.value(scale))
            how = f"scale_factor={factors!r}, recompute_scale_factor={recompute!r}"
        else:
            how = f"size={tuple(self.shape_of(fx_node)[1:])}"
        return self.traced(fx_node, x, f"F.interpolate({{x}}, {how}, mode={mode!r}{corners})",
                           f"interpolate {mode} ({how})")

    def conv_transpose(self, fx_node: fx.Node, x: _Bound, mod: nn.ConvTranspose2d,
                       path: str) -> _Bound:
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise self.error(fx_node, "a transposed conv with other than zero padding has no "
                                      "rule")
        w = self.param(f"{path}.weight")
        w_abs = self.define(w + "_abs", f"{w}.abs()")
        geometry = (f"{tuple(mod.stride)}, {tuple(mod.padding)}, "
                    f"{tuple(self.shape_of(fx_node)[1:])}, {mod.groups}, {tuple(mod.dilation)}")
        return self.traced(fx_node, x, f"rt.conv_transpose2d({{x}}, {w}, {geometry})",
                           f"conv_transpose2d W={w}",
                           abs_code=f"rt.conv_transpose2d({{x}}, {w_abs}, {geometry})",
                           bias=self.bias(path, mod.bias, 3, fx_node))

    def maximum(self, fx_node: fx.Node, a: _Bound, b: _Bound, is_max: bool) -> _Bound:
        """max(a, b) as ``amax`` of the two stacked along a new last dim, and min(a, b) as
        -max(-a, -b) (broadcast first): Box then bounds it exactly, [max(l1, l2),
        max(u1, u2)], and the other domains get amax's lowering, a + relu(b - a)."""
        shape = self.shape_of(fx_node)
        a, b = (self.broadcast(fx_node, v, shape) for v in (a, b))
        negate = lm.Elementwise(-1.0, 1.0, None)
        if not is_max:
            a, b = (self.add_node(fx_node, "affine", [v.node], {"map": negate}, shape)
                    for v in (a, b))
        pair = shape + (1,)
        parts = [self.add_node(fx_node, "reshape", [v.node], {"shape": pair}, pair).node
                 for v in (a, b)]
        both = self.add_node(fx_node, "cat", parts, {"dim": len(shape)}, shape + (2,))
        top = self.add_node(fx_node, "amax", [both.node],
                            {"params": {"dim": float(len(shape) + 1), "keepdim": 0.0}}, shape)
        if is_max:
            return top
        return self.add_node(fx_node, "affine", [top.node], {"map": negate}, shape)

    def power(self, fx_node: fx.Node, x: _Bound, exponent: float) -> _Bound:
        """``x ** a`` for any real a, on its domain, from ops of the table: whole a >= 2 is
        ``pow`` (even) or ``pow_odd``; a = n / 2 > 0 (n odd) is ``sqrt`` then its n-th power
        (x >= 0); a whole a <= -1 is ``reciprocal(x) ** -a`` (x > 0); any other a is
        ``exp(a log x)`` (x > 0). Only the first step has a limited range, checked on the
        bounds of x itself on every call (a relational domain's bounds of an inner step may
        dip below the true range), so a power outside its domain raises ``InputError``
        naming this node and the bounds of x."""
        shape = self._node_shape(x)

        def step(op: str, src: _Bound, params: dict | None = None) -> _Bound:
            return self.add_node(fx_node, op, [src.node], {"params": params} if params else {},
                                 shape)

        def whole(src: _Bound, n: int) -> _Bound:
            return src if n == 1 else step("pow" if n % 2 == 0 else "pow_odd", src,
                                           {"exponent": float(n)})

        if exponent == 0.0:
            one = self.define("one", "1.0")
            return self.affine(fx_node, x, lm.Elementwise(0.0, 0.0, one))
        if exponent.is_integer():
            n = int(exponent)
            return whole(x, n) if n > 0 else whole(step("reciprocal", x), -n)
        if exponent > 0 and (2 * exponent).is_integer():
            return whole(step("sqrt", x), int(2 * exponent))
        log = step("log", x)
        scaled = self.affine(fx_node, log, lm.Elementwise(exponent, abs(exponent), None))
        return self.add_node(fx_node, "exp", [scaled.node], {}, shape)

    def amax(self, fx_node: fx.Node, x: _Bound, args: list[Any]) -> _Bound:
        shape = self._node_shape(x)
        dim = fx_node.kwargs.get("dim", args[1] if len(args) > 1 else None)
        if isinstance(dim, (list, tuple)):
            if len(dim) != 1:
                raise self.error(fx_node, "amax over several dims has no rule; one dim")
            dim = dim[0]
        if dim is None:
            raise self.error(fx_node, "amax over every dim mixes the samples of a batch")
        d = self._dim(fx_node, dim, len(shape)) + 1
        keep = bool(fx_node.kwargs.get("keepdim", args[2] if len(args) > 2 else False))
        out = tuple(1 if i + 1 == d else n for i, n in enumerate(shape)) if keep else \
            tuple(n for i, n in enumerate(shape) if i + 1 != d)
        return self.add_node(fx_node, "amax", [x.node],
                             {"params": {"dim": float(d), "keepdim": float(keep)}}, out)

    def pool_kwargs(self, fx_node: fx.Node, args: list[Any]) -> dict:
        names = ["kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"]
        kw = dict(zip(names, fx_node.args[1:], strict=False)) | dict(fx_node.kwargs)
        return kw

    def max_pool(self, fx_node: fx.Node, x: _Bound, kw: dict) -> _Bound:
        if fx_node.op == "call_module":
            mod = self.model.get_submodule(str(fx_node.target))
            kw = {"kernel_size": mod.kernel_size, "stride": mod.stride, "padding": mod.padding,
                  "dilation": mod.dilation, "ceil_mode": mod.ceil_mode,
                  "return_indices": mod.return_indices}
        try:
            kernel = _pair(kw["kernel_size"], 2)
            stride = _pair(kw.get("stride") or kernel, 2)
            padding = _pair(kw.get("padding", 0), 2)
            dilation = _pair(kw.get("dilation", 1), 2)
        except ValueError as err:
            raise self.error(fx_node, f"max pooling: kernel size, stride or padding: {err}"
                             ) from None
        if kw.get("return_indices") or dilation != (1, 1):
            raise self.error(fx_node, "max pooling with return_indices or dilation has no rule")
        in_shape = self._node_shape(x)
        out_shape = self.shape_of(fx_node)
        if len(in_shape) != 3:
            raise self.error(fx_node, f"max pooling of a {len(in_shape)}-d map (per sample) has "
                                      f"no rule; [C, H, W] only")
        params = {"kernel_h": float(kernel[0]), "kernel_w": float(kernel[1]),
                  "stride_h": float(stride[0]), "stride_w": float(stride[1]),
                  "padding_h": float(padding[0]), "padding_w": float(padding[1]),
                  "ceil_mode": float(bool(kw.get("ceil_mode", False)))}
        return self.add_node(fx_node, "max_pool2d", [x.node], {"params": params}, out_shape)

    def cat(self, fx_node: fx.Node, args: list[Any]) -> _Bound:
        parts = args[0]
        dim = int(self.number_arg(fx_node, args, "dim", 1, 0))
        vals = [self.value(p) for p in parts]
        out_shape = self.shape_of(fx_node)
        if dim < 0:
            dim += len(out_shape) + 1
        if dim == 0:
            raise self.error(fx_node, "concatenation along the batch dimension has no rule")
        if not all(isinstance(v, _Bound) for v in vals):
            return self.cat_constants(fx_node, vals, dim, out_shape)
        return self.add_node(fx_node, "cat", [v.node for v in vals], {"dim": dim - 1})

    def cat_constants(self, fx_node: fx.Node, vals: list[Any], dim: int,
                      out_shape: tuple[int, ...]) -> _Bound:
        """One input-dependent tensor concatenated with constants (a class token): an affine
        map, x placed among zeros plus the constants as its bias."""
        bound = [v for v in vals if isinstance(v, _Bound)]
        if len(bound) != 1 or not all(isinstance(v, (_Bound, _Const)) for v in vals):
            raise self.error(fx_node, "concatenating constants with more than one "
                                      "input-dependent tensor has no rule")
        pieces, bias = [], []
        for v in vals:
            if isinstance(v, _Bound):
                pieces.append("{x}")
                bias.append(f"torch.zeros({tuple(self._node_shape(v))}, dtype=lo.dtype, "
                            f"device=lo.device)")
            else:
                c = self.per_sample_const(fx_node, v, out_shape)
                size = (v.shape[len(v.shape) - len(out_shape):])
                pieces.append(f"{{x}}.new_zeros(({{x}}.shape[0], *{tuple(size)}))")
                bias.append(f"{c}.expand({tuple(size)})")
        code = f"torch.cat([{', '.join(pieces)}], {dim})"
        b = self.define("cat_bias", f"torch.cat([{', '.join(bias)}], {dim - 1})")
        return self.traced(fx_node, bound[0], code, f"cat with constants along {dim}", bias=b)

    def binary(self, fx_node: fx.Node, target: Any, args: list[Any]) -> _Bound:
        if fx_node.kwargs.get("alpha", 1) != 1 or len(args) != 2:
            raise self.error(fx_node, "only two-operand add/sub/mul/div without alpha have a "
                                      "rule")
        a, b = args
        out_shape = self.shape_of(fx_node)
        if isinstance(a, _Bound) and isinstance(b, _Bound):
            a, b = (self.broadcast(fx_node, v, out_shape) for v in (a, b))
            if target in _ADD:
                return self.add_node(fx_node, "add", [a.node, b.node], {})
            if target in _SUB:
                neg = self.affine(fx_node, b, lm.Elementwise(-1.0, 1.0, None))
                return self.add_node(fx_node, "add", [a.node, neg.node], {})
            if target in _MUL and a.node == b.node:
                return self.elementwise(fx_node, a, ops.get("pow"), {"exponent": 2.0})
            if target in _DIV:  # x / y = x * (1 / y), for y > 0 (checked on every call)
                b = self.add_node(fx_node, "reciprocal", [b.node], {}, self._node_shape(b))
            return self.add_node(fx_node, "mul", [a.node, b.node], {})
        x, c, x_first = (a, b, True) if isinstance(a, _Bound) else (b, a, False)
        if self._node_shape(x) != out_shape:
            raise self.error(fx_node, "a constant that broadcasts an input-dependent tensor to a "
                                      "larger shape has no rule")
        if isinstance(c, _Const):
            cvar = self.per_sample_const(fx_node, c, out_shape)
        elif isinstance(c, float):
            cvar = None
        else:
            raise self.error(fx_node, f"operand of type {type(c).__name__} has no rule")

        def lit(v: float) -> str:
            return repr(v)

        if target in _ADD:
            bias = cvar or self.define("shift", f"{lit(c)}")
            return self.affine(fx_node, x, lm.Elementwise(None, None, bias))
        if target in _SUB:
            if x_first:
                bias = self.define("shift", f"-{cvar}" if cvar else lit(-c))
                return self.affine(fx_node, x, lm.Elementwise(None, None, bias))
            bias = cvar or self.define("shift", lit(c))
            return self.affine(fx_node, x, lm.Elementwise(-1.0, 1.0, bias))
        if target in _MUL:
            if cvar is None:
                return self.affine(fx_node, x, lm.Elementwise(c, abs(c), None))
            return self.affine(fx_node, x, lm.Elementwise(
                cvar, self.define(cvar + "_abs", f"{cvar}.abs()"), None))
        if not x_first:  # c / x = c * (1 / x), for x > 0 (checked on every call)
            recip = self.add_node(fx_node, "reciprocal", [x.node], {}, out_shape)
            if cvar is None:
                return recip if c == 1.0 else self.affine(fx_node, recip, lm.Elementwise(
                    c, abs(c), None))
            return self.affine(fx_node, recip, lm.Elementwise(
                cvar, self.define(cvar + "_abs", f"{cvar}.abs()"), None))
        if cvar is None:
            if c == 0.0:
                raise self.error(fx_node, "division by the constant 0")
            return self.affine(fx_node, x, lm.Elementwise(1.0 / c, abs(1.0 / c), None))
        inv = self.define(cvar + "_inv", f"1.0 / {cvar}")
        return self.affine(fx_node, x, lm.Elementwise(
            inv, self.define(inv + "_abs", f"{inv}.abs()"), None))

    def constant_op(self, fx_node: fx.Node) -> Any:
        """An op on constants only: evaluated in the prelude from the traced shape."""
        target = fx_node.target
        args = [self.value(a) for a in fx_node.args]
        meta = fx_node.meta.get("tensor_meta")
        if target in _EXPAND and args and isinstance(args[0], _Const) and meta is not None \
                and hasattr(meta, "shape") and int(meta.shape[0]) == _PROBE_BATCH:
            # a constant spread over the batch (a class token): one sample's copy
            per = (1,) + tuple(int(s) for s in meta.shape[1:])
            return _Const(self.define("c", f"{args[0].var}.expand({per})"), per)
        if any(isinstance(a, _Meta) for a in args) and target not in _RESHAPE:
            return _Meta()
        if meta is None or not hasattr(meta, "shape"):
            return _Meta()
        shape = tuple(int(s) for s in meta.shape)
        first = args[0] if args else None
        if target in _RESHAPE | _ALIAS and isinstance(first, _Const):
            return _Const(self.define("c", f"{first.var}.reshape({shape})"), shape)

        def operand(v: Any) -> str:
            if isinstance(v, _Const):
                return v.var
            if isinstance(v, float):
                return repr(v)
            raise self.error(fx_node, f"constant expression with operand {v!r} has no rule")

        if isinstance(first, _Const):
            layout = self.constant_layout(fx_node, first, target)
            if layout is not None:
                return _Const(self.define("c", layout), shape)
        for spellings, sym in ((_ADD, "+"), (_SUB, "-"), (_MUL, "*"), (_DIV, "/")):
            if target in spellings and len(args) == 2:
                return _Const(self.define("c", f"({operand(args[0])} {sym} {operand(args[1])})"),
                              shape)
        if target in _NEG:
            return _Const(self.define("c", f"(-{operand(args[0])})"), shape)
        if target in (torch.sqrt, "sqrt"):
            return _Const(self.define("c", f"torch.sqrt({operand(args[0])})"), shape)
        raise self.error(fx_node, "a computation on constants that absdsl cannot replay")


    def constant_layout(self, fx_node: fx.Node, c: _Const, target: Any) -> str | None:
        """Code of a transpose, permute or slice of constant ``c`` (``W.t()``, ``W.T``,
        ``W[:, :3]``), or None for other ops; arguments are literal numbers and slices."""
        def literal(v: Any) -> str:
            v = self.value(v)
            if isinstance(v, float) and v.is_integer():
                return str(int(v))
            if v is None or v is Ellipsis:
                return repr(v)
            if isinstance(v, slice):
                return f"slice({literal(v.start)}, {literal(v.stop)}, {literal(v.step)})"
            if isinstance(v, (list, tuple)):
                return "(" + "".join(literal(i) + ", " for i in v) + ")"
            raise self.error(fx_node, f"a constant indexed or permuted by {v!r} has no rule")

        rest = fx_node.args[1:]
        if target is getattr and rest[0] in ("T", "mT"):
            return f"{c.var}.{rest[0]}" if rest[0] == "mT" or len(c.shape) <= 2 else None
        if target is operator.getitem:
            items = rest[0] if isinstance(rest[0], tuple) else (rest[0],)
            return f"{c.var}[{literal(tuple(items))}]"
        method = {torch.t: "t", torch.transpose: "transpose", torch.permute: "permute",
                  torch.narrow: "narrow", torch.flip: "flip"}.get(target, target)
        if method in ("t", "transpose", "permute", "narrow", "flip") and not fx_node.kwargs:
            return f"{c.var}.{method}({', '.join(literal(a) for a in rest)})"
        return None


def _get_attr(model: nn.Module, qualified: str) -> Any:
    obj: Any = model
    for part in qualified.split("."):
        obj = getattr(obj, part)
    return obj


_FORWARD_KWARGS = "_absdsl_forward_kwargs"


def with_forward_kwargs(model: nn.Module, kwargs: dict[str, Any]) -> nn.Module:
    """``model`` whose non-tensor ``forward`` arguments ``kwargs`` are traced as constants.

    A shallow copy: it shares every parameter, buffer and submodule with ``model`` (training
    one trains the other), and only carries the arguments; ``model`` itself is untouched.
    """
    names = list(inspect.signature(type(model).forward).parameters)[1:]
    for key, value in kwargs.items():
        if key not in names or key == _first_argument(model):
            raise TraceError(f"example_kwargs: {type(model).__name__}.forward has no "
                             f"non-input argument {key!r} (its arguments: {', '.join(names)})")
        if isinstance(value, torch.Tensor):
            raise TraceError(f"example_kwargs: {key!r} is a tensor; only non-tensor arguments "
                             f"(flags, numbers, strings, None) are traced as constants")
    bound = copy.copy(model)
    object.__setattr__(bound, _FORWARD_KWARGS, dict(kwargs))
    return bound


def _first_argument(model: nn.Module) -> str | None:
    params = list(inspect.signature(type(model).forward).parameters.values())[1:]
    return params[0].name if params and params[0].kind is not params[0].VAR_POSITIONAL else None


def forward_constants(model: nn.Module) -> dict[str, Any]:
    """The ``forward`` arguments traced as constants: every argument after the input that
    has a non-tensor default (``debug=False``, ``mask=None``) takes it, unless
    :func:`with_forward_kwargs` gave another value."""
    given: dict[str, Any] = dict(getattr(model, _FORWARD_KWARGS, {}))
    out: dict[str, Any] = {}
    params = list(inspect.signature(type(model).forward).parameters.values())[1:]
    first = _first_argument(model)
    for p in params:
        if p.name == first or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in given:
            out[p.name] = given[p.name]
        elif p.default is not p.empty and not isinstance(p.default, torch.Tensor):
            out[p.name] = p.default
        elif p.default is p.empty:
            raise TraceError(f"{type(model).__name__}.forward takes a second argument "
                             f"{p.name!r}: models with more than one input are not supported "
                             f"(a non-tensor argument is traced as a constant when it has a "
                             f"default, or with absdsl.compile(..., example_kwargs="
                             f"{{{p.name!r}: value}}))")
    return out


def fold_batch_norm(graph: Graph) -> Graph:
    """Fold an eval-mode batch norm into the linear or conv layer right before it.

    Only when that layer feeds nothing else; the fold is prelude code, so it follows the
    current parameters (and their gradients) on every call.
    """
    users = graph.users()
    prelude = list(graph.prelude)
    nodes: list[Node] = []
    replaced: dict[str, str] = {}
    for node in graph.nodes:
        node.inputs = [replaced.get(i, i) for i in node.inputs]
        prev = graph.by_name.get(node.inputs[0]) if node.inputs else None
        if (node.attrs.get("batch_norm") and prev is not None and prev.op == "affine"
                and isinstance(prev.attrs["map"], (lm.Dense, lm.Conv))
                and users[prev.name] == [node.name] and nodes and nodes[-1] is prev):
            bn: lm.Elementwise = node.attrs["map"]
            old = prev.attrs["map"]
            dims = 2 if isinstance(old, lm.Dense) else old.dims + 2
            w = f"{old.weight}_folded"
            view = (-1,) + (1,) * (dims - 1)
            prelude.append(Prelude(w, f"{old.weight} * {bn.scale}.reshape({view})", ()))
            prelude.append(Prelude(w + "_abs", f"{w}.abs()", ()))
            b = f"{old.weight}_bias_folded"
            base = "0.0" if old.bias is None else old.bias
            prelude.append(Prelude(b, f"{base} * {bn.scale} + {bn.bias}", ()))
            if isinstance(old, lm.Dense):
                new_map: Any = lm.Dense(w, w + "_abs", b)
            else:
                new_map = lm.Conv(old.dims, w, w + "_abs", b, old.stride, old.padding,
                                  old.dilation, old.groups, old.output_padding, old.in_shape,
                                  old.kernel)
            prev.attrs["map"] = new_map
            prev.shape = node.shape
            prev.origin = f"{prev.origin} + {node.origin}"
            replaced[node.name] = prev.name
            continue
        nodes.append(node)
    return Graph(nodes, replaced.get(graph.output, graph.output), prelude, graph.param_names)


def trace(model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
          device: torch.device | str = "cpu") -> tuple[Graph, dict[str, torch.Tensor]]:
    """Trace ``model`` for per-sample inputs of ``input_shape``.

    Returns the IR (batch norm folded) and the plain tensor attributes (not parameters or
    buffers) that the program reads as constants.
    """
    if not isinstance(model, nn.Module):
        raise TraceError(f"expected an nn.Module, got {type(model).__name__}")
    for path, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.training:
            raise TraceError(f"module '{path}' ({type(mod).__name__}) is in training mode; "
                             f"bounds use running statistics, call model.eval() first")
    tracer = fx.Tracer()
    tracer.record_stack_traces = True
    concrete = forward_constants(model)
    try:
        fx_graph = tracer.trace(model, concrete_args=concrete or None)
    except Exception as err:  # fx raises many kinds of errors for untraceable code
        raise TraceError(f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: "
                         f"{err}. Models with data-dependent control flow are not "
                         f"supported.") from None
    if concrete:  # the placeholders of constant arguments default to the values traced
        names = list(inspect.signature(type(model).forward).parameters)[1:]
        holders = [n for n in fx_graph.nodes if n.op == "placeholder"][1:]
        for name, holder in zip(names[1:], holders, strict=False):
            if name in concrete:
                holder.args = (concrete[name],)
    gm = fx.GraphModule(tracer.root, fx_graph)
    probe = torch.zeros((_PROBE_BATCH, *input_shape), dtype=dtype, device=device)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(probe)
    except Exception as err:
        raise TraceError(f"the model does not accept inputs of per-sample shape "
                         f"{tuple(input_shape)}: {type(err).__name__}: {err}") from None
    lowering = _Lowering(model, gm)
    graph = fold_batch_norm(lowering.run())
    return graph, lowering.constants
