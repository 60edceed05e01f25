"""absdsl's IBP, CROWN-IBP and CROWN (DeepPoly) bounds against auto_LiRPA's on small models
built like auto_LiRPA's own test models (conv, max pooling, min/max, 1-d activations,
Jacobian-style sigmoid/tanh MLPs, conv1d), on the same inputs in one run.

    bash benchmarks/setup_lirpa.sh /work/lirpa-venv
    /work/lirpa-venv/bin/python benchmarks/peer_tightness.py [--only maxpool] [--reps 5]

Prints, per model and method, the mean bound width of each library, their ratio (absdsl /
auto_LiRPA; below 1 is tighter), the share of outputs where absdsl's interval is at most
auto_LiRPA's (+1e-6), and the time of one bound call of each (the median of ``--reps``
calls, the two libraries' calls alternated, after one warm-up call each) with its ratio
(absdsl / auto_LiRPA; below 1 is faster); "refused" where auto_LiRPA raises (e.g. its CROWN
for max pooling needs stride == kernel). Both run in float32 on the CPU, one thread. Every
absdsl bound is also checked against sampled outputs (never violated, or the script fails).
``--only`` keeps the models whose name contains the given text.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import absdsl

METHODS = (("IBP", "box"), ("CROWN-IBP", "crown-ibp"), ("CROWN", "deeppoly"))


class Fn(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class MinMax(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        return self.c(torch.cat([torch.max(a, b), torch.min(a, b)], 1))


class ConvPool(nn.Module):
    def __init__(self, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(kernel, stride, padding)
        n = self.pool(torch.zeros(1, 4, 8, 8)).numel()
        self.fc = nn.Linear(n, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))


class Conv1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class LirpaMaxPoolNet(nn.Module):
    """The model of auto_LiRPA's max-pool test: conv 2x2 to 32 channels, ReLU, max pool 4x4
    stride 4, the pooled map channels last into a 1x1 conv as the dense layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 2)
        self.pool = nn.MaxPool2d(4, 4)
        self.dense = nn.Conv2d(1152, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.pool(F.relu(self.conv(x))).permute(0, 2, 3, 1).flatten(1)
        return self.dense(t.unsqueeze(2).unsqueeze(3)).flatten(1)


class TwoPoolCNN(nn.Module):
    """conv, ReLU, max pool 2x2, conv, ReLU, max pool 2x2, linear: a small vision CNN."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


def zoo_cnn_maxpool() -> nn.Module:
    """The test zoo's ``cnn_maxpool``: conv, ReLU, max pool 2x2, strided conv, ReLU, linear."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 10))


def jacobian_mlp(act: type[nn.Module], depth: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(8, 32), act()]
    for _ in range(depth - 1):
        layers += [nn.Linear(32, 32), act()]
    return nn.Sequential(*layers, nn.Linear(32, 4))


def act_1d(fn: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    return nn.Sequential(nn.Linear(6, 12), Fn(fn), nn.Linear(12, 3))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], float]] = {
    "minmax": (MinMax, (4,), 0.3),
    "conv-maxpool k2": (lambda: ConvPool(2, 2, 0), (1, 8, 8), 0.05),
    "conv-maxpool k2p1": (lambda: ConvPool(2, 2, 1), (1, 8, 8), 0.05),
    "conv-maxpool k3s3": (lambda: ConvPool(3, 3, 0), (1, 8, 8), 0.05),
    "conv-maxpool k4s4 wide": (lambda: ConvPool(4, 4, 0), (1, 8, 8), 0.2),
    "conv-maxpool k3s2p1": (lambda: ConvPool(3, 2, 1), (1, 8, 8), 0.05),
    "lirpa-maxpool-test": (LirpaMaxPoolNet, (1, 28, 28), 0.3),
    "two-pool cnn": (TwoPoolCNN, (1, 16, 16), 0.02),
    "zoo cnn_maxpool": (zoo_cnn_maxpool, (3, 16, 16), 0.02),
    "conv1d": (Conv1d, (2, 9), 0.1),
    "jacobian sigmoid x2": (lambda: jacobian_mlp(nn.Sigmoid, 2), (8,), 0.2),
    "jacobian tanh x2": (lambda: jacobian_mlp(nn.Tanh, 2), (8,), 0.2),
    **{f"1-d {name}": (lambda fn=fn: act_1d(fn), (6,), 0.3) for name, fn in (
        ("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("exp", torch.exp),
        ("square", lambda t: t * t), ("sin", torch.sin), ("cos", torch.cos),
        ("arctan", torch.arctan), ("softsign", F.softsign))},
}


def _median_ms(fn: Callable[[], object], other: Callable[[], object], reps: int
               ) -> tuple[float, float]:
    """Median times (ms) of ``fn`` and ``other``, called alternately ``reps`` times after
    one warm-up call each."""
    fn(), other()
    mine, theirs = [], []
    for _ in range(reps):
        for call, times in ((fn, mine), (other, theirs)):
            start = time.perf_counter()
            call()
            times.append(1000 * (time.perf_counter() - start))
    return statistics.median(mine), statistics.median(theirs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="models whose name contains this text")
    parser.add_argument("--reps", type=int, default=5, help="timed calls of each library")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    try:
        from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
    except ImportError:
        print("auto_LiRPA is not importable: bash benchmarks/setup_lirpa.sh VENV, then run "
              "this script with VENV/bin/python", file=sys.stderr)
        return 2
    print(f"{'model':22} {'method':9} {'absdsl':>10} {'auto_LiRPA':>10} {'ratio':>7} "
          f"{'ours<=':>7} {'ms ours':>8} {'ms peer':>8} {'t ratio':>7}")
    for name, (make, shape, eps) in MODELS.items():
        if args.only not in name:
            continue
        torch.manual_seed(0)
        model = make().eval()
        x = torch.randn(16, *shape)
        lo, hi = x - eps, x + eps
        bounded = BoundedModule(model, torch.zeros(1, *shape))
        bx = BoundedTensor(x, PerturbationLpNorm(norm=math.inf, eps=eps))
        pts = lo + (hi - lo) * torch.rand(256, *lo.shape)
        with torch.no_grad():
            ys = model(pts.flatten(0, 1)).reshape(256, lo.shape[0], -1)
        for method, domain in METHODS:
            prog = absdsl.compile(model, domain)
            with torch.no_grad():
                al, au = prog(lo, hi)
                try:
                    ll, lu = bounded.compute_bounds(x=(bx,), method=method)
                except Exception as err:  # an op or setting the peer has no bound for
                    print(f"{name:22} {method:9} {float((au - al).mean()):10.5f} "
                          f"{'refused':>10}  ({type(err).__name__}: {str(err)[:40]})")
                    continue
            tol = 1e-5 * (1 + ys.abs())
            if bool((ys < al - tol).any() or (ys > au + tol).any()):
                print(f"{name}: absdsl {domain} bound violated by a sampled output")
                return 1
            ours, theirs = (au - al), (lu - ll)
            share = float((ours <= theirs + 1e-6).float().mean())
            with torch.no_grad():
                t_ours, t_peer = _median_ms(
                    lambda p=prog, a=lo, b=hi: p(a, b),
                    lambda m=method, net=bounded, t=bx: net.compute_bounds(x=(t,), method=m),
                    args.reps)
            print(f"{name:22} {method:9} {float(ours.mean()):10.5f} {float(theirs.mean()):10.5f} "
                  f"{float(ours.mean() / theirs.mean()):7.4f} {share:7.2f} {t_ours:8.2f} "
                  f"{t_peer:8.2f} {t_ours / t_peer:7.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
