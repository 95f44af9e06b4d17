"""The physical attack on the print, through the differentiable camera.

Threat (as ``a5ocr.bounds.camera``): the printed glyph w becomes w' = clip(w + dw, 0, 1),
||dw||_inf <= eps_print, acquired by the camera with the sample's fixed parameters
(``acquisition.apply``), then (eps_a > 0) x' = clip(x + dx, 0, 1), ||dx||_inf <= eps_a.

The attacks of ``a5ocr.evaluation.attacks`` take a model of the image alone and run their
stages on subsets of the batch; here every sample has its own camera parameters, so the
subsets would need the parameters too. This module runs its own PGD on (dw, dx) jointly, the
parameters indexed with the samples: sign steps of a cosine-decayed size from 2 eps / 4 (on
each budget), a random start in the box, the best point per sample kept; losses: CE, the
margin loss (max_j y_j - y_label) and the targeted margin against the top non-true classes,
as a cascade on the samples not broken yet. A point counts as broken when the float64 model
at the float64 camera's image misclassifies it (the arithmetic of the certificate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from a5ocr.acquisition import AcquisitionConfig, apply
from a5ocr.bounds.api import _sound_copy
from a5ocr.bounds.camera import take_params
from a5ocr.evaluation.attacks.linf import default_generator, top_targets, uniform

Tensor = torch.Tensor

# strength -> stages (name, loss, steps, restarts); targeted stages take n_targets targets
PRINT_STRENGTHS: dict[str, list[tuple[str, str, int, int]]] = {
    "fast": [("pgd-ce", "ce", 50, 1), ("pgd-margin", "margin", 50, 1), ("pgd-t", "targeted", 50, 1)],
    "standard": [("pgd-ce", "ce", 100, 1), ("pgd-margin", "margin", 100, 4), ("pgd-t", "targeted", 100, 2)],
}
N_TARGETS = 3


@dataclass
class PrintAttackResult:
    """w_adv [B, *glyph] printed glyphs, dx [B, 3, R, R] (zeros without eps_a), x_adv [B, 3, R, R]
    the attacked images, success [B] (float64 misclassification at x_adv), per_attack: stage ->
    samples first broken there ("clean": misclassified at dw = dx = 0)."""

    w_adv: Tensor
    dx: Tensor
    x_adv: Tensor
    success: Tensor
    per_attack: dict[str, int] = field(default_factory=dict)


def attacked_image(w_adv: Tensor, dx: Tensor, params: dict, cfg: AcquisitionConfig) -> Tensor:
    """clip(apply(w_adv) + dx, 0, 1): the image the classifier sees."""
    return (apply(w_adv, params, cfg) + dx).clamp(0.0, 1.0)


def _loss(logits: Tensor, labels: Tensor, kind: str, target: Tensor | None) -> Tensor:
    """Per-sample loss to maximise."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    if kind == "ce":
        return F.cross_entropy(logits, labels, reduction="none")
    if kind == "targeted":
        return logits.gather(1, target[:, None]).squeeze(1) - true
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return other - true


def _margin(logits: Tensor, labels: Tensor) -> Tensor:
    return _loss(logits, labels, "margin", None)


def pgd_print(
    model: nn.Module, w: Tensor, params: dict, cfg: AcquisitionConfig, labels: Tensor, eps_print: float,
    eps_a: float = 0.0, *, loss: str = "margin", steps: int = 50, restarts: int = 1, target: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """PGD on (dw, dx) maximising ``loss``: returns the best (w_adv [B, *glyph], dx [B, 3, R, R])
    by the margin loss (all samples of the batch, the parameters ``params`` of B samples)."""
    gen = default_generator(generator)
    w = w.detach()
    lo, hi = (w - eps_print).clamp(0, 1), (w + eps_print).clamp(0, 1)
    best_w, best_d = w.clone(), _no_image_change(w, params)
    best = torch.full((w.shape[0],), -math.inf, dtype=w.dtype, device=w.device)
    for _ in range(max(1, restarts)):
        wv = (w + eps_print * uniform(w.shape, w, gen)).clamp(lo, hi)
        dv = eps_a * uniform(best_d.shape, best_d, gen)
        for t in range(steps + 1):
            with torch.enable_grad():
                wv_, dv_ = wv.detach().requires_grad_(True), dv.detach().requires_grad_(True)
                logits = model(attacked_image(wv_, dv_, params, cfg))
                gw, gd = torch.autograd.grad(_loss(logits, labels, loss, target).sum(), (wv_, dv_))
            with torch.no_grad():
                m = _margin(logits, labels)
                take = m > best
                best = torch.where(take, m, best)
                best_w[take], best_d[take] = wv[take], dv[take]
                if t == steps:
                    break
                size = 0.25 * (1 + math.cos(math.pi * t / max(1, steps)))  # 2 eps / 4 decayed to 0
                wv = (wv + size * eps_print * gw.sign()).clamp(lo, hi)
                dv = (dv + size * eps_a * gd.sign()).clamp(-eps_a, eps_a)
    return best_w, best_d


def _no_image_change(w: Tensor, params: dict) -> Tensor:
    """dx = 0 [B, 3, R, R] for glyphs w [B, ...] (R the sensor's: the noise's size)."""
    return torch.zeros((w.shape[0], 3) + tuple(params["noise"].shape[-2:]), dtype=w.dtype, device=w.device)


def misclassified64(m64: nn.Module, w_adv: Tensor, dx: Tensor, params: dict, cfg: AcquisitionConfig,
                    labels: Tensor) -> Tensor:
    """The float64 model ``m64`` at the float64 camera's image of (w_adv, dx): BoolTensor [B]."""
    p64 = {k: v.double() if v.is_floating_point() else v for k, v in params.items()}
    with torch.no_grad():
        return m64(attacked_image(w_adv.double(), dx.double(), p64, cfg)).argmax(1) != labels


def print_attack(
    model: nn.Module, w: Tensor, params: dict, cfg: AcquisitionConfig, labels: Tensor, eps_print: float,
    eps_a: float = 0.0, *, strength: str = "standard", generator: torch.Generator | None = None,
) -> PrintAttackResult:
    """The cascade of ``PRINT_STRENGTHS[strength]`` on w [B, *glyph] (ink in [0, 1]), each stage
    on the samples not broken yet; the model is only called (its mode and weights untouched)."""
    if strength not in PRINT_STRENGTHS:
        raise ValueError(f"strength must be one of {sorted(PRINT_STRENGTHS)}")
    gen = default_generator(generator)
    w = w.detach()
    with torch.no_grad():
        x0 = apply(w, params, cfg)
    w_adv, dx = w.clone(), torch.zeros_like(x0)
    m64 = _sound_copy(model)  # once per call: every check below is against the same float64 model
    broken = misclassified64(m64, w, dx, params, cfg, labels)
    per = {"clean": int(broken.sum())}
    for name, kind, steps, restarts in PRINT_STRENGTHS[strength]:
        per[name] = 0
        idx0 = torch.nonzero(~broken).flatten()
        if idx0.numel() == 0 or (eps_print <= 0 and eps_a <= 0):
            continue
        tgs = [None] if kind != "targeted" else top_targets(model, x0[idx0], labels[idx0], N_TARGETS).T
        for tg in tgs:
            live = ~broken[idx0]
            idx = idx0[live]
            if idx.numel() == 0:
                break
            p = take_params(params, idx)
            wa, da = pgd_print(model, w[idx], p, cfg, labels[idx], eps_print, eps_a, loss=kind, steps=steps,
                               restarts=restarts, target=None if tg is None else tg[live], generator=gen)
            ok = misclassified64(m64, wa, da, p, cfg, labels[idx])
            keep = ok | (name == "pgd-ce")  # the CE points for the unbroken, the breaking points for all
            w_adv[idx[keep]], dx[idx[keep]] = wa[keep], da[keep]
            broken[idx[ok]] = True
            per[name] += int(ok.sum())
    with torch.no_grad():
        x_adv = attacked_image(w_adv, dx, params, cfg)
    return PrintAttackResult(w_adv=w_adv, dx=dx, x_adv=x_adv, success=broken, per_attack=per)
