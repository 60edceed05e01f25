"""Tiny models for the CLI tests, loaded as ``tests.cli.models:FACTORY``."""

from __future__ import annotations

import torch
from torch import nn


def tiny() -> nn.Module:
    """Conv 2 4x4/2/1 + ReLU, Flatten, Linear 10 on 1x8x8 inputs (deterministic weights)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(2 * 4 * 4, 10)).eval()


def mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()


def not_a_module() -> int:
    return 3
