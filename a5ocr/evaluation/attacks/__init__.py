"""Empirical L-inf attacks used to evaluate (empirical) robust error.

Threat model: the acquired image ``x`` in [0, 1] may be perturbed by ``dx`` with
``||dx||_inf <= eps`` and ``x + dx`` is clipped to [0, 1].  A sample counts as broken
when the model's argmax at the returned point differs from its label.

Everything here is a pure function of its arguments:

* the model is only called (forward + gradient w.r.t. the *input*, via
  ``torch.autograd.grad``, or for ``fab_targeted`` a backward pass through a view of the model
  with its parameters detached; ``square`` uses forwards only, under ``torch.no_grad()``);
  its parameters, their ``.grad`` and its train/eval mode are left untouched (the caller
  puts it in eval mode);
* every random draw comes from a ``torch.Generator``; when none is given a fresh one
  seeded with 0 is used, so results are reproducible by default.

Attacks
-------
``pgd``            L-inf PGD with random start and sign gradient (Madry et al. 2018); ``pgd_attack``.
``apgd``           Auto-PGD (Croce & Hein, ICML 2020) with CE, DLR or targeted-DLR loss; ``apgd_attack``.
``apgd_targeted``  APGD with targeted DLR against the top non-true classes; ``apgd_attack``.
``fab_targeted``   FAB-T (Croce & Hein, ICML 2020), the targeted minimum-norm boundary attack of
                   AutoAttack, through torchattacks; a point counts only within eps; ``fab``.
``square``         Square attack (Andriushchenko et al., ECCV 2020), gradient-free random
                   search with the margin loss; ``square``.
``attack``         The evaluation ensemble: "standard" is AutoAttack's standard suite (APGD-CE,
                   APGD-T, FAB-T, Square) then PGD-CE restarts, "fast" APGD-CE, APGD-T, PGD-CE,
                   run as a cascade on the samples not broken yet (as AutoAttack does); ``suite``.

``print_attack``   The physical attack on the print (||dw||_inf <= eps_print on the glyph, with the
                   image attack eps_a), by PGD through the differentiable camera with each
                   sample's own parameters; ``print_attack``.

The losses are in ``losses``, the threat model shared by all (budgets, projection, random
start, input gradient) in ``linf``.

Shapes: ``x`` is [B, ...] (typically [B, C, H, W]) in [0, 1]; ``labels`` is a LongTensor
[B]; the model maps [B, ...] to logits [B, K]; ``eps`` is a float or a tensor [B]
(one budget per sample).
"""

from a5ocr.evaluation.attacks.apgd_attack import apgd, apgd_checkpoints, apgd_targeted
from a5ocr.evaluation.attacks.fab import fab_targeted
from a5ocr.evaluation.attacks.losses import ce_loss, dlr_loss, dlr_targeted_loss, margin_loss
from a5ocr.evaluation.attacks.pgd_attack import pgd
from a5ocr.evaluation.attacks.print_attack import PrintAttackResult, pgd_print, print_attack
from a5ocr.evaluation.attacks.square import square, square_p
from a5ocr.evaluation.attacks.suite import AttackResult, attack

__all__ = [
    "AttackResult",
    "PrintAttackResult",
    "apgd",
    "apgd_checkpoints",
    "apgd_targeted",
    "attack",
    "ce_loss",
    "dlr_loss",
    "dlr_targeted_loss",
    "fab_targeted",
    "margin_loss",
    "pgd",
    "pgd_print",
    "print_attack",
    "square",
    "square_p",
]
