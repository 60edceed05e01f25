"""``absdsl bench pgpe``: time and peak memory of one PGPE generation, batched vs baselines.

For each domain, on CNN3 with MNIST shapes, one generation (sample, evaluate the population
on one minibatch, update) is timed four ways:

- batched: what ``--optimizer pgpe`` does by default (``population_eval=auto``): on a GPU
  the largest vmapped chunk the memory budget allows; on the CPU the fastest of a member
  loop and vmapped chunks of 2, 4, 8, ... members, measured on the first generations (which
  run before the timing starts; the row says which plan won and after how many);
- vmap: the population through ``torch.func.vmap`` in chunks sized by the memory budget;
- (a) one by one: the same program called once per member;
- (b) ideal: the same number of input boxes as one call with a single weight vector
  (popsize x minibatch inputs, chunked like vmap): the throughput the program reaches when
  nothing differs between members.

The variants take turns for ``--repeats`` rounds and each reports its fastest round, so
ratios compare like with like on a shared machine; the load averages are printed with them.
``probe s`` is the start-up memory probe that sizes the chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import absdsl
from absdsl.training.data import dataset_info
from absdsl.training.models import cnn3 as build
from absdsl.training.objective import certified_loss
from absdsl.training.smoothing.errors import SmoothingConfigError
from absdsl.training.smoothing.fitness import PopulationObjective
from absdsl.training.smoothing.memory import PeakMemory
from absdsl.training.smoothing.pgpe import PGPEOptions, PGPESearch


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domains", default="box,deeppoly", help="comma-separated domains")
    parser.add_argument("--popsize", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds; each variant's fastest round is reported")
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

    return build(dataset_info("mnist"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes one call of ``fn`` allocates."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    with PeakMemory() as tracker:
        fn()
    return int(tracker.peak_bytes)


def _interleaved(
    variants: dict[str, Callable[[], Any]], device: torch.device, repeats: int
) -> dict[str, float]:
    """Fastest seconds of each variant over ``repeats`` rounds, the variants taking turns.

    Taking turns spreads a change of machine load over all variants, and the fastest run is
    the one least disturbed by other work (load only ever adds time), so ratios of these
    figures are fair on a shared machine.
    """
    best = {name: float("inf") for name in variants}
    for _ in range(max(repeats, 1)):
        for name, fn in variants.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench_domain(
    domain: str, popsize: int, batch: int, eps: float, device: torch.device,
    repeats: int, budget: int | None, one_by_one: bool, members: int | None = None,
) -> dict[str, Any]:
    torch.manual_seed(0)
    model = cnn3().to(device).eval()
    program = absdsl.compile(model, domain=domain)
    x = torch.rand(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    program(*_box(x, eps))  # compile for this input shape before anything is timed

    def objective_for(mode: str) -> PopulationObjective:
        obj = PopulationObjective(model, {domain: program}, domain, 10, memory_budget=budget,
                                  mode=mode)
        obj.set_batch(x, y, eps)
        return obj

    auto, vmapped = objective_for("auto"), objective_for("vmap")
    start = time.perf_counter()
    chunk = auto.chunk_size("loss", popsize)  # the start-up memory probe
    probe_s = time.perf_counter() - start
    vmapped.chunk_size("loss", popsize)
    search = PGPESearch(auto.layout.flatten(model), PGPEOptions(popsize=popsize, seed=0))

    def generation(evaluate: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            values = search.ask()
            search.tell(values, evaluate(values))
        return run

    # auto measures its plans on the first real populations: run those first
    tuning = 0
    while auto.plan("loss", popsize) is None and tuning < 50:
        generation(auto.losses)()
        tuning += 1
    plan = auto.plan("loss", popsize)
    row: dict[str, Any] = {
        "domain": domain, "popsize": popsize, "batch": batch, "chunk": chunk,
        "params": auto.layout.size, "plan": plan.label if plan else "tuning",
        "tuning_generations": tuning, "probe_s": probe_s,
    }
    variants: dict[str, Callable[[], Any]] = {
        "batched": generation(auto.losses), "vmap": generation(vmapped.losses),
    }
    k = popsize
    if one_by_one:
        k = popsize if members is None else max(1, min(members, popsize))

        def some_members(values: torch.Tensor) -> torch.Tensor:
            losses = vmapped.losses_one_by_one(values[:k])
            return torch.cat([losses, losses.new_zeros(popsize - k)])

        variants["one_by_one"] = generation(some_members)

    # (b): popsize x batch input boxes, one weight vector, in chunks of chunk x batch inputs
    xs = x.repeat(chunk, 1, 1, 1)
    ys = y.repeat(chunk)
    calls = -(-popsize // chunk)

    @torch.no_grad()
    def ideal() -> None:
        for _ in range(calls):
            certified_loss(program, None, xs, ys, eps, num_classes=10)

    variants["ideal"] = ideal
    for fn in variants.values():
        fn()  # warm-up
    seconds = _interleaved(variants, device, repeats)
    row["batched_s"], row["vmap_s"], row["ideal_s"] = (
        seconds["batched"], seconds["vmap"], seconds["ideal"]
    )
    row["batched_peak"] = _peak(variants["batched"], device)
    row["vmap_peak"] = _peak(variants["vmap"], device)
    row["ideal_peak"] = _peak(ideal, device)
    if one_by_one:
        row["one_by_one_s"] = seconds["one_by_one"] * popsize / k
        row["one_by_one_members_timed"] = k
        row["one_by_one_peak"] = _peak(variants["one_by_one"], device)
    return row


def _box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


def _load() -> str:
    """The machine's load averages, to print next to timings taken on a shared machine."""
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("| domain | popsize | batch | plan (auto) | batched s/gen | vmap chunk | vmap s/gen "
            "| (a) one-by-one s/gen | (a)/batched | (b) ideal s/gen | batched/(b) | probe s "
            "| peak MiB batched / vmap / (a) / (b) |")
    lines = [head, "|" + "---|" * 13]
    mib = 1024 * 1024
    for r in rows:
        a = r.get("one_by_one_s")
        a_txt = f"{a:.3f}" if a is not None else "-"
        if a is not None and r.get("one_by_one_members_timed", r["popsize"]) < r["popsize"]:
            a_txt += f" (from {r['one_by_one_members_timed']} members)"
        speedup = f"{a / r['batched_s']:.2f}x" if a is not None else "-"
        a_peak = f"{r['one_by_one_peak'] / mib:.0f}" if a is not None else "-"
        lines.append(
            f"| {r['domain']} | {r['popsize']} | {r['batch']} | {r['plan']} "
            f"| {r['batched_s']:.3f} | {r['chunk']} | {r['vmap_s']:.3f} | {a_txt} | {speedup} "
            f"| {r['ideal_s']:.3f} | {r['batched_s'] / r['ideal_s']:.2f} | {r['probe_s']:.2f} "
            f"| {r['batched_peak'] / mib:.0f} / {r['vmap_peak'] / mib:.0f} / {a_peak} "
            f"/ {r['ideal_peak'] / mib:.0f} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
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
    load_before = _load()
    for popsize, batch in settings:
        for domain in [d.strip() for d in args.domains.split(",") if d.strip()]:
            rows.append(bench_domain(
                domain, popsize, batch, args.eps, device, args.repeats, budget,
                not args.skip_one_by_one, args.one_by_one_members,
            ))
            print(json.dumps(rows[-1]), flush=True)
    load_after = _load()
    print(f"\nCNN3, MNIST shapes, eps {args.eps}, on {device_name(device)} "
          f"(torch {torch.__version__}); load average (1/5/15 min) before {load_before}, "
          f"after {load_after}\n")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"device": device_name(device), "load_before": load_before,
                       "load_after": load_after, "rows": rows}, fh, indent=2)
    return 0
