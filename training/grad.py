"""GRAD: the gradient step rule (Adam, step decay of the learning rate, gradient clipping)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .data import dataset_info
from .distributed import allreduce_grads
from .objective import batch_loss
from .schedules import step_decay_factor
from .steprule import TrainBatch, check_finite, register_step_rule


class GradStep:
    """One Adam step on the configured method's loss; data-parallel when a group exists."""

    name = "grad"

    def __init__(self, model: nn.Module, config: Any, programs: dict[str, Any]) -> None:
        self.model = model
        self.config = config
        self.programs = programs
        self.num_classes = dataset_info(config.dataset).num_classes
        self.base_lr = float(config.lr)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.base_lr)

    def step(self, batch: TrainBatch) -> dict[str, float]:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, metrics = batch_loss(
            self.model, self.programs, self.config, batch, num_classes=self.num_classes
        )
        check_finite(loss, batch.epoch, batch.step)
        (loss * batch.weight).backward()
        allreduce_grads(self.model)
        clip = self.config.grad_clip
        if clip:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            metrics["grad_norm"] = float(norm)
        self.optimizer.step()
        metrics["loss"] = float(loss.detach())
        return metrics

    def set_epoch_lr(self, epoch: int) -> None:
        """The learning rate for (0-based) ``epoch`` under the step decay schedule."""
        factor = step_decay_factor(
            epoch, tuple(self.config.lr_milestones or ()), float(self.config.lr_decay or 1.0)
        )
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * factor

    def on_epoch_end(self, epoch: int) -> None:
        self.set_epoch_lr(epoch + 1)

    def current_lr(self) -> float:
        """The learning rate of the next step (logged as ``lr``)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "base_lr": self.base_lr}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.base_lr = float(state.get("base_lr", self.base_lr))


register_step_rule("grad", GradStep)
