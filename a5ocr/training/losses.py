"""The A5 training loss: clean cross-entropy mixed with the worst-case cross-entropy.

loss = f * CE(C(x), y) + (1 - f) * E(x), with E the paper's worst-case cross-entropy
(Eq. 2-3, ``a5ocr.bounds.worst_case_cross_entropy``) of the margin lower bounds over
||dx||_inf <= eps, and f from the eps schedule. With a ``PrintBox`` the bounds are over the
joint threat: the print w + dw, ||dw||_inf <= eps_print, through each sample's camera, then
||dx||_inf <= eps (``a5ocr.bounds.camera_margin_lower_bounds``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from a5ocr import bounds
from a5ocr.acquisition import AcquisitionConfig


def defended(x: torch.Tensor, z: torch.Tensor, eps_d: float) -> torch.Tensor:
    """The paper's defensive change (Eq. 4-5): clamp(x + eps_D (2 sigmoid(z) - 1), 0, 1).

    x, z: same shape (glyph ink [K, R, R] or images [B, C, H, W]; x in [0, 1]); z = 0 is no
    change. |result - x| <= eps_D everywhere: the change is bounded by eps_D before the clamp,
    and clamping to [0, 1] only moves a value towards x, which lies in [0, 1]."""
    return (x + eps_d * (2.0 * torch.sigmoid(z) - 1.0)).clamp(0.0, 1.0)


def attack_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The L-inf ball of radius eps around x, clipped to the pixel range [0, 1]. Shapes: x -> (x_L, x_U)."""
    return (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)


@dataclass
class PrintBox:
    """The print threat of a batch: the glyphs w [B, R, R] as printed (x = acquisition of w with
    ``params``, the camera ``camera``) and the budget eps_print on w."""

    w: torch.Tensor
    params: dict[str, torch.Tensor]
    camera: AcquisitionConfig
    eps_print: float


def a5_loss(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    f: float,
    train_bounds: str = "mixed",
    crown_k: int | None = None,
    printed: PrintBox | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The mixed loss on a batch x [B, 3, R, R], labels [B].

    ``train_bounds``: "mixed" (lb = f * CROWN-IBP + (1 - f) * IBP, as the paper) or a bound method.
    ``crown_k``: the relaxation (CROWN-IBP, ...) only on the k hardest margins by IBP per sample,
    IBP on the others (``bounds.robust_margins``); None = on every margin. ``printed``: the
    worst case over the print box too (x must be the acquisition of ``printed.w``).
    Returns (loss, stats) with stats["logits"] [B, K] and stats["margins"] [B, K] (detached; None
    at eps 0).
    """
    logits = model(x)
    ce = F.cross_entropy(logits, labels)
    if eps <= 0 or f >= 1.0:
        return ce, {"logits": logits, "margins": None, "ce": ce.detach(), "wce": None}
    if train_bounds not in ("mixed", *bounds.METHODS):
        raise ValueError(f"unknown training bounds {train_bounds!r}")
    method, mix = ("crown-ibp", f) if train_bounds == "mixed" else (train_bounds, None)
    if printed is not None and printed.eps_print > 0:
        margins = bounds.camera_margin_lower_bounds(model, printed.w, printed.params, printed.camera, labels,
                                                    printed.eps_print, eps, method, f=mix, k=crown_k)
        wce, margins = bounds.worst_case_cross_entropy(margins, labels), margins.detach()
    else:
        # the margins come back detached: a crown-ibp pass over the memory budget is
        # differentiated chunk by chunk (``bounds.robust_loss_and_margins``)
        xl, xu = attack_box(x, eps)
        wce, margins = bounds.robust_loss_and_margins(model, xl, xu, labels, method, f=mix, k=crown_k)
    loss = f * ce + (1.0 - f) * wce
    return loss, {"logits": logits, "margins": margins, "ce": ce.detach(), "wce": wce.detach()}
