"""One certified-training step in absdsl and in auto_LiRPA, live in one process, same weights.

A step is what a certified-training loop does per batch: the lower bounds of the margins
f_y - f_i (spec rows e_y - e_i, i != y, lower bounds only), the cross-entropy on them, and the
backward into the weights. With loss fusion the robust cross-entropy is bounded directly
(absdsl: ``training/loss_fusion.py``, one back-substituted row per sample; auto_LiRPA: its
``CrossEntropyWrapper`` with ``loss_fusion`` on). Every variant is timed in the same rounds,
calls alternated, medians reported, as ratios to auto_LiRPA's step and to a natural step
(forward, cross-entropy, backward) on the same batch.

    PYTHONPATH=.:LIRPA_DIR python3 benchmarks/bench_lirpa_train.py             # a few minutes
    PYTHONPATH=.:LIRPA_DIR python3 benchmarks/bench_lirpa_train.py --compile   # + torch.compile
    python3 benchmarks/bench_lirpa_train.py --no-lirpa                         # absdsl only

``LIRPA_DIR`` is a folder holding auto_LiRPA 0.7.1 (``pip install --no-deps --target DIR``
the tarball, with ``appdirs`` and ``graphviz``; or ``benchmarks/setup_lirpa.sh`` for a venv).
Without it the script runs absdsl's side alone and says so.

Nets: CNN3 and CNN5 (this project's, MNIST shape, batch 64, eps 0.1) and cnn_7layer (the
CROWN-IBP paper's, no batch norm, CIFAR shape, batch 32, eps 8/255), at the IBP
initialisation, on random inputs. The input normalisation is applied to the box before both
libraries see it (auto_LiRPA's CROWN fails on a normalisation layer in front of a conv), so
both bound the same network on the same box. Bounds are compared once per (net, method): IBP
and CROWN-IBP must agree to float32 rounding (the script fails otherwise); DeepPoly is
auto_LiRPA's CROWN with the adaptive ReLU lower slope and is printed with its largest
difference. DeepPoly on cnn_7layer (seconds per step in both) needs ``--big``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import absdsl
from absdsl.cpu_memory import apply_default
from absdsl.training.data import dataset_info
from absdsl.training.fused import CompileFallbackWarning, compile_programs_fused
from absdsl.training.loss_fusion import fused_robust_loss
from absdsl.training.losses import robust_loss
from absdsl.training.margins import _margin_rows, input_box, margin_lower
from absdsl.training.models import Normalize, build_model, ibp_init

# method -> (absdsl domain, auto_LiRPA method)
METHODS = {"ibp": ("box", "IBP"), "crown-ibp": ("crown-ibp", "CROWN-IBP"),
           "crown": ("deeppoly", "CROWN")}
LABEL = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "DeepPoly/CROWN"}
SAME_METHOD = ("ibp", "crown-ibp")  # bounds must agree with auto_LiRPA's to rounding
BOUND_TOL = 1e-5  # relative to 1 + |bound|: float32 rounding of margins of size ~10
NUM_CLASSES = 10


@dataclass(frozen=True)
class Net:
    dataset: str
    batch: int
    eps: float


NETS = {"cnn3": Net("mnist", 64, 0.1), "cnn5": Net("mnist", 64, 0.1),
        "cnn_7layer": Net("cifar10", 32, 8 / 255)}


def cnn_7layer(in_ch: int = 3, in_dim: int = 32, width: int = 64, linear: int = 512
               ) -> nn.Sequential:
    """The CROWN-IBP paper's cnn_7layer: five 3x3 convs (the third of stride 2), two linear."""
    def conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU()]

    w = width
    return nn.Sequential(*conv(in_ch, w, 1), *conv(w, w, 1), *conv(w, 2 * w, 2),
                         *conv(2 * w, 2 * w, 1), *conv(2 * w, 2 * w, 1), nn.Flatten(),
                         nn.Linear(2 * w * (in_dim // 2) ** 2, linear), nn.ReLU(),
                         nn.Linear(linear, NUM_CLASSES))


def build(name: str, batch: int | None, seed: int = 0
          ) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The net without its normalisation (IBP initialisation, ``seed``), the normalised
    inputs, labels and the normalised input box of the net's eps."""
    net = NETS[name]
    info = dataset_info(net.dataset)
    torch.manual_seed(seed)
    norm = Normalize(info.mean, info.std)
    if name == "cnn_7layer":
        body: nn.Module = cnn_7layer(info.shape[0], info.shape[1])
    else:
        full = build_model(name, info)
        assert isinstance(full, nn.Sequential) and isinstance(full[0], Normalize)
        body = full[1:]
    ibp_init(body)
    body.eval()
    gen = torch.Generator().manual_seed(seed)
    b = batch or net.batch
    x = torch.rand(b, *info.shape, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (b,), generator=gen)
    lo, hi = input_box(x, net.eps)
    return body, norm(x), y, norm(lo), norm(hi)


# -- the steps -------------------------------------------------------------------------------
Step = Callable[[], torch.Tensor]  # one step; returns the loss (after its backward)


def _step(model: nn.Module, loss_fn: Callable[[], torch.Tensor]) -> Step:
    def run() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        return loss.detach()
    return run


def natural_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Step:
    return _step(model, lambda: F.cross_entropy(model(x), y))


def absdsl_step(model: nn.Module, programs: dict[str, Any], method: str, fusion: bool,
                lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor) -> Step:
    """absdsl's GRAD step: margin form (``margin_lower`` + robust CE) or fused."""
    domain = METHODS[method][0]
    if fusion:
        return _step(model, lambda: fused_robust_loss(programs, domain, None, lo, hi, y,
                                                      NUM_CLASSES)[0])
    return _step(model, lambda: robust_loss(
        margin_lower(programs[domain], None, lo, hi, y, NUM_CLASSES), y))


def lirpa_import() -> tuple[Any, str | None]:
    """The auto_LiRPA module, or None and the reason it cannot be imported."""
    try:
        lirpa = importlib.import_module("auto_LiRPA")
    except ImportError as err:
        return None, f"auto_LiRPA not importable ({err})"
    # torch >= 2.9 registers the TorchScript exporter's symbolic functions of opsets >= 10
    # lazily; auto_LiRPA's trace then lowers gather to opset 9's OneHot, which it cannot bound
    for v in range(10, 21):
        try:
            importlib.import_module(f"torch.onnx._internal.torchscript_exporter.symbolic_opset{v}")
        except ImportError:
            break
    return lirpa, None


class Lirpa:
    """auto_LiRPA's steps on one net (its public API and its own loss-fusion wrapper)."""

    def __init__(self, lirpa: Any, model: nn.Module, lo: torch.Tensor, hi: torch.Tensor,
                 y: torch.Tensor) -> None:
        self.lirpa, self.model, self.lo, self.hi, self.y = lirpa, model, lo, hi, y
        opts = {"relu": "adaptive"}
        self.bounded = lirpa.BoundedModule(model, torch.zeros_like(lo[:1]), bound_opts=opts)
        self._fused: Any = None
        self.spec = _margin_rows(y, NUM_CLASSES, lo)[1]

    def ball(self) -> Any:
        ptb = self.lirpa.PerturbationLpNorm(norm=math.inf, x_L=self.lo, x_U=self.hi)
        return self.lirpa.BoundedTensor((self.lo + self.hi) / 2, ptb)

    def margins(self, method: str) -> torch.Tensor:
        """Lower bounds of the n - 1 margins [B, n - 1]."""
        lb, _ = self.bounded.compute_bounds(x=(self.ball(),), method=METHODS[method][1],
                                            C=self.spec, bound_upper=False)
        return lb

    def fused_upper(self, method: str) -> torch.Tensor:
        """auto_LiRPA's loss fusion: an upper bound of CE per sample [B]."""
        if self._fused is None:
            wrapped = self.lirpa.wrapper.CrossEntropyWrapper(self.model)
            dummy = (torch.zeros_like(self.lo[:1]), torch.zeros(1, dtype=torch.long))
            self._fused = self.lirpa.BoundedModule(
                wrapped, dummy, bound_opts={"relu": "adaptive", "loss_fusion": True})
            self._exp = next(m for m in self._fused.modules()
                             if type(m).__name__ == "BoundExp")
        self._fused(self.ball(), self.y)  # as its training loop does: forward, then bounds
        _, ub = self._fused.compute_bounds(method=METHODS[method][1], C=None,
                                           bound_lower=False, bound_upper=True)
        return (torch.log(ub) + self._exp.max_input).flatten()

    def step(self, method: str, fusion: bool) -> Step:
        others = _margin_rows(self.y, NUM_CLASSES, self.lo)[0]

        def loss() -> torch.Tensor:
            if fusion:
                return self.fused_upper(method).mean()
            lb = self.margins(method)
            full = lb.new_zeros(lb.shape[0], NUM_CLASSES).scatter(1, others, lb)
            return robust_loss(full, self.y)
        return _step(self.model, loss)


# -- timing ----------------------------------------------------------------------------------
@dataclass
class Row:
    net: str
    method: str
    fusion: bool
    ms: dict[str, float] = field(default_factory=dict)  # variant -> median ms
    rounds: int = 0  # timed rounds
    loss: dict[str, float] = field(default_factory=dict)  # variant -> loss of the first call
    bound_diff: float | None = None  # largest |absdsl - auto_LiRPA| margin bound, relative
    tighter: float | None = None  # mean (absdsl - auto_LiRPA) margin lower bound
    note: str = ""


# what a step's time is read from: wall-clock time, or the CPU time of the process (all its
# threads), which other processes' load on a shared machine does not inflate (with one
# thread; with more, threads spinning in a barrier count as busy)
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def time_variants(variants: dict[str, Step], rounds: int, budget_s: float = math.inf,
                  clock: Callable[[], float] = time.perf_counter
                  ) -> tuple[dict[str, float], dict[str, float], int]:
    """Median ms per variant over ``rounds`` rounds (fewer, at least one, when a round would
    take the row past ``budget_s`` seconds of wall-clock time), each variant once per round
    in turn, after one untimed call each (whose loss is returned); and the rounds timed.
    ``clock`` reads the time of one call (:data:`CLOCKS`)."""
    start = time.perf_counter()
    first = {k: float(run()) for k, run in variants.items()}
    per_round = time.perf_counter() - start
    rounds = max(1, int(min(rounds, budget_s / max(per_round, 1e-9))))  # budget may be inf
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for k, run in variants.items():
            start = clock()
            run()
            times[k].append(1e3 * (clock() - start))
    return {k: statistics.median(v) for k, v in times.items()}, first, rounds


def compare_bounds(row: Row, ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """Fill the row's bound difference; fail when the same method disagrees."""
    diff = ((ours - theirs).abs() / (1 + theirs.abs())).max().item()
    row.bound_diff, row.tighter = diff, (ours - theirs).mean().item()
    if row.method in SAME_METHOD and not diff <= BOUND_TOL:
        raise AssertionError(f"{row.net} {LABEL[row.method]}: absdsl's margin bounds differ "
                             f"from auto_LiRPA's by {diff:.2e} (relative) > {BOUND_TOL:g}")


def bench_net(name: str, methods: list[str], args: argparse.Namespace, lirpa: Any,
              log: Callable[[str], None]) -> list[Row]:
    model, x, y, lo, hi = build(name, args.batch)
    domains = ["box"] + [METHODS[m][0] for m in methods if METHODS[m][0] != "box"]
    eager = {d: absdsl.compile(model, d) for d in domains}
    compiled = compile_programs_fused(eager, args.backend) if args.compile else None
    peer = Lirpa(lirpa, model, lo, hi, y) if lirpa is not None else None
    rows = []
    for method in methods:
        if method == "crown" and name == "cnn_7layer" and not args.big:
            log(f"  {name} {LABEL[method]}: left out (--big runs it)")
            continue
        for fusion in (False, True):
            row = Row(name, method, fusion)
            variants: dict[str, Step] = {"natural": natural_step(model, x, y)}
            fusable = fusion and method != "ibp"
            if fusion and not fusable:
                row.note = "absdsl: IBP is not fused (its margin form is exact on the box)"
            variants["absdsl"] = absdsl_step(model, eager, method, fusable, lo, hi, y)
            if compiled is not None:
                variants["absdsl compiled"] = absdsl_step(model, compiled, method, fusable,
                                                          lo, hi, y)
            if peer is not None:
                variants["auto_LiRPA"] = peer.step(method, fusion)
                if not fusion:
                    with torch.no_grad():
                        ours, _ = eager[METHODS[method][0]](lo, hi, spec=peer.spec,
                                                            upper=False)
                        compare_bounds(row, ours, peer.margins(method))
            log(f"  {name} {LABEL[method]}{' +fusion' if fusion else ''} ...")
            try:
                row.ms, row.loss, row.rounds = time_variants(variants, args.rounds,
                                                             args.row_seconds,
                                                             CLOCKS[args.clock])
            except Exception as err:  # noqa: BLE001 - auto_LiRPA's failure is reported
                if peer is None or "auto_LiRPA" not in variants:
                    raise
                row.note += f"; auto_LiRPA failed: {type(err).__name__}: {str(err)[:80]}"
                del variants["auto_LiRPA"]
                row.ms, row.loss, row.rounds = time_variants(variants, args.rounds,
                                                             args.row_seconds,
                                                             CLOCKS[args.clock])
            rows.append(row)
            log("    " + ", ".join(f"{k} {v:.1f} ms" for k, v in row.ms.items())
                + f" ({row.rounds} rounds)")
    return rows


# -- output ----------------------------------------------------------------------------------
def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def format_table(rows: list[Row]) -> str:
    head = ["net", "method", "fusion", "absdsl ms", "compiled ms", "auto_LiRPA ms",
            "speed-up vs auto_LiRPA", "compiled vs auto_LiRPA", "x natural",
            "compiled x natural", "natural ms", "loss absdsl / auto_LiRPA", "bound diff",
            "rounds", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        ms = r.ms
        ours, comp, peer, nat = (ms.get("absdsl"), ms.get("absdsl compiled"),
                                 ms.get("auto_LiRPA"), ms.get("natural"))
        loss = (f"{r.loss['absdsl']:.3f} / "
                f"{r.loss['auto_LiRPA']:.3f}" if "auto_LiRPA" in r.loss else
                f"{r.loss.get('absdsl', float('nan')):.3f} / -")
        diff = "-" if r.bound_diff is None else f"{r.bound_diff:.1e}"
        cells = [r.net, LABEL[r.method], "yes" if r.fusion else "no",
                 "-" if ours is None else f"{ours:.1f}", "-" if comp is None else f"{comp:.1f}",
                 "-" if peer is None else f"{peer:.1f}", _ratio(peer, ours), _ratio(peer, comp),
                 _ratio(ours, nat), _ratio(comp, nat), "-" if nat is None else f"{nat:.1f}",
                 loss, diff, str(r.rounds), r.note.lstrip("; ")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated, of: "
                    + ", ".join(NETS))
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of: "
                    + ", ".join(METHODS))
    ap.add_argument("--batch", type=int, default=None,
                    help="batch size for every net (default: 64 on MNIST, 32 on CIFAR)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    ap.add_argument("--row-seconds", type=float, default=60.0,
                    help="fewer rounds (at least one) where a row would take longer "
                         "(default 60; 0: no limit)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="time steps by wall-clock time (default) or by the process's CPU "
                         "time (steadier on a loaded machine; meant for --threads 1)")
    ap.add_argument("--compile", action="store_true",
                    help="also time absdsl's programs through torch.compile (the first call "
                         "of each takes minutes with a cold inductor cache; not timed)")
    ap.add_argument("--backend", default="inductor", help="torch.compile backend")
    ap.add_argument("--big", action="store_true", help="also DeepPoly/CROWN on cnn_7layer")
    ap.add_argument("--no-lirpa", action="store_true", help="absdsl's side only")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)
    for key, known in (("nets", NETS), ("methods", METHODS)):
        names = [n.strip() for n in getattr(args, key).split(",") if n.strip()]
        bad = [n for n in names if n not in known]
        if bad or not names:
            ap.error(f"--{key}: unknown {bad or 'empty'}; choose from {', '.join(known)}")
        setattr(args, key, names)
    if args.row_seconds <= 0:
        args.row_seconds = math.inf
    if args.rounds < 1 or args.threads < 1 or (args.batch is not None and args.batch < 1):
        ap.error("--rounds, --threads and --batch must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_default()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning, module="auto_LiRPA")
    warnings.filterwarnings("ignore", category=FutureWarning)
    lirpa, why = (None, "--no-lirpa") if args.no_lirpa else lirpa_import()
    version = getattr(lirpa, "__version__", None)
    print(f"absdsl vs auto_LiRPA {version or '(absent: ' + str(why) + '; absdsl only)'}; "
          f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds, "
          f"{args.clock} clock, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    start = time.perf_counter()
    rows: list[Row] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CompileFallbackWarning)
        for name in args.nets:
            rows += bench_net(name, args.methods, args, lirpa, log)
    for w in caught:
        if issubclass(w.category, CompileFallbackWarning):
            print(f"warning: {w.message}")
    print(format_table(rows))
    print(f"{time.perf_counter() - start:.0f} s; load average after "
          f"{os.getloadavg()[0]:.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"auto_LiRPA": version, "threads": args.threads,
                                         "rows": [asdict(r) for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
