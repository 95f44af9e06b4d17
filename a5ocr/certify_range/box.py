"""The camera parameter box of ``a5ocr certify-range`` and the fixed camera around it.

A pose is a row of ``DIMS`` = (angle in degrees, shift x in px, shift y in px, scale factor);
a box is a tensor [N, 4, 2] of (low, high) per dimension (a zero-width dimension is fixed).
``FixedCamera`` holds the other stages of ``a5ocr.acquisition.apply`` at one declared value
(noise 0, perspective identity, one blur sigma, brightness, contrast); ``acquisition_params``
turns poses into the exact parameter dict ``apply`` takes, so the certified camera is the real
one: shift, then rotation, then scale (as the perspective stage: a scaling about the centre
commutes with the rotation about it, so ``persp @ rot @ shift`` is scale . rotation . shift).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from a5ocr.acquisition import AcquisitionConfig, apply
from a5ocr.errors import A5Error, CertifyRangeError

DIMS = ("angle_deg", "shift_x_px", "shift_y_px", "scale")
ANGLE, SHIFT_X, SHIFT_Y, SCALE = range(4)


@dataclass(frozen=True)
class FixedCamera:
    """The acquisition stages held fixed while the geometry ranges over the box.

    ``blur_sigma`` (px at the run's resolution, > 0), ``brightness`` (> 0) and ``contrast``
    (>= 0) at one value; noise 0, perspective identity, saturation 1 and hue 0 (both exact
    identities on gray glyphs) are not options. ``print_scale``: the run's S (glyphs S*R px,
    poses and the sensor in R px)."""

    blur_sigma: float
    brightness: float = 1.0
    contrast: float = 1.0
    print_scale: int = 1

    def to_dict(self) -> dict:
        return {**asdict(self), "noise_std": 0.0, "perspective": "identity", "saturation": 1.0, "hue": 0.0}


@dataclass(frozen=True)
class ParamBox:
    """The full box: rotation in [-rotation, rotation] degrees, each shift in [-shift, shift]
    px, scale in [1 - scale_pct/100, 1 + scale_pct/100]."""

    rotation: float
    shift: float
    scale_pct: float = 0.0

    def tensor(self) -> torch.Tensor:
        """[4, 2] float64 (low, high) per dimension of ``DIMS``."""
        s = self.scale_pct / 100.0
        return torch.tensor([[-self.rotation, self.rotation], [-self.shift, self.shift],
                             [-self.shift, self.shift], [1.0 - s, 1.0 + s]], dtype=torch.float64)

    def to_dict(self) -> dict:
        return {"dims": list(DIMS), "box": self.tensor().tolist(), "rotation_deg": self.rotation,
                "shift_px": self.shift, "scale_pct": self.scale_pct}


def check_box(box: ParamBox, resolution: int, error: type[A5Error] = CertifyRangeError) -> None:
    """Each range finite and in its sound domain (one line, ``error``)."""
    if not 0.0 <= box.rotation <= 45.0:
        raise error(f"--rotation must be in [0, 45] degrees, got {box.rotation}")
    if not 0.0 <= box.shift <= resolution / 4:
        raise error(f"--shift must be in [0, {resolution / 4:g}] px (a quarter of the {resolution}px canvas), got {box.shift}")
    if not 0.0 <= box.scale_pct <= 50.0:
        raise error(f"--scale must be in [0, 50] percent, got {box.scale_pct}")


def check_camera(cam: FixedCamera, error: type[A5Error] = CertifyRangeError) -> None:
    if not 0.0 < cam.blur_sigma <= 10.0:  # NaN fails too
        raise error(f"--blur-sigma must be in (0, 10] px, got {cam.blur_sigma}")
    if not 0.0 < cam.brightness <= 10.0:
        raise error(f"--brightness must be in (0, 10], got {cam.brightness}")
    if not 0.0 <= cam.contrast <= 10.0:
        raise error(f"--contrast must be in [0, 10], got {cam.contrast}")


def widths(boxes: torch.Tensor) -> torch.Tensor:
    """[N, 4, 2] -> [N, 4] high - low."""
    return boxes[..., 1] - boxes[..., 0]


def volume_fraction(boxes: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """[N] the share of the full box's volume each box holds (fixed dimensions count as 1)."""
    fw = widths(full)
    live = fw > 0
    if not live.any():
        return torch.ones(boxes.shape[0], dtype=torch.float64)
    return (widths(boxes)[:, live] / fw[live]).prod(dim=1)


def corners(box: torch.Tensor) -> torch.Tensor:
    """[4, 2] -> [16, 4] the 2^4 corner poses of one box."""
    idx = torch.cartesian_prod(*[torch.arange(2)] * 4)
    return torch.stack([box[d, idx[:, d]] for d in range(4)], dim=1)


def sample_poses(box: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """[n, 4] poses in one box [4, 2] (float64): its 16 corners, then for each dimension the
    poses at its two extreme values (the others uniform), then uniform ones; n >= 16."""
    lo, hi = box[:, 0], box[:, 1]
    u = torch.rand(max(n, 16), 4, generator=generator, dtype=torch.float64)
    out = lo + (hi - lo) * u
    out[:16] = corners(box)
    row = 16
    for d in range(4):
        for end in (lo[d], hi[d]):
            if row < n:
                out[row, d] = end
                row += 1
    return out[:n]


def acquisition_params(poses: torch.Tensor, resolution: int, cam: FixedCamera) -> dict[str, torch.Tensor]:
    """Poses [n, 4] -> the parameter dict of ``a5ocr.acquisition.apply`` (float32, CPU): the
    geometry of the poses, every other stage at ``cam``'s value."""
    n, r = poses.shape[0], resolution
    p = poses.float()
    c = (r - 1) / 2.0
    start = torch.tensor([[0.0, 0.0], [r - 1.0, 0.0], [r - 1.0, r - 1.0], [0.0, r - 1.0]])
    ones = torch.ones(n)
    return {
        "shift": p[:, SHIFT_X : SHIFT_Y + 1].contiguous(),
        "angle": p[:, ANGLE].contiguous(),
        # scale s about the centre as the perspective stage: corners c + s (start - c)
        "corners": c + p[:, SCALE].view(n, 1, 1) * (start - c),
        "noise_std": torch.zeros(n),
        "noise": torch.zeros(n, 1, r, r),
        "blur_sigma": torch.full((n,), float(cam.blur_sigma)),
        "brightness": ones * cam.brightness,
        "contrast": ones * cam.contrast,
        "saturation": ones.clone(),
        "hue": torch.zeros(n),
    }


def acquire(glyphs: torch.Tensor, poses: torch.Tensor, cam: FixedCamera, cfg: AcquisitionConfig) -> torch.Tensor:
    """glyphs [n, S*R, S*R] at poses [n, 4] -> images [n, 3, R, R] (the real ``apply``)."""
    with torch.no_grad():
        return apply(glyphs.float(), acquisition_params(poses, glyphs.shape[-1] // cam.print_scale, cam), cfg)
