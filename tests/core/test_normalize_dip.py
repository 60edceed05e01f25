"""F.normalize near the dip of ``inv_norm``'s derivative: a point box must give the point.

The op table once took ``inv_norm``'s dip slope (-5e35 at a squared norm of 0) for any
squared norm within an absolute 1e-6 of it; the zonotope's DeepZ rule then cancelled the
value to rounding noise and bounded ``F.normalize((-1e-3, 0))`` by [0, 0] (true: -1).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import absdsl


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


@pytest.mark.parametrize("domain", ["box", "hbox", "zonotope", "deeppoly", "crown-ibp"])
@pytest.mark.parametrize("scale", [1e-3, 1e-2, 1e-5])
def test_point_box_near_the_dip_is_exact(domain: str, scale: float) -> None:
    x = torch.tensor([[-scale, 0.0], [scale, scale]], dtype=torch.float64)
    prog = absdsl.compile(_Normalize().double(), domain, input_shape=(2,))
    lb, ub = prog(x, x)
    want = F.normalize(x, dim=-1)
    assert torch.allclose(lb, want, atol=1e-9) and torch.allclose(ub, want, atol=1e-9)
