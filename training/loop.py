"""The training loop: one loop for every domain, method and step rule.

The loop owns data order, schedules, evaluation, checkpoints and metrics; the step rule
(:mod:`absdsl.training.steprule`) owns the parameter update. Schedules are functions of the
global step, data order a function of (seed, epoch), and every RNG state is checkpointed, so
a run stopped with Ctrl-C (or killed after an epoch) and resumed with ``--resume`` ends with
the same weights as one that was never stopped (on the CPU).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from absdsl.compiler.specs import margin_spec
from absdsl.cpu_memory import apply_default as keep_freed_memory_by_default
from absdsl.errors import AbsdslError
from absdsl.training.certify import CertifyOptions, certify_model
from absdsl.training.checkpoint import latest_checkpoint
from absdsl.training.objective import input_box, run_program

from . import builtin_rules  # noqa: F401 - registers grad, pgpe and rgs
from . import grad as _grad  # noqa: F401 - registers the "grad" step rule
from .checkpoint import (
    CheckpointError,
    atomic_save,
    atomic_write_text,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from .config import TrainConfig, dump_toml, load_toml, resolve
from .data import DatasetInfo, Split, eval_batches, load_dataset, num_batches, train_batches
from .distributed import World, barrier, broadcast_model, init_from_env
from .fused import compile_programs_fused
from .loss_fusion import INTERVAL_DOMAIN
from .models import build_model, ibp_init
from .programs import canonical_domain, compile_programs, required_domains
from .progress import progress_bar
from .schedules import LinearRamp, SmoothRamp
from .steprule import StepRule, TrainBatch, close_rule, make_step_rule, rule_lr, rule_reductions

FORMAT = "absdsl-train-checkpoint"


class RunError(AbsdslError):
    """A run folder that cannot be created or resumed."""


class Interrupted(AbsdslError):
    """Training stopped by Ctrl-C after saving; the message says how to resume."""


@dataclass
class Schedules:
    """eps, kappa and beta as functions of the global step."""

    eps: SmoothRamp
    kappa: LinearRamp
    beta: LinearRamp

    @classmethod
    def from_config(cls, cfg: TrainConfig, steps_per_epoch: int) -> Schedules:
        start = int(cfg.warmup_epochs or 0) * steps_per_epoch
        length = int(cfg.ramp_epochs or 0) * steps_per_epoch
        assert cfg.train_eps is not None and cfg.kappa_start is not None
        return cls(
            eps=SmoothRamp(cfg.train_eps, start, length, cfg.ramp_power, cfg.ramp_mid),
            kappa=LinearRamp(cfg.kappa_start, cfg.kappa, start, length),
            beta=LinearRamp(cfg.beta_start, cfg.beta_end, start, length),
        )


@dataclass
class Trainer:
    """Holds a run: config, data, model, programs, step rule and position."""

    cfg: TrainConfig
    run_dir: Path
    world: World = field(default_factory=World)
    progress: bool = True
    on_step: Callable[[Trainer, int], None] | None = None  # called after every step
    info: DatasetInfo = field(init=False)
    train_split: Split = field(init=False)
    test_split: Split = field(init=False)
    model: torch.nn.Module = field(init=False)
    programs: dict[str, Any] = field(init=False)
    rule: StepRule = field(init=False)
    epoch: int = 0  # finished epochs
    batch: int = 0  # batches finished in the current epoch
    step: int = 0  # global steps finished
    train_seconds: float = 0.0
    stop_requested: bool = False

    # ---- setup ---------------------------------------------------------------------------
    def setup(self, checkpoint: dict[str, Any] | None = None) -> None:
        cfg = self.cfg
        cfg.domain = canonical_domain(cfg.domain)
        if cfg.certify_domain is not None and cfg.certify_domain != "tightest":
            cfg.certify_domain = canonical_domain(cfg.certify_domain)
        self.info, train, test = load_dataset(cfg.dataset, cfg.data_root, cfg.download)
        self.train_split = train.subset(cfg.train_subset)
        self.test_split = test.subset(cfg.test_subset)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, self.info)
        if cfg.init == "ibp" and cfg.method in ("certified", "sabr", "mtl-ibp"):
            ibp_init(self.model)
        self.model.to(cfg.device)
        names = required_domains(cfg.domain, cfg.method)
        if cfg.loss_fusion and INTERVAL_DOMAIN not in names:
            names.append(INTERVAL_DOMAIN)  # the chord intervals of loss fusion
        self.programs = compile_programs(self.model, names)
        if cfg.torch_compile:
            self.programs = compile_programs_fused(self.programs)
        self.rule = make_step_rule(
            cfg.optimizer, self.model, cfg, self.programs, resume=checkpoint is not None
        )
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            broadcast_model(self.model)
        self.steps_per_epoch = num_batches(len(self.train_split), int(cfg.batch_size or 1))
        self.schedules = Schedules.from_config(cfg, self.steps_per_epoch)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            raise CheckpointError(
                f"checkpoint does not fit model {self.cfg.model!r}: {err}"
            ) from err
        self.rule.load_state_dict(ckpt["step_rule"])
        self.epoch, self.batch = int(ckpt["epoch"]), int(ckpt["batch"])
        self.step = int(ckpt["step"])
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        set_rng_state(ckpt["rng"])

    # ---- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": 1,
            "config": self.cfg.to_dict() | {"options": dict(self.cfg.options)},
            "model": self.model.state_dict(),
            "step_rule_name": self.rule.name,
            "step_rule": self.rule.state_dict(),
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "world_size": self.world.size,
            "rng": rng_state(),
        }

    def save(self) -> Path:
        """Write the checkpoint for the current position (main rank only)."""
        path = self.run_dir / "checkpoints" / checkpoint_name(self.epoch, self.batch)
        if self.world.is_main:
            atomic_save(self.state(), path)
            if self.batch == 0:  # a finished epoch supersedes mid-epoch checkpoints
                for e, b, p in list_checkpoints(self.run_dir):
                    if b > 0 and (e, b) < (self.epoch, 1):
                        p.unlink(missing_ok=True)
        return path

    def close(self) -> None:
        """Release what the step rule holds (Ray actors); safe to call more than once."""
        rule = getattr(self, "rule", None)
        if rule is not None:
            close_rule(rule)

    # ---- the loop ------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Finish the current step, save a checkpoint and stop (what Ctrl-C does)."""
        self.stop_requested = True

    def train(self) -> None:
        cfg = self.cfg
        epochs = int(cfg.epochs or 0)
        previous = signal.getsignal(signal.SIGINT)
        installed = False
        try:
            signal.signal(signal.SIGINT, self._on_sigint)
            installed = True
        except ValueError:  # not the main thread: Ctrl-C handling stays with the caller
            pass
        try:
            while self.epoch < epochs:
                self._train_epoch()
                if self.stop_requested:
                    break
        finally:
            if installed:
                signal.signal(signal.SIGINT, previous)
        if self.stop_requested:
            raise Interrupted(
                f"stopped at epoch {self.epoch + 1}, step {self.step}; checkpoint saved. "
                f"Continue with: absdsl train --resume {self.run_dir}"
            )

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.stop_requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stop_requested = True

    def _train_epoch(self) -> None:
        cfg = self.cfg
        bar = self._bar()
        skip = self.batch
        sums = _EpochMetrics(rule_reductions(self.rule))
        shown = tuple(getattr(self.rule, "progress_metrics", ()) or ())
        start = time.perf_counter()
        batches = train_batches(
            self.train_split, int(cfg.batch_size or 1), cfg.seed, self.epoch,
            augment=self.info.augment, rank=self.world.rank, world_size=self.world.size,
        )
        for i, (x, y, global_n) in enumerate(batches):
            if i < skip:
                continue
            batch = TrainBatch(
                x=x.to(cfg.device), y=y.to(cfg.device),
                eps=self.schedules.eps(self.step), epoch=self.epoch, step=self.step,
                beta=self.schedules.beta(self.step), kappa=self.schedules.kappa(self.step),
                weight=x.shape[0] / global_n,
            )
            metrics = self.rule.step(batch)
            self.step += 1
            self.batch = i + 1
            sums.add(metrics, float(x.shape[0]))
            if bar is not None:
                bar.update(1)
                acc = metrics.get("train_cert_acc", metrics.get("train_acc", float("nan")))
                extra = {k: f"{metrics[k]:.3g}" for k in shown if k in metrics}
                bar.set_postfix(loss=f"{metrics.get('loss', 0.0):.3f}", eps=f"{batch.eps:.4f}",
                                acc=f"{acc:.2f}", **extra)
            if self.on_step is not None:
                self.on_step(self, self.step)
            if self.stop_requested and self.batch < self.steps_per_epoch:
                self.train_seconds += time.perf_counter() - start
                if bar is not None:
                    bar.close()
                self.save()
                return
        if bar is not None:
            bar.close()
        self.train_seconds += time.perf_counter() - start
        self.rule.on_epoch_end(self.epoch)
        record = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "eps": self.schedules.eps(max(self.step - 1, 0)),
            "kappa": self.schedules.kappa(max(self.step - 1, 0)),
            "beta": self.schedules.beta(max(self.step - 1, 0)),
            **sums.result(),
            "lr": rule_lr(self.rule),
            "seconds": self.train_seconds,
        }
        self.epoch += 1
        self.batch = 0
        if cfg.eval_every and (self.epoch % cfg.eval_every == 0 or self.epoch == cfg.epochs):
            record.update(self.quick_eval())
        self.save()
        if self.world.is_main:
            with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
            if self.progress:
                rounded = {k: float(f"{v:.4g}") if isinstance(v, float) else v
                           for k, v in record.items()}
                print(json.dumps(rounded, separators=(",", ":")), flush=True)
        barrier()

    def _bar(self) -> Any:
        if not (self.progress and self.world.is_main):
            return None
        return progress_bar(self.steps_per_epoch, f"epoch {self.epoch + 1}/{self.cfg.epochs}",
                            initial=self.batch)

    @torch.no_grad()
    def quick_eval(self) -> dict[str, float]:
        """Test natural accuracy, and float32 certified accuracy of the training domain.

        A progress number only: the final certification (float64, tolerance) is
        :func:`absdsl.training.certify.certify`.
        """


        model = self.model
        was_training = model.training
        model.eval()
        correct = certified = total = 0
        prog = self.programs.get(self.cfg.domain)
        n = self.info.num_classes
        try:
            for x, y in eval_batches(self.test_split, 500):
                x, y = x.to(self.cfg.device), y.to(self.cfg.device)
                ok = model(x).argmax(1) == y
                correct += int(ok.sum())
                total += int(y.shape[0])
                if prog is not None and self.cfg.eps > 0:
                    lo, hi = input_box(x, self.cfg.eps)
                    lb, _ = run_program(prog, None, lo, hi, margin_spec(y, n).to(x.dtype))
                    certified += int((ok & (lb.min(1).values > 0)).sum())
        finally:
            model.train(was_training)
        out = {"test_natural_acc": correct / max(total, 1)}
        if prog is not None and self.cfg.eps > 0:
            out["test_certified_acc_f32"] = certified / max(total, 1)
        return out


class _EpochMetrics:
    """Reduces per-step metrics over an epoch as the step rule asks (default: the mean
    weighted by batch size; PGPE keeps the last sigma and sums non-finite members)."""

    def __init__(self, reductions: dict[str, str]) -> None:
        self.reductions = reductions
        self.values: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict[str, float], n: float) -> None:
        for key, value in metrics.items():
            value = float(value)
            how = self.reductions.get(key, "mean")
            if key not in self.values:
                self.values[key] = value * n if how == "mean" else value
                self.weights[key] = n
                continue
            if how == "mean":
                self.values[key] += value * n
                self.weights[key] += n
            elif how == "sum":
                self.values[key] += value
            elif how == "last":
                self.values[key] = value
            elif how == "min":
                self.values[key] = min(self.values[key], value)
            else:
                self.values[key] = max(self.values[key], value)

    def result(self) -> dict[str, float]:
        out = {}
        for key, value in self.values.items():
            if self.reductions.get(key, "mean") == "mean":
                value /= max(self.weights[key], 1.0)
            out[key] = value
        return out


def prepare_run_dir(run_dir: Path, cfg: TrainConfig, overwrite: bool = False) -> None:
    """Create RUN/ with the resolved config; refuse to mix with an existing run."""
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        if list_checkpoints(run_dir):
            raise RunError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir}, "
                "or pass --overwrite to start over"
            )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(f"cannot create run folder {run_dir}: {err.strerror or err}") from err
    if overwrite:
        for _, _, p in list_checkpoints(run_dir):
            p.unlink(missing_ok=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        (run_dir / "metrics.json").unlink(missing_ok=True)
    atomic_write_text(dump_toml(cfg), run_dir / "config.toml")


def resume_state(run_dir: Path, epochs: int | None = None) -> tuple[TrainConfig, dict[str, Any]]:
    """The config and newest checkpoint of a run folder (``epochs`` may extend the run)."""

    if not run_dir.is_dir():
        raise RunError(f"cannot resume: {run_dir} is not a run folder")
    ckpt = load_checkpoint(latest_checkpoint(run_dir))
    overrides = {k: v for k, v in ckpt["config"].items() if v is not None}
    if (run_dir / "config.toml").is_file():
        saved = load_toml(run_dir / "config.toml")
        for key in ("epochs", "eval_every", "test_subset", "device", "certify_domain"):
            if key in saved:
                overrides[key] = saved[key]
    if epochs is not None:
        overrides["epochs"] = epochs
    return resolve(overrides), ckpt


def run_training(
    cfg: TrainConfig | None,
    run_dir: str | Path,
    *,
    resume: bool = False,
    epochs: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    final_eval: bool = True,
    on_step: Callable[[Trainer, int], None] | None = None,
) -> dict[str, Any]:
    """Train (or continue) a run in ``run_dir``; returns the final metrics (metrics.json).

    With ``resume`` the config comes from the run folder (``cfg`` is ignored) and ``epochs``
    may extend the run. Training sets the process's allocator once
    (:func:`absdsl.cpu_memory.apply_default`: freed CPU memory stays with the process).
    """
    keep_freed_memory_by_default()  # a training process: freed tensors stay mapped
    run_dir = Path(run_dir)
    wall = time.perf_counter()
    checkpoint = None
    if resume:
        cfg, checkpoint = resume_state(run_dir, epochs)
    if cfg is None:
        raise RunError("run_training needs a config unless it resumes a run")
    world = init_from_env(cfg.device)
    if not resume and world.is_main:
        prepare_run_dir(run_dir, cfg, overwrite)
    barrier()
    trainer = Trainer(cfg, run_dir, world=world, progress=progress, on_step=on_step)
    try:
        trainer.setup(checkpoint)
        if resume and world.is_main:
            atomic_write_text(dump_toml(trainer.cfg), run_dir / "config.toml")
        trainer.train()
    finally:  # Ray actors and the like go at the end, on errors and on Ctrl-C alike
        trainer.close()
    result: dict[str, Any] = {
        "domain": trainer.cfg.domain,
        "eps": trainer.cfg.eps,
        "method": trainer.cfg.method,
        "optimizer": trainer.cfg.optimizer,
        "dataset": trainer.cfg.dataset,
        "model": trainer.cfg.model,
        "epochs": trainer.epoch,
        "train_seconds": trainer.train_seconds,
    }
    if final_eval and world.is_main:

        opts = CertifyOptions(
            eps=trainer.cfg.eps,
            domain=trainer.cfg.certify_domain or _certify_default(trainer.cfg),
            tolerance=trainer.cfg.tolerance,
            pgd_steps=trainer.cfg.eval_pgd_steps,
            pgd_restarts=trainer.cfg.eval_pgd_restarts,
        )
        report = certify_model(trainer.model, trainer.info, trainer.test_split, opts,
                               progress=progress)
        result.update(report.summary())
    result["seconds"] = time.perf_counter() - wall
    if world.is_main:
        atomic_write_text(json.dumps(result, indent=2) + "\n", run_dir / "metrics.json")
    barrier()
    return result


def _certify_default(cfg: TrainConfig) -> str:
    """Certify with the training domain; for PGD and natural training, with Box."""
    if cfg.method in ("pgd", "natural"):
        return "box"
    return cfg.domain
