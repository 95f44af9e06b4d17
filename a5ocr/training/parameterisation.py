"""How the designed glyph change dw is parameterised: per print pixel, or on a coarser grid.

The paper's change is one free parameter per pixel, dw = eps_D (2 sigmoid(z) - 1)
(``a5ocr.training.losses.defended``). At print resolution (glyphs S times finer than the
sensor, ``a5ocr.acquisition``) a per-pixel z is free to put speckle below the sensor's pixel
size: a printer reproduces it badly and the camera averages it away. A ``coarse``
parameterisation holds z on a grid ``factor`` times coarser than the print (``factor = S``: the
sensor grid) and upsamples it smoothly (bicubic or bilinear) to the print before the same
squash, so dw is a smooth field (clean stroke edges moved, thickened or thinned), and still
|dw| <= eps_D everywhere: the bound comes from the squash, after the upsampling, and the clamp
to [0, 1] only moves a value towards w. ``tv`` adds a total-variation penalty on dw (Kornia's
``total_variation``, mean over pixels) to the training loss, for smoother changes still.

API: ``Parameterisation(kind, factor, mode, tv)`` with ``z_shape`` / ``init`` (z = 0: no
change), ``glyphs(w, z, eps_d)`` (the designed glyphs), ``change`` (dw before the clamp) and
``penalty``; ``to_dict`` / ``from_dict`` for ``config.json``.

Shape: w [..., N, N] (N the print resolution); z [..., N, N] (``pixel``) or
[..., N / factor, N / factor] (``coarse``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import kornia
import torch
import torch.nn.functional as F

from a5ocr.training.losses import defended

KINDS = ("pixel", "coarse")
MODES = ("bicubic", "bilinear")


@dataclass(frozen=True)
class Parameterisation:
    """The glyph change's free parameters.

    ``kind``: ``pixel`` (the paper's: one z per print pixel) or ``coarse`` (z on a grid
    ``factor`` times coarser, upsampled with ``mode``); ``tv``: the weight of the total-variation
    penalty on dw (0: none). ``Parameterisation()`` is the paper's.

    Example: ``p = Parameterisation("coarse", factor=4); z = p.init(w.shape); w_rob = p.glyphs(w, z, 0.5)``.
    """

    kind: str = "pixel"
    factor: int = 1
    mode: str = "bicubic"
    tv: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown parameterisation {self.kind!r} (one of: {', '.join(KINDS)})")
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 1:
            raise ValueError(f"the parameterisation's factor must be an integer of at least 1, got {self.factor!r}")
        if self.kind == "pixel" and self.factor != 1:
            raise ValueError("a pixel parameterisation has factor 1 (use kind='coarse' for a coarser grid)")
        if self.mode not in MODES:
            raise ValueError(f"unknown upsampling {self.mode!r} (one of: {', '.join(MODES)})")
        if not self.tv >= 0:  # also refuses NaN
            raise ValueError(f"the total-variation weight must be at least 0, got {self.tv!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Parameterisation":
        """The inverse of ``to_dict``; None or {} (a run before parameterisations) is the paper's."""
        return cls(**(d or {}))

    @classmethod
    def parse(cls, text: str, tv: float = 0.0) -> "Parameterisation":
        """An option's text: ``pixel``, ``coarse:F`` or ``coarse:F:MODE`` (MODE bicubic or
        bilinear), with total-variation weight ``tv``; ValueError (one line) on anything else."""
        kind, *rest = text.strip().split(":")
        if kind == "pixel" and not rest:
            return cls(tv=tv)
        if kind != "coarse" or not 1 <= len(rest) <= 2 or not rest[0].isdigit():
            raise ValueError(f"the glyph change is pixel, coarse:F or coarse:F:MODE (F an integer), got {text!r}")
        return cls("coarse", int(rest[0]), *rest[1:], tv=tv)

    def z_shape(self, shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
        """The shape of z for glyphs of ``shape`` [..., N, N]; ValueError unless ``factor`` divides N."""
        *lead, h, w = shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"glyphs of {h}x{w} px do not divide into {self.factor}x{self.factor} cells")
        return (*lead, h // self.factor, w // self.factor)

    def init(self, shape, *, device=None, dtype=torch.float32) -> torch.Tensor:
        """z = 0 (no change) for glyphs of ``shape``."""
        return torch.zeros(self.z_shape(tuple(shape)), device=device, dtype=dtype)

    def field(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """z on the print grid ``size`` (before the squash): z itself (pixel) or upsampled (coarse)."""
        if self.kind == "pixel" or tuple(z.shape[-2:]) == tuple(size):
            return z
        flat = z.reshape(-1, 1, *z.shape[-2:])
        up = F.interpolate(flat, size=tuple(size), mode=self.mode, align_corners=False)
        return up.reshape(*z.shape[:-2], *size)

    def _checked_field(self, w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if tuple(z.shape) != self.z_shape(w.shape):
            raise ValueError(f"z of shape {tuple(z.shape)} for glyphs {tuple(w.shape)}: expected {self.z_shape(w.shape)}")
        return self.field(z, w.shape[-2:])

    def glyphs(self, w: torch.Tensor, z: torch.Tensor, eps_d: float) -> torch.Tensor:
        """The designed glyphs clamp(w + eps_D (2 sigmoid(up(z)) - 1), 0, 1): |result - w| <= eps_D."""
        return defended(w, self._checked_field(w, z), eps_d)

    def change(self, w: torch.Tensor, z: torch.Tensor, eps_d: float) -> torch.Tensor:
        """dw = ``glyphs(w, z, eps_d)`` - w (what the print changes, after the clamp to [0, 1])."""
        return self.glyphs(w, z, eps_d) - w

    def penalty(self, w: torch.Tensor, z: torch.Tensor, eps_d: float) -> torch.Tensor:
        """``tv`` x the mean total variation of dw over the glyphs (a scalar; 0 when ``tv`` is 0):
        the mean absolute difference of dw between neighbouring print pixels, both directions."""
        if self.tv == 0:
            return torch.zeros((), device=z.device, dtype=z.dtype)
        dw = self.change(w, z, eps_d)
        return self.tv * kornia.losses.total_variation(dw, reduction="mean").mean()
