"""PGPE (Sehnke et al. 2010) over flat weight vectors, on evotorch's functional PGPE.

evotorch supplies the update: the symmetric-sampling gradient estimates for the centre and
sigma (paper, section 3: grad_theta ~ sum eps_i (r+ - r-), grad_sigma ~ sum ((r+ + r-)/2 - b)
(eps_i^2 - sigma^2) / sigma), fitness ranking, the centre optimiser (ClipUp, Adam, SGD) and
the bounded sigma step. This module owns the sampling, with its own generator so that a
resumed run draws the same populations, and a state dict of plain tensors, floats and
strings (loadable with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from .errors import SmoothingConfigError

OPTIMIZERS = ("adam", "clipup", "sgd")
RANKINGS = ("centered", "raw")


@dataclass(frozen=True)
class PGPEOptions:
    """Hyperparameters of one PGPE search (paper defaults: popsize 256, sigma 1e-3, lr 3e-4)."""

    popsize: int = 256
    sigma_init: float = 1e-3
    center_lr: float = 3e-4
    sigma_lr: float = 0.1
    optimizer: str = "adam"
    ranking: str = "centered"
    symmetric: bool = True
    sigma_max_change: float = 0.2
    seed: int = 0

    def validate(self) -> None:
        """Reject options that cannot work, before any evaluation is done."""
        if self.popsize < 2:
            raise SmoothingConfigError(f"PGPE popsize must be at least 2, got {self.popsize}")
        if self.symmetric and self.popsize % 2:
            raise SmoothingConfigError(
                f"PGPE popsize must be even with symmetric sampling (members come in +/- pairs), "
                f"got {self.popsize}"
            )
        if not self.sigma_init > 0:
            raise SmoothingConfigError(f"PGPE sigma must be > 0, got {self.sigma_init}")
        if not self.center_lr > 0:
            raise SmoothingConfigError(f"PGPE centre lr must be > 0, got {self.center_lr}")
        if self.sigma_lr < 0:
            raise SmoothingConfigError(f"PGPE sigma lr must be >= 0, got {self.sigma_lr}")
        if self.optimizer not in OPTIMIZERS:
            raise SmoothingConfigError(
                f"unknown PGPE optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.ranking not in RANKINGS:
            raise SmoothingConfigError(
                f"unknown PGPE ranking {self.ranking!r}; choose one of {', '.join(RANKINGS)}"
            )
        if not 0 < self.sigma_max_change <= 1:
            raise SmoothingConfigError(
                f"sigma max change must be in (0, 1], got {self.sigma_max_change}"
            )


class PGPESearch:
    """A separable Gaussian N(center, diag(sigma^2)) over weight vectors, moved by PGPE."""

    def __init__(self, center: torch.Tensor, options: PGPEOptions) -> None:
        options.validate()
        self.options = options
        # imported here: evotorch pulls in ray, scipy and cma (3 s), which commands that
        # never run PGPE (certify, bounds, --help) should not pay for
        from evotorch.algorithms.functional import pgpe  # lazy: heavy dependency evotorch

        center = center.detach().clone()
        config: dict[str, Any] = {}
        if options.optimizer == "sgd":
            config["momentum"] = 0.0
        self.state = pgpe(
            center_init=center,
            center_learning_rate=options.center_lr,
            stdev_learning_rate=options.sigma_lr,
            objective_sense="min",
            ranking_method=options.ranking,
            optimizer=options.optimizer,
            optimizer_config=config,
            stdev_init=options.sigma_init,
            stdev_max_change=options.sigma_max_change,
            symmetric=options.symmetric,
        )
        self.generator = torch.Generator(device=center.device)
        self.generator.manual_seed(options.seed)
        self._lr_scale = 1.0

    @property
    def center(self) -> torch.Tensor:
        return self.state.optimizer_state.center

    @property
    def sigma(self) -> torch.Tensor:
        return self.state.stdev

    def ask(self, popsize: int | None = None) -> torch.Tensor:
        """A population ``[popsize, n]``; symmetric: rows 2i and 2i+1 are center +/- eps_i."""
        popsize = self.options.popsize if popsize is None else popsize
        center, sigma = self.center, self.sigma
        if self.options.symmetric:
            noise = torch.randn(
                popsize // 2, center.numel(), generator=self.generator,
                device=center.device, dtype=center.dtype,
            ) * sigma
            return torch.stack([center + noise, center - noise], dim=1).reshape(popsize, -1)
        noise = torch.randn(
            popsize, center.numel(), generator=self.generator,
            device=center.device, dtype=center.dtype,
        )
        return center + noise * sigma

    def tell(self, values: torch.Tensor, losses: torch.Tensor) -> None:
        """One PGPE update from the population ``values`` and their ``losses``."""
        losses = losses.to(dtype=values.dtype, device=values.device)
        if not torch.isfinite(losses).all():
            # A diverged member must not poison the estimate: rank it worst.
            worst = losses[torch.isfinite(losses)].max() if torch.isfinite(losses).any() else 0.0
            losses = torch.nan_to_num(losses, nan=float(worst) + 1.0, posinf=float(worst) + 1.0)
        from evotorch.algorithms.functional import pgpe_tell  # lazy: heavy dependency evotorch

        self.state = pgpe_tell(self.state, values, losses)

    def set_lr_scale(self, scale: float) -> None:
        """Scale the centre learning rate (and ClipUp's max speed) relative to the start."""
        opt = self.state.optimizer_state
        base = torch.as_tensor(self.options.center_lr, dtype=opt.center.dtype)
        fields: dict[str, torch.Tensor] = {"center_learning_rate": base * scale}
        if hasattr(opt, "max_speed"):
            fields["max_speed"] = 2.0 * base * scale
        self.state = self.state._replace(optimizer_state=opt._replace(**fields))
        self._lr_scale = float(scale)

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, floats and strings: the distribution, the optimiser, the sampler."""
        opt = self.state.optimizer_state
        return {
            "options": asdict(self.options),
            "optimizer_state": {k: v.detach().clone() for k, v in opt._asdict().items()},
            "sigma": self.state.stdev.detach().clone(),
            "generator": self.generator.get_state(),
            "lr_scale": self._lr_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["options"]
        for key in ("popsize", "optimizer", "symmetric", "ranking"):
            if saved.get(key) != getattr(self.options, key):
                raise SmoothingConfigError(
                    f"checkpoint has PGPE {key}={saved.get(key)!r}, this run has "
                    f"{getattr(self.options, key)!r}"
                )
        opt = self.state.optimizer_state
        loaded = state["optimizer_state"]
        if loaded["center"].shape != opt.center.shape:
            raise SmoothingConfigError(
                f"checkpoint PGPE centre has {loaded['center'].numel()} weights, the model has "
                f"{opt.center.numel()}"
            )
        device = opt.center.device
        fields = {k: torch.as_tensor(loaded[k]).to(device) for k in opt._fields}
        self.state = self.state._replace(
            optimizer_state=opt._replace(**fields), stdev=state["sigma"].to(device)
        )
        self.generator.set_state(state["generator"])
        self._lr_scale = float(state.get("lr_scale", 1.0))
