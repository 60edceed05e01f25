"""Specification matrices: linear functions of the logits that certification bounds."""

from __future__ import annotations

import torch


def margin_spec(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows e_y - e_i for every class i != y: a [batch, num_classes - 1, num_classes] matrix.

    A lower bound > 0 on every row of ``C @ f(x')`` proves that the label y wins for every x'
    in the box. Back-substitution starts from C itself, which is tighter than subtracting
    bounds on the logits.
    """
    if labels.dim() != 1:
        raise ValueError(f"margin_spec: labels must be 1-D [batch], got shape "
                         f"{tuple(labels.shape)}")
    if num_classes < 2:
        raise ValueError(f"margin_spec: need at least 2 classes, got {num_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"margin_spec: labels must lie in [0, {num_classes - 1}]")
    batch = labels.shape[0]
    eye = torch.eye(num_classes, device=labels.device)
    rows = eye[labels].unsqueeze(1) - eye.unsqueeze(0)            # [B, n, n]: row i = e_y - e_i
    keep = ~torch.nn.functional.one_hot(labels, num_classes).bool()  # drop the row i = y
    return rows[keep].reshape(batch, num_classes - 1, num_classes)


def margin_spec_full(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Like :func:`margin_spec` but keeps the zero row i = y: [batch, num_classes, num_classes].

    Convenient for losses that index margins by class.
    """
    eye = torch.eye(num_classes, device=labels.device)
    return eye[labels].unsqueeze(1) - eye.unsqueeze(0)
