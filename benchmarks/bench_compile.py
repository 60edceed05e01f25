"""What ``torch.compile`` gains on bound programs, measured in one run.

Configurations (networks and inputs as in ``absdsl bench bounds``,
``absdsl/experiments/bench_bounds.py``):
Box via ``prog(lo, hi, spec=C)`` on CNN3 and CNN7 at batch 128, and DeepPoly via
``prog.functional(params, lo, hi, C)`` on the MLP 784-64-32-10 at batch 32; MNIST shape
(1, 28, 28), eps 0.02, margin spec of random labels.

Per configuration: the plain forward pass, the eager bound program and the ``torch.compile``d one
are called in turn (the order rotates every round) and each time is the median over the
rounds, so all three see the same machine load; "first call" is the compiled program's first
call (tracing and code generation). Compiled bounds are checked against eager bounds. A
``torch.compile`` error is reported in the note column; graph breaks are counted, not errors.

    python benchmarks/bench_compile.py [--threads 2] [--repeats 7] [--warmup 2] [--mode default]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import absdsl  # noqa: E402
from absdsl import cpu_memory  # noqa: E402
from absdsl.experiments.bench_bounds import (  # noqa: E402
    SHAPES,
    _inputs,
    build_net,
    log,
    machine,
    machine_state,
)

# (net, domain, batch, call): "call" runs prog(lo, hi, spec=C), "functional" prog.functional
CONFIGS: tuple[tuple[str, str, int, str], ...] = (
    ("cnn3", "box", 128, "call"),
    ("cnn7", "box", 128, "call"),
    ("mlp", "deeppoly", 32, "functional"),
)
# Compiled and eager bounds agree when |difference| <= RTOL * (1 + largest |eager bound|):
# fused kernels reorder float32 arithmetic, so a few ulps of the largest value may move.
RTOL = 1e-5


@dataclass
class Result:
    net: str
    domain: str
    call: str
    batch: int
    fwd_ms: float
    eager_ms: float
    compiled_ms: float | None = None
    first_call_s: float | None = None
    max_abs_diff: float | None = None
    scale: float = 0.0  # largest |eager bound|
    graphs: int | None = None
    graph_breaks: int | None = None
    rounds: int = 0
    note: str = ""

    @property
    def agrees(self) -> bool | None:
        if self.max_abs_diff is None:
            return None
        return self.max_abs_diff <= RTOL * (1.0 + self.scale)


def rotating_ms(fns: Sequence[Callable[[], Any]], repeats: int, warmup: int,
                min_seconds: float = 0.0, max_rounds: int = 200) -> tuple[list[float], int]:
    """Median ms of each function and the number of rounds. The functions are called in turn
    with a rotating order, so that all see the same load on a shared machine and none always
    runs right after the same neighbour; fast ones get more rounds (up to ``min_seconds`` of
    timed calls), because short calls are the ones that load spikes distort."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    r = 0
    while r < max(repeats, 1) or (time.perf_counter() - start < min_seconds and r < max_rounds):
        r += 1
        for k in range(len(fns)):
            i = (k + r) % len(fns)
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in times], r


def _reason(err: BaseException) -> str:
    lines = [s for s in str(err).splitlines() if s.strip()]
    return f"{type(err).__name__}: {(lines[0] if lines else '')[:140]}"


def _graph_counts() -> tuple[int, int]:
    """(graphs compiled, graph-break events: one break met on several calls counts each time)."""
    from torch._dynamo.utils import counters

    graphs = int(counters["stats"].get("unique_graphs", 0))
    return graphs, int(sum(counters["graph_break"].values()))


def measure(net: str, domain: str, batch: int, call: str, args: argparse.Namespace,
            log: Callable[[str], None]) -> Result:
    shape = SHAPES["mnist"]
    model = build_net(net, shape)
    x, _y, lo, hi, spec = _inputs(shape, batch, args.eps, args.seed)
    prog = absdsl.compile(model, domain, input_shape=shape)
    params = {k: v.detach() for k, v in prog.params().items()}

    Bounds = tuple[torch.Tensor, torch.Tensor]
    eager: Callable[[], Bounds]
    compiled: Callable[[], Bounds]
    if call == "functional":
        fast_fn = torch.compile(lambda p, lo, hi, C: prog.functional(p, lo, hi, C),
                                mode=args.mode)
        eager = lambda: prog.functional(params, lo, hi, spec)  # noqa: E731
        compiled = lambda: fast_fn(params, lo, hi, spec)  # noqa: E731
    else:
        fast = torch.compile(lambda lo, hi, C: prog(lo, hi, spec=C), mode=args.mode)
        eager = lambda: prog(lo, hi, spec=spec)  # noqa: E731
        compiled = lambda: fast(lo, hi, spec)  # noqa: E731

    def forward() -> torch.Tensor:
        return model(x)

    torch._dynamo.reset()
    from torch._dynamo.utils import counters
    counters.clear()
    with torch.no_grad():
        ref_lb, ref_ub = eager()
        res = Result(net, domain, call, batch, 0.0, 0.0,
                     scale=float(torch.maximum(ref_lb.abs().max(), ref_ub.abs().max())))
        log(f"  {net}/{domain}/{call}: first compiled call ...")
        try:
            t0 = time.perf_counter()
            compiled()
            res.first_call_s = time.perf_counter() - t0
            lb, ub = compiled()  # after the first call: what the timed calls run
            res.max_abs_diff = float(torch.maximum((lb - ref_lb).abs().max(),
                                                   (ub - ref_ub).abs().max()))
            res.graphs, res.graph_breaks = _graph_counts()
            log(f"  {net}/{domain}/{call}: timing ...")
            (res.fwd_ms, res.eager_ms, res.compiled_ms), res.rounds = rotating_ms(
                [forward, eager, compiled], args.repeats, args.warmup, args.min_seconds)
        except Exception as err:  # a compile error is a result to report, not a crash
            res.compiled_ms = res.max_abs_diff = None
            res.note = f"torch.compile failed: {_reason(err)}"
            log(f"  {net}/{domain}/{call}: {res.note}")
            (res.fwd_ms, res.eager_ms), res.rounds = rotating_ms(
                [forward, eager], args.repeats, args.warmup, args.min_seconds)
    if res.graphs is not None:
        res.note = (f"{res.graphs} graph(s), {res.graph_breaks} graph break(s)"
                    + ("; " + res.note if res.note else ""))
    if res.agrees is False:
        res.note += f"; MISMATCH (> {RTOL:g} x (1 + {res.scale:.3g}))"
    torch._dynamo.reset()
    return res


def _f(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(results: list[Result]) -> str:
    head = ["net", "domain (call)", "batch", "fwd ms", "eager ms", "compiled ms",
            "eager / compiled", "compiled / fwd", "first call s", "max abs diff",
            "rel. diff", "rounds", "note"]
    body = []
    for r in results:
        speed = None if r.compiled_ms is None else r.eager_ms / r.compiled_ms
        vs_fwd = None if r.compiled_ms is None else r.compiled_ms / r.fwd_ms
        rel = None if r.max_abs_diff is None else r.max_abs_diff / (1.0 + r.scale)
        body.append([r.net, f"{r.domain} ({r.call})", str(r.batch), _f(r.fwd_ms, ".2f"),
                     _f(r.eager_ms, ".2f"), _f(r.compiled_ms, ".2f"), _f(speed, ".2f"),
                     _f(vs_fwd, ".2f"), _f(r.first_call_s, ".1f"), _f(r.max_abs_diff, ".2e"),
                     _f(rel, ".1e"), str(r.rounds), r.note])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) + " |"
              for b in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_compile", description=__doc__.splitlines()[0],
        epilog="Networks and inputs: absdsl/experiments/bench_bounds.py. Each time is a median "
               "over rounds of alternating calls.")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (2)")
    parser.add_argument("--min-seconds", type=float, default=5.0,
                        help="more rounds (up to 200) until this much is timed (5)")
    parser.add_argument("--keep-cache", action="store_true",
                        help="use inductor's usual on-disk cache; by default a fresh one, so "
                             "'first call' is a cold compile")
    parser.add_argument("--eps", type=float, default=0.02, help="L-inf radius (0.02)")
    parser.add_argument("--seed", type=int, default=0, help="inputs' seed (0)")
    parser.add_argument("--mode", default="default",
                        choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
                        help="torch.compile mode (default)")
    parser.add_argument("--nets", default=None,
                        help="comma-separated subset of " + ",".join(c[0] for c in CONFIGS))
    args = parser.parse_args(argv)
    cpu_memory.apply_default()  # as the absdsl command does: freed tensors stay mapped
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--threads and --repeats must be >= 1, --warmup >= 0")
    wanted = None if args.nets is None else {s.strip() for s in args.nets.split(",")}
    torch.set_num_threads(args.threads)
    with contextlib.ExitStack() as stack:
        if not args.keep_cache:  # read when inductor first compiles, so setting it now works
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="bench_compile_"))
        return _run(args, wanted)


def _run(args: argparse.Namespace, wanted: set[str] | None) -> int:
    load, gflops = machine_state()
    print(f"# bench_compile: {machine()}; torch.compile mode {args.mode}; eps {args.eps}; "
          f"median of >= {args.repeats} rounds (>= {args.min_seconds:g} s) after "
          f"{args.warmup} warm-up; inductor cache {'kept' if args.keep_cache else 'fresh'}; "
          f"at start: load "
          f"average {load:.1f}, 1024^2 matmul {gflops:.1f} GFLOP/s")
    t_start = time.perf_counter()
    results = []
    for net, domain, batch, call in CONFIGS:
        if wanted is None or net in wanted:
            log(f"[{net} {domain} batch {batch}]")
            results.append(measure(net, domain, batch, call, args, log))
    print()
    print(format_table(results))
    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nagreement: |compiled - eager| <= {RTOL:g} x (1 + largest |eager bound|); "
          f"{time.perf_counter() - t_start:.0f} s in all; load average at end {load_end:.1f}")
    return 1 if any(r.agrees is False for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
