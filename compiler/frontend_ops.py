"""The front end's lowering of fx functions and methods that are not plain table ops: linear
shape ops (traced maps) and non-linear ops rewritten into the table's ops. A mixin of
:class:`frontend._Lowering`, which owns the walk and the helpers these methods call.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from . import linear_maps as lm
from . import ops
from .fx_values import (
    _ADD,
    _ALIAS,
    _DIV,
    _EXPAND,
    _MEAN_SUM,
    _MUL,
    _NEG,
    _PERMUTE,
    _PROBE_BATCH,
    _RESHAPE,
    _SPLIT,
    _SUB,
    _TRANSPOSE,
    _Bound,
    _Const,
    _LoweringBase,
    _Meta,
    _pair,
    _Parts,
)


class _OpLowering(_LoweringBase):
    """Lowerings of single fx functions and methods (see the module docstring)."""

    def elementwise(self, fx_node: fx.Node, x: _Bound, op: ops.Op, params: dict) -> _Bound:
        """An activation (or max pooling) node, once its parameters have a rule."""
        if op.kind == "pool":
            return self.max_pool(fx_node, x, params)
        full = {p.name: p.default for p in op.params} | params
        reason = op.check(full)
        if reason is not None:
            raise self.error(fx_node, f"{reason}; no rule")
        return self.add_node(fx_node, op.name, [x.node], {"params": full} if full else {})

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

    def shape_op(self, fx_node: fx.Node, target: Any, x: _Bound, args: list[Any]
                 ) -> _Bound:
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

    def matmul(self, fx_node: fx.Node, a: _Bound, b: _Bound,
               shape: tuple[int, ...] | None = None) -> _Bound:
        """``a @ b`` of two input-dependent tensors: products summed over the shared dim.
        ``shape``: the output's, when it is not the fx node's (an inner step of a lowering)."""
        sa, sb = self._node_shape(a), self._node_shape(b)
        out = self.shape_of(fx_node) if shape is None else shape
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

    def attention(self, fx_node: fx.Node, x: _Bound, mod: nn.MultiheadAttention, path: str
                  ) -> tuple[_Bound, None]:
        """``nn.MultiheadAttention`` as self-attention (query, key and value the same tensor,
        batch first, no masks): the in-projections, heads split, softmax(q k^T / sqrt(d)) v
        per head by :meth:`matmul` and :meth:`softmax`, heads merged, the out-projection.
        fx keeps the module a leaf; its result is (output, weights) and only the output
        may be read (``attn(x, x, x)[0]``, or ``out, _ = attn(x, x, x)`` as torchvision's
        ViT has it)."""
        args = dict(zip(["query", "key", "value", "key_padding_mask", "need_weights",
                         "attn_mask", "average_attn_weights", "is_causal"], fx_node.args,
                        strict=False)) | dict(fx_node.kwargs)
        if args.get("key") is not args.get("query") or args.get("value") is not args.get(
                "query"):
            raise self.error(fx_node, "MultiheadAttention with a key or value other than its "
                                      "query has no rule (self-attention only)")
        if any(args.get(k) is not None for k in ("key_padding_mask", "attn_mask")) or \
                args.get("is_causal"):
            raise self.error(fx_node, "MultiheadAttention with a mask has no rule")
        if not mod.batch_first:
            raise self.error(fx_node, "MultiheadAttention with batch_first=False mixes the "
                                      "samples of a batch (dim 1 is the batch); no rule")
        if mod.in_proj_weight is None:  # kdim or vdim other than embed_dim
            raise self.error(fx_node, "MultiheadAttention with kdim or vdim has no rule")
        if mod.bias_k is not None or mod.add_zero_attn:
            raise self.error(fx_node, "MultiheadAttention with add_bias_kv or add_zero_attn "
                                      "has no rule")
        if mod.training and mod.dropout > 0:
            raise self.error(fx_node, "MultiheadAttention dropout in training mode is random; "
                                      "call model.eval()")
        if any(u.op != "call_function" or u.target is not operator.getitem
               or (u.args[1] != 0 and u.users) for u in fx_node.users):
            raise self.error(fx_node, "only the output of MultiheadAttention has a rule, not "
                                      "its attention weights: read attn(x, x, x)[0]")
        shape = tuple(self._node_shape(x))
        e, heads = mod.embed_dim, mod.num_heads
        if len(shape) != 2 or shape[1] != e:
            raise self.error(fx_node, f"MultiheadAttention expects per-sample inputs of shape "
                                      f"(length, {e}), got {shape}")
        length, d = shape[0], e // heads
        scale = 1.0 / d ** 0.5
        bias = self.param(f"{path}.in_proj_bias") if mod.in_proj_bias is not None else None

        def project(i: int, name: str) -> _Bound:
            w = self.define(f"{name}_w", f"{self.param(f'{path}.in_proj_weight')}"
                                         f"[{i * e}:{(i + 1) * e}]")
            b = None if bias is None else self.define(f"{name}_b",
                                                      f"{bias}[{i * e}:{(i + 1) * e}]")
            if name == "q":  # the scale folded into the query's projection
                w = self.define("q_w_scaled", f"{w} * {scale!r}")
                b = None if b is None else self.define("q_b_scaled", f"{b} * {scale!r}")
            dense = lm.Dense(w, self.define(w + "_abs", f"{w}.abs()"), b)
            h = self.add_node(fx_node, "affine", [x.node], {"map": dense}, shape)
            h = self.add_node(fx_node, "reshape", [h.node], {"shape": (length, heads, d)},
                              (length, heads, d))
            return self.traced(fx_node, h, "{x}.transpose(1, 2)", "split heads",
                               shape=(heads, length, d))

        q, k, v = project(0, "q"), project(1, "k"), project(2, "v")
        kt = self.traced(fx_node, k, "{x}.transpose(-2, -1)", "k^T", shape=(heads, d, length))
        scores = self.matmul(fx_node, q, kt, (heads, length, length))
        weights = self.softmax(fx_node, scores, -1, False)
        mixed = self.matmul(fx_node, weights, v, (heads, length, d))
        merged = self.traced(fx_node, mixed, "{x}.transpose(1, 2)", "merge heads",
                             shape=(length, heads, d))
        merged = self.add_node(fx_node, "reshape", [merged.node], {"shape": shape}, shape)
        w = self.param(f"{path}.out_proj.weight")
        dense = lm.Dense(w, self.define(w + "_abs", f"{w}.abs()"),
                         self.bias(f"{path}.out_proj", mod.out_proj.bias, 1, fx_node))
        return self.add_node(fx_node, "affine", [merged.node], {"map": dense}, shape), None

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

    def part_of(self, parts: _Parts, fx_node: fx.Node, i: int) -> _Bound:
        """Part ``i`` of a chunk/split tuple: a slice of its source."""
        i = i + len(parts.sizes) if i < 0 else i
        start = sum(parts.sizes[:i])
        shape = list(self._node_shape(parts.source))
        shape[parts.dim] = parts.sizes[i]
        return self.traced(fx_node, parts.source,
                           f"{{x}}.narrow({parts.dim + 1}, {start}, {parts.sizes[i]})",
                           f"narrow({parts.dim + 1}, {start}, {parts.sizes[i]})",
                           shape=tuple(shape))

    def all_parts(self, parts: _Parts, fx_node: fx.Node) -> list[_Bound]:
        """Every part (the tuple passed whole to cat or stack)."""
        return [self.part_of(parts, fx_node, i) for i in range(len(parts.sizes))]

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

    def pad(self, fx_node: fx.Node, x: _Bound, pad: tuple, mode: str, value: Any
            ) -> _Bound:
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
        geometry = (f"stride={tuple(mod.stride)}, padding={tuple(mod.padding)}, "
                    f"out_hw={tuple(self.shape_of(fx_node)[1:])}, groups={mod.groups}, "
                    f"dilation={tuple(mod.dilation)}")
        return self.traced(fx_node, x, f"rt.conv_transpose2d(x={{x}}, weight={w}, {geometry})",
                           f"conv_transpose2d W={w}",
                           abs_code=f"rt.conv_transpose2d(x={{x}}, weight={w_abs}, {geometry})",
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
