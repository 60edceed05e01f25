"""The ``pgpe`` and ``rgs`` step rules for the training loop (``--optimizer pgpe|rgs``).

Both optimise the Gaussian-smoothed certified loss L_sigma(theta) = E L(theta + eps):
PGPE from population losses alone (zeroth order, any domain), RGS from the mean gradient at
perturbed weights (first order). The loop keeps data, schedules, checkpoints and metrics;
these rules own the update and a state dict of plain tensors for ``--resume``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from absdsl.training.smoothing.distributed import RayEvaluator

from ..data import dataset_info
from ..schedules import step_decay_factor
from ..steprule import TrainBatch, check_finite
from .errors import SmoothingConfigError
from .estimators import antithetic_cv_gradient, check_estimator
from .fitness import PopulationObjective
from .options import SmoothingOptions, parse_options
from .pgpe import PGPESearch
from .rgs import smoothed_gradient


def load_initial_weights(model: nn.Module, path: str) -> None:
    """Copy a checkpoint's weights into ``model``; a different architecture is an error."""
    file = Path(path)
    if not file.is_file():
        raise SmoothingConfigError(f"init checkpoint {file} not found")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unreadable or not a weights-only checkpoint
        raise SmoothingConfigError(f"init checkpoint {file} cannot be read: {err}") from err
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SmoothingConfigError(f"init checkpoint {file} holds no model state dict")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing[:5]))
        if extra:
            parts.append("unexpected " + ", ".join(extra[:5]))
        if wrong:
            parts.append("shape " + "; ".join(wrong[:5]))
        raise SmoothingConfigError(
            f"init checkpoint {file} is for a different architecture: {'; '.join(parts)}"
        )
    model.load_state_dict(state)


def _setup(
    model: nn.Module, config: Any, programs: dict[str, Any]
) -> tuple[SmoothingOptions, PopulationObjective]:
    opts = parse_options(dict(config.options or {}), lr=float(config.lr), seed=int(config.seed))
    opts.pgpe.validate()
    opts.rgs.validate()
    if opts.init_checkpoint:
        load_initial_weights(model, opts.init_checkpoint)
    info = dataset_info(config.dataset)
    objective = PopulationObjective(
        model, programs, config.domain, info.num_classes,
        memory_budget=opts.memory_budget, chunk_size=opts.chunk_size,
        mode=opts.population_eval, loss_fusion=bool(getattr(config, "loss_fusion", False)),
    )
    return opts, objective


def check_memory(objective: PopulationObjective, config: Any, kind: str) -> int:
    """Size the vmapped chunks on a dummy full-size batch, so that a budget below one member
    fails at start-up rather than after data loading and the first steps."""
    info = dataset_info(config.dataset)
    param = next(objective.model.parameters())
    x = torch.zeros(int(config.batch_size or 1), *info.shape, dtype=param.dtype,
                    device=param.device)
    y = torch.zeros(x.shape[0], dtype=torch.long, device=param.device)
    was_training = objective.model.training
    objective.model.eval()
    try:
        objective.set_batch(x, y, float(config.train_eps or config.eps or 0.0))
        return objective.chunk_size(kind)
    finally:
        objective.batch = None
        objective.model.train(was_training)


class _SmoothingStep:
    """Shared parts: learning-rate decay by epoch, evaluation mode, the objective."""

    name = "smoothing"

    def __init__(self, model: nn.Module, config: Any, objective: PopulationObjective) -> None:
        self.model = model
        self.config = config
        self.objective = objective
        self.layout = objective.layout

    def lr_scale(self, epoch: int) -> float:
        milestones = tuple(self.config.lr_milestones or ())
        return step_decay_factor(epoch, milestones, float(self.config.lr_decay or 1.0))

    def _set_batch(self, batch: TrainBatch) -> None:
        self.model.eval()  # bound programs and the vmapped natural forward need eval mode
        self.objective.set_batch(batch.x, batch.y, batch.eps, batch.kappa, batch.beta)


class PGPEStep(_SmoothingStep):
    """One PGPE generation per minibatch: sample, evaluate in one batched call, update."""

    name = "pgpe"
    # per epoch in metrics.jsonl: sigma at the epoch's end, non-finite members summed, the
    # rest (loss, loss_min, loss_std, step_norm) averaged over the epoch's minibatches
    metric_reductions = {"sigma": "last", "nonfinite": "sum"}
    progress_metrics = ("sigma", "step_norm", "nonfinite")

    def __init__(self, model: nn.Module, config: Any, programs: dict[str, Any]) -> None:
        opts, objective = _setup(model, config, programs)
        super().__init__(model, config, objective)
        self.options = opts
        self.search = PGPESearch(self.layout.flatten(model), opts.pgpe)
        check_memory(objective, config, "loss")
        self.evaluate: Callable[[torch.Tensor], torch.Tensor] = objective.losses
        self.remote = None
        if opts.num_actors > 0:

            self.remote = RayEvaluator(
                objective, opts.num_actors, address=opts.ray_address,
                gpus_per_actor=opts.gpus_per_actor,
            )
            self.evaluate = self.remote.losses

    def step(self, batch: TrainBatch) -> dict[str, float]:
        self._set_batch(batch)
        values = self.search.ask()
        losses = self.evaluate(values)
        finite = losses[torch.isfinite(losses)]
        # a few diverged members are ranked worst by tell(); only a wholly non-finite
        # population stops the run
        mean = finite.mean() if finite.numel() else losses.mean()
        check_finite(mean, batch.epoch, batch.step)
        before = self.search.center.clone()
        self.search.tell(values, losses)
        self.layout.write(self.model, self.search.center)
        return {
            "loss": float(mean),
            "loss_min": float(finite.min()),
            "loss_std": float(finite.std()) if finite.numel() > 1 else 0.0,
            "nonfinite": float(losses.numel() - finite.numel()),
            "sigma": float(self.search.sigma.mean()),
            "step_norm": float((self.search.center - before).norm()),
        }

    def on_epoch_end(self, epoch: int) -> None:
        self.search.set_lr_scale(self.lr_scale(epoch + 1))

    def current_lr(self) -> float:
        """The centre learning rate now (for the loop's metrics)."""
        return float(self.search.state.optimizer_state.center_learning_rate)

    def close(self) -> None:
        """Stop the Ray actors (if any); called by the loop in a ``finally``."""
        remote, self.remote = self.remote, None
        self.evaluate = self.objective.losses
        if remote is not None:
            remote.close()

    def state_dict(self) -> dict:
        return {"pgpe": self.search.state_dict(), "plan": self.objective.plan_state()}

    def load_state_dict(self, state: dict) -> None:
        self.search.load_state_dict(state["pgpe"])
        if "plan" in state:
            self.objective.load_plan_state(state["plan"])
        self.layout.write(self.model, self.search.center)


class RGSStep(_SmoothingStep):
    """Adam on the mean gradient at n perturbed weights (one vmapped forward+backward)."""

    name = "rgs"

    def __init__(self, model: nn.Module, config: Any, programs: dict[str, Any]) -> None:
        opts, objective = _setup(model, config, programs)
        super().__init__(model, config, objective)
        if opts.num_actors > 0:
            raise SmoothingConfigError("num_actors is for --optimizer pgpe; RGS runs in process")
        self.options = opts.rgs
        check_memory(objective, config, "grad")
        self.base_lr = float(config.lr)
        self.params = [p for n, p in model.named_parameters() if n in set(self.layout.names)]
        self.optimizer = torch.optim.Adam(self.params, lr=self.base_lr)
        device = self.params[0].device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(config.seed))

    def step(self, batch: TrainBatch) -> dict[str, float]:
        self._set_batch(batch)
        center = self.layout.flatten(self.model)
        loss, grad = self._estimate(center)
        check_finite(loss, batch.epoch, batch.step)
        grads = self.layout.unflatten(grad)
        named = dict(self.model.named_parameters())
        for name in self.layout.names:
            named[name].grad = grads[name].to(named[name].dtype).clone()
        metrics = {"loss": float(loss)}
        clip = self.config.grad_clip
        if clip:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return metrics

    def _estimate(self, center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss estimate, smoothed-gradient estimate) at ``center``."""
        return smoothed_gradient(self.objective, center, self.options, self.generator)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def on_epoch_end(self, epoch: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * self.lr_scale(epoch + 1)

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "base_lr": self.base_lr,
            "plan": self.objective.plan_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if "plan" in state:
            self.objective.load_plan_state(state["plan"])
        self.generator.set_state(state["generator"])
        self.base_lr = float(state.get("base_lr", self.base_lr))


class AntitheticCVStep(RGSStep):
    """Adam on the antithetic zeroth-order estimate with the centre gradient as control
    variate (``estimators.antithetic_cv_gradient``): ``rgs_samples`` loss values and one
    gradient per step."""

    name = "antithetic-cv"

    def __init__(self, model: nn.Module, config: Any, programs: dict[str, Any]) -> None:
        raw = dict(config.options or {})
        if str(raw.get("symmetric", True)).lower() in ("false", "0", "no"):
            raise SmoothingConfigError("antithetic-cv always samples antithetic pairs; "
                                       "symmetric=false is not allowed")
        super().__init__(model, config, programs)
        check_estimator("antithetic-cv", self.options.sigma, self.options.samples)

    def _estimate(self, center: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        centre_loss, centre_grad = self.objective.gradients(center.unsqueeze(0))
        est = antithetic_cv_gradient(self.objective.losses, self.objective.gradients, center,
                                     self.options.sigma, self.options.samples, self.generator,
                                     centre_gradient=centre_grad[0])
        return centre_loss[0], est.gradient
