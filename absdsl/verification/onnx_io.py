"""ONNX in and out: networks exchanged with other verifiers (VNN-COMP, alpha-beta-CROWN, ...).

``load_onnx(path)`` reads an ONNX file, folds every computation on constants (shape
arithmetic, ``Cast``/``Identity`` of weights, ``Constant`` nodes) into initializers at batch
size 1, checks that every remaining node is an op absdsl has a rule for, converts the graph
with onnx2torch and rewrites the converter's own module classes into the torch spellings the
front end lowers (``Add`` -> ``torch.add``, ``MatMul`` by a constant -> ``nn.Linear``,
``Reshape`` -> ``Tensor.reshape`` with the batch axis kept, ``Clip`` -> ``Hardtanh``, ...). The
result is traced once before it is returned, so an op without a rule fails at load time with
the ONNX node's name and op type.

``export_onnx`` writes a trained network with ``torch.onnx`` (normalisation included) and
``onnxruntime_outputs`` runs a file with onnxruntime, the reference that results are checked
against.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from absdsl.compiler.frontend import trace
from absdsl.errors import AbsdslError, OnnxError, TraceError

# ONNX ops with a lowering (after constant folding). Constant-only nodes of any op are folded.
SUPPORTED_OPS = ("Gemm", "MatMul", "Conv", "BatchNormalization", "Relu", "Flatten", "Reshape",
                 "Add", "Sub", "Mul", "Div", "Concat", "AveragePool", "GlobalAveragePool",
                 "Sigmoid", "Tanh", "LeakyRelu", "Clip", "Identity", "Dropout", "Transpose",
                 "Slice", "Pad", "MaxPool", "Gather")
EXPORT_OPSET = 17  # understood by onnx2torch, onnxruntime and the VNN-COMP tools
MAX_FOLD_ELEMENTS = 50_000_000  # a folded constant larger than this is refused (memory)


def _require() -> tuple[Any, Any]:
    try:
        import onnx  # lazy: optional dependency onnx
        import onnx2torch  # lazy: optional dependency onnx2torch
    except ImportError as err:
        raise OnnxError(f"ONNX support needs the 'onnx' extra: pip install 'absdsl[onnx]' "
                        f"({err})") from err
    return onnx, onnx2torch


# ---- reading and folding -------------------------------------------------------------------

def read_onnx(path: str | Path) -> Any:
    """The checked ModelProto of ``path`` (one clear line if it is not a valid ONNX file)."""
    onnx, _ = _require()
    p = Path(path)
    if not p.is_file():
        raise OnnxError(f"{p}: no such ONNX file")
    try:
        model = onnx.load(str(p))
    except Exception as err:  # noqa: BLE001 - protobuf raises several kinds
        raise OnnxError(f"{p}: not an ONNX file or truncated ({type(err).__name__}: "
                        f"{_first_line(err)})") from None
    if not model.graph.node:
        raise OnnxError(f"{p}: not an ONNX network (no graph nodes; truncated or another "
                        f"format)")
    try:
        onnx.checker.check_model(model)
    except Exception as err:  # noqa: BLE001 - ValidationError and friends
        raise OnnxError(f"{p}: invalid ONNX model: {_first_line(err)}") from None
    return model


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def _opset(model: Any) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _graph_input(model: Any, path: Path) -> tuple[Any, tuple[int, ...]]:
    """The one non-initializer input and its per-sample shape (the leading axis is the batch)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise OnnxError(f"{path}: the network must have exactly one input, it has "
                        f"{len(inputs)} ({', '.join(i.name for i in inputs)})")
    value = inputs[0]
    tt = value.type.tensor_type
    if tt.elem_type not in (1, 11):  # FLOAT, DOUBLE
        raise OnnxError(f"{path}: input {value.name!r} has element type {tt.elem_type}; only "
                        f"float and double inputs are supported")
    dims = list(tt.shape.dim)
    if len(dims) == 1 and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
        return value, (int(dims[0].dim_value),)  # a rank-1 input: one sample, no batch axis
    if len(dims) < 2:
        raise OnnxError(f"{path}: input {value.name!r} has rank {len(dims)}; expected a batch "
                        f"axis first, e.g. [1, 784] or [1, 1, 28, 28], or a fixed rank-1 "
                        f"vector")
    first = dims[0]
    if first.HasField("dim_value") and first.dim_value not in (1,):
        raise OnnxError(f"{path}: input {value.name!r} has a fixed batch size of "
                        f"{first.dim_value}; only batch 1 or a symbolic batch is supported")
    shape = []
    for i, d in enumerate(dims[1:], 1):
        if not d.HasField("dim_value") or d.dim_value <= 0:
            raise OnnxError(f"{path}: input {value.name!r} axis {i} has no fixed size "
                            f"({d.dim_param or '?'}); only the batch axis may be symbolic")
        shape.append(int(d.dim_value))
    return value, tuple(shape)


UPGRADE_OPSET = 13  # older files are converted to this opset (onnx2torch's oldest versions)


def _upgrade_opset(model: Any, path: Path) -> Any:
    """A file exported at an opset below 13 converted with ``onnx.version_converter``.

    onnx2torch registers converters from opset 9-13 on (``Flatten`` version 1 of opset-8
    exports, ``Dropout`` 7, ...); the official converter rewrites the old node versions into
    their opset-13 equivalents. A conversion that fails leaves the model as it was (its ops
    are then checked and named as usual).
    """
    from onnx import version_converter  # lazy: optional dependency onnx

    if _opset(model) >= UPGRADE_OPSET:
        return model
    try:
        return version_converter.convert_version(model, UPGRADE_OPSET)
    except Exception:  # noqa: BLE001 - the converter raises RuntimeError and assertions
        return model


def _add_batch_axis(model: Any) -> Any:
    """A rank-1 input ``[n]`` becomes ``[1, n]`` (and rank-1 outputs lose their shape), so
    the network has the batch axis every other layer expects; ops that broadcast over
    leading axes (MatMul, Add, Relu, ...) then compute the same values per sample."""
    inits = {i.name for i in model.graph.initializer}
    value = next(i for i in model.graph.input if i.name not in inits)
    dims = value.type.tensor_type.shape.dim
    if len(dims) != 1:
        return model
    n = int(dims[0].dim_value)
    value.type.tensor_type.shape.ClearField("dim")
    for size in (1, n):
        value.type.tensor_type.shape.dim.add().dim_value = size
    for out in model.graph.output:
        if len(out.type.tensor_type.shape.dim) <= 1:
            out.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    return model


def _drop_dropout(model: Any) -> Any:
    """Dropout (any opset) is the identity at inference: its consumers read its input."""
    rename: dict[str, str] = {}
    kept = []
    for node in model.graph.node:
        if node.op_type == "Dropout" and node.domain in ("", "ai.onnx"):
            rename[node.output[0]] = rename.get(node.input[0], node.input[0])
            continue
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        kept.append(node)
    if not rename:
        return model
    for out in model.graph.output:  # a Dropout that produced the output: its input is it
        if out.name in rename:
            out.name = rename[out.name]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def _fold_constants(model: Any, path: Path) -> Any:
    """Evaluate every node whose inputs are all constants, at batch size 1, into initializers.

    ``Shape`` of a tensor whose inferred shape is static (the batch is fixed to 1) is folded
    too, so the shape arithmetic exporters emit for ``x.view(x.size(0), -1)`` disappears.
    Nodes on the data path are left exactly as they are.
    """
    onnx, _ = _require()
    from onnx import helper, numpy_helper, shape_inference  # lazy: optional dependency onnx
    from onnx.reference import ReferenceEvaluator  # lazy: optional dependency onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inp, _ = _graph_input(m, path)
    inp.type.tensor_type.shape.dim[0].Clear()
    inp.type.tensor_type.shape.dim[0].dim_value = 1
    try:
        m = shape_inference.infer_shapes(m)
    except Exception as err:  # noqa: BLE001
        raise OnnxError(f"{path}: ONNX shape inference failed: {_first_line(err)}") from None
    shapes: dict[str, list[int] | None] = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        static = all(d.HasField("dim_value") for d in dims) and vi.type.tensor_type.HasField(
            "shape")
        shapes[vi.name] = [int(d.dim_value) for d in dims] if static else None
    consts: dict[str, np.ndarray] = {
        i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    opset = _opset(m)
    kept = []
    for index, node in enumerate(m.graph.node):
        ins = [i for i in node.input if i]
        if node.domain not in ("", "ai.onnx"):
            kept.append(node)
            continue
        if node.op_type == "Shape" and shapes.get(node.input[0]) is not None:
            full = np.array(shapes[node.input[0]], dtype=np.int64)
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            start, end = attrs.get("start", 0), attrs.get("end", None)
            consts[node.output[0]] = full[start:end]
            continue
        if node.op_type == "Constant" or (ins and all(i in consts for i in ins)
                                          and node.op_type not in ("RandomNormalLike",
                                                                   "RandomUniformLike")):
            try:
                ev = ReferenceEvaluator(node, opsets={"": opset})
                outs = ev.run(None, {i: consts[i] for i in ins})
            except Exception as err:  # noqa: BLE001
                raise OnnxError(f"{path}: ONNX node {_node_label(node, index)} on constants "
                                f"cannot be evaluated: {_first_line(err)}") from None
            for name, value in zip(node.output, outs, strict=False):
                arr = np.asarray(value)
                if arr.size > MAX_FOLD_ELEMENTS:
                    raise OnnxError(f"{path}: ONNX node {_node_label(node, index)} folds to a "
                                    f"constant of {arr.size} elements; too large")
                consts[name] = arr
            continue
        kept.append(node)
    used = {i for n in kept for i in n.input} | {o.name for o in m.graph.output}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    del out.graph.initializer[:]
    init_names = set()
    for name, value in consts.items():
        if name in used:
            out.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
            init_names.add(name)
    keep_inputs = [i for i in out.graph.input if i.name not in init_names or
                   i.name == inp.name]
    del out.graph.input[:]
    out.graph.input.extend(keep_inputs)
    del out.graph.value_info[:]
    for o in out.graph.output:
        if o.name in consts:
            raise OnnxError(f"{path}: the output {o.name!r} does not depend on the input")
    return out


def _node_label(node: Any, index: int) -> str:
    return f"{node.name or '#' + str(index)!r} ({node.op_type})"


def _check_ops(model: Any, path: Path) -> None:
    for index, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
            domain = f" in domain {node.domain!r}" if node.domain not in ("", "ai.onnx") else ""
            raise OnnxError(f"{path}: ONNX node {_node_label(node, index)}{domain} has no "
                            f"lowering in absdsl (supported: {', '.join(SUPPORTED_OPS)}; "
                            f"computations on constants are folded)")


def _sanitize_names(model: Any) -> dict[str, tuple[str, str]]:
    """Unique node names without dots (onnx2torch uses them as module names).

    Returns module name -> (the ONNX node's own name or '#index', op type).
    """
    mapping: dict[str, tuple[str, str]] = {}
    taken: set[str] = set()
    for index, node in enumerate(model.graph.node):
        original = node.name or f"#{index}"
        base = re.sub(r"[.\s]", "_", node.name).lstrip("/") or f"{node.op_type}_{index}"
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        node.name = name
        mapping[name] = (original, node.op_type)
    return mapping


_OPSET_ALIASES_DONE = False


def _register_newer_opsets() -> None:
    """Let onnx2torch convert newer opset versions of the ops we lower.

    The newer versions of these ops only widen the element types they accept (or, for
    AveragePool 19, add ``dilations``, checked before conversion), so the converter of the
    newest version onnx2torch knows is correct for float tensors. Versions it registers
    itself are left alone.
    """
    global _OPSET_ALIASES_DONE
    if _OPSET_ALIASES_DONE:
        return
    from onnx import defs  # lazy: optional dependency onnx
    from onnx2torch.node_converters import registry  # lazy: optional dependency onnx2torch

    table = registry._CONVERTER_REGISTRY  # noqa: SLF001 - the converter's own registry
    newest = defs.onnx_opset_version()
    for op in SUPPORTED_OPS:
        known = sorted(d.version for d in table if d.operation_type == op and d.domain == "")
        if not known:
            continue
        versions = set()
        for v in range(1, newest + 1):
            try:
                versions.add(defs.get_schema(op, max_inclusive_version=v).since_version)
            except Exception:  # noqa: BLE001 - no schema at that version
                continue
        top = registry.OperationDescription(domain="", operation_type=op, version=known[-1])
        for v in sorted(versions):
            desc = registry.OperationDescription(domain="", operation_type=op, version=v)
            if v > known[-1] and desc not in table:
                table[desc] = table[top]
    _OPSET_ALIASES_DONE = True


def _check_attributes(model: Any, path: Path) -> None:
    """Attributes of supported ops that the lowerings do not cover, named before conversion."""
    from onnx import helper  # lazy: optional dependency onnx

    for index, node in enumerate(model.graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        where = f"{path}: ONNX node {_node_label(node, index)}"
        if node.op_type == "AveragePool" and any(int(d) != 1 for d in attrs.get("dilations", [])):
            raise OnnxError(f"{where}: dilated average pooling has no rule")
        if node.op_type in ("AveragePool", "Conv"):
            pads = [int(p) for p in attrs.get("pads", [])]
            half = len(pads) // 2
            if pads and pads[:half] != pads[half:]:
                raise OnnxError(f"{where}: asymmetric pads {pads} have no rule")
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            raise OnnxError(f"{where}: Gemm with transA=1 has no rule (the batch must stay "
                            f"the first axis)")
        if node.op_type == "BatchNormalization" and len(node.output) > 1:
            raise OnnxError(f"{where}: BatchNormalization in training mode (with running "
                            f"statistics outputs) has no rule")


class _FlattenOutput(nn.Module):
    """Outputs with more than one per-sample axis are flattened, so specs see a vector."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)


class OnnxNetwork(nn.Module):
    """An imported ONNX network: an fx GraphModule of standard torch ops, plus its metadata.

    ``input_shape`` is the per-sample input shape, ``num_outputs`` the flat output size,
    ``path`` the source file; ``onnx_nodes`` maps module names to (ONNX node name, op type).
    """

    def __init__(self, net: fx.GraphModule, input_shape: tuple[int, ...], num_outputs: int,
                 path: str, onnx_nodes: dict[str, tuple[str, str]], flatten: bool) -> None:
        super().__init__()
        self.net = net
        self.flat = _FlattenOutput() if flatten else nn.Identity()
        self.input_shape = tuple(input_shape)
        self.num_outputs = int(num_outputs)
        self.path = path
        self.onnx_nodes = dict(onnx_nodes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.flat(self.net(x))


# ---- the public loader -----------------------------------------------------------------------

def load_onnx(path: str | Path) -> OnnxNetwork:
    """An ONNX network as an ``nn.Module`` (eval mode) that ``absdsl.compile`` can trace.

    Every op is checked and the module is traced once here, so an op without a rule fails now
    with the ONNX node's name and op type. Normalisation layers in the graph are kept.
    """
    _, onnx2torch = _require()
    p = Path(path)
    model = read_onnx(p)
    value, input_shape = _graph_input(model, p)
    rank1 = len(value.type.tensor_type.shape.dim) == 1
    model = _drop_dropout(_add_batch_axis(_upgrade_opset(model, p)))
    folded = _fold_constants(model, p)
    _check_ops(folded, p)
    _check_attributes(folded, p)
    names = _sanitize_names(folded)
    _register_newer_opsets()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = onnx2torch.convert(folded)
        gm.eval()  # converted batch norms start in training mode
    except Exception as err:  # noqa: BLE001 - converters raise anything
        raise OnnxError(f"{p}: onnx2torch cannot convert the network: {_first_line(err)}") \
            from None
    from .onnx_lowering import rewrite  # lazy: optional dependency onnx2torch

    rewrite(gm, names, p, input_shape, vector=len(input_shape) == 1 and rank1)
    with torch.no_grad():
        out = gm(torch.zeros((2, *input_shape)))
    if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise OnnxError(f"{p}: the network's output must be one tensor with a batch axis; "
                        f"got {shape}")
    net = OnnxNetwork(gm, input_shape, int(np.prod(out.shape[1:])), str(p), names,
                      flatten=out.dim() > 2).eval()
    _trace_check(net, p)
    return net


_MODULE_RE = re.compile(r"module '(?:net\.)?([^'.]+)")


def _trace_check(net: OnnxNetwork, path: Path) -> None:
    """Trace with the front end now; a TraceError names the ONNX node it came from."""
    try:
        trace(net, net.input_shape)
    except TraceError as err:
        text = str(err)
        for match in _MODULE_RE.finditer(text):
            if match.group(1) in net.onnx_nodes:
                original, op_type = net.onnx_nodes[match.group(1)]
                raise TraceError(f"{path}: ONNX node {original!r} ({op_type}): {text}") \
                    from None
        raise TraceError(f"{path}: {text}") from None


# ---- onnxruntime and export ------------------------------------------------------------------

def onnxruntime_session(path: str | Path) -> Any:
    try:
        import onnxruntime as ort  # lazy: optional dependency onnxruntime
    except ImportError as err:
        raise OnnxError(f"onnxruntime is not installed: pip install 'absdsl[onnx]' ({err})") \
            from err
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001
        raise OnnxError(f"{path}: onnxruntime cannot load the network: {_first_line(err)}") \
            from None


def onnxruntime_outputs(session: Any, x: np.ndarray) -> np.ndarray:
    """The network's output for inputs ``x`` [N, *shape], run one sample at a time when the
    file's batch axis is fixed at 1; flattened per sample to [N, outputs]."""
    inp = session.get_inputs()[0]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    fixed_one = bool(inp.shape) and inp.shape[0] == 1
    xs = np.ascontiguousarray(x, dtype=dtype)
    if len(inp.shape) == 1:  # a rank-1 input: one sample per run, without a batch axis
        outs = [session.run(None, {inp.name: xs[i].reshape(-1)})[0]
                for i in range(xs.shape[0])]
        out = np.concatenate([np.asarray(o).reshape(1, -1) for o in outs], axis=0)
    elif fixed_one or xs.shape[0] == 1:
        outs = [session.run(None, {inp.name: xs[i:i + 1]})[0] for i in range(xs.shape[0])]
        out = np.concatenate([np.asarray(o).reshape(1, -1) for o in outs], axis=0)
    else:
        out = np.asarray(session.run(None, {inp.name: xs})[0]).reshape(xs.shape[0], -1)
    return out.astype(np.float64)


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path,
                dynamic_batch: bool = False, opset: int = EXPORT_OPSET) -> None:
    """Write ``model`` (eval mode, float32) as ONNX with input 'input' and output 'output'.

    Uses torch.onnx's TorchScript exporter, whose graphs (Gemm, Conv, Flatten, Sub/Div by
    constants) are what VNN-COMP tools read; the batch axis is 1, or symbolic with
    ``dynamic_batch``.
    """
    m = model.float().cpu().eval()
    probe = torch.zeros((1, *input_shape))
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (probe,), str(path), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes=axes)
    except Exception as err:  # noqa: BLE001 - the exporter raises many kinds
        raise AbsdslError(f"torch.onnx cannot export the network: {type(err).__name__}: "
                          f"{_first_line(err)}") from None


__all__ = ["OnnxError", "OnnxNetwork", "SUPPORTED_OPS", "export_onnx", "load_onnx",
           "onnxruntime_outputs", "onnxruntime_session", "read_onnx"]
