"""Empirical L-inf attacks used to evaluate (empirical) robust error.

Threat model: the acquired image ``x`` in [0, 1] may be perturbed by ``dx`` with
``||dx||_inf <= eps`` and ``x + dx`` is clipped to [0, 1].  A sample counts as broken
when the model's argmax at the returned point differs from its label.

Everything here is a pure function of its arguments:

* the model is only called (forward + gradient w.r.t. the *input*, via
  ``torch.autograd.grad``); its parameters, their ``.grad`` and its train/eval mode
  are left untouched (the caller puts it in eval mode);
* every random draw comes from a ``torch.Generator``; when none is given a fresh one
  seeded with 0 is used, so results are reproducible by default.

Attacks
-------
``pgd``            L-inf PGD with random start and sign gradient (Madry et al. 2018).
``apgd``           Auto-PGD (Croce & Hein, ICML 2020) with CE, DLR or targeted-DLR loss.
``apgd_targeted``  APGD with targeted DLR against the top non-true classes.
``attack``         The evaluation ensemble: APGD-CE, APGD-T, PGD-CE run as a cascade
                   on the samples not broken yet (as AutoAttack does).

Shapes: ``x`` is [B, ...] (typically [B, C, H, W]) in [0, 1]; ``labels`` is a LongTensor
[B]; the model maps [B, ...] to logits [B, K]; ``eps`` is a float or a tensor [B]
(one budget per sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "AttackResult",
    "apgd",
    "apgd_checkpoints",
    "apgd_targeted",
    "attack",
    "ce_loss",
    "dlr_loss",
    "dlr_targeted_loss",
    "margin_loss",
    "pgd",
]

_TOL = 1e-6  # slack allowed on the L-inf budget (float rounding of x + eps - x)

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


# --------------------------------------------------------------------------- losses
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


_LOSSES: dict[str, LossFn] = {
    "ce": ce_loss,
    "dlr": dlr_loss,
    "dlr-targeted": dlr_targeted_loss,
    "margin": margin_loss,
}


def _get_loss(loss: str | LossFn) -> LossFn:
    if callable(loss):
        return loss
    try:
        return _LOSSES[loss]
    except KeyError:
        raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(_LOSSES)}") from None


# --------------------------------------------------------------------------- helpers
def _as_eps(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """eps (float or [B]) -> tensor [B, 1, ..., 1] broadcastable against x [B, ...]."""
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    if e.dim() == 0:
        e = e.expand(x.shape[0])
    e = e.reshape(-1)
    if e.shape[0] != x.shape[0]:
        raise ValueError(f"eps has {e.shape[0]} values for a batch of {x.shape[0]}")
    if torch.any(e < 0) or not torch.all(torch.isfinite(e)):
        raise ValueError("eps must be finite and >= 0")
    return e.view((-1,) + (1,) * (x.dim() - 1))


def _project(x_new: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Projection onto {||. - x||_inf <= eps} ∩ [0, 1] (x in [0, 1] makes it non-empty)."""
    return torch.minimum(torch.maximum(x_new, x - eps), x + eps).clamp_(0.0, 1.0)


def _generator(generator: torch.Generator | None) -> torch.Generator:
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(0)
    return generator


def _uniform(shape: torch.Size, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """U(-1, 1) of ``shape``, drawn on the generator's device, moved to like's device."""
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return (2.0 * u - 1.0).to(like.device)


def _random_start(x: torch.Tensor, eps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform point of the eps ball around x [B, ...], clipped to [0, 1]."""
    return _project(x + eps * _uniform(x.shape, x, generator), x, eps)


def _loss_grad(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn, target: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample loss [B], logits [B, K] and d loss / d x [B, ...] (input gradient only)."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        loss = loss_fn(logits, labels, target)
        if loss.requires_grad:
            (g,) = torch.autograd.grad(loss.sum(), xr, allow_unused=True)
        else:
            g = None
    if g is None:
        g = torch.zeros_like(x)
    return loss.detach(), logits.detach(), g.detach()


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).argmax(dim=1)


def _check_budget(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> None:
    dev = (x_adv - x).abs().flatten(1).amax(dim=1) if x.numel() else x.new_zeros(x.shape[0])
    assert torch.all(dev <= eps.reshape(-1) + _TOL), "attack left the eps ball"
    assert torch.all((x_adv >= 0) & (x_adv <= 1)), "attack left [0, 1]"


def _check_inputs(x: torch.Tensor, labels: torch.Tensor) -> None:
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape [{x.shape[0]}], got {tuple(labels.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("x must lie in [0, 1]")


# --------------------------------------------------------------------------- PGD
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
    _check_inputs(x, labels)
    x = x.detach()
    loss_fn = _get_loss(loss)
    gen = _generator(generator)
    e = _as_eps(eps, x)
    if step_size is None:
        alpha = 2.5 * e / max(steps, 1)
    else:
        alpha = _as_eps(step_size, x)

    x_best = x.clone()
    best_loss = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=x.dtype)
    done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

    for _ in range(max(restarts, 1)):
        idx = (~done).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xs, ys, es, als = x[idx], labels[idx], e[idx], alpha[idx]
        ts = target_class[idx] if target_class is not None else None
        xa = _random_start(xs, es, gen) if random_start else xs.clone()
        bl = torch.full((idx.numel(),), -math.inf, device=x.device, dtype=x.dtype)
        bx = xa.clone()
        ok = torch.zeros(idx.numel(), dtype=torch.bool, device=x.device)
        for it in range(steps + 1):
            if it < steps:
                lv, logits, g = _loss_grad(model, xa, ys, loss_fn, ts)
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
            xa = _project(xa + als * g.sign(), xs, es)
        # merge into global best: success beats anything, else higher loss
        cur_done = done[idx]
        take = (ok & ~cur_done) | (~ok & ~cur_done & (bl > best_loss[idx]))
        tidx = idx[take]
        x_best[tidx] = bx[take]
        best_loss[tidx] = bl[take]
        done[idx[ok]] = True

    _check_budget(x_best, x, e)
    return x_best


# --------------------------------------------------------------------------- APGD
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

    x_cur = _random_start(x, eps, gen)
    loss_cur, logits, g = _loss_grad(model, x_cur, labels, loss_fn, target)
    success = logits.argmax(dim=1) != labels
    x_adv = torch.where(_bview(success, x), x_cur, x)

    x_best, best_loss, g_best = x_cur.clone(), loss_cur.clone(), g.clone()
    x_prev = x_cur.clone()
    eta = (2.0 * eps).clone()  # [B, 1, ..., 1]
    fresh = torch.ones(n, dtype=torch.bool, device=dev)  # no momentum on the next step
    n_incr = torch.zeros(n, device=dev)
    last_ckpt = 0
    eta_last = eta.clone()
    best_last = best_loss.clone()

    for k in range(steps):
        z = _project(x_cur + eta * g.sign(), x, eps)
        a = torch.where(fresh, 1.0, momentum).to(x.dtype).view_as(eta)
        x_new = _project(x_cur + a * (z - x_cur) + (1.0 - a) * (x_cur - x_prev), x, eps)
        loss_new, logits, g_new = _loss_grad(model, x_new, labels, loss_fn, target)

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
                rv = _bview(red, eta)
                eta = torch.where(rv, eta / 2.0, eta)
                x_cur = torch.where(_bview(red, x), x_best, x_cur)
                g = torch.where(_bview(red, x), g_best, g)
                loss_cur = torch.where(red, best_loss, loss_cur)
                x_prev = torch.where(_bview(red, x), x_cur, x_prev)
                fresh = red.clone()
            eta_last = eta.clone()
            best_last = best_loss.clone()
            n_incr.zero_()
            last_ckpt = k + 1
    return x_adv, success, x_best, best_loss


def _bview(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bool [B] -> [B, 1, ..., 1] matching like's dimensions."""
    return mask.view((-1,) + (1,) * (like.dim() - 1))


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
    _check_inputs(x, labels)
    x = x.detach()
    loss_fn = _get_loss(loss)
    if loss == "dlr-targeted" and target_class is None:
        raise ValueError("loss='dlr-targeted' needs target_class")
    gen = _generator(generator)
    e = _as_eps(eps, x)
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
    _check_budget(out, x, e)
    return out


def _top_targets(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, n_targets: int) -> torch.Tensor:
    """[B, n] the non-true classes with the highest clean logits, decreasing."""
    with torch.no_grad():
        logits = model(x)
    logits = logits.scatter(1, labels[:, None], float("-inf"))
    n = min(n_targets, logits.shape[1] - 1)
    return logits.topk(n, dim=1).indices


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
    _check_inputs(x, labels)
    x = x.detach()
    gen = _generator(generator)
    e = _as_eps(eps, x)
    out = x.clone()
    if x.shape[0] == 0:
        return out
    targets = _top_targets(model, x, labels, n_targets)
    done = _predict(model, x) != labels
    for j in range(targets.shape[1]):
        idx = (~done).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa = apgd(
            model, x[idx], labels[idx], e[idx].reshape(-1), loss="dlr-targeted", steps=steps,
            restarts=restarts, target_class=targets[idx, j], generator=gen,
        )
        ok = _predict(model, xa) != labels[idx]
        out[idx[ok]] = xa[ok]
        done[idx[ok]] = True
    _check_budget(out, x, e)
    return out


# --------------------------------------------------------------------------- ensemble
@dataclass
class AttackResult:
    """Result of ``attack``.

    x_adv: [B, ...] the returned points (within eps of x, in [0, 1]).
    success: BoolTensor [B], model(x_adv).argmax != label (includes clean errors).
    per_attack: name -> number of samples first broken by that stage ("clean" = clean
        misclassifications); the values sum to success.sum().
    clean_wrong: BoolTensor [B], misclassified at x itself.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    per_attack: dict[str, int] = field(default_factory=dict)
    clean_wrong: torch.Tensor | None = None

    @property
    def error(self) -> float:
        """Empirical robust error (fraction of successes)."""
        return float(self.success.float().mean()) if self.success.numel() else 0.0


# stage name -> (kind, kwargs)
_STRENGTHS: dict[str, list[tuple[str, str, dict]]] = {
    "fast": [
        ("apgd-ce", "apgd", dict(loss="ce", steps=50, restarts=1)),
        ("apgd-t", "apgd-t", dict(n_targets=3, steps=50, restarts=1)),
        ("pgd-ce", "pgd", dict(loss="ce", steps=20, restarts=1)),
    ],
    "standard": [
        ("apgd-ce", "apgd", dict(loss="ce", steps=100, restarts=1)),
        ("apgd-t", "apgd-t", dict(n_targets=9, steps=100, restarts=1)),
        ("pgd-ce", "pgd", dict(loss="ce", steps=100, restarts=5)),
    ],
}


def attack(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float | torch.Tensor,
    *,
    strength: str = "standard",
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> AttackResult:
    """Evaluation ensemble, cascaded like AutoAttack: APGD-CE, then APGD-T (targeted DLR
    on the top non-true classes), then PGD-CE with restarts, each run only on the samples
    that are correctly classified and not broken by an earlier stage.

    strength "standard": APGD-CE 100 steps; APGD-T 9 targets x 100 steps; PGD-CE
    100 steps x 5 restarts.  "fast": APGD-CE 50; APGD-T 3 x 50; PGD-CE 20 x 1.

    Args:
        model: logits model, in the mode the caller wants (eval); not modified.
        x: [B, ...] in [0, 1]; labels [B]; eps float or [B] (L-inf on x).
        generator: source of all random draws (default: seeded with 0).
        batch_size: process the batch in chunks of this size (None: all at once).
    Returns:
        AttackResult; ``success`` is the model's actual prediction at ``x_adv`` (evaluated
        after the final clamp).  Unbroken samples get the APGD-CE highest-loss point.
    """
    if strength not in _STRENGTHS:
        raise ValueError(f"strength must be one of {sorted(_STRENGTHS)}")
    _check_inputs(x, labels)
    x = x.detach()
    gen = _generator(generator)
    e = _as_eps(eps, x)
    n = x.shape[0]
    bs = n if not batch_size else batch_size
    names = ["clean"] + [st[0] for st in _STRENGTHS[strength]]
    x_adv = x.clone()
    stage = torch.full((n,), -1, dtype=torch.long, device=x.device)  # index into names
    for s in range(0, n, max(bs, 1)):
        sl = slice(s, min(s + bs, n))
        x_adv[sl], stage[sl] = _attack_chunk(model, x[sl], labels[sl], e[sl], strength, gen)

    # final clamp (a no-op inside the checked budget) and honest re-evaluation
    x_adv = _project(x_adv, x, e)
    _check_budget(x_adv, x, e)
    success = torch.zeros(n, dtype=torch.bool, device=x.device)
    clean_wrong = torch.zeros(n, dtype=torch.bool, device=x.device)
    for s in range(0, n, max(bs, 1)):
        sl = slice(s, min(s + bs, n))
        success[sl] = _predict(model, x_adv[sl]) != labels[sl]
        clean_wrong[sl] = _predict(model, x[sl]) != labels[sl]
    # per-stage counts describe the returned points: a stage's success that the final
    # evaluation does not confirm (numerical ties across batch sizes) is not counted, and a
    # success at an unbroken sample's point is charged to the stage that produced it.
    stage = torch.where(clean_wrong, 0, stage)
    stage = torch.where(success & (stage < 0), 1, stage)
    per_attack = {k: int(((stage == i) & success).sum()) for i, k in enumerate(names)}
    return AttackResult(x_adv=x_adv, success=success, per_attack=per_attack, clean_wrong=clean_wrong)


def _attack_chunk(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, e: torch.Tensor, strength: str, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cascade on one chunk. x [b, ...], labels [b], e [b, 1, ..., 1].

    Returns x_adv [b, ...] and the stage [b] (0 = clean, i = i-th attack, -1 = unbroken).
    """
    x_adv = x.clone()
    broken = _predict(model, x) != labels
    stage = torch.where(broken, 0, -1)
    for i, (name, kind, kw) in enumerate(_STRENGTHS[strength], start=1):
        # samples with eps = 0 cannot be attacked
        idx = (~broken & (e.reshape(-1) > 0)).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xs, ys, es = x[idx], labels[idx], e[idx].reshape(-1)
        if kind == "apgd":
            xa = apgd(model, xs, ys, es, generator=gen, **kw)
        elif kind == "apgd-t":
            xa = apgd_targeted(model, xs, ys, es, generator=gen, **kw)
        elif kind == "pgd":
            xa = pgd(model, xs, ys, es, generator=gen, **kw)
        else:  # pragma: no cover
            raise AssertionError(kind)
        _check_budget(xa, xs, es)
        ok = _predict(model, xa) != ys
        if i == 1:
            x_adv[idx] = xa  # highest-loss points for those not broken
        else:
            x_adv[idx[ok]] = xa[ok]
        broken[idx[ok]] = True
        stage[idx[ok]] = i
    return x_adv, stage
