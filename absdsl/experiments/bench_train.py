"""``absdsl bench train``: one training epoch per domain, as a ratio to a standard epoch.

Each domain gets two rows, both GRAD steps of CNN3 (by default) on mnist5k at the full eps
(no ramp):

* ``init``: the Shi et al. initialisation every certified run starts from (seed 0);
* ``trained``: weights a short certified run with that same domain produced (what most of a
  real run's epochs see: mostly stable neurons), either trained here first
  (``--trained-epochs``: one natural warm-up epoch, an eps ramp, then full eps) or loaded
  from a run's checkpoint (``--weights``, read with ``weights_only=True``).

An epoch's time is measured over ``--steps`` timed batches (after two untimed ones) and
scaled to the number of batches in a full epoch; ``--steps 0`` times the whole epoch. Every
row is divided by a standard (natural) epoch timed right before it in the same process, so a
ratio compares two measurements taken under the same machine load. The ``unstable`` column is
the share of the network's pre-activation neurons that the row's own domain cannot decide
(lower bound < 0 < upper bound) on the first timed batch: what the tight domains pay for.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from absdsl.errors import InputError
from absdsl.training import builtin_rules  # noqa: F401 - registers grad
from absdsl.training.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    atomic_save,
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
)
from absdsl.training.config import resolve
from absdsl.training.data import load_dataset, num_batches, train_batches
from absdsl.training.models import build_model, ibp_init
from absdsl.training.objective import input_box
from absdsl.training.programs import (
    BUILTIN_DOMAINS,
    canonical_domain,
    compile_programs,
    required_domains,
)
from absdsl.training.schedules import LinearRamp, SmoothRamp
from absdsl.training.steprule import TrainBatch, make_step_rule

# Speed targets: a certified epoch on the trained weights as a multiple of a standard one.
TARGETS = {"box": 2.5, "hbox": 50.0, "zonotope": 50.0, "deeppoly": 30.0, "crown-ibp": 10.0}
WARMUP_STEPS = 2
BURST = 3  # timed standard steps before each timed step of a domain


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domains", default=",".join(BUILTIN_DOMAINS),
                        help="comma-separated domains (default: every built-in)")
    parser.add_argument("--model", default="cnn3")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-subset", type=int, default=None, metavar="N",
                        help="use the first N training examples (an epoch is then N / batch "
                             "size batches, for every row and the standard epoch alike)")
    parser.add_argument("--steps", type=int, default=10,
                        help="timed batches per row, scaled to a full epoch (0: whole epoch)")
    parser.add_argument("--trained-epochs", type=int, default=3, metavar="N",
                        help="before each domain's 'trained' row, train N epochs with that "
                             "domain: 1 natural warm-up epoch, N-2 epochs of eps ramp, 1 at "
                             "full eps (N >= 2; 0: no trained rows unless --weights; default 3)")
    parser.add_argument("--trained-batches", type=int, default=63, metavar="B",
                        help="batches per certified pre-training epoch (the warm-up epoch is "
                             "always whole; 0: whole epochs; default 63 = all of mnist5k)")
    parser.add_argument("--weights", action="append", default=[], metavar="[DOMAIN=]PATH",
                        help="time the 'trained' row on a run's weights instead of training "
                             "here: a run folder (its newest checkpoint) or a checkpoint file; "
                             "DOMAIN=PATH for one domain, PATH for every domain; repeatable")
    parser.add_argument("--save-weights", metavar="DIR", default=None,
                        help="keep the weights trained here as DIR/DOMAIN/checkpoints/"
                             "epoch_000N.pt (reusable with --weights DOMAIN=DIR/DOMAIN)")
    parser.add_argument("--no-init", action="store_true",
                        help="skip the rows at initialisation")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write rows as JSON")


# -- setting up a run's pieces -------------------------------------------------------------
@dataclass
class Bench:
    """The data and the resolved config of one (method, domain) row."""

    cfg: Any
    info: Any
    train: Any

    @property
    def batch_size(self) -> int:
        return int(self.cfg.batch_size or 1)

    @property
    def total(self) -> int:
        """Batches in a full epoch."""

        return num_batches(len(self.train), self.batch_size)

    def batches(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        return train_batches(self.train, self.batch_size, 0, epoch)


def _bench(overrides: dict[str, Any]) -> Bench:
    cfg = resolve(overrides)
    info, train, _ = load_dataset(cfg.dataset, cfg.data_root, False)
    return Bench(cfg, info, train.subset(cfg.train_subset))


def _initial_model(b: Bench) -> nn.Module:
    """The initialisation a certified run starts from (seed 0, Shi et al. for IBP)."""

    torch.manual_seed(0)
    model = build_model(b.cfg.model, b.info)
    ibp_init(model)
    return model


def _rule(model: nn.Module, cfg: Any) -> Any:
    programs = compile_programs(model, required_domains(cfg.domain, cfg.method))
    return make_step_rule("grad", model, cfg, programs)


# -- timing --------------------------------------------------------------------------------
class Standard:
    """Natural training steps on an endless stream of batches, timed in short bursts.

    A burst is one discarded step (it refills the caches a heavier step before it evicted)
    and then ``burst`` timed ones; its median is one sample of a standard step's time.
    """

    def __init__(self, b: Bench, rule: Any) -> None:
        self.b, self.rule = b, rule
        self._stream = self._batches()

    def _batches(self) -> Iterator[Any]:
        epoch = 0
        while True:
            for i, (x, y, _) in enumerate(self.b.batches(epoch)):
                yield TrainBatch(x, y, 0.0, epoch, i)
            epoch += 1

    def step(self) -> None:
        self.rule.step(next(self._stream))

    def burst(self, n: int = BURST) -> float:
        self.step()
        times = []
        for _ in range(max(n, 1)):
            start = time.perf_counter()
            self.step()
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def time_epoch(b: Bench, rule: Any, steps: int, eps: float, standard: Standard,
               warmup: int = WARMUP_STEPS) -> tuple[float, float]:
    """Seconds of one epoch of ``rule``'s steps at ``eps``, and of a standard epoch.

    After ``warmup`` untimed steps, each timed step of ``rule`` follows a burst of standard
    steps (:meth:`Standard.burst`), so both are measured under the same machine load. With
    ``steps`` > 0 only that many batches are timed and both times are scaled up to the
    epoch's number of batches (the standard one from the mean of the burst medians).
    """

    for i, (x, y, _) in enumerate(b.batches()):
        if i >= warmup:
            break
        rule.step(TrainBatch(x, y, eps, 0, i, beta=0.5))
    standard.step()
    timed = b.total if steps <= 0 else min(steps, b.total)
    spent, standard_steps = 0.0, []
    for i, (x, y, _) in enumerate(b.batches()):
        if i >= timed:
            break
        standard_steps.append(standard.burst())
        start = time.perf_counter()
        rule.step(TrainBatch(x, y, eps, 0, i, beta=0.5))
        spent += time.perf_counter() - start
    return spent * b.total / timed, statistics.fmean(standard_steps) * b.total


def unstable_fraction(program: Any, model: nn.Module, x: torch.Tensor, eps: float) -> float:
    """Share of pre-activation neurons with lower bound < 0 < upper bound under ``program``
    (the domain's own intermediate bounds) on the L-inf ball of radius ``eps`` around ``x``."""

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            lo, hi = input_box(x, eps)
            bounds = program.intermediate_bounds(lo, hi)
    finally:
        model.train(was_training)
    total = sum(lb.numel() for lb, _ in bounds.values())
    if total == 0:
        return 0.0
    return sum(int(((lb < 0) & (ub > 0)).sum()) for lb, ub in bounds.values()) / total


# -- trained weights -----------------------------------------------------------------------
def pretrain(b: Bench, model: nn.Module, epochs: int, batches: int) -> dict[str, float]:
    """Train ``model`` in place as a short certified run with ``b.cfg.domain`` does.

    Epoch 1 is natural (eps 0, every batch: cheap for every domain); epochs 2 to N-1 ramp
    eps from 0 to the target with the training loop's smooth ramp (beta and kappa ramp with
    it, as in ``absdsl train``); epoch N is at the full eps. Certified epochs take the first
    ``batches`` batches of their shuffled order (0: all). Returns the last epoch's means.
    """

    cfg = b.cfg
    per_epoch = b.total if batches <= 0 else min(batches, b.total)
    ramp = (epochs - 2) * per_epoch
    eps = SmoothRamp(cfg.eps, 0, ramp, cfg.ramp_power, cfg.ramp_mid)
    beta = LinearRamp(cfg.beta_start, cfg.beta_end, 0, ramp)
    kappa = LinearRamp(cfg.kappa_start, cfg.kappa, 0, ramp)
    rule = _rule(model, cfg)
    step = 0  # certified steps so far (the ramp's clock)
    last: dict[str, list[float]] = {}
    for epoch in range(epochs):
        last = {}
        for i, (x, y, _) in enumerate(b.batches(epoch)):
            if epoch == 0:
                batch = TrainBatch(x, y, 0.0, epoch, i)
            elif i >= per_epoch:
                break
            else:
                batch = TrainBatch(x, y, eps(step), epoch, i, beta=beta(step),
                                   kappa=kappa(step))
                step += 1
            for key, value in rule.step(batch).items():
                last.setdefault(key, []).append(float(value))
        rule.on_epoch_end(epoch)
    return {k: statistics.fmean(v) for k, v in last.items()}


def _parse_weights(items: list[str], domains: list[str]) -> dict[str, Path]:
    """``--weights`` values -> a checkpoint path per domain (a bare PATH: every domain)."""
    found: dict[str, Path] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if sep and not Path(item).exists():
            try:
                key = canonical_domain(name)
            except Exception as err:  # noqa: BLE001 - reworded with the flag's name
                raise InputError(f"--weights {item!r}: {err}") from err
            targets, path = [key], Path(rest)
        else:
            targets, path = list(domains), Path(item)
        for d in targets:
            found[d] = path
    return found


def load_weights(path: Path, model: nn.Module, model_name: str, where: str
                 ) -> tuple[dict[str, torch.Tensor], str]:
    """The model weights of a run folder's newest checkpoint or of a checkpoint file
    (``weights_only=True``), checked against ``model`` before any timing starts."""

    try:
        file = latest_checkpoint(path) if path.is_dir() else path
        ckpt = load_checkpoint(file)
    except CheckpointError as err:
        raise InputError(f"{where}: {err}") from err
    saved = ckpt["config"].get("model") if isinstance(ckpt["config"], dict) else None
    if saved is not None and saved != model_name:
        raise InputError(f"{where}: {file} holds a {saved!r} model, this bench times "
                         f"--model {model_name!r}")
    state = ckpt["model"]
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"{where}: {file} does not fit --model {model_name!r}: "
                         f"{str(err).splitlines()[0]}") from err
    return state, f"{file} (epoch {ckpt['epoch']})"


def save_weights(folder: Path, model: nn.Module, cfg: Any, epochs: int) -> Path:
    """The pre-trained weights as a checkpoint ``--weights`` (and ``load_checkpoint``) reads."""

    path = folder / "checkpoints" / checkpoint_name(epochs)
    atomic_save({"format": FORMAT, "version": VERSION, "config": cfg.to_dict(),
                 "model": model.state_dict(), "epoch": epochs, "batch": 0, "step": 0}, path)
    return path


# -- the command ---------------------------------------------------------------------------
def _check(args: argparse.Namespace) -> None:
    if args.steps < 0:
        raise InputError(f"--steps must be >= 0, got {args.steps}")
    if args.trained_epochs < 0 or args.trained_epochs == 1:
        raise InputError(f"--trained-epochs must be 0 or >= 2 (one natural warm-up epoch, "
                         f"then certified ones), got {args.trained_epochs}")
    if args.trained_batches < 0:
        raise InputError(f"--trained-batches must be >= 0, got {args.trained_batches}")
    if args.train_subset is not None and args.train_subset < 1:
        raise InputError(f"--train-subset must be >= 1, got {args.train_subset}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")


def _target_text(domain: str, ratio: float, weights: str) -> str:
    target = TARGETS.get(domain)
    if target is None:
        return "-"
    if weights == "init":
        return f"<= {target:g}x (on trained)"
    return f"<= {target:g}x: {'pass' if ratio <= target else 'FAIL'}"


def run(args: argparse.Namespace) -> int:
    _check(args)
    domains = [canonical_domain(d) for d in args.domains.split(",") if d.strip()]
    if not domains:
        raise InputError("--domains names no domain")
    weights = _parse_weights(args.weights, domains)
    common = dict(dataset=args.dataset, model=args.model, eps=args.eps,
                  batch_size=args.batch_size, epochs=1, warmup_epochs=0, ramp_epochs=0,
                  train_subset=args.train_subset)
    standard_bench = _bench(common | {"method": "natural"})
    benches = {d: _bench(common | {"method": "certified", "domain": d}) for d in domains}
    loaded: dict[str, tuple[dict[str, torch.Tensor], str]] = {}
    for d, path in weights.items():  # every file read and checked before any timing
        if d in benches:
            loaded[d] = load_weights(path, _initial_model(benches[d]), args.model,
                                     f"--weights for {d}")

    standard_model = _initial_model(standard_bench)
    standard = Standard(standard_bench, _rule(standard_model, standard_bench.cfg))
    save_root = Path(args.save_weights) if args.save_weights else None
    rows: list[dict[str, Any]] = []

    def timed_row(domain: str, kind: str, model: nn.Module, source: str,
                  extra: dict[str, Any]) -> None:
        b = benches[domain]
        rule = _rule(model, b.cfg)
        x = next(iter(b.batches()))[0]
        unstable = unstable_fraction(rule.programs[domain], model, x, args.eps)
        sec, std = time_epoch(b, rule, args.steps, args.eps, standard)
        rows.append({"method": "certified", "domain": domain, "weights": kind,
                     "source": source, "seconds": sec, "standard_seconds": std,
                     "ratio": sec / std, "unstable": unstable, "target": TARGETS.get(domain),
                     "target_text": _target_text(domain, sec / std, kind), **extra})

    wall = time.perf_counter()
    for domain in domains:
        b = benches[domain]
        if not args.no_init:
            timed_row(domain, "init", _initial_model(b), "initialisation (seed 0)", {})
        if domain in loaded:
            model = _initial_model(b)
            state, where = loaded[domain]
            model.load_state_dict(state)
            timed_row(domain, "trained", model, where, {})
        elif args.trained_epochs >= 2:
            model = _initial_model(b)
            start = time.perf_counter()
            metrics = pretrain(b, model, args.trained_epochs, args.trained_batches)
            spent = time.perf_counter() - start
            source = (f"trained here: {args.trained_epochs} epochs "
                      f"({args.trained_batches or b.total} certified batches each)")
            if save_root is not None:
                saved = save_weights(save_root / domain, model, b.cfg, args.trained_epochs)
                source += f", saved to {saved}"
            timed_row(domain, "trained", model, source,
                      {"pretrain_seconds": spent,
                       "pretrain_cert_acc": metrics.get("train_cert_acc")})
    wall = time.perf_counter() - wall
    _report(args, rows, wall)
    return 0


def _report(args: argparse.Namespace, rows: list[dict[str, Any]], wall: float) -> None:
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    timed = "whole epochs" if args.steps <= 0 else f"{args.steps} timed batches, scaled"
    standards = [r["standard_seconds"] for r in rows]
    print(f"one epoch of {args.model} on {args.dataset}, batch {args.batch_size}, "
          f"eps {args.eps}; {timed}; each row divided by a standard epoch timed just before "
          f"it ({machine}, torch {torch.__version__}); {wall:.0f} s")
    head = (f"{'domain':<12}{'weights':<9}{'seconds':>10}{'standard s':>12}"
            f"{'x standard':>12}{'unstable':>10}  speed target (trained weights)")
    print(head)
    if standards:
        med = statistics.median(standards)
        print(f"{'standard':<12}{'-':<9}{med:>10.2f}{med:>12.2f}{1.0:>12.1f}{'-':>10}  "
              f"median of {len(standards)} adjacent standard epochs "
              f"({min(standards):.2f} to {max(standards):.2f} s)")
    for r in rows:
        print(f"{r['domain']:<12}{r['weights']:<9}{r['seconds']:>10.2f}"
              f"{r['standard_seconds']:>12.2f}{r['ratio']:>12.1f}"
              f"{100 * r['unstable']:>9.1f}%  {r['target_text']}")
    for r in rows:
        if r["weights"] == "trained":
            acc = r.get("pretrain_cert_acc")
            extra = ("" if acc is None or (isinstance(acc, float) and math.isnan(acc))
                     else f"; last epoch's train certified accuracy {acc:.2f}")
            spent = r.get("pretrain_seconds")
            took = "" if spent is None else f" in {spent:.0f} s"
            print(f"  {r['domain']} trained weights: {r['source']}{took}{extra}")
    trained = [r for r in rows if r["weights"] == "trained" and r["target"] is not None]
    if trained:
        ok = sum(r["ratio"] <= r["target"] for r in trained)
        print(f"speed targets on the trained weights: {ok} of {len(trained)} pass")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "seconds": wall,
                                               "rows": rows}, indent=1))

