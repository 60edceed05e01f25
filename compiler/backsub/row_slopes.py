"""Relaxation parameters per bounded row (alpha-CROWN's slopes per start neuron), dense rows.

By default a back-substitution relaxes an activation with one set of lines per sample
(:class:`~.rows.BackLines`), shared by every row it pushes back: the rows of all the
neurons of the bounded node, lower and upper. alpha-CROWN instead keeps, for each bounded
neuron and side, its own slopes. :func:`row_lines` gives the rows of a back-substitution
their own parameter values where that can matter:

- **rows**: the neurons of the bounded node that are refined (``rows_needed``, e.g. its
  unstable ReLU inputs, union over the batch, as found at the first evaluation) or every row
  of the output's spec, each for its lower and its upper side;
- **columns**: the activation's neurons whose lines read its bounds (the relaxation's
  ``needs``: for ReLU the unstable ones), union over the batch at the first evaluation.

Every other row (a neuron that becomes unstable later) shares slot 0, and every other
column keeps the node's shared values, so every value is still one the relaxation allows:
sound whatever is selected. The values live in ``ctx.relax_params[KEY + "#rows"]`` as
``NAME -> [batch, 2, rows + 1, columns]`` (side, slot, column), with the layout beside them
under ``"#slots"`` (each row's slot, int64) and ``"#cols"`` (flat column indices, int64);
``"#off"`` marks a pair left shared (nothing to select, or over the memory budget).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..context import Context
from .patches import patch_gather, patch_lines
from .rows import BackLines, Ragged, back_lines, flat_neurons, relax_back, unflat_neurons

Tensor = torch.Tensor

#: live copies of each per-row value while optimising: the value, its gradient, two Adam moments
_COPIES = 4


@dataclass
class RowLines:
    """One activation's lines for one back-substituted node, per row at ``cols``.

    ``base`` holds the shared lines with zeros at ``cols`` (those columns contribute only
    through the per-row lines); ``lower``/``upper`` are the activation's input bounds at
    ``cols`` [b, m]; ``values`` maps each parameter to [b, 2, slots, m]."""

    relax: Callable
    lower: Tensor
    upper: Tensor
    values: dict[str, Tensor]
    slots: Tensor
    cols: Tensor
    base: BackLines
    #: as :attr:`PatchRowLines.ends`, the lines at ``cols``: [b, 8, m]
    ends: tuple[float, float, Tensor] | None = None

    def back(self, lam: Tensor, k: int, acc: Tensor, index: Tensor | None
             ) -> tuple[Tensor, Tensor]:
        """:func:`~.rows.relax_back` with each row's own lines at the selected columns;
        ``index`` names the rows' neurons (spec rows at the output) in the bounded node."""
        out, acc = relax_back(lam, k, self.base, acc)
        sides = lam.shape[1] // k
        if index is None:
            index = torch.arange(k, device=lam.device)
        slot = self.slots[index]
        given = {name: v[:, :sides].index_select(2, slot) for name, v in self.values.items()}
        batch, m = self.lower.shape
        sign = torch.tensor([1.0, -1.0][:sides], dtype=lam.dtype,
                            device=lam.device).reshape(1, sides, 1, 1)

        def per_row(mid: Tensor, half: Tensor) -> tuple[Tensor, Tensor]:
            shape = (batch, sides, k, m)
            return (mid.expand(shape).flatten(1, 2),
                    (half * sign).expand(shape).flatten(1, 2))

        if self.ends is not None:  # each line is the low end's plus t times the difference
            lo, hi, g = self.ends
            (value,) = given.values()
            t = (value + (value.clamp(lo, hi) - value).detach() - lo) / (hi - lo)
            g = g.unsqueeze(2).unsqueeze(3)  # [b, 8, 1, 1, m]
            a_mid, a_half = per_row(torch.addcmul(g[:, 0], t, g[:, 4]),
                                    torch.addcmul(g[:, 1], t, g[:, 5]))
            b_mid, b_half = per_row(torch.addcmul(g[:, 2], t, g[:, 6]),
                                    torch.addcmul(g[:, 3], t, g[:, 7]))
        else:
            l_at, u_at = (t.reshape(batch, 1, 1, m) for t in (self.lower, self.upper))
            a_lo, b_lo, a_hi, b_hi = self.relax(l_at, u_at, given=given)[0]
            a_mid, a_half = per_row((a_lo + a_hi) / 2, (a_lo - a_hi) / 2)
            b_mid, b_half = per_row((b_lo + b_hi) / 2, (b_lo - b_hi) / 2)
        rows = flat_neurons(lam, 2, self.base.channels_last).index_select(2, self.cols)
        mag = rows.abs()
        moved = torch.addcmul(rows * a_mid, mag, a_half)  # [b, sides * k, m]
        extra = (rows * b_mid + mag * b_half).sum(-1)
        flat = flat_neurons(out, 2, self.base.channels_last)
        flat = flat.index_add(2, self.cols, moved)
        return unflat_neurons(flat, self.base.shape, self.base.channels_last), acc + extra


def row_lines(relax: Callable, lower: Tensor, upper: Tensor, raw: tuple, shared: BackLines,
              given: dict[str, Tensor], rows_needed: Tensor | None, n_rows: int,
              ctx: Context, span: tuple[str, float, float] | None = None
              ) -> BackLines | RowLines:
    """The lines of an activation for one back-substituted node with per-row values.

    ``raw`` are the shared relaxation lines (a_lo, b_lo, a_hi, b_hi) [b, *shape] and
    ``shared`` their :func:`~.rows.back_lines`; ``given`` the pair's store in
    ``ctx.relax_params`` (filled at the first call); ``rows_needed`` the mask of the bounded
    node's neurons that are refined ([b, *node shape]; None: all ``n_rows`` rows, the spec's).
    Returns ``shared`` where the pair keeps shared values (see the module docstring);
    ``span`` as for :func:`patch_row_lines`."""
    if "#off" in given:
        return shared
    batch = lower.shape[0]
    if "#cols" not in given:
        if not _select(relax, lower, upper, given, rows_needed, n_rows, ctx):
            given["#off"] = torch.ones(())
            return shared
    cols, slots = given["#cols"], given["#slots"]
    if shared.channels_last:  # the columns in the flat order of channels-last rows
        c = shared.shape[0]
        hw = lower[0].numel() // c
        cols_flat = (cols % hw) * c + cols // hw
    else:
        cols_flat = cols
    l_at = lower.reshape(batch, -1).index_select(1, cols)
    u_at = upper.reshape(batch, -1).index_select(1, cols)
    zeroed = tuple(flat_neurons(t, 1, False).index_fill(1, cols, 0.0).reshape(t.shape)
                   for t in raw)
    base = back_lines(zeroed, ctx)
    values = {name: v for name, v in given.items() if not name.startswith("#")}
    ends = _affine_ends(relax, l_at, u_at, span, _stacked) if span is not None else None
    return RowLines(relax, l_at, u_at, values, slots, cols_flat, base, ends)


def _stacked(lines: tuple) -> Tensor:
    """Lines (a_lo, b_lo, a_hi, b_hi) [b, m] as [b, 4, m]: mid and half slope and offset."""
    a_lo, b_lo, a_hi, b_hi = lines
    return torch.stack([(a_lo + a_hi) / 2, (a_lo - a_hi) / 2, (b_lo + b_hi) / 2,
                        (b_lo - b_hi) / 2], 1)


def _select(relax: Callable, lower: Tensor, upper: Tensor, given: dict[str, Tensor],
            rows_needed: Tensor | None, n_rows: int, ctx: Context) -> bool:
    """Choose the rows and columns and store their initial values in ``given``; False when
    there is nothing to choose or the values would not fit the memory left for them."""
    batch = lower.shape[0]
    cols = relax(lower, upper, True).reshape(batch, -1).any(0).nonzero().squeeze(1)
    if rows_needed is None:
        picked = torch.arange(n_rows, device=lower.device)
    else:
        picked = rows_needed.reshape(rows_needed.shape[0], -1).any(0).nonzero().squeeze(1)
    m, r = cols.numel(), picked.numel()
    size = batch * 2 * (r + 1) * m * lower.element_size() * _COPIES
    if m == 0 or r == 0 or size > ctx.row_slope_bytes:
        return False
    ctx.row_slope_bytes -= size
    start: dict[str, Tensor] = {}
    relax(lower.reshape(batch, -1).index_select(1, cols),
          upper.reshape(batch, -1).index_select(1, cols), given=start)
    for name, value in start.items():
        given[name] = value.detach().reshape(batch, 1, 1, m).expand(
            batch, 2, r + 1, m).clone().requires_grad_(True)
    slots = torch.zeros(n_rows, dtype=torch.long, device=lower.device)
    slots[picked] = torch.arange(1, r + 1, device=lower.device)
    given["#cols"], given["#slots"] = cols, slots
    return True


# ---- patch rows (chains of convolutions): values per row over the row's window --------------

@dataclass
class PatchRowLines:
    """One activation's lines for one node bounded in patch rows, per row over its window.

    ``bounds`` stacks the activation's input bounds along channels ([b, 2C, H, W], lower
    first) and ``inside`` is a [1, C, H, W] map of ones (windows read 0 past the map's
    border, where no neuron is and the lines must add nothing); ``values`` maps each
    parameter to [b, 2, slots, C * kh * kw] (side, slot, window entry), ``slots`` each
    neuron of the bounded node to its slot, ``geom`` the windows' geometry on the map."""

    relax: Callable
    bounds: Tensor
    inside: Tensor
    values: dict[str, Tensor]
    slots: Tensor
    geom: tuple[int, ...]
    #: for one parameter whose lines are affine in it: its range and the lines at its ends as
    #: maps [b, 8C, H, W] (patch_lines at the low end, then high end minus low end)
    ends: tuple[float, float, Tensor] | None = None

    def lines(self, index: Tensor | Ragged, pos: Tensor | Ragged
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Mid slope, signed half slope (+ lower side, - upper side), mid offset and signed
        half offset at the rows' windows, each [1 or b, 2, k, D] (side, row, entry)."""
        if isinstance(index, Ragged):
            slot = self.slots[index.neuron]
            given = {name: v[index.sample, :, slot].transpose(0, 1).unsqueeze(0)
                     for name, v in self.values.items()}
        else:
            slot = self.slots[index.reshape(-1)]
            given = {name: v.index_select(2, slot) for name, v in self.values.items()}
        sign = torch.tensor([1.0, -1.0], dtype=self.bounds.dtype,
                            device=self.bounds.device).reshape(1, 2, 1, 1)
        if self.ends is not None:  # each line is the low end's plus t times the difference
            lo, hi, maps = self.ends
            (value,) = given.values()
            t = (value + (value.clamp(lo, hi) - value).detach() - lo) / (hi - lo)
            g = patch_gather(maps, self.geom, pos).unflatten(2, (8, -1)).unsqueeze(1)
            mid_a, half_a, mid_b, half_b = (torch.addcmul(g[:, :, :, i], t, g[:, :, :, 4 + i])
                                            for i in range(4))
            return mid_a, half_a * sign, mid_b, half_b * sign
        lu = patch_gather(self.bounds, self.geom, pos).unflatten(2, (2, -1))
        l_w, u_w = lu[:, :, 0].unsqueeze(1), lu[:, :, 1].unsqueeze(1)
        inside = patch_gather(self.inside, self.geom, pos).unsqueeze(1)
        a_lo, b_lo, a_hi, b_hi = self.relax(l_w, u_w, given=given)[0]
        return ((a_lo + a_hi) / 2 * inside, (a_lo - a_hi) / 2 * sign * inside,
                (b_lo + b_hi) / 2 * inside, (b_lo - b_hi) / 2 * sign * inside)

    def relax_rows(self, rows: Tensor, k: int, index: Tensor | Ragged, pos: Tensor | Ragged,
                   acc: Tensor) -> tuple[Tensor, Tensor]:
        """``patch_rows.patch_relax`` with each row's own lines."""
        a_mid, a_half, b_mid, b_half = self.lines(index, pos)
        if rows.shape[1] == k:  # one copy (before the first relaxation): both sides from it
            sides, acc = (rows, rows), acc.repeat(1, 2)
        else:
            sides = (rows[:, :k], rows[:, k:])
        outs, extras = [], []
        for s, r in enumerate(sides):
            mag = r.abs()
            outs.append(torch.addcmul(r * a_mid[:, s], mag, a_half[:, s]))
            extras.append((r * b_mid[:, s] + mag * b_half[:, s]).sum(-1))
        return torch.cat(outs, 1), acc + torch.cat(extras, 1)

    def start_rows(self, weights: Tensor, shared: tuple[Tensor, ...], centre: Tensor | None,
                   index: Tensor | Ragged, pos: Tensor | Ragged, acc: Tensor
                   ) -> tuple[Tensor, Tensor]:
        """Rows and accumulator of ``patch_rows.patch_start_relaxed`` with each row's own
        lines: ``weights`` are the rows' kernels [1 or b, k, D], ``shared`` the shared lines
        (a_mid, a_half, b_mid, b_half) at the windows, ``acc`` the shared lines' terms
        (offsets, and slope times ``centre``'s windows when given), corrected here by the
        difference of each row's lines."""
        a_mid, a_half, b_mid, b_half = self.lines(index, pos)
        mag = weights.abs()
        rows = torch.cat([torch.addcmul(weights * a_mid[:, s], mag, a_half[:, s])
                          for s in (0, 1)], 1)
        s_amid, s_ahalf, s_bmid, s_bhalf = (t.unsqueeze(1) for t in shared)
        sign = torch.tensor([1.0, -1.0], dtype=mag.dtype, device=mag.device).reshape(1, 2, 1, 1)
        d_mid, d_half = b_mid - s_bmid, b_half - sign * s_bhalf
        if centre is not None:
            c = patch_gather(centre, self.geom, pos).unsqueeze(1)
            d_mid = d_mid + (a_mid - s_amid) * c
            d_half = d_half + (a_half - sign * s_ahalf) * c
        moved = (weights.unsqueeze(1) * d_mid + mag.unsqueeze(1) * d_half).sum(-1)
        return rows, acc + moved.flatten(1)


def patch_row_lines(relax: Callable, lower: Tensor, upper: Tensor, given: dict[str, Tensor],
                    rows_needed: Tensor, grid: tuple[int, int], geom: tuple[int, ...],
                    ctx: Context, span: tuple[str, float, float] | None = None
                    ) -> PatchRowLines | None:
    """The per-row lines of an activation (input bounds ``lower``, ``upper`` [b, C, H, W])
    for a node bounded in patch rows, whose neurons lie on a ``grid`` (H, W) and whose
    windows on the activation have the geometry ``geom``; ``rows_needed`` masks the node's
    refined neurons. None where the pair keeps shared values (as :func:`row_lines`).

    ``span`` (name, low, high) of a relaxation's only parameter: where its lines at the
    middle of the range are the mean of those at the ends (to 1e-6 relative: lines affine in
    the parameter, as ReLU's lower slope), each row's lines are interpolated between the two
    ends' (:func:`_affine_ends`), which costs a gather and a multiply-add per entry instead of
    the relaxation per entry. A convex combination of sound lines is sound, so the check only
    decides which form runs, never soundness."""
    if "#off" in given:
        return None
    batch, channels = lower.shape[0], lower.shape[1]
    if "#slots" not in given:
        picked = rows_needed.reshape(batch, -1).any(0).nonzero().squeeze(1)
        r, d = picked.numel(), channels * geom[0] * geom[1]
        size = batch * 2 * (r + 1) * d * lower.element_size() * _COPIES
        if r == 0 or size > ctx.row_slope_bytes:
            given["#off"] = torch.ones(())
            return None
        ctx.row_slope_bytes -= size
        start: dict[str, Tensor] = {}
        relax(lower, upper, given=start)
        at = picked % (grid[0] * grid[1])
        for name, value in start.items():
            windows = patch_gather(value.detach(), geom, at)  # [b, r, D]
            windows = torch.cat([windows[:, :1], windows], 1)
            given[name] = windows.unsqueeze(1).expand(batch, 2, r + 1, d).clone(
                ).requires_grad_(True)
        slots = torch.zeros(rows_needed[0].numel(), dtype=torch.long, device=lower.device)
        slots[picked] = torch.arange(1, r + 1, device=lower.device)
        given["#slots"] = slots
    values = {name: v for name, v in given.items() if not name.startswith("#")}
    inside = lower.new_ones(1, *lower.shape[1:])
    ends = (_affine_ends(relax, lower, upper, span,
                         lambda lines: patch_lines(lines, tuple(lower.shape[1:])))
            if span is not None else None)
    return PatchRowLines(relax, torch.cat([lower, upper], 1), inside, values,
                         given["#slots"], geom, ends)


def _affine_ends(relax: Callable, lower: Tensor, upper: Tensor, span: tuple[str, float, float],
                 form: Callable[[tuple], Tensor]) -> tuple[float, float, Tensor] | None:
    """(low, high, lines) of :attr:`PatchRowLines.ends` when the lines are affine in the one
    parameter over its range ``span`` at these bounds (checked at the middle), else None;
    ``form`` stacks the lines (a_lo, b_lo, a_hi, b_hi) into mid and half along dim 1."""
    name, lo, hi = span
    if not hi > lo:
        return None
    maps = [form(relax(lower, upper, given={name: torch.full_like(lower, v)})[0])
            for v in (lo, (lo + hi) / 2, hi)]
    mean = (maps[0] + maps[2]) / 2
    if bool(((maps[1] - mean).abs() > 1e-6 * (1 + mean.abs())).any()):
        return None
    return lo, hi, torch.cat([maps[0], maps[2] - maps[0]], 1)
