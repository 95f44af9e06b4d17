"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020) in L-inf, as
AutoAttack's standard suite runs it: against each of the top 9 non-true classes in turn, 100
iterations, one start at x (no restart), alpha_max 0.1, eta 1.05, beta 0.9.

The attack itself is torchattacks' ``FAB`` (a port of AutoAttack's ``FABAttack_PT``, run here in
its targeted mode, one target at a time). This module only fits it to the threat model of ``linf``:

* FAB is a *minimum-norm* attack: it returns, per sample, the closest adversarial point it
  found, at whatever distance. Only points within eps count: each returned point is projected
  onto the eps ball ∩ [0, 1] and re-evaluated; a sample whose point is not misclassified there
  gets x back.
* torchattacks' FAB calls ``backward()``, which would add to the parameters' ``.grad``; it sees
  the model through ``_InputGradOnly`` (the parameters detached), so only the input gets a
  gradient. Its ``forward`` is called directly: ``Attack.__call__`` would switch the model's
  train/eval mode.
* it reseeds torch's global generator: the call runs inside ``torch.random.fork_rng``, so the
  caller's global state is left as it was (with one start, as here, no random draw is used).
* the targets are ours (``top_targets``, as APGD-T ranks them), given one at a time through
  torchattacks' targeted mode, with its budget set to 1 (every point it finds comes back);
  the per-sample eps is applied here, by the projection.
"""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn

from a5ocr.evaluation.attacks.linf import as_eps, check_budget, check_inputs, predict, project, top_targets


class _InputGradOnly(nn.Module):
    """``model`` with its parameters and buffers detached: a backward pass through it reaches
    the input only. The empty first parameter tells torchattacks the device (it reads it from
    ``next(model.parameters())``)."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__()
        self.anchor = nn.Parameter(torch.empty(0, device=device), requires_grad=False)
        self.model = model
        self.state = {k: v.detach() for k, v in chain(model.named_parameters(), model.named_buffers())}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.model, self.state, (x,))


def _fab_to(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, target: torch.Tensor, steps: int,
            alpha_max: float, eta: float, beta: float) -> torch.Tensor:
    """torchattacks' targeted FAB on x [b, ...] (all correctly classified) towards ``target`` [b]:
    per sample the closest misclassified point it found, at any distance (x where none)."""
    import torchattacks  # local: it imports torchvision (1.4 s), which only FAB-T needs

    atk = torchattacks.FAB(
        _InputGradOnly(model, x.device), norm="Linf", eps=1.0, steps=steps, n_restarts=1,
        alpha_max=alpha_max, eta=eta, beta=beta, seed=0,
    )
    atk.set_mode_targeted_by_function(lambda inputs, labels: target, quiet=True)
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda), torch.no_grad():
        return atk.forward(x, labels).to(x.dtype)


def fab_targeted(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    eps: float | torch.Tensor,
    *,
    n_targets: int = 9,
    steps: int = 100,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """FAB-T in L-inf: FAB towards the decision boundary with each of the top ``n_targets``
    non-true classes (ranked by clean logits; fewer when the model has fewer classes), target
    after target, each only on the samples not broken within eps yet. One start, at x.

    FAB returns the closest adversarial point it found at any distance; that point is
    projected onto the eps ball ∩ [0, 1] and counts where the model misclassifies it there.

    Args:
        x: [B, ...] in [0, 1]; labels [B]; eps float or [B].
        steps: FAB iterations per target.
        alpha_max, eta, beta: FAB's step bound, extrapolation and backward step (AutoAttack's values).
        generator: accepted for the suite's common interface and not used: FAB-T starts at x and
            draws nothing (deterministic).
    Returns:
        x_adv [B, ...] in the eps ball ∩ [0, 1]: the projected FAB point for samples it breaks,
        x for the others (and for samples misclassified at x or with eps = 0).
    """
    check_inputs(x, labels)
    x = x.detach()
    e = as_eps(eps, x)
    out = x.clone()
    if x.shape[0] == 0 or steps <= 0:
        return out
    targets = top_targets(model, x, labels, n_targets)
    todo = (predict(model, x) == labels) & (e.reshape(-1) > 0)
    for j in range(targets.shape[1]):
        idx = todo.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa = _fab_to(model, x[idx], labels[idx], targets[idx, j], steps, alpha_max, eta, beta)
        xa = project(xa, x[idx], e[idx])
        ok = predict(model, xa) != labels[idx]
        out[idx[ok]] = xa[ok]
        todo[idx[ok]] = False
    check_budget(out, x, e)
    return out
