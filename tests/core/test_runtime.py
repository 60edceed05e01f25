"""Runtime kernels that replace torch ops on the back-substitution path agree with them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from absdsl.compiler.backsub import rows as rt
from absdsl.compiler.context import Context


@pytest.mark.parametrize(("channels", "kernel", "stride", "padding", "size"), [
    (1, 5, 2, 2, 28), (3, 3, 2, 1, 32), (2, 4, 2, 1, 9), (1, 4, 3, 0, 10), (4, 2, 2, 0, 8),
    (1, 7, 2, 3, 15),
])
def test_subpixel_transpose_equals_conv_transpose(channels: int, kernel: int, stride: int,
                                                  padding: int, size: int) -> None:
    torch.manual_seed(kernel * 10 + size)
    weight = torch.randn(5, channels, kernel, kernel, dtype=torch.float64)
    x = torch.zeros(1, channels, size, size, dtype=torch.float64)
    out_hw = F.conv2d(x, weight, None, stride, padding).shape[-2:]
    rows = torch.randn(2, 3, 5, *out_hw, dtype=torch.float64)
    expected_size = (out_hw[0] - 1) * stride - 2 * padding + kernel
    op = size - expected_size
    assert 0 <= op <= padding or op == 0  # the configurations the sub-pixel path serves
    want = F.conv_transpose2d(rows.flatten(0, 1), weight, None, stride, padding, op)
    got = rt.conv_transpose_subpixel(rows, weight, (stride, stride), (padding, padding),
                                     (size, size))
    assert got.shape == (2, 3, channels, size, size)
    torch.testing.assert_close(got.flatten(0, 1), want, atol=1e-12, rtol=1e-12)


def test_back_lines_take_the_line_chosen_by_the_sign() -> None:
    torch.manual_seed(0)
    shape = (3, 4)
    a_lo, a_hi = (torch.rand(2, *shape, dtype=torch.float64) for _ in range(2))
    b_lo, b_hi = (torch.rand(2, *shape, dtype=torch.float64) * sign for sign in (-1, 1))
    k = 5
    lam = torch.randn(2, 2 * k, *shape, dtype=torch.float64)
    acc = torch.randn(2, 2 * k, dtype=torch.float64)
    lines = rt.back_lines((a_lo, b_lo, a_hi, b_hi), Context(compact=False, rows_per_chunk=1))
    got, got_acc = rt.relax_back(lam, k, lines, acc)
    low, up = lam[:, :k], lam[:, k:]
    pos_lo, neg_lo, pos_up, neg_up = (low.clamp(min=0), low.clamp(max=0), up.clamp(min=0),
                                      up.clamp(max=0))
    al, bl, ah, bh = (t.unsqueeze(1) for t in (a_lo, b_lo, a_hi, b_hi))
    want = torch.cat([pos_lo * al + neg_lo * ah, pos_up * ah + neg_up * al], 1)
    want_acc = acc + torch.cat([(pos_lo * bl + neg_lo * bh).flatten(2).sum(-1),
                                (pos_up * bh + neg_up * bl).flatten(2).sum(-1)], 1)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got_acc, want_acc, atol=1e-12, rtol=1e-12)


def test_rows_dot_equals_batched_product_values_gradients_and_vmap() -> None:
    """The spec's folded rows times the last layer's input: the batched matrix-vector
    product to float64 rounding, in values, gradients and under vmap."""
    from absdsl.compiler import runtime

    torch.manual_seed(0)
    rows = torch.randn(6, 9, 40, dtype=torch.float64, requires_grad=True)
    x = torch.randn(6, 40, dtype=torch.float64, requires_grad=True)
    got = runtime.rows_dot(rows=rows, x=x)
    want = torch.einsum("bkn,bn->bk", rows, x)
    assert got.shape == (6, 9)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    weight = torch.randn(6, 9, dtype=torch.float64)
    g_got = torch.autograd.grad((got * weight).sum(), (rows, x))
    g_want = torch.autograd.grad((want * weight).sum(), (rows, x))
    for a, b in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    mapped = torch.vmap(runtime.rows_dot)(rows.unsqueeze(0).expand(3, -1, -1, -1),
                                          x.unsqueeze(0).expand(3, -1, -1))
    torch.testing.assert_close(mapped, want.detach().expand(3, -1, -1), rtol=1e-13,
                               atol=1e-13)
