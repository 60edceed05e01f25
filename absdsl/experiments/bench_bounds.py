"""``absdsl bench bounds``: time and peak memory of bound programs, as ratios to a forward pass.

Two tables, each measured in one run (so ratios compare like with like on the same machine):

(a) Box, HBox and Zonotope programs on CNN3 and CNN5 at batch 128 (``--batch-a``) and on CNN7
    at batch 32 (``--batch-cnn7``), on MNIST (1x28x28) and CIFAR (3x32x32) shapes, with the
    pass/fail of the speed targets for HBox and Zonotope;
(b) DeepPoly and CROWN-IBP programs on MLP 784-64-32-10, CNN3, FC 784-400-200-100-100-10 and
    CNN5 at batch 32 on MNIST shapes, against the reference times of auto_LiRPA 0.7 CROWN;
    with ``--lirpa``, also against auto_LiRPA itself (installed by
    ``benchmarks/setup_lirpa.sh``) on the same inputs in the same run, with the largest
    difference between its bounds and ours.

Inputs are random images in [0, 1], an L-inf box of radius eps (0.02) around them, and the
margin spec of random labels. Time: the forward pass and the program are called in rounds,
alternately (same machine load); a round's forward sample is the median of a short burst of
consecutive forward calls after one discarded call, so the forward figure is not inflated by
what the program's call before it evicted from the caches. Medians of ``--repeats`` rounds
after ``--warmup`` rounds, under ``torch.no_grad()`` (table (b) also with gradients: bounds +
backward of the summed margin lower bounds, against forward + backward of a cross-entropy
loss). Peak memory: the peak of live tensor bytes allocated during one call above what was
live before it, read from ``torch.profiler`` memory events (exact and immune to allocator
caching, unlike RSS deltas; it counts tensor storage only, not Python objects or the
allocator's free lists).

Memory guard (table (a)): before a configuration is timed, its program runs on the first
sample and on the first two samples under the profiler; the peak, extrapolated linearly to
the batch, is the estimate, and a configuration whose estimate exceeds ``--max-gib`` is
skipped ("skipped: needs ~X GiB"). The probes and the timed calls run under an address-space
limit of ``--max-gib`` above what the process holds (Linux), so a call that needs more fails
with an allocation error (a row note) instead of exhausting the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import absdsl
from absdsl import cpu_memory
from absdsl import domains as registry
from absdsl.errors import AbsdslError, InputError

# auto_LiRPA 0.7 CROWN on this class of machine (2 CPU cores), batch 32, MNIST shapes, ms.
LIRPA_CROWN_MS = {"mlp": 17.0, "cnn3": 82.0, "fc": 243.0, "cnn5": 1600.0}
SHAPES = {"mnist": (1, 28, 28), "cifar": (3, 32, 32)}
TABLE_A_NETS = ("cnn3", "cnn5", "cnn7")
TABLE_A_DOMAINS = registry.names_of_kind("forward")
TABLE_B_NETS = ("mlp", "cnn3", "fc", "cnn5")
TABLE_B_DOMAINS = registry.names_of_kind("backsub")[::-1]  # tightest first
NUM_CLASSES = 10
FORWARD_BURST_MS = 100.0  # a round's forward burst lasts about this long (1 to 5 calls)
MAX_BURST = 5
CAP_SLACK_GIB = 1.0  # address space beyond --max-gib: libraries, thread arenas, profiler


@dataclass(frozen=True)
class Target:
    """One speed target for a table (a) row: its batch, memory and time limits."""

    batch: int
    max_gib: float
    max_ratio: float | None  # None: report the time only


# HBox and Zonotope: CNN3/CNN5 at batch 128 within 4 GiB and 50x a forward pass; CNN7 at
# batch 32 within 8 GiB (time reported)
_NET_TARGETS = {"cnn3": Target(128, 4.0, 50.0), "cnn5": Target(128, 4.0, 50.0),
                "cnn7": Target(32, 8.0, None)}
SPEED_TARGETS: dict[str, dict[str, Target]] = {"hbox": _NET_TARGETS, "zonotope": _NET_TARGETS}


def speed_target(net: str, domain: str) -> Target | None:
    """The speed target of a table (a) row (None: the row has none)."""
    return SPEED_TARGETS.get(domain, {}).get(net)


# -- the networks (plain: no input normalisation layer) ------------------------------------
def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _convnet(shape: tuple[int, ...], convs: list[tuple[int, int, int, int]], fcs: list[int],
             batch_norm: bool) -> nn.Sequential:
    ch, hw = shape[0], shape[1]
    layers: list[nn.Module] = []
    for out_ch, k, s, p in convs:
        layers.append(nn.Conv2d(ch, out_ch, k, stride=s, padding=p))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU())
        ch, hw = out_ch, _conv_out(hw, k, s, p)
    layers.append(nn.Flatten())
    width = ch * hw * hw
    for n in fcs:
        layers.append(nn.Linear(width, n))
        if batch_norm:
            layers.append(nn.BatchNorm1d(n))
        layers.append(nn.ReLU())
        width = n
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


def _mlp(shape: tuple[int, ...], widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(shape)
    for n in widths:
        layers += [nn.Linear(width, n), nn.ReLU()]
        width = n
    layers.append(nn.Linear(width, NUM_CLASSES))
    return nn.Sequential(*layers)


NETS: dict[str, Callable[[tuple[int, ...]], nn.Module]] = {
    "cnn3": lambda s: _convnet(s, [(8, 5, 2, 2), (8, 4, 2, 1)], [], False),
    "cnn5": lambda s: _convnet(s, [(16, 5, 2, 2), (16, 4, 2, 1), (32, 4, 2, 1)], [512], False),
    "cnn7": lambda s: _convnet(s, [(64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1),
                                   (128, 3, 1, 1)], [512], True),
    "mlp": lambda s: _mlp(s, [64, 32]),
    "fc": lambda s: _mlp(s, [400, 200, 100, 100]),
    "tiny": lambda s: _convnet(s, [(2, 4, 2, 1)], [8], False),
}


def build_net(name: str, shape: tuple[int, ...], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = NETS[name](shape)
    for m in model.modules():  # non-trivial batch-norm statistics, as after training
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.running_mean is not None and m.running_var is not None
            with torch.no_grad():
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


# -- measurement ---------------------------------------------------------------------------
def time_ms(fn: Callable[[], Any], repeats: int, warmup: int, max_seconds: float = math.inf
            ) -> float:
    """Median wall time of ``fn`` in ms after ``warmup`` untimed calls.

    A call slower than ``max_seconds`` (seen in the first warm-up) cuts the rest of the
    warm-up and the repeats to one timed call, so slow configurations stay affordable.
    """
    for i in range(warmup):
        t0 = time.perf_counter()
        fn()
        if i == 0 and time.perf_counter() - t0 > max_seconds:
            repeats = 1
            break
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def paired_ms(base: Callable[[], Any], fn: Callable[[], Any], repeats: int, warmup: int,
              max_seconds: float = math.inf, burst: bool = False) -> tuple[float, float]:
    """Median times (ms) of ``base`` and ``fn``, called alternately so that both see the same
    machine load (on a shared machine, load changes over seconds; ratios stay comparable).

    With ``burst``, each round calls ``base`` once untimed (it refills the caches and the
    allocator that ``fn``'s call before it emptied) and then times a burst of consecutive
    calls (5 for a fast ``base``, 1 for one slower than ``FORWARD_BURST_MS``); the burst's
    median is the round's ``base`` sample. Without it each round times one call of each.
    """
    base_times = []
    for i in range(warmup):
        t0 = time.perf_counter()
        base()
        t1 = time.perf_counter()
        fn()
        base_times.append(t1 - t0)
        if i == 0 and time.perf_counter() - t1 > max_seconds:
            repeats = 1
            break
    fastest_ms = min(base_times) * 1e3 if base_times else FORWARD_BURST_MS
    n_burst = max(1, min(MAX_BURST, int(FORWARD_BURST_MS / max(fastest_ms, 1e-3))))
    tb, tf = [], []
    for _ in range(max(repeats, 1)):
        if burst:
            base()
            times = []
            for _ in range(n_burst):
                t0 = time.perf_counter()
                base()
                times.append(time.perf_counter() - t0)
            tb.append(statistics.median(times))
        else:
            t0 = time.perf_counter()
            base()
            tb.append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        fn()
        tf.append(time.perf_counter() - t1)
    return statistics.median(tb) * 1e3, statistics.median(tf) * 1e3


def throughput_gflops() -> float:
    """fp32 1024x1024 matmul GFLOP/s now: how much of the CPU this run actually gets."""
    a = torch.randn(1024, 1024)
    a @ a
    t0 = time.perf_counter()
    for _ in range(5):
        a @ a
    return 5 * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9


def peak_tensor_bytes(fn: Callable[[], Any]) -> int:
    """Peak live CPU tensor bytes allocated during one call of ``fn`` (torch.profiler)."""
    sys.stderr.flush()
    saved = os.dup(2)  # kineto prints start/stop lines on fd 2: keep them off the report
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]"]
    events.sort()
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _vm_bytes() -> int | None:
    """The process's virtual address space now (Linux), or None where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@contextlib.contextmanager
def address_space_cap(gib: float) -> Iterator[None]:
    """Limit the process's address space to ``gib`` GiB above what it holds now.

    An allocation beyond it fails (``MemoryError`` or torch's ``RuntimeError``) instead of
    exhausting a shared machine. Only where ``resource`` and ``/proc`` exist (Linux); a no-op
    elsewhere. The previous limit is restored on exit.
    """
    try:
        import resource  # lazy: platform module resource
    except ImportError:  # pragma: no cover - not Linux
        yield
        return
    now = _vm_bytes()
    if now is None or not math.isfinite(gib):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = now + int((gib + CAP_SLACK_GIB) * 2**30)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def estimate_peak_gib(call: Callable[[int], Any], batch: int) -> tuple[float, list[float]]:
    """Peak tensor memory of ``call(batch)`` in GiB, extrapolated from probes at batch 1 and 2.

    ``call(n)`` runs the program on the first ``n`` samples; each probe's peak is measured
    with :func:`peak_tensor_bytes`. The estimate is ``p1 + (batch - 1) (p2 - p1)`` (a fixed
    part plus a part per sample), at least ``p2``; programs that pad every sample to the
    batch's largest one can need more, which the measured peak of the row then shows.
    """
    probes = []
    for n in range(1, min(batch, 2) + 1):
        probes.append(peak_tensor_bytes(functools.partial(call, n)) / 2**30)
    if len(probes) == 1:
        return probes[0], probes
    p1, p2 = probes
    return max(p1 + (batch - 1) * (p2 - p1), p2), probes


@dataclass
class Row:
    table: str
    net: str
    data: str
    domain: str
    batch: int
    fwd_ms: float
    fwd_peak_mib: float
    ms: float | None = None
    peak_mib: float | None = None
    fwd_grad_ms: float | None = None
    grad_ms: float | None = None
    lirpa_ms: float | None = None
    lirpa_live_ms: float | None = None  # auto_LiRPA measured in this run (--lirpa)
    ours_paired_ms: float | None = None  # our time in the same alternating loop as it
    lirpa_max_diff: float | None = None  # max |bound difference| to auto_LiRPA's, margins
    estimate_gib: float | None = None  # table (a): the probes' estimate of the peak
    target: str = ""  # table (a): the row's speed target and whether it is met
    target_ok: bool | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def time_ratio(self) -> float | None:
        return None if self.ms is None else self.ms / self.fwd_ms

    @property
    def mem_ratio(self) -> float | None:
        if self.peak_mib is None or self.fwd_peak_mib <= 0:
            return None
        return self.peak_mib / self.fwd_peak_mib


def _inputs(shape: tuple[int, ...], batch: int, eps: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *shape, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    lo, hi = absdsl.linf_ball(x, eps)
    return x, y, lo, hi, absdsl.margin_spec(y, NUM_CLASSES)


# -- the reference library, measured in the same run (--lirpa) -----------------------------
LIRPA_METHODS = {"deeppoly": "CROWN", "crown-ibp": "CROWN-IBP"}


def lirpa_version() -> str:
    """auto_LiRPA's version, or a clear error naming how to install it."""

    setup = "benchmarks/setup_lirpa.sh VENV installs it next to this torch (docs/benchmarks.md)"
    try:
        import auto_LiRPA  # lazy: optional dependency auto_LiRPA
    except ModuleNotFoundError as err:
        if err.name != "auto_LiRPA" and not (err.name or "").startswith("auto_LiRPA."):
            raise InputError(f"--lirpa: auto_LiRPA is installed but cannot import "
                             f"{err.name!r} ({err}); {setup}") from err
        raise InputError(f"--lirpa needs auto_LiRPA, which is not installed here: {setup}"
                         ) from err
    except ImportError as err:
        raise InputError(f"--lirpa: auto_LiRPA is installed but fails to import ({err}); "
                         f"{setup}") from err
    return str(getattr(auto_LiRPA, "__version__", "unknown"))


def lirpa_program(model: nn.Module, domain: str, lo: torch.Tensor, hi: torch.Tensor,
                  spec: torch.Tensor) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """auto_LiRPA's bounds of the same margins on the same box, as a call to time.

    CROWN is DeepPoly's back-substitution (adaptive ReLU lower slope, the library default);
    CROWN-IBP takes intermediate bounds from IBP, as the crown-ibp domain does. Only the
    public API is used: ``BoundedModule``, ``BoundedTensor``, ``PerturbationLpNorm``.
    """
    # lazy: optional dependency auto_LiRPA
    from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm

    bounded = BoundedModule(model, torch.zeros_like(lo[:1]), bound_opts={"relu": "adaptive"})
    ball = BoundedTensor((lo + hi) / 2, PerturbationLpNorm(norm=float("inf"), x_L=lo, x_U=hi))
    method = LIRPA_METHODS[domain]

    def bounds() -> tuple[torch.Tensor, torch.Tensor]:
        return bounded.compute_bounds(x=(ball,), method=method, C=spec)

    return bounds


def max_bound_difference(a: tuple[torch.Tensor, torch.Tensor],
                         b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Largest |difference| between two (lower, upper) pairs of margin bounds."""
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b, strict=True))


def measure_config(table: str, net: str, data: str, domains: tuple[str, ...], batch: int,
                   args: argparse.Namespace, with_grad: bool, log: Callable[[str], None]
                   ) -> list[Row]:
    shape = SHAPES[data]
    model = build_net(net, shape)
    x, y, lo, hi, spec = _inputs(shape, batch, args.eps, args.seed)
    with torch.no_grad():
        fwd_ms = time_ms(lambda: model(x), args.repeats, args.warmup)
        fwd_peak = peak_tensor_bytes(lambda: model(x)) / 2**20
    fwd_grad_ms = None
    if with_grad:
        def fwd_bwd():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
        fwd_grad_ms = time_ms(fwd_bwd, args.repeats, args.warmup)
    rows = []
    for domain in domains:
        row = Row(table, net, data, domain, batch, fwd_ms, fwd_peak, fwd_grad_ms=fwd_grad_ms,
                  lirpa_ms=LIRPA_CROWN_MS.get(net) if table == "b" else None)
        rows.append(row)
        try:
            start = time.perf_counter()
            prog = absdsl.compile(model, domain, input_shape=shape,
                                  memory_budget_mb=args.memory_budget_mb)
            row.extra["compile_ms"] = round((time.perf_counter() - start) * 1e3, 1)
            def bounds(p: Any = prog) -> Any:
                return p(lo, hi, spec=spec)

            def first(n: int, p: Any = prog) -> Any:
                return p(lo[:n], hi[:n], spec=spec[:n])

            with torch.no_grad(), address_space_cap(args.max_gib):
                if table == "a":
                    try:
                        need, probes = estimate_peak_gib(first, batch)
                    except (RuntimeError, MemoryError) as err:
                        if not _out_of_memory(err):
                            raise
                        row.note = (f"skipped: one or two samples already need more than "
                                    f"--max-gib {args.max_gib:g} GiB")
                        log(f"  {net}/{data}/{domain}: {row.note}")
                        continue
                    row.estimate_gib = need
                    row.extra["probe_gib"] = [round(v, 4) for v in probes]
                    if need > args.max_gib:
                        row.note = (f"skipped: needs ~{need:.1f} GiB "
                                    f"(> --max-gib {args.max_gib:g})")
                        log(f"  {net}/{data}/{domain}: {row.note}")
                        continue
                log(f"  {net}/{data}/{domain} ...")
                row.fwd_ms, row.ms = paired_ms(lambda: model(x), bounds, args.repeats,
                                               args.warmup, args.max_seconds, burst=True)
                row.peak_mib = peak_tensor_bytes(bounds) / 2**20
                log(f"  {net}/{data}/{domain}: {row.ms:.1f} ms = {row.ms / row.fwd_ms:.1f}x "
                    f"forward ({row.fwd_ms:.2f} ms), peak {row.peak_mib:.1f} MiB")
            if with_grad and row.ms > args.max_seconds * 1e3:
                row.note = f"grad timing skipped: one call > {args.max_seconds:g} s"
            elif with_grad:
                def bounds_bwd(p=prog):
                    model.zero_grad(set_to_none=True)
                    lb, _ = p(lo, hi, spec=spec)
                    (-lb).sum().backward()
                with address_space_cap(args.max_gib):
                    row.grad_ms = time_ms(bounds_bwd, args.repeats, args.warmup,
                                          args.max_seconds)
        except (RuntimeError, MemoryError, absdsl.AbsdslError) as err:
            row.ms = row.peak_mib = row.grad_ms = None
            first_line = (str(err).splitlines() or [""])[0][:120]
            row.note = (f"over --max-gib {args.max_gib:g}: allocation failed ({first_line})"
                        if _out_of_memory(err) else
                        f"error: {type(err).__name__}: {first_line}")
            log(f"  {net}/{data}/{domain}: {row.note}")
            continue
        if getattr(args, "lirpa", False) and domain in LIRPA_METHODS:
            measure_lirpa(row, model, domain, (lo, hi, spec), bounds, args, log)
    return rows


def _out_of_memory(err: BaseException) -> bool:
    """An allocation failure (what the address-space cap turns an over-budget call into)."""
    text = str(err)
    return isinstance(err, MemoryError) or "not enough memory" in text \
        or "can't allocate memory" in text or "bad_alloc" in text


def judge_target(row: Row) -> None:
    """Fill ``row.target`` and ``row.target_ok`` with the row's speed target."""
    target = speed_target(row.net, row.domain)
    if target is None:
        return
    if row.batch != target.batch:
        row.target = f"n/a (target at batch {target.batch})"
        return
    limits = f"<= {target.max_gib:g} GiB" + ("" if target.max_ratio is None
                                            else f", <= {target.max_ratio:g}x")
    if row.ms is None or row.peak_mib is None:
        row.target, row.target_ok = f"{limits}: FAIL (did not run)", False
        return
    failed = []
    if row.peak_mib > target.max_gib * 1024:
        failed.append(f"{row.peak_mib / 1024:.1f} GiB")
    ratio = row.time_ratio
    if target.max_ratio is not None and ratio is not None and ratio > target.max_ratio:
        failed.append(f"{ratio:.0f}x")
    row.target_ok = not failed
    row.target = f"{limits}: " + ("pass" if not failed else "FAIL (" + ", ".join(failed) + ")")
    if target.max_ratio is None:
        row.target += f", {row.ms / 1e3:.2f} s"


def measure_lirpa(row: Row, model: nn.Module, domain: str,
                  inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                  bounds: Callable[[], Any], args: argparse.Namespace,
                  log: Callable[[str], None]) -> None:
    """auto_LiRPA's time and bound difference for one row, alternating with ``bounds``.

    Whatever auto_LiRPA raises is the reference's failure, not ours: it becomes the row's
    note and leaves our own measurements in place.
    """
    try:
        lirpa_bounds = lirpa_program(model, domain, *inputs)
        with torch.no_grad():
            row.lirpa_max_diff = max_bound_difference(lirpa_bounds(), bounds())
            row.lirpa_live_ms, row.ours_paired_ms = paired_ms(
                lirpa_bounds, bounds, args.repeats, args.warmup, args.max_seconds)
    except Exception as err:  # noqa: BLE001 - a third-party failure is reported, not raised
        row.lirpa_max_diff = row.lirpa_live_ms = row.ours_paired_ms = None
        first = str(err).splitlines()[0][:120] if str(err) else ""
        note = f"auto_LiRPA error: {type(err).__name__}: {first}"
        row.note = f"{row.note}; {note}" if row.note else note
        log(f"  {row.net}/{row.data}/{domain}: {note}")


# -- output --------------------------------------------------------------------------------
def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _speed(v: float | None) -> str:
    return "-" if v is None else format(v, ".2f" if v < 1 else ".1f") + "x"


def format_table(rows: list[Row], table: str) -> str:
    if table == "a":
        head = ["net", "data", "domain", "batch", "fwd ms", "bounds ms", "time x fwd",
                "fwd MiB", "est. MiB", "bounds MiB", "mem x fwd", "speed target", "note"]
        body = [[r.net, r.data, r.domain, str(r.batch), _fmt(r.fwd_ms, ".2f"),
                 _fmt(r.ms, ".2f"), _fmt(r.time_ratio, ".2f"), _fmt(r.fwd_peak_mib, ".2f"),
                 _fmt(None if r.estimate_gib is None else r.estimate_gib * 1024, ".1f"),
                 _fmt(r.peak_mib, ".1f"), _fmt(r.mem_ratio, ".1f"), r.target or "-", r.note]
                for r in rows]
    else:
        head = ["net", "domain", "fwd ms", "bounds ms", "time x fwd", "mem x fwd",
                "grad: fwd+bwd ms", "bounds+bwd ms", "grad x", "auto_LiRPA ms", "speedup",
                "live: auto_LiRPA ms / ours ms", "live speedup", "max abs diff", "note"]
        body = []
        for r in rows:
            grad_ratio = (None if r.grad_ms is None or not r.fwd_grad_ms
                          else r.grad_ms / r.fwd_grad_ms)
            speed = None if r.ms is None or r.lirpa_ms is None else r.lirpa_ms / r.ms
            live_speed = (None if r.lirpa_live_ms is None or not r.ours_paired_ms
                          else r.lirpa_live_ms / r.ours_paired_ms)
            live = ("-" if r.lirpa_live_ms is None or r.ours_paired_ms is None
                    else f"{r.lirpa_live_ms:.1f} / {r.ours_paired_ms:.1f}")
            body.append([r.net, r.domain, _fmt(r.fwd_ms, ".2f"), _fmt(r.ms, ".1f"),
                         _fmt(r.time_ratio, ".1f"), _fmt(r.mem_ratio, ".1f"),
                         _fmt(r.fwd_grad_ms, ".2f"), _fmt(r.grad_ms, ".1f"),
                         _fmt(grad_ratio, ".1f"), _fmt(r.lirpa_ms, ".0f"),
                         _speed(speed), live, _speed(live_speed),
                         _fmt(r.lirpa_max_diff, ".1e"), r.note])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for b in body:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(b, widths, strict=True))
                     + " |")
    return "\n".join(lines)


def log(msg: str) -> None:
    """Progress to stderr, so stdout holds only the tables."""
    print(msg, file=sys.stderr, flush=True)


def machine_state() -> tuple[float, float]:
    """The 1-minute load average and the fp32 matmul GFLOP/s now (how much CPU a run had)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return load, throughput_gflops()


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, torch {torch.__version__}, {torch.get_num_threads()} threads"


# -- the command ---------------------------------------------------------------------------
def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", choices=("a", "b", "both"), default="both",
                        help="a: Box/HBox/Zonotope on CNN3/5/7; b: DeepPoly/CROWN-IBP "
                             "vs auto_LiRPA; default both")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 warm-up, 2 repeats, no gradient timing")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 7)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls (default 2)")
    parser.add_argument("--eps", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-a", type=int, default=128,
                        help="table (a) batch of CNN3, CNN5 and the other nets (128)")
    parser.add_argument("--batch-cnn7", type=int, default=32,
                        help="table (a) batch of CNN7 (32, the speed target's batch)")
    parser.add_argument("--batch-b", type=int, default=32, help="table (b) batch (32)")
    parser.add_argument("--nets", default=None,
                        help="comma-separated subset of nets (cnn3,cnn5,cnn7,mlp,fc,tiny)")
    parser.add_argument("--data", default=None, help="table (a) shapes: mnist,cifar")
    parser.add_argument("--domains", default=None, help="comma-separated subset of domains")
    parser.add_argument("--max-gib", type=float, default=8.0,
                        help="table (a): skip configurations whose estimated peak (from "
                             "probes at batch 1 and 2) exceeds this; every call runs under "
                             "an address-space cap this far above the process (8)")
    parser.add_argument("--memory-budget-mb", type=float, default=2048.0,
                        help="DeepPoly back-substitution budget passed to absdsl.compile")
    parser.add_argument("--no-grad-timing", action="store_true",
                        help="table (b): skip the bounds + backward timing")
    parser.add_argument("--max-seconds", type=float, default=10.0,
                        help="a call slower than this is timed once, without gradients (10)")
    parser.add_argument("--lirpa", action="store_true",
                        help="table (b): also run auto_LiRPA (if installed) on the same inputs, "
                             "alternating with ours, and compare the bounds")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="write the measured numbers to PATH")


def _subset(text: str | None, default: tuple[str, ...], known: tuple[str, ...] | list[str],
            what: str) -> tuple[str, ...]:

    if text is None:
        return default
    items = tuple(s.strip().lower() for s in text.split(",") if s.strip())
    bad = [s for s in items if s not in known]
    if bad or not items:
        raise InputError(f"unknown {what} {', '.join(bad) or text!r}; choose from "
                         f"{', '.join(known)}")
    return items


def run(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    for flag in ("batch_a", "batch_b", "batch_cnn7"):
        if getattr(args, flag) < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be >= 1, got "
                             f"{getattr(args, flag)}")
    if not args.max_gib > 0:
        raise InputError(f"--max-gib must be > 0, got {args.max_gib}")
    torch.set_num_threads(args.threads)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.quick else 7)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if args.repeats < 1 or args.warmup < 0:
        raise InputError("--repeats must be >= 1 and --warmup >= 0")
    tables = ("a", "b") if args.table == "both" else (args.table,)
    all_domains = TABLE_A_DOMAINS + TABLE_B_DOMAINS
    nets = _subset(args.nets, (), tuple(NETS), "net")
    domains = _subset(args.domains, (), all_domains, "domain")
    datas = _subset(args.data, tuple(SHAPES), tuple(SHAPES), "data shape")

    lirpa = lirpa_version() if args.lirpa and "b" in tables else None
    load, gflops = machine_state()
    print(f"# absdsl bench bounds: {machine()}; eps {args.eps}, median of {args.repeats} after "
          f"{args.warmup} warm-up, forward and bounds called alternately; memory = peak live "
          f"tensor bytes (torch.profiler); at start: load average {load:.1f}, "
          f"1024^2 matmul {gflops:.1f} GFLOP/s")
    result: dict[str, Any] = {"machine": machine(), "eps": args.eps, "repeats": args.repeats,
                              "warmup": args.warmup, "threads": args.threads, "load_average": load,
                              "matmul_gflops": gflops, "auto_lirpa": lirpa, "rows": []}
    t_start = time.perf_counter()
    for table in tables:
        t_nets = (tuple(n for n in nets if n in NETS) if nets
                  else (TABLE_A_NETS if table == "a" else TABLE_B_NETS))
        own = TABLE_A_DOMAINS if table == "a" else TABLE_B_DOMAINS
        t_domains = tuple(d for d in domains if d in own) if domains else own
        if not t_domains:
            continue
        rows: list[Row] = []
        if table == "a":
            title = (f"(a) Box/HBox/Zonotope vs forward, batch {args.batch_a} (CNN7: "
                     f"{args.batch_cnn7}), ratios = bounds / forward; est. = peak estimated "
                     f"from batch 1 and 2 before the row runs")
            for data in datas:
                for net in t_nets:
                    log(f"[a] {net} {data}")
                    batch = args.batch_cnn7 if net == "cnn7" else args.batch_a
                    rows += measure_config("a", net, data, t_domains, batch, args, False, log)
            for r in rows:
                judge_target(r)
        else:
            title = (f"(b) DeepPoly/CROWN-IBP vs forward and auto_LiRPA 0.7 CROWN (the "
                     f"reference figures), batch {args.batch_b}, MNIST shapes")
            if lirpa is not None:
                title += (f"; live: auto_LiRPA {lirpa} (CROWN for deeppoly, CROWN-IBP for "
                          f"crown-ibp) and ours called alternately; max abs diff: the largest "
                          f"difference of the margin bounds (lower and upper)")
            with_grad = not (args.quick or args.no_grad_timing)
            for net in t_nets:
                log(f"[b] {net} mnist")
                rows += measure_config("b", net, "mnist", t_domains, args.batch_b, args,
                                       with_grad, log)
        print()
        print(title)
        print(format_table(rows, table))
        if table == "a":
            judged = [r for r in rows if r.target_ok is not None]
            if judged:
                print(f"speed targets (HBox and Zonotope; CNN3/CNN5 at batch 128 within "
                      f"4 GiB and 50x a forward pass, CNN7 at batch 32 within 8 GiB): "
                      f"{sum(bool(r.target_ok) for r in judged)} of {len(judged)} pass")
        print("compile (trace + generate + exec), ms: " + ", ".join(
            f"{r.net}/{r.data}/{r.domain} {r.extra['compile_ms']:g}"
            for r in rows if "compile_ms" in r.extra))
        sys.stdout.flush()
        for r in rows:
            d = asdict(r)
            d.update(time_ratio=r.time_ratio, mem_ratio=r.mem_ratio)
            result["rows"].append(d)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_bounds", description=__doc__.splitlines()[0])
    register(parser)
    args = parser.parse_args(argv)
    cpu_memory.apply_default()  # as the absdsl command does: freed tensors stay mapped
    try:
        return run(args)
    except AbsdslError as err:
        print(f"bench_bounds: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
