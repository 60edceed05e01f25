"""Robust losses on margin lower bounds (see docs/training.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def robust_logits(margin_lower: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Worst-case logits from margin lower bounds.

    ``margin_lower`` is [batch, n] with entry i a lower bound on f_y - f_i (entry y is 0, as
    produced by ``prog(lo, hi, spec=margin_spec_full(y, n))``). The returned z has z_y = 0 and
    z_i = -m_i, so CE(z, y) upper-bounds the cross-entropy of every point in the box.
    """
    z = -margin_lower
    return z.scatter(1, labels.unsqueeze(1), 0.0)


def robust_loss(margin_lower: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE(z, y) with z_y = 0 and z_i = -m_i (mean over the batch)."""
    return F.cross_entropy(robust_logits(margin_lower, labels), labels)


def mixed_loss(
    natural_logits: torch.Tensor, margin_lower: torch.Tensor, labels: torch.Tensor, kappa: float
) -> torch.Tensor:
    """kappa * CE(f(x), y) + (1 - kappa) * robust loss."""
    natural = F.cross_entropy(natural_logits, labels)
    if kappa >= 1.0:
        return natural
    return kappa * natural + (1.0 - kappa) * robust_loss(margin_lower, labels)
