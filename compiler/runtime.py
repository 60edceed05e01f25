"""Runtime helpers that generated bound programs call (imported there as ``rt``).

Generator sets of zonotope-like domains live in :mod:`absdsl.compiler.gens` (re-exported
here as ``rt.Gens``); the rest are helpers of the forward rules and of back-substitution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InputError
from .gens import Block, Gens, _align, _densify

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


def relax_param(given: dict[str, Tensor] | None, name: str, init: Tensor, like: Tensor,
                lo: float, hi: float) -> Tensor:
    """A relaxation parameter's per-neuron value, always inside its range [lo, hi]: the
    given one (reshaped like the neuron bounds ``like``, or, with as many dims and more
    entries, broadcast against them: one value per row, :mod:`.backsub.row_slopes`), else
    the initial one, which is also
    stored into ``given`` (a dict) for the caller to start optimising from (a leaf that
    requires grad when grad mode is on, so this very call can be differentiated)."""
    start = (torch.zeros_like(like) + init).clamp(lo, hi)
    if given is None:
        return start
    value = given.get(name)
    if value is None:
        value = given[name] = start.detach().clone().requires_grad_(torch.is_grad_enabled())
    if value.dim() != like.dim() or value.numel() == like.numel():
        value = value.reshape(like.shape)  # else per-row values broadcast against ``like``
    value = value.to(like.dtype)
    # the clamped value, with the derivative of the identity: torch's clamp passes none at the
    # ends of the range, where the initial values and projected steps often sit
    return value + (value.clamp(lo, hi) - value).detach()


def relax_given(ctx, node: str) -> dict[str, Tensor] | None:
    """The parameter values of activation ``node``'s relaxation in the call's context."""
    return None if ctx.relax_params is None else ctx.relax_params.setdefault(node, {})


def full_like(value: float, like: Tensor) -> Tensor:
    return torch.full_like(like, value)


# ---- tangent points of relaxations (DSL: tangent_above, tangent_below) -----------------------

TANGENT_SCALES = 10  # first round: the points tight + (safe - tight) / 2 ** j, j = 1..10
TANGENT_ITERATIONS = 8  # then regula falsi steps (Illinois) inside that factor-2 bracket


def tangent_point(f, df, p: Tensor, tight: Tensor, safe: Tensor, above: bool) -> Tensor:
    """A point d between ``tight`` and ``safe``, as near ``tight`` as the search gets, whose
    tangent line ``f(d) + f'(d) (x - d)`` passes above (``above``) or below ``(p, f(p))``.

    The caller guarantees that ``safe`` is such a point and that the points that are form
    one stretch ending at ``safe`` (true where f is concave between the two, for above, or
    convex, for below, with p beyond ``tight``). The search keeps a bracket whose ``safe``
    side only ever moves to a point whose tangent was checked, so the result is ``safe`` or
    a checked point: never short of the exact tangent point (up to the rounding of the check
    itself). A first round tries the points at 1/2, 1/4, ..., 1/1024 of the way from
    ``tight`` to ``safe`` at once (the exact point may lie anywhere on that scale: tanh's for
    l = -300 is near 3.2, and regula falsi alone stalls on such a bracket, where the gap is
    flat), then regula falsi steps with the Illinois rule refine the factor-2 bracket found
    (relative error under 4e-4 for sigmoid, tanh, arctan, softsign at |p| from 0.01 to 1000
    in float64; far below the float32 rounding of the check for most). It is a choice of the
    relaxation, not a bound: its gradient is not followed (as CROWN's tabulated points, it
    is held fixed)."""
    with torch.no_grad():
        p, tight, safe = torch.broadcast_tensors(p, tight, safe)
        target = f(p)
        sign = 1.0 if above else -1.0

        def gap(t: Tensor) -> Tensor:  # >= 0 where the tangent at t passes (p, f(p)) right
            return sign * (f(t) + df(t) * (p - t) - target)

        # round 1: of the points at 1/2 ... 1/2^J of the way, the nearest to tight that passes
        scales = 0.5 ** torch.arange(1, TANGENT_SCALES + 1, dtype=p.dtype, device=p.device)
        scales = scales.reshape(-1, *([1] * p.dim()))
        points = torch.cat([safe.unsqueeze(0), tight + (safe - tight) * scales], 0)
        gaps = gap(points[1:])
        gaps = torch.cat([torch.clamp(gap(safe), min=0.0).unsqueeze(0), gaps], 0)
        passes = gaps >= 0
        # passing points come first (nearest safe); take the last of that run
        run = torch.cumprod(passes.to(p.dtype), 0)
        k = (run.sum(0).long() - 1).clamp(min=0).unsqueeze(0)
        hi, g_hi = points.gather(0, k)[0], gaps.gather(0, k)[0]
        lo_k = (k + 1).clamp(max=TANGENT_SCALES)
        lo, g_lo = points.gather(0, lo_k)[0], gaps.gather(0, lo_k)[0]
        lo = torch.where(k[0] == TANGENT_SCALES, tight, lo)
        g_lo = torch.where(k[0] == TANGENT_SCALES, gap(tight), g_lo)
        done = g_lo >= 0  # the tight end passes: it is the answer
        last = torch.zeros_like(lo)  # +1: hi moved last, -1: lo moved last
        for _ in range(TANGENT_ITERATIONS):
            # g_lo < 0 <= g_hi where the search is live (elsewhere done picks tight below)
            frac = (g_hi / (g_hi - g_lo)).clamp(0.0, 1.0)
            t = hi - frac * (hi - lo)
            g_t = gap(t)
            ok = g_t >= 0
            # Illinois: an end kept twice in a row has its gap halved, so the steps cannot
            # stall against it
            g_lo = torch.where(ok & (last > 0), g_lo / 2, g_lo)
            g_hi = torch.where(~ok & (last < 0), g_hi / 2, g_hi)
            hi, g_hi = torch.where(ok, t, hi), torch.where(ok, g_t, g_hi)
            lo, g_lo = torch.where(ok, lo, t), torch.where(ok, g_lo, g_t)
            last = torch.where(ok, 1.0, -1.0)
        return torch.where(done, tight, hi)


# ---- parameters ------------------------------------------------------------------------

def rows_dot(rows: Tensor, x: Tensor) -> Tensor:
    """Per sample, the rows [B, k, n] times the vector [B, n]: [B, k] (a spec's rows, folded
    into the last layer, times that layer's input box).

    An elementwise product and a sum over n. ``torch.bmm`` (which ``einsum`` calls here) runs
    one matrix-vector product per sample on the CPU, 4-6x slower forward and backward on a
    training batch (64 x 9 x 392); the sums agree to float rounding, not bit for bit.
    """
    return (rows * x.unsqueeze(1)).sum(-1)


def bn_scale(weight: Tensor | None, running_var: Tensor, eps: float) -> Tensor:
    inv = torch.rsqrt(running_var + eps)
    return inv if weight is None else weight * inv


def bn_shift(bias: Tensor | None, running_mean: Tensor, scale: Tensor) -> Tensor:
    shift = -running_mean * scale
    return shift if bias is None else bias + shift


def avgpool_weight(channels: int, kernel: tuple[int, int], like: Tensor) -> Tensor:
    k = kernel[0] * kernel[1]
    return torch.full((channels, 1, *kernel), 1.0 / k, dtype=like.dtype, device=like.device)


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
        raise InputError(f"{where}: its input bounds are NaN (an earlier bound overflowed, "
                         f"e.g. exp of a wide interval); no sound bound exists there")
    # an infinite end is the limit of the domain (1 / (1 + s) -> 0 as s -> inf), not outside
    below = (low <= lo if open_ends else low < lo) and math.isfinite(lo)
    above = (high >= hi if open_ends else high > hi) and math.isfinite(hi)
    outside = below or above
    if outside:
        ends = "(" if open_ends else "["
        raise InputError(f"{where}: its input bounds reach [{low:.6g}, {high:.6g}], outside "
                         f"the op's domain {ends}{lo:g}, {hi:g}{')' if open_ends else ']'}; "
                         f"no sound bound exists there")
