"""A5/R's robustifier network R and its file (``robustifier.safetensors``, beside the
classifier it was trained for): weights and shape metadata, never pickle."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from a5ocr.errors import RobustifyError
from a5ocr.models import read_safetensors, save_module
from a5ocr.training.losses import defended

ROBUSTIFIER_FORMAT = "a5ocr-robustifier-1"


class Robustifier(nn.Module):
    """R: images x [B, C, H, W] in [0, 1] -> defended images z = clamp(x + dx_D, 0, 1), same
    shape, with dx_D = eps_D (2 sigmoid(g(x)) - 1) (``a5ocr.training.losses.defended``).

    g is a small fully convolutional net: ``depth`` 3x3 convolutions (``width`` channels, ReLU
    between) on x - 0.5. Its last convolution starts at zero, so g(x) = 0, dx_D = 0 and R is the
    identity at initialisation: training starts from "no defence". Any H, W.
    """

    def __init__(self, channels: int = 3, eps_d: float = 0.3, width: int = 32, depth: int = 4):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError("Robustifier needs depth >= 1 and width >= 1")
        self.channels, self.eps_d, self.width, self.depth = int(channels), float(eps_d), int(width), int(depth)
        layers: list[nn.Module] = []
        c_in = channels
        for _ in range(depth - 1):
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU()]
            c_in = width
        last = nn.Conv2d(c_in, channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return defended(x, self.net(x - 0.5), self.eps_d)

    def meta(self) -> dict:
        return {"channels": self.channels, "eps_d": self.eps_d, "width": self.width, "depth": self.depth}


def save_robustifier(r: Robustifier, path: Path) -> None:
    """Weights and shape metadata to safetensors (never pickle), atomically."""
    save_module(r, path, {"format": ROBUSTIFIER_FORMAT, **{k: str(v) for k, v in r.meta().items()}})


def load_robustifier(path: Path) -> Robustifier:
    """Read ``save_robustifier``'s file; ``RobustifyError`` on a missing, corrupt or foreign file."""
    path = Path(path)
    try:
        state, meta = read_safetensors(path)
    except FileNotFoundError:
        raise RobustifyError(f"robustifier file not found: {path}") from None
    except ValueError as err:
        raise RobustifyError(f"{path} is not a readable safetensors file: {err}") from None
    if meta.get("format") != ROBUSTIFIER_FORMAT:
        raise RobustifyError(f"{path} is not an a5ocr robustifier (no metadata)")
    try:
        r = Robustifier(int(meta["channels"]), float(meta["eps_d"]), int(meta["width"]), int(meta["depth"]))
        r.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as err:
        raise RobustifyError(f"{path}: robustifier does not match its metadata: {err}") from None
    return r.eval()
