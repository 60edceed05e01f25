"""Back-substitution in dense rows: the runtime that generated back-substitution calls.

Rows are [B, 2k, *shape] (k lower rows, then k upper rows; ``sides`` 1: lower rows only),
pushed from a bounded node back to the input through transposed linear maps, relaxation
lines and products, then concretised over the input box. Generated code calls every function
here by keyword, as ``dense_rows.<name>(...)``; ``ctx`` is the call's
:class:`~absdsl.compiler.context.Context` (its ``compact`` flag, engine options and the
counter of engine paths).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..context import Context, EngineOptions

Tensor = torch.Tensor

def selected_first(mask: Tensor, width: int) -> Tensor:
    """Per row of ``mask`` [b, n], the indices where it holds first (in order: the sort is
    stable), then the others, cut to ``width``: each sample's selection, padded to a common
    count with unselected indices."""
    return torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices[:, :width]


def rows_channels_last(lam: Tensor, compact: bool) -> bool:
    """Whether rows [B, k, C, H, W] are stored channels last (the layout transposed convs
    return, and the one :func:`conv_back` asks for because oneDNN runs it 2-3x faster).

    ``compact`` is false under vmap, which cannot query memory formats: rows then keep the
    default layout throughout.
    """
    return (compact and lam.dim() == 5 and lam.shape[2] > 1 and not lam.is_contiguous()
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
             compact: bool = False) -> Tensor:
    """sum over neurons of lam * b for rows lam [B, k, *out_shape]."""
    if not isinstance(bias, Tensor):
        return lam.flatten(2).sum(-1) * bias
    if bias.dim() == 1 and len(out_shape) == 1:
        return lam @ bias
    if (len(out_shape) == 3 and bias.dim() == 3 and bias.shape[1:] == (1, 1)
            and bias.shape[0] == out_shape[0]):  # one bias per channel: sum the maps first
        return lam.sum((-2, -1)) @ bias.flatten()
    cl = rows_channels_last(lam, compact)
    full = bias.expand(out_shape) if bias.dim() <= len(out_shape) else bias
    flat = flat_neurons(full, full.dim() - len(out_shape), cl)
    if flat.dim() == 1:
        return flat_neurons(lam, 2, cl) @ flat
    return (flat_neurons(lam, 2, cl) @ flat.unsqueeze(-1)).squeeze(-1)


_GATHER_OVER_GEMM = 16  # a copied element costs about this many multiply-adds of a matrix product
_MIN_ROWS = 16  # fewer rows (a spec's) never repay gathering the weight rows


def dense_back(lam: Tensor, weight: Tensor, ctx: Context) -> Tensor:
    """``lam @ weight`` for rows [B, k, out] of a Linear layer [out, in], back to [B, k, in].

    After a relaxation, a sample's rows are zero together at its stably inactive neurons
    (both lines 0), so each sample multiplies only its other columns by those rows of the
    weight (:func:`live_columns`). Under vmap (``compact`` false: shapes must not depend on
    data) the plain product runs; ``ctx.options.zero_columns`` sets when it pays.
    """
    order = live_columns(lam, ctx.options.zero_columns) if ctx.compact else None
    if order is None:
        return lam @ weight
    ctx.paths["live columns"] += 1
    return _LiveColumnsProduct.apply(lam, weight, order)


def live_columns(lam: Tensor, share: float = EngineOptions().zero_columns) -> Tensor | None:
    """Per sample, the columns where some row of ``lam`` [B, k, n] is nonzero, [B, m].

    Each sample's live columns come first in order, padded to the largest count m in the
    batch with columns that are zero in all its rows (they add nothing). None when that
    does not pay: m above ``share`` of n, fewer than ``_MIN_ROWS`` rows, or the
    product saved (k (n - m) multiply-adds per sample) smaller than the copies it needs
    (m weight rows and k x m entries of lam, each worth ``_GATHER_OVER_GEMM`` of them).
    """
    if lam.dim() != 3 or lam.shape[1] < _MIN_ROWS or lam.shape[2] < 2:
        return None
    rows, n = lam.shape[1], lam.shape[2]
    live = (lam != 0).any(1)  # [B, n]
    width = int(live.sum(1).max())
    if width > share * n or width == n or \
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
              compact: bool = False) -> Tensor:
    """``lam W`` for rows [B, k, C, H, W] through a 2-d conv: one transposed conv over all
    rows, in channels-last layout when ``compact`` (its output stays channels last)."""
    flat = lam.flatten(0, 1)
    if compact and flat.shape[0] > 1 and flat.shape[1] > 1:
        flat = flat.contiguous(memory_format=torch.channels_last)
    out = F.conv_transpose2d(flat, weight, None, stride, padding, output_padding, groups,
                             dilation)
    return out.unflatten(0, lam.shape[:2])


def conv_transpose_subpixel(lam: Tensor, weight: Tensor, stride: tuple[int, int],
                            padding: tuple[int, int], out_hw: tuple[int, int],
                            compact: bool = False, phases: bool = False) -> Tensor:
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
    if compact and flat.shape[0] > 1 and flat.shape[1] > 1:
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


def _dot_rows(rows: Tensor, per_neuron: Tensor, compact: bool) -> Tensor:
    """sum over neurons of rows [B, 2k, *shape] times per-sample values [b, *shape]."""
    cl = rows_channels_last(rows, compact)
    flat, vec = flat_neurons(rows, 2, cl), flat_neurons(per_neuron, 1, cl)
    if flat.shape[0] == 1 and vec.shape[0] != 1:  # rows shared by the batch
        return torch.einsum("kn,bn->bk", flat[0], vec)
    # per-sample rows: a product and a sum (bmm runs one matrix-vector product per sample)
    return (flat * vec.unsqueeze(1)).sum(-1)


def concretize_after(lam: Tensor, k: int, centre_after: Tensor, lam_in: Tensor,
                     radius_in: Tensor, acc: Tensor, compact: bool = False
                     ) -> tuple[Tensor, Tensor]:
    """:func:`concretize` of rows ``lam_in = lam W`` at the input, with the centre term
    taken one layer up: lam . (W c + b) for ``centre_after = W c + b`` (bias included)."""
    total = _dot_rows(lam, centre_after, compact) + acc
    spread = _dot_rows(lam_in.abs(), radius_in, compact)
    return total[:, :k] - spread[:, :k], total[:, k:] + spread[:, k:]




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


def back_lines(lines: tuple, ctx: Context) -> BackLines:
    """Relaxation lines (a_lo, b_lo, a_hi, b_hi) [b, *shape] recast for :func:`relax_back`.

    ``ctx.compact`` (not under vmap: shapes may depend on data) allows the sparse form, taken
    when the sign-dependent columns are at most ``ctx.options.sparse_lines`` of them.
    """
    compact = ctx.compact
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
    if width > ctx.options.sparse_lines * signed.shape[1]:  # decided before any sort
        return out
    if width > 0:
        ctx.paths["sparse lines"] += 1
    order = selected_first(signed, width)  # padded per sample
    valid = torch.arange(width, device=order.device) < counts.unsqueeze(1)

    def pick(t: Tensor) -> Tensor:  # the picked columns; padding gets weight 0
        return torch.where(valid, t.gather(1, order), 0.0)

    out.columns = order
    out.a_half_at = both(pick(a_half)).unsqueeze(2)
    out.b_mid_at = pick(b_mid).reshape(batch, 1, -1, 1)
    out.b_half_at = both(pick(b_half)).unsqueeze(3)
    return out


def relax_back(lam: Tensor, k: int, lines: BackLines, acc: Tensor,
               index: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Push rows through an activation relaxed by :func:`back_lines`.

    The first k rows bound from below (positive weights take the lower line), the next k,
    when there are 2k, from above (positive weights take the upper line). Lines with values
    per row (``row_slopes.RowLines``) read the rows' neurons ``index`` in the bounded node.
    """
    if not isinstance(lines, BackLines):
        return lines.back(lam, k, acc, index)
    batch = max(lam.shape[0], lines.a_mid.shape[0])
    sides = lam.shape[1] // k  # 1: lower rows only
    rows = flat_neurons(lam, 2, lines.channels_last).unflatten(1, (sides, k))  # [B, s, k, n]
    if lines.columns is None:
        mag = rows.abs()
        out = torch.addcmul(rows * lines.a_mid, mag, lines.a_half[:, :sides])
        extra = _offsets(rows, mag, lines.b_mid, lines.b_half[:, :sides])
    else:
        assert lines.a_half_at is not None and lines.b_mid_at is not None
        assert lines.b_half_at is not None
        out = rows * lines.a_mid
        at = lines.columns[:, None, None, :].expand(batch, sides, k, -1)
        picked = rows.expand(batch, -1, -1, -1).gather(3, at)
        mag = picked.abs()
        out.scatter_add_(3, at, mag * lines.a_half_at[:, :sides])
        extra = _offsets(picked, mag, lines.b_mid_at, lines.b_half_at[:, :sides])
    out = unflat_neurons(out.flatten(1, 2), lines.shape, lines.channels_last)
    return out, acc + extra.reshape(batch, sides * k)


def _offsets(rows: Tensor, mag: Tensor, b_mid: Tensor, b_half: Tensor) -> Tensor:
    """rows @ b_mid + |rows| @ b_half for rows [B, s, k, n] and column vectors [b, ., n, 1]:
    [B, s, k, 1], as products and one sum (a batched matrix-vector product runs one small
    product per sample and row side on the CPU, several times slower)."""
    terms = torch.addcmul(rows * b_mid.transpose(-1, -2), mag, b_half.transpose(-1, -2))
    return terms.sum(-1, keepdim=True)


def concretize(lam: Tensor, k: int, centre: Tensor, radius: Tensor, acc: Tensor,
               compact: bool = False) -> tuple[Tensor, Tensor]:
    """Bounds of rows lam over the input box (centre +- radius): lower rows, upper rows."""
    total = _dot_rows(lam, centre, compact) + acc
    spread = _dot_rows(lam.abs(), radius, compact)
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


def refine(backsub: Callable, lower: Tensor, upper: Tensor, needs: Tensor,
           rows_per_chunk: int, per_sample: bool, ctx: Context) -> tuple[Tensor, Tensor]:
    """Tighten [lower, upper] of one node by back-substitution where ``needs`` holds.

    ``backsub(index)`` bounds the neurons ``index``: flat indices into the node's shape,
    [m] shared by the batch, or, when ``per_sample`` (patch rows, whose windows can differ
    per sample), each sample's own neurons laid end to end (:class:`Ragged`).

    Which neurons run depends on ``ctx.compact`` (false under vmap, where shapes must not depend
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
    select = ctx.compact
    if select and int(needs.flatten(1).sum(1).max()) > rows_per_chunk:
        ctx.paths["chunked refinement"] += 1  # some sample needs more than one chunk
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


def output_chunks(backsub: Callable[..., tuple[Tensor, Tensor]], rows: Tensor,
                  sides: int, rows_per_chunk: int) -> tuple[Tensor, Tensor]:
    """The output's back-substitution, its k spec rows taken at most ``rows_per_chunk`` at a
    time (each chunk with its lower and upper halves, and the chunk's row numbers), so that a
    network with many outputs (1,000 classes) stays within the memory budget; the bounds are
    the same."""
    k = rows.shape[1] // sides
    if k <= rows_per_chunk:
        return backsub(rows, sides)
    lowers, uppers = [], []
    for start in range(0, k, rows_per_chunk):
        size = min(rows_per_chunk, k - start)
        part = rows.narrow(1, start, size)
        if sides == 2:
            part = torch.cat([part, rows.narrow(1, k + start, size)], 1)
        lb, ub = backsub(part, sides, torch.arange(start, start + size, device=rows.device))
        lowers.append(lb)
        uppers.append(ub)
    return torch.cat(lowers, 1), torch.cat(uppers, 1)

