"""Rewrites of the IR for domains that lack a rule: an op becomes ops they have rules for.

Max pooling and ``torch.amax`` are lowered: ``max(a, b) = a + relu(b - a)``, so a k x k
window is its k*k shifted views (linear selections of the input), and a max over a dim its
slices, reduced by a balanced tree of those maxima. Every domain bounds it then, the MILP
stage encodes it exactly (it is the same piecewise-linear function), and Box, which has a
direct rule (both are monotone), keeps the tighter direct form.
"""

from __future__ import annotations

from collections.abc import Callable

from . import linear_maps as lm
from . import ops
from .ir import Graph, Node


def lower_unsupported(graph: Graph, has_rule: Callable[[str], bool]) -> Graph:
    """``graph`` with every pooling node whose op has no rule (``has_rule``) decomposed."""
    if all(not ops.is_pool(n.op) or has_rule(n.op) for n in graph.nodes):
        return graph
    nodes: list[Node] = []
    taken = {n.name for n in graph.nodes}
    renamed: dict[str, str] = {}

    def fresh(stem: str) -> str:
        name, i = stem, 1
        while name in taken:
            i += 1
            name = f"{stem}_{i}"
        taken.add(name)
        return name

    for node in graph.nodes:
        node = Node(node.name, node.op, [renamed.get(i, i) for i in node.inputs], node.shape,
                    node.attrs, node.origin)
        if ops.is_pool(node.op) and not has_rule(node.op):
            src = next(n for n in nodes if n.name == node.inputs[0])
            renamed[node.name] = _LOWERINGS[node.op](node, src, nodes, fresh)
        else:
            nodes.append(node)
    return Graph(nodes, renamed.get(graph.output, graph.output), graph.prelude,
                 graph.param_names)


def _amax_tree(node: Node, src: Node, nodes: list[Node], fresh: Callable[[str], str]) -> str:
    """``torch.amax`` over one dim: its slices along that dim, reduced by the same tree."""
    dim = int(node.attrs["params"]["dim"])  # counts the batch
    keep = bool(node.attrs["params"]["keepdim"])
    taps = []
    for i in range(src.shape[dim - 1]):
        code = f"{{x}}.narrow({dim}, {i}, 1)" + ("" if keep else f".squeeze({dim})")
        m = lm.Traced(code, code, None, tuple(src.shape), tuple(node.shape),
                      f"amax slice {i}")
        name = fresh(f"{node.name}_at{i}")
        nodes.append(Node(name, "affine", [src.name], node.shape, {"map": m}, node.origin))
        taps.append(name)
    return _max_tree(node, taps, nodes, fresh)


def _max_pool_tree(node: Node, src: Node, nodes: list[Node], fresh: Callable[[str], str]
                   ) -> str:
    """Append the decomposition of max-pooling ``node`` to ``nodes``; the result's name.

    Each window position (i, j) is a view of the input padded by replicating its edges: a
    padded cell repeats a real cell of the same window (padding is at most half the
    kernel), so the window's maximum is unchanged.
    """
    p = node.attrs["params"]
    kh, kw = int(p["kernel_h"]), int(p["kernel_w"])
    sh, sw = int(p["stride_h"]), int(p["stride_w"])
    ph, pw = int(p["padding_h"]), int(p["padding_w"])
    c, h, w = src.shape
    _, oh, ow = node.shape
    extra_h = (oh - 1) * sh + kh - h - ph  # padding below (ceil_mode may need more than ph)
    extra_w = (ow - 1) * sw + kw - w - pw  # and on the right
    pad = (pw, max(extra_w, 0), ph, max(extra_h, 0))
    padded = f"F.pad({{x}}, {pad}, mode='replicate')" if any(pad) else "{x}"
    taps = []
    for i in range(kh):
        for j in range(kw):
            rows = f"{i}:{i + sh * (oh - 1) + 1}:{sh}"
            cols = f"{j}:{j + sw * (ow - 1) + 1}:{sw}"
            m = lm.Traced(f"{padded}[:, :, {rows}, {cols}]", f"{padded}[:, :, {rows}, {cols}]",
                          None, tuple(src.shape), tuple(node.shape),
                          f"max-pool window view ({i}, {j})")
            name = fresh(f"{node.name}_at{i}{j}")
            nodes.append(Node(name, "affine", [src.name], node.shape, {"map": m},
                              node.origin))
            taps.append(name)
    return _max_tree(node, taps, nodes, fresh)


def _max_tree(node: Node, taps: list[str], nodes: list[Node], fresh: Callable[[str], str]
              ) -> str:
    """The maximum of ``taps`` (nodes of ``node``'s shape): a balanced tree of
    max(a, b) = a + relu(b - a)."""
    while len(taps) > 1:
        level = []
        for a, b in zip(taps[0::2], taps[1::2], strict=False):
            neg = fresh(f"{node.name}_neg")
            nodes.append(Node(neg, "affine", [a], node.shape,
                              {"map": lm.Elementwise(-1.0, 1.0, None)}, node.origin))
            diff = fresh(f"{node.name}_diff")
            nodes.append(Node(diff, "add", [b, neg], node.shape, {}, node.origin))
            gain = fresh(f"{node.name}_gain")
            nodes.append(Node(gain, "relu", [diff], node.shape, {}, node.origin))
            top = fresh(f"{node.name}_max")
            nodes.append(Node(top, "add", [a, gain], node.shape, {}, node.origin))
            level.append(top)
        if len(taps) % 2:
            level.append(taps[-1])
        taps = level
    return taps[0]


# how each pooling op becomes affine maps and ReLUs
_LOWERINGS: dict[str, Callable[[Node, Node, list[Node], Callable[[str], str]], str]] = {
    "amax": _amax_tree, "max_pool2d": _max_pool_tree}
