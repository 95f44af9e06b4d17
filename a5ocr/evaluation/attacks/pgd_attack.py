"""L-inf PGD with random start and sign gradient (Madry et al. 2018)."""

from __future__ import annotations

import math

import torch
from torch import nn

from a5ocr.evaluation.attacks.linf import as_eps, check_budget, check_inputs, default_generator, loss_grad, project, random_in_ball
from a5ocr.evaluation.attacks.losses import LossFn, get_loss


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float | torch.Tensor,
    steps: int = 20,
    step_size: float | torch.Tensor | None = None,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    loss: str | LossFn = "ce",
    random_start: bool = True,
    target_class: torch.Tensor | None = None,
) -> torch.Tensor:
    """L-inf PGD: ``x <- P(x + step_size * sign(grad loss))`` from a random start.

    Args:
        x: [B, ...] clean images in [0, 1]; labels: [B]; eps: float or [B].
        steps: gradient steps per restart; step_size: default ``2.5 * eps / steps``
            (float or [B]); restarts: independent random starts (each later restart
            only on the samples not broken yet); loss: "ce", "dlr", "margin",
            "dlr-targeted" (needs target_class [B]) or a callable
            ``(logits [B,K], labels [B], target) -> [B]``.
    Returns:
        x_adv [B, ...] within the eps ball ∩ [0, 1]: per sample, the first
        misclassified iterate found, else the iterate of highest loss.
    """
    check_inputs(x, labels)
    x = x.detach()
    loss_fn = get_loss(loss)
    gen = default_generator(generator)
    e = as_eps(eps, x)
    if step_size is None:
        alpha = 2.5 * e / max(steps, 1)
    else:
        alpha = as_eps(step_size, x)

    x_best = x.clone()
    best_loss = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=x.dtype)
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    for _ in range(max(restarts, 1)):
        idx = (~done).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xs, ys, es, als = x[idx], labels[idx], e[idx], alpha[idx]
        ts = target_class[idx] if target_class is not None else None
        xa = random_in_ball(xs, es, gen) if random_start else xs.clone()
        bl = torch.full((idx.numel(),), -math.inf, device=x.device, dtype=x.dtype)
        bx = xa.clone()
        ok = torch.zeros(idx.numel(), dtype=torch.bool, device=x.device)
        for it in range(steps + 1):
            if it < steps:
                lv, logits, g = loss_grad(model, xa, ys, loss_fn, ts)
            else:
                with torch.no_grad():
                    logits = model(xa)
                    lv = loss_fn(logits, ys, ts)
            wrong = logits.argmax(dim=1) != ys
            new_ok = wrong & ~ok
            better = ~ok & ~wrong & (lv > bl)
            upd = new_ok | better
            bx[upd] = xa[upd]
            bl[upd] = lv[upd]
            ok |= wrong
            if it == steps or bool(ok.all()):
                break
            xa = project(xa + als * g.sign(), xs, es)
        # merge into global best: success beats anything, else higher loss
        cur_done = done[idx]
        take = (ok & ~cur_done) | (~ok & ~cur_done & (bl > best_loss[idx]))
        tidx = idx[take]
        x_best[tidx] = bx[take]
        best_loss[tidx] = bl[take]
        done[idx[ok]] = True

    check_budget(x_best, x, e)
    return x_best
