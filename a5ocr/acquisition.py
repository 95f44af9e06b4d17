"""The acquisition model A: a printed glyph w -> the random image x a camera or scanner sees.

The paper's camera (``reference.md``), differentiable w.r.t. the glyph, built on Kornia's
functional ops, with every random draw taken from a ``torch.Generator`` so that a seed
replays the same acquisitions:

1. shift (random crop back to R after zero padding; continuous, up to ``pad`` px),
2. rotation up to +-``degrees``, 3. perspective (corner offsets up to ``distortion`` of the
half-size, applied with probability ``perspective_p``, 0.99 as in the authors' code) -- 1-3 composed into one homography and
resampled once (bilinear, fill 0 = paper);
4. x = 1 - w' + N(0, s^2), s = noise_min + (noise_max - noise_min) U(0,1);
5. replicate to 3 channels; 6. Gaussian blur (kernel ``blur_kernel``, sigma in ``blur_sigma``);
7. colour jitter (brightness, contrast, saturation, hue); 8. clamp to [0, 1].

Pixel sizes (padding, kernel, sigma) are given at 128x128 and scaled to the resolution.
Functional core: ``sample_params``, ``affine`` (steps 1-7 before the clamp) and ``apply``; ``Acquisition`` is the ``nn.Module`` wrapper.

Print resolution apart from sensor resolution: the glyph w may be printed on a finer grid than
the sensor's, S*R x S*R (S an integer, the *print scale*; R the sensor resolution, the size of
``params["noise"]``). The parameters stay in sensor pixels; steps 1-3 then run at the print
resolution (the same homography, its pixel units rescaled: ``print_homography``) and the
warped print is box-filtered S x S onto the sensor grid (``sensor_integrate``): each sensor
pixel is the mean of the S^2 print samples it covers, i.e. the area integral of the warped
print at S^2 samples per sensor pixel, so detail finer than the sensor averages out instead of
aliasing. Steps 4-8 run at R as before. S = 1 is exactly the single-grid camera.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import kornia
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class AcquisitionConfig:
    """Ranges of the random camera, in the paper's units at 128x128 (scaled to ``resolution``)."""

    pad: float = 5.0
    degrees: float = 5.0
    distortion: float = 0.25
    perspective_p: float = 0.99  # the authors' code: RandomPerspective(0.25, p=0.99) (reference.md)
    noise_min: float = 0.001
    noise_max: float = 0.1
    blur_kernel: int = 9
    blur_sigma: tuple[float, float] = (0.01, 1.0)
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AcquisitionConfig":
        """The inverse of ``to_dict`` (JSON turns the blur_sigma pair into a list); missing keys
        take their defaults. Raises TypeError / ValueError on unknown keys or bad values."""
        d = dict(d)
        if "blur_sigma" in d:
            d["blur_sigma"] = tuple(float(v) for v in d["blur_sigma"])
        return cls(**d)

    def scaled(self, resolution: int) -> "AcquisitionConfig":
        """Pixel sizes scaled from 128x128 to ``resolution`` (kernel kept odd, at least 3)."""
        s = resolution / 128.0
        kernel = max(3, int(round(self.blur_kernel * s)) | 1)
        return AcquisitionConfig(
            pad=self.pad * s,
            degrees=self.degrees,
            distortion=self.distortion,
            perspective_p=self.perspective_p,
            noise_min=self.noise_min,
            noise_max=self.noise_max,
            blur_kernel=kernel,
            blur_sigma=(self.blur_sigma[0] * s, self.blur_sigma[1] * s),
            brightness=self.brightness,
            contrast=self.contrast,
            saturation=self.saturation,
            hue=self.hue,
        )


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device="cpu" if generator is None else generator.device)
    return (lo + (hi - lo) * u).to(device)


def sample_params(
    n: int,
    resolution: int,
    cfg: AcquisitionConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Draw the parameters of ``n`` acquisitions at ``resolution`` (ranges already scaled).

    Returns a dict of tensors: shift [n, 2] (px), angle [n] (degrees), corners [n, 4, 2]
    (perspective end points, px), noise_std [n], noise [n, 1, R, R], blur_sigma [n],
    brightness, contrast, saturation, hue [n].
    """
    r = resolution
    shift = torch.stack([_uniform(n, -cfg.pad, cfg.pad, generator, device) for _ in range(2)], dim=1)
    angle = _uniform(n, -cfg.degrees, cfg.degrees, generator, device)
    # Perspective: each corner moves inward by up to distortion * half-size (torchvision/kornia rule).
    half = (r - 1) / 2.0
    start = torch.tensor([[0.0, 0.0], [r - 1.0, 0.0], [r - 1.0, r - 1.0], [0.0, r - 1.0]], device=device)
    inward = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], device=device)
    mag = torch.stack([_uniform(n, 0.0, cfg.distortion * half, generator, device) for _ in range(8)], dim=1)
    apply_p = (_uniform(n, 0.0, 1.0, generator, device) < cfg.perspective_p).float()
    corners = start + inward * mag.view(n, 4, 2) * apply_p.view(n, 1, 1)
    noise_std = _uniform(n, cfg.noise_min, cfg.noise_max, generator, device)
    gen_device = "cpu" if generator is None else generator.device
    noise = torch.randn(n, 1, r, r, generator=generator, device=gen_device).to(device)
    blur_sigma = _uniform(n, cfg.blur_sigma[0], cfg.blur_sigma[1], generator, device)
    return {
        "shift": shift,
        "angle": angle,
        "corners": corners,
        "noise_std": noise_std,
        "noise": noise,
        "blur_sigma": blur_sigma,
        "brightness": _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, generator, device),
        "contrast": _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, generator, device),
        "saturation": _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, generator, device),
        "hue": _uniform(n, -cfg.hue, cfg.hue, generator, device),
    }


def homography(params: dict[str, torch.Tensor], resolution: int) -> torch.Tensor:
    """Source-to-destination homography [n, 3, 3] of shift, then rotation, then perspective."""
    n = params["angle"].shape[0]
    kw = {"device": params["angle"].device, "dtype": params["angle"].dtype}  # float64 params: a float64 homography
    r = resolution
    eye = torch.eye(3, **kw).expand(n, 3, 3)
    shift = eye.clone()
    shift[:, :2, 2] = params["shift"]
    centre = torch.full((n, 2), (r - 1) / 2.0, **kw)
    rot = kornia.geometry.transform.get_rotation_matrix2d(centre, params["angle"], torch.ones(n, 2, **kw))
    rot3 = torch.cat([rot, eye[:, 2:, :]], dim=1)
    start = torch.tensor([[0.0, 0.0], [r - 1.0, 0.0], [r - 1.0, r - 1.0], [0.0, r - 1.0]], **kw)
    persp = kornia.geometry.transform.get_perspective_transform(start.expand(n, 4, 2), params["corners"])
    return persp @ rot3 @ shift


def print_scale_of(w: torch.Tensor, params: dict[str, torch.Tensor]) -> int:
    """The print scale S of glyphs w [n, S*R, S*R] (or [n, C, S*R, S*R]) for ``params`` drawn
    at the sensor resolution R (the size of ``params["noise"]``); ValueError unless S*R = w's size."""
    size, r = w.shape[-1], params["noise"].shape[-1]
    if w.shape[-2] != size or size % r != 0:
        raise ValueError(f"glyphs of {tuple(w.shape[-2:])} px are not an integer print scale of the {r} px sensor")
    return size // r


def print_homography(h: torch.Tensor, scale: int) -> torch.Tensor:
    """A sensor-pixel homography [n, 3, 3] in print pixels, for a print S = ``scale`` times finer.

    Print pixel p (centre) sits at sensor coordinate (p + 0.5) / S - 0.5 (pixel centres at
    integers, as ``align_corners=True`` warps them): the canvas [-0.5, R - 0.5] is the same on
    both grids. With T: sensor -> print coordinates, the print homography is T H T^-1, so the
    same ``params`` move the print exactly as they move the sensor-grid glyph."""
    off = (scale - 1) / 2.0
    t = torch.tensor([[scale, 0.0, off], [0.0, scale, off], [0.0, 0.0, 1.0]], dtype=h.dtype, device=h.device)
    t_inv = torch.tensor([[1.0 / scale, 0.0, -off / scale], [0.0, 1.0 / scale, -off / scale], [0.0, 0.0, 1.0]],
                         dtype=h.dtype, device=h.device)
    return t @ h @ t_inv


def sensor_integrate(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Box-filter [n, C, S*R, S*R] S x S onto the sensor grid [n, C, R, R]: each sensor pixel is
    the mean of the S^2 print pixels it covers (their area fraction); the identity at S = 1."""
    return x if scale == 1 else F.avg_pool2d(x, scale)


def warp(w: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Steps 1-3 on the sensor grid: glyphs [n, C, S*R, S*R] -> warped ink [n, C, R, R].

    Bilinear resampling (fill 0) at the print resolution, then ``sensor_integrate``. At S = 1
    this is the single-grid warp of the paper, computed exactly as before."""
    scale = print_scale_of(w, params)
    size = w.shape[-1]
    h = homography(params, params["noise"].shape[-1]).to(w.dtype)
    if scale > 1:
        h = print_homography(h, scale)
    warped = kornia.geometry.transform.warp_perspective(w, h, (size, size), mode="bilinear", padding_mode="zeros",
                                                        align_corners=True)
    return sensor_integrate(warped, scale)


def affine(w: torch.Tensor, params: dict[str, torch.Tensor], cfg: AcquisitionConfig) -> torch.Tensor:
    """Steps 1-7 up to contrast, before any clamp: w [n, S*R, S*R] or [n, C, S*R, S*R] -> [n, 3, R, R].

    R is the sensor resolution of ``params``, S >= 1 the print scale (``print_scale_of``).
    For fixed ``params`` this is affine in ``w`` (warp with fixed bilinear weights, the S x S
    box filter, 1 - w' plus fixed noise, blur, brightness, contrast's mean blend); ``apply`` is
    ``clamp(affine)`` for gray glyphs (saturation and hue are identities there), so bounds over
    a set of prints (``a5ocr.bounds.camera``) can pass through this map exactly and then through
    the clamp."""
    if w.dim() == 3:
        w = w.unsqueeze(1)
    n = w.shape[0]
    r = params["noise"].shape[-1]
    warped = warp(w, params)
    x = 1.0 - warped + params["noise_std"].view(n, 1, 1, 1).to(w.dtype) * params["noise"].to(w.dtype)
    x = x.expand(n, 3, r, r)
    sigma = params["blur_sigma"].to(w.dtype).view(n, 1).expand(n, 2)
    x = kornia.filters.gaussian_blur2d(x, (cfg.blur_kernel, cfg.blur_kernel), sigma, border_type="reflect")
    # Colour jitter (torchvision's multiplicative brightness and mean-blend contrast).
    x = x * params["brightness"].view(n, 1, 1, 1).to(w.dtype)
    gray_mean = kornia.color.rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    c = params["contrast"].view(n, 1, 1, 1).to(w.dtype)
    return c * x + (1 - c) * gray_mean


def apply(w: torch.Tensor, params: dict[str, torch.Tensor], cfg: AcquisitionConfig) -> torch.Tensor:
    """Acquire glyphs: w [n, S*R, S*R], [n, 1, S*R, S*R] (gray) or [n, 3, S*R, S*R] (colour)
    ink in [0,1] -> x [n, 3, R, R] image in [0,1].

    Differentiable w.r.t. ``w``. ``params`` from ``sample_params`` with the same n at the
    sensor resolution R; S >= 1 the print scale (1: glyph and sensor share one grid).
    """
    gray = w.dim() == 3 or w.shape[1] == 1
    x = affine(w, params, cfg).clamp(0.0, 1.0)
    # Saturation and hue jitter are exact identities on gray images (all three channels equal,
    # as every step above keeps them for a one-channel glyph); they cost 3x the rest of the
    # pipeline, so they run only for colour glyphs. tests/test_acquisition.py checks the identity.
    if cfg.saturation > 0 and not gray:
        x = kornia.enhance.adjust_saturation(x, params["saturation"].to(w.dtype))
    if cfg.hue > 0 and not gray:
        x = kornia.enhance.adjust_hue(x, params["hue"].to(w.dtype) * 2 * math.pi)
    return x.clamp(0.0, 1.0)


class Acquisition(nn.Module):
    """``nn.Module`` wrapper: ``forward(w, generator)`` draws fresh parameters and acquires.

    ``resolution``: the sensor's R (what the classifier sees; the config is scaled to it);
    ``print_scale``: S, the glyphs' grid is S*R. Shapes: w [n, S*R, S*R] -> x [n, 3, R, R];
    ``return_params=True`` also returns the draws (at R, whatever S).
    """

    def __init__(self, resolution: int, cfg: AcquisitionConfig | None = None, print_scale: int = 1):
        super().__init__()
        if isinstance(print_scale, bool) or not isinstance(print_scale, int) or print_scale < 1:
            raise ValueError(f"print_scale must be an integer of at least 1, got {print_scale!r}")
        self.resolution = resolution
        self.print_scale = print_scale
        self.cfg = (cfg or AcquisitionConfig()).scaled(resolution)

    @property
    def print_resolution(self) -> int:
        return self.resolution * self.print_scale

    def forward(self, w: torch.Tensor, generator: torch.Generator | None = None, return_params: bool = False):
        if w.shape[-1] != self.print_resolution or w.shape[-2] != self.print_resolution:
            raise ValueError(f"glyphs of {tuple(w.shape[-2:])} px, this camera prints at {self.print_resolution} px "
                             f"(sensor {self.resolution} x print scale {self.print_scale})")
        params = sample_params(w.shape[0], self.resolution, self.cfg, generator, w.device)
        x = apply(w, params, self.cfg)
        return (x, params) if return_params else x
