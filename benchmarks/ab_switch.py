"""A/B of one engine option on a table (b) configuration, in one process.

    python benchmarks/ab_switch.py --net fc --switch zero_columns --off -1 --on 0.9
    python benchmarks/ab_switch.py --net cnn5 --switch sparse_lines --off -1 --on 0.25

The switch is a numeric field of ``absdsl.EngineOptions`` (such as ``zero_columns`` or
``sparse_lines``). The model is compiled with the switch off and on, and the two programs
are called alternately, so both see the same machine load; the script prints both medians,
their ratio and the largest bound difference (a scheduling switch must not change the bounds beyond
rounding). ``--train-epochs N`` first trains the net normally on mnist5k for N epochs, since
the share of stably inactive neurons (what some switches exploit) differs after training.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import absdsl  # noqa: E402
from absdsl import cpu_memory  # noqa: E402
from absdsl.compiler.context import EngineOptions  # noqa: E402
from absdsl.experiments.bench_bounds import NETS, _inputs, build_net  # noqa: E402


def train_normally(model: torch.nn.Module, epochs: int, seed: int) -> tuple:
    """``epochs`` of Adam on cross-entropy over mnist5k; returns its first 32 images, labels."""
    from absdsl.training.data import _read_mnist5k

    images, labels = _read_mnist5k()
    x = torch.as_tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28)
    x = x / x.max()
    y = torch.as_tensor(labels).long()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval(), x[:32], y[:32]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=sorted(NETS), default="fc")
    parser.add_argument("--domain", default="deeppoly")
    numeric = sorted(f.name for f in fields(EngineOptions) if f.type == "float")
    parser.add_argument("--switch", required=True, choices=numeric,
                        help="a numeric field of absdsl.EngineOptions")
    parser.add_argument("--off", type=float, required=True)
    parser.add_argument("--on", type=float, required=True)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eps", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-epochs", type=int, default=0)
    args = parser.parse_args(argv)
    cpu_memory.apply_default()  # as the absdsl command does: freed tensors stay mapped
    torch.set_num_threads(args.threads)
    shape = (1, 28, 28)
    model = build_net(args.net, shape, args.seed)
    if args.train_epochs > 0:
        model, x, y = train_normally(model, args.train_epochs, args.seed)
        lo, hi = absdsl.linf_ball(x, args.eps)
        spec = absdsl.margin_spec(y, 10)
    else:
        _, _, lo, hi, spec = _inputs(shape, 32, args.eps, args.seed)
    progs = {value: absdsl.compile(model, args.domain,
                                   options=EngineOptions(**{args.switch: value}))
             for value in (args.off, args.on)}

    def call(value: float) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
        start = time.perf_counter()
        out = progs[value](lo, hi, spec=spec)
        return time.perf_counter() - start, out

    with torch.no_grad():
        _, off_bounds = call(args.off)
        _, on_bounds = call(args.on)
        times: dict[float, list[float]] = {args.off: [], args.on: []}
        for _ in range(args.repeats):
            for value in (args.off, args.on):
                times[value].append(call(value)[0])
    diff = max(float((a - b).abs().max()) for a, b in zip(off_bounds, on_bounds, strict=True))
    off_ms = statistics.median(times[args.off]) * 1e3
    on_ms = statistics.median(times[args.on]) * 1e3
    trained = f", trained {args.train_epochs} epochs" if args.train_epochs else ", random weights"
    print(f"{args.net}/{args.domain}{trained}: {args.switch}={args.off:g} {off_ms:.1f} ms, "
          f"{args.switch}={args.on:g} {on_ms:.1f} ms, off/on {off_ms / on_ms:.2f}x; "
          f"max abs bound difference {diff:.1e} (median of {args.repeats}, alternating)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
