"""Back-substitution of many outputs (1,000 classes) in chunks within the memory budget:
the same bounds, and a peak of live tensors that follows the budget."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import absdsl
from absdsl.experiments.bench_bounds import peak_tensor_bytes


def _wide_head() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 16 * 16, 1000)).eval()


@pytest.mark.parametrize("domain", ["crown-ibp", "deeppoly"])
def test_many_outputs_in_chunks_give_the_same_bounds(domain):
    model = _wide_head()
    x = torch.rand(2, 3, 16, 16)
    lo, hi = x - 0.01, x + 0.01
    whole = absdsl.compile(model, domain, memory_budget_mb=4096)(lo, hi)
    chunked = absdsl.compile(model, domain, memory_budget_mb=16)(lo, hi)
    for a, b in zip(whole, chunked, strict=True):
        assert torch.equal(a, b)


def test_crown_ibp_peak_follows_the_budget():
    """2,000 output rows over a 2,048-neuron map take ~33 MB at once; a 16 MiB budget keeps
    the peak well below that, a 4 GiB one does not chunk."""
    model = _wide_head()
    x = torch.rand(2, 3, 16, 16)
    lo, hi = x - 0.01, x + 0.01
    small = absdsl.compile(model, "crown-ibp", memory_budget_mb=16)
    large = absdsl.compile(model, "crown-ibp", memory_budget_mb=4096)
    with torch.no_grad():
        small(lo, hi)
        large(lo, hi)
        peak_small = peak_tensor_bytes(lambda: small(lo, hi))
        peak_large = peak_tensor_bytes(lambda: large(lo, hi))
    assert peak_small < 0.5 * peak_large, (peak_small, peak_large)
