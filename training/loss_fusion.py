"""Loss fusion: bound the robust cross-entropy with ONE back-substituted row per sample.

The margin form bounds the n - 1 margins ``m_i = f_y - f_i`` (n - 1 spec rows through the
back-substitution domain) and takes ``CE = log(1 + sum_i exp(-m_i))`` of their lower bounds.
Loss fusion (the idea auto_LiRPA trains with) bounds the worst-case cross-entropy itself. With
``d_i = f_i - f_y = -m_i``, ``CE(f(x), y) = log(1 + sum_i exp(d_i))``, and over the input box:

1. Box (cheap: its cost does not grow with rows) gives ``d_i in [l_i, u_i]``;
2. ``exp`` is convex, so on ``[l_i, u_i]`` it lies under its chord: ``exp(d_i) <= a_i d_i + b_i``;
3. ``log(c + s)`` is concave and increasing in ``s``, so it lies under its tangent at any point
   ``k = c + s0 > 0``: ``log(c + s) <= log(k) + (s + c - k) / k``;
4. hence ``CE <= const + sum_i (a_i / k) d_i`` (all weights >= 0), a single linear function of
   the logits: the row ``-sum_i (a_i / k)(e_y - e_i)``, whose maximum over the box is minus the
   lower bound the domain's program gives for the one spec row ``sum_i (a_i / k)(e_y - e_i)``.

Every step is an upper bound for every point of the input box, so the result upper-bounds the
worst-case cross-entropy for any choice of the tangent point (shift ``M`` keeps exp finite).
It is not always tighter than the margin form (steps 2-3 are linear relaxations); the measured
gap is in docs/training.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from absdsl import domains as registry
from absdsl.errors import AbsdslError

from .losses import robust_loss
from .margins import _margin_rows, other_classes, run_program

# domains whose cost grows with the number of spec rows (back-substitution): fusion pays
FUSABLE_DOMAINS = registry.names_of_kind("backsub")
# the cheapest domain (Box, first in cascade order): its margin intervals give the chords
INTERVAL_DOMAIN = registry.NAMES[0]
# methods whose loss is the robust cross-entropy on margin bounds of the input box
FUSABLE_METHODS = ("certified", "sabr", "mtl-ibp")
# the chord of exp over an interval narrower than this is replaced by the constant exp(u)
_NARROW = 1e-4
# relative slack added to each chord against rounding (a chord is exact only in real numbers)
_CHORD_SLACK = 1e-6
# where between each interval's ends the tangent of log is taken (fraction from the lower end);
# 0.9 was tighter than 0.5 and 1.0 on CNN3 at initialisation (docs/training.md)
_TANGENT_AT = 0.9


class LossFusionError(AbsdslError):
    """``loss_fusion`` asked for with a domain or a loss it cannot fuse."""


def check_fusable(domain: str, method: str) -> None:
    """Raise before training when ``loss_fusion`` cannot apply (named domain and method)."""
    if domain not in FUSABLE_DOMAINS:
        why = ("its margin bounds already give the exact worst case of the cross-entropy over "
               "the margin box, and its cost does not grow with spec rows"
               if domain in registry.names_of_kind("forward") else
               "only the built-in back-substitution domains are fused")
        raise LossFusionError(
            f"--loss-fusion: domain {domain!r} cannot be fused ({why}); use it with "
            f"{' or '.join(FUSABLE_DOMAINS)}, or drop --loss-fusion"
        )
    if method not in FUSABLE_METHODS:
        raise LossFusionError(
            f"--loss-fusion: method {method!r} has no robust cross-entropy to fuse; use it with "
            f"{', '.join(FUSABLE_METHODS)}, or drop --loss-fusion"
        )


def exp_chords(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Slope and intercept ``(a, b)`` with ``exp(t) <= a t + b`` for every t in [lo, hi].

    Narrow intervals use the constant ``exp(hi)`` (slope 0), which avoids dividing rounding
    noise by a tiny width; a relative slack covers the chord's own rounding.
    """
    e_lo, e_hi = torch.exp(lo), torch.exp(hi)
    width = hi - lo
    narrow = width < _NARROW
    slope = torch.where(narrow, torch.zeros_like(width),
                        (e_hi - e_lo) / torch.where(narrow, torch.ones_like(width), width))
    intercept = e_hi - slope * hi + _CHORD_SLACK * e_hi
    return slope, intercept


def fused_ce_upper(
    prog: Any, box_prog: Any, params: Mapping[str, torch.Tensor] | None,
    lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor, n: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, an upper bound [B] on max over the box of CE(f(x), y), and Box's margin
    lower bounds [B, n - 1] (order of ``other_classes``; CROWN-IBP's beta mixing reuses them).

    ``prog`` back-substitutes one row per sample; ``box_prog`` (Box) gives the chord intervals.
    """
    _, rows = _margin_rows(y, n, lo)  # [B, n - 1, n]: e_y - e_i
    m_lo, m_hi = run_program(box_prog, params, lo, hi, rows, upper=True)
    assert m_hi is not None
    d_lo, d_hi = -m_hi, -m_lo  # d_i = f_i - f_y
    # shift by M >= max(0, u): exp(d - M) <= 1 never overflows; CE = M + log(e^-M + sum e^(d-M))
    shift = d_hi.detach().amax(1, keepdim=True).clamp_min(0.0)
    t_lo, t_hi = d_lo - shift, d_hi - shift
    slope, intercept = exp_chords(t_lo, t_hi)
    c = torch.exp(-shift)
    # tangent point of log(c + s): the sum near the upper corner (any positive point is sound)
    t_at = t_lo + _TANGENT_AT * (t_hi - t_lo)
    k = (c + torch.exp(t_at).sum(1, keepdim=True)).clamp_min(1e-20).detach()
    alpha = slope / k  # [B, n - 1], >= 0
    row = torch.einsum("bk,bkn->bn", alpha, rows).unsqueeze(1)  # sum_i alpha_i (e_y - e_i)
    row_lower, _ = run_program(prog, params, lo, hi, row, upper=False)
    # S(d) = sum a_i (d_i - M) + b_i;  sum_i a_i d_i <= -k * row_lower
    const = (intercept - slope * shift).sum(1, keepdim=True)
    fused = shift + torch.log(k) + (const + c - k) / k - row_lower
    # Box's own worst case, CE at the upper corner of the d box, is an upper bound too
    corner = shift + torch.log(c + torch.exp(t_hi).sum(1, keepdim=True))
    return torch.minimum(fused, corner)[:, 0], m_lo


def fused_robust_loss(
    programs: Mapping[str, Any], domain: str, params: Mapping[str, torch.Tensor] | None,
    lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor, n: int, beta: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused robust loss (batch mean) and a per-sample certified flag.

    CROWN-IBP's beta mixing happens on the loss: ``(1 - beta) CE(Box margins) + beta fused``
    (an upper bound of the margin-mixed loss, since the robust CE is convex in the margins).
    A sample counts as certified when Box's margins are all positive or the fused bound is
    below log 2 (then every ``exp(d_i) < 1``, i.e. every margin is positive).
    """
    if INTERVAL_DOMAIN not in programs:
        raise LossFusionError(f"loss fusion needs the {INTERVAL_DOMAIN} program for its chord "
                              f"intervals (compile_programs with {INTERVAL_DOMAIN!r} among the "
                              f"domains)")
    mixed = registry.mixed_with(domain) is not None  # CROWN-IBP: beta mixes Box's margins in
    if mixed and beta <= 0.0:  # the mixed-in domain alone: no row to fuse
        others, rows = _margin_rows(y, n, lo)
        m_box, _ = run_program(programs[INTERVAL_DOMAIN], params, lo, hi, rows, upper=False)
        m_full = m_box.new_zeros(m_box.shape[0], n).scatter(1, others, m_box)
        return robust_loss(m_full, y), (m_box.detach() > 0).all(1)
    upper, m_box = fused_ce_upper(programs[domain], programs[INTERVAL_DOMAIN], params, lo, hi,
                                  y, n)
    loss = upper.mean()
    if mixed and beta < 1.0:
        m_full = m_box.new_zeros(m_box.shape[0], n).scatter(1, other_classes(y, n), m_box)
        loss = (1.0 - beta) * robust_loss(m_full, y) + beta * loss
    certified = (m_box.detach() > 0).all(1) | (upper.detach() < torch.log(torch.tensor(2.0)))
    return loss, certified
