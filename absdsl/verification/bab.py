"""Branch and bound on the input box: the complete stage of ``absdsl verify`` for networks
with few inputs (ACAS Xu has 5).

A property is a box and output polytopes ``A y <= b``; it fails (``sat``) when some input of
the box reaches some polytope. First PGD with restarts runs on the whole box (uniform samples,
then signed-gradient descent from the best at coarse to fine steps; at most a tenth of the
time). Then each round takes a batch of open sub-boxes from a pool, most promising first (the
smallest violation the attack saw in the parent), and

1. runs the plain float64 model at their centres and random points and a few batched PGD
   steps inside them; a point inside a polytope goes to the caller's ``confirm`` (float32
   rounding, onnxruntime), which turns it into a witness or rejects it;
2. bounds every row ``A y`` over all boxes of the batch in ONE call per domain of a compiled
   program (cheap CROWN-IBP first while it closes boxes, then DeepPoly/CROWN on what is left).
   A polytope is refuted on a box when one of its rows' lower bound exceeds its ``b`` by more
   than the certification threshold of ``absdsl certify`` (``tolerance`` + 1e-9 times the
   largest magnitude of the computation, taken per box over the domain's own intermediate
   bounds, exactly as ``absdsl certify`` takes it);
3. splits every box with a polytope still open in two halves along the input dimension where
   the lower bound of each open polytope's best row is most sensitive to the box (autograd
   through the program), and pushes both halves. Both halves contain the midpoint, so
   together they cover their parent.

``unsat`` only when every leaf box has every polytope refuted. The batch adapts so that a
round takes about half a second, less near the deadline.
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
from absdsl.errors import AbsdslError
from absdsl.training.certify import REL_TOLERANCE, certificate_threshold

BAB_DOMAINS = ("crown-ibp", "deeppoly")
MAX_INPUT_DIMS = 64  # above this many inputs, input splitting is not the complete stage
MAX_OPEN_BOXES = 2_000_000  # a stack larger than this ends the search as unknown (memory)
TARGET_CALL_SECONDS = 0.5  # the batch size adapts so one round takes about this long
MIN_BATCH, MAX_BATCH = 16, 4096
ROOT_ATTACK_SHARE = 0.05  # at most this share of the time left goes to the attack on the root
ROOT_CHUNK = 8192  # random points per forward pass of the root attack
ROOT_ATTACK_AT = (0.0, 0.25, 0.5)  # when (share of the time) the attacks on the root start
TRIAL_BOXES, SKIP_BELOW, RETRY_EVERY = 256, 20, 8  # when a cheap domain is skipped


@dataclass
class BranchRecord:
    """One bounded sub-box (for tests): its box, the bounds of every row, the domain."""

    lo: torch.Tensor  # [n]
    hi: torch.Tensor
    lower: torch.Tensor  # [rows]: lower bounds of A y over the box
    domain: str


@dataclass
class BabOutcome:
    status: str  # unsat | sat | unknown | timeout
    witness: Any = None  # the caller's confirmed witness
    branches: int = 0  # sub-boxes bounded
    leaves: int = 0  # sub-boxes closed by a bound (every polytope refuted)
    splits: int = 0
    refuted_by: dict[str, int] = field(default_factory=dict)  # leaves per domain
    max_depth: int = 0
    note: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # time per phase (profiling)


class InputBab:
    """Input-box branch and bound for one case (box + polytopes) on a float64 model."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...],
                 polytopes: Sequence[Any], tolerance: float, left: Callable[[], float],
                 confirm: Callable[[int, np.ndarray], Any], *, seed: int = 0,
                 domains: Sequence[str] = BAB_DOMAINS, batch: int = 64,
                 attack_steps: int = 5, samples: int = 16, record: list[BranchRecord] | None = None,
                 programs: dict[str, Any] | None = None, heuristic: str = "bound",
                 root_samples: int = 65536,
                 restarts: int = 256, combined: bool = True) -> None:
        self.model = model
        self.input_shape = tuple(input_shape)
        self.tol = tolerance
        self.left = left
        self.confirm = confirm
        self.record = record
        self.batch = max(1, int(batch))
        self.attack_steps = attack_steps
        self.samples = max(0, int(samples))
        self.root_samples = max(0, int(root_samples))
        self.restarts = max(1, int(restarts))
        if heuristic not in ("bound", "smear"):
            raise AbsdslError(f"unknown split heuristic {heuristic!r} (bound, smear)")
        self.heuristic = heuristic
        self.scores = torch.zeros((0,))
        self.seconds: dict[str, float] = {}  # time per phase of the search
        self.tally: dict[str, tuple[int, int]] = {}  # per domain: boxes bounded, closed
        self.rounds = 0
        self.gen = torch.Generator().manual_seed(seed)
        self.rows_of, self.A, self.b, self.b_max = stack_polytopes(polytopes, combined)
        self.progs = []
        for name in domains:  # programs the caller already compiled are reused
            try:
                prog = (programs or {}).get(name) or absdsl.compile(model, name,
                                                                    input_shape=input_shape)
            except AbsdslError:
                continue
            self.progs.append((name, prog))
        if not self.progs:
            raise AbsdslError("no bound domain has rules for every op of the network")

    def _clock(self, phase: str, since: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - since

    # -- pieces --------------------------------------------------------------------------
    def _shape(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.input_shape)

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._shape(x)).reshape(x.shape[0], -1)

    def _violations(self, y: torch.Tensor) -> torch.Tensor:
        return violations(y, self.A, self.b, self.rows_of)

    def _attack(self, lo: torch.Tensor, hi: torch.Tensor, open_: torch.Tensor
                ) -> tuple[Any, torch.Tensor]:
        """The centre and ``samples`` random points per box (one forward pass); from the
        best of them a few signed-gradient steps on the box's open polytopes. Returns the
        witness (or None) and per box the smallest violation seen (the search's priority)."""
        x = self._best_samples(lo, hi, open_, self.samples, 1)[:, 0]
        return self._descend(x, lo, hi, open_, self.attack_steps, (hi - lo) / 4, 0.6)

    def _best_samples(self, lo: torch.Tensor, hi: torch.Tensor, open_: torch.Tensor,
                      samples: int, keep: int) -> torch.Tensor:
        """[boxes, keep, n]: per box the ``keep`` best of its centre and ``samples`` uniform
        random points (smallest violation of an open polytope)."""
        n = lo.shape[1]
        with torch.no_grad():
            pts = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * torch.rand(
                (lo.shape[0], samples + 1, n), generator=self.gen, dtype=lo.dtype)
            pts[:, 0] = (lo + hi) / 2
            v = self._violations(self._outputs(pts.reshape(-1, n))).reshape(
                lo.shape[0], samples + 1, -1)
            v = torch.where(open_.unsqueeze(1), v, torch.full_like(v, math.inf))
            order = v.min(dim=2).values.argsort(dim=1)[:, :keep]
            return pts.gather(1, order.unsqueeze(2).expand(-1, -1, n))

    def _descend(self, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                 open_: torch.Tensor, steps: int, step: torch.Tensor, decay: float,
                 stop_at: float = math.inf) -> tuple[Any, torch.Tensor]:
        """Signed-gradient descent of each point's smallest open-polytope violation inside
        its box (step shrinking by ``decay``); every point found inside a polytope goes to
        ``confirm``. Returns the first confirmed witness (or None) and per point the
        smallest violation seen."""
        seen = torch.full((x.shape[0],), math.inf, dtype=x.dtype)
        for it in range(steps + 1):
            x = x.detach().requires_grad_(it < steps)
            with torch.enable_grad():
                v = self._violations(self._outputs(x))
                v = torch.where(open_, v, torch.full_like(v, math.inf))
                best = v.min(dim=1).values
                seen = torch.minimum(seen, best.detach())
                grad = None
                if it < steps and bool(torch.isfinite(best).any()):
                    (grad,) = torch.autograd.grad(best[torch.isfinite(best)].sum(), x,
                                                  allow_unused=True)
            hits = torch.nonzero(best.detach() <= 0).flatten()
            for i in hits[best.detach()[hits].argsort()][:8].tolist():
                k = int(v[i].detach().argmin())
                w = self.confirm(k, x[i].detach().numpy())
                if w is not None:
                    return w, seen
            if grad is None or self.left() <= 0 or time.perf_counter() > stop_at:
                break
            with torch.no_grad():
                x = torch.minimum(torch.maximum(x - step * grad.sign(), lo), hi)
                step = step * decay
        return None, seen

    def _root_attack(self, lo: torch.Tensor, hi: torch.Tensor, samples: int) -> Any:
        """PGD with restarts on the whole box before any split: ``root_samples`` uniform
        points, then from the best ``restarts`` of them signed-gradient descent at step sizes
        from coarse to fine (a violated region can be a sliver that coarse steps jump over)."""
        if samples <= 0:
            return None
        stop_at = time.perf_counter() + ROOT_ATTACK_SHARE * self.left()
        open_ = torch.ones((1, len(self.rows_of)), dtype=torch.bool)
        x = lo.new_zeros((0, lo.shape[1]))
        for _ in range(0, samples, ROOT_CHUNK):  # time-bounded, best kept
            if time.perf_counter() > stop_at and x.shape[0]:
                break
            pts = torch.cat([x, self._best_samples(lo, hi, open_, ROOT_CHUNK,
                                                   self.restarts)[0]])
            with torch.no_grad():
                v = self._violations(self._outputs(pts)).min(dim=1).values
            x = pts[v.argsort()[:self.restarts]]
        many_open = open_.expand(x.shape[0], -1)
        for scale in (10.0, 100.0, 1000.0):
            if self.left() <= 0 or time.perf_counter() > stop_at:
                return None
            w, _ = self._descend(x, lo, hi, many_open, self.attack_steps * 4,
                                 (hi - lo) / scale, 0.85, stop_at)
            if w is not None:
                return w
        return None

    def _bound(self, lo: torch.Tensor, hi: torch.Tensor, open_: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        """Refute what the domains can: the new open mask, each box's row gaps, counts."""
        counts: dict[str, int] = {}
        gaps = torch.full((lo.shape[0], self.A.shape[0]), -math.inf, dtype=lo.dtype)
        score_at = len(self.progs) - 1 if self.heuristic == "bound" else -1
        for at, (name, prog) in enumerate(self.progs):
            todo = torch.nonzero(open_.any(dim=1)).flatten()
            if todo.numel() == 0:
                break
            if at < len(self.progs) - 1 and not self._worth_trying(name):
                continue
            lo_t, hi_t = self._shape(lo[todo]), self._shape(hi[todo])
            spec = self.A.unsqueeze(0).expand(todo.numel(), -1, -1)
            grad = at == score_at  # the bound's sensitivity to the box picks the split dim
            if grad:
                lo_t.requires_grad_(True)
                hi_t.requires_grad_(True)
            t0 = time.perf_counter()
            with torch.set_grad_enabled(grad):
                lb_g, ub = prog(lo_t, hi_t, spec=spec)
            self._clock(name, t0)
            lb, ub = lb_g.detach(), ub.detach()
            g = lb - self.b
            gaps[todo] = torch.maximum(gaps[todo], g)
            if self.record is not None:
                for j, i in enumerate(todo.tolist()):
                    self.record.append(BranchRecord(lo[i].clone(), hi[i].clone(),
                                                    lb[j].clone(), name))
            if grad and lb_g.requires_grad:
                t0 = time.perf_counter()
                self._bound_scores(todo, lo_t, hi_t, lb_g, open_, gaps)
                self._clock("scores", t0)
            cand = torch.nonzero((g > self.tol).any(dim=1)).flatten()
            if cand.numel() == 0:
                continue
            t0 = time.perf_counter()
            thr = self._threshold(prog, lo_t[cand].detach(), hi_t[cand].detach(), lb[cand],
                                  ub[cand])
            self._clock("threshold", t0)
            beats = g[cand] > thr.unsqueeze(1)
            for k, s in enumerate(self.rows_of):
                if s.stop == s.start:
                    continue
                refuted = beats[:, s].any(dim=1)
                rows = todo[cand[refuted]]
                open_[rows, k] = False
            closed = todo[~open_[todo].any(dim=1)]
            if closed.numel():
                counts[name] = counts.get(name, 0) + int(closed.numel())
            self.tally[name] = (self.tally.get(name, (0, 0))[0] + int(todo.numel()),
                                self.tally.get(name, (0, 0))[1] + int(closed.numel()))
        return open_, gaps, counts

    def _worth_trying(self, name: str) -> bool:
        """Whether a cheap domain that runs before the last one still pays: it is skipped
        while it has closed fewer than 1 in ``SKIP_BELOW`` of the boxes it bounded (after a
        trial of ``TRIAL_BOXES``), except every ``RETRY_EVERY``-th round (the boxes shrink,
        and cheap bounds catch up on small ones)."""
        tried, closed = self.tally.get(name, (0, 0))
        if tried < TRIAL_BOXES or closed * SKIP_BELOW >= tried:
            return True
        return self.rounds % RETRY_EVERY == 0

    def _threshold(self, prog: Any, lo: torch.Tensor, hi: torch.Tensor, lb: torch.Tensor,
                   ub: torch.Tensor) -> torch.Tensor:
        """Per box, what a row's ``lb - b`` must exceed: ``absdsl certify``'s policy, M over
        the domain's own intermediate bounds. (Box's are not a safe substitute: the output
        node's back-substituted bounds are not intersected with Box's, and a Hypothesis
        example had DeepPoly's above Box's there.)"""
        with torch.no_grad():
            return certificate_threshold(prog, lo, hi, lb, ub,
                                         self.tol) + REL_TOLERANCE * self.b_max

    def _bound_scores(self, todo: torch.Tensor, lo_t: torch.Tensor, hi_t: torch.Tensor,
                      lb: torch.Tensor, open_: torch.Tensor, gaps: torch.Tensor) -> None:
        """Per box of ``todo`` and input dimension, how much halving it should raise the
        lower bounds of the open polytopes' best rows: for a bound ``a . x`` minimised over
        the box, d lb / d lo - d lb / d hi = |a|, so |a_d| x width_d is the gain of a full
        cut; through the program's gradient it includes the intermediate bounds."""
        target = torch.zeros((), dtype=lb.dtype)
        for k, s in enumerate(self.rows_of):
            if s.stop == s.start:
                continue
            best = gaps[todo][:, s].argmax(dim=1) + s.start
            pick = lb.gather(1, best.unsqueeze(1)).squeeze(1)
            target = target + (pick * open_[todo, k].to(lb.dtype)).sum()
        if not target.requires_grad:
            return
        g_lo, g_hi = torch.autograd.grad(target, (lo_t, hi_t))
        width = (hi_t - lo_t).detach()
        score = ((g_lo - g_hi).clamp(min=0) * width).reshape(todo.numel(), -1)
        self.scores[todo] = score

    def _split_dims(self, lo: torch.Tensor, hi: torch.Tensor, open_: torch.Tensor,
                    gaps: torch.Tensor, scores: torch.Tensor | None = None) -> torch.Tensor:
        """Per box the dimension with the largest score: the bound's sensitivity (heuristic
        "bound", ``_bound_scores``) or width x |gradient| of the open polytopes' best rows at
        the centre ("smear"); the widest dimension where the score vanishes."""
        width = hi - lo
        if scores is not None:
            score = torch.where(scores.sum(dim=1, keepdim=True) > 0, scores, width)
            return score.argmax(dim=1)
        x = ((lo + hi) / 2).detach().requires_grad_(True)
        score = torch.zeros_like(lo)
        with torch.enable_grad():
            y = self._outputs(x)
            for k, s in enumerate(self.rows_of):
                if s.stop == s.start or not bool(open_[:, k].any()):
                    continue
                best = gaps[:, s].argmax(dim=1) + s.start  # the row closest to refuting k
                rows = self.A[best] * open_[:, k:k + 1].to(self.A.dtype)
                (g,) = torch.autograd.grad((y * rows).sum(), x, retain_graph=True)
                score = score + g.abs().detach() * width
        score = torch.where(score.sum(dim=1, keepdim=True) > 0, score, width)
        return score.argmax(dim=1)

    # -- the search ----------------------------------------------------------------------
    def run(self, lo0: np.ndarray, hi0: np.ndarray) -> BabOutcome:
        out = BabOutcome("unknown")
        n_poly = len(self.rows_of)
        pool = _Pool(torch.from_numpy(lo0.reshape(1, -1).astype(np.float64)),
                     torch.from_numpy(hi0.reshape(1, -1).astype(np.float64)), n_poly)
        batch = self.batch
        root_lo, root_hi = pool.lo, pool.hi
        budget, start, passes = self.left(), time.perf_counter(), 0
        while pool.size:
            if self.left() <= 0:
                out.status = "timeout"
                out.seconds = dict(self.seconds)
                return out
            if passes < len(ROOT_ATTACK_AT) and \
                    time.perf_counter() - start >= ROOT_ATTACK_AT[passes] * budget:
                t0 = time.perf_counter()  # a small attack first; big ones if the search lasts
                w = self._root_attack(root_lo, root_hi,
                                      ROOT_CHUNK if passes == 0 else self.root_samples)
                self._clock("root attack", t0)
                passes += 1
                if w is not None:
                    out.status, out.witness = "sat", w
                    return out
            lo, hi, open_, depth = pool.pop(batch)
            t0 = time.perf_counter()
            w, seen = self._attack(lo, hi, open_)
            self._clock("attack", t0)
            if w is not None:
                out.status, out.witness = "sat", w
                return out
            self.scores = torch.zeros_like(lo)
            t1 = time.perf_counter()
            open_, gaps, counts = self._bound(lo, hi, open_)
            self._clock("bound", t1)
            t1 = time.perf_counter()
            out.branches += lo.shape[0]
            for name, c in counts.items():
                out.refuted_by[name] = out.refuted_by.get(name, 0) + c
                out.leaves += c
            keep = open_.any(dim=1)
            if bool(keep.any()):
                lo, hi, open_, gaps, depth, seen = lo[keep], hi[keep], open_[keep], \
                    gaps[keep], depth[keep], seen[keep]
                scores = self.scores[keep] if self.heuristic != "smear" else None
                _, left_hi, right_lo, _ = split_box(lo, hi, self._split_dims(lo, hi, open_,
                                                                             gaps, scores))
                pool.push(torch.cat([lo, right_lo]), torch.cat([left_hi, hi]),
                          torch.cat([open_, open_]), torch.cat([depth, depth]) + 1,
                          torch.cat([seen, seen]))
                out.splits += lo.shape[0]
                out.max_depth = max(out.max_depth, int(depth.max()) + 1)
                self._clock("split", t1)
                if pool.size > MAX_OPEN_BOXES:
                    out.note = f"more than {MAX_OPEN_BOXES} open sub-boxes"
                    return out
            self.rounds += 1
            per_box = max(time.perf_counter() - t0, 1e-6) / max(1, int(keep.numel()))
            batch = next_batch(per_box, self.left())
        out.status = "unsat"
        return out


def next_batch(per_box: float, left: float) -> int:
    """How many boxes the next round bounds: about ``TARGET_CALL_SECONDS`` of work at the
    last round's cost per box, fewer near the deadline (a round is never cut short, so it
    must end before it)."""
    target = min(TARGET_CALL_SECONDS, max(left, 0.0) / 2)
    return int(min(MAX_BATCH, max(MIN_BATCH, target / per_box)))


def stack_polytopes(polytopes: Sequence[Any], combined: bool = False
                    ) -> tuple[list[slice], torch.Tensor, torch.Tensor, float]:
    """Every polytope's rows in one matrix: (each polytope's slice of rows, A, b, max |b|).

    ``combined`` adds to each polytope of several rows their mean: an implied row (every
    point of the polytope satisfies it) whose back-substituted bound can refute the polytope
    where no single row's does (a relaxation chosen for the sum is at least as tight as the
    sum of relaxations chosen per row)."""
    rows_of: list[slice] = []
    blocks_a, blocks_b = [], []
    at = 0
    for p in polytopes:
        pa, pb = np.asarray(p.A, dtype=np.float64), np.asarray(p.b, dtype=np.float64)
        if combined and pa.shape[0] > 1:
            pa = np.concatenate([pa, pa.mean(axis=0, keepdims=True)])
            pb = np.concatenate([pb, pb.mean(keepdims=True)])
        blocks_a.append(pa)
        blocks_b.append(pb)
        rows_of.append(slice(at, at + int(pa.shape[0])))
        at += int(pa.shape[0])
    n_out = int(polytopes[0].A.shape[1])
    a = torch.from_numpy(np.concatenate(blocks_a).reshape(at, n_out))
    b = torch.from_numpy(np.concatenate(blocks_b).reshape(at))
    return rows_of, a, b, float(b.abs().max()) if at else 0.0


def violations(y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rows_of: list[slice]
               ) -> torch.Tensor:
    """[N, P]: max over each polytope's rows of (A y - b); <= 0 inside it."""
    v = y @ a.T - b
    cols = [v[:, s].max(dim=1).values if s.stop > s.start
            else torch.full((v.shape[0],), -math.inf, dtype=v.dtype) for s in rows_of]
    return torch.stack(cols, dim=1)


class _Pool:
    """The open sub-boxes, popped most promising first: smallest violation the attack saw
    in the parent (a ``sat`` search zooms in where the property is nearly violated; for
    ``unsat`` every box is bounded whatever the order), deeper boxes first among equals."""

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, n_poly: int) -> None:
        self.lo, self.hi = lo, hi
        self.open = torch.ones((lo.shape[0], n_poly), dtype=torch.bool)
        self.depth = torch.zeros(lo.shape[0], dtype=torch.long)
        self.prio = torch.zeros(lo.shape[0], dtype=lo.dtype)

    @property
    def size(self) -> int:
        return int(self.lo.shape[0])

    def push(self, lo: torch.Tensor, hi: torch.Tensor, open_: torch.Tensor,
             depth: torch.Tensor, prio: torch.Tensor) -> None:
        self.lo, self.hi = torch.cat([self.lo, lo]), torch.cat([self.hi, hi])
        self.open = torch.cat([self.open, open_])
        self.depth, self.prio = torch.cat([self.depth, depth]), torch.cat([self.prio, prio])

    def pop(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ``n`` most promising boxes (all when fewer), removed from the pool."""
        key = self.prio - 1e-9 * self.depth.to(self.prio.dtype)
        order = torch.argsort(key, stable=True)
        take, rest = order[:n], order[n:]
        got = self.lo[take], self.hi[take], self.open[take], self.depth[take]
        self.lo, self.hi, self.open = self.lo[rest], self.hi[rest], self.open[rest]
        self.depth, self.prio = self.depth[rest], self.prio[rest]
        return got


def split_box(lo: torch.Tensor, hi: torch.Tensor, dims: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two halves of each box [lo_i, hi_i] along ``dims[i]`` (both keep the midpoint)."""
    idx = torch.arange(lo.shape[0])
    mid = lo[idx, dims] + (hi[idx, dims] - lo[idx, dims]) / 2
    left_hi, right_lo = hi.clone(), lo.clone()
    left_hi[idx, dims] = mid
    right_lo[idx, dims] = mid
    return lo, left_hi, right_lo, hi


__all__ = ["BAB_DOMAINS", "BabOutcome", "BranchRecord", "InputBab", "MAX_INPUT_DIMS",
           "split_box"]
