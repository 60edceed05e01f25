"""GRAD step time with and without loss fusion and torch.compile, as multiples of a natural step.

One step = the robust loss of the batch (IBP / CROWN-IBP / DeepPoly bounds of the margins, or
the fused bound of the cross-entropy) + backward, as GRAD trains; the natural step is the
forward pass + cross-entropy + backward on the same batch. All variants are timed in one run,
calls interleaved round by round, and the median per variant is reported. Also printed: the
fused bound against the margin form (mean worst-case cross-entropy, lower is tighter).

    python benchmarks/bench_fusion.py                 # CNN3, batch 64, eps 0.1, ~2 minutes
    python benchmarks/bench_fusion.py --nets cnn3,cnn5 --backend aot_eager

The first compiled call of each program is not timed (its duration is printed): with a cold
inductor cache it takes minutes on a loaded 2-core machine, from the cache seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

import absdsl
from absdsl.training.data import dataset_info
from absdsl.training.fused import CompileFallbackWarning, compile_programs_fused
from absdsl.training.loss_fusion import fused_ce_upper
from absdsl.training.models import build_model, ibp_init
from absdsl.training.objective import certified_loss, input_box, margin_lower

DOMAINS = ("box", "crown-ibp", "deeppoly")
LABEL = {"box": "IBP", "crown-ibp": "CROWN-IBP", "deeppoly": "DeepPoly"}


def _step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn().backward()
    return run


def bench_net(net: str, batch: int, eps: float, rounds: int, backend: str | None) -> None:
    torch.manual_seed(0)
    info = dataset_info("mnist5k")
    model = build_model(net, info)
    ibp_init(model)
    model.eval()
    x = torch.rand(batch, *info.shape)
    y = torch.randint(0, info.num_classes, (batch,))
    n = info.num_classes
    eager = {d: absdsl.compile(model, domain=d) for d in DOMAINS}
    variants: dict[str, Callable[[], None]] = {
        "natural": _step(model, lambda: F.cross_entropy(model(x), y))}
    sets = {"eager": eager}
    if backend is not None:
        sets["compiled"] = compile_programs_fused(eager, backend=backend)
    for kind, progs in sets.items():
        for d in DOMAINS:
            for fusion in ((False, True) if d != "box" else (False,)):
                def loss(progs=progs, d=d, fusion=fusion) -> torch.Tensor:
                    return certified_loss(progs[d], None, x, y, eps, num_classes=n,
                                          programs=progs, domain=d, loss_fusion=fusion)
                name = f"{LABEL[d]}{' +fusion' if fusion else ''} [{kind}]"
                variants[name] = _step(model, loss)
    times: dict[str, list[float]] = {k: [] for k in variants}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompileFallbackWarning)
        for name, run in variants.items():  # first calls (compiling) are not timed
            t0 = time.perf_counter()
            run()
            if name.endswith("[compiled]"):
                print(f"  first call {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    for w in caught:
        print(f"  warning: {w.message}")
    for _ in range(rounds):
        for name, run in variants.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["natural"])
    print(f"\n{net} batch {batch} eps {eps}: natural step {base * 1e3:.1f} ms "
          f"(median of {rounds})")
    print(f"  {'step':<32} {'ms':>9} {'x natural':>10}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<32} {med * 1e3:9.1f} {med / base:10.2f}")
    lo, hi = input_box(x, eps)
    print("  tightness (mean worst-case CE bound; lower is tighter):")
    with torch.no_grad():
        for d in ("crown-ibp", "deeppoly"):
            m = margin_lower(eager[d], None, lo, hi, y, n)
            margin_ce = float(F.cross_entropy(-m.scatter(1, y.unsqueeze(1), 0.0), y))
            fused, _ = fused_ce_upper(eager[d], eager["box"], None, lo, hi, y, n)
            fused_ce = float(fused.mean())
            print(f"    {LABEL[d]:<10} margin form {margin_ce:9.4f}   fused {fused_ce:9.4f}"
                  f"   fused / margin {fused_ce / margin_ce:6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="cnn3", help="comma-separated: cnn3, cnn5, cnn7, fc")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=5, help="timed calls per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="inductor",
                        help="torch.compile backend (inductor, aot_eager) or 'none'")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backend = None if args.backend == "none" else args.backend
    for net in args.nets.split(","):
        bench_net(net.strip(), args.batch, args.eps, args.rounds, backend)


if __name__ == "__main__":
    main()
