"""Transposed linear maps: the code that carries rows ``lam`` [B, k, *out_shape] back through
an ``affine`` node's map to [B, k, *in_shape] (``lam W``), one case per map class of
:mod:`..linear_maps`. The code may read the call's ``ctx`` (its ``compact`` flag is false
under vmap, where layouts and selections that depend on data are off)."""

from __future__ import annotations

from .. import linear_maps as lm


def transpose(m: lm.LinearMap, lam: str) -> str:
    """Code of ``lam W`` for the map ``m`` and rows named ``lam``."""
    if isinstance(m, lm.Dense):
        return f"dense_rows.dense_back(lam={lam}, weight={m.weight}, ctx=ctx)"
    if isinstance(m, lm.Conv):
        return _conv(m, lam)
    if isinstance(m, lm.Elementwise):
        return m.apply(lam) if m.scale is not None else lam
    return (f"dense_rows.linear_back(lam={lam}, fn=lambda t: {m.code.replace('{x}', 't')}, "
            f"in_shape={m.in_shape})")


def _conv(m: lm.Conv, lam: str) -> str:
    if m.uses_subpixel():
        # CPU transposed convs to 1-4 channels are slow; one forward conv with stride**2
        # sub-kernels and a pixel shuffle computes the same sums
        return (f"dense_rows.conv_transpose_subpixel(lam={lam}, weight={m.weight}, "
                f"stride={m.stride}, padding={m.padding}, out_hw={tuple(m.in_shape[1:])}, "
                f"compact=ctx.compact)")
    if m.dims == 2:
        return (f"dense_rows.conv_back(lam={lam}, weight={m.weight}, stride={m.stride}, "
                f"padding={m.padding}, output_padding={m.output_padding}, groups={m.groups}, "
                f"dilation={m.dilation}, compact=ctx.compact)")
    return (f"F.conv_transpose{m.dims}d({lam}.flatten(0, 1), {m.weight}, None, "
            f"{m.stride}, {m.padding}, {m.output_padding}, {m.groups}, "
            f"{m.dilation}).unflatten(0, {lam}.shape[:2])")
