"""Runtime helpers that generated bound programs call (imported there as ``rt``).

Generator sets of zonotope-like domains live in :mod:`absdsl.compiler.gens` (re-exported
here as ``rt.Gens``); the rest are helpers of the forward rules and of back-substitution.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from absdsl.compiler.gens import Block, Gens, _align, _densify

Tensor = torch.Tensor


# ---- values of either kind ---------------------------------------------------------------

def where(mask: Tensor, a, b):
    """``torch.where`` for tensors, numbers and generator sets alike."""
    if isinstance(a, Gens) or isinstance(b, Gens):
        like = a if isinstance(a, Gens) else b
        ga = a if isinstance(a, Gens) else Gens.zero(torch.zeros(like.batch, *like.shape))
        gb = b if isinstance(b, Gens) else Gens.zero(torch.zeros(like.batch, *like.shape))
        return ga.where(mask, gb)
    return torch.where(mask, a, b)


def safe_div(a, b):
    """a / b with b == 0 replaced by 1: used inside guarded branches, where the guard
    excludes the neurons whose denominator vanishes, so no NaN or inf leaks into gradients."""
    if isinstance(b, Tensor):
        b = torch.where(b == 0, torch.ones_like(b), b)
    elif b == 0:
        b = 1.0
    return a / b


def reshape(value, batch: int, shape: tuple[int, ...]):
    if isinstance(value, Gens):
        return value.reshape(shape)
    return value.reshape(batch, *shape)


def cat(values: list, dim: int, compact: bool = True):
    """Concatenate per-sample along ``dim`` (per-sample dimension index).

    ``compact`` is the program's flag: false under vmap, where a diagonal block becomes all
    of its generators rather than the data-dependent set of nonzero ones.
    """
    if any(isinstance(v, Gens) for v in values):
        values = [v.without_patches(compact) if isinstance(v, Gens) else v for v in values]
        batch = next(v.batch for v in values if isinstance(v, Gens))
        keys = list(dict.fromkeys(k for v in values for k in v.blocks))
        out = {}
        for key in keys:
            present = [v.blocks[key] for v in values if key in v.blocks]
            ref = present[0]
            for other in present[1:]:  # bring every part onto the same generator ids
                data, _, idx = _align(ref, other)
                ref = Block(data, False, idx)
            if ref.diagonal:
                dense, index = _densify(ref, compact)
                ref = Block(dense, False, index)
            pieces = []
            for v in values:
                b = v.blocks.get(key)
                if b is None:
                    pieces.append(torch.zeros(batch, ref.data.shape[1], *v.shape,
                                              dtype=ref.data.dtype, device=ref.data.device))
                else:
                    pieces.append(_align(b, ref)[0])
            out[key] = Block(torch.cat(pieces, dim + 2), False, ref.index)
        shape = list(values[0].shape)
        shape[dim] = sum(v.shape[dim] for v in values)
        return Gens(out, batch, tuple(shape))
    return torch.cat(values, dim + 1)


def full_like(value: float, like: Tensor) -> Tensor:
    return torch.full_like(like, value)


# ---- parameters ------------------------------------------------------------------------

def bn_scale(weight: Tensor | None, running_var: Tensor, eps: float) -> Tensor:
    inv = torch.rsqrt(running_var + eps)
    return inv if weight is None else weight * inv


def bn_shift(bias: Tensor | None, running_mean: Tensor, scale: Tensor) -> Tensor:
    shift = -running_mean * scale
    return shift if bias is None else bias + shift


def avgpool_weight(channels: int, kernel: tuple[int, int], like: Tensor) -> Tensor:
    k = kernel[0] * kernel[1]
    return torch.full((channels, 1, *kernel), 1.0 / k, dtype=like.dtype, device=like.device)


# ---- back-substitution -------------------------------------------------------------------

def selected_first(mask: Tensor, width: int) -> Tensor:
    """Per row of ``mask`` [b, n], the indices where it holds first (in order: the sort is
    stable), then the others, cut to ``width``: each sample's selection, padded to a common
    count with unselected indices."""
    return torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :width]


def rows_channels_last(lam: Tensor, layouts: bool) -> bool:
    """Whether rows [B, k, C, H, W] are stored channels last (the layout transposed convs
    return, and the one :func:`conv_back` asks for because oneDNN runs it 2-3x faster).

    ``layouts`` is false under vmap, which cannot query memory formats: rows then keep the
    default layout throughout.
    """
    return (layouts and lam.dim() == 5 and lam.shape[2] > 1 and not lam.is_contiguous()
            and lam.flatten(0, 1).is_contiguous(memory_format=torch.channels_last))


def flat_neurons(t: Tensor, lead: int, channels_last: bool) -> Tensor:
    """``t`` with its neuron dims (all after the first ``lead``) flattened; channels last
    puts C innermost, the order of channels-last storage (a view when ``t`` is so stored)."""
    if channels_last and t.dim() == lead + 3:
        t = t.movedim(lead, -1)
    return t.flatten(lead)


def unflat_neurons(t: Tensor, shape: tuple[int, ...], channels_last: bool) -> Tensor:
    """Inverse of :func:`flat_neurons` on the last dim (a view with channels-last strides)."""
    if channels_last and len(shape) == 3:
        c, h, w = shape
        return t.unflatten(-1, (h, w, c)).movedim(-1, -3)
    return t.unflatten(-1, shape)


def bias_dot(lam: Tensor, bias: Tensor | float, out_shape: tuple[int, ...],
             layouts: bool = False) -> Tensor:
    """sum over neurons of lam * b for rows lam [B, k, *out_shape]."""
    if not isinstance(bias, Tensor):
        return lam.flatten(2).sum(-1) * bias
    if bias.dim() == 1 and len(out_shape) == 1:
        return lam @ bias
    if (len(out_shape) == 3 and bias.dim() == 3 and bias.shape[1:] == (1, 1)
            and bias.shape[0] == out_shape[0]):  # one bias per channel: sum the maps first
        return lam.sum((-2, -1)) @ bias.flatten()
    cl = rows_channels_last(lam, layouts)
    full = bias.expand(out_shape) if bias.dim() <= len(out_shape) else bias
    flat = flat_neurons(full, full.dim() - len(out_shape), cl)
    if flat.dim() == 1:
        return flat_neurons(lam, 2, cl) @ flat
    return (flat_neurons(lam, 2, cl) @ flat.unsqueeze(-1)).squeeze(-1)


ZERO_COLUMNS = 0.9  # skip a sample's all-zero columns when it keeps at most this share
_GATHER_OVER_GEMM = 16  # a copied element costs about this many multiply-adds of a matrix product
_MIN_ROWS = 16  # fewer rows (a spec's) never repay gathering the weight rows


def dense_back(lam: Tensor, weight: Tensor, compact: bool) -> Tensor:
    """``lam @ weight`` for rows [B, k, out] of a Linear layer [out, in], back to [B, k, in].

    After a relaxation, a sample's rows are zero together at its stably inactive neurons
    (both lines 0), so each sample multiplies only its other columns by those rows of the
    weight (:func:`live_columns`). Under vmap (``compact`` false: shapes must not depend on
    data) the plain product runs.
    """
    order = live_columns(lam) if compact else None
    if order is None:
        return lam @ weight
    return _LiveColumnsProduct.apply(lam, weight, order)


def live_columns(lam: Tensor) -> Tensor | None:
    """Per sample, the columns where some row of ``lam`` [B, k, n] is nonzero, [B, m].

    Each sample's live columns come first in order, padded to the largest count m in the
    batch with columns that are zero in all its rows (they add nothing). None when that
    does not pay: m above ``ZERO_COLUMNS`` of n, fewer than ``_MIN_ROWS`` rows, or the
    product saved (k (n - m) multiply-adds per sample) smaller than the copies it needs
    (m weight rows and k x m entries of lam, each worth ``_GATHER_OVER_GEMM`` of them).
    """
    if lam.dim() != 3 or lam.shape[1] < _MIN_ROWS or lam.shape[2] < 2:
        return None
    rows, n = lam.shape[1], lam.shape[2]
    live = (lam != 0).any(1)  # [B, n]
    width = int(live.sum(1).max())
    if width > ZERO_COLUMNS * n or width == n or \
            rows * (n - width) < _GATHER_OVER_GEMM * (width + rows):
        return None
    return selected_first(live, width)


class _LiveColumnsProduct(torch.autograd.Function):
    """``lam @ weight`` from the live columns only; its derivatives are the plain product's.

    The skipped entries of lam are zero, but they may still carry a derivative (a slope
    that is a function of l, u and happens to be 0), so gradients (backward) and tangents
    (jvp, forward mode) are taken in full. Written with ``setup_context`` so that
    ``torch.func`` transforms (grad, jacrev, jvp) can run through it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(lam: Tensor, weight: Tensor, order: Tensor) -> Tensor:  # type: ignore[override]
        picked = lam.gather(2, order.unsqueeze(1).expand(lam.shape[0], lam.shape[1], -1))
        return torch.bmm(picked, weight[order])

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:  # type: ignore[override]
        lam, weight, _ = inputs
        ctx.save_for_backward(lam, weight)
        ctx.save_for_forward(lam, weight)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        lam, weight = ctx.saved_tensors
        grad_lam = grad @ weight.T if ctx.needs_input_grad[0] else None
        grad_weight = (lam.flatten(0, 1).T @ grad.flatten(0, 1)
                       if ctx.needs_input_grad[1] else None)
        return grad_lam, grad_weight, None

    @staticmethod
    def jvp(ctx, t_lam: Tensor | None, t_weight: Tensor | None, _t_order: None  # type: ignore[override]
            ) -> Tensor:
        lam, weight = ctx.saved_tensors
        out = t_lam @ weight if t_lam is not None else None
        if t_weight is not None:
            out = lam @ t_weight if out is None else out + lam @ t_weight
        assert out is not None  # jvp runs only when some input has a tangent
        return out


def conv_back(lam: Tensor, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int],
              output_padding: tuple[int, int], groups: int, dilation: tuple[int, int],
              layouts: bool = False) -> Tensor:
    """``lam W`` for rows [B, k, C, H, W] through a 2-d conv: one transposed conv over all
    rows, in channels-last layout when ``layouts`` (its output stays channels last)."""
    flat = lam.flatten(0, 1)
    if layouts and flat.shape[0] > 1 and flat.shape[1] > 1:
        flat = flat.contiguous(memory_format=torch.channels_last)
    out = F.conv_transpose2d(flat, weight, None, stride, padding, output_padding, groups,
                             dilation)
    return out.unflatten(0, lam.shape[:2])


def conv_transpose_subpixel(lam: Tensor, weight: Tensor, stride: tuple[int, int],
                            padding: tuple[int, int], out_hw: tuple[int, int],
                            layouts: bool = False, phases: bool = False) -> Tensor:
    """``conv_transpose2d`` of rows ``lam`` [b, k, C, H, W] as one forward conv.

    Output pixel s*q + r (minus padding) sums lam[q - m] * W[s*m + r] over taps m, so the
    s**2 residues r are s**2 ordinary convolutions with flipped sub-kernels; they run as one
    conv with s**2 times the output channels, and a pixel shuffle interleaves them.
    ``phases`` returns the conv's output before the shuffle and the crop (see
    :func:`subpixel_phases` for a per-pixel tensor in the same layout).
    """
    s = stride[0]
    c_rows, c_out, kh, kw = weight.shape
    mh, mw = -(-kh // s), -(-kw // s)
    padded = F.pad(weight, (0, s * mw - kw, 0, s * mh - kh))
    sub = padded.reshape(c_rows, c_out, mh, s, mw, s).permute(1, 3, 5, 0, 2, 4).flip(4, 5)
    sub = sub.reshape(c_out * s * s, c_rows, mh, mw)
    flat = lam.flatten(0, 1)
    if layouts and flat.shape[0] > 1 and flat.shape[1] > 1:
        flat = flat.contiguous(memory_format=torch.channels_last)
    conv = F.conv2d(flat, sub, None, 1, (mh - 1, mw - 1))
    if phases:
        return conv.unflatten(0, lam.shape[:2])
    full = F.pixel_shuffle(conv, s)
    out = full[..., padding[0]:padding[0] + out_hw[0], padding[1]:padding[1] + out_hw[1]]
    return out.unflatten(0, lam.shape[:2])


def subpixel_phases(t: Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                    padding: tuple[int, int], rows_hw: tuple[int, int]) -> Tensor:
    """Per-pixel values ``t`` [b, C, H, W] of a transposed conv's output, laid out like
    ``conv_transpose_subpixel(..., phases=True)`` for rows over ``rows_hw`` maps; pixels the
    crop drops read 0, so sums of products with the un-shuffled rows are unchanged."""
    s = stride[0]
    full_h = s * (rows_hw[0] + -(-kernel[0] // s) - 1)
    full_w = s * (rows_hw[1] + -(-kernel[1] // s) - 1)
    height, width = t.shape[-2:]
    padded = F.pad(t, (padding[1], full_w - padding[1] - width,
                       padding[0], full_h - padding[0] - height))
    return F.pixel_unshuffle(padded, s)


def _dot_rows(rows: Tensor, per_neuron: Tensor, layouts: bool) -> Tensor:
    """sum over neurons of rows [B, 2k, *shape] times per-sample values [b, *shape]."""
    cl = rows_channels_last(rows, layouts)
    flat, vec = flat_neurons(rows, 2, cl), flat_neurons(per_neuron, 1, cl)
    if flat.shape[0] == 1 and vec.shape[0] != 1:  # rows shared by the batch
        return torch.einsum("kn,bn->bk", flat[0], vec)
    return torch.einsum("bkn,bn->bk", flat, vec)


def concretize_after(lam: Tensor, k: int, centre_after: Tensor, lam_in: Tensor,
                     radius_in: Tensor, acc: Tensor, layouts: bool = False
                     ) -> tuple[Tensor, Tensor]:
    """:func:`concretize` of rows ``lam_in = lam W`` at the input, with the centre term
    taken one layer up: lam . (W c + b) for ``centre_after = W c + b`` (bias included)."""
    total = _dot_rows(lam, centre_after, layouts) + acc
    spread = _dot_rows(lam_in.abs(), radius_in, layouts)
    return total[:, :k] - spread[:, :k], total[:, k:] + spread[:, k:]


SPARSE_LINES = 0.25  # relax only the sign-dependent columns when they are at most this share


@dataclass
class BackLines:
    """Relaxation lines of one activation, recast once per call for back-substitution.

    A lower row takes lam+ * a_lo + lam- * a_hi = lam * mid + |lam| * half with
    mid = (a_lo + a_hi) / 2 and half = (a_lo - a_hi) / 2; an upper row the same with -half
    (offsets b alike). Stable neurons (equal lines) have half = 0, and for ReLU also b = 0:
    only the other columns depend on the sign of lam. When those are few in every sample
    (``columns``, padded per sample with weight-0 entries), the rows are scaled by ``mid``
    in one pass and only the picked columns get the sign-dependent terms.

    Vectors are flat over the neurons, channels last for [C, H, W] maps (the layout dense
    conv rows are kept in).
    """

    shape: tuple[int, ...]
    channels_last: bool
    a_mid: Tensor  # [b, 1, 1, n]
    a_half: Tensor  # [b, 2, 1, n] (+half for lower rows, -half for upper rows)
    b_mid: Tensor  # [b, 1, n, 1]
    b_half: Tensor  # [b, 2, n, 1]
    columns: Tensor | None = None  # [b, m] sign-dependent columns, padded
    a_half_at: Tensor | None = None  # [b, 2, 1, m]
    b_mid_at: Tensor | None = None  # [b, 1, m, 1]
    b_half_at: Tensor | None = None  # [b, 2, m, 1]


def back_lines(lines: tuple, compact: bool = False) -> BackLines:
    """Relaxation lines (a_lo, b_lo, a_hi, b_hi) [b, *shape] recast for :func:`relax_back`.

    ``compact`` (not under vmap: shapes may depend on data) allows the sparse form.
    """
    a_lo, b_lo, a_hi, b_hi = lines
    batch, shape = a_lo.shape[0], tuple(a_lo.shape[1:])
    cl = compact and len(shape) == 3 and shape[0] > 1
    flat = [flat_neurons(t, 1, cl) for t in (a_lo, b_lo, a_hi, b_hi)]
    a_lo, b_lo, a_hi, b_hi = flat
    a_mid, a_half = (a_lo + a_hi) / 2, (a_lo - a_hi) / 2
    b_mid, b_half = (b_lo + b_hi) / 2, (b_lo - b_hi) / 2
    def both(t: Tensor) -> Tensor:  # +t for lower rows, -t for upper rows
        return torch.stack([t, -t], 1)

    out = BackLines(shape, cl, a_mid.reshape(batch, 1, 1, -1), both(a_half).unsqueeze(2),
                    b_mid.reshape(batch, 1, -1, 1), both(b_half).unsqueeze(3))
    if not compact:
        return out
    signed = (a_half != 0) | (b_mid != 0) | (b_half != 0)
    counts = signed.sum(1)
    width = int(counts.max()) if counts.numel() else 0
    if width > SPARSE_LINES * signed.shape[1]:  # decided before any sort
        return out
    order = selected_first(signed, width)  # padded per sample
    valid = torch.arange(width, device=order.device) < counts.unsqueeze(1)

    def pick(t: Tensor) -> Tensor:  # the picked columns; padding gets weight 0
        return torch.where(valid, t.gather(1, order), 0.0)

    out.columns = order
    out.a_half_at = both(pick(a_half)).unsqueeze(2)
    out.b_mid_at = pick(b_mid).reshape(batch, 1, -1, 1)
    out.b_half_at = both(pick(b_half)).unsqueeze(3)
    return out


def relax_back(lam: Tensor, k: int, lines: BackLines, acc: Tensor) -> tuple[Tensor, Tensor]:
    """Push rows through an activation relaxed by :func:`back_lines`.

    The first k rows bound from below (positive weights take the lower line), the next k,
    when there are 2k, from above (positive weights take the upper line).
    """
    batch = max(lam.shape[0], lines.a_mid.shape[0])
    sides = lam.shape[1] // k  # 1: lower rows only
    rows = flat_neurons(lam, 2, lines.channels_last).unflatten(1, (sides, k))  # [B, s, k, n]
    if lines.columns is None:
        mag = rows.abs()
        out = torch.addcmul(rows * lines.a_mid, mag, lines.a_half[:, :sides])
        extra = rows @ lines.b_mid + mag @ lines.b_half[:, :sides]
    else:
        assert lines.a_half_at is not None and lines.b_mid_at is not None
        assert lines.b_half_at is not None
        out = rows * lines.a_mid
        at = lines.columns[:, None, None, :].expand(batch, sides, k, -1)
        picked = rows.expand(batch, -1, -1, -1).gather(3, at)
        mag = picked.abs()
        out.scatter_add_(3, at, mag * lines.a_half_at[:, :sides])
        extra = picked @ lines.b_mid_at + mag @ lines.b_half_at[:, :sides]
    out = unflat_neurons(out.flatten(1, 2), lines.shape, lines.channels_last)
    return out, acc + extra.reshape(batch, sides * k)


def concretize(lam: Tensor, k: int, centre: Tensor, radius: Tensor, acc: Tensor,
               layouts: bool = False) -> tuple[Tensor, Tensor]:
    """Bounds of rows lam over the input box (centre +- radius): lower rows, upper rows."""
    total = _dot_rows(lam, centre, layouts) + acc
    spread = _dot_rows(lam.abs(), radius, layouts)
    return total[:, :k] - spread[:, :k], total[:, k:] + spread[:, k:]


def unit_rows(index: Tensor, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """Rows e_i for neurons ``index``, twice (lower and upper): [1, 2 * len(index), *shape].

    The rows are the same for every sample, so they stay batch-free until the first
    relaxation multiplies in per-sample slopes: the transposed maps before it run once, not
    once per sample.
    """
    n = 1
    for s in shape:
        n *= s
    eye = torch.zeros(index.numel(), n, dtype=like.dtype, device=like.device)
    eye[torch.arange(index.numel(), device=like.device), index] = 1.0
    rows = eye.reshape(index.numel(), *shape)
    return torch.cat([rows, rows], 0).unsqueeze(0)


def refine(backsub: Callable, lower: Tensor, upper: Tensor, needs: Tensor,
           rows_per_chunk: int, select: bool, per_sample: bool = False
           ) -> tuple[Tensor, Tensor]:
    """Tighten [lower, upper] of one node by back-substitution where ``needs`` holds.

    ``backsub(index)`` bounds the neurons ``index``: flat indices into the node's shape,
    [m] shared by the batch, or, when ``per_sample`` (patch rows, whose windows can differ
    per sample), each sample's own neurons laid end to end (:class:`Ragged`).

    Which neurons run depends on ``select`` (false under vmap, where shapes must not depend
    on data: all of them) and ``per_sample`` (each sample's own; else the union over the
    batch). Whatever ran, a sample's bounds change only where its own ``needs`` holds,
    intersected with the given sound bounds: so bounds are the same in every form and do
    not depend on the other samples in the batch.
    """
    batch = lower.shape[0]
    shape = tuple(lower.shape[1:])
    flat_l, flat_u = lower.flatten(1), upper.flatten(1)
    n = flat_l.shape[1]
    need = needs.flatten(1).expand(batch, n)
    if select and per_sample:
        return _refine_ragged(backsub, lower, upper, need, rows_per_chunk)
    if select:
        index = need.any(0).nonzero().squeeze(1)
        width = index.numel()
    else:
        index = torch.arange(n, device=lower.device)
        width = n
    if width == 0:
        return lower, upper
    new_l, new_u = [], []
    for start in range(0, width, rows_per_chunk):
        chunk = index[..., start:start + rows_per_chunk]
        lo_rows, hi_rows = backsub(chunk)
        new_l.append(lo_rows)
        new_u.append(hi_rows)
    got_l = torch.cat(new_l, 1).expand(batch, -1)
    got_u = torch.cat(new_u, 1).expand(batch, -1)
    if index.dim() == 1:
        index = index.expand(batch, -1)
    old_l, old_u, here = flat_l.gather(1, index), flat_u.gather(1, index), need.gather(1, index)
    got_l = torch.where(here, torch.maximum(old_l, got_l), old_l)
    got_u = torch.where(here, torch.minimum(old_u, got_u), old_u)
    if width < n:  # else index is 0..n-1 in order: results are in place
        got_l, got_u = flat_l.scatter(1, index, got_l), flat_u.scatter(1, index, got_u)
    return got_l.reshape(batch, *shape), got_u.reshape(batch, *shape)


def _refine_ragged(backsub: Callable, lower: Tensor, upper: Tensor, need: Tensor,
                   rows_per_chunk: int) -> tuple[Tensor, Tensor]:
    """:func:`refine` of each sample's own neurons, laid end to end (:class:`Ragged`): no
    row is padding, and a neuron's bounds are computed alone as in every other form."""
    batch, n = need.shape
    sample, neuron = need.nonzero(as_tuple=True)
    total = neuron.numel()
    if total == 0:
        return lower, upper
    new_l, new_u = [], []
    step = rows_per_chunk * batch  # as many rows as a chunk of the padded form
    for start in range(0, total, step):
        lo_rows, hi_rows = backsub(Ragged(sample[start:start + step],
                                          neuron[start:start + step]))
        new_l.append(lo_rows.reshape(-1))
        new_u.append(hi_rows.reshape(-1))
    at = sample * n + neuron
    flat_l, flat_u = lower.reshape(-1), upper.reshape(-1)
    old_l, old_u = flat_l[at], flat_u[at]
    got_l = torch.maximum(old_l, torch.cat(new_l))
    got_u = torch.minimum(old_u, torch.cat(new_u))
    return (flat_l.scatter(0, at, got_l).reshape(lower.shape),
            flat_u.scatter(0, at, got_u).reshape(upper.shape))


# ---- back-substitution in patches (chains of convolutions) ------------------------------
#
# A neuron of a conv layer depends on a window of each earlier feature map, so its rows need
# not span whole maps. In patch form the rows of k neurons at grid positions ``pos`` of the
# target map are [b, 2k, C * kh * kw]: for each row, the channels and the kh x kw window of
# the current map whose top-left corner is ``offset + stride * (y, x)``. The geometry
# ``(kh, kw, stride, offset, grid)`` is static (the code generator computes it per map); the
# windows overhang the map at its borders, where feature maps and the input box read as 0.


@dataclass
class Ragged:
    """(sample, neuron) pairs [N] each: the rows of a per-sample selection laid end to end
    (no padding to the largest sample's count). Patch functions given it as ``index`` (and
    its positions as ``pos``) return rows [1, N, D] and accumulators [1, N]."""

    sample: Tensor
    neuron: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return (1, self.neuron.numel())


def _neurons(index: Tensor | Ragged) -> Tensor:
    """Neuron indices of ``index`` as [1 or b, k] (ragged: [1, N])."""
    if isinstance(index, Ragged):
        return index.neuron.unsqueeze(0)
    return index if index.dim() == 2 else index.unsqueeze(0)


def _positions(index: Tensor | Ragged, grid: int) -> Tensor | Ragged:
    if isinstance(index, Ragged):
        return Ragged(index.sample, index.neuron % grid)
    return index % grid


def patch_start(index: Tensor | Ragged, shape: tuple[int, ...], like: Tensor
                ) -> tuple[Tensor, Tensor | Ragged, Tensor]:
    """Unit rows of neurons ``index`` of a [C, H, W] map as 1 x 1 patches.

    ``index`` is [k] (shared by the batch) or [b, k] (per sample). Returns rows [1 or b, k,
    C], their grid positions (shaped like ``index``) and a zero accumulator [1 or b, k].

    Lower and upper rows are equal until the first relaxation, so until then they are kept
    once ([.., k, ..]); :func:`patch_relax` returns both ([.., 2k, ..], lower rows first),
    and every other patch function takes either form.
    """
    channels, height, width = shape
    per_sample = _neurons(index)
    rows = torch.zeros(*per_sample.shape, channels, dtype=like.dtype, device=like.device)
    rows.scatter_(2, (per_sample // (height * width)).unsqueeze(2), 1.0)
    return rows, _positions(index, height * width), rows.new_zeros(rows.shape[0], rows.shape[1])


_CONTIGUOUS_WINDOWS = 1.0  # more rows than windows: copy the windows contiguous first


def patch_gather(maps: Tensor, geom: tuple[int, ...], pos: Tensor | Ragged) -> Tensor:
    """Windows of ``maps`` [b, C, H, W] at the rows' positions: [b, k, C * kh * kw].

    ``pos`` is [k] (shared) or [b, k] (per sample). Outside the map the windows read 0 (zero
    padding; a crop where they stop short of it).
    """
    kh, kw, sh, sw, oh, ow, gh, gw = geom
    height, width = maps.shape[-2:]
    bottom = (gh - 1) * sh + oh + kh - height
    right = (gw - 1) * sw + ow + kw - width
    # window (0, 0) starts at the corner; windows may stop short of the far edges (crop), even
    # before the map starts (a conv output that reads padding only), so pad first, then crop
    padded = F.pad(maps, (-ow, max(right, 0), -oh, max(bottom, 0)))
    padded = padded[..., :(gh - 1) * sh + kh, :(gw - 1) * sw + kw]
    # every window as a strided view [b, gh, gw, C, kh, kw] (F.unfold, i.e. im2col, ran
    # 10-100x slower here on these small maps)
    win = padded.unfold(2, kh, sh).unfold(3, kw, sw).permute(0, 2, 3, 1, 4, 5)
    b = win.shape[0]
    if isinstance(pos, Ragged):  # each row its own sample's window: [1, N, D]
        at = pos.neuron if b == 1 else pos.sample * (gh * gw) + pos.neuron
        return win.reshape(b * gh * gw, -1).index_select(0, at).unsqueeze(0)
    rows = pos.numel() * (b if pos.dim() == 1 else 1)
    if rows < _CONTIGUOUS_WINDOWS * b * gh * gw:  # few rows: read them in place
        ys, xs = pos // gw, pos % gw
        if pos.dim() == 1:
            picked = win[:, ys, xs]
        elif b == 1:
            picked = win[0][ys, xs]
        else:
            picked = win[torch.arange(b, device=pos.device).unsqueeze(1), ys, xs]
        return picked.flatten(2)
    # many rows (several per window): copy the windows once into contiguous rows, then copy
    # whole rows (an indexed copy through the strided view ran 5-10x slower)
    flat = win.reshape(b * gh * gw, -1)
    if pos.dim() == 1:
        return flat.unflatten(0, (b, gh * gw)).index_select(1, pos)
    if b > 1:
        pos = pos + (torch.arange(b, device=pos.device) * (gh * gw)).unsqueeze(1)
    return flat.index_select(0, pos.flatten()).unflatten(0, pos.shape)


def patch_lines(lines: tuple, shape: tuple[int, ...]) -> Tensor:
    """Relaxation lines as one map [b, 4C, H, W]: mid and half of the slopes and offsets
    (stacked along channels, so one gather serves all four)."""
    a_lo, b_lo, a_hi, b_hi = (t.reshape(t.shape[0], *shape) for t in lines)
    return torch.cat([(a_lo + a_hi) / 2, (a_lo - a_hi) / 2, (b_lo + b_hi) / 2,
                      (b_lo - b_hi) / 2], 1)


def patch_relax(rows: Tensor, k: int, maps: Tensor, geom: tuple[int, ...],
                pos: Tensor | Ragged,
                acc: Tensor) -> tuple[Tensor, Tensor]:
    """Push patch rows through an activation (the algebra of :func:`back_lines`).

    ``maps`` (from :func:`patch_lines`) stacks mid slope, half slope, mid offset and half
    offset along channels; lower rows add the half terms, upper rows subtract them.
    """
    a_mid, a_half, b_mid, b_half = patch_gather(maps, geom, pos).unflatten(
        2, (4, -1)).unbind(2)  # each [b, k, D]
    if rows.shape[1] == k:  # one copy (before the first relaxation): both sides from it
        mag = rows.abs()
        scaled, spread = rows * a_mid, mag * a_half
        out = torch.cat([scaled + spread, scaled - spread], 1)
        offset, offset_spread = (rows * b_mid).sum(-1), (mag * b_half).sum(-1)
        extra = torch.cat([offset + offset_spread, offset - offset_spread], 1)
        return out, acc.repeat(1, 2) + extra
    lower, upper = rows[:, :k], rows[:, k:]
    mag_lo, mag_hi = lower.abs(), upper.abs()
    out = torch.cat([torch.addcmul(lower * a_mid, mag_lo, a_half),
                     torch.addcmul(upper * a_mid, mag_hi, a_half, value=-1.0)], 1)
    extra = torch.cat([(lower * b_mid + mag_lo * b_half).sum(-1),
                       (upper * b_mid - mag_hi * b_half).sum(-1)], 1)
    return out, acc + extra


def patch_kernels(weight: Tensor, stride: tuple[int, int], dilation: tuple[int, int],
                  groups: int) -> Tensor:
    """Each output channel's row of a 2-d conv on its input window, [C_out, C_in * kh * kw]
    (dilated extent): what :func:`patch_conv_back` makes of the unit rows of its neurons."""
    eye = torch.eye(weight.shape[0], dtype=weight.dtype, device=weight.device).unsqueeze(0)
    return patch_conv_back(eye, weight, (1, 1), stride, dilation, groups)[0]


def patch_first_terms(maps: Tensor, centre_after: Tensor | None) -> tuple[Tensor, Tensor]:
    """The maps that a conv over a relaxed activation turns into the row-free terms of its
    neurons' bounds: offsets mid and half (from :func:`patch_lines` ``maps``) plus, with
    ``centre_after`` (the activation's input at the box centre, when the rows would next be
    concretised there), slope times centre. Convolved with W (mid) and |W| (half), they
    give every neuron's lower (mid + half) and upper (mid - half) value before the spread.
    """
    a_mid, a_half, b_mid, b_half = maps.chunk(4, 1)
    if centre_after is None:
        return b_mid, b_half
    return torch.addcmul(b_mid, a_mid, centre_after), torch.addcmul(b_half, a_half, centre_after)


def patch_start_relaxed(index: Tensor | Ragged, shape: tuple[int, ...], kernels: Tensor,
                        maps: Tensor, geom: tuple[int, ...], mid: Tensor, half: Tensor
                        ) -> tuple[Tensor, Tensor | Ragged, Tensor]:
    """:func:`patch_start`, the target conv and the relaxation of its input in one step.

    A neuron of channel c of a conv has the row ``kernels[c]`` on its input window, so after
    the relaxation its rows are kernels[c] * a_mid +- |kernels[c]| * a_half (windows of the
    slope maps at its position): only those are built per neuron. Its offsets (and the
    centre term, see :func:`patch_first_terms`) are read from the convolved maps ``mid``
    and ``half`` [b, *shape]. Returns rows [b, 2k, D] (lower first), positions and acc.
    """
    _, height, width = shape
    per_sample = _neurons(index)
    pos = _positions(index, height * width)
    slopes = maps.narrow(1, 0, maps.shape[1] // 2)  # a_mid, a_half stacked along channels
    a_mid, a_half = patch_gather(slopes, geom, pos).unflatten(2, (2, -1)).unbind(2)
    channel = per_sample // (height * width)
    w = kernels[channel]  # [1 or b, k, D]
    scaled, spread = w * a_mid, w.abs() * a_half
    rows = torch.cat([scaled + spread, scaled - spread], 1)
    if isinstance(index, Ragged):
        at = (index.sample * mid[0].numel() + index.neuron).unsqueeze(0)  # [1, N]
        t_mid, t_half = mid.flatten()[at], half.flatten()[at]
    else:
        at = per_sample.expand(mid.shape[0], -1)
        t_mid, t_half = mid.flatten(1).gather(1, at), half.flatten(1).gather(1, at)
    return rows, pos, torch.cat([t_mid + t_half, t_mid - t_half], 1)


def patch_spread(rows_in: Tensor, k: int, radius: Tensor, geom: tuple[int, ...],
                 pos: Tensor | Ragged,
                 acc: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds of rows over the input box when ``acc`` already holds their centre term."""
    r = patch_gather(radius, geom, pos)
    spread = (rows_in.unflatten(1, (2, k)).abs() * r.unsqueeze(1)).sum(-1).flatten(1)
    return acc[:, :k] - spread[:, :k], acc[:, k:] + spread[:, k:]


def patch_mask(rows: Tensor, k: int, size: tuple[int, int], geom: tuple[int, ...],
               pos: Tensor | Ragged) -> Tensor:
    """Zero the entries of rows that fall outside a map of spatial ``size`` (no neuron)."""
    ones = rows.new_ones(1, 1, *size)
    inside = patch_gather(ones, geom, pos)  # [1, k, kh*kw]
    r = rows.unflatten(1, (-1, k)).unflatten(-1, (-1, inside.shape[-1]))
    return (r * inside.unsqueeze(1).unsqueeze(3)).flatten(-2).flatten(1, 2)


def _constant_windows(t: Tensor, geom: tuple[int, ...], pos: Tensor | Ragged,
                      shape: tuple[int, ...]) -> Tensor:
    """Windows of a constant broadcastable to the [C, H, W] map (per channel, a full map)."""
    full = t.expand(*t.shape[:-3], *shape) if t.dim() > 3 else t.expand(shape).unsqueeze(0)
    return patch_gather(full, geom, pos)


def patch_bias(rows: Tensor, k: int, bias: Tensor | float, geom: tuple[int, ...],
               pos: Tensor | Ragged, shape: tuple[int, ...], acc: Tensor) -> Tensor:
    """acc + sum of rows * bias over each window (bias broadcastable to [C, H, W]).

    The windows read the bias map as 0 outside the map, so rows there need no mask.
    """
    if not isinstance(bias, Tensor):
        inside = patch_gather(rows.new_ones(1, 1, *shape[1:]), geom, pos)  # [1, k, kh*kw]
        r = rows.unflatten(1, (-1, k)).unflatten(-1, (shape[0], -1)).sum(-2)
        return acc + (r * inside.unsqueeze(1)).sum(-1).flatten(1) * bias
    windows = _constant_windows(bias, geom, pos, shape)  # [1 or b, k, D]
    return acc + (rows.unflatten(1, (-1, k)) * windows.unsqueeze(1)).sum(-1).flatten(1)


def patch_scale(rows: Tensor, k: int, scale: Tensor | float, geom: tuple[int, ...],
                pos: Tensor | Ragged, shape: tuple[int, ...]) -> Tensor:
    """Rows times an elementwise scale (a number, per channel, or a full map)."""
    if not isinstance(scale, Tensor):
        return rows * scale
    windows = _constant_windows(scale, geom, pos, shape)
    return (rows.unflatten(1, (-1, k)) * windows.unsqueeze(1)).flatten(1, 2)


_PATCH_GEMM_ELEMENTS = 1 << 22  # largest dense window map (16 MiB in float32)
_GEMM_OVER_CONV = 6  # a CPU matrix product runs about this many times a transposed conv's MACs


def patch_conv_back(rows: Tensor, weight: Tensor, window: tuple[int, int],
                    stride: tuple[int, int], dilation: tuple[int, int], groups: int
                    ) -> Tensor:
    """Rows on a conv's output windows -> rows on its input windows (transposed conv).

    A window of the output maps to a larger window of the input by the same linear map at
    every position, so when that map is small it is built once (the transposed conv of a
    basis) and applied as one matrix product, which CPUs run far faster than a transposed
    convolution over many small images; otherwise the transposed conv runs on the rows.
    """
    kh, kw = window
    c_out = weight.shape[0]
    d = c_out * kh * kw
    # the window on the conv's input
    in_h = (kh - 1) * stride[0] + dilation[0] * (weight.shape[-2] - 1) + 1
    in_w = (kw - 1) * stride[1] + dilation[1] * (weight.shape[-1] - 1) + 1
    c_in = weight.shape[1] * groups
    d_in = c_in * in_h * in_w
    taps = weight.shape[1] * weight.shape[-2] * weight.shape[-1]  # conv MACs per entry
    if d * d_in <= _PATCH_GEMM_ELEMENTS and d_in <= _GEMM_OVER_CONV * taps:
        basis = torch.eye(d, dtype=rows.dtype, device=rows.device).reshape(d, c_out, kh, kw)
        matrix = F.conv_transpose2d(basis, weight, None, stride, 0, 0, groups, dilation)
        return rows @ matrix.flatten(1)
    flat = rows.reshape(1, -1, c_out, kh, kw)
    if (c_in <= 4 and groups == 1 and dilation == (1, 1) and stride[0] == stride[1] > 1):
        out = conv_transpose_subpixel(flat, weight, stride, (0, 0), (in_h, in_w))[0]
    else:
        out = F.conv_transpose2d(flat[0], weight, None, stride, 0, 0, groups, dilation)
    return out.reshape(*rows.shape[:2], -1)


def patch_concretize(rows: Tensor, k: int, centre: Tensor, radius: Tensor,
                     geom: tuple[int, ...], pos: Tensor | Ragged, acc: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """Bounds of patch rows over the input box: lower rows, upper rows."""
    if rows.shape[1] == k:  # no relaxation on the way: one copy of the rows
        rows, acc = rows.repeat(1, 2, 1), acc.repeat(1, 2)
    c = patch_gather(centre, geom, pos)  # [B, k, D]
    r = patch_gather(radius, geom, pos)
    rr = rows.unflatten(1, (2, k))
    # products summed over each window (an einsum copied the rows into bmm layout)
    mid = (rr * c.unsqueeze(1)).sum(-1).flatten(1)
    spread = (rr.abs() * r.unsqueeze(1)).sum(-1).flatten(1)
    total = mid + acc
    return total[:, :k] - spread[:, :k], total[:, k:] + spread[:, k:]


def patch_concretize_after(rows: Tensor, k: int, centre_after: Tensor, rows_in: Tensor,
                           radius_in: Tensor, geom: tuple[int, ...], geom_in: tuple[int, ...],
                           pos: Tensor | Ragged, acc: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`patch_concretize` of ``rows_in`` (rows on the first conv's input windows,
    from ``rows`` on its output windows ``geom``) with the centre term taken one layer up:
    rows . (W c + b) for the map ``centre_after = W c + b`` (bias included)."""
    if rows.shape[1] == k:  # no relaxation on the way: one copy of the rows
        rows, rows_in, acc = rows.repeat(1, 2, 1), rows_in.repeat(1, 2, 1), acc.repeat(1, 2)
    c = patch_gather(centre_after, geom, pos)  # [B, k, D]
    r = patch_gather(radius_in, geom_in, pos)  # [B, k, D_in]
    mid = (rows.unflatten(1, (2, k)) * c.unsqueeze(1)).sum(-1).flatten(1)
    spread = (rows_in.unflatten(1, (2, k)).abs() * r.unsqueeze(1)).sum(-1).flatten(1)
    total = mid + acc
    return total[:, :k] - spread[:, :k], total[:, k:] + spread[:, k:]


def linear_back(lam: Tensor, fn: Callable[[Tensor], Tensor], in_shape: tuple[int, ...]
                ) -> Tensor:
    """Rows ``lam`` [B, k, *out] through a linear map ``fn`` transposed: ``lam W`` [B, k, *in].

    The vector-Jacobian product of a linear map is its transpose, at any point; torch.func
    keeps it differentiable and vmap-able.
    """
    flat = lam.flatten(0, 1)
    zero = flat.new_zeros((flat.shape[0], *in_shape))
    vjp = torch.func.vjp(fn, zero)[1]
    (back,) = vjp(flat.contiguous())
    return back.unflatten(0, tuple(lam.shape[:2]))


def conv_transpose2d(x: Tensor, weight: Tensor, stride: tuple[int, int],
                     padding: tuple[int, int], out_hw: tuple[int, int], groups: int,
                     dilation: tuple[int, int]) -> Tensor:
    """``nn.ConvTranspose2d`` without bias, landing on the traced output size ``out_hw``."""
    kernel = (int(weight.shape[-2]), int(weight.shape[-1]))
    extra = tuple(
        out_hw[i] - ((x.shape[-2 + i] - 1) * stride[i] - 2 * padding[i]
                     + dilation[i] * (kernel[i] - 1) + 1) for i in range(2))
    return F.conv_transpose2d(x, weight, None, stride, padding, extra, groups, dilation)


def require_range(lower: Tensor, upper: Tensor, lo: float, hi: float, open_ends: bool,
                  where: str, compact: bool) -> None:
    """Fail, naming the node and the range, when an op's input bounds leave its domain.

    Skipped under vmap (``compact`` false), where a data-dependent check cannot run; the
    values there are then nan or inf, never silently finite.
    """
    if not compact:
        return
    low = float(lower.detach().min()) if lower.numel() else lo
    high = float(upper.detach().max()) if upper.numel() else hi
    if math.isnan(low) or math.isnan(high):
        from absdsl.errors import InputError

        raise InputError(f"{where}: its input bounds are NaN (an earlier bound overflowed, "
                         f"e.g. exp of a wide interval); no sound bound exists there")
    # an infinite end is the limit of the domain (1 / (1 + s) -> 0 as s -> inf), not outside
    below = (low <= lo if open_ends else low < lo) and math.isfinite(lo)
    above = (high >= hi if open_ends else high > hi) and math.isfinite(hi)
    outside = below or above
    if outside:
        from absdsl.errors import InputError

        ends = "(" if open_ends else "["
        raise InputError(f"{where}: its input bounds reach [{low:.6g}, {high:.6g}], outside "
                         f"the op's domain {ends}{lo:g}, {hi:g}{')' if open_ends else ']'}; "
                         f"no sound bound exists there")


def relax_back_product(lam: Tensor, k: int, planes: tuple, acc: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """Push rows through z = x * y relaxed by planes (ax_lo, ay_lo, b_lo, ax_hi, ay_hi, b_hi):
    rows to x, rows to y, and the constant terms added to ``acc``.

    As for activations, lower rows (the first k) take the lower plane where their weight is
    positive and the upper one where it is negative; upper rows the other way round.
    """
    ax_lo, ay_lo, b_lo, ax_hi, ay_hi, b_hi = (t.unsqueeze(1) for t in planes)
    sides = lam.shape[1] // k
    side = torch.arange(sides * k, device=lam.device) >= k  # True: an upper row
    side = side.reshape(1, -1, *([1] * (lam.dim() - 2)))
    pos, neg = lam.clamp(min=0), lam.clamp(max=0)
    w_lo = torch.where(side, neg, pos)  # the weight each row puts on the lower plane
    w_hi = torch.where(side, pos, neg)
    to_x = w_lo * ax_lo + w_hi * ax_hi
    to_y = w_lo * ay_lo + w_hi * ay_hi
    extra = (w_lo * b_lo + w_hi * b_hi).flatten(2).sum(2)
    return to_x, to_y, acc + extra


def output_chunks(backsub: Callable[[Tensor, int], tuple[Tensor, Tensor]], rows: Tensor,
                  sides: int, rows_per_chunk: int) -> tuple[Tensor, Tensor]:
    """The output's back-substitution, its k spec rows taken at most ``rows_per_chunk`` at a
    time (each chunk with its lower and upper halves), so that a network with many outputs
    (1,000 classes) stays within the memory budget; the bounds are the same."""
    k = rows.shape[1] // sides
    if k <= rows_per_chunk:
        return backsub(rows, sides)
    lowers, uppers = [], []
    for start in range(0, k, rows_per_chunk):
        size = min(rows_per_chunk, k - start)
        part = rows.narrow(1, start, size)
        if sides == 2:
            part = torch.cat([part, rows.narrow(1, k + start, size)], 1)
        lb, ub = backsub(part, sides)
        lowers.append(lb)
        uppers.append(ub)
    return torch.cat(lowers, 1), torch.cat(uppers, 1)

