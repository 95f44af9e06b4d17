"""Per-channel affine input normalisation, a layer the bound engine understands."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """y = (x - mean[c]) / std[c] per channel.

    Shapes: x [B, C, H, W] -> [B, C, H, W]; mean, std: C values (or one value broadcast).
    """

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float, channels: int = 3):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() == 1:
            mean_t = mean_t.expand(channels).clone()
        if std_t.numel() == 1:
            std_t = std_t.expand(channels).clone()
        if torch.any(std_t <= 0):
            raise ValueError("Normalize: std must be positive")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
