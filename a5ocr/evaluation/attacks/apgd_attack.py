"""Auto-PGD (Croce & Hein, ICML 2020) with CE, DLR or targeted-DLR loss, its step-size
checkpoints, and APGD-T (targeted DLR against the top non-true classes)."""

from __future__ import annotations

import math

import torch
from torch import nn

from a5ocr.evaluation.attacks.linf import (
    as_eps,
    batch_view,
    check_budget,
    check_inputs,
    default_generator,
    loss_grad,
    predict,
    project,
    random_in_ball,
    top_targets,
)
from a5ocr.evaluation.attacks.losses import LossFn, get_loss


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations ``w_j = ceil(p_j * steps)`` at which APGD checks its step size.

    p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); returned are the
    w_j with 0 < w_j < steps, increasing, without duplicates.
    """
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    out: list[int] = []
    for pj in p[1:]:
        w = math.ceil(pj * steps - 1e-9)
        if 0 < w < steps and (not out or w > out[-1]):
            out.append(w)
    return out


def _apgd_run(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: torch.Tensor,
    loss_fn: LossFn,
    steps: int,
    gen: torch.Generator,
    target: torch.Tensor | None,
    rho: float = 0.75,
    momentum: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run from a random start.

    Returns (x_adv [B, ...], success [B], x_best [B, ...], best_loss [B]) where x_adv is
    the first misclassified iterate (x where none) and x_best the highest-loss iterate.
    """
    n = x.shape[0]
    dev = x.device
    ckpts = set(apgd_checkpoints(steps))

    x_cur = random_in_ball(x, eps, gen)
    loss_cur, logits, g = loss_grad(model, x_cur, labels, loss_fn, target)
    success = logits.argmax(dim=1) != labels
    x_adv = torch.where(batch_view(success, x), x_cur, x)

    x_best, best_loss, g_best = x_cur.clone(), loss_cur.clone(), g.clone()
    x_prev = x_cur.clone()
    eta = (2.0 * eps).clone()  # [B, 1, ..., 1]
    fresh = torch.ones(n, dtype=torch.bool, device=dev)  # no momentum on the next step
    n_incr = torch.zeros(n, device=dev)
    last_ckpt = 0
    eta_last = eta.clone()
    best_last = best_loss.clone()

    for k in range(steps):
        z = project(x_cur + eta * g.sign(), x, eps)
        a = torch.where(fresh, 1.0, momentum).to(x.dtype).view_as(eta)
        x_new = project(x_cur + a * (z - x_cur) + (1.0 - a) * (x_cur - x_prev), x, eps)
        loss_new, logits, g_new = loss_grad(model, x_new, labels, loss_fn, target)

        wrong = logits.argmax(dim=1) != labels
        newly = wrong & ~success
        x_adv[newly] = x_new[newly]
        success |= wrong

        n_incr += (loss_new > loss_cur).to(n_incr.dtype)
        imp = loss_new > best_loss
        x_best[imp] = x_new[imp]
        g_best[imp] = g_new[imp]
        best_loss[imp] = loss_new[imp]

        x_prev, x_cur, g, loss_cur = x_cur, x_new, g_new, loss_new
        fresh = torch.zeros_like(fresh)

        if bool(success.all()):
            break
        if (k + 1) in ckpts:
            h = k + 1 - last_ckpt
            cond1 = n_incr < rho * h
            cond2 = (eta.view(-1) == eta_last.view(-1)) & (best_loss <= best_last)
            red = cond1 | cond2
            if bool(red.any()):
                rv = batch_view(red, eta)
                eta = torch.where(rv, eta / 2.0, eta)
                x_cur = torch.where(batch_view(red, x), x_best, x_cur)
                g = torch.where(batch_view(red, x), g_best, g)
                loss_cur = torch.where(red, best_loss, loss_cur)
                x_prev = torch.where(batch_view(red, x), x_cur, x_prev)
                fresh = red.clone()
            eta_last = eta.clone()
            best_last = best_loss.clone()
            n_incr.zero_()
            last_ckpt = k + 1
    return x_adv, success, x_best, best_loss


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float | torch.Tensor,
    loss: str | LossFn = "ce",
    steps: int = 100,
    restarts: int = 1,
    target_class: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    rho: float = 0.75,
    momentum: float = 0.75,
) -> torch.Tensor:
    """Auto-PGD (Croce & Hein 2020) in L-inf.

    Step size starts at 2*eps; the update uses momentum 0.75; at the checkpoints
    ``apgd_checkpoints(steps)`` the step size of a sample is halved, and the sample restarts
    from its best point, when (a) fewer than rho = 75% of the steps since the last
    checkpoint increased the loss, or (b) neither its step size nor its best loss changed
    since the last checkpoint.

    Args:
        x: [B, ...] in [0, 1]; labels [B]; eps: float or [B].
        loss: "ce", "dlr", "dlr-targeted" (needs target_class [B]), "margin" or callable.
        restarts: random restarts; each later one only on samples not broken yet.
    Returns:
        x_adv [B, ...] in the eps ball ∩ [0, 1]: first misclassified iterate found, else
        the highest-loss iterate (of the restart that reached the highest loss).
    """
    check_inputs(x, labels)
    x = x.detach()
    loss_fn = get_loss(loss)
    if loss == "dlr-targeted" and target_class is None:
        raise ValueError("loss='dlr-targeted' needs target_class")
    gen = default_generator(generator)
    e = as_eps(eps, x)
    out = x.clone()
    best_loss = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=x.dtype)
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(max(restarts, 1)):
        idx = (~done).nonzero().squeeze(1)
        if idx.numel() == 0 or steps <= 0:
            break
        ts = target_class[idx] if target_class is not None else None
        xa, ok, xb, bl = _apgd_run(model, x[idx], labels[idx], e[idx], loss_fn, steps, gen, ts, rho, momentum)
        take_ok = ok
        take_best = ~ok & (bl > best_loss[idx])
        out[idx[take_ok]] = xa[take_ok]
        out[idx[take_best]] = xb[take_best]
        best_loss[idx[take_best]] = bl[take_best]
        done[idx[ok]] = True
    check_budget(out, x, e)
    return out


def apgd_targeted(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float | torch.Tensor,
    n_targets: int = 9,
    steps: int = 100,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """APGD with the targeted DLR loss against each of the top ``n_targets`` non-true
    classes (ranked by clean logits), target after target, only on samples not broken.

    x [B, ...], labels [B], eps float or [B] -> x_adv [B, ...] (first misclassified point
    found; x for samples never broken).
    """
    check_inputs(x, labels)
    x = x.detach()
    gen = default_generator(generator)
    e = as_eps(eps, x)
    out = x.clone()
    if x.shape[0] == 0:
        return out
    targets = top_targets(model, x, labels, n_targets)
    done = predict(model, x) != labels
    for j in range(targets.shape[1]):
        idx = (~done).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa = apgd(
            model, x[idx], labels[idx], e[idx].reshape(-1), loss="dlr-targeted", steps=steps,
            restarts=restarts, target_class=targets[idx, j], generator=gen,
        )
        ok = predict(model, xa) != labels[idx]
        out[idx[ok]] = xa[ok]
        done[idx[ok]] = True
    check_budget(out, x, e)
    return out
