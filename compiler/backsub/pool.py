"""Back-substitution through a max (max pooling, ``torch.amax``) as one op, in dense rows.

Each output neuron is the maximum of a window of input neurons, ``y = max_j x_j``. Given the
inputs' bounds ``[l_j, u_j]``, the relaxation of a window uses two of its inputs:

* below, ``y >= x_i`` for ``i = argmax_j l_j`` (any input is below the max; this one's lower
  bound is the max's own, ``max_j l_j``, so the line loses nothing at its lowest point);
* above, with ``m = argmax_j u_j`` and ``v = max_{j != m} u_j`` (the largest other upper
  bound): ``y <= max(x_m, v)`` on the box, a convex function of ``x_m`` alone, so it lies
  below its chord over ``[l_m, u_m]``: the line through ``(l_m, v)`` and ``(u_m, u_m)``. When
  ``l_m >= v`` the input ``m`` dominates its window (``i = m``) and both lines are ``x_m``:
  exact. The chord is nowhere above the constant ``u_m`` on ``[l_m, u_m]``.

Rows then reach each window through two columns: a lower row puts its positive weight on
``x_i`` and its negative weight, times the chord's slope, on ``x_m`` (the chord's offset goes
to the constant term); an upper row the other way round. Generated code calls this module as
``pool_rows.<name>(...)`` by keyword.

Windows are a table ``members`` [n_out, K] of flat input indices per output neuron (-1 for
padding), built once per shape (:func:`max_pool_windows`, :func:`amax_windows`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@functools.lru_cache(maxsize=64)
def max_pool_windows(in_shape: tuple[int, int, int], out_shape: tuple[int, int, int],
                     kernel: tuple[int, int], stride: tuple[int, int],
                     padding: tuple[int, int], device: str) -> Tensor:
    """``members`` of ``F.max_pool2d`` on per-sample maps ``in_shape`` [C, H, W]: output
    neuron (c, i, j) reads the input cells of its window; cells in the padding are -1 (the
    pool pads with -inf, so they never hold the max). ``ceil_mode``'s extra windows at the
    bottom and right are covered by padding to ``out_shape``."""
    c, h, w = in_shape
    _, oh, ow = out_shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    below = max((oh - 1) * sh + kh - h - ph, 0)
    right = max((ow - 1) * sw + kw - w - pw, 0)
    cells = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
    cells = F.pad(cells, (pw, right, ph, below), value=-1.0)
    taps = F.unfold(cells, (kh, kw), stride=(sh, sw))[0]  # [kh * kw, L]
    taps = taps[:, : oh * ow].t().long()  # [oh * ow, K]
    per_channel = torch.arange(c).reshape(c, 1, 1) * (h * w)
    members = torch.where(taps >= 0, taps + per_channel, -1)  # [C, oh * ow, K]
    return members.reshape(c * oh * ow, kh * kw).to(device)


@functools.lru_cache(maxsize=64)
def amax_windows(in_shape: tuple[int, ...], dim: int, device: str) -> Tensor:
    """``members`` of ``torch.amax`` over per-sample dim ``dim`` (0-based, batch excluded):
    the output keeps the other dims in order, each neuron reading one line along ``dim``."""
    cells = torch.arange(math.prod(in_shape)).reshape(in_shape)
    return cells.movedim(dim, -1).reshape(-1, in_shape[dim]).to(device)


@dataclass
class MaxLines:
    """A window relaxation per output neuron, [B, n_out] each: the input of the lower line
    (``low``), the input of the upper line (``high``), its slope and offset."""

    low: Tensor
    high: Tensor
    slope: Tensor
    offset: Tensor


def _window_bounds(lower: Tensor, upper: Tensor, members: Tensor) -> tuple[Tensor, Tensor]:
    """The inputs' bounds per window [B, n_out, K]; padding as -inf (never the max)."""
    at = members.clamp(min=0)
    pad = members < 0
    low = lower.flatten(1)[:, at].masked_fill(pad, -math.inf)
    high = upper.flatten(1)[:, at].masked_fill(pad, -math.inf)
    return low, high


def max_lines(lower: Tensor, upper: Tensor, members: Tensor) -> MaxLines:
    """The relaxation of each window (module docstring) from its inputs' bounds."""
    low, high = _window_bounds(lower, upper, members)
    batch = low.shape[0]
    table = members.unsqueeze(0).expand(batch, -1, -1)
    best_low = low.argmax(-1, keepdim=True)
    top, best_high = high.max(-1, keepdim=True)
    others = high.scatter(-1, best_high, -math.inf).amax(-1, keepdim=True)  # v
    low_m = low.gather(-1, best_high)
    top, others, low_m = top.squeeze(-1), others.squeeze(-1), low_m.squeeze(-1)
    dominant = low_m >= others
    # finite stand-ins where the window is dominated (v may be -inf): no inf or nan reaches
    # the gradient through the branch torch.where drops
    others = torch.where(dominant, low_m, others)
    width = torch.where(dominant, 1.0, top - low_m)
    slope = torch.where(dominant, 1.0, (top - others) / width)
    offset = torch.where(dominant, 0.0, others - slope * low_m)
    return MaxLines(table.gather(-1, best_low).squeeze(-1), table.gather(-1, best_high
                                                                         ).squeeze(-1),
                    slope, offset)


def needs(lower: Tensor, upper: Tensor, members: Tensor) -> Tensor:
    """Which inputs [B, *in] the relaxation gains from tighter bounds of: those that may hold
    the max (upper bound at least the window's largest lower bound) of a window that no input
    dominates. A dominated input stays dominated under tighter bounds, and a dominated
    window's lines are exact already."""
    low, high = _window_bounds(lower, upper, members)
    floor = low.amax(-1, keepdim=True)
    top, best_high = high.max(-1, keepdim=True)
    others = high.scatter(-1, best_high, -math.inf).amax(-1, keepdim=True)
    open_window = low.gather(-1, best_high) < others
    candidate = (high >= floor) & open_window & (members >= 0)
    flat = lower.new_zeros(lower.shape[0], lower[0].numel())
    flat = flat.scatter_add(1, members.clamp(min=0).flatten().expand(lower.shape[0], -1),
                            candidate.flatten(1).to(flat.dtype))
    return (flat > 0).reshape(lower.shape)


def max_back(lam: Tensor, k: int, lines: MaxLines, in_shape: tuple[int, ...], acc: Tensor,
             compact: bool = False) -> tuple[Tensor, Tensor]:
    """Rows ``lam`` [B, sides * k, *out] through the max: rows [B, sides * k, *in_shape] and
    the constant terms added to ``acc`` (lower rows take the lower line where their weight is
    positive, the upper line where it is negative; upper rows the other way round).

    Each row's entries land on two columns per window, by one scatter into zeros. With
    ``compact`` (not under vmap) and maps of several channels the rows are laid out channels
    last, the layout the relaxation and transposed convolution before a pool read without a
    copy (``dense_rows.rows_channels_last``).
    """
    batch = max(lam.shape[0], lines.low.shape[0])
    rows = lam.flatten(2).expand(batch, -1, -1)
    n_rows = rows.shape[1]
    upper_row = (torch.arange(n_rows, device=lam.device) >= k).reshape(1, -1, 1)
    pos, neg = rows.clamp(min=0), rows.clamp(max=0)
    on_low = torch.where(upper_row, neg, pos)  # weight on the lower line
    on_high = torch.where(upper_row, pos, neg)  # weight on the upper line
    extra = (on_high * lines.offset.unsqueeze(1)).sum(2)
    columns = torch.cat([lines.low, lines.high], 1)
    channels_last = compact and len(in_shape) == 3 and in_shape[0] > 1
    if channels_last:  # (c, h, w) -> (h, w, c)
        plane = in_shape[1] * in_shape[2]
        columns = columns % plane * in_shape[0] + columns // plane
    src = torch.cat([on_low, on_high * lines.slope.unsqueeze(1)], 2)
    out = rows.new_zeros(batch, n_rows, math.prod(in_shape))
    out.scatter_add_(2, columns.unsqueeze(1).expand(-1, n_rows, -1), src)
    if channels_last:
        c, h, w = in_shape
        return out.unflatten(2, (h, w, c)).movedim(-1, 2), acc + extra
    return out.reshape(batch, n_rows, *in_shape), acc + extra
