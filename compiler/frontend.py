"""torch.fx front end: trace an ``nn.Module`` and lower it to the IR of :mod:`compiler.ir`.

Tracing uses only torch.fx's public API (``Tracer``, ``ShapeProp``). Every value in the traced
graph is classified as input-dependent (an IR node), a constant tensor (parameters, buffers,
plain tensor attributes and what is computed from them) or a Python number.
"""

from __future__ import annotations

import copy
import inspect
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import TraceError
from . import linear_maps as lm
from . import ops
from .frontend_ops import _OpLowering
from .fx_values import (
    _ADD,
    _ALIAS,
    _CAT,
    _DIV,
    _EXPAND,
    _FIXED,
    _MATMUL,
    _MAX_MIN,
    _MEAN_SUM,
    _META_FUNCS,
    _MUL,
    _NEG,
    _PERMUTE,
    _POW,
    _PROBE_BATCH,
    _RESHAPE,
    _SOFTMAX,
    _SPLIT,
    _STACK,
    _SUB,
    _TRANSPOSE,
    _Bound,
    _Const,
    _fn_name,
    _get_attr,
    _MaxPair,
    _Meta,
    _pair,
    _Parts,
    _supported_modules,
    _Varargs,
)
from .ir import Graph, Node, Prelude


class _Lowering(_OpLowering):
    """One pass over the fx graph, building IR nodes and prelude values: the walk, modules
    and functions (the lowerings of single ops are :class:`frontend_ops._OpLowering`'s)."""

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
        if isinstance(mod, nn.MultiheadAttention):
            return self.attention(fx_node, x, mod, path)
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
                            f"rt.bn_scale(weight={gamma}, running_var={var}, "
                            f"eps={float(mod.eps)!r}).reshape{view}")
        shift = self.define(f"bn_shift_{path}",
                            f"rt.bn_shift(bias={beta}, running_mean={mean}, "
                            f"scale={scale}.reshape(-1)).reshape{view}")
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
        w = self.define("pool_w", f"rt.avgpool_weight(channels={channels}, kernel={kernel}, "
                                  f"like=lo)")
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
        if target is operator.getitem and args and isinstance(args[0], tuple):
            return args[0][int(args[1])]  # a module's tuple result (MultiheadAttention)
        if target is operator.getitem and args and isinstance(args[0], _Parts):
            if not isinstance(args[1], (int, float)):
                raise self.error(fx_node, "slicing the tuple of chunk/split has no rule; take "
                                          "its parts one by one (parts[0], parts[1], ...)")
            return self.part_of(args[0], fx_node, int(args[1]))
        if target in _CAT | _STACK and args and isinstance(args[0], _Parts):
            args = [self.all_parts(args[0], fx_node)] + args[1:]
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
        return self.lower_call(fx_node, target, x, args)

    def lower_call(self, fx_node: fx.Node, target: Any, x: Any, args: list[Any]) -> Any:
        """A function or method applied to input-dependent ``x``, by its fx target."""
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
                          strict=False)) | {k: self.value(v) for k, v in fx_node.kwargs.items()}
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
