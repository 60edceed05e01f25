"""Tightness of a domain on a fixed network (as in "On the Paradox of Certified Training").

Two numbers:

* :func:`certified_auc`: the area under a domain's certified-accuracy-vs-eps curve, the
  paradox paper's measure of how much a domain proves on one network;
* :func:`propagation_tightness`: Mao et al.'s ratio of the optimal box around the margins
  (through the network linearised at the clean input) to the Box/IBP box, a property of
  the network alone (how much looser interval propagation is than the network's own
  local linear map).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import absdsl
from absdsl.compiler.ir import ACTIVATIONS, Graph, Node
from absdsl.compiler.specs import margin_spec
from absdsl.errors import AbsdslError
from absdsl.training.certify import (
    BoundStage,
    CertifyOptions,
    CleanStage,
    InputResult,
    StageContext,
)
from absdsl.training.programs import canonical_domain

AUC_NORMALISATION = (
    "AUC = (1 / eps_max) * integral over eps in [0, eps_max] of the certified accuracy "
    "(fraction of all evaluated inputs), by the trapezoid rule on n_eps equally spaced eps "
    "including 0 and eps_max; 1 means every input certified at every eps, and a domain that "
    "certifies exactly the correctly classified inputs at every eps scores the natural accuracy"
)
LINEAR_OPS = ("affine", "add", "cat", "reshape")  # ops that tightness propagates through


class AnalysisError(AbsdslError):
    """Bad input to an analysis: eps out of range, wrong shapes, an unsupported network."""


@dataclass
class AUCResult:
    """A domain's certified accuracy over an eps grid and its normalised area."""

    domain: str
    eps: list[float]
    certified: list[float]  # certified accuracy at each eps
    auc: float  # normalised area, in [0, 1]
    normalisation: str  # one sentence stating the integral and its normalisation


def check_data(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise AnalysisError("x must be a floating-point tensor [batch, *input_shape]")
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype not in (torch.int64,
                                                                          torch.int32):
        raise AnalysisError("y must be a 1-D integer tensor of labels")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise AnalysisError(f"x and y must hold the same, non-zero number of inputs; got "
                            f"{x.shape[0]} and {y.shape[0]}")


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 CPU copy in eval mode: analyses never touch the caller's model."""
    return copy.deepcopy(model).double().cpu().eval()


def num_outputs(model64: nn.Module, x64: torch.Tensor) -> int:
    with torch.no_grad():
        out = model64(x64[:1])
    return int(out[0].numel())


def check_labels(y: torch.Tensor, n_out: int) -> None:
    if n_out < 2:
        raise AnalysisError(f"the model has {n_out} output; margins need at least 2 classes")
    if int(y.min()) < 0 or int(y.max()) >= n_out:
        raise AnalysisError(f"labels must lie in [0, {n_out - 1}] for a model with {n_out} "
                            f"outputs; got range [{int(y.min())}, {int(y.max())}]")


def eps_grid(eps_max: float, n_eps: int) -> list[float]:
    """n_eps equally spaced radii from 0 to eps_max (checked: eps_max in (0, 1], n_eps >= 2)."""
    if not eps_max > 0:
        raise AnalysisError(f"eps_max must be > 0, got {eps_max}")
    if eps_max > 1:
        raise AnalysisError(f"eps_max must be <= 1 (pixel units), got {eps_max}")
    if int(n_eps) != n_eps or n_eps < 2:
        raise AnalysisError(f"n_eps must be an integer >= 2 (the grid includes 0 and "
                            f"eps_max), got {n_eps}")
    return [eps_max * i / (n_eps - 1) for i in range(int(n_eps))]


def trapezoid_auc(eps: list[float], certified: list[float]) -> float:
    """(1 / eps_max) * trapezoid integral of certified accuracy over [0, eps_max]."""
    area = sum((eps[i + 1] - eps[i]) * (certified[i + 1] + certified[i]) / 2
               for i in range(len(eps) - 1))
    return area / (eps[-1] - eps[0])


def compile_domain(model64: nn.Module, domain: str, input_shape: tuple[int, ...]):
    """Compile now, for this input shape: an op the domain cannot handle fails here."""

    return absdsl.compile(model64, domain=canonical_domain(domain), input_shape=input_shape)


def certified_auc(model: nn.Module, x: torch.Tensor, y: torch.Tensor, domain: str,
                  eps_max: float, n_eps: int = 11, *, tolerance: float = 1e-6,
                  batch_size: int = 250) -> AUCResult:
    """Certified accuracy of ``domain`` at n_eps radii in [0, eps_max] and its normalised area.

    Certification is the cascade's own (``training/certify.py``: the clean stage, then the
    domain's bound stage): float64 copy of the model, a wrong clean prediction is never
    certified, a margin lower bound must exceed ``tolerance``. No PGD or MILP stage: this
    measures the domain, not the network's true robustness.
    """

    check_data(x, y)
    grid = eps_grid(eps_max, n_eps)
    if tolerance <= 0:
        raise AnalysisError(f"tolerance must be > 0, got {tolerance}")
    if batch_size < 1:
        raise AnalysisError(f"batch_size must be >= 1, got {batch_size}")
    name = canonical_domain(domain)
    model64 = float64_copy(model)
    x64 = x.detach().double().cpu()
    y = y.detach().long().cpu()
    n_out = num_outputs(model64, x64)
    check_labels(y, n_out)
    prog = compile_domain(model64, name, tuple(x64.shape[1:]))
    stage = BoundStage(name, prog, n_out)
    with torch.no_grad():
        pred = torch.cat([model64(x64[s:s + batch_size]).argmax(1)
                          for s in range(0, x64.shape[0], batch_size)])
    certified: list[float] = []
    for eps in grid:
        count = 0
        for s in range(0, x64.shape[0], batch_size):
            xb, yb, pb = x64[s:s + batch_size], y[s:s + batch_size], pred[s:s + batch_size]
            records = [InputResult(s + i, int(yb[i]), int(pb[i])) for i in range(yb.shape[0])]
            ctx = StageContext(model64, model64, xb, yb,
                               CertifyOptions(eps=eps, domain=name, tolerance=tolerance),
                               records)
            CleanStage().run(ctx)
            stage.run(ctx)
            count += sum(1 for r in records if r.status == "certified")
        certified.append(count / x64.shape[0])
    return AUCResult(name, grid, certified, trapezoid_auc(grid, certified), AUC_NORMALISATION)


# -- propagation tightness ----------------------------------------------------------------
def _check_relu_graph(graph: Graph) -> None:
    for node in graph.nodes:
        if node.op in _GATED_STEPS:
            continue
        where = f" ({node.origin})" if node.origin else ""
        kind = "activation" if node.op in ACTIVATIONS else "op"
        raise AnalysisError(
            f"propagation tightness is defined for ReLU networks (linear, conv, batch norm, "
            f"flatten, residual add, cat); the model has the {kind} {node.op!r} at node "
            f"%{node.name}{where}")


def _head(graph: Graph) -> tuple[list[str], list[str]]:
    """(head nodes, frontier nodes): the linear block after the last activations.

    The head is every ancestor of the output from which no activation is reachable; the
    frontier holds the nodes that feed the head from outside (activation outputs, the
    input, or a linear value that also feeds an activation, as in a residual block).
    """
    users = graph.users()
    reaches_act: dict[str, bool] = {}
    for node in reversed(graph.nodes):
        reaches_act[node.name] = any(graph.by_name[u].op in ACTIVATIONS or reaches_act[u]
                                     for u in users[node.name])
    ancestors = {n.name for n in graph.ancestors(graph.output)}
    head = [n.name for n in graph.nodes if n.name in ancestors and n.op in LINEAR_OPS
            and not reaches_act[n.name]]
    if not head:
        return [], [graph.output]
    inside = set(head)
    frontier: list[str] = []
    for name in head:
        for i in graph.by_name[name].inputs:
            if i not in inside and i not in frontier:
                frontier.append(i)
    return head, frontier


def _linear(fn, *xs: torch.Tensor) -> torch.Tensor:
    """The linear part of an affine node's op: fn(x) - fn(0)."""
    return fn(*xs) - fn(*(torch.zeros_like(v) for v in xs))


_NodeFn = Callable[..., torch.Tensor]  # a node's concrete function (ConcreteGraph.node_fn)


@dataclass
class _GatedRun:
    """One propagation through the network with the ReLU gates fixed at the clean input:
    the value at the input node, the clean run's values (the gates) and whether affine
    nodes apply |W| (the interval width) or W (the linear part), both without bias."""

    start: torch.Tensor | None
    clean: dict[str, torch.Tensor]
    absolute: bool


def _gated_input(run: _GatedRun, node: Node, fn: _NodeFn,
                 ins: list[torch.Tensor]) -> torch.Tensor:
    assert run.start is not None
    return run.start


def _gated_relu(run: _GatedRun, node: Node, fn: _NodeFn,
                ins: list[torch.Tensor]) -> torch.Tensor:
    gate = (run.clean[node.inputs[0]] > 0).to(ins[0].dtype)
    return gate * ins[0]


def _gated_affine(run: _GatedRun, node: Node, fn: _NodeFn,
                  ins: list[torch.Tensor]) -> torch.Tensor:
    return fn(ins[0], absolute=True) if run.absolute else _linear(fn, ins[0])


def _gated_linear(run: _GatedRun, node: Node, fn: _NodeFn,
                  ins: list[torch.Tensor]) -> torch.Tensor:
    """add, cat, reshape: linear without a bias, with coefficients 0 or 1 (so |W| = W)."""
    return fn(*ins)


# one propagation step per op tightness is defined for (every other op is refused)
_GATED_STEPS: dict[str, Callable[[_GatedRun, Node, _NodeFn, list[torch.Tensor]], torch.Tensor]] = {
    "input": _gated_input, "relu": _gated_relu, "affine": _gated_affine,
    **{op: _gated_linear for op in LINEAR_OPS if op != "affine"},
}


def _tightness_batch(cg, graph: Graph, head: list[str], frontier: list[str],
                     x: torch.Tensor, y: torch.Tensor, eps: float, n_out: int) -> torch.Tensor:
    """tau per (input, margin) for one batch: [B, n_out - 1]."""

    spec = margin_spec(y, n_out).to(x.dtype)
    k = spec.shape[1]
    lo, hi = torch.clamp(x - eps, 0.0, 1.0), torch.clamp(x + eps, 0.0, 1.0)
    e = (hi - lo) / 2
    with torch.no_grad():
        values = cg.forward(x)

    def propagate(start: torch.Tensor, absolute: bool, stop: set[str]) -> dict[str, torch.Tensor]:
        """The network with ReLU gates fixed at x, without biases (|W| when absolute)."""
        run = _GatedRun(start, values, absolute)
        vals: dict[str, torch.Tensor] = {}
        for node in graph.nodes:
            if node.name in stop or any(i not in vals for i in node.inputs):
                continue  # the head (handled with C) and branches that hang off it
            ins = [vals[i] for i in node.inputs]
            vals[node.name] = _GATED_STEPS[node.op](run, node, cg.node_fn(node.name), ins)
        return vals

    def spec_rows(fn_out: torch.Tensor, wrt: list[torch.Tensor]) -> list[torch.Tensor]:
        """C times the Jacobian of the (linear) output w.r.t. each of ``wrt``: [B, k, ...]."""
        flat = fn_out.reshape(fn_out.shape[0], -1)
        rows: list[list[torch.Tensor]] = [[] for _ in wrt]
        for i in range(k):
            grads = torch.autograd.grad((flat * spec[:, i]).sum(), wrt, retain_graph=i < k - 1,
                                        allow_unused=True)
            for j, g in enumerate(grads):
                rows[j].append(torch.zeros_like(wrt[j]) if g is None else g)
        return [torch.stack(r, 1) for r in rows]

    with torch.enable_grad():
        # numerator: |C J(x)| e with J the gated network's Jacobian (exact for ReLU nets)
        z = torch.zeros_like(x, requires_grad=True)
        out = propagate(z, False, set())[graph.output]
        (cj,) = spec_rows(out, [z])
        numerator = (cj.abs() * e.unsqueeze(1)).flatten(2).sum(-1)
        # denominator: e through |W_1|, D_1, |W_2|, ... up to the frontier, then |C W_L|
        with torch.no_grad():
            absvals = propagate(e, True, set(head))
        if head:
            starts = {f: torch.zeros_like(absvals[f], requires_grad=True) for f in frontier}
            vals = dict(starts)
            linear_run = _GatedRun(None, values, absolute=False)  # the head has no input or ReLU
            for name in head:
                node = graph.by_name[name]
                ins = [vals[i] for i in node.inputs]
                vals[name] = _GATED_STEPS[node.op](linear_run, node, cg.node_fn(name), ins)
            c_heads = spec_rows(vals[graph.output], [starts[f] for f in frontier])
        else:
            c_heads = [spec.reshape(spec.shape[0], k, *absvals[graph.output].shape[1:])]
    denominator = sum((ch.abs() * absvals[f].unsqueeze(1)).flatten(2).sum(-1)
                      for f, ch in zip(frontier, c_heads, strict=True))
    assert isinstance(denominator, torch.Tensor)
    # a zero denominator means a zero-width propagated box: the bound is exact, tau = 1
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, numerator.detach() / safe, torch.ones_like(safe))


def propagation_tightness_per_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                     eps: float, batch_size: int = 100) -> torch.Tensor:
    """Mao et al.'s tau for every (input, margin f_y - f_i): [N, num_classes - 1], float64."""
    check_data(x, y)
    if not eps >= 0 or eps > 1:
        raise AnalysisError(f"eps must lie in [0, 1] (pixel units), got {eps}")
    model64 = float64_copy(model)
    x64 = x.detach().double().cpu()
    y = y.detach().long().cpu()
    prog = absdsl.compile(model64, domain="box", input_shape=tuple(x64.shape[1:]))
    cg = prog.concrete(tuple(x64.shape[1:]))
    graph = cg.graph
    _check_relu_graph(graph)
    n_out = num_outputs(model64, x64)
    check_labels(y, n_out)
    head, frontier = _head(graph)
    parts = [_tightness_batch(cg, graph, head, frontier, x64[s:s + batch_size],
                              y[s:s + batch_size], eps, n_out)
             for s in range(0, x64.shape[0], batch_size)]
    return torch.cat(parts)


def propagation_tightness(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                          eps: float) -> float:
    """Mao et al. (2024): tau = |C W_L D ... D W_1| e / (|C W_L| D |W_{L-1}| ... D |W_1| e).

    D_i = diag(1[pre-activation at the clean x > 0]), e the clipped half-width of the eps
    box, C the margin rows e_y - e_i; averaged over margins and inputs. Always in [0, 1]:
    1 means interval propagation is as tight as the network's own linear map at x.
    """
    return float(propagation_tightness_per_margin(model, x, y, eps).mean())
