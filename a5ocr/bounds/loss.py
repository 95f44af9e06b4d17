"""The paper's worst-case cross entropy (Eq. 2-3) of margin lower bounds, and their [B, K] layout."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def scatter_margins(lb: Tensor, others: Tensor, num_classes: int) -> Tensor:
    """Margin bounds lb [B, K-1] of the classes ``others`` [B, K-1] -> [B, K] with exact zeros
    at the label (the layout ``worst_case_cross_entropy`` takes)."""
    out = torch.zeros(lb.shape[0], num_classes, dtype=lb.dtype, device=lb.device)
    return out.scatter(1, others, lb)


def worst_case_logits(margins: Tensor) -> Tensor:
    """Worst-case logits z_j = -m_j: margins [B, K] (m_label = 0) -> [B, K]."""
    return -margins


def worst_case_cross_entropy(margins: Tensor, labels: Optional[Tensor] = None, reduction: str = "mean") -> Tensor:
    """Cross entropy of the worst-case logits -m against the label: margins [B, K] -> scalar or [B].

    E = logsumexp(-m) - (-m_label). Without ``labels`` m_label = 0 is assumed (as
    ``margin_lower_bounds`` guarantees), i.e. E = logsumexp(-m).
    ``reduction``: "mean", "sum" or "none".
    """
    z = worst_case_logits(margins)
    if labels is not None:
        return F.cross_entropy(z, labels, reduction=reduction)
    e = torch.logsumexp(z, dim=1)
    if reduction == "mean":
        return e.mean()
    if reduction == "sum":
        return e.sum()
    if reduction == "none":
        return e
    raise ValueError(f"unknown reduction {reduction!r}")
