"""Back-substitution in patch rows (chains of convolutions): the runtime of patch functions.

Generated code calls every function here by keyword, as ``patch_rows.<name>(...)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .rows import Ragged, conv_transpose_subpixel

Tensor = torch.Tensor

#
# A neuron of a conv layer depends on a window of each earlier feature map, so its rows need
# not span whole maps. In patch form the rows of k neurons at grid positions ``pos`` of the
# target map are [b, 2k, C * kh * kw]: for each row, the channels and the kh x kw window of
# the current map whose top-left corner is ``offset + stride * (y, x)``. The geometry
# ``(kh, kw, stride, offset, grid)`` is static (the code generator computes it per map); the
# windows overhang the map at its borders, where feature maps and the input box read as 0.


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
                pos: Tensor | Ragged, acc: Tensor, per_row=None,
                index: Tensor | Ragged | None = None) -> tuple[Tensor, Tensor]:
    """Push patch rows through an activation (the algebra of :func:`back_lines`).

    ``maps`` (from :func:`patch_lines`) stacks mid slope, half slope, mid offset and half
    offset along channels; lower rows add the half terms, upper rows subtract them.
    ``per_row`` (``row_slopes.PatchRowLines``), when given, has each row (neurons ``index``)
    take its own lines instead.
    """
    if per_row is not None:
        return per_row.relax_rows(rows, k, index, pos, acc)
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
                        maps: Tensor, geom: tuple[int, ...], mid: Tensor, half: Tensor,
                        per_row=None, centre_after: Tensor | None = None
                        ) -> tuple[Tensor, Tensor | Ragged, Tensor]:
    """:func:`patch_start`, the target conv and the relaxation of its input in one step.

    A neuron of channel c of a conv has the row ``kernels[c]`` on its input window, so after
    the relaxation its rows are kernels[c] * a_mid +- |kernels[c]| * a_half (windows of the
    slope maps at its position): only those are built per neuron. Its offsets (and the
    centre term, see :func:`patch_first_terms`) are read from the convolved maps ``mid``
    and ``half`` [b, *shape]. Returns rows [b, 2k, D] (lower first), positions and acc.
    ``per_row`` (``row_slopes.PatchRowLines``), when given, has each row take its own lines
    (``centre_after``: the centre ``mid`` and ``half`` were made with, or None).
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
    acc = torch.cat([t_mid + t_half, t_mid - t_half], 1)
    if per_row is not None:
        offsets = patch_gather(maps.narrow(1, maps.shape[1] // 2, maps.shape[1] // 2), geom,
                               pos).unflatten(2, (2, -1)).unbind(2)
        rows, acc = per_row.start_rows(w, (a_mid, a_half, *offsets), centre_after, index,
                                       pos, acc)
    return rows, pos, acc


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
