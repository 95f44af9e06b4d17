"""The recipe's defence applied to test images (``defence_transform``: A5/O per image with its
label, A5/R and A5/RC through R) and what it changed (``DefenceStats``: PSNR, largest |dx_D|)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from a5ocr.robustify.config import RobustifyConfig
from a5ocr.robustify.model import Robustifier
from a5ocr.robustify.offline import offline_defence


class DefenceStats:
    """Per-class squared change and the largest |dx_D| of the defended test images."""

    def __init__(self, k: int):
        self.sse = torch.zeros(k, dtype=torch.float64)
        self.count = torch.zeros(k, dtype=torch.float64)
        self.max_abs = 0.0

    def add(self, x: torch.Tensor, z: torch.Tensor, labels: torch.Tensor) -> None:
        d = (z.double() - x.double()).cpu()
        per = (d**2).flatten(1).mean(1)
        lab = labels.cpu()
        self.sse.index_add_(0, lab, per)
        self.count.index_add_(0, lab, torch.ones_like(per))
        self.max_abs = max(self.max_abs, float(d.abs().max()) if d.numel() else 0.0)

    def psnr(self) -> torch.Tensor:
        mse = self.sse / self.count.clamp_min(1)
        return torch.where(mse > 0, -10.0 * torch.log10(mse.clamp_min(1e-300)), torch.full_like(mse, math.inf))

    def overall_psnr(self) -> float | None:
        mse = float(self.sse.sum() / max(float(self.count.sum()), 1.0))
        return None if mse <= 0 else -10.0 * math.log10(mse)


def defence_transform(recipe: str, model: nn.Module, robustifier: Robustifier | None, cfg: RobustifyConfig,
                      stats: DefenceStats | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """transform(x, labels) -> z: the recipe's defended images of a test chunk (A5/O uses the
    labels; A5/R and A5/RC do not); records the change in ``stats``."""

    def apply(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if recipe == "o":
            z = offline_defence(model, x, labels, eps_a=cfg.eps_r, eps_d=cfg.eps_d, steps=cfg.o_steps, lr=cfg.o_lr,
                                method="ibp" if cfg.train_bounds == "ibp" else "crown-ibp")
        else:
            robustifier.eval()
            with torch.no_grad():
                z = robustifier(x)
        if stats is not None:
            stats.add(x, z, labels)
        return z.detach()

    return apply
