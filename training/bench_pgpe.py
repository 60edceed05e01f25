"""``absdsl bench pgpe``: time and peak memory of one PGPE generation, batched vs baselines.

For each domain, on CNN3 with MNIST shapes, one generation (sample, evaluate the population
on one minibatch, update) is timed three ways:

- batched: the whole population through ``torch.func.vmap`` over the program's functional
  form, chunked to the memory budget (what ``--optimizer pgpe`` does);
- (a) one by one: the same program called once per member;
- (b) ideal: the same number of input boxes as one call with a single weight vector
  (popsize x minibatch inputs, chunked like the batched run): the throughput the program
  reaches when nothing differs between members.

Ratios come from one run on one machine, so they compare like with like.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .smoothing.memory import PeakMemory
from .smoothing.pgpe import PGPEOptions, PGPESearch


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domains", default="box,deeppoly", help="comma-separated domains")
    parser.add_argument("--popsize", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3, help="timed generations per variant")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--memory-budget-mib", type=float, default=None,
                        help="memory one vmapped call may use (default: automatic)")
    parser.add_argument("--large", action="store_true",
                        help="also popsize 256, batch 512 (meant for a GPU)")
    parser.add_argument("--skip-one-by-one", action="store_true",
                        help="leave out baseline (a), the slowest")
    parser.add_argument("--one-by-one-members", type=int, default=None, metavar="K",
                        help="time baseline (a) on K members and scale to the popsize "
                             "(for slow domains on a CPU; the table says so)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (1 gives stable CPU timings on a busy "
                             "machine)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")


def cnn3() -> nn.Module:
    """The paper's CNN3 for 1x28x28 inputs (the built-in model when it is available)."""
    from .data import dataset_info
    from .models import cnn3 as build

    return build(dataset_info("mnist"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, int]:
    """(median seconds, peak bytes) of ``fn`` after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(max(repeats, 1)):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    times.sort()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        with PeakMemory() as tracker:
            fn()
        peak = tracker.peak_bytes
    return times[len(times) // 2], int(peak)


def bench_domain(
    domain: str, popsize: int, batch: int, eps: float, device: torch.device,
    repeats: int, budget: int | None, one_by_one: bool, members: int | None = None,
) -> dict[str, Any]:
    import absdsl

    from .smoothing.fitness import PopulationObjective

    torch.manual_seed(0)
    model = cnn3().to(device).eval()
    program = absdsl.compile(model, domain=domain)
    objective = PopulationObjective(model, {domain: program}, domain, 10, memory_budget=budget)
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    objective.set_batch(x, y, eps)
    search = PGPESearch(objective.layout.flatten(model), PGPEOptions(popsize=popsize, seed=0))
    chunk = objective.chunk_size("loss", popsize)

    def generation(evaluate: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            values = search.ask()
            search.tell(values, evaluate(values))
        return run

    row: dict[str, Any] = {
        "domain": domain, "popsize": popsize, "batch": batch, "chunk": chunk,
        "params": objective.layout.size,
    }
    row["batched_s"], row["batched_peak"] = _measure(
        generation(objective.losses), device, repeats
    )
    if one_by_one:
        k = popsize if members is None else max(1, min(members, popsize))

        def some_members(values: torch.Tensor) -> torch.Tensor:
            losses = objective.losses_one_by_one(values[:k])
            return torch.cat([losses, losses.new_zeros(popsize - k)])

        seconds, row["one_by_one_peak"] = _measure(
            generation(some_members), device, max(1, repeats // 2)
        )
        row["one_by_one_s"] = seconds * popsize / k
        row["one_by_one_members_timed"] = k

    # (b): popsize x batch input boxes, one weight vector, in chunks of chunk x batch inputs
    from .objective import certified_loss

    xs = x.repeat(chunk, 1, 1, 1)
    ys = y.repeat(chunk)
    calls = -(-popsize // chunk)

    @torch.no_grad()
    def ideal() -> None:
        for _ in range(calls):
            certified_loss(program, None, xs, ys, eps, num_classes=10)

    row["ideal_s"], row["ideal_peak"] = _measure(ideal, device, repeats)
    return row


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("| domain | popsize | batch | chunk | batched s/gen | (a) one-by-one s/gen "
            "| (a)/batched | (b) ideal s/gen | batched/(b) | peak MiB batched / (a) / (b) |")
    lines = [head, "|" + "---|" * 10]
    mib = 1024 * 1024
    for r in rows:
        a = r.get("one_by_one_s")
        a_txt = f"{a:.3f}" if a is not None else "-"
        if a is not None and r.get("one_by_one_members_timed", r["popsize"]) < r["popsize"]:
            a_txt += f" (from {r['one_by_one_members_timed']} members)"
        speedup = f"{a / r['batched_s']:.1f}x" if a is not None else "-"
        a_peak = f"{r['one_by_one_peak'] / mib:.0f}" if a is not None else "-"
        lines.append(
            f"| {r['domain']} | {r['popsize']} | {r['batch']} | {r['chunk']} "
            f"| {r['batched_s']:.3f} | {a_txt} | {speedup} | {r['ideal_s']:.3f} "
            f"| {r['batched_s'] / r['ideal_s']:.2f} "
            f"| {r['batched_peak'] / mib:.0f} / {a_peak} / {r['ideal_peak'] / mib:.0f} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .smoothing.errors import SmoothingConfigError

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SmoothingConfigError("--device cuda but no GPU is available")
    if args.popsize < 2 or args.popsize % 2:
        raise SmoothingConfigError(f"--popsize must be even and >= 2, got {args.popsize}")
    if args.threads is not None:
        if args.threads < 1:
            raise SmoothingConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    budget = None if args.memory_budget_mib is None else int(args.memory_budget_mib * 2**20)
    settings = [(args.popsize, args.batch_size)]
    if args.large:
        settings.append((256, 512))
    rows = []
    for popsize, batch in settings:
        for domain in [d.strip() for d in args.domains.split(",") if d.strip()]:
            rows.append(bench_domain(
                domain, popsize, batch, args.eps, device, args.repeats, budget,
                not args.skip_one_by_one, args.one_by_one_members,
            ))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nCNN3, MNIST shapes, eps {args.eps}, on {device_name(device)} "
          f"(torch {torch.__version__})\n")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"device": device_name(device), "rows": rows}, fh, indent=2)
    return 0
