"""Square attack, L-inf (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): a query-based,
gradient-free random search, untargeted with the margin loss, as AutoAttack runs it.

Only model outputs are used, under ``torch.no_grad()``: the attack is immune to gradient
masking (quantised inputs, non-differentiable layers, zero or noisy gradients).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from a5ocr.evaluation.attacks.linf import as_eps, batch_view, check_budget, check_inputs, default_generator, project
from a5ocr.evaluation.attacks.losses import margin_loss

# AutoAttack's rescaled p-schedule: on the query index rescaled to a budget of 10000, p is
# halved at each of these thresholds (p_init up to 10, p_init / 2 up to 50, ...).
_P_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p(it: int, queries: int, p_init: float = 0.8) -> float:
    """Fraction p of the image the square covers at iteration ``it`` of a ``queries`` budget.

    AutoAttack's piecewise schedule rescaled to the budget: with ``i = int(it / queries *
    10000)``, p = p_init for i <= 10, p_init / 2 for 10 < i <= 50, ... halving at 10, 50,
    200, 500, 1000, 2000, 4000, 6000, 8000 down to p_init / 512 for i > 8000.
    """
    i = int(it / max(queries, 1) * 10000)
    halvings = sum(1 for t in _P_THRESHOLDS if i > t)
    return p_init / 2**halvings


def _signs(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform +-1 of ``shape`` drawn from the generator, with like's dtype and device."""
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device)
    return (2.0 * bits - 1.0).to(dtype=like.dtype, device=like.device)


def _square_mask(n: int, h: int, w: int, s: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[n, 1, h, w] bool: per sample an s x s window at a uniform position inside h x w."""
    dev = generator.device
    top = torch.randint(0, h - s + 1, (n, 1, 1, 1), generator=generator, device=dev).to(like.device)
    left = torch.randint(0, w - s + 1, (n, 1, 1, 1), generator=generator, device=dev).to(like.device)
    rows = torch.arange(h, device=like.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=like.device).view(1, 1, 1, w)
    return (rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)


@torch.no_grad()
def _query(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Margin loss [B] (to be maximised) and misclassification [B] of the model at x."""
    logits = model(x)
    return margin_loss(logits, labels), logits.argmax(dim=1) != labels


@torch.no_grad()
def _square_run(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor,
    queries: int, p_init: float, gen: torch.Generator,
) -> torch.Tensor:
    """Random search on samples x [b, C, H, W] (all correctly classified, eps [b, 1, 1, 1]).

    Returns x_best [b, C, H, W]: per sample the first misclassified point found, else the
    point of highest margin loss.  Uses at most ``queries`` model evaluations per sample.
    """
    b, c, h, w = x.shape
    # initialisation: vertical stripes of +-eps (one sign per sample, channel and column)
    x_best = project(x + eps * _signs((b, c, 1, w), x, gen), x, eps)
    best, done = _query(model, x_best, labels)
    for it in range(queries - 1):
        idx = (~done).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xs, xb, es = x[idx], x_best[idx], eps[idx]
        s = min(max(1, int(round(math.sqrt(square_p(it, queries, p_init) * h * w)))), h, w)
        mask = _square_mask(idx.numel(), h, w, s, x, gen)
        delta = 2.0 * es * _signs((idx.numel(), c, 1, 1), x, gen) * mask
        # x_best + 2 eps * sign projected: the window is set to x +- eps (then clipped to [0, 1])
        x_new = project(xb + delta, xs, es)
        loss, wrong = _query(model, x_new, labels[idx])
        take = (loss > best[idx]) | wrong
        x_best[idx] = torch.where(batch_view(take, x_new), x_new, xb)
        best[idx] = torch.where(take, loss, best[idx])
        done[idx] = wrong
    return x_best


def square(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float | torch.Tensor,
    *,
    queries: int = 5000,
    p_init: float = 0.8,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Square attack (L-inf, untargeted, margin loss), the black-box stage of AutoAttack.

    Starts from vertical stripes of +-eps; each iteration draws, per sample, an s x s
    square with s = max(1, round(sqrt(p * H * W))) (p from ``square_p``) and a sign per
    channel, sets the square to x +- eps (clipped to [0, 1]) and keeps the change only
    where the margin loss ``max_{i!=y} z_i - z_y`` improves (or the sample becomes
    misclassified).  Misclassified samples stop; the square position and signs are drawn
    per sample (as in the authors' reference code; AutoAttack shares one per batch).

    Args:
        x: [B, C, H, W] in [0, 1]; labels [B]; eps float or [B].
        queries: model evaluations per sample (the stripe start counts as one).
        p_init: initial fraction of the image covered by the square.
        generator: source of all random draws (default: seeded with 0).
    Returns:
        x_adv [B, C, H, W] in the eps ball ∩ [0, 1]: the first misclassified point found,
        else the highest-margin-loss point; x itself for samples misclassified at x (and
        for eps = 0).
    """
    check_inputs(x, labels)
    if x.dim() != 4:
        raise ValueError(f"square needs x of shape [B, C, H, W], got {tuple(x.shape)}")
    x = x.detach()
    gen = default_generator(generator)
    e = as_eps(eps, x)
    out = x.clone()
    if x.shape[0] == 0 or queries <= 0:
        return out
    _, wrong = _query(model, x, labels)
    idx = (~wrong & (e.reshape(-1) > 0)).nonzero().squeeze(1)
    if idx.numel():
        out[idx] = _square_run(model, x[idx], labels[idx], e[idx], queries, p_init, gen)
    check_budget(out, x, e)
    return out
