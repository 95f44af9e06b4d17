"""The losses the attacks maximise: cross-entropy, CW margin, DLR and targeted DLR.

Each maps (logits [B, K], labels [B], target [B] or None) to a per-sample loss [B].
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample cross-entropy. logits [B, K], labels [B] -> [B] (to be maximised)."""
    return F.cross_entropy(logits, labels, reduction="none")


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """CW margin ``max_{i!=y} z_i - z_y`` (> 0 iff misclassified). [B, K], [B] -> [B]."""
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return others.max(dim=1).values - z_y


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Difference of Logits Ratio: ``-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12)``.

    pi sorts the logits in decreasing order.  [B, K], [B] -> [B].  With K < 3 the
    denominator is not defined and 1 is used (plain margin loss).
    """
    num = margin_loss(logits, labels)
    k = logits.shape[1]
    if k < 3:
        return num
    top = logits.topk(3, dim=1).values
    return num / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Targeted DLR: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``.

    [B, K], labels [B], target [B] -> [B].  With K < 4 the denominator is 1 (plain
    targeted margin ``z_t - z_y``): with K = 3 the substitute ``z_pi1 - z_pi3`` would make
    the loss the constant -1 whenever y = pi1 and t = pi3, a zero gradient.
    """
    if target is None:
        raise ValueError("dlr_targeted_loss needs target classes")
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    num = z_t - z_y
    if logits.shape[1] < 4:
        return num
    top = logits.topk(4, dim=1).values
    return num / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


LOSSES: dict[str, LossFn] = {
    "ce": ce_loss,
    "dlr": dlr_loss,
    "dlr-targeted": dlr_targeted_loss,
    "margin": margin_loss,
}


def get_loss(loss: str | LossFn) -> LossFn:
    """The loss named ``loss`` (a key of ``LOSSES``), or ``loss`` itself when it is callable."""
    if callable(loss):
        return loss
    try:
        return LOSSES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)}") from None
