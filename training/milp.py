"""Complete verification: the network on the input box as an exact MILP, solved by HiGHS.

The last stage of the certification cascade (see docs/verification.md; ``absdsl certify
--complete``). For an input the earlier stages left undecided, every margin f_y - f_i that
DeepPoly could not prove positive is minimised exactly over the clipped eps-ball:

* one block of variables per IR node; ``affine`` and ``add`` nodes are equality rows (the
  dense matrices come from :meth:`ConcreteGraph.affine_matrix`), ``reshape`` and ``cat``
  only relabel variables (flat C-order indices);
* ReLU y = max(x, 0) on pre-activation bounds [l, u]: y >= 0, y >= x, y <= u a,
  y <= x - l (1 - a), a binary; stable neurons (l >= 0 or u <= 0) need no binary.
  Leaky ReLU is a x + (1 - a) relu(x) and hardtanh is min + relu(x - min) - relu(x - max),
  so both reuse the ReLU encoding; sigmoid and tanh are not piecewise linear and are refused;
* l, u are DeepPoly's own intermediate bounds (refined by back-substitution), computed in
  float64, intersected with interval bounds, and widened outward by ``WIDEN_ABS + WIDEN_REL
  |b|`` so that rounding can never cut a real point out of the encoding.

One MILP per remaining class, most threatened class first (smallest DeepPoly bound), with an
early exit on a falsification. A margin is proved by HiGHS's dual bound (never the primal
value): it must exceed the cascade's tolerance. A solver point is a falsification only if the
float64 model, run forward on it (clipped into the box), really predicts another class.
HiGHS's own feasibility and integrality tolerances enlarge the feasible set, which can only
lower the optimum, so they err on the side of not certifying.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

import absdsl
from absdsl.compiler import ops as _ops
from absdsl.compiler.specs import margin_spec_full
from absdsl.errors import AbsdslError

from .certify import CertifyError, CertifyOptions, StageContext, register_stage
from .data import DatasetInfo

WIDEN_ABS = 1e-7  # outward widening of every intermediate bound (float64 rounding slack)
WIDEN_REL = 1e-7
CUTOFF_SLACK = 1e-5  # the cutoff row sits this far above the tolerance (a safety margin)
SMALL_COEFF = 1e-9  # HiGHS ignores matrix entries this small: we drop them ourselves, soundly
TINY_BOUND = 1e-6  # a ReLU with u or -l below this gets a binary-free (sound) relaxation
DEFAULT_TIME_LIMIT = 30.0  # seconds per input (all of its MILPs together)

# HiGHS status codes as scipy.optimize.milp reports them
_STATUS = {0: "optimal", 1: "limit", 2: "infeasible", 3: "unbounded", 4: "failed"}


class MilpError(CertifyError):
    """A network or an option the MILP stage cannot work with (named in the message)."""


#: the domain whose bounds tighten the encoding (big-M constants) and settle the margins it
#: proves before any MILP runs; such a margin's status is this name
BOUND_DOMAIN = "deeppoly"
#: margin statuses with no MILP solved: settled by the bounds, or skipped (time, a
#: counterexample already found)
_WITHOUT_MILP = (BOUND_DOMAIN, "not_run")


@dataclass
class MarginResult:
    """The minimum of one margin f_y - f_target over the box, as far as it was solved."""

    target: int
    # optimal | limit | above_cutoff | infeasible | unbounded | failed | deeppoly | not_run
    status: str
    lower: float  # a proven lower bound (HiGHS's dual bound or cutoff, DeepPoly's); -inf if none
    upper: float | None = None  # the primal objective: the margin at ``point``
    point: np.ndarray | None = None  # the solver's input (per-sample shape), clipped to the box
    seconds: float = 0.0
    nodes: int = 0

    @property
    def solved_by_milp(self) -> bool:
        """Whether a MILP was solved for this margin (not settled by the bounds, not skipped)."""
        return self.status not in _WITHOUT_MILP


@dataclass
class MilpOutcome:
    """What the MILP stage concluded about one input."""

    status: str  # certified | falsified | unknown
    margins: list[MarginResult]
    counterexample: torch.Tensor | None = None  # checked by a float64 forward pass
    seconds: float = 0.0
    binaries: int = 0  # unstable neurons encoded with a binary variable

    @property
    def lower(self) -> float:
        """A lower bound on min_i (f_y - f_i) over the box (-inf when some margin is open)."""
        return min((m.lower for m in self.margins), default=math.inf)


def decide(margins: list[MarginResult], tolerance: float, flipped: bool) -> str:
    """The input's outcome: a checked counterexample falsifies, proven margins certify."""
    if flipped:
        return "falsified"
    if margins and all(m.lower > tolerance for m in margins):
        return "certified"
    return "unknown"


def _widen(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (lo - WIDEN_ABS - WIDEN_REL * np.abs(lo),
            hi + WIDEN_ABS + WIDEN_REL * np.abs(hi))


def _numel(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


@dataclass
class _Encoding:
    """A MILP under construction: variables with bounds, sparse rows cl <= A v <= cu."""

    lb: list[np.ndarray] = field(default_factory=list)
    ub: list[np.ndarray] = field(default_factory=list)
    integer: list[np.ndarray] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    cols: list[np.ndarray] = field(default_factory=list)
    vals: list[np.ndarray] = field(default_factory=list)
    cl: list[np.ndarray] = field(default_factory=list)
    cu: list[np.ndarray] = field(default_factory=list)
    n_vars: int = 0
    n_rows: int = 0
    binaries: int = 0

    def variables(self, lo: np.ndarray, hi: np.ndarray, integer: bool = False) -> np.ndarray:
        n = lo.shape[0]
        idx = np.arange(self.n_vars, self.n_vars + n)
        self.n_vars += n
        self.lb.append(np.asarray(lo, dtype=np.float64))
        self.ub.append(np.asarray(hi, dtype=np.float64))
        self.integer.append(np.full(n, 1 if integer else 0, dtype=np.int8))
        return idx

    def add_rows(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                 cl: np.ndarray, cu: np.ndarray) -> None:
        """Rows numbered 0..len(cl)-1 locally; shifted to follow the rows already added."""
        self.rows.append(rows + self.n_rows)
        self.cols.append(cols)
        self.vals.append(vals)
        self.cl.append(cl)
        self.cu.append(cu)
        self.n_rows += cl.shape[0]

    def relu(self, x: np.ndarray, shift: np.ndarray, lo: np.ndarray, hi: np.ndarray,
             need: np.ndarray) -> np.ndarray:
        """Variables r = max(x + shift, 0), where [lo, hi] bounds x + shift (widened).

        Rows (and binaries) only where ``need``: the other r are never read.
        """
        r = self.variables(np.maximum(lo, 0.0), np.maximum(hi, 0.0))
        active = need & (lo >= 0)  # r = x + shift
        unstable = need & (lo < 0) & (hi > 0)
        # u < TINY_BOUND: r in [0, u] (its bounds) and r >= x + shift;
        # -l < TINY_BOUND: x + shift <= r <= x + shift - l. Sound relaxations within 1e-6 of
        # exact, and free of the tiny coefficients (u, l next to a binary) that HiGHS ignores.
        tiny_u = unstable & (hi < TINY_BOUND)
        tiny_l = unstable & ~tiny_u & (-lo < TINY_BOUND)
        unstable &= ~(tiny_u | tiny_l)
        n_act = int(active.sum())
        if n_act:
            k = np.arange(n_act)
            self.add_rows(np.concatenate([k, k]), np.concatenate([r[active], x[active]]),
                          np.concatenate([np.ones(n_act), -np.ones(n_act)]),
                          shift[active], shift[active])
        relaxed = tiny_u | tiny_l
        n_rel = int(relaxed.sum())
        if n_rel:
            k = np.arange(n_rel)
            upper = np.where(tiny_l[relaxed], shift[relaxed] - lo[relaxed], np.inf)
            self.add_rows(np.concatenate([k, k]), np.concatenate([r[relaxed], x[relaxed]]),
                          np.concatenate([np.ones(n_rel), -np.ones(n_rel)]),
                          shift[relaxed], upper)
        n_un = int(unstable.sum())
        if n_un:
            a = self.variables(np.zeros(n_un), np.ones(n_un), integer=True)
            self.binaries += n_un
            ru, xu, l, u, s = r[unstable], x[unstable], lo[unstable], hi[unstable], shift[unstable]
            k = np.arange(n_un)
            one = np.ones(n_un)
            # r - x >= s;  r - u a <= 0;  r - x - l a <= s - l   (row blocks k, k+n, k+2n)
            rows = np.concatenate([k, k, k + n_un, k + n_un, k + 2 * n_un, k + 2 * n_un,
                                   k + 2 * n_un])
            cols = np.concatenate([ru, xu, ru, a, ru, xu, a])
            vals = np.concatenate([one, -one, one, -u, one, -one, -l])
            cl = np.concatenate([s, np.full(n_un, -np.inf), np.full(n_un, -np.inf)])
            cu = np.concatenate([np.full(n_un, np.inf), np.zeros(n_un), s - l])
            self.add_rows(rows, cols, vals, cl, cu)
        return r  # dead neurons (hi <= 0): r is fixed to 0 by its bounds

    def equal(self, y: np.ndarray, terms: list[tuple[np.ndarray, float]], rhs: np.ndarray
              ) -> None:
        """Rows y - sum(c * v) = rhs, elementwise over the given variables."""
        n = y.shape[0]
        if n == 0:
            return
        k = np.arange(n)
        self.add_rows(np.concatenate([k] * (len(terms) + 1)),
                      np.concatenate([y] + [v for v, _ in terms]),
                      np.concatenate([np.ones(n)] + [np.full(n, -c) for _, c in terms]),
                      rhs, rhs)

    def build(self) -> tuple[np.ndarray, Bounds, LinearConstraint]:
        a = sparse.csr_array(
            (np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols))),
            shape=(self.n_rows, self.n_vars))
        bounds = Bounds(np.concatenate(self.lb), np.concatenate(self.ub))
        return (np.concatenate(self.integer), bounds,
                LinearConstraint(a, np.concatenate(self.cl), np.concatenate(self.cu)))


@dataclass
class _Problem:
    """One input's MILP, ready for one objective per margin."""

    integrality: np.ndarray
    bounds: Bounds
    constraints: LinearConstraint
    inputs: np.ndarray  # variable indices of the input node (flat)
    outputs: np.ndarray  # variable indices of the output node (flat)
    lo: np.ndarray  # the input box, flat
    hi: np.ndarray
    binaries: int


_Interval = tuple[np.ndarray, np.ndarray]  # flat (lower, upper) bounds of a node


@dataclass
class _EncodeState:
    """What the encoding steps share: the MILP so far, the input box, the node bounds, the
    needed neurons and every encoded node's variable indices (flat)."""

    enc: _Encoding
    lo: np.ndarray
    hi: np.ndarray
    bounds: dict[str, _Interval]
    need: dict[str, np.ndarray]
    var: dict[str, np.ndarray]


class NetworkMilp:
    """Exact MILP encodings of a piecewise-linear network, input box by input box."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.model = copy.deepcopy(model).double().cpu().eval()
        self.input_shape = tuple(input_shape)
        self.prog = absdsl.compile(self.model, domain=BOUND_DOMAIN,
                                   input_shape=self.input_shape)
        # max pooling as its ReLU decomposition (back-substitution bounds it as one op)
        self.cg = self.prog.concrete(self.input_shape).without_max()
        graph = self.cg.graph
        for node in graph.nodes:
            if node.op not in SUPPORTED_OPS:
                where = f" ({node.origin})" if node.origin else ""
                info = _ops.OPS.get(node.op)
                linear = info is not None and info.piecewise_linear
                what = ("is piecewise linear but has no MILP encoding yet" if linear
                        else "is not piecewise linear")
                raise MilpError(
                    f"the MILP stage (--complete) encodes piecewise-linear networks only: node "
                    f"%{node.name}{where} is {node.op}, which {what}; supported ops: "
                    f"{', '.join(SUPPORTED_OPS)}")
        self.nodes = graph.nodes
        self.output = graph.output
        self.input_name = next(n.name for n in graph.nodes if n.kind == "input")
        self.num_outputs = _numel(graph.by_name[graph.output].shape)
        # per affine node: (W without its tiny entries, |W| in full, b); the tiny entries'
        # |W| apart, to widen the rows by what leaving them out can change
        self._affine: dict[str, tuple[sparse.csr_array, sparse.csr_array, np.ndarray]] = {}
        self._small: dict[str, sparse.csr_array] = {}
        for node in self.nodes:
            if node.kind == "affine":
                w, b = self.cg.affine_matrix(node.name)
                w_np = w.detach().cpu().numpy().astype(np.float64)
                small = np.abs(w_np) <= SMALL_COEFF
                self._small[node.name] = sparse.csr_array(np.where(small, np.abs(w_np), 0.0))
                ws = sparse.csr_array(np.where(small, 0.0, w_np))
                self._affine[node.name] = (ws, sparse.csr_array(np.abs(w_np)),
                                           b.detach().cpu().numpy().astype(np.float64))

    # -- bounds ------------------------------------------------------------------------
    def node_bounds(self, lo: torch.Tensor, hi: torch.Tensor
                    ) -> list[dict[str, tuple[np.ndarray, np.ndarray]]]:
        """Per input: every node's flat (l, u), widened; DeepPoly's where it bounds a node."""
        lo, hi = lo.double(), hi.double()
        with torch.no_grad():
            deeppoly = self.prog.intermediate_bounds(lo, hi)
        dp = {k: (v[0].reshape(lo.shape[0], -1).numpy(), v[1].reshape(lo.shape[0], -1).numpy())
              for k, v in deeppoly.items()}
        lo_np = lo.reshape(lo.shape[0], -1).numpy()
        hi_np = hi.reshape(hi.shape[0], -1).numpy()
        out = []
        for j in range(lo.shape[0]):
            b: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for node in self.nodes:
                nl, nu = self._box(node, b, lo_np[j], hi_np[j])
                if node.name in dp:
                    nl = np.maximum(nl, dp[node.name][0][j])
                    nu = np.minimum(nu, dp[node.name][1][j])
                if node.kind != "input":
                    nl, nu = _widen(nl, nu)
                    nu = np.maximum(nu, nl)
                b[node.name] = (nl, nu)
            out.append(b)
        return out

    def _box(self, node: Any, b: dict[str, tuple[np.ndarray, np.ndarray]],
             lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interval bounds of ``node`` from its inputs' bounds (sound, before widening)."""
        return _STEPS[node.op].box(self, node, [b[i] for i in node.inputs], lo, hi)

    def _box_affine(self, node: Any, ins: list[_Interval], lo: np.ndarray, hi: np.ndarray
                    ) -> _Interval:
        w, w_abs, bias = self._affine[node.name]
        (l, u) = ins[0]
        c, r = (u + l) / 2, (u - l) / 2
        # the tiny entries left out of w move the centre by at most |w_small| |c|
        c2, r2 = w @ c + bias, w_abs @ r + self._small[node.name] @ np.abs(c)
        return c2 - r2, c2 + r2

    def _box_cat(self, node: Any, ins: list[_Interval], lo: np.ndarray, hi: np.ndarray
                 ) -> _Interval:
        idx = self._cat_index(node, [np.arange(v[0].shape[0]) for v in ins],
                              [0] + list(np.cumsum([v[0].shape[0] for v in ins])[:-1]))
        lows = np.concatenate([v[0] for v in ins])
        highs = np.concatenate([v[1] for v in ins])
        return lows[idx], highs[idx]

    def _box_activation(self, node: Any, ins: list[_Interval], lo: np.ndarray,
                        hi: np.ndarray) -> _Interval:
        """f at both ends and at every kink inside: f is linear between them."""
        (l, u) = ins[0]
        act, p = _ACTIVATIONS[node.op], node.attrs.get("params", {})
        candidates = [act.apply(p, l), act.apply(p, u)]
        candidates += [act.apply(p, np.clip(k, l, u)) for k in act.kinks(p)]
        return np.minimum.reduce(candidates), np.maximum.reduce(candidates)

    def _cat_index(self, node: Any, parts: list[np.ndarray], offsets: list[int]) -> np.ndarray:
        """Flat index into the concatenated inputs for each flat output position."""
        shapes = [self.cg.graph.by_name[i].shape for i in node.inputs]
        tensors = [torch.from_numpy(p + off).reshape(s)
                   for p, off, s in zip(parts, offsets, shapes, strict=True)]
        return torch.cat(tensors, node.attrs["dim"]).reshape(-1).numpy()

    # -- encoding ----------------------------------------------------------------------
    def needed(self, bounds: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
        """Per node, the neurons the output depends on (a dead ReLU cuts the dependence).

        Rows are written only for needed neurons: the rest of the network cannot change the
        objective, so leaving it out keeps the MILP exact and makes it much smaller.
        """
        need = {n.name: np.zeros(_numel(n.shape), dtype=bool) for n in self.nodes}
        need[self.output][:] = True
        for node in reversed(self.nodes):
            if need[node.name].any():
                _STEPS[node.op].need(self, node, need, bounds)
        return need

    def _need_affine(self, node: Any, need: dict[str, np.ndarray],
                     bounds: dict[str, _Interval]) -> None:
        w = self._affine[node.name][0]
        cols = w[np.flatnonzero(need[node.name])].tocoo().col
        need[node.inputs[0]][cols] = True

    def _need_cat(self, node: Any, need: dict[str, np.ndarray],
                  bounds: dict[str, _Interval]) -> None:
        sizes = [need[i].shape[0] for i in node.inputs]
        offsets = [0] + list(np.cumsum(sizes)[:-1])
        where = self._cat_index(node, [np.arange(n) for n in sizes], offsets)[need[node.name]]
        for i, off, n in zip(node.inputs, offsets, sizes, strict=True):
            sel = where[(where >= off) & (where < off + n)] - off
            need[i][sel] = True

    def encode(self, lo: np.ndarray, hi: np.ndarray,
               bounds: dict[str, tuple[np.ndarray, np.ndarray]]) -> _Problem:
        """The MILP of the network on the box [lo, hi] (flat float64) with node bounds."""
        state = _EncodeState(_Encoding(), lo, hi, bounds, self.needed(bounds), {})
        for node in self.nodes:
            state.var[node.name] = _STEPS[node.op].encode(self, node, state)
        enc = state.enc
        integrality, bnds, cons = enc.build()
        return _Problem(integrality, bnds, cons, state.var[self.input_name],
                        state.var[self.output], lo, hi, enc.binaries)

    def _encode_affine(self, node: Any, state: _EncodeState) -> np.ndarray:
        w, _, bias = self._affine[node.name]
        y = state.enc.variables(*state.bounds[node.name])
        rows = np.flatnonzero(state.need[node.name])
        coo = w[rows].tocoo()
        x = state.var[node.inputs[0]]
        n = rows.shape[0]
        xl, xu = state.bounds[node.inputs[0]]
        slack = self._small[node.name][rows] @ np.maximum(np.abs(xl), np.abs(xu))
        # y - W x = b for the needed rows (a range of width 2 slack if W had tiny
        # entries, which are left out)
        state.enc.add_rows(np.concatenate([np.arange(n), coo.row]),
                           np.concatenate([y[rows], x[coo.col]]),
                           np.concatenate([np.ones(n), -coo.data]),
                           bias[rows] - slack, bias[rows] + slack)
        return y

    def _encode_cat(self, node: Any, state: _EncodeState) -> np.ndarray:
        return self._cat_index(node, [state.var[i] for i in node.inputs], [0] * len(node.inputs))

    # -- solving -----------------------------------------------------------------------
    def solve_margin(self, problem: _Problem, label: int, target: int, time_limit: float,
                     node_limit: int | None = None, cutoff: float | None = None
                     ) -> MarginResult:
        """Minimise f_label - f_target; the dual bound is the proof, the primal a candidate.

        With ``cutoff``, the row ``f_label - f_target <= cutoff`` is added: HiGHS then prunes
        every branch whose bound exceeds it, and infeasibility proves the margin > cutoff
        (status ``above_cutoff``, lower bound ``cutoff``). Much faster when the margin holds.
        """
        c = np.zeros(problem.integrality.shape[0])
        c[problem.outputs[label]] += 1.0
        c[problem.outputs[target]] -= 1.0
        constraints = problem.constraints
        if cutoff is not None:
            a = sparse.vstack([constraints.A, sparse.csr_array(c[None, :])]).tocsr()
            constraints = LinearConstraint(a, np.append(constraints.lb, -np.inf),
                                           np.append(constraints.ub, cutoff))
        options: dict[str, Any] = {"disp": False, "presolve": True,
                                   "time_limit": max(float(time_limit), 1e-3)}
        if node_limit is not None:
            options["node_limit"] = int(node_limit)
        start = time.perf_counter()
        res = milp(c, integrality=problem.integrality, bounds=problem.bounds,
                   constraints=constraints, options=options)
        seconds = time.perf_counter() - start
        status = _STATUS.get(int(res.status), "failed")
        lower = -math.inf
        dual = getattr(res, "mip_dual_bound", None)
        if status == "infeasible" and cutoff is not None:
            status, lower = "above_cutoff", float(cutoff)
        elif dual is not None and math.isfinite(float(dual)) and status in ("optimal", "limit"):
            lower = float(dual)
        elif status == "optimal" and res.fun is not None and not bool(problem.integrality.any()):
            lower = float(res.fun)  # a pure LP solved to optimality: its value is the bound
        upper = point = None
        if res.x is not None:
            upper = float(res.fun)
            point = np.clip(np.asarray(res.x)[problem.inputs], problem.lo, problem.hi)
            point = point.reshape(self.input_shape)
        nodes = int(getattr(res, "mip_node_count", 0) or 0)
        return MarginResult(target, status, lower, upper, point, seconds, nodes)

    def with_leaf_bounds(self, bounds: dict[str, tuple[np.ndarray, np.ndarray]],
                         leaf: dict[str, tuple[np.ndarray, np.ndarray]]
                         ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``bounds`` (of :meth:`node_bounds`) intersected with a sub-domain's bounds of some
        nodes (branch and bound's, flat, from a float program): those are widened first,
        like every bound the encoding reads."""
        out = dict(bounds)
        for name, (lo, hi) in leaf.items():
            if name in out:
                wl, wu = _widen(np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64))
                nl, nu = np.maximum(out[name][0], wl), np.minimum(out[name][1], wu)
                out[name] = (nl, np.maximum(nu, nl))
        return out

    def flips(self, point: np.ndarray, label: int) -> bool:
        """Does the float64 model, run forward on ``point``, predict another class?"""
        with torch.no_grad():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(point))
                                .double().unsqueeze(0))
        return int(logits.argmax(1)[0]) != label

    def deeppoly_margins(self, lo: torch.Tensor, hi: torch.Tensor, labels: torch.Tensor
                         ) -> np.ndarray:
        """[B, num_classes] DeepPoly lower bounds on f_y - f_i in float64 (+inf at i = y)."""
        spec = margin_spec_full(labels, self.num_outputs).double()
        with torch.no_grad():
            lb, _ = self.prog(lo.double(), hi.double(), spec=spec)
        out = lb.numpy().copy()
        out[np.arange(labels.shape[0]), labels.numpy()] = np.inf
        return out

    def min_margins(self, lo: torch.Tensor, hi: torch.Tensor, label: int,
                    time_limit: float = DEFAULT_TIME_LIMIT) -> list[MarginResult]:
        """Every margin f_label - f_i (i != label) minimised over one box [1, *shape]."""
        bounds = self.node_bounds(lo, hi)[0]
        problem = self.encode(lo.double().reshape(-1).numpy(), hi.double().reshape(-1).numpy(),
                              bounds)
        return [self.solve_margin(problem, label, i, time_limit)
                for i in range(self.num_outputs) if i != label]

    def verify(self, lo: torch.Tensor, hi: torch.Tensor, label: int, tolerance: float,
               time_limit: float, bounds: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
               deeppoly: np.ndarray | None = None, node_limit: int | None = None,
               cutoff: bool = True) -> MilpOutcome:
        """Decide one box [1, *shape]: certified, falsified (checked) or unknown.

        ``cutoff`` (default) asks HiGHS only whether some point has a margin <= tolerance +
        CUTOFF_SLACK, instead of for the exact minimum.
        """
        start = time.perf_counter()
        labels = torch.tensor([label])
        if deeppoly is None:
            deeppoly = self.deeppoly_margins(lo, hi, labels)[0]
        if bounds is None:
            bounds = self.node_bounds(lo, hi)[0]
        margins = [MarginResult(i, BOUND_DOMAIN, float(deeppoly[i]))
                   for i in range(self.num_outputs) if i != label and deeppoly[i] > tolerance]
        open_classes = sorted((i for i in range(self.num_outputs)
                               if i != label and not deeppoly[i] > tolerance),
                              key=lambda i: float(deeppoly[i]))
        if not open_classes:
            return MilpOutcome(decide(margins, tolerance, False), margins,
                               seconds=time.perf_counter() - start)
        problem = self.encode(lo.double().reshape(-1).numpy(), hi.double().reshape(-1).numpy(),
                              bounds)
        counterexample = None
        for target in open_classes:
            left = time_limit - (time.perf_counter() - start)
            if counterexample is not None or left <= 0:
                margins.append(MarginResult(target, "not_run", -math.inf))
                continue
            result = self.solve_margin(problem, label, target, left, node_limit,
                                       tolerance + CUTOFF_SLACK if cutoff else None)
            margins.append(result)
            if result.point is not None and self.flips(result.point, label):
                counterexample = torch.from_numpy(result.point.copy())
        status = decide(margins, tolerance, counterexample is not None)
        return MilpOutcome(status, sorted(margins, key=lambda m: m.target), counterexample,
                           time.perf_counter() - start, problem.binaries)


# -- the activations the encoder handles, one entry each --------------------------------
@dataclass(frozen=True)
class _Activation:
    """A piecewise-linear activation y = f(x): its values, kinks, live neurons and MILP."""

    apply: Callable[[_ops.Params, np.ndarray], np.ndarray]  # f per neuron, float64
    kinks: Callable[[_ops.Params], tuple[float, ...]]  # where f bends: f is linear between
    # the neurons whose output depends on x, given the pre-activation bounds (l, u)
    live: Callable[[_ops.Params, np.ndarray, np.ndarray], np.ndarray]
    # exact encoding: (enc, params, x, l, u, y bounds, needed neurons) -> y's variables
    encode: Callable[[_Encoding, _ops.Params, np.ndarray, np.ndarray, np.ndarray, _Interval,
                      np.ndarray], np.ndarray]


def _encode_relu(enc: _Encoding, p: _ops.Params, x: np.ndarray, l: np.ndarray, u: np.ndarray,
                 y_bounds: _Interval, need: np.ndarray) -> np.ndarray:
    return enc.relu(x, np.zeros(x.shape[0]), l, u, need)


def _encode_leaky_relu(enc: _Encoding, p: _ops.Params, x: np.ndarray, l: np.ndarray,
                       u: np.ndarray, y_bounds: _Interval, need: np.ndarray) -> np.ndarray:
    y = enc.variables(*y_bounds)
    alpha = float(p["negative_slope"])
    r = enc.relu(x, np.zeros(x.shape[0]), l, u, need)
    # y = alpha x + (1 - alpha) relu(x)
    enc.equal(y[need], [(x[need], alpha), (r[need], 1.0 - alpha)], np.zeros(int(need.sum())))
    return y


def _encode_hardtanh(enc: _Encoding, p: _ops.Params, x: np.ndarray, l: np.ndarray,
                     u: np.ndarray, y_bounds: _Interval, need: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    y = enc.variables(*y_bounds)
    lo_v, hi_v = float(p["min_val"]), float(p["max_val"])
    r1 = enc.relu(x, np.full(n, -lo_v), l - lo_v, u - lo_v, need)
    r2 = enc.relu(x, np.full(n, -hi_v), l - hi_v, u - hi_v, need)
    # y = min + relu(x - min) - relu(x - max)
    enc.equal(y[need], [(r1[need], 1.0), (r2[need], -1.0)], np.full(int(need.sum()), lo_v))
    return y


_ACTIVATIONS: dict[str, _Activation] = {
    "relu": _Activation(
        apply=lambda p, x: np.maximum(x, 0.0), kinks=lambda p: (0.0,),
        live=lambda p, l, u: u > 0, encode=_encode_relu),
    "leaky_relu": _Activation(
        apply=lambda p, x: np.where(x >= 0, x, p["negative_slope"] * x), kinks=lambda p: (0.0,),
        live=lambda p, l, u: np.ones(l.shape, dtype=bool), encode=_encode_leaky_relu),
    "hardtanh": _Activation(
        apply=lambda p, x: np.clip(x, p["min_val"], p["max_val"]),
        kinks=lambda p: (0.0, p["min_val"], p["max_val"]),
        live=lambda p, l, u: (u > p["min_val"]) & (l < p["max_val"]), encode=_encode_hardtanh),
}


# -- one step per IR op, for each pass over the graph (like a torch.fx Interpreter) ------
@dataclass(frozen=True)
class _Step:
    """How each pass of :class:`NetworkMilp` handles one op: interval bounds (forward), the
    needed neurons (backward, marks the inputs' neurons) and the encoding (forward)."""

    box: Callable[[NetworkMilp, Any, list[_Interval], np.ndarray, np.ndarray], _Interval]
    need: Callable[[NetworkMilp, Any, dict[str, np.ndarray], dict[str, _Interval]], None]
    encode: Callable[[NetworkMilp, Any, _EncodeState], np.ndarray]


def _need_all_inputs(net: NetworkMilp, node: Any, need: dict[str, np.ndarray],
                     bounds: dict[str, _Interval]) -> None:
    for i in node.inputs:
        need[i] |= need[node.name]


def _need_activation(net: NetworkMilp, node: Any, need: dict[str, np.ndarray],
                     bounds: dict[str, _Interval]) -> None:
    l, u = bounds[node.inputs[0]]
    live = _ACTIVATIONS[node.op].live(node.attrs.get("params", {}), l, u)
    need[node.inputs[0]] |= need[node.name] & live


def _encode_add(net: NetworkMilp, node: Any, state: _EncodeState) -> np.ndarray:
    y = state.enc.variables(*state.bounds[node.name])
    mine = state.need[node.name]
    a, c = state.var[node.inputs[0]], state.var[node.inputs[1]]
    state.enc.equal(y[mine], [(a[mine], 1.0), (c[mine], 1.0)], np.zeros(int(mine.sum())))
    return y


def _encode_activation(net: NetworkMilp, node: Any, state: _EncodeState) -> np.ndarray:
    l, u = state.bounds[node.inputs[0]]
    return _ACTIVATIONS[node.op].encode(state.enc, node.attrs.get("params", {}),
                                        state.var[node.inputs[0]], l, u,
                                        state.bounds[node.name], state.need[node.name])


_STRUCTURAL_STEPS: dict[str, _Step] = {
    "input": _Step(box=lambda net, node, ins, lo, hi: (lo.copy(), hi.copy()),
                   need=lambda net, node, need, bounds: None,
                   encode=lambda net, node, state: state.enc.variables(state.lo, state.hi)),
    "affine": _Step(NetworkMilp._box_affine, NetworkMilp._need_affine,
                    NetworkMilp._encode_affine),
    "add": _Step(box=lambda net, node, ins, lo, hi: (ins[0][0] + ins[1][0],
                                                      ins[0][1] + ins[1][1]),
                 need=_need_all_inputs, encode=_encode_add),
    "cat": _Step(NetworkMilp._box_cat, NetworkMilp._need_cat, NetworkMilp._encode_cat),
    "reshape": _Step(box=lambda net, node, ins, lo, hi: ins[0], need=_need_all_inputs,
                     encode=lambda net, node, state: state.var[node.inputs[0]]),
}
# the op table's structural ops and the activations encoded above (max pooling reaches the
# encoder as its ReLU decomposition, see compiler/lowering.py)
_STEPS: dict[str, _Step] = {
    **{op.name: _STRUCTURAL_STEPS[op.name] for op in _ops.STRUCTURAL},
    **{name: _Step(NetworkMilp._box_activation, _need_activation, _encode_activation)
       for name in _ACTIVATIONS},
}
SUPPORTED_OPS = tuple(_STEPS)


def check_time_limit(seconds: float) -> float:
    """The per-input time limit must be a positive number of seconds (not NaN, not a bool)."""
    if isinstance(seconds, bool) or not (isinstance(seconds, (int, float)) and seconds > 0):
        raise MilpError(f"--milp-time-limit must be a positive number of seconds, got {seconds}")
    return float(seconds)


class MilpStage:
    """The cascade's ``milp`` stage: exact MILPs for the inputs still pending."""

    name = "milp"

    def __init__(self, model: nn.Module, info: DatasetInfo, options: CertifyOptions) -> None:
        self.time_limit = check_time_limit(getattr(options, "milp_time_limit",
                                                   DEFAULT_TIME_LIMIT))
        try:
            self.milp = NetworkMilp(model, tuple(info.shape))
        except MilpError:
            raise
        except AbsdslError as err:
            raise MilpError(f"the MILP stage cannot encode this model: {err}") from err
        self.stats: list[dict[str, Any]] = []  # one entry per input this stage ran on

    def run(self, ctx: StageContext) -> None:
        idx = ctx.pending()
        if idx.numel() == 0:
            return
        eps, tol = ctx.options.eps, ctx.options.tolerance
        x, y = ctx.x[idx], ctx.y[idx]
        lo = torch.clamp(x - eps, 0.0, 1.0)  # the same clipped ball as the bound stages
        hi = torch.clamp(x + eps, 0.0, 1.0)
        deeppoly = self.milp.deeppoly_margins(lo, hi, y)
        bounds = self.milp.node_bounds(lo, hi)
        for j, i in enumerate(idx.tolist()):
            outcome = self.milp.verify(lo[j:j + 1], hi[j:j + 1], int(y[j]), tol,
                                       self.time_limit, bounds[j], deeppoly[j])
            rec = ctx.records[i]
            if math.isfinite(outcome.lower):
                rec.margin_lower[self.name] = outcome.lower
            if outcome.status != "unknown":
                rec.status, rec.stage = outcome.status, self.name
            self.stats.append({
                "index": rec.index, "status": outcome.status, "seconds": outcome.seconds,
                "binaries": outcome.binaries,
                "milps": sum(1 for m in outcome.margins if m.solved_by_milp),
            })


register_stage("milp", MilpStage)


def polytope_problem(problem: _Problem, a: np.ndarray, b: np.ndarray, cutoff: float
                     ) -> tuple[np.ndarray, np.ndarray, Bounds, LinearConstraint]:
    """``min t`` over the network's encoding with ``A y - t <= b`` and ``t <= cutoff``:
    infeasible (or an optimum above the tolerance) proves that no output of the encoded set
    reaches the polytope ``A y <= b``. Returns (c, integrality, bounds, constraints) for
    ``scipy.optimize.milp``; the last variable is ``t``."""
    n = problem.integrality.shape[0]
    m = a.shape[0]
    cons = problem.constraints
    a_net = sparse.hstack([cons.A, sparse.csr_array((cons.A.shape[0], 1))])
    rows = sparse.lil_array((m + 1, n + 1))
    for i in range(m):
        for j in np.flatnonzero(a[i]):
            rows[i, int(problem.outputs[j])] = float(a[i, j])
        rows[i, n] = -1.0
    rows[m, n] = 1.0
    full = sparse.vstack([a_net, rows.tocsr()]).tocsr()
    lb = np.concatenate([cons.lb, np.full(m, -np.inf), [-np.inf]])
    ub = np.concatenate([cons.ub, b, [cutoff]])
    bounds = Bounds(np.append(problem.bounds.lb, -np.inf), np.append(problem.bounds.ub, np.inf))
    c = np.zeros(n + 1)
    c[n] = 1.0
    return c, np.append(problem.integrality, 0), bounds, LinearConstraint(full, lb, ub)
