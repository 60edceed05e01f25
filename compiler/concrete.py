"""The IR as plain torch functions: one concrete function per node.

Exact encodings (the MILP stage) and analyses (propagation tightness) need the network one
node at a time: the dense matrix of an affine node, a node's output given its inputs, the
value of every node at a point. The functions are generated from the same linear maps the
bound programs use, so the IR that is encoded is the IR that is bounded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ..errors import InputError
from . import codegen, ops
from .ir import Graph, Node
from .lowering import lower_unsupported

NodeFn = Callable[..., torch.Tensor]


def _affine(node: Node) -> tuple[str, str]:
    m = node.attrs["map"]
    plain = m.apply("x0")
    if m.bias:
        plain = f"({plain} + {m.bias})"
    return plain, m.apply("x0", absolute=True)


def _same(code: Callable[[Node], str]) -> Callable[[Node], tuple[str, str]]:
    """A body that is the same with W and with |W| (every op but affine maps)."""
    return lambda node: (code(node), code(node))


def _cat(node: Node) -> str:
    parts = ", ".join(f"x{i}" for i in range(len(node.inputs)))
    return f"torch.cat([{parts}], {node.attrs['dim'] + 1})"


# code of a node's op on batched inputs ``x0, x1, ...``, (with W, with |W| and no bias), by
# the op table's kind
_BODIES: dict[str, Callable[[Node], tuple[str, str]]] = {
    "input": _same(lambda node: "x0"),
    "affine": _affine,
    "add": _same(lambda node: "(x0 + x1)"),
    "product": _same(lambda node: "(x0 * x1)"),
    "cat": _same(_cat),
    "reshape": _same(lambda node: f"x0.reshape(x0.shape[0], *{tuple(node.shape)})"),
    "elementwise": _same(lambda node: codegen.op_code(node.op, "x0",
                                                      node.attrs.get("params", {}))),
    "pool": _same(lambda node: codegen.op_code(node.op, "x0", node.attrs.get("params", {}))),
}


def _node_body(node: Node) -> tuple[str, str]:
    """Code of the node's op on batched inputs ``x0, x1, ...``: (with W, with |W| and no bias)."""
    info = ops.OPS.get(node.op)
    body = _BODIES.get(info.kind) if info is not None else None
    if body is None:
        raise InputError(f"no concrete semantics for IR op {node.op!r} (node %{node.name})")
    return body(node)


def generate_concrete(graph: Graph) -> str:
    """Source of ``concrete_nodes(p, lo)``, which returns {node name: fn(*xs, absolute=False)}.

    ``lo`` stands where the bound programs' input box does: prelude code reads only its dtype
    and device (the constant weights of average pooling, the zeros of a concatenation)."""
    lines = ["def concrete_nodes(p, lo):"]
    lines += [f"    {pre.name} = {pre.code}" for pre in graph.prelude]
    lines.append("    fns = {}")
    for i, node in enumerate(graph.nodes):
        args = ", ".join(f"x{j}" for j in range(max(len(node.inputs), 1)))
        plain, absolute = _node_body(node)
        lines += [f"    # {node.describe()}",
                  f"    def node_{i}({args}, absolute=False):",
                  f"        return {absolute} if absolute else {plain}",
                  f"    fns[{node.name!r}] = node_{i}"]
    lines.append("    return fns")
    return "\n".join(lines) + "\n"


class ConcreteGraph:
    """The traced IR with a concrete torch function per node, at fixed parameters."""

    def __init__(self, graph: Graph, params: Mapping[str, torch.Tensor]) -> None:
        self.graph = graph
        self.source = generate_concrete(graph)
        self._make = codegen.load_generated(self.source, "concrete")["concrete_nodes"]
        self._params = dict(params)
        self._ref = next((t for t in params.values() if t.is_floating_point()), None)
        # node functions per (dtype, device) of the values they run on: the prelude makes
        # its constants in the inputs' dtype, as the bound programs make them in the box's
        self._by_kind: dict[tuple[torch.dtype, torch.device], dict[str, NodeFn]] = {}
        self._fns = self._functions_like(self._reference())

    def _reference(self) -> torch.Tensor:
        """An empty tensor of the parameters' dtype and device (float32 on the CPU if none)."""
        ref = self._ref
        return torch.empty(0, dtype=ref.dtype if ref is not None else torch.float32,
                           device=ref.device if ref is not None else torch.device("cpu"))

    def _functions_like(self, like: torch.Tensor) -> dict[str, NodeFn]:
        key = (like.dtype, like.device)
        if key not in self._by_kind:
            self._by_kind[key] = self._make(self._params, torch.empty(0, dtype=like.dtype,
                                                                      device=like.device))
        return self._by_kind[key]

    def without_max(self) -> ConcreteGraph:
        """The same network with max pooling and ``amax`` decomposed into ReLUs (what an
        encoding of ReLUs, the MILP stage's, reads); itself when it has none."""
        if not any(ops.is_pool(n.op) for n in self.graph.nodes):
            return self
        return ConcreteGraph(lower_unsupported(self.graph, lambda op: not ops.is_pool(op)),
                             self._params)

    def node_fn(self, name: str) -> NodeFn:
        """``fn(*input_values, absolute=False)``: the node's own op on batched inputs.

        ``absolute=True`` applies |W| and drops the bias of affine nodes (the denominator
        of propagation tightness); every other op is the same either way.
        """
        if name not in self._fns:
            raise InputError(f"no IR node %{name}; nodes: {', '.join(self._fns)}")

        def run(*xs: torch.Tensor, absolute: bool = False) -> torch.Tensor:
            fns = self._functions_like(xs[0]) if xs else self._fns
            return fns[name](*xs, absolute=absolute)

        return run

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every node's value at the batched point ``x`` ([B, *input shape])."""
        values: dict[str, torch.Tensor] = {}
        fns = self._functions_like(x)
        for node in self.graph.nodes:
            if node.op == "input":
                values[node.name] = x
            else:
                values[node.name] = fns[node.name](*(values[i] for i in node.inputs))
        return values

    def affine_matrix(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense ``(W [out_numel, in_numel], b [out_numel])`` of an affine node (C order)."""
        node = self.graph.by_name.get(name)
        if node is None or node.op != "affine":
            raise InputError(f"%{name} is not an affine node of the IR")
        src = self.graph.by_name[node.inputs[0]]
        n_in = 1
        for s in src.shape:
            n_in *= s
        ref = self._reference()
        dtype, device = ref.dtype, ref.device
        fn = self._fns[name]
        with torch.no_grad():
            zero = torch.zeros(1, *src.shape, dtype=dtype, device=device)
            bias = fn(zero).reshape(-1)
            eye = torch.eye(n_in, dtype=dtype, device=device).reshape(n_in, *src.shape)
            cols = fn(eye).reshape(n_in, -1) - bias
        return cols.T.contiguous(), bias
