"""Deciding a VNN-LIB property on a network: bounds -> PGD -> exact MILP, VNN-COMP result words.

The property describes a counterexample: some input in a case's box whose output lies in one
of the case's polytopes ``A y <= b``. The cascade of ``absdsl certify --complete`` decides each
(box, polytope) pair in turn:

1. **bounds**: every domain of the certification cascade (cheap first) bounds the rows ``A y``
   over the box in float64; a polytope is refuted when some row's lower bound exceeds its
   ``b`` by more than the threshold of ``absdsl certify`` (``tolerance`` + 1e-9 times the
   largest magnitude in the computation): no output of the box can satisfy that row;
2. **PGD** (float64) minimises the largest row violation ``max_i (A f(x) - b)_i`` from the box
   centre and random starts;
3. **MILP**: the network on the box as an exact MILP (``training/milp.py``'s encoding, solved
   by HiGHS) with one extra variable ``t >= (A y - b)_i`` minimised under a cutoff ``t <=
   tolerance + slack``; an infeasible cutoff proves the polytope empty.

``unsat`` needs every polytope refuted. ``sat`` needs a witness: an input in the box, rounded
to float32 (the file's input type) and kept in the box, that the float64 model puts inside
the polytope with a margin above float32 rounding, **and** that onnxruntime, run on the ONNX
file itself, also puts inside the polytope. A witness onnxruntime does not reproduce is an
error (the import disagrees with the file), never a result. Otherwise ``timeout`` (the budget
ran out) or ``unknown``.
"""

from __future__ import annotations

import copy
import math
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import absdsl
from absdsl.errors import AbsdslError
from absdsl.training.certify import REL_TOLERANCE, certificate_threshold
from absdsl.training.programs import CASCADE_ORDER
from absdsl.verification import COMPLETE_STAGES, onnx_io
from absdsl.verification.bab import MAX_INPUT_DIMS, InputBab
from absdsl.verification.relu_bab import ReluBab
from absdsl.verification.vnnlib import Polytope, Property, VnnlibError, VnnlibTimeout, read_vnnlib

DEFAULT_TOLERANCE = 1e-6
WITNESS_SLACK = 1e-6  # a witness must satisfy its rows by this much (x (1 + max |y|))
CUTOFF_SLACK = 1e-5
RESULTS = ("unsat", "sat", "unknown", "timeout")



class WitnessError(AbsdslError):
    """A counterexample that onnxruntime does not reproduce on the ONNX file."""


@dataclass
class Witness:
    case: int
    polytope: int
    x: np.ndarray  # flat, float32 values
    y: np.ndarray  # onnxruntime's outputs at x
    stage: str


@dataclass
class VerifyResult:
    result: str  # unsat | sat | unknown | timeout
    seconds: float
    stage: str | None = None  # the stage that decided (sat), or the last that refuted (unsat)
    witness: Witness | None = None
    refuted: dict[str, int] = field(default_factory=dict)  # polytopes refuted per stage
    open_polytopes: int = 0
    notes: list[str] = field(default_factory=list)
    complete: str | None = None  # the complete stage that ran (bab | milp | none)
    branches: int = 0  # sub-boxes bounded by branch and bound

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"result": self.result, "seconds": round(self.seconds, 4),
                               "stage": self.stage, "complete": self.complete,
                               "branches": self.branches, "refuted": self.refuted,
                               "open_polytopes": self.open_polytopes, "notes": self.notes}
        if self.witness is not None:
            w = self.witness
            out["witness"] = {"case": w.case, "polytope": w.polytope, "stage": w.stage,
                              "X": [float(v) for v in w.x], "Y": [float(v) for v in w.y]}
        return out

    def vnncomp_text(self) -> str:
        """The result file of the VNN-COMP convention: the word, then the counterexample."""
        lines = [self.result]
        if self.witness is not None:
            pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(self.witness.x)]
            pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(self.witness.y)]
            lines.append("(" + "\n ".join(pairs) + ")")
        return "\n".join(lines) + "\n"


def _float32_in_box(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """x rounded to float32, moved by an ulp where rounding left the box."""
    x32 = np.clip(x, lo, hi).astype(np.float32)
    below = x32.astype(np.float64) < lo
    x32[below] = np.nextafter(x32[below], np.float32(np.inf))
    above = x32.astype(np.float64) > hi
    x32[above] = np.nextafter(x32[above], np.float32(-np.inf))
    return x32


class _Verifier:
    def __init__(self, net: nn.Module, input_shape: tuple[int, ...], prop: Property,
                 session: Any, timeout: float, tolerance: float, pgd_steps: int,
                 pgd_restarts: int, seed: int, start: float, complete: str = "auto") -> None:
        self.model = copy.deepcopy(net).double().cpu().eval()
        self.input_shape = input_shape
        self.prop = prop
        self.session = session
        self.deadline = start + timeout
        self.start = start
        self.tol = tolerance
        self.pgd_steps = pgd_steps
        self.pgd_restarts = pgd_restarts
        self.gen = torch.Generator().manual_seed(seed)
        self.seed = seed
        self.programs: dict[str, Any] = {}  # domain -> compiled program of the bounds stage
        self.complete = complete
        self.open = {(c, k) for c, case in enumerate(prop.cases)
                     for k in range(len(case.polytopes))}
        self.result = VerifyResult("unknown", 0.0)
        self.timed_out = False  # the complete stage ran out of time (it may stop just before)

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def forward(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
            return self.model(t.reshape(-1, *self.input_shape)).reshape(t.shape[0], -1).numpy()

    def refute(self, stage: str, keys: list[tuple[int, int]]) -> None:
        for key in keys:
            if key in self.open:
                self.open.discard(key)
                self.result.refuted[stage] = self.result.refuted.get(stage, 0) + 1
                self.result.stage = stage

    # -- witnesses ---------------------------------------------------------------------
    def confirm(self, c: int, k: int, x: np.ndarray, stage: str) -> Witness | None:
        """A checked witness from candidate x, None if it is not one; raises if onnxruntime
        disagrees with the float64 model about a clear witness."""
        case = self.prop.cases[c]
        poly = case.polytopes[k]
        x32 = _float32_in_box(x.reshape(-1), case.lo, case.hi)
        y64 = self.forward(x32.astype(np.float64)[None])[0]
        slack = WITNESS_SLACK * (1.0 + float(np.max(np.abs(y64), initial=0.0)))
        if not poly.holds(y64, -slack):
            return None
        y_ort = onnx_io.onnxruntime_outputs(self.session, x32.reshape(1, *self.input_shape))[0]
        if poly.holds(y_ort):
            return Witness(c, k, x32, y_ort, stage)
        diff = float(np.max(np.abs(y_ort - y64)))
        raise WitnessError(
            f"onnxruntime does not reproduce the {stage} witness for case {c}, polytope {k}: "
            f"the imported network's largest row violation is {poly.violation(y64):.6g} "
            f"(inside), onnxruntime's is {poly.violation(y_ort):.6g}; max output difference "
            f"{diff:.3g}")

    def found(self, w: Witness) -> bool:
        self.result.witness = w
        self.result.result, self.result.stage = "sat", w.stage
        return True

    # -- stages ------------------------------------------------------------------------
    def bounds(self) -> None:
        for domain in CASCADE_ORDER:
            if not self.open or self.left() <= 0:
                return
            try:
                prog = absdsl.compile(self.model, domain, input_shape=self.input_shape)
                self.programs[domain] = prog  # reused by branch and bound
            except AbsdslError as err:
                self.result.notes.append(f"bound:{domain} skipped: {str(err).splitlines()[0]}")
                continue
            for c, case in enumerate(self.prop.cases):
                keys = sorted(k for cc, k in self.open if cc == c)
                polys = [case.polytopes[k] for k in keys]
                rows = [p.A for p in polys if p.A.shape[0]]
                if not rows or self.left() <= 0:
                    continue
                spec = torch.from_numpy(np.concatenate(rows))[None]
                lo = torch.from_numpy(case.lo).reshape(1, *self.input_shape)
                hi = torch.from_numpy(case.hi).reshape(1, *self.input_shape)
                try:
                    with torch.no_grad():
                        lb, ub = prog(lo, hi, spec=spec)
                except AbsdslError as err:
                    self.result.notes.append(f"bound:{domain} failed: "
                                             f"{str(err).splitlines()[0]}")
                    break
                gaps = lb[0].numpy() - np.concatenate([p.b for p in polys if p.A.shape[0]])
                if not bool(np.any(gaps > self.tol)):
                    continue
                threshold = self.threshold(prog, lo, hi, lb, ub, polys)
                done, at = [], 0
                for k, p in zip(keys, polys, strict=True):
                    m = p.A.shape[0]
                    if m and bool(np.any(gaps[at:at + m] > threshold)):
                        done.append((c, k))
                    at += m
                self.refute(f"bound:{domain}", done)

    def threshold(self, prog: Any, lo: torch.Tensor, hi: torch.Tensor, lb: torch.Tensor,
                  ub: torch.Tensor, polys: list[Polytope]) -> float:
        """What a row's lb - b must exceed: the certification policy of ``absdsl certify``
        (tolerance + 1e-9 x the largest magnitude in the bound computation), the magnitude
        also taken over the right-hand sides b."""
        base = float(certificate_threshold(prog, lo, hi, lb, ub, self.tol)[0])
        b_max = max((float(np.max(np.abs(p.b))) for p in polys if p.b.size), default=0.0)
        return base + REL_TOLERANCE * b_max

    def pgd(self) -> bool:
        for c, k in sorted(self.open):
            if self.left() <= 0:
                return False
            case = self.prop.cases[c]
            poly = case.polytopes[k]
            x = self._pgd_one(case.lo, case.hi, poly)
            w = self.confirm(c, k, x, "pgd")
            if w is not None:
                return self.found(w)
        return False

    def _pgd_one(self, lo_np: np.ndarray, hi_np: np.ndarray, poly: Polytope) -> np.ndarray:
        """The point of the box with the smallest largest-row violation found by PGD."""
        lo = torch.from_numpy(lo_np)[None]
        hi = torch.from_numpy(hi_np)[None]
        if poly.A.shape[0] == 0:
            return (lo_np + hi_np) / 2
        a = torch.from_numpy(poly.A)
        b = torch.from_numpy(poly.b)
        r = max(1, self.pgd_restarts)
        x = lo + (hi - lo) * torch.rand((r, lo.shape[1]), generator=self.gen,
                                        dtype=torch.float64)
        x[0] = (lo[0] + hi[0]) / 2
        step = 2.0 * (hi - lo) / max(self.pgd_steps, 1)
        best_x, best_v = x[0].clone(), math.inf
        for it in range(max(self.pgd_steps, 1)):
            if it in (self.pgd_steps // 2, (3 * self.pgd_steps) // 4):
                step = step * 0.3
            x.requires_grad_(True)
            y = self.model(x.reshape(r, *self.input_shape)).reshape(r, -1)
            v = (y @ a.T - b).max(dim=1).values
            (grad,) = torch.autograd.grad(v.sum(), x)
            with torch.no_grad():
                i = int(v.argmin())
                if float(v[i]) < best_v:
                    best_v, best_x = float(v[i]), x[i].detach().clone()
                x = torch.minimum(torch.maximum(x - step * grad.sign(), lo), hi).detach()
            if self.left() <= 0:
                break
        with torch.no_grad():
            y = self.model(x.reshape(r, *self.input_shape)).reshape(r, -1)
            v = (y @ a.T - b).max(dim=1).values
            i = int(v.argmin())
            if float(v[i]) < best_v:
                best_x = x[i].clone()
        return best_x.numpy()

    def milp(self) -> bool:
        # lazy: heavy dependency scipy (training.milp), off the CLI start
        from absdsl.training.milp import MilpError, NetworkMilp

        if not self.open or self.left() <= 0:
            return False
        try:
            encoder = NetworkMilp(self.model, self.input_shape)
        except (MilpError, AbsdslError) as err:
            self.result.notes.append(f"milp skipped: {str(err).splitlines()[0]}")
            return False
        for c in sorted({c for c, _ in self.open}):
            case = self.prop.cases[c]
            lo = torch.from_numpy(case.lo).reshape(1, *self.input_shape)
            hi = torch.from_numpy(case.hi).reshape(1, *self.input_shape)
            if self.left() <= 0:
                return False
            bounds = encoder.node_bounds(lo, hi)[0]
            problem = encoder.encode(case.lo.copy(), case.hi.copy(), bounds)
            for k in sorted(k for cc, k in self.open if cc == c):
                if self.left() <= 0:
                    return False
                status, point = self._solve(problem, case.polytopes[k], self.left())
                if status == "refuted":
                    self.refute("milp", [(c, k)])
                elif point is not None:
                    w = self.confirm(c, k, point, "milp")
                    if w is not None:
                        return self.found(w)
        return False

    def _solve(self, problem: Any, poly: Polytope, time_limit: float
               ) -> tuple[str, np.ndarray | None]:
        """min t s.t. network, A y - t <= b, t <= tol + slack: refuted | open (+ a point)."""
        from scipy.optimize import milp  # lazy: heavy dependency scipy

        # lazy: heavy dependency scipy (training.milp), off the CLI start
        from absdsl.training.milp import polytope_problem

        if poly.A.shape[0] == 0:
            return "open", (problem.lo + problem.hi) / 2
        c, integrality, bounds, constraints = polytope_problem(
            problem, poly.A, poly.b, self.tol + CUTOFF_SLACK)
        seconds = max(float(time_limit), 1e-3)
        res = _run_until(lambda: milp(c, integrality=integrality, bounds=bounds,
                                      constraints=constraints,
                                      options={"disp": False, "presolve": True,
                                               "time_limit": seconds}), seconds)
        if res is None:  # killed at the deadline
            return "open", None
        status, dual, x = res
        if status == 2:  # infeasible under the cutoff: min t > tol + slack
            return "refuted", None
        if status == 0 and dual is not None and float(dual) > self.tol:
            return "refuted", None
        if x is None:
            return "open", None
        point = np.clip(x[problem.inputs], problem.lo, problem.hi)
        return "open", point

    def bab(self, relu: bool = False) -> bool:
        """Branch and bound on every case with open polytopes: on the input box
        (``verification.bab``) or, with ``relu``, on ReLU phases (``verification.relu_bab``)."""
        stage = "relu-bab" if relu else "bab"
        for c in sorted({c for c, _ in self.open}):
            if self.left() <= 0:
                return False
            case = self.prop.cases[c]
            keys = sorted(k for cc, k in self.open if cc == c)
            polys = [case.polytopes[k] for k in keys]

            def confirm(j: int, x: np.ndarray, c: int = c, keys: list[int] = keys
                        ) -> Witness | None:
                return self.confirm(c, keys[j], x, stage)

            try:
                search = (ReluBab if relu else InputBab)(
                    self.model, self.input_shape, polys, self.tol, self.left, confirm,
                    seed=self.seed, programs=self.programs)
            except AbsdslError as err:
                self.result.notes.append(f"{stage} skipped: {str(err).splitlines()[0]}")
                return False
            try:
                outcome = search.run(case.lo, case.hi)
            except WitnessError:
                raise
            except AbsdslError as err:  # e.g. bounds that overflowed to NaN: no answer
                self.result.notes.append(f"{stage} stopped: {str(err).splitlines()[0]}")
                return False
            self.result.branches += outcome.branches
            if outcome.note:
                self.result.notes.append(f"{stage}: {outcome.note}")
            if outcome.status == "sat":
                return self.found(outcome.witness)
            if outcome.status == "unsat":
                self.refute(stage, [(c, k) for k in keys])
            else:
                # a search that stopped a round early to keep the deadline is a timeout
                self.timed_out = outcome.status == "timeout"
                return False
        return False

    def complete_stage(self) -> str:
        if self.complete != "auto":
            return self.complete
        n_in = int(np.prod(self.input_shape))
        return "bab" if n_in <= MAX_INPUT_DIMS else "relu"

    def run(self) -> VerifyResult:
        # the box centres first: a property violated there needs no search
        for c, k in sorted(self.open):
            case = self.prop.cases[c]
            w = self.confirm(c, k, (case.lo + case.hi) / 2, "centre")
            if w is not None:
                self.found(w)
                return self.finish()
        self.bounds()
        if self.open and self.left() > 0 and self.pgd():
            return self.finish()
        stage = self.complete_stage()
        self.result.complete = stage
        if stage in ("bab", "relu") and self.open and self.left() > 0 \
                and self.bab(relu=stage == "relu"):
            return self.finish()
        if stage == "relu" and any("relu-bab skipped" in n for n in self.result.notes):
            stage = self.result.complete = "milp"  # no ReLU to split: the exact MILP instead
        if stage == "milp" and self.open and self.left() > 0 and self.milp():
            return self.finish()
        if not self.open:
            self.result.result = "unsat"
        elif self.left() <= 0 or self.timed_out:
            self.result.result, self.result.stage = "timeout", None
        return self.finish()

    def finish(self) -> VerifyResult:
        self.result.open_polytopes = len(self.open) if self.result.result != "sat" else 0
        self.result.seconds = time.perf_counter() - self.start
        return self.result


def _run_until(solve: Any, seconds: float) -> tuple[int, float | None, np.ndarray | None] | None:
    """``solve()`` (a scipy ``milp`` call) in a forked child that is killed ``seconds`` from
    now: HiGHS checks its own time limit only between phases, so the deadline is kept by the
    parent. Returns (status, dual bound, x), or None when the child was killed or failed."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child() -> None:
        try:
            res = solve()
            x = None if res.x is None else np.asarray(res.x, dtype=np.float64)
            dual = getattr(res, "mip_dual_bound", None)
            send.send((int(res.status), None if dual is None else float(dual), x))
        except Exception:  # noqa: BLE001 - any failure leaves the question open
            send.send(None)
        finally:
            send.close()

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    send.close()
    try:
        result = recv.recv() if recv.poll(seconds + 0.2) else None
    except EOFError:  # the child died without an answer
        result = None
    finally:
        recv.close()
        if proc.is_alive():
            proc.kill()
        proc.join()
    return result


def check_sizes(prop: Property, input_shape: tuple[int, ...], num_outputs: int,
                network: str) -> None:
    """The property's X and Y counts must be the network's input and output sizes."""
    n_in = int(np.prod(input_shape))
    if prop.num_inputs != n_in:
        raise VnnlibError(f"{prop.path}: declares {prop.num_inputs} inputs X_0..X_"
                          f"{prop.num_inputs - 1}, but {network} takes "
                          f"{'x'.join(map(str, input_shape))} = {n_in} inputs")
    if prop.num_outputs != num_outputs:
        raise VnnlibError(f"{prop.path}: declares {prop.num_outputs} outputs Y_0..Y_"
                          f"{prop.num_outputs - 1}, but {network} has {num_outputs} outputs")


def verify_property(net: nn.Module, input_shape: tuple[int, ...], prop: Property,
                    onnx_path: str, timeout: float = 300.0,
                    tolerance: float = DEFAULT_TOLERANCE, pgd_steps: int = 50,
                    pgd_restarts: int = 8, seed: int = 0,
                    start: float | None = None, complete: str = "auto") -> VerifyResult:
    """Decide ``prop`` on ``net`` (an imported ``onnx_path``); see the module docstring.

    ``start`` (a ``time.perf_counter()`` value) lets the caller count its own loading time
    against ``timeout``.
    """
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise AbsdslError(f"--timeout must be a positive number of seconds, got {timeout}")
    if not (tolerance > 0 and math.isfinite(tolerance)):
        raise AbsdslError(f"--tolerance must be > 0, got {tolerance}")
    if complete not in COMPLETE_STAGES:
        raise AbsdslError(f"--complete must be one of {', '.join(COMPLETE_STAGES)}, got "
                          f"{complete!r}")
    with torch.no_grad():
        probe = net(torch.zeros((1, *input_shape)))
    check_sizes(prop, input_shape, int(probe.reshape(1, -1).shape[1]), onnx_path)
    session = onnx_io.onnxruntime_session(onnx_path)
    verifier = _Verifier(net, input_shape, prop, session, float(timeout), tolerance, pgd_steps,
                         pgd_restarts, seed, time.perf_counter() if start is None else start,
                         complete)
    if prop.dropped_empty:
        verifier.result.notes.append(f"{prop.dropped_empty} disjunct(s) with an empty input box "
                                     f"or a false constant were dropped")
    return verifier.run()


def decide_files(onnx_path: str, vnnlib_path: str, timeout: float, start: float | None = None,
                 **options: Any) -> tuple[VerifyResult, Property | None]:
    """Read both files and decide, all within ``timeout`` seconds from ``start``.

    The clock runs from ``start`` (the command's own start) through parsing and loading: a
    property or network that takes the whole budget to read gives ``timeout`` (with no
    property, None). Bad input raises (``InputError``: one line, exit 2), before any answer.
    """
    start = time.perf_counter() if start is None else start
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise AbsdslError(f"--timeout must be a positive number of seconds, got {timeout}")
    deadline = start + float(timeout)

    def out_of_time(notes: list[str]) -> VerifyResult:
        return VerifyResult("timeout", time.perf_counter() - start, notes=notes)

    try:
        prop = read_vnnlib(vnnlib_path, deadline)  # a syntax error before the network is read
    except VnnlibTimeout:
        return out_of_time(["the deadline passed while reading the property"]), None
    net = onnx_io.load_onnx(onnx_path)
    check_sizes(prop, net.input_shape, net.num_outputs, onnx_path)
    if time.perf_counter() >= deadline:
        return out_of_time(["the deadline passed while loading the network"]), prop
    return verify_property(net, net.input_shape, prop, onnx_path, timeout=timeout,
                           start=start, **options), prop


__all__ = ["COMPLETE_STAGES", "RESULTS", "VerifyResult", "Witness", "WitnessError",
           "check_sizes", "decide_files", "verify_property"]
