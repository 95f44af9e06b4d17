"""A5/O (paper Eq. 6): the offline defence. Per image, knowing its label, the free parameters of
dx_D are optimised with RMSprop against the worst-case cross-entropy of the classifier at eps_A^R;
the best step per image is kept. Nothing is trained: a baseline, run on the test set."""

from __future__ import annotations

import math

import torch
from torch import nn

from a5ocr import bounds
from a5ocr.training.losses import attack_box, defended


def offline_defence(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, *, eps_a: float, eps_d: float, steps: int = 100,
    lr: float = 0.1, method: str = "ibp",
) -> torch.Tensor:
    """A5/O (Eq. 6): the defended images z [B, C, H, W] of x [B, C, H, W] for their ``labels`` [B].

    One free tensor per image (z-parameters, 0 = no change) minimises the worst-case
    cross-entropy of ``model`` over ||dx_A||_inf <= ``eps_a`` (``method`` bounds) with RMSprop;
    each image keeps the step with its lowest worst-case cross-entropy (step 0 = x itself).
    The model's parameters are not changed (nor their gradients).
    """
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad():  # callers may hold no_grad (the acquisitions generator yields inside it)
            return _optimise_offline(model, x, labels, eps_a, eps_d, steps, lr, method)
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def _optimise_offline(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps_a: float, eps_d: float, steps: int,
                      lr: float, method: str) -> torch.Tensor:
    theta = torch.zeros_like(x, requires_grad=True)
    opt = torch.optim.RMSprop([theta], lr=lr)
    best = x.detach().clone()
    best_loss = torch.full((x.shape[0],), math.inf, device=x.device, dtype=x.dtype)
    for step in range(steps + 1):
        z = defended(x, theta, eps_d)
        margins = bounds.margin_lower_bounds(model, *attack_box(z, eps_a), labels, method=method)
        per = bounds.worst_case_cross_entropy(margins, labels, reduction="none")
        with torch.no_grad():
            better = per < best_loss
            best[better] = z[better]
            best_loss = torch.where(better, per, best_loss)
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        per.sum().backward()
        opt.step()
    return best
