"""The L-inf threat model shared by the attacks: per-sample budgets, the projection onto the
eps ball ∩ [0, 1], random starts from a ``torch.Generator``, the input gradient of a loss,
predictions, the target classes of the targeted attacks, and the checks of inputs and of the
returned points."""

from __future__ import annotations

import torch
from torch import nn

from a5ocr.evaluation.attacks.losses import LossFn

TOL = 1e-6  # slack allowed on the L-inf budget (float rounding of x + eps - x)


def as_eps(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
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


def project(x_new: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Projection onto {||. - x||_inf <= eps} ∩ [0, 1] (x in [0, 1] makes it non-empty)."""
    return torch.minimum(torch.maximum(x_new, x - eps), x + eps).clamp_(0.0, 1.0)


def default_generator(generator: torch.Generator | None) -> torch.Generator:
    """``generator``, or a fresh CPU one seeded with 0 (reproducible by default)."""
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(0)
    return generator


def uniform(shape: torch.Size, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """U(-1, 1) of ``shape``, drawn on the generator's device, moved to like's device."""
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return (2.0 * u - 1.0).to(like.device)


def random_in_ball(x: torch.Tensor, eps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform point of the eps ball around x [B, ...], clipped to [0, 1]."""
    return project(x + eps * uniform(x.shape, x, generator), x, eps)


def loss_grad(
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
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's class of each sample of x [B, ...]: [B]."""
    return model(x).argmax(dim=1)


def top_targets(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, n_targets: int) -> torch.Tensor:
    """[B, n] the non-true classes with the highest clean logits, decreasing."""
    with torch.no_grad():
        logits = model(x)
    logits = logits.scatter(1, labels[:, None], float("-inf"))
    n = min(n_targets, logits.shape[1] - 1)
    return logits.topk(n, dim=1).indices


def check_budget(x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor) -> None:
    """Assert that x_adv lies within eps (+ TOL) of x and in [0, 1]."""
    dev = (x_adv - x).abs().flatten(1).amax(dim=1) if x.numel() else x.new_zeros(x.shape[0])
    assert torch.all(dev <= eps.reshape(-1) + TOL), "attack left the eps ball"
    assert torch.all((x_adv >= 0) & (x_adv <= 1)), "attack left [0, 1]"


def check_inputs(x: torch.Tensor, labels: torch.Tensor) -> None:
    """ValueError unless labels is [B] for x [B, ...] and x lies in [0, 1]."""
    if labels.shape != (x.shape[0],):
        raise ValueError(f"labels must have shape [{x.shape[0]}], got {tuple(labels.shape)}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError("x must lie in [0, 1]")


def batch_view(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bool [B] -> [B, 1, ..., 1] matching like's dimensions."""
    return mask.view((-1,) + (1,) * (like.dim() - 1))
