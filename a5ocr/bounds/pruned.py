"""Pruned margin bounds: the expensive relaxation only on the k hardest margins by IBP.

A CROWN(-IBP) backward pass costs in proportion to the number of specifications it carries.
Of the K-1 margins y_label - y_j of a sample, the ones that decide the worst-case loss are the
smallest; IBP (about the cost of a forward pass) ranks them. ``pruned_margin_bounds`` runs one
IBP pass, bounds every margin by IBP, picks the k smallest IBP lower bounds per sample and
gives only those to the relaxation, reusing the same IBP pre-activation bounds (no second IBP
pass). Each returned bound is a valid lower bound of its own margin whatever was selected.
"""

from __future__ import annotations

import torch
from torch import nn

from a5ocr.bounds.engine import METHODS, _dense_margin_spec, _ibp_final, _prepare, relaxed_bounds

Tensor = torch.Tensor


def hardest_by_ibp(ibp_lb: Tensor, k: int) -> Tensor:
    """Positions [N, k] of the k smallest entries of each row of ibp_lb [N, S] (smallest first).

    Ties go to the lower position (a stable sort); with ``others`` in increasing class order
    that is the lower class index. The selection is discrete: computed on detached values."""
    return torch.sort(ibp_lb.detach(), dim=1, stable=True).indices[:, :k]


def pruned_margin_bounds(
    model: nn.Module,
    x_lower: Tensor,
    x_upper: Tensor,
    labels: Tensor,
    others: Tensor,
    method: str,
    k: int,
    *,
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
    max_memory_gib: float | None = None,
    crown_patches: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Lower bounds of the margins y_label - y_j, j in others [N, S], from one shared IBP pass.

    Returns (lb [N, k]: ``method``'s bounds of the margins others[n, pos[n]], pos [N, k]:
    positions into ``others`` of the k hardest margins by IBP (``hardest_by_ibp``), ibp_lb [N, S]:
    the IBP bounds of all S margins). 1 <= k <= S; ``method`` is any of METHODS but "ibp".
    Differentiable w.r.t. the box and the weights (the selection itself has no gradient).
    """
    if method not in METHODS or method == "ibp":
        raise ValueError(f"pruned bounds need a relaxation method (one of {', '.join(METHODS[1:])}), got {method!r}")
    if not 1 <= k <= others.shape[1]:
        raise ValueError(f"k must be in [1, {others.shape[1]}], got {k}")
    net, shapes, c, r = _prepare(model, x_lower, x_upper)
    if len(shapes[-1]) != 1:
        raise ValueError("margin specs need a flat output")
    K = shapes[-1][0]
    dtype = x_lower.dtype
    margin = (labels, others)
    boxes, pre = net.ibp_pass(c, r, stop=net._fold_start())
    ibp_lb, _ = _ibp_final(net, boxes, lambda: _dense_margin_spec(labels, others, K, dtype), shapes, False, margin)
    pos = hardest_by_ibp(ibp_lb, k)
    chosen = (labels, others.gather(1, pos))
    lb, _ = relaxed_bounds(
        net, shapes, boxes, pre, lambda: _dense_margin_spec(chosen[0], chosen[1], K, dtype), chosen, method,
        alpha_steps=alpha_steps, alpha_lr=alpha_lr, max_memory_gib=max_memory_gib, crown_patches=crown_patches,
    )
    return lb, pos, ibp_lb
