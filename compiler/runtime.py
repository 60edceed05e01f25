"""Runtime helpers that generated bound programs call (imported there as ``rt``).

The one non-trivial structure is :class:`Gens`, a set of error-term generators (zonotope
domains). Generators are kept in blocks keyed by the node that created them, so adding the
two branches of a residual block lines up shared error terms without padding. A block is
either dense, ``[B, K, *shape]``, or diagonal, ``[B, *shape]`` (one fresh generator per
neuron, as an unstable ReLU creates); a diagonal block is made dense only when a linear map
needs it, and then only for the neurons whose generator is non-zero somewhere in the batch
(``compact``), unless the program runs under ``torch.func.vmap`` (``compact=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass
class Block:
    data: Tensor
    diagonal: bool
    index: Tensor | None = None  # for a dense block: which fresh generators its rows are


class Gens:
    """Generators of a zonotope-like state: ``x = c + sum_k G[:, k] * e_k``."""

    def __init__(self, blocks: dict[str, Block], batch: int, shape: tuple[int, ...]) -> None:
        self.blocks = blocks
        self.batch = batch
        self.shape = shape

    # -- construction -----------------------------------------------------------------
    @staticmethod
    def fresh(key: str, diag: Tensor) -> Gens:
        return Gens({key: Block(diag, True)}, diag.shape[0], tuple(diag.shape[1:]))

    @staticmethod
    def zero(like: Tensor) -> Gens:
        return Gens({}, like.shape[0], tuple(like.shape[1:]))

    # -- elementwise -------------------------------------------------------------------
    def scale(self, s: Tensor | float) -> Gens:
        out = {}
        for k, b in self.blocks.items():
            if b.diagonal:
                out[k] = Block(b.data * s, True)
            else:
                out[k] = Block(b.data * (s.unsqueeze(1) if isinstance(s, Tensor) else s), False,
                               b.index)
        return Gens(out, self.batch, self.shape)

    def __add__(self, other: Gens) -> Gens:
        out = dict(self.blocks)
        for k, b in other.blocks.items():
            if k not in out:
                out[k] = b
                continue
            a = out[k]
            if a.diagonal and b.diagonal:
                out[k] = Block(a.data + b.data, True)
            else:
                da, db, index = _align(a, b)
                out[k] = Block(da + db, False, index)
        return Gens(out, self.batch, self.shape)

    def __neg__(self) -> Gens:
        return self.scale(-1.0)

    def __sub__(self, other: Gens) -> Gens:
        return self + (-other)

    def where(self, mask: Tensor, other: Gens) -> Gens:
        """Per neuron: self where mask, else other (a missing block is zero)."""
        out = {}
        for k in dict.fromkeys(list(self.blocks) + list(other.blocks)):
            a, b = self.blocks.get(k), other.blocks.get(k)
            if a is not None and b is not None and a.diagonal and b.diagonal:
                out[k] = Block(torch.where(mask, a.data, b.data), True)
            elif a is not None and a.diagonal and b is None:
                out[k] = Block(torch.where(mask, a.data, 0.0), True)
            elif b is not None and b.diagonal and a is None:
                out[k] = Block(torch.where(mask, 0.0, b.data), True)
            else:
                m = mask.unsqueeze(1)
                if a is None:
                    assert b is not None  # k comes from one of the two block sets
                    out[k] = Block(torch.where(m, 0.0, b.data), False, b.index)
                elif b is None:
                    out[k] = Block(torch.where(m, a.data, 0.0), False, a.index)
                else:
                    da, db, index = _align(a, b)
                    out[k] = Block(torch.where(m, da, db), False, index)
        return Gens(out, self.batch, self.shape)

    def abs_sum(self) -> Tensor | float:
        """sum_k |G[:, k]|: the radius of the interval hull."""
        total: Tensor | float = 0.0
        for b in self.blocks.values():
            total = total + (b.data.abs() if b.diagonal else b.data.abs().sum(1))
        return total

    # -- structure ---------------------------------------------------------------------
    def map(self, fn: Callable[[Tensor], Tensor], compact: bool) -> Gens:
        """Apply a per-sample linear map to every generator."""
        out = {}
        shape = self.shape
        for k, b in self.blocks.items():
            dense, index = _densify(b, compact) if b.diagonal else (b.data, b.index)
            n_gen = dense.shape[1]
            flat = fn(dense.flatten(0, 1))
            shape = tuple(flat.shape[1:])
            out[k] = Block(flat.unflatten(0, (self.batch, n_gen)), False, index)
        if not self.blocks:
            return Gens({}, self.batch, shape)
        return Gens(out, self.batch, shape)

    def reshape(self, shape: tuple[int, ...]) -> Gens:
        out = {}
        for k, b in self.blocks.items():
            lead = b.data.shape[:1] if b.diagonal else b.data.shape[:2]
            out[k] = Block(b.data.reshape(*lead, *shape), b.diagonal, b.index)
        return Gens(out, self.batch, shape)

    def spec(self, c: Tensor) -> Gens:
        """Generators of C x for a per-sample matrix C [B, k, n]."""
        out = {}
        for k, b in self.blocks.items():
            dense, index = _densify(b, True) if b.diagonal else (b.data, b.index)
            out[k] = Block(torch.einsum("bkn,bgn->bgk", c, dense.flatten(2)), False, index)
        return Gens(out, self.batch, (c.shape[1],))


def _densify(b: Block, compact: bool) -> tuple[Tensor, Tensor | None]:
    """A diagonal block as dense generators, and which fresh generators they are (None: all)."""
    batch = b.data.shape[0]
    shape = tuple(b.data.shape[1:])
    flat = b.data.reshape(batch, -1)
    if compact:
        idx = (flat != 0).any(0).nonzero().squeeze(1)
        gens = torch.zeros(batch, idx.numel(), flat.shape[1], dtype=flat.dtype, device=flat.device)
        gens[:, torch.arange(idx.numel(), device=flat.device), idx] = flat[:, idx]
        return gens.reshape(batch, idx.numel(), *shape), idx
    return torch.diag_embed(flat).reshape(batch, flat.shape[1], *shape), None


def _align(a: Block, b: Block) -> tuple[Tensor, Tensor, Tensor | None]:
    """Two blocks of the same fresh generators, as dense tensors over the same generator ids."""
    da, ia = _densify(a, b.index is not None) if a.diagonal else (a.data, a.index)
    db, ib = _densify(b, a.index is not None) if b.diagonal else (b.data, b.index)
    if ia is None and ib is None:
        return da, db, None
    if ia is not None and ib is not None and ia.shape == ib.shape and bool((ia == ib).all()):
        return da, db, ia
    total = max(int(i.max()) + 1 if i is not None and i.numel() else 0 for i in (ia, ib))
    total = max(total, da.shape[1] if ia is None else 0, db.shape[1] if ib is None else 0)
    ia = torch.arange(da.shape[1], device=da.device) if ia is None else ia
    ib = torch.arange(db.shape[1], device=db.device) if ib is None else ib
    union = torch.unique(torch.cat([ia, ib]))
    pos = torch.full((total,), -1, dtype=torch.long, device=da.device)
    pos[union] = torch.arange(union.numel(), device=da.device)

    def spread(d: Tensor, ids: Tensor) -> Tensor:
        out = d.new_zeros(d.shape[0], union.numel(), *d.shape[2:])
        return out.index_copy(1, pos[ids], d)

    return spread(da, ia), spread(db, ib), union


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


def cat(values: list, dim: int):
    """Concatenate per-sample along ``dim`` (per-sample dimension index)."""
    if any(isinstance(v, Gens) for v in values):
        batch = next(v.batch for v in values if isinstance(v, Gens))
        keys = list(dict.fromkeys(k for v in values for k in v.blocks))
        out = {}
        for key in keys:
            present = [v.blocks[key] for v in values if key in v.blocks]
            ref = present[0]
            for other in present[1:]:  # bring every part onto the same generator ids
                _, _, idx = _align(ref, other)
                ref = Block(_align(ref, other)[0], False, idx)
            if ref.diagonal:
                ref = Block(*_densify(ref, True)[:1], False, _densify(ref, True)[1])
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

def bias_dot(lam: Tensor, bias: Tensor | float, out_shape: tuple[int, ...]) -> Tensor:
    """sum over neurons of lam * b for rows lam [B, k, *out_shape]."""
    if not isinstance(bias, Tensor):
        return lam.flatten(2).sum(-1) * bias
    if bias.dim() == 1 and len(out_shape) == 1:
        return lam @ bias
    full = bias.expand(out_shape) if bias.dim() <= len(out_shape) else bias
    return (lam * full).flatten(2).sum(-1)


def conv_transpose_subpixel(lam: Tensor, weight: Tensor, stride: tuple[int, int],
                            padding: tuple[int, int], out_hw: tuple[int, int]) -> Tensor:
    """``conv_transpose2d`` of rows ``lam`` [b, k, C, H, W] as one forward conv.

    Output pixel s*q + r (minus padding) sums lam[q - m] * W[s*m + r] over taps m, so the
    s**2 residues r are s**2 ordinary convolutions with flipped sub-kernels; they run as one
    conv with s**2 times the output channels, and a pixel shuffle interleaves them.
    """
    s = stride[0]
    c_rows, c_out, kh, kw = weight.shape
    mh, mw = -(-kh // s), -(-kw // s)
    padded = F.pad(weight, (0, s * mw - kw, 0, s * mh - kh))
    sub = padded.reshape(c_rows, c_out, mh, s, mw, s).permute(1, 3, 5, 0, 2, 4).flip(4, 5)
    sub = sub.reshape(c_out * s * s, c_rows, mh, mw)
    flat = lam.flatten(0, 1)
    full = F.pixel_shuffle(F.conv2d(flat, sub, None, 1, (mh - 1, mw - 1)), s)
    out = full[..., padding[0]:padding[0] + out_hw[0], padding[1]:padding[1] + out_hw[1]]
    return out.unflatten(0, lam.shape[:2])


def back_lines(lines: tuple) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Relaxation lines (a_lo, b_lo, a_hi, b_hi) recast once for back-substitution.

    A lower row takes lam+ * a_lo + lam- * a_hi = lam * mid + |lam| * half with
    mid = (a_lo + a_hi) / 2 and half = (a_lo - a_hi) / 2; an upper row the same with -half.
    Stable neurons (a_lo = a_hi) get half = 0 exactly. Two fused passes over the rows
    replace the clamp/multiply/select passes of the sign split.
    """
    a_lo, b_lo, a_hi, b_hi = lines
    batch = a_lo.shape[0]
    a_mid = ((a_lo + a_hi) / 2).reshape(batch, 1, 1, -1)
    a_half = ((a_lo - a_hi) / 2).reshape(batch, 1, 1, -1)
    b_mid = ((b_lo + b_hi) / 2).reshape(batch, 1, -1, 1)
    b_half = ((b_lo - b_hi) / 2).reshape(batch, 1, -1, 1)
    return a_mid, torch.cat([a_half, -a_half], 1), b_mid, torch.cat([b_half, -b_half], 1)


def relax_back(lam: Tensor, k: int, lines: tuple, acc: Tensor) -> tuple[Tensor, Tensor]:
    """Push rows through an activation relaxed by ``back_lines``.

    The first k rows bound from below (positive weights take the lower line), the last k
    from above (positive weights take the upper line).
    """
    a_mid, a_half, b_mid, b_half = lines
    batch = max(lam.shape[0], a_mid.shape[0])
    rows = lam.unflatten(1, (2, k)).flatten(3)  # [b, 2, k, n]
    mag = rows.abs()
    out = torch.addcmul(rows * a_mid, mag, a_half)
    extra = (rows @ b_mid + mag @ b_half).reshape(batch, 2 * k)
    return out.reshape(batch, 2 * k, *lam.shape[2:]), acc + extra


def concretize(lam: Tensor, k: int, centre: Tensor, radius: Tensor, acc: Tensor
               ) -> tuple[Tensor, Tensor]:
    """Bounds of rows lam over the input box (centre +- radius): lower rows, upper rows."""
    flat = lam.flatten(2)
    if flat.shape[0] == 1 and centre.shape[0] != 1:  # rows shared by the batch
        mid = torch.einsum("kn,bn->bk", flat[0], centre.flatten(1))
        spread = torch.einsum("kn,bn->bk", flat[0].abs(), radius.flatten(1))
    else:
        mid = torch.einsum("bkn,bn->bk", flat, centre.flatten(1))
        spread = torch.einsum("bkn,bn->bk", flat.abs(), radius.flatten(1))
    total = mid + acc
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


def refine(backsub: Callable[[Tensor], tuple[Tensor, Tensor]], lower: Tensor, upper: Tensor,
           needs: Tensor, rows_per_chunk: int, select: bool) -> tuple[Tensor, Tensor]:
    """Tighten [lower, upper] of one node by back-substitution.

    ``backsub(index)`` bounds the neurons ``index`` (flat indices into the node's shape).

    Only neurons where ``needs`` holds for some sample are back-substituted when ``select``
    (not under vmap, where shapes must not depend on data); results are intersected with the
    given sound bounds.
    """
    batch = lower.shape[0]
    shape = tuple(lower.shape[1:])
    flat_l, flat_u = lower.flatten(1), upper.flatten(1)
    n = flat_l.shape[1]
    if select:
        index = needs.flatten(1).any(0).nonzero().squeeze(1)
        if index.numel() == 0:
            return lower, upper
    else:
        index = torch.arange(n, device=lower.device)
    new_l, new_u = [], []
    for start in range(0, index.numel(), rows_per_chunk):
        chunk = index[start:start + rows_per_chunk]
        lo_rows, hi_rows = backsub(chunk)
        new_l.append(lo_rows)
        new_u.append(hi_rows)
    got_l = torch.cat(new_l, 1).expand(batch, -1)
    got_u = torch.cat(new_u, 1).expand(batch, -1)
    if select and index.numel() < n:
        got_l = flat_l.index_copy(1, index, torch.maximum(flat_l[:, index], got_l))
        got_u = flat_u.index_copy(1, index, torch.minimum(flat_u[:, index], got_u))
    else:
        got_l, got_u = torch.maximum(flat_l, got_l), torch.minimum(flat_u, got_u)
    return got_l.reshape(batch, *shape), got_u.reshape(batch, *shape)


# ---- back-substitution in patches (chains of convolutions) ------------------------------
#
# A neuron of a conv layer depends on a window of each earlier feature map, so its rows need
# not span whole maps. In patch form the rows of k neurons at grid positions ``pos`` of the
# target map are [b, 2k, C * kh * kw]: for each row, the channels and the kh x kw window of
# the current map whose top-left corner is ``offset + stride * (y, x)``. The geometry
# ``(kh, kw, stride, offset, grid)`` is static (the code generator computes it per map); the
# windows overhang the map at its borders, where feature maps and the input box read as 0.


def patch_start(index: Tensor, shape: tuple[int, ...], like: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Unit rows of neurons ``index`` of a [C, H, W] map as 1 x 1 patches, twice.

    Returns rows [1, 2k, C], their grid positions [k] and a zero accumulator [1, 2k].
    """
    channels, height, width = shape
    k = index.numel()
    rows = torch.zeros(k, channels, dtype=like.dtype, device=like.device)
    rows[torch.arange(k, device=like.device), index // (height * width)] = 1.0
    pos = index % (height * width)
    return torch.cat([rows, rows], 0).unsqueeze(0), pos, rows.new_zeros(1, 2 * k)


def patch_gather(maps: Tensor, geom: tuple[int, ...], pos: Tensor) -> Tensor:
    """Windows of ``maps`` [b, C, H, W] at the rows' positions: [b, k, C * kh * kw].

    Outside the map the windows read 0 (zero padding; a crop where they stop short of it).
    """
    kh, kw, sh, sw, oh, ow, gh, gw = geom
    height, width = maps.shape[-2:]
    bottom = (gh - 1) * sh + oh + kh - height
    right = (gw - 1) * sw + ow + kw - width
    # window (0, 0) starts at the corner; windows may stop short of the far edges (crop), even
    # before the map starts (a conv output that reads padding only), so pad first, then crop
    padded = F.pad(maps, (-ow, max(right, 0), -oh, max(bottom, 0)))
    padded = padded[..., :(gh - 1) * sh + kh, :(gw - 1) * sw + kw]
    if 2 * pos.numel() >= gh * gw:
        # most grid positions are read: unfold them all (never more than the rows' size)
        cols = F.unfold(padded, (kh, kw), stride=(sh, sw))  # [b, C*kh*kw, gh*gw]
        return cols.transpose(-2, -1).contiguous().index_select(-2, pos)
    # few rows: read only their windows, channels last so each read is a contiguous run
    wp = padded.shape[-1]
    ys = ((pos // gw) * sh)[:, None] + torch.arange(kh, device=pos.device)  # [k, kh]
    xs = ((pos % gw) * sw)[:, None] + torch.arange(kw, device=pos.device)  # [k, kw]
    flat = (ys[:, :, None] * wp + xs[:, None, :]).reshape(-1)  # [k * kh * kw]
    picked = padded.flatten(-2).transpose(-2, -1).index_select(-2, flat)  # [b, k*kh*kw, C]
    picked = picked.unflatten(-2, (pos.numel(), kh * kw)).transpose(-2, -1)  # [b, k, C, kh*kw]
    return picked.flatten(-2)


def patch_lines(lines: tuple, shape: tuple[int, ...]) -> Tensor:
    """Relaxation lines as one map [b, 4C, H, W]: mid and half of the slopes and offsets
    (stacked along channels, so one gather serves all four)."""
    a_lo, b_lo, a_hi, b_hi = (t.reshape(t.shape[0], *shape) for t in lines)
    return torch.cat([(a_lo + a_hi) / 2, (a_lo - a_hi) / 2, (b_lo + b_hi) / 2,
                      (b_lo - b_hi) / 2], 1)


def patch_relax(rows: Tensor, k: int, maps: Tensor, geom: tuple[int, ...], pos: Tensor,
                acc: Tensor) -> tuple[Tensor, Tensor]:
    """Push patch rows through an activation (the algebra of :func:`back_lines`).

    ``maps`` (from :func:`patch_lines`) stacks mid slope, half slope, mid offset and half
    offset along channels; lower rows add the half terms, upper rows subtract them.
    """
    a_mid, a_half, b_mid, b_half = patch_gather(maps, geom, pos).unflatten(
        2, (4, -1)).unbind(2)  # each [b, k, D]
    lower, upper = rows[:, :k], rows[:, k:]
    mag_lo, mag_hi = lower.abs(), upper.abs()
    out = torch.cat([torch.addcmul(lower * a_mid, mag_lo, a_half),
                     torch.addcmul(upper * a_mid, mag_hi, a_half, value=-1.0)], 1)
    extra = torch.cat([(lower * b_mid + mag_lo * b_half).sum(-1),
                       (upper * b_mid - mag_hi * b_half).sum(-1)], 1)
    return out, acc + extra


def patch_mask(rows: Tensor, k: int, size: tuple[int, int], geom: tuple[int, ...],
               pos: Tensor) -> Tensor:
    """Zero the entries of rows that fall outside a map of spatial ``size`` (no neuron)."""
    ones = rows.new_ones(1, 1, *size)
    inside = patch_gather(ones, geom, pos)  # [1, k, kh*kw]
    r = rows.unflatten(1, (2, k)).unflatten(-1, (-1, inside.shape[-1]))
    return (r * inside.unsqueeze(1).unsqueeze(3)).flatten(-2).flatten(1, 2)


def _constant_windows(t: Tensor, geom: tuple[int, ...], pos: Tensor,
                      shape: tuple[int, ...]) -> Tensor:
    """Windows of a constant broadcastable to the [C, H, W] map (per channel, a full map)."""
    full = t.expand(*t.shape[:-3], *shape) if t.dim() > 3 else t.expand(shape).unsqueeze(0)
    return patch_gather(full, geom, pos)


def patch_bias(rows: Tensor, k: int, bias: Tensor | float, geom: tuple[int, ...],
               pos: Tensor, shape: tuple[int, ...], acc: Tensor) -> Tensor:
    """acc + sum of rows * bias over each window (bias broadcastable to [C, H, W]).

    The windows read the bias map as 0 outside the map, so rows there need no mask.
    """
    if not isinstance(bias, Tensor):
        inside = patch_gather(rows.new_ones(1, 1, *shape[1:]), geom, pos)  # [1, k, kh*kw]
        r = rows.unflatten(1, (2, k)).unflatten(-1, (shape[0], -1)).sum(-2)
        return acc + (r * inside.unsqueeze(1)).sum(-1).flatten(1) * bias
    windows = _constant_windows(bias, geom, pos, shape)  # [1 or b, k, D]
    return acc + (rows.unflatten(1, (2, k)) * windows.unsqueeze(1)).sum(-1).flatten(1)


def patch_scale(rows: Tensor, k: int, scale: Tensor | float, geom: tuple[int, ...],
                pos: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Rows times an elementwise scale (a number, per channel, or a full map)."""
    if not isinstance(scale, Tensor):
        return rows * scale
    windows = _constant_windows(scale, geom, pos, shape)
    return (rows.unflatten(1, (2, k)) * windows.unsqueeze(1)).flatten(1, 2)


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
                     geom: tuple[int, ...], pos: Tensor, acc: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds of patch rows over the input box: lower rows, upper rows."""
    c = patch_gather(centre, geom, pos)  # [B, k, D]
    r = patch_gather(radius, geom, pos)
    rr = rows.unflatten(1, (2, k))
    mid = torch.einsum("bskd,bkd->bsk", rr.expand(c.shape[0], -1, -1, -1), c).flatten(1)
    spread = torch.einsum("bskd,bkd->bsk", rr.abs().expand(c.shape[0], -1, -1, -1),
                          r).flatten(1)
    total = mid + acc
    return total[:, :k] - spread[:, :k], total[:, k:] + spread[:, k:]
