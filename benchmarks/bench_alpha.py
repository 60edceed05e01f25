"""absdsl's alpha-CROWN (the ``alpha-crown`` domain: ``prog.optimize``) against auto_LiRPA
0.7.1's ``CROWN-Optimized``, live in the same process, with the same number of iterations.

    PYTHONPATH=.:/path/to/auto_LiRPA-0.7.1 python benchmarks/bench_alpha.py [--steps 20]

(auto_LiRPA is put on PYTHONPATH only, never a dependency: unpack or ``pip install --target``
the tarball of ``benchmarks/setup_lirpa.sh``.) For each model (the training models MLP, CNN3,
FC, CNN5 and cnn_7layer, on embedded MNIST test digits, seeded default initialisation, float32,
one thread) it bounds the margins ``f_y - f_i`` (y the model's prediction) over an L-inf ball
and prints, per model: the mean gap ``margin(x) - lower bound`` of DeepPoly, of auto_LiRPA and of
absdsl's alpha-CROWN with slopes per bounded row (``optimize``'s default, alpha-CROWN's layout;
with ``--shared`` also one slope set per bounded node, and with ``--per-spec-row`` per margin:
the batch replicated per spec row), smaller being tighter; the ratios absdsl / auto_LiRPA, the
share of margins where absdsl's bound is at least auto_LiRPA's (-1e-5), and the wall times with
their ratios. auto_LiRPA runs on the network after its input normalisation with the normalised
box, with no early stop, and with the derivative of ``torch.clamp`` its supported torch
releases have (see ``_TorchWithInclusiveClamp``). Every
absdsl bound is checked against the margins at sampled points and vertices of the ball (the
script fails on a violation).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

import torch
import torch.nn as nn

import absdsl
from absdsl.training.data import INFO, load_dataset
from absdsl.training.models import Normalize, cnn3, cnn5, fc

MNIST = INFO["mnist5k"]


def mlp() -> nn.Sequential:
    """A small MLP on MNIST: 784-256-256-10."""
    return nn.Sequential(Normalize(MNIST.mean, MNIST.std), nn.Flatten(), nn.Linear(784, 256),
                         nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def cnn_7layer() -> nn.Sequential:
    """CROWN-IBP's cnn_7layer as training's ``cnn7`` builds it (five 3x3 convs, the third of
    stride 2, batch norm, one hidden linear layer) at a quarter of its width (16, 16, 32, 32, 32,
    FC 128): at full width a 28x28 input gives 50,000-neuron layers, whose optimisation held more
    than 11 GB in one of the two libraries on this shared machine."""
    layers: list[nn.Module] = [Normalize(MNIST.mean, MNIST.std)]
    channels = 1
    for width, stride in ((16, 1), (16, 1), (32, 2), (32, 1), (32, 1)):
        layers += [nn.Conv2d(channels, width, 3, stride=stride, padding=1),
                   nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    layers += [nn.Flatten(), nn.Linear(32 * 14 * 14, 128), nn.BatchNorm1d(128), nn.ReLU(),
               nn.Linear(128, 10)]
    return nn.Sequential(*layers)


# name -> (factory, eps in pixel units); eps leaves a share of ReLUs unstable without making
# the bounds vacuous at the seeded initialisation
MODELS = {
    "MLP": (mlp, 0.02),
    "CNN3": (lambda: cnn3(MNIST), 0.02),
    "FC": (lambda: fc(MNIST), 0.02),
    "CNN5": (lambda: cnn5(MNIST), 0.01),
    "cnn_7layer": (cnn_7layer, 0.002),
}


class _TorchWithInclusiveClamp:
    """``torch`` as auto_LiRPA's ReLU module sees it, with a ``torch.clamp`` whose derivative
    is 1 at the ends of the range, as in the torch releases auto_LiRPA 0.7.1 supports (it
    declares torch < 2.9). On this torch the derivative is 0 there, and alpha-CROWN's slopes,
    which start at 0 or 1 and are projected back into [0, 1] after each step, never move:
    ``CROWN-Optimized`` would return CROWN's bounds unchanged."""

    def __getattr__(self, name: str):
        return getattr(torch, name)

    @staticmethod
    def clamp(x: torch.Tensor, min=None, max=None) -> torch.Tensor:  # noqa: A002
        inside = torch.clamp(x, min=min, max=max)
        return x + (inside - x).detach()


def compare(name: str, x: torch.Tensor, args: argparse.Namespace, lirpa: tuple) -> str:
    """One model's row of the table (raises on a violated absdsl bound)."""
    bounded_module, bounded_tensor, perturbation = lirpa
    make, eps = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    with torch.no_grad():
        logits = model(x)
    spec = absdsl.margin_spec(logits.argmax(1), logits.shape[1])
    margin = torch.einsum("bkn,bn->bk", spec, logits)
    prog = absdsl.compile(model, "alpha-crown")
    deeppoly = absdsl.compile(model, "deeppoly")(lo, hi, spec, upper=False)[0].detach()
    ours, times = [], []
    for variant in _variants(args):
        start = time.perf_counter()
        # absdsl's first pass and auto_LiRPA's init pass are both at the initial values: its
        # ``iteration`` bound computations then take iteration - 1 steps, as ``steps`` does
        lb, _ = prog.optimize(lo, hi, spec, steps=args.steps - 1, lr=args.lr, upper=False,
                              **variant)
        times.append(time.perf_counter() - start)
        ours.append(lb)
    # auto_LiRPA gets the network after the input normalisation and the normalised box (the
    # same function on the same set: its patch-form convolutions fail on a per-sample box in
    # front of the normalisation); every iteration runs (no early stop), as absdsl's do
    norm, rest = model[0], model[1:]
    assert isinstance(norm, Normalize)
    n_lo, n_hi = (lo - norm.mean) / norm.std, (hi - norm.mean) / norm.std
    bounded = bounded_module(rest, torch.zeros(1, *x.shape[1:]), bound_opts={
        "optimize_bound_args": {
            "iteration": args.steps, "lr_alpha": args.lr, "early_stop_patience": args.steps + 1}})
    start = time.perf_counter()
    try:
        theirs, _ = bounded.compute_bounds(x=(bounded_tensor((n_lo + n_hi) / 2, perturbation(
            norm=math.inf, x_L=n_lo, x_U=n_hi)),), C=spec, method="CROWN-Optimized",
            bound_upper=False)
    except (RuntimeError, MemoryError) as err:  # out of memory: report absdsl's side alone
        theirs = torch.full_like(deeppoly, math.nan)
        print(f"{name}: auto_LiRPA failed after {time.perf_counter() - start:.0f} s: "
              f"{str(err)[:80]}")
    times.append(time.perf_counter() - start)
    theirs = theirs.detach()
    pts = lo + (hi - lo) * torch.rand(64, *lo.shape)
    pts = torch.cat([pts, torch.where(torch.rand(64, *lo.shape) < 0.5, lo, hi)])
    with torch.no_grad():
        ys = torch.einsum("bkn,pbn->pbk", spec,
                          model(pts.flatten(0, 1)).reshape(128, lo.shape[0], -1))
    for lb in ours:
        if bool((ys < lb - 1e-4 * (1 + ys.abs())).any()):
            raise AssertionError(f"{name}: an absdsl alpha-CROWN bound is violated by a point")
    gaps = [float((margin - b).mean()) for b in (deeppoly, *ours, theirs)]
    shares = [float((b >= theirs - 1e-5).float().mean()) for b in ours]
    row = f"{name:11} {eps:6.3f} {gaps[0]:9.4f} {gaps[-1]:10.4f}"
    for gap, share, t in zip(gaps[1:-1], shares, times[:-1], strict=True):
        row += (f" | {gap:9.4f} {gap / gaps[-1]:6.3f} {share:5.2f} {t:7.2f} "
                f"{t / times[-1]:6.2f}")
    return row + f" | {times[-1]:7.2f}"


def _variants(args: argparse.Namespace) -> list[dict[str, bool]]:
    """The absdsl variants a row shows: per bounded row, then shared, then per spec row."""
    return [{}] + [{"per_row": False}] * args.shared + [{"per_spec_row": True,
                                                         "per_row": False}] * args.per_spec_row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="iterations (both libraries)")
    parser.add_argument("--lr", type=float, default=0.5,
                        help="Adam step, decayed by 0.98 per step (both libraries' default)")
    parser.add_argument("-n", type=int, default=4, help="test digits (one batch)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--shared", action="store_true",
                        help="also absdsl with one slope set per bounded node (per_row=False)")
    parser.add_argument("--per-spec-row", action="store_true",
                        help="also absdsl with one slope set per margin (the batch replicated "
                             "per spec row: about as many times the time)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    try:
        import auto_LiRPA.operators.relu as lirpa_relu
        from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
        lirpa_relu.torch = _TorchWithInclusiveClamp()  # type: ignore[assignment]
    except ImportError:
        print("auto_LiRPA is not importable: put auto_LiRPA 0.7.1 on PYTHONPATH",
              file=sys.stderr)
        return 2
    _, _, test = load_dataset("mnist5k")
    x = test.images[:args.n].float() / 255
    print(f"{args.n} digits, {args.steps} iterations, lr {args.lr}, float32, 1 thread; gap = "
          f"margin(x) - lower bound, mean over margins (smaller is tighter); per absdsl variant "
          f"(slopes per bounded row; --shared: per bounded node; --per-spec-row: per margin): "
          f"gap, gap ratio to auto_LiRPA, share of margins at least as tight, seconds, time "
          f"ratio to auto_LiRPA")
    head = f"{'model':11} {'eps':>6} {'deeppoly':>9} {'auto_LiRPA':>10}"
    for _ in _variants(args):
        head += f" | {'absdsl':>9} {'ratio':>6} {'>=':>5} {'s':>7} {'t ratio':>6}"
    print(head + f" | {'s LiRPA':>7}")
    for name in args.models.split(","):
        print(compare(name, x, args, (BoundedModule, BoundedTensor, PerturbationLpNorm)),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
