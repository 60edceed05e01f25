"""Model factories for training tests of ops beyond the papers' networks (``module:factory``)."""

from __future__ import annotations

import torch
import torch.nn as nn


class MaxPoolCNN(nn.Module):
    """Conv, ReLU, 2x2 max pooling, conv, ReLU, max pooling, linear head."""

    def __init__(self, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, stride=2))
        self.head = nn.Linear(8 * 7 * 7, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class LayerNormResNet(nn.Module):
    """A stem, one residual block with LayerNorm over its features, GELU, a head."""

    def __init__(self, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(channels, 4, 4, stride=4)  # 28 x 28 -> 7 x 7
        self.norm = nn.LayerNorm(4 * 7 * 7)
        self.inner = nn.Linear(4 * 7 * 7, 4 * 7 * 7)
        self.head = nn.Linear(4 * 7 * 7, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x)).flatten(1)
        h = h + self.inner(nn.functional.gelu(self.norm(h)))
        return self.head(h)


def maxpool_cnn(info) -> nn.Module:
    return MaxPoolCNN(info.shape[0], info.num_classes)


def layernorm_resnet(info) -> nn.Module:
    return LayerNormResNet(info.shape[0], info.num_classes)
