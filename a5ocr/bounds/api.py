"""Public entry points of the bound engine (see ``a5ocr.bounds``)."""

from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from torch import nn

from a5ocr.bounds.engine import METHODS, BoundedSequential, bounds_for

Tensor = torch.Tensor


def margin_spec(labels: Tensor, num_classes: int, dtype: Optional[torch.dtype] = None) -> Tensor:
    """Margin specification: labels [B] -> C [B, K, K], row j = e_label - e_j (row ``label`` is 0)."""
    eye = torch.eye(num_classes, device=labels.device, dtype=dtype or torch.get_default_dtype())
    return eye[labels].unsqueeze(1) - eye.unsqueeze(0)


def _other_classes(labels: Tensor, num_classes: int) -> Tensor:
    """labels [B] -> [B, K-1]: the classes other than the label, in increasing order."""
    j = torch.arange(num_classes - 1, device=labels.device).unsqueeze(0)
    return j + (j >= labels.unsqueeze(1)).long()


def _scatter_margins(lb: Tensor, others: Tensor, num_classes: int) -> Tensor:
    """lb [B, K-1] for the classes ``others`` -> [B, K] with exact zeros at the label."""
    out = torch.zeros(lb.shape[0], num_classes, dtype=lb.dtype, device=lb.device)
    return out.scatter(1, others, lb)


def _num_classes(model: nn.Module, x: Tensor) -> int:
    net = BoundedSequential(model)
    return math.prod(net.shapes(tuple(x.shape[1:]))[-1])


def compute_bounds(
    model: nn.Module,
    x_lower: Tensor,
    x_upper: Tensor,
    C: Optional[Tensor] = None,
    method: str = "crown-ibp",
    bound_upper: bool = False,
    *,
    alpha_steps: int = 20,
    alpha_lr: float = 0.1,
    max_memory_gib: float = 6.0,
) -> tuple[Tensor, Optional[Tensor]]:
    """Bounds of C . model(x) over the box x_lower <= x <= x_upper.

    Shapes: x_lower, x_upper [B, *in]; C [B, S, *out] (or [1, S, *out]); default C = identity
    over the flattened outputs (S = numel of the output). Returns (lb [B, S], ub [B, S] or None).
    ``method`` is one of ``METHODS``; alpha-crown runs ``alpha_steps`` Adam steps of size
    ``alpha_lr`` on per-spec ReLU lower slopes and is never looser than crown.
    ``max_memory_gib``: above this estimate the final CROWN pass runs in checkpointed chunks of
    samples (same result, about 1.4x the time). Differentiable w.r.t. the box and the model
    parameters.
    """
    lb, ub, _ = bounds_for(
        model, x_lower, x_upper, C, method, bound_upper,
        alpha_steps=alpha_steps, alpha_lr=alpha_lr, max_memory_gib=max_memory_gib,
    )
    return lb, ub


def _sound_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(torch.float64)


def margin_lower_bounds(
    model: nn.Module,
    x_lower: Tensor,
    x_upper: Tensor,
    labels: Tensor,
    method: str = "crown-ibp",
    *,
    sound: bool = False,
    **options,
) -> Tensor:
    """Lower bounds of y_label - y_j over the box: x_lower, x_upper [B, *in], labels [B] -> [B, K].

    Entry ``label`` is exactly 0; a sample is certified when all other entries are > 0.
    Only the K-1 non-trivial margins are bounded (C [B, K-1, K]) and scattered back.
    ``sound=True``: computed without gradients in float64 on a float64 copy of the model
    (the result is float64). ``options`` go to ``compute_bounds`` (alpha_steps, alpha_lr,
    max_memory_gib).
    """
    if sound:
        with torch.no_grad():
            m64 = _sound_copy(model)
            return margin_lower_bounds(m64, x_lower.double(), x_upper.double(), labels, method, **options)
    K = _num_classes(model, x_lower)
    others = _other_classes(labels, K)
    lb, _, _ = bounds_for(model, x_lower, x_upper, None, method, margin=(labels, others), **options)
    return _scatter_margins(lb, others, K)


def mixed_margin_lower_bounds(
    model: nn.Module, x_lower: Tensor, x_upper: Tensor, labels: Tensor, f: float, **options
) -> Tensor:
    """The training mix f * CROWN-IBP + (1 - f) * IBP of the margin lower bounds: -> [B, K].

    Both share one IBP pass; the CROWN backward pass is skipped when f <= 1e-6 (pure IBP).
    Shapes as ``margin_lower_bounds``. f: a float (or a 0-d tensor) in [0, 1].
    ``options``: ``max_memory_gib`` (see ``compute_bounds``).
    """
    K = _num_classes(model, x_lower)
    others = _other_classes(labels, K)
    margin = (labels, others)
    if float(f) <= 1e-6:
        lb, _, _ = bounds_for(model, x_lower, x_upper, None, "ibp", margin=margin, **options)
    else:
        crown, _, ibp = bounds_for(model, x_lower, x_upper, None, "crown-ibp", margin=margin, ibp_too=True, **options)
        lb = crown if float(f) >= 1.0 - 1e-6 else f * crown + (1.0 - f) * ibp
    return _scatter_margins(lb, others, K)


def _auto_chunk(model: nn.Module, x: Tensor, num_specs: int, method: str) -> int:
    """Samples per chunk so that one backward A tensor stays near 256 MiB in float64."""
    if method == "ibp":
        return max(1, x.shape[0])
    net = BoundedSequential(model)
    widest = max(math.prod(s) for s in net.shapes(tuple(x.shape[1:])))
    return max(1, (256 << 20) // (8 * num_specs * widest))


def certify(
    model: nn.Module,
    x_lower: Tensor,
    x_upper: Tensor,
    labels: Tensor,
    method: str = "crown-ibp",
    *,
    chunk: Optional[int] = None,
    **options,
) -> Tensor:
    """Certification in float64 (no gradients): x_lower, x_upper [B, *in], labels [B] -> BoolTensor [B].

    True where every margin lower bound y_label - y_j (j != label), computed in float64 on a
    float64 copy of the model, is > 0. Works in chunks of ``chunk`` samples (auto by default)
    to bound memory.
    """
    with torch.no_grad():
        m64 = _sound_copy(model)
        K = _num_classes(m64, x_lower)
        n = x_lower.shape[0]
        step = chunk or _auto_chunk(m64, x_lower, K - 1, method)
        out = []
        for s in range(0, n, step):
            xl = x_lower[s : s + step].double()
            xu = x_upper[s : s + step].double()
            lab = labels[s : s + step]
            lb = margin_lower_bounds(m64, xl, xu, lab, method, **options)
            ok = (lb > 0).scatter(1, lab.view(-1, 1), True)
            out.append(ok.all(1))
        if not out:
            return torch.zeros(0, dtype=torch.bool, device=labels.device)
        return torch.cat(out)


__all__ = [
    "METHODS",
    "margin_spec",
    "margin_lower_bounds",
    "mixed_margin_lower_bounds",
    "compute_bounds",
    "certify",
]
