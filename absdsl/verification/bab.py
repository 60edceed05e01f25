"""Branch and bound on the input box: the complete stage of ``absdsl verify`` for networks
with few inputs (ACAS Xu has 5).

A property is a box and output polytopes ``A y <= b``; it fails (``sat``) when some input of
the box reaches some polytope. Each round takes a batch of open sub-boxes from a stack and

1. runs the plain float64 model at their centres and a few batched PGD steps inside them;
   a point inside a polytope goes to the caller's ``confirm`` (float32 rounding, onnxruntime),
   which turns it into a witness or rejects it;
2. bounds every row ``A y`` over all boxes of the batch in ONE call per domain of a compiled
   program (cheap CROWN-IBP first, then DeepPoly/CROWN on what is left). A polytope is
   refuted on a box when one of its rows' lower bound exceeds its ``b`` by more than the
   certification threshold of ``absdsl certify`` (``tolerance`` + 1e-9 times the largest
   magnitude of the computation, taken per box);
3. splits every box with a polytope still open in two halves along the input dimension with
   the largest ``width x |d (a . f) / dx|`` at the centre (``a`` the row of each open
   polytope closest to being refuted), and pushes both halves. Both halves contain the
   midpoint, so together they cover their parent.

``unsat`` only when every leaf box has every polytope refuted; the stack is depth-first, so
its size stays at most ``batch x depth``.
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

from absdsl.errors import AbsdslError

BAB_DOMAINS = ("crown-ibp", "deeppoly")
MAX_INPUT_DIMS = 64  # above this many inputs, input splitting is not the complete stage
MAX_OPEN_BOXES = 2_000_000  # a stack larger than this ends the search as unknown (memory)
TARGET_CALL_SECONDS = 0.25  # the batch size adapts so one bound call takes about this long


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


class InputBab:
    """Input-box branch and bound for one case (box + polytopes) on a float64 model."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...],
                 polytopes: Sequence[Any], tolerance: float, left: Callable[[], float],
                 confirm: Callable[[int, np.ndarray], Any], *, seed: int = 0,
                 domains: Sequence[str] = BAB_DOMAINS, batch: int = 64,
                 attack_steps: int = 5, samples: int = 32, record: list[BranchRecord] | None = None,
                 programs: dict[str, Any] | None = None, heuristic: str = "bound") -> None:
        import absdsl

        self.model = model
        self.input_shape = tuple(input_shape)
        self.tol = tolerance
        self.left = left
        self.confirm = confirm
        self.record = record
        self.batch = max(1, int(batch))
        self.attack_steps = attack_steps
        self.samples = max(0, int(samples))
        if heuristic not in ("bound", "smear"):
            raise AbsdslError(f"unknown split heuristic {heuristic!r} (bound, smear)")
        self.heuristic = heuristic
        self.scores = torch.zeros((0,))
        self.gen = torch.Generator().manual_seed(seed)
        self.rows_of, self.A, self.b, self.b_max = stack_polytopes(polytopes)
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

    # -- pieces --------------------------------------------------------------------------
    def _shape(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.input_shape)

    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._shape(x)).reshape(x.shape[0], -1)

    def _violations(self, y: torch.Tensor) -> torch.Tensor:
        return violations(y, self.A, self.b, self.rows_of)

    def _attack(self, lo: torch.Tensor, hi: torch.Tensor, open_: torch.Tensor) -> Any:
        """The centre and ``samples`` random points per box (one forward pass); from the
        best of them a few signed-gradient steps on the box's open polytopes."""
        n = lo.shape[1]
        with torch.no_grad():
            pts = lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * torch.rand(
                (lo.shape[0], self.samples + 1, n), generator=self.gen, dtype=lo.dtype)
            pts[:, 0] = (lo + hi) / 2
            v = self._violations(self._outputs(pts.reshape(-1, n))).reshape(
                lo.shape[0], self.samples + 1, -1)
            v = torch.where(open_.unsqueeze(1), v, torch.full_like(v, math.inf))
            x = pts[torch.arange(lo.shape[0]), v.min(dim=2).values.argmin(dim=1)]
        step = (hi - lo) / 4
        for it in range(self.attack_steps + 1):
            x = x.detach().requires_grad_(it < self.attack_steps)
            with torch.enable_grad():
                v = self._violations(self._outputs(x))
                v = torch.where(open_, v, torch.full_like(v, math.inf))
                best = v.min(dim=1).values
                if it < self.attack_steps:
                    (grad,) = torch.autograd.grad(best[torch.isfinite(best)].sum(), x,
                                                  allow_unused=True)
            hits = torch.nonzero(best.detach() <= 0).flatten().tolist()
            for i in hits[:8]:
                k = int(v[i].detach().argmin())
                w = self.confirm(k, x[i].detach().numpy())
                if w is not None:
                    return w
            if it == self.attack_steps or grad is None:
                break
            with torch.no_grad():
                x = torch.minimum(torch.maximum(x - step * grad.sign(), lo), hi)
                step = step * 0.6
        return None

    def _bound(self, lo: torch.Tensor, hi: torch.Tensor, open_: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        """Refute what the domains can: the new open mask, each box's row gaps, counts."""
        from absdsl.training.certify import REL_TOLERANCE, certificate_threshold

        counts: dict[str, int] = {}
        gaps = torch.full((lo.shape[0], self.A.shape[0]), -math.inf, dtype=lo.dtype)
        for name, prog in self.progs:
            todo = torch.nonzero(open_.any(dim=1)).flatten()
            if todo.numel() == 0:
                break
            lo_t, hi_t = self._shape(lo[todo]), self._shape(hi[todo])
            spec = self.A.unsqueeze(0).expand(todo.numel(), -1, -1)
            last = name == self.progs[-1][0] and self.heuristic == "bound"
            if last:  # the bound's sensitivity to the box picks the split dimension
                lo_t.requires_grad_(True)
                hi_t.requires_grad_(True)
            with torch.set_grad_enabled(last):
                lb_g, ub = prog(lo_t, hi_t, spec=spec)
            lb, ub = lb_g.detach(), ub.detach()
            g = lb - self.b
            gaps[todo] = torch.maximum(gaps[todo], g)
            if self.record is not None:
                for j, i in enumerate(todo.tolist()):
                    self.record.append(BranchRecord(lo[i].clone(), hi[i].clone(),
                                                    lb[j].clone(), name))
            cand = torch.nonzero((g > self.tol).any(dim=1)).flatten()
            if cand.numel() == 0:
                continue
            with torch.no_grad():
                thr = certificate_threshold(prog, lo_t[cand], hi_t[cand], lb[cand], ub[cand],
                                            self.tol) + REL_TOLERANCE * self.b_max
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
        if last and lb_g.requires_grad:
            self._bound_scores(todo, lo_t, hi_t, lb_g, open_, gaps)
        return open_, gaps, counts

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
        stack_lo = [torch.from_numpy(lo0.reshape(1, -1).astype(np.float64))]
        stack_hi = [torch.from_numpy(hi0.reshape(1, -1).astype(np.float64))]
        stack_open = [torch.ones((1, n_poly), dtype=torch.bool)]
        stack_depth = [torch.zeros(1, dtype=torch.long)]
        size = 1
        batch = self.batch
        while size:
            if self.left() <= 0:
                out.status = "timeout"
                return out
            lo, hi, open_, depth = _pop(stack_lo, stack_hi, stack_open, stack_depth, batch)
            size -= lo.shape[0]
            t0 = time.perf_counter()
            w = self._attack(lo, hi, open_)
            if w is not None:
                out.status, out.witness = "sat", w
                return out
            self.scores = torch.zeros_like(lo)
            open_, gaps, counts = self._bound(lo, hi, open_)
            out.branches += lo.shape[0]
            for name, c in counts.items():
                out.refuted_by[name] = out.refuted_by.get(name, 0) + c
                out.leaves += c
            keep = open_.any(dim=1)
            if bool(keep.any()):
                lo, hi, open_, gaps, depth = lo[keep], hi[keep], open_[keep], gaps[keep], \
                    depth[keep]
                scores = self.scores[keep] if self.heuristic == "bound" else None
                _, left_hi, right_lo, _ = split_box(lo, hi, self._split_dims(lo, hi, open_,
                                                                             gaps, scores))
                stack_lo += [lo, right_lo]
                stack_hi += [left_hi, hi]
                stack_open += [open_, open_.clone()]
                stack_depth += [depth + 1, depth + 1]
                size += 2 * lo.shape[0]
                out.splits += lo.shape[0]
                out.max_depth = max(out.max_depth, int(depth.max()) + 1)
                if size > MAX_OPEN_BOXES:
                    out.note = f"more than {MAX_OPEN_BOXES} open sub-boxes"
                    return out
            spent = time.perf_counter() - t0
            per_box = spent / max(1, int(keep.numel()))
            batch = int(min(4096, max(8, TARGET_CALL_SECONDS / max(per_box, 1e-6))))
        out.status = "unsat"
        return out


def stack_polytopes(polytopes: Sequence[Any]
                    ) -> tuple[list[slice], torch.Tensor, torch.Tensor, float]:
    """Every polytope's rows in one matrix: (each polytope's slice of rows, A, b, max |b|)."""
    rows_of: list[slice] = []
    at = 0
    for p in polytopes:
        rows_of.append(slice(at, at + int(p.A.shape[0])))
        at += int(p.A.shape[0])
    n_out = int(polytopes[0].A.shape[1])
    a = torch.from_numpy(np.concatenate([p.A for p in polytopes]).reshape(at, n_out))
    b = torch.from_numpy(np.concatenate([p.b for p in polytopes]).reshape(at))
    return rows_of, a, b, float(b.abs().max()) if at else 0.0


def violations(y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rows_of: list[slice]
               ) -> torch.Tensor:
    """[N, P]: max over each polytope's rows of (A y - b); <= 0 inside it."""
    v = y @ a.T - b
    cols = [v[:, s].max(dim=1).values if s.stop > s.start
            else torch.full((v.shape[0],), -math.inf, dtype=v.dtype) for s in rows_of]
    return torch.stack(cols, dim=1)


def _pop(los: list[torch.Tensor], his: list[torch.Tensor], opens: list[torch.Tensor],
         depths: list[torch.Tensor], n: int
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to n boxes from the top of the stack (the newest, deepest boxes first)."""
    taken: list[tuple[torch.Tensor, ...]] = []
    count = 0
    while los and count < n:
        lo, hi, op, d = los[-1], his[-1], opens[-1], depths[-1]
        need = n - count
        if lo.shape[0] <= need:
            los.pop(), his.pop(), opens.pop(), depths.pop()
            taken.append((lo, hi, op, d))
            count += lo.shape[0]
        else:
            taken.append((lo[-need:], hi[-need:], op[-need:], d[-need:]))
            los[-1], his[-1], opens[-1], depths[-1] = lo[:-need], hi[:-need], op[:-need], \
                d[:-need]
            count += need
    return tuple(torch.cat([t[j] for t in taken]) for j in range(4))  # type: ignore[return-value]


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
