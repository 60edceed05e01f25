"""Generators of zonotope-like states (the ``gens`` kind of the DSL).

A set of error-term generators, ``x = c + sum_k G[:, k] * e_k``, kept in blocks keyed by the
node that created them, so adding the two branches of a residual block lines up shared error
terms without padding. A block has one of three forms:

* **diagonal**, ``[B, *shape]``: one fresh generator per neuron (the input box, an unstable
  ReLU's new error terms);
* **patch**, after 2-d convolutions of a diagonal block: the generators that reach a neuron of
  a ``[C, H, W]`` map are the ``C0 x Rh x Rw`` window of the block's origin map
  (``[C0, H0, W0]``, where the generators were created) under that neuron, its receptive
  field. The block stores the origin's diagonal values ``v`` and the window coefficients
  ``J`` separately (a generator's entry is ``J * v`` at the window's origin pixel): right after
  the first conv ``J`` is the kernel itself, ``[C, C0, kh, kw]``, the same at every position
  and sample; after more convs it is ``[B, C, H, W, C0, Rh, Rw]``. The window of neuron
  ``(h, w)`` starts at origin row ``h * stride - start`` (:class:`Patch`). A pending
  per-neuron multiplier (``factor``) keeps ReLU scales and guards out of the big tensor, and
  the chain of convs since the origin lets a fully connected layer carry its few rows back to
  the origin map by transposed convolutions instead of reading every window;
* **dense**, ``[B, K, *shape]``: every generator over every neuron, ``K`` of them; only the
  fresh generators that are non-zero somewhere in the batch (``index``) when ``compact``.

So the cost of a conv chain follows its receptive fields instead of input size x width: an
input pixel's generator only reaches the neurons whose window holds it. A block goes dense
when its window would hold more than ``PATCH_MAX_FRACTION`` of the origin map, or when it meets
a map that is not a 2-d convolution, an elementwise scale or a fully connected layer.

``compact`` is the program's flag: false under ``torch.func.vmap``, where shapes may not
depend on data. ``patches=False`` (the engine option ``gens_patches``) restores the plain dense
form everywhere (the reference the tests compare against).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .backsub.rows import conv_transpose_subpixel

Tensor = torch.Tensor

PATCH_MAX_FRACTION = 0.5  # a window above this share of the origin map goes dense
_GEMM_ELEMENTS = 1 << 22  # largest window-to-window matrix built for one product
_ROW_CHUNK_ELEMENTS = 1 << 25  # rows of a fully connected layer per chunk (x map size)
_FOLD_OVER_BACK = 8  # a window fold costs about this many transposed-conv MACs per MAC


@dataclass(frozen=True)
class Patch:
    """Window geometry of a patch block, relative to the block's origin map."""

    origin: tuple[int, int, int]  # C0, H0, W0
    neurons: tuple[int, int, int]  # C, H, W: the map the windows belong to
    stride: tuple[int, int]
    start: tuple[int, int]  # the window of neuron (h, w) begins at (h, w) * stride - start
    window: tuple[int, int]

    def after_conv(self, kernel: tuple[int, int], stride: tuple[int, int],
                   padding: tuple[int, int], neurons: tuple[int, int, int]) -> Patch:
        """The geometry one (undilated) convolution later."""
        return Patch(self.origin, neurons,
                     (stride[0] * self.stride[0], stride[1] * self.stride[1]),
                     (padding[0] * self.stride[0] + self.start[0],
                      padding[1] * self.stride[1] + self.start[1]),
                     (self.window[0] + (kernel[0] - 1) * self.stride[0],
                      self.window[1] + (kernel[1] - 1) * self.stride[1]))

    def fits(self) -> bool:
        """Whether the window is small enough that patches beat dense generators."""
        area = self.origin[1] * self.origin[2]
        return self.window[0] * self.window[1] <= PATCH_MAX_FRACTION * area


@dataclass(frozen=True)
class Step:
    """One conv of a patch block's chain (for carrying rows back to the origin map)."""

    weight: Tensor  # ungrouped, undilated [C_out, C_in, kh, kw]
    stride: tuple[int, int]
    padding: tuple[int, int]
    in_shape: tuple[int, int, int]
    factor_in: Tensor | float | None  # the per-neuron factor on the conv's input


@dataclass
class Block:
    data: Tensor
    diagonal: bool
    index: Tensor | None = None  # which fresh generators the dense rows / patch origin are
    patch: Patch | None = None  # set for a patch block (data is J)
    factor: Tensor | float | None = None  # patch: pending multiplier per neuron [B, C, H, W]
    values: Tensor | None = None  # patch: the origin's diagonal values [B, C0, H0, W0]
    chain: tuple[Step, ...] | None = None  # patch: the convs since the origin (None: unknown)

    @property
    def constant(self) -> bool:
        """A patch block whose coefficients are one kernel shared by all positions."""
        return self.patch is not None and self.data.dim() == 4

    def general(self) -> Tensor:
        """J as [B, C, H, W, C0, Rh, Rw] with the pending factor applied."""
        assert self.patch is not None
        j = self.data
        if self.constant:
            c, h, w = self.patch.neurons
            j = j[None, :, None, None].expand(1, c, h, w, *j.shape[1:])
        f = self.factor
        if f is None:
            return j
        return j * (f[..., None, None, None] if isinstance(f, Tensor) else f)


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
            if b.patch is not None:
                f = _on_map(s, b)
                out[k] = replace(b, factor=f if b.factor is None else b.factor * f)
            elif b.diagonal:
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
            elif _shared(a, b):
                out[k] = replace(a, factor=_factor(a.factor) + _factor(b.factor))
            elif _alignable(a, b):
                da, db, geom = _patch_align(a, b)
                out[k] = Block(da + db, False, a.index, geom, None, a.values, None)
            else:
                da, db, index = _align(_unpatched(a, self.shape), _unpatched(b, self.shape))
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
            pa, pb = a is not None and a.patch is not None, b is not None and b.patch is not None
            if (pa or pb) and (a is None or b is None or _shared(a, b)):
                # one shared coefficient tensor (or one side zero): only the factors are chosen
                ref = a if a is not None else b
                assert ref is not None
                fa = _factor(a.factor) if a is not None else 0.0
                fb = _factor(b.factor) if b is not None else 0.0
                like = ref.data.new_ones(())
                m = _on_map(mask, ref)
                assert isinstance(m, Tensor)
                out[k] = replace(ref, factor=torch.where(m, like * fa, like * fb))
                continue
            if pa or pb:
                assert a is not None and b is not None
                if _alignable(a, b):
                    da, db, geom = _patch_align(a, b)
                    m = _on_map(mask, a)
                    assert isinstance(m, Tensor)
                    out[k] = Block(torch.where(m[..., None, None, None], da, db), False, a.index,
                                   geom, None, a.values, None)
                    continue
                a, b = _unpatched(a, self.shape), _unpatched(b, self.shape)
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
            if b.patch is not None:
                r = _patch_abs_sum(b)
                total = total + r.reshape(r.shape[0], *self.shape)
            else:
                total = total + (b.data.abs() if b.diagonal else b.data.abs().sum(1))
        return total

    # -- linear maps -------------------------------------------------------------------
    def map(self, fn: Callable[[Tensor], Tensor], compact: bool) -> Gens:
        """Apply a per-sample linear map to every generator (dense form)."""
        out = {}
        shape = self.shape
        for k, b in self.blocks.items():
            b = _unpatched(b, self.shape, compact)
            dense, index = _densify(b, compact) if b.diagonal else (b.data, b.index)
            n_gen = dense.shape[1]
            flat = fn(dense.flatten(0, 1))
            shape = tuple(flat.shape[1:])
            out[k] = Block(flat.unflatten(0, (self.batch, n_gen)), False, index)
        if not self.blocks:
            return Gens({}, self.batch, shape)
        return Gens(out, self.batch, shape)

    def elementwise(self, *, scale: Tensor | float, fn: Callable[[Tensor], Tensor],
                    compact: bool, patches: bool = True) -> Gens:
        """``x * scale`` (normalisation, batch norm): a per-neuron scale of every block."""
        if not patches:
            return self.map(fn, compact)
        if isinstance(scale, Tensor) and scale.dim() <= len(self.shape):
            scale = scale.unsqueeze(0)  # per-sample [*shape] -> batch-broadcast
        return self.scale(scale)

    def conv2d(self, *, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int],
               dilation: tuple[int, int], groups: int, fn: Callable[[Tensor], Tensor],
               compact: bool, patches: bool = True) -> Gens:
        """A 2-d convolution (no bias): diagonal and patch blocks stay windows while they fit."""
        if not patches or len(self.shape) != 3:
            return self.map(fn, compact)
        w = _full_kernel(weight, groups, dilation)
        kh, kw = int(w.shape[2]), int(w.shape[3])
        c_in, h_in, w_in = (int(s) for s in self.shape)
        neurons = (int(w.shape[0]), (h_in + 2 * padding[0] - kh) // stride[0] + 1,
                   (w_in + 2 * padding[1] - kw) // stride[1] + 1)
        out: dict[str, Block] = {}
        dense_part = {}
        for k, b in self.blocks.items():
            geom = _block_patch(b, self.shape)
            new = geom.after_conv((kh, kw), stride, padding, neurons) if geom else None
            if new is None or not new.fits():
                dense_part[k] = b
                continue
            step = Step(w, stride, padding, (c_in, h_in, w_in),
                        None if b.diagonal else b.factor)
            if b.diagonal:
                out[k] = Block(w, False, _live_index(b.data, compact), new, None, b.data, (step,))
                continue
            chain = b.chain + (step,) if b.chain is not None else None
            if b.constant:
                j = _constant_conv(b, w, stride, padding, new)
            else:
                j = _patch_conv(b.general(), b.patch, w, stride, padding, new)  # type: ignore[arg-type]
            out[k] = Block(j, False, b.index, new, None, b.values, chain)
        if dense_part:
            dense = Gens(dense_part, self.batch, self.shape).map(fn, compact)
            out.update(dense.blocks)
        return Gens(out, self.batch, neurons)

    def linear(self, *, weight: Tensor, fn: Callable[[Tensor], Tensor], compact: bool,
               patches: bool = True) -> Gens:
        """A fully connected layer: patch windows go back onto their origin maps."""
        if not patches or len(self.shape) != 1:
            return self.map(fn, compact)
        return self._contract(weight, fn, compact, per_sample=False)

    def spec(self, c: Tensor, compact: bool = True, patches: bool = True) -> Gens:
        """Generators of C x for a per-sample matrix C [B, k, n]."""
        if patches and any(b.patch is not None or b.diagonal for b in self.blocks.values()):
            return self._contract(c, None, compact, per_sample=True)
        out = {}
        for k, b in self.blocks.items():
            dense, index = _densify(b, compact) if b.diagonal else (b.data, b.index)
            out[k] = Block(torch.einsum("bkn,bgn->bgk", c, dense.flatten(2)), False, index)
        return Gens(out, self.batch, (c.shape[1],))

    def _contract(self, weight: Tensor, fn: Callable[[Tensor], Tensor] | None, compact: bool,
                  per_sample: bool) -> Gens:
        """``W G`` for W [k, n] (or per sample [B, k, n]) over the flattened neurons."""
        out = {}
        k_out = int(weight.shape[-2])
        for key, b in self.blocks.items():
            if b.patch is not None:
                out[key] = Block(_patch_rows(b, weight, per_sample, compact), False, b.index)
            elif b.diagonal:
                flat = b.data.reshape(b.data.shape[0], -1)
                index = _live_index(b.data, compact)
                w = weight
                if index is not None:
                    flat, w = flat.index_select(1, index), weight.index_select(-1, index)
                # generator g of neuron g is flat[:, g] e_g: W's column g scaled by it
                out[key] = Block(flat.unsqueeze(-1) * w.transpose(-1, -2), False, index)
            elif per_sample:
                out[key] = Block(torch.einsum("bkn,bgn->bgk", weight, b.data.flatten(2)),
                                 False, b.index)
            else:
                assert fn is not None
                n_gen = b.data.shape[1]
                flat = fn(b.data.flatten(0, 1))
                out[key] = Block(flat.unflatten(0, (self.batch, n_gen)), False, b.index)
        return Gens(out, self.batch, (k_out,))

    # -- structure ---------------------------------------------------------------------
    def reshape(self, shape: tuple[int, ...]) -> Gens:
        out = {}
        for k, b in self.blocks.items():
            if b.patch is not None:
                if shape == b.patch.neurons or shape == (_numel(b.patch.neurons),):
                    out[k] = b  # flattening keeps the windows; neurons stay in (C, H, W) order
                    continue
                b = _unpatched(b, self.shape)
            lead = b.data.shape[:1] if b.diagonal else b.data.shape[:2]
            out[k] = Block(b.data.reshape(*lead, *shape), b.diagonal, b.index)
        return Gens(out, self.batch, shape)

    def without_patches(self, compact: bool = True) -> Gens:
        """The same generators with every patch block dense (for ops that need whole maps)."""
        if not any(b.patch is not None for b in self.blocks.values()):
            return self
        return Gens({k: _unpatched(b, self.shape, compact) for k, b in self.blocks.items()},
                    self.batch, self.shape)


# ---- patch blocks --------------------------------------------------------------------------

def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _factor(f: Tensor | float | None) -> Tensor | float:
    return 1.0 if f is None else f


def _on_map(t: Tensor | float, b: Block) -> Tensor | float:
    """A per-neuron value (batch first, any neuron shape) on a patch block's [C, H, W] map."""
    if not isinstance(t, Tensor) or t.dim() == 4:
        return t
    assert b.patch is not None
    if t[0].numel() == 1:
        return t.reshape(t.shape[0], 1, 1, 1)
    return t.reshape(t.shape[0], *b.patch.neurons)


def _block_patch(b: Block, shape: tuple[int, ...]) -> Patch | None:
    """The window geometry of a block as it enters a conv (None: not in window form)."""
    if b.patch is not None:
        return b.patch
    if b.diagonal and len(shape) == 3:
        origin = (int(shape[0]), int(shape[1]), int(shape[2]))
        return Patch(origin, origin, (1, 1), (0, 0), (1, 1))
    return None


def _live_index(diag: Tensor, compact: bool) -> Tensor | None:
    """Which of a diagonal block's generators are non-zero somewhere in the batch."""
    if not compact:
        return None
    live = (diag.reshape(diag.shape[0], -1) != 0).any(0)
    if bool(live.all()):
        return None
    return live.nonzero().squeeze(1)


def _full_kernel(weight: Tensor, groups: int, dilation: tuple[int, int]) -> Tensor:
    """The kernel as an ungrouped, undilated [C_out, C_in, kh, kw] tensor (same conv)."""
    w = weight
    if groups > 1:
        c_out, c_in_g = int(w.shape[0]), int(w.shape[1])
        blocks = w.reshape(groups, c_out // groups, c_in_g, *w.shape[2:])
        eye = torch.eye(groups, dtype=w.dtype, device=w.device)
        w = torch.einsum("gh,goikl->gohikl", eye, blocks).reshape(c_out, groups * c_in_g,
                                                                   *w.shape[2:])
    if dilation != (1, 1):
        dh, dw = dilation
        kh, kw = int(w.shape[2]), int(w.shape[3])
        spread = F.pad(w.unsqueeze(-1).unsqueeze(-3), (0, dw - 1, 0, 0, 0, dh - 1))
        w = spread.reshape(*w.shape[:2], kh * dh, kw * dw)[..., :(kh - 1) * dh + 1,
                                                             :(kw - 1) * dw + 1]
    return w


def _windows(v: Tensor, geom: Patch) -> Tensor:
    """Each neuron's window of the origin values: [B, C0, Rh, Rw, H, W] (zero outside)."""
    _, h, w = geom.neurons
    (sh, sw), (th, tw), (rh, rw) = geom.stride, geom.start, geom.window
    bottom = max(0, (h - 1) * sh + rh - th - v.shape[2])
    right = max(0, (w - 1) * sw + rw - tw - v.shape[3])
    padded = F.pad(v, (tw, right, th, bottom))
    lh = (padded.shape[2] - rh) // sh + 1
    lw = (padded.shape[3] - rw) // sw + 1
    cols = F.unfold(padded, (rh, rw), stride=(sh, sw))
    return cols.reshape(v.shape[0], v.shape[1], rh, rw, lh, lw)[..., :h, :w]


def _patch_abs_sum(b: Block) -> Tensor:
    """sum over a patch block's generators of |J v| per neuron, [B, C, H, W]."""
    geom, v = b.patch, b.values
    assert geom is not None and v is not None
    if b.constant:  # one kernel everywhere: the sums are a conv of |v| with |J|
        r = F.conv2d(v.abs(), b.data.abs(), None, geom.stride, geom.start)
    else:
        win = _windows(v.abs(), geom).permute(0, 4, 5, 1, 2, 3).unsqueeze(1).contiguous()
        r = (b.data.abs() * win).sum((4, 5, 6))
    f = b.factor
    if f is None:
        return r
    return r * (f.abs() if isinstance(f, Tensor) else abs(f))


def _constant_conv(b: Block, w: Tensor, stride: tuple[int, int], padding: tuple[int, int],
                   new: Patch) -> Tensor:
    """J one conv after a constant-kernel block: per output neuron, the rows
    ``W[o, c, i, j] * factor[c, under (i, j)]`` carried through the first kernel, which is the
    same small window-to-window map at every position (one matrix product)."""
    geom = b.patch
    assert geom is not None
    c_in, h_in, w_in = geom.neurons
    assert b.values is not None
    fmap = b.values.new_ones(b.values.shape[0], c_in, h_in, w_in) * _factor(b.factor)
    kh, kw = int(w.shape[2]), int(w.shape[3])
    cols = F.unfold(fmap, (kh, kw), padding=padding, stride=stride)  # [B, Ci kh kw, L]
    c_out = int(w.shape[0])
    rows = cols.transpose(1, 2).unsqueeze(1) * w.reshape(1, c_out, 1, -1)  # [B, Co, L, Ci kh kw]
    kernel = b.data  # [Ci, C0, k1h, k1w]
    d = c_in * kh * kw
    c0 = int(kernel.shape[1])
    d_in = c0 * new.window[0] * new.window[1]
    batch = rows.shape[0]
    if d * d_in <= _GEMM_ELEMENTS:
        basis = torch.eye(d, dtype=rows.dtype, device=rows.device).reshape(d, c_in, kh, kw)
        matrix = F.conv_transpose2d(basis, kernel, None, geom.stride)
        j = rows @ matrix.flatten(1)
    else:
        j = F.conv_transpose2d(rows.reshape(-1, c_in, kh, kw), kernel, None, geom.stride)
    _, h, w_out = new.neurons
    return j.reshape(batch, c_out, h, w_out, c0, *new.window)


def _patch_conv(j: Tensor, geom: Patch, w: Tensor, stride: tuple[int, int],
                padding: tuple[int, int], new: Patch) -> Tensor:
    """J one conv later: each kernel tap adds W[o, c, i, j] times the windows of the input
    neuron under it, shifted by (i, j) * stride within the output's larger window."""
    c_out, kh, kw = int(w.shape[0]), int(w.shape[2]), int(w.shape[3])
    padded = F.pad(j, (0, 0, 0, 0, 0, 0, padding[1], padding[1], padding[0], padding[0]))
    _, h_out, w_out = new.neurons
    c0, rh, rw = int(j.shape[4]), int(j.shape[5]), int(j.shape[6])
    out: Tensor | None = None
    for i in range(kh):
        for t in range(kw):
            tap = padded[:, :, i:i + stride[0] * (h_out - 1) + 1:stride[0],
                         t:t + stride[1] * (w_out - 1) + 1:stride[1]]
            part = torch.einsum("oc,bchwzyx->bohwzyx", w[:, :, i, t], tap)
            if out is None:  # allocated from a product, so it is batched under vmap too
                out = part.new_zeros(part.shape[0], c_out, h_out, w_out, c0, *new.window)
            y, x = i * geom.stride[0], t * geom.stride[1]
            out[..., y:y + rh, x:x + rw] += part
    assert out is not None
    return out


def _patch_rows(b: Block, weight: Tensor, per_sample: bool, compact: bool) -> Tensor:
    """Dense generators [B, K, k] of ``W x`` for W [k, C H W] (or [B, k, C H W]) on a patch
    block, in chunks of rows that keep the intermediate maps near ``_ROW_CHUNK_ELEMENTS``."""
    assert b.patch is not None and b.values is not None
    k_out = int(weight.shape[-2])
    per_row = int(b.values.shape[0]) * max(
        [_numel(b.patch.neurons) * b.patch.origin[0] * b.patch.window[0] * b.patch.window[1]]
        + [_numel(s.in_shape) for s in b.chain or ()])
    chunk = max(1, _ROW_CHUNK_ELEMENTS // max(per_row, 1))
    if k_out <= chunk:
        return _patch_rows_chunk(b, weight, per_sample, compact)
    parts = [_patch_rows_chunk(b, weight[..., i:i + chunk, :], per_sample, compact)
             for i in range(0, k_out, chunk)]
    return torch.cat(parts, 2)


def _patch_rows_chunk(b: Block, weight: Tensor, per_sample: bool, compact: bool) -> Tensor:
    """The rows go back through the chain of convs to the origin map (when that is cheaper),
    or every window is weighted and summed onto the origin map. ``compact`` false (vmap):
    no memory-format change, which vmap cannot query."""
    geom, v = b.patch, b.values
    assert geom is not None and v is not None
    c, h, w = geom.neurons
    k_out = int(weight.shape[-2])
    rows = weight.reshape(-1, k_out, c, h, w)
    f = b.factor
    if isinstance(f, Tensor):
        rows = rows * f.unsqueeze(1)
    elif f is not None:
        rows = rows * f
    back_cost = sum(_numel(tuple(s.weight.shape)) * _numel(s.in_shape[1:]) for s in b.chain or ())
    fold_cost = c * h * w * geom.origin[0] * geom.window[0] * geom.window[1]
    if b.chain is not None and back_cost <= _FOLD_OVER_BACK * fold_cost:
        out_shape = (c, h, w)
        for s in reversed(b.chain):
            extra = tuple(s.in_shape[1 + a] - ((out_shape[1 + a] - 1) * s.stride[a]
                                               - 2 * s.padding[a] + int(s.weight.shape[2 + a]))
                          for a in range(2))
            if s.in_shape[0] <= 4 and s.stride[0] == s.stride[1] > 1:
                # transposed convs to few channels are slow on CPUs: the sub-pixel form
                rows = conv_transpose_subpixel(rows, s.weight, s.stride, s.padding,
                                               s.in_shape[1:])
            else:
                flat = rows.flatten(0, 1)
                if compact and flat.shape[0] > 1 and flat.shape[1] > 1:  # CPU transposed convs run
                    flat = flat.contiguous(memory_format=torch.channels_last)  # faster so
                flat = F.conv_transpose2d(flat, s.weight, None, s.stride, s.padding, extra)
                rows = flat.unflatten(0, rows.shape[:2])
            if isinstance(s.factor_in, Tensor):
                rows = rows * s.factor_in.unsqueeze(1)
            elif s.factor_in is not None:
                rows = rows * s.factor_in
            out_shape = s.in_shape
        dense = (rows * v.unsqueeze(1)).flatten(2)
    else:
        c0, rh, rw = geom.origin[0], geom.window[0], geom.window[1]
        if b.constant:
            sums = torch.einsum("bkchw,czyx->bkzyxhw", rows, b.data)
        else:
            sums = torch.einsum("bkchw,bchwzyx->bkzyxhw", rows, b.data)
        batch = sums.shape[0]
        full = ((h - 1) * geom.stride[0] + rh, (w - 1) * geom.stride[1] + rw)
        folded = F.fold(sums.reshape(batch * k_out, c0 * rh * rw, h * w), full, (rh, rw),
                        stride=geom.stride)
        _, h0, w0 = geom.origin
        top, left = geom.start
        folded = F.pad(folded, (-left, w0 - (full[1] - left), -top, h0 - (full[0] - top)))
        dense = (folded.reshape(batch, k_out, c0, h0, w0) * v.unsqueeze(1)).flatten(2)
    dense = dense.transpose(1, 2)
    return dense if b.index is None else dense.index_select(1, b.index)


def _entries(b: Block) -> Tensor:
    """A patch block's generator entries J v (factor applied): [B, C, H, W, C0, Rh, Rw]."""
    assert b.patch is not None and b.values is not None
    win = _windows(b.values, b.patch).permute(0, 4, 5, 1, 2, 3).unsqueeze(1)
    return b.general() * win


def _unpatched(b: Block, shape: tuple[int, ...], compact: bool = True) -> Block:
    """A patch block as a dense one ([B, K, *shape]); other blocks unchanged."""
    if b.patch is None:
        return b
    geom = b.patch
    data = _entries(b)
    batch = int(data.shape[0])
    c, h, w = geom.neurons
    c0, h0, w0 = geom.origin
    rh, rw = geom.window
    dev = data.device
    # for every neuron position and origin pixel: the window slot holding it (or a zero slot)
    ys = torch.arange(h0, device=dev).view(1, h0) - (torch.arange(h, device=dev).view(h, 1)
                                                     * geom.stride[0] - geom.start[0])
    xs = torch.arange(w0, device=dev).view(1, w0) - (torch.arange(w, device=dev).view(w, 1)
                                                     * geom.stride[1] - geom.start[1])
    ok = ((ys >= 0) & (ys < rh)).view(h, 1, h0, 1) & ((xs >= 0) & (xs < rw)).view(1, w, 1, w0)
    slot = ys.clamp(0, rh - 1).view(h, 1, h0, 1) * rw + xs.clamp(0, rw - 1).view(1, w, 1, w0)
    slot = torch.where(ok, slot, rh * rw).reshape(h * w, h0 * w0)
    pos = torch.arange(h * w, device=dev).view(h * w, 1).expand(h * w, h0 * w0)
    flat = F.pad(data.reshape(batch, c, h * w, c0, rh * rw), (0, 1))
    picked = flat[:, :, pos, :, slot]  # [HW, H0 W0, B, C, C0]
    dense = picked.permute(2, 4, 1, 3, 0).reshape(batch, c0 * h0 * w0, c, h, w)
    if b.index is not None:
        dense = dense.index_select(1, b.index)
    return Block(dense.reshape(batch, dense.shape[1], *shape), False, b.index)


def _shared(a: Block, b: Block) -> bool:
    """Two patch blocks that differ at most in their factors (one coefficient tensor, one set
    of origin values: a shared kernel alone is not enough, the values may differ)."""
    return (a.patch is not None and a.patch == b.patch and a.data is b.data
            and a.values is b.values and a.index is b.index)


def _alignable(a: Block, b: Block) -> bool:
    """Two patch blocks of one origin whose windows can be padded onto a common window."""
    pa, pb = a.patch, b.patch
    return (pa is not None and pb is not None and a.values is b.values
            and pa.origin == pb.origin and pa.stride == pb.stride and pa.neurons == pb.neurons
            and a.index is b.index)


def _patch_align(a: Block, b: Block) -> tuple[Tensor, Tensor, Patch]:
    """Both blocks' coefficients (factors applied) padded onto the smallest common window."""
    pa, pb = a.patch, b.patch
    assert pa is not None and pb is not None
    start = (max(pa.start[0], pb.start[0]), max(pa.start[1], pb.start[1]))
    end = (max(pa.window[0] - pa.start[0], pb.window[0] - pb.start[0]),
           max(pa.window[1] - pa.start[1], pb.window[1] - pb.start[1]))
    geom = Patch(pa.origin, pa.neurons, pa.stride, start, (end[0] + start[0], end[1] + start[1]))

    def grow(blk: Block, p: Patch) -> Tensor:
        top, left = start[0] - p.start[0], start[1] - p.start[1]
        return F.pad(blk.general(), (left, geom.window[1] - p.window[1] - left,
                                     top, geom.window[0] - p.window[0] - top))

    return grow(a, pa), grow(b, pb), geom


# ---- dense blocks ----------------------------------------------------------------------------

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
