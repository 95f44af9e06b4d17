"""Classifiers C: 3xRxR acquired images in [0,1] -> logits over the characters; and the
safetensors weight files of every network (``save_module`` / ``read_safetensors``).

Every architecture is a plain ``nn.Sequential`` of layers the bound engine knows
(``Normalize``, ``Conv2d``, ``ReLU``, ``Flatten``, ``Linear``). Checkpoints are safetensors
(never pickle) with the architecture in their metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from a5ocr.errors import CheckpointError
from a5ocr.normalize import Normalize
from a5ocr.runio import atomic_path

# The paper's input normalisation for the fonts experiment.
MEAN, STD = 0.5, 1.0


def paper_net(resolution: int = 128, num_classes: int = 62) -> nn.Sequential:
    """The paper's fonts classifier (``reference.md``), its first Linear scaled to the resolution.

    Shapes: [B, 3, R, R] -> [B, num_classes]; R divisible by 16.
    """
    if resolution % 16:
        raise ValueError("paper_net needs a resolution divisible by 16")
    side = resolution // 16
    return nn.Sequential(
        Normalize(MEAN, STD),
        nn.Conv2d(3, 64, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(64, 32, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(32, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * side * side, 512), nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def cpu_net(resolution: int = 32, num_classes: int = 62) -> nn.Sequential:
    """The CPU default: three stride-2 convs of 32 channels (5/5/3), Linear 512, Linear K.

    At 32x32 it costs about the paper net scaled to 32x32, without the paper net's 2x2x8
    bottleneck at that size. Shapes: [B, 3, R, R] -> [B, num_classes]; R divisible by 8.
    """
    if resolution % 8:
        raise ValueError("cpu_net needs a resolution divisible by 8")
    side = resolution // 8
    return nn.Sequential(
        Normalize(MEAN, STD),
        nn.Conv2d(3, 32, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(32, 32, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * side * side, 512), nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def tiny_net(resolution: int = 16, num_classes: int = 10) -> nn.Sequential:
    """A very small net for tests: one conv, one hidden Linear. Shapes: [B, 3, R, R] -> [B, K]."""
    if resolution % 2:
        raise ValueError("tiny_net needs an even resolution")
    side = resolution // 2
    return nn.Sequential(
        Normalize(MEAN, STD),
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * side * side, 64), nn.ReLU(),
        nn.Linear(64, num_classes),
    )


ARCHITECTURES: dict[str, Callable[[int, int], nn.Sequential]] = {
    "paper": paper_net,
    "cpu": cpu_net,
    "tiny": tiny_net,
}


def build(arch: str, resolution: int, num_classes: int) -> nn.Sequential:
    """Build a classifier by name (one of ``ARCHITECTURES``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r} (one of: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES[arch](resolution, num_classes)


def save_module(module, path: Path | str, meta: dict[str, str]) -> None:
    """A module's weights (on the CPU) and string metadata to a safetensors file, atomically
    (never pickle)."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def read_safetensors(path: Path | str) -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) of a safetensors file. Raises FileNotFoundError when it is missing and
    ValueError (with the reader's reason) when it is not a readable safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(str(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(str(err)) from None


def save_classifier(model: nn.Module, path: Path, *, arch: str, resolution: int, chars: str) -> None:
    """Write weights and architecture metadata to a safetensors file, atomically."""
    save_module(model, path, {"arch": arch, "resolution": str(resolution), "chars": json.dumps(chars),
                              "format": "a5ocr-classifier-1"})


def load_classifier(path: Path) -> tuple[nn.Sequential, dict]:
    """Read a classifier written by ``save_classifier``; returns (model in eval mode, metadata).

    Raises ``CheckpointError`` with a readable message on a missing, corrupt or foreign file.
    """
    path = Path(path)
    try:
        state, meta = read_safetensors(path)
    except FileNotFoundError:
        raise CheckpointError(f"classifier file not found: {path}") from None
    except ValueError as err:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {err}") from None
    if meta.get("format") != "a5ocr-classifier-1":
        raise CheckpointError(f"{path} is a safetensors file but not an a5ocr classifier (no metadata)")
    try:
        arch, resolution, chars = meta["arch"], int(meta["resolution"]), json.loads(meta["chars"])
        model = build(arch, resolution, len(chars))
        model.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: checkpoint does not match its architecture: {err}") from None
    model.eval()
    return model, {"arch": arch, "resolution": resolution, "chars": chars}
