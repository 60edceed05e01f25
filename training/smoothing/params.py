"""Flat parameter vectors <-> named parameter dicts.

PGPE and RGS search over one flat vector per population member; bound programs take a dict
of named tensors. :class:`ParamLayout` converts between the two without copying more than
needed, and keeps leading (population) dimensions, so ``[popsize, n]`` becomes a dict of
``[popsize, *shape]`` tensors ready for ``torch.func.vmap``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of a model's trainable parameters in the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @staticmethod
    def of(model: nn.Module) -> ParamLayout:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        return ParamLayout(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def numels(self) -> tuple[int, ...]:
        out = []
        for shape in self.shapes:
            k = 1
            for s in shape:
                k *= s
            out.append(k)
        return tuple(out)

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        return sum(self.numels)

    def describe(self) -> str:
        return ", ".join(f"{n}{list(s)}" for n, s in zip(self.names, self.shapes, strict=True))

    def flatten(self, model: nn.Module) -> torch.Tensor:
        """The model's current parameters as one detached flat vector."""
        params = dict(model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., n]`` -> ``{name: [..., *shape]}`` (views of ``flat``)."""
        if flat.shape[-1] != self.size:
            raise ValueError(f"flat vector of length {flat.shape[-1]}, layout needs {self.size}")
        lead = tuple(flat.shape[:-1])
        pieces = torch.split(flat, list(self.numels), dim=-1)
        return {
            n: piece.reshape(*lead, *shape)
            for n, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }

    @torch.no_grad()
    def write(self, model: nn.Module, flat: torch.Tensor) -> None:
        """Copy a flat vector into the model's parameters in place (the step rule's output)."""
        params = dict(model.named_parameters())
        for name, value in self.unflatten(flat).items():
            params[name].copy_(value.to(dtype=params[name].dtype, device=params[name].device))
