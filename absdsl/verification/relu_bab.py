"""Branch and bound on ReLU phases: the complete stage for networks with many inputs (MNIST FC).

The input box stays whole; a sub-problem fixes the phase of some unstable ReLU neurons
(active: pre-activation ``>= 0``; inactive: ``<= 0``). Every sub-problem carries the best
pre-activation bounds known for it: its parent's, intersected with its own phase
constraints. Those go to the compiled program as the call context's ``splits``
(:attr:`absdsl.compiler.context.Context.splits`): each bound program intersects a node's
bounds with them where it computes them, before relaxing and before they feed later layers,
so a split neuron is relaxed exactly (``y = x`` or ``y = 0``), and later layers' bounds
shrink with it. The bounds are sound for the sub-domain ``{x in box : phases hold}``.

Each round takes a batch of open sub-problems (the same box repeated along the batch axis,
different splits) and bounds every output row of the polytopes still open over all of them
in ONE call per evaluation. The root: CROWN-IBP, then alpha-beta-CROWN (``alpha-beta-crown``:
DeepPoly whose ReLU slopes are parameters, intermediate bounds refined and optimised too,
``ALPHA_STEPS`` projected Adam steps). Every deeper sub-problem: ``alpha-beta-crown-ibp``
(the same relaxation; intermediate bounds are the ones it carries, intersected with Box's, as
beta-CROWN keeps its parent's) with ``WARM_STEPS`` steps started from its parent's values.
beta-CROWN's multiplier of a split is the split neuron's slope on its stable side (see the
domain file): only split neurons' stable slopes move. A sub-problem leaves the optimisation as
soon as it is refuted. A polytope
is refuted on a sub-problem as in :mod:`absdsl.verification.bab` (the certification
threshold of ``absdsl certify``, with the magnitude M taken over the sub-problem's box, its
activation bounds and its row bounds); a sub-problem whose clamped bounds cross (``l > u``
by more than that threshold) is empty, so proved. A sub-problem still open is split on the
neuron with the largest estimated gain: the gradient (through the compiled program) of the
open polytopes' best row bounds with respect to the neuron's bounds, times the move a split
makes (``-l`` for active, ``u`` for inactive), a first-order estimate of BaBSR's score that
also counts later layers. Each round also runs PGD with random restarts on the whole box for
a ``sat`` witness (the caller's ``confirm`` re-checks it in float64 and onnxruntime).

``unsat`` only when every leaf is proved; a leaf with no unstable neuron left but an open
polytope (its relaxation is exact, but the phase constraints are not used as constraints)
leaves the answer ``unknown``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import absdsl
from absdsl.dsl.loader import builtin_path
from absdsl.errors import AbsdslError
from absdsl.training.certify import REL_TOLERANCE
from absdsl.verification.bab import stack_polytopes, violations
from absdsl.verification.relu_bab_tree import (
    Bounds,
    Warm,
    children_warm,
    pop_subproblems,
    scatter_warm,
    split_children,
    warm_bytes,
)

RELU_BAB_DOMAINS = ("crown-ibp", "alpha-beta-crown", "alpha-beta-crown-ibp")
#: the domains that are no built-in name: (file, domain inside it)
_INNER_DOMAINS = {"alpha-beta-crown-ibp": ("alpha-beta-crown.absd", "AlphaBetaCrownIbp")}
FULL_DEPTH = 0  # alpha-beta-CROWN refines (and optimises) intermediate bounds this deep;
#               deeper sub-problems keep their carried ones (alpha-beta-crown-ibp)
ALPHA_STEPS = 8  # Adam steps at the root (intermediate bounds refined: the costly evaluation)
WARM_STEPS = 5  # ... and on one that starts from its parent's optimised values
OPT_LR = 0.1  # Adam's step on the slopes (ranges of width 1 to 2), decayed per step
OPT_LR_DECAY = 0.95
ADAM_BETAS = (0.9, 0.999)
#: alpha-beta-crown's stable-case slopes (beta-CROWN's multipliers): they move on split
#: neurons only (freed on every stable neuron they made the bounds worse, measured)
BETA_PARAMS = ("active_lower", "active_upper", "inactive_lower", "inactive_upper")
WARM_BYTES = 256 * 2**20  # children inherit their parent's values while the stack holds less
MAX_OPEN = 200_000  # more open sub-problems than this ends the search as unknown (memory)
LEAF_UNSTABLE = 6  # a sub-problem with at most this many unstable ReLUs goes to the MILP
LEAF_SECONDS = 2.0  # HiGHS's time per leaf question
FSB_CANDIDATES = 8  # filtered smart branching: children of this many top neurons bounded
TARGET_CALL_SECONDS = 2.0  # the batch adapts so that one round takes about this long
#: PGD restarts per round: rounds of 2 s (not 0.5 s) attack four times as hard each, so that
#: the attack's effort per second stays what it was
ATTACK_RESTARTS = 32

#: relaxation parameter values per sub-problem: ``Context.relax_params`` with a batch axis


@dataclass
class ReluBranchRecord:
    """One bounded sub-problem (for tests): its phases, bounds and row lower bounds."""

    phases: dict[str, torch.Tensor]  # node -> [n] int8: +1 active, -1 inactive, 0 free
    bounds: dict[str, tuple[torch.Tensor, torch.Tensor]]  # node -> (l, u) [n] it proved
    lower: torch.Tensor  # [rows]
    domain: str
    infeasible: bool


@dataclass
class ReluBabOutcome:
    status: str  # unsat | sat | unknown | timeout
    witness: Any = None
    branches: int = 0  # sub-problems bounded (one per domain call it took part in counted once)
    leaves: int = 0  # sub-problems closed by a bound
    infeasible: int = 0  # of which closed because their phases cannot hold together
    exhausted: int = 0  # open leaves with no unstable neuron left
    splits: int = 0
    max_depth: int = 0
    refuted_by: dict[str, int] = field(default_factory=dict)
    note: str = ""


def bound_with_splits(prog: Any, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor,
                      splits: Bounds, upper: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor | None, Bounds]:
    """``prog``'s bounds of ``spec`` on ``[lo, hi]`` with the call context's ``splits`` set
    (node -> per-element clamps): (lower, upper or None, the pre-activation bounds it used,
    flat); :meth:`BoundProgram.bounds_with_splits` with the record returned."""
    record: Bounds = {}
    lb, ub = prog.bounds_with_splits(lo, hi, spec, splits, upper=upper, record=record)
    return lb, ub, record


def compile_domain(model: nn.Module, name: str, input_shape: tuple[int, ...]) -> Any:
    """A program of one of :data:`RELU_BAB_DOMAINS` (a built-in name, or a domain of a
    built-in file that the search alone uses)."""

    inner = _INNER_DOMAINS.get(name)
    spec = name if inner is None else f"{builtin_path(inner[0])}:{inner[1]}"
    return absdsl.compile(model, spec, input_shape=input_shape)


def relu_nodes(prog: Any, input_shape: tuple[int, ...]) -> list[str]:
    """Pre-activation nodes read only by ReLUs: the neurons a split can fix exactly."""
    graph = prog.concrete(tuple(input_shape)).graph
    readers: dict[str, set[str]] = {}
    for node in graph.nodes:
        for i in node.inputs:
            readers.setdefault(i, set()).add(node.op if node.kind == "elementwise" else "")
    return [name for name, ops in readers.items() if ops == {"relu"}]


def _magnitude(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per batch element, the largest absolute value among ``tensors`` (NaN: infinite)."""
    mags = []
    for t in tensors:
        flat = t.detach().reshape(t.shape[0], -1).abs()
        flat = torch.where(torch.isnan(flat), torch.full_like(flat, math.inf), flat)
        mags.append(flat.max(1).values if flat.shape[1] else torch.zeros(t.shape[0],
                                                                         dtype=flat.dtype))
    return torch.stack(mags, 1).max(1).values


@dataclass
class _AdamState:
    """What one ascent step of ``ReluBab._optimise`` reads and updates."""

    store: Warm
    moments: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]
    touched: set[tuple[str, str]]
    live: torch.Tensor
    step: int
    lr: float


#: Where in the search tree each of the search's own domains bounds sub-problems.
_DEPTH_ROLES = {"alpha-beta-crown": "near the root", "crown-ibp": "near the root",
                "alpha-beta-crown-ibp": "below the root"}

class ReluBab:
    """ReLU-splitting branch and bound for one case (box + polytopes) on a float64 model."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...],
                 polytopes: Sequence[Any], tolerance: float, left: Callable[[], float],
                 confirm: Callable[[int, np.ndarray], Any], *, seed: int = 0,
                 domains: Sequence[str] = RELU_BAB_DOMAINS, batch: int = 16,
                 attack_restarts: int = ATTACK_RESTARTS,
                 attack_steps: int = 10, record: list[ReluBranchRecord] | None = None,
                 programs: dict[str, Any] | None = None, candidates: int = FSB_CANDIDATES,
                 leaf_unstable: int = LEAF_UNSTABLE, rel_tolerance: float | None = None,
                 alpha_steps: int = ALPHA_STEPS, warm_steps: int = WARM_STEPS,
                 lr: float = OPT_LR, lr_decay: float = OPT_LR_DECAY,
                 warm_bytes: int = WARM_BYTES, full_depth: int = FULL_DEPTH) -> None:

        self.model = model
        self.input_shape = tuple(input_shape)
        self.tol = tolerance
        self.rel = REL_TOLERANCE if rel_tolerance is None else float(rel_tolerance)
        self.left = left
        self.confirm = confirm
        self.record = record
        self.batch = max(1, int(batch))
        self.candidates = self.max_candidates = max(1, int(candidates))
        self.leaf_unstable = int(leaf_unstable)
        self.alpha_steps = max(0, int(alpha_steps))
        self.warm_steps = max(0, int(warm_steps))
        self.lr, self.lr_decay = float(lr), float(lr_decay)
        self.warm_bytes = int(warm_bytes)
        self._encoder: Any = None  # the exact encoding for leaves (made when first needed)
        self._root_bounds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.attack_restarts = max(0, int(attack_restarts))
        self.attack_steps = max(1, int(attack_steps))
        self.gen = torch.Generator().manual_seed(seed)
        self.rows_of, self.A, self.b, self.b_max = stack_polytopes(polytopes)
        self.poly_of_row = torch.zeros(self.A.shape[0], dtype=torch.long)
        for k, s in enumerate(self.rows_of):
            self.poly_of_row[s] = k
        self.full_depth = int(full_depth)
        self.progs: list[tuple[str, Any]] = []
        for name in domains:
            try:
                prog = (programs or {}).get(name) or compile_domain(model, name,
                                                                    self.input_shape)
                if not self.progs:
                    self.splittable = relu_nodes(prog, self.input_shape)
                    graph = prog.ir
                    #: activation node -> its pre-activation node (the split neurons' slopes)
                    self.act_inputs = {n.name: n.inputs[0] for n in graph.nodes
                                       if n.kind == "elementwise" and n.op == "relu"}
            except AbsdslError:
                continue
            self.progs.append((name, prog))
        if not self.progs:
            raise AbsdslError("no back-substitution domain has rules for every op of the "
                              "network")
        if not self.splittable:
            raise AbsdslError("the network has no ReLU to split")

    # -- pieces --------------------------------------------------------------------------
    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.reshape(x.shape[0], *self.input_shape)).reshape(x.shape[0], -1)

    def _violations(self, y: torch.Tensor) -> torch.Tensor:
        return violations(y, self.A, self.b, self.rows_of)

    def attack(self, lo: torch.Tensor, hi: torch.Tensor, open_polys: torch.Tensor) -> Any:
        """PGD from random points of the box (and its centre) on the smallest violation of
        the polytopes still open somewhere; a point inside one goes to ``confirm``."""
        r = self.attack_restarts
        if r == 0 or not bool(open_polys.any()):
            return None
        x = lo + (hi - lo) * torch.rand((r, lo.shape[1]), generator=self.gen, dtype=lo.dtype)
        x[0] = (lo[0] + hi[0]) / 2
        step = 2.0 * (hi - lo) / self.attack_steps
        for it in range(self.attack_steps + 1):
            x = x.detach().requires_grad_(it < self.attack_steps)
            with torch.enable_grad():
                v = self._violations(self._outputs(x))
                v = torch.where(open_polys, v, torch.full_like(v, math.inf))
                best = v.min(dim=1).values
                grad = None
                if it < self.attack_steps and bool(torch.isfinite(best).any()):
                    (grad,) = torch.autograd.grad(best[torch.isfinite(best)].sum(), x)
            for i in torch.nonzero(best.detach() <= 0).flatten().tolist()[:4]:
                w = self.confirm(int(v[i].detach().argmin()), x[i].detach().numpy())
                if w is not None:
                    return w
            if grad is None:
                break
            with torch.no_grad():
                x = torch.minimum(torch.maximum(x - step * grad.sign(), lo), hi)
                if it == self.attack_steps // 2:
                    step = step * 0.3
        return None

    def _depths(self, name: str) -> tuple[float, float]:
        """The depths of the sub-problems a domain bounds: CROWN-IBP and alpha-beta-CROWN
        to ``full_depth``, alpha-beta-crown-ibp below (its first evaluation is CROWN-IBP's
        call with the parent's values: a CROWN-IBP call in front would only repeat it)."""
        role = _DEPTH_ROLES.get(name, "everywhere")  # any other domain a caller names
        if role == "near the root":
            return 0, self.full_depth
        if role == "below the root":
            return self.full_depth + 1, math.inf
        return 0, math.inf

    def _bound(self, lo: torch.Tensor, hi: torch.Tensor, bounds: Bounds, open_: torch.Tensor,
               depth: torch.Tensor, phases: dict[str, torch.Tensor], warm: Warm | None
               ) -> tuple[torch.Tensor, Bounds, torch.Tensor, dict[str, int], Warm | None]:
        """One round of bounding: (open mask, tightened bounds, split scores, closed counts,
        the optimised relaxation parameters per sub-problem for its children's warm start).

        Scores are [N, neurons of every splittable node] (node order of ``splittable``)."""
        n = open_.shape[0]
        counts: dict[str, int] = {}
        widths = [bounds[k][0].shape[1] for k in self.splittable]
        scores = torch.zeros((n, sum(widths)), dtype=lo.dtype)
        found: Warm | None = None
        for name, prog in self.progs:
            todo = torch.nonzero(open_.any(dim=1)).flatten()
            low, high = self._depths(name)
            todo = todo[(depth[todo] >= low) & (depth[todo] <= high)]
            if todo.numel() == 0 or self.left() <= 0:
                continue
            m = todo.numel()
            # the box carries a gradient (never followed) so that every bound is part of the
            # graph through which the split scores differentiate (the model's weights don't)
            lo_t = lo.expand(m, -1).reshape(m, *self.input_shape).requires_grad_()
            hi_t = hi.expand(m, -1).reshape(m, *self.input_shape)
            clamps = {k: (v[0][todo], v[1][todo]) for k, v in bounds.items()}
            rows = self._rows(open_[todo])
            spec = self.A[rows].unsqueeze(0).expand(m, -1, -1)
            before = open_[todo].any(dim=1)
            if prog.relax_param_ranges():
                sub_warm = None if warm is None else {
                    a: {p: t[todo] for p, t in d.items()} for a, d in warm.items()}
                split_of = {act: phases[pre][todo] != 0 for act, pre in self.act_inputs.items()
                            if pre in phases}
                res = self._optimise(prog, lo_t, hi_t, spec, rows, clamps, open_[todo],
                                     sub_warm, split_of)
                lb, used, now_open, empty, live_scores, values = res
                found = scatter_warm(found, values, todo, n)
                scores[todo] = live_scores
            else:
                used = {}
                with torch.enable_grad():
                    lb_g, ub = prog.bounds_with_splits(lo_t, hi_t, spec, clamps, record=used)
                assert ub is not None
                now_open, empty = self._refute(lo_t, hi_t, lb_g.detach(), ub.detach(), used,
                                               open_[todo], rows)
                lb_g = self._widen(lb_g, rows)
                lb = lb_g.detach()
                still = torch.nonzero(now_open.any(dim=1)).flatten()
                if still.numel():
                    scores[todo[still]] = self._scores(lb_g, used, now_open, still, lb)
            open_[todo] = now_open
            for k, (a, b) in used.items():  # the carried bounds only ever shrink
                if k in bounds:
                    bounds[k][0][todo] = torch.maximum(bounds[k][0][todo], a.detach())
                    bounds[k][1][todo] = torch.minimum(bounds[k][1][todo], b.detach())
            if self.record is not None:
                for j, i in enumerate(todo.tolist()):
                    self.record.append(ReluBranchRecord(
                        {k: v[i].clone() for k, v in phases.items()},
                        {k: (a[j].detach().clone(), b[j].detach().clone())
                         for k, (a, b) in used.items()},
                        lb[j].clone(), name, bool(empty[j])))
            closed = before & ~now_open.any(dim=1)
            if bool(closed.any()):
                counts[name] = counts.get(name, 0) + int(closed.sum())
                counts["infeasible"] = counts.get("infeasible", 0) + int((closed & empty).sum())
        return open_, bounds, scores, counts, found

    def _rows(self, open_: torch.Tensor) -> torch.Tensor:
        """The spec rows of the polytopes open in some of these sub-problems: the only rows
        a call bounds (deep in the search one or two polytopes of many are left)."""
        return torch.nonzero(open_.any(dim=0)[self.poly_of_row]).flatten()

    def _widen(self, lb: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Row bounds of ``rows`` placed among all rows (-inf: not bounded; differentiable)."""
        full = torch.full((lb.shape[0], self.A.shape[0]), -math.inf, dtype=lb.dtype)
        return full.index_copy(1, rows, lb)

    def _refute(self, lo_t: torch.Tensor, hi_t: torch.Tensor, lb: torch.Tensor,
                ub: torch.Tensor, used: Bounds, open_: torch.Tensor, rows: torch.Tensor,
                mag: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The polytopes still open after the bounds ``lb``, ``ub`` of spec rows ``rows``
        (a copy of ``open_``), and which sub-problems are empty (clamped bounds crossing):
        both beyond the floating-point threshold, whose magnitude covers ``mag`` too when
        given (earlier evaluations)."""
        found = _magnitude([lo_t, hi_t, lb, ub] + [t for ab in used.values() for t in ab])
        if mag is not None:
            found = torch.maximum(found, mag)
        thr = self.tol + self.rel * found + self.rel * self.b_max
        empty = torch.zeros(lb.shape[0], dtype=torch.bool)
        for a, b in used.values():
            empty |= ((a.detach() - b.detach()) > thr.unsqueeze(1)).any(dim=1)
        beats = (lb - self.b[rows]) > thr.unsqueeze(1)
        now = open_.clone()
        owner = self.poly_of_row[rows]
        for p, s in enumerate(self.rows_of):
            if s.stop > s.start:
                now[beats[:, owner == p].any(dim=1) | empty, p] = False
        return now, empty

    def _optimise(self, prog: Any, lo_t: torch.Tensor, hi_t: torch.Tensor, spec: torch.Tensor,
                  rows: torch.Tensor, clamps: Bounds, open_: torch.Tensor, warm: Warm | None,
                  split_of: dict[str, torch.Tensor]
                  ) -> tuple[torch.Tensor, Bounds, torch.Tensor, torch.Tensor, torch.Tensor,
                             Warm]:
        """alpha-beta-CROWN on ``m`` sub-problems: projected Adam on the relaxation
        parameters (the ReLU slopes of every case: beta-CROWN's multipliers as the split
        neurons' slopes), every evaluation a call with the clamps, so each is sound for its
        sub-domain; per sub-problem the best row bounds and the intersection of every
        evaluation's pre-activation bounds are kept. A sub-problem leaves the batch as soon
        as it is refuted or empty. Warm-started (the parent's values) it takes
        ``warm_steps`` steps, else ``alpha_steps``.

        Returns (row lower bounds, pre-activation bounds, open polytopes, empty, split
        scores from the last evaluation of the sub-problems still open, final values)."""
        m = lo_t.shape[0]
        steps = self.warm_steps if warm is not None else self.alpha_steps
        rows_open = open_[:, self.poly_of_row[rows]]  # [m, rows]: what the objective sums
        best_lb = torch.full((m, rows.numel()), -math.inf, dtype=lo_t.dtype)
        best_ub = torch.full((m, rows.numel()), math.inf, dtype=lo_t.dtype)
        mag = torch.zeros(m, dtype=lo_t.dtype)
        used: Bounds = {k: (torch.full_like(a, -math.inf), torch.full_like(b, math.inf))
                        for k, (a, b) in clamps.items()}
        store: Warm = {a: {p: t.clone() for p, t in d.items()} for a, d in (warm or {}).items()}
        moments: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        now_open = open_.clone()
        empty = torch.zeros(m, dtype=torch.bool)
        scores = torch.zeros((m, sum(clamps[k][0].shape[1] for k in self.splittable)),
                             dtype=lo_t.dtype)
        live = torch.arange(m)
        lr = self.lr
        touched: set[tuple[str, str]] = set()  # the values that reached some bound
        for step in range(steps + 1):
            values = {a: {p: t[live].clone().requires_grad_() for p, t in d.items()}
                      for a, d in store.items()}
            found: Bounds = {}
            with torch.enable_grad():
                lb_g, ub_g = prog.bounds_with_splits(
                    lo_t[live], hi_t[live], spec[live],
                    {k: (a[live], b[live]) for k, (a, b) in clamps.items()},
                    relax_params=values, record=found)
            assert ub_g is not None
            lb, ub = lb_g.detach(), ub_g.detach()
            best_lb[live] = torch.maximum(best_lb[live], lb)
            best_ub[live] = torch.minimum(best_ub[live], ub)
            for k, (a, b) in found.items():
                if k not in used:
                    used[k] = (torch.full((m, a.shape[1]), -math.inf, dtype=a.dtype),
                               torch.full((m, a.shape[1]), math.inf, dtype=a.dtype))
                used[k][0][live] = torch.maximum(used[k][0][live], a.detach())
                used[k][1][live] = torch.minimum(used[k][1][live], b.detach())
            live_used = {k: (a[live], b[live]) for k, (a, b) in used.items()}
            opened, emptied = self._refute(lo_t[live], hi_t[live], best_lb[live], best_ub[live],
                                           live_used, now_open[live], rows, mag[live])
            mag[live] = torch.maximum(mag[live], _magnitude(
                [lb, ub] + [t.detach() for ab in found.values() for t in ab]))
            now_open[live], empty[live] = opened, emptied
            going = opened.any(dim=1)
            leaves = [(act, pn, t) for act, d in values.items() for pn, t in d.items()]
            for act, pn, t in leaves:  # the values of this evaluation, kept for the children
                if act not in store or pn not in store[act]:
                    store.setdefault(act, {})[pn] = torch.zeros((m, *t.shape[1:]), dtype=t.dtype)
                store[act][pn][live] = t.detach()
            if not bool(going.any()) or self.left() <= 0:
                break
            keep = torch.nonzero(going).flatten()
            if step == steps:  # the scores of the sub-problems still open, from this call
                scores[live[keep]] = self._scores(self._widen(lb_g, rows), found, opened, keep,
                                                  self._widen(lb, rows))
                break
            weight = rows_open[live].to(lb.dtype)
            objective = (torch.where(weight > 0, lb_g, torch.zeros_like(lb_g)) * weight)[keep]
            wanted = [t for _, _, t in leaves if t.requires_grad]
            if not wanted or not objective.requires_grad:
                scores[live[keep]] = self._scores(self._widen(lb_g, rows), found, opened, keep,
                                                  self._widen(lb, rows))
                break  # no parameter reaches the bounds
            grads = torch.autograd.grad(objective.sum(), wanted, allow_unused=True)
            self._ascend(prog, [x for x in leaves if x[2].requires_grad], grads,
                         _AdamState(store, moments, touched, live, step, lr), split_of)
            lr *= self.lr_decay
            live = live[keep]
        kept: Warm = {}
        for act, pn in touched:  # the others stay at their initial values in the children
            kept.setdefault(act, {})[pn] = store[act][pn]
        return self._widen(best_lb, rows), used, now_open, empty, scores, kept

    def _ascend(self, prog: Any, leaves: list[tuple[str, str, torch.Tensor]],
                grads: Sequence[torch.Tensor | None], state: _AdamState,
                split_of: dict[str, torch.Tensor]) -> None:
        """One projected Adam ascent step on the live sub-problems' values (in place in
        ``state.store``); beta's slopes move on the split neurons only."""
        ranges = prog.relax_param_ranges()
        store, moments, live, step = state.store, state.moments, state.live, state.step
        with torch.no_grad():
            for (act, pn, t), g in zip(leaves, grads, strict=True):
                if g is None:
                    continue
                state.touched.add((act, pn))
                m1, m2 = moments.get((act, pn), (torch.zeros_like(store[act][pn]),
                                              torch.zeros_like(store[act][pn])))
                m1[live] = ADAM_BETAS[0] * m1[live] + (1 - ADAM_BETAS[0]) * g
                m2[live] = ADAM_BETAS[1] * m2[live] + (1 - ADAM_BETAS[1]) * g * g
                moments[(act, pn)] = (m1, m2)
                fix1 = 1 - ADAM_BETAS[0] ** (step + 1)
                fix2 = 1 - ADAM_BETAS[1] ** (step + 1)
                move = state.lr * (m1[live] / fix1) / ((m2[live] / fix2).sqrt() + 1e-8)
                if pn in BETA_PARAMS:  # beta: the split neurons' slopes only
                    fixed = split_of.get(act.split("@")[0])
                    move = move * (fixed[live].reshape(move.shape).to(move.dtype)
                                   if fixed is not None else 0)
                store[act][pn][live] = (t.detach() + move).clamp(*ranges[pn])  # ascent

    def _scores(self, lb_g: torch.Tensor, used: Bounds, open_: torch.Tensor,
                still: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
        """Estimated gain of splitting each neuron, for the rows ``still`` of a call: the
        gradient of the open polytopes' best row bounds with respect to the neuron's bounds,
        times the move of each half (-l for active, u for inactive), both halves summed;
        where no gradient reaches, BaBSR's fallback: the upper line's intercept."""
        target = torch.zeros((), dtype=lb.dtype)
        gaps = lb - self.b
        for k, s in enumerate(self.rows_of):
            if s.stop == s.start:
                continue
            best = gaps[:, s].argmax(dim=1) + s.start
            pick = lb_g.gather(1, best.unsqueeze(1)).squeeze(1)
            target = target + torch.where(open_[:, k], pick, torch.zeros_like(pick))[still].sum()
        ls = [used[k][0] for k in self.splittable]
        us = [used[k][1] for k in self.splittable]
        grads: list[torch.Tensor | None] = [None] * (2 * len(ls))
        wanted = [j for j, t in enumerate(ls + us) if t.requires_grad]
        if target.requires_grad and wanted:
            got = torch.autograd.grad(target, [(ls + us)[j] for j in wanted], allow_unused=True)
            for j, g in zip(wanted, got, strict=True):
                grads[j] = g
        parts = []
        for j, (lo_b, up_b) in enumerate(zip(ls, us, strict=True)):
            lo_d, up_d = lo_b.detach()[still], up_b.detach()[still]
            unstable = (lo_d < 0) & (up_d > 0)
            g_l, g_u = grads[j], grads[len(ls) + j]
            gain = torch.zeros_like(lo_d)
            if g_l is not None:
                gain = gain + (g_l[still] * -lo_d).clamp(min=0)
            if g_u is not None:
                gain = gain + (-g_u[still] * up_d).clamp(min=0)
            intercept = up_d * -lo_d / (up_d - lo_d).clamp(min=1e-300)
            # gradient gains first; the intercept (scaled far below any real gain) breaks ties
            score = gain + 1e-12 * intercept
            parts.append(torch.where(unstable, score, torch.full_like(score, -math.inf)))
        return torch.cat(parts, dim=1)

    def _deficit(self, lb: torch.Tensor, used: Bounds, open_: torch.Tensor) -> torch.Tensor:
        """Per sub-problem, how far its open polytopes are from refuted (<= 0; 0 when all
        are or when its bounds cross): the sum of their best rows' negative gaps."""
        gaps = lb.detach() - self.b
        total = torch.zeros(lb.shape[0], dtype=lb.dtype)
        for k, s in enumerate(self.rows_of):
            if s.stop > s.start:
                best = gaps[:, s].max(dim=1).values.clamp(max=0)
                total = total + torch.where(open_[:, k], best, torch.zeros_like(best))
        empty = torch.zeros(lb.shape[0], dtype=torch.bool)
        for a, b in used.values():
            empty |= (a.detach() > b.detach()).any(dim=1)
        total = torch.where(torch.isnan(total), torch.full_like(total, -math.inf), total)
        return torch.where(empty, torch.zeros_like(total), total)

    def _choose(self, lo: torch.Tensor, hi: torch.Tensor, bounds: Bounds, open_: torch.Tensor,
                keep: torch.Tensor, scores: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """Filtered smart branching: the children of each kept sub-problem's top
        ``candidates`` neurons by score are bounded by the cheapest domain in one call; the
        neuron whose worse child is closest to refuted wins (ties: the score's choice). The
        number of candidates halves when this takes more than half of a round (down to 2)
        and doubles back when it takes less than a quarter."""
        k = min(self.candidates, scores.shape[1])
        if k <= 1 or self.left() <= 0:
            return which
        idx = torch.nonzero(keep).flatten()
        top_s, top = scores[idx].topk(k, dim=1)
        n = idx.numel()
        flat = top.reshape(-1)  # [n * k]: candidate c of sub-problem i at i * k + c
        parent = idx.repeat_interleave(k)
        sub = {kk: (a[parent], b[parent]) for kk, (a, b) in bounds.items()}
        item = {"phases": {}, "depth": torch.zeros(n * k, dtype=torch.long)}
        children = split_children(item, sub, open_[parent],
                                  torch.ones(n * k, dtype=torch.bool), flat, self.splittable)
        m = 2 * n * k
        name, prog = self.progs[0]
        lo_t = lo.expand(m, -1).reshape(m, *self.input_shape)
        hi_t = hi.expand(m, -1).reshape(m, *self.input_shape)
        rows = self._rows(children["open"])
        with torch.no_grad():
            lb, _, used = bound_with_splits(prog, lo_t, hi_t,
                                            self.A[rows].unsqueeze(0).expand(m, -1, -1),
                                            children["bounds"], upper=False)
        value = self._deficit(self._widen(lb, rows), used, children["open"])
        worse = torch.minimum(value[: n * k], value[n * k:]).reshape(n, k)
        worse = torch.where(torch.isfinite(top_s), worse, torch.full_like(worse, -math.inf))
        pick = worse.argmax(dim=1)
        out = which.clone()
        out[idx] = top[torch.arange(n), pick]
        return out

    def _leaf_lp(self, lo: torch.Tensor, hi: torch.Tensor,
                 leaf: dict[str, tuple[torch.Tensor, torch.Tensor]], open_: torch.Tensor
                 ) -> Any:
        """A leaf with few unstable ReLUs left (none: the network is linear on it): the exact
        encoding (``training/milp.py``) with the leaf's bounds, widened, has a binary per
        unstable neuron only (none: an LP), and it uses the phases as constraints, which the
        bounds do not. Each open polytope is asked whether it holds a point with ``A y <= b
        + tol + slack``: infeasible refutes it (``open_`` is updated); a point goes to
        ``confirm``. Networks the encoder cannot take keep the leaf open."""
        from scipy.optimize import milp  # lazy: heavy dependency scipy

        from absdsl.training.milp import (  # lazy: heavy dependency scipy
            CUTOFF_SLACK,
            MilpError,
            NetworkMilp,
            polytope_problem,
        )

        if self._encoder is None:
            try:
                self._encoder = NetworkMilp(self.model, self.input_shape)
            except (MilpError, AbsdslError):
                self._encoder = False
                return None
            self._root_bounds = self._encoder.node_bounds(
                lo.reshape(1, *self.input_shape), hi.reshape(1, *self.input_shape))[0]
        if self._encoder is False:
            return None
        enc = self._encoder
        bounds = enc.with_leaf_bounds(self._root_bounds, {
            k: (a.numpy(), b.numpy()) for k, (a, b) in leaf.items()})
        problem = enc.encode(lo.reshape(-1).numpy(), hi.reshape(-1).numpy(), bounds)
        for k, s in enumerate(self.rows_of):
            left = self.left()
            if not bool(open_[k]) or s.stop == s.start or left <= 0:
                continue
            c, integrality, bnds, cons = polytope_problem(
                problem, self.A[s].numpy(), self.b[s].numpy(), self.tol + CUTOFF_SLACK)
            res = milp(c, integrality=integrality, bounds=bnds, constraints=cons,
                       options={"disp": False, "presolve": True,
                                "time_limit": min(left, LEAF_SECONDS)})
            dual = getattr(res, "mip_dual_bound", None)
            if dual is None and int(res.status) == 0 and not bool(integrality.any()):
                dual = res.fun  # a pure LP solved to optimality: its value is the bound
            if int(res.status) == 2 or (int(res.status) == 0 and dual is not None
                                        and float(dual) > self.tol):
                open_[k] = False
            elif res.x is not None:
                point = np.clip(np.asarray(res.x)[problem.inputs], problem.lo, problem.hi)
                w = self.confirm(k, point)
                if w is not None:
                    return w
        return None

    # -- the search ----------------------------------------------------------------------
    def run(self, lo0: np.ndarray, hi0: np.ndarray) -> ReluBabOutcome:
        """The search on the box ``[lo0, hi0]`` (the model's weights take no gradient
        meanwhile: the optimiser and the split scores differentiate only by the slopes and
        the bounds)."""
        frozen = [t for t in self.model.parameters() if t.requires_grad]
        for t in frozen:
            t.requires_grad_(False)
        try:
            return self._run(lo0, hi0)
        finally:
            for t in frozen:
                t.requires_grad_(True)

    def _run(self, lo0: np.ndarray, hi0: np.ndarray) -> ReluBabOutcome:
        out = ReluBabOutcome("unknown")
        lo = torch.from_numpy(np.asarray(lo0, dtype=np.float64).reshape(1, -1))
        hi = torch.from_numpy(np.asarray(hi0, dtype=np.float64).reshape(1, -1))
        n_poly = len(self.rows_of)
        # the root: no clamps yet (infinite), every polytope open
        with torch.no_grad():
            sizes = {k: int(np.prod(v[0].shape[1:])) for k, v in self.progs[0][1]
                     .intermediate_bounds(lo.reshape(1, *self.input_shape),
                                          hi.reshape(1, *self.input_shape)).items()}
        stack: list[dict[str, Any]] = [{
            "bounds": {k: (torch.full((1, s), -math.inf, dtype=lo.dtype),
                           torch.full((1, s), math.inf, dtype=lo.dtype)) for k, s in sizes.items()},
            "phases": {k: torch.zeros((1, sizes[k]), dtype=torch.int8) for k in self.splittable},
            "open": torch.ones((1, n_poly), dtype=torch.bool),
            "depth": torch.zeros(1, dtype=torch.long)}]
        size = 1
        batch = self.batch
        per_branch = 0.0  # seconds per sub-problem in the last round
        warm_held = 0  # bytes of the warm starts on the stack
        while size:
            left = self.left()
            if per_branch > 0:  # a round must end before the deadline (0.2 s of room)
                batch = min(batch, int((left - 0.2) / per_branch))
            if left <= 0 or batch < 1:
                out.status = "timeout"
                return out
            t0 = time.perf_counter()
            item = pop_subproblems(stack, batch)
            warm_held -= warm_bytes(item.get("warm"))
            n = item["open"].shape[0]
            size -= n
            w = self.attack(lo, hi, item["open"].any(dim=0))
            if w is not None:
                out.status, out.witness = "sat", w
                return out
            open_, bounds, scores, counts, warm = self._bound(
                lo, hi, item["bounds"], item["open"], item["depth"], item["phases"],
                item.get("warm"))
            if self.left() <= 0 and bool(open_.any()):
                out.status = "timeout"
                return out
            out.branches += n
            for name, c in counts.items():
                if name == "infeasible":
                    out.infeasible += c
                    continue
                out.refuted_by[name] = out.refuted_by.get(name, 0) + c
                out.leaves += c
            keep = open_.any(dim=1)
            best, which = scores.max(dim=1)
            exhausted = keep & ~torch.isfinite(best)
            few = keep & (torch.isfinite(scores).sum(dim=1) <= self.leaf_unstable)
            for i in torch.nonzero(few).flatten().tolist():
                w = self._leaf_lp(lo, hi, {k: (a[i], b[i]) for k, (a, b) in bounds.items()},
                                  open_[i])
                if w is not None:
                    out.status, out.witness = "sat", w
                    return out
                if not bool(open_[i].any()):
                    exhausted[i] = keep[i] = False
                    out.leaves += 1
                    out.refuted_by["leaf-milp"] = out.refuted_by.get("leaf-milp", 0) + 1
            if bool(exhausted.any()):
                out.exhausted += int(exhausted.sum())
            keep = keep & torch.isfinite(best)
            if bool(keep.any()):
                t_fsb = time.perf_counter()
                which = self._choose(lo, hi, bounds, open_, keep, scores, which)
                share = (time.perf_counter() - t_fsb) / max(time.perf_counter() - t0, 1e-9)
                if share > 0.5:  # smart branching may take about half of a round
                    self.candidates = max(2, self.candidates // 2)
                elif share < 0.25:
                    self.candidates = min(self.max_candidates, self.candidates * 2)
                children = split_children(item, bounds, open_, keep, which[keep], self.splittable)
                if warm is not None and warm_held + warm_bytes(warm, keep) <= self.warm_bytes:
                    children["warm"] = children_warm(warm, keep)
                    warm_held += warm_bytes(children["warm"])
                stack.append(children)
                size += children["open"].shape[0]
                out.splits += int(keep.sum())
                out.max_depth = max(out.max_depth, int(children["depth"].max()))
                if size > MAX_OPEN:
                    out.note = f"more than {MAX_OPEN} open sub-problems"
                    return out
            spent = time.perf_counter() - t0
            per_branch = spent / max(n, 1)
            batch = int(min(1024, max(4, batch * TARGET_CALL_SECONDS / max(spent, 1e-6))))
            batch = min(batch, 2 * max(n, 1))  # grow at most twice per round
        if out.exhausted:
            out.note = (f"{out.exhausted} leaves with every neuron's phase fixed stayed open "
                        f"(the phase constraints are not used as constraints)")
            return out
        out.status = "unsat"
        return out


def seconds_left(deadline: float) -> Callable[[], float]:
    return lambda: deadline - time.perf_counter()


__all__ = ["RELU_BAB_DOMAINS", "ReluBab", "ReluBabOutcome", "ReluBranchRecord",
           "bound_with_splits", "relu_nodes"]
