"""The evaluation ensemble ``attack``: AutoAttack's standard suite (APGD-CE, APGD-T, FAB-T,
Square) then PGD-CE restarts, run as a cascade on the samples not broken yet (as AutoAttack does),
in chunks, with the honest re-evaluation of the points."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from a5ocr.evaluation.attacks.apgd_attack import apgd, apgd_targeted
from a5ocr.evaluation.attacks.fab import fab_targeted
from a5ocr.evaluation.attacks.linf import as_eps, check_budget, check_inputs, default_generator, predict, project
from a5ocr.evaluation.attacks.pgd_attack import pgd
from a5ocr.evaluation.attacks.square import square


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


# kind -> attack: each is called as f(model, x, labels, eps [b], generator=..., **kwargs)
KINDS = {"apgd": apgd, "apgd-t": apgd_targeted, "fab-t": fab_targeted, "square": square, "pgd": pgd}

# strength -> stages (name, kind, kwargs), run in this order
STRENGTHS: dict[str, list[tuple[str, str, dict]]] = {
    "fast": [
        ("apgd-ce", "apgd", dict(loss="ce", steps=50, restarts=1)),
        ("apgd-t", "apgd-t", dict(n_targets=3, steps=50, restarts=1)),
        ("pgd-ce", "pgd", dict(loss="ce", steps=20, restarts=1)),
    ],
    "standard": [
        ("apgd-ce", "apgd", dict(loss="ce", steps=100, restarts=1)),
        ("apgd-t", "apgd-t", dict(n_targets=9, steps=100, restarts=1)),
        ("fab-t", "fab-t", dict(n_targets=9, steps=100)),
        ("square", "square", dict(queries=5000)),
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
    on_progress: Callable[[int, int], None] | None = None,
) -> AttackResult:
    """Evaluation ensemble, cascaded like AutoAttack: each stage runs only on the samples
    that are correctly classified and not broken by an earlier stage.

    strength "standard", AutoAttack's standard suite then PGD: APGD-CE 100 steps; APGD-T
    (targeted DLR) 9 targets x 100 steps; FAB-T 9 targets x 100 iterations (a point counts
    only within eps); Square 5000 queries (gradient-free); PGD-CE 100 steps x 5 restarts.
    "fast": APGD-CE 50; APGD-T 3 x 50; PGD-CE 20 x 1.

    Stage by stage over the whole batch (as AutoAttack does): a stage gathers every survivor of
    the earlier stages, then runs on them in chunks of ``batch_size``. The late stages (FAB-T,
    Square) cost per call, not per sample (Square's 5000 queries are 5000 forward passes of
    whatever is left), so running them once on all survivors instead of once per chunk is
    what makes the standard suite affordable on thousands of samples.

    Args:
        model: logits model, in the mode the caller wants (eval); not modified.
        x: [B, ...] in [0, 1] ([B, C, H, W] for "standard": Square needs images);
            labels [B]; eps float or [B] (L-inf on x).
        generator: source of all random draws (default: seeded with 0).
        batch_size: process each stage in chunks of this size (None: all at once).
        on_progress: ``on_progress(done, total)`` after every chunk; ``total`` = stages x B,
            a stage counts B when it ends (its survivors are fewer than B).
    Returns:
        AttackResult; ``success`` is the model's actual prediction at ``x_adv`` (evaluated
        after the final clamp).  Unbroken samples get the APGD-CE highest-loss point.
    """
    if strength not in STRENGTHS:
        raise ValueError(f"strength must be one of {sorted(STRENGTHS)}")
    check_inputs(x, labels)
    x = x.detach()
    gen = default_generator(generator)
    e = as_eps(eps, x)
    n = x.shape[0]
    bs = max(n if not batch_size else batch_size, 1)
    names = ["clean"] + [st[0] for st in STRENGTHS[strength]]
    x_adv, stage = _cascade(model, x, labels, e, strength, gen, bs, on_progress or (lambda done, total: None))

    # final clamp (a no-op inside the checked budget) and honest re-evaluation
    x_adv = project(x_adv, x, e)
    check_budget(x_adv, x, e)
    success = torch.zeros(n, dtype=torch.bool, device=x.device)
    clean_wrong = torch.zeros(n, dtype=torch.bool, device=x.device)
    for s in range(0, n, bs):
        sl = slice(s, min(s + bs, n))
        success[sl] = predict(model, x_adv[sl]) != labels[sl]
        clean_wrong[sl] = predict(model, x[sl]) != labels[sl]
    # per-stage counts describe the returned points: a stage's success that the final
    # evaluation does not confirm (numerical ties across batch sizes) is not counted, and a
    # success at an unbroken sample's point is charged to the stage that produced it.
    stage = torch.where(clean_wrong, 0, stage)
    stage = torch.where(success & (stage < 0), 1, stage)
    per_attack = {k: int(((stage == i) & success).sum()) for i, k in enumerate(names)}
    return AttackResult(x_adv=x_adv, success=success, per_attack=per_attack, clean_wrong=clean_wrong)


def _cascade(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, e: torch.Tensor, strength: str, gen: torch.Generator,
    bs: int, on_progress: Callable[[int, int], None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The stages in order, each on all survivors in chunks of ``bs``. x [B, ...], labels [B],
    e [B, 1, ..., 1]. Returns x_adv [B, ...] and the stage [B] (0 = clean, i = i-th attack,
    -1 = unbroken)."""
    n = x.shape[0]
    stages = STRENGTHS[strength]
    x_adv = x.clone()
    broken = torch.zeros(n, dtype=torch.bool, device=x.device)
    for s in range(0, n, bs):
        broken[s : s + bs] = predict(model, x[s : s + bs]) != labels[s : s + bs]
    stage = torch.where(broken, 0, -1)
    for i, (name, kind, kw) in enumerate(stages, start=1):
        # samples with eps = 0 cannot be attacked
        idx = (~broken & (e.reshape(-1) > 0)).nonzero().squeeze(1)
        for s in range(0, idx.numel(), bs):
            j = idx[s : s + bs]
            xs, ys, es = x[j], labels[j], e[j].reshape(-1)
            xa = KINDS[kind](model, xs, ys, es, generator=gen, **kw)
            check_budget(xa, xs, es)
            ok = predict(model, xa) != ys
            if i == 1:
                x_adv[j] = xa  # highest-loss points for those not broken
            else:
                x_adv[j[ok]] = xa[ok]
            broken[j[ok]] = True
            stage[j[ok]] = i
            on_progress((i - 1) * n + min(s + bs, idx.numel()) * n // max(idx.numel(), 1), len(stages) * n)
        on_progress(i * n, len(stages) * n)
    return x_adv, stage
