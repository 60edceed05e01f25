"""Small torch networks exported to ONNX by the tests themselves, and VNN-LIB text helpers."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


class Normalize(nn.Module):
    """(x - mean) / std with buffers: exported as Sub and Div by constants."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.linspace(0.25, 0.5, channels).view(1, -1, 1, 1))
        self.register_buffer("std", torch.linspace(0.5, 1.0, channels).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ResCNN(nn.Module):
    """Normalisation, conv + batch norm, a residual add, both poolings, cat, Gemm and the
    listed activations. Float attributes are exact in float32 (0.125, 2^-16, 0.75), so the
    ONNX file holds exactly the torch model's numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = Normalize(2)
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4, eps=2.0 ** -16)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4, eps=2.0 ** -16)
        self.pool = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * 3 * 3 + 4, 6)
        self.act = nn.LeakyReLU(0.125)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.c1(self.norm(x))))
        h = torch.sigmoid(self.bn2(self.c2(h)) + h)
        z = torch.cat([torch.flatten(self.pool(h), 1), self.gap(h).reshape(h.shape[0], -1)], 1)
        z = nn.functional.hardtanh(torch.tanh(self.act(self.fc(z))), -0.5, 0.75)
        return self.out(z)


def res_cnn() -> ResCNN:
    torch.manual_seed(1)
    m = ResCNN()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


def mlp(seed: int = 0, width: int = 16) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 2)).eval()


def export(model: nn.Module, shape: tuple[int, ...], path: Path, fold: bool = True,
           dynamic: bool = False) -> Path:
    """torch.onnx (TorchScript exporter); ``fold=False`` keeps BatchNormalization nodes."""
    axes = {"x": {0: "b"}, "y": {0: "b"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, *shape),), str(path), dynamo=False,
                          opset_version=17, do_constant_folding=fold, input_names=["x"],
                          output_names=["y"], dynamic_axes=axes)
    return path


def vnnlib(box: list[tuple[float, float]], n_out: int, output: str) -> str:
    """A property: an input box and one output assertion (written by hand by the tests)."""
    lines = [f"(declare-const X_{i} Real)" for i in range(len(box))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i, (lo, hi) in enumerate(box):
        lines += [f"(assert (>= X_{i} {lo!r}))", f"(assert (<= X_{i} {hi!r}))"]
    lines.append(f"(assert {output})")
    return "\n".join(lines) + "\n"


def confirming(net: nn.Module, n_in: int, polys: list, found: list):
    """The ``confirm`` callback of a branch and bound in tests: a candidate ``x`` is a witness
    of polytope ``k`` when the plain model's output lies in it; witnesses go to ``found``."""
    import numpy as np

    def confirm(k: int, x: np.ndarray) -> tuple[int, np.ndarray] | None:
        with torch.no_grad():
            y = net(torch.from_numpy(x).reshape(1, n_in))[0].numpy()
        if polys[k].holds(y):
            found.append((k, x))
            return k, x
        return None

    return confirm
