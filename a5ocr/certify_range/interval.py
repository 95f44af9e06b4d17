"""Interval images: a sound per-pixel box of every acquisition a parameter sub-box can make.

For a sub-box of poses (``a5ocr.certify_range.box``: angle, shift, scale) and one glyph,
``interval_images`` returns x_lower <= x <= x_upper [N, 3, R, R] that holds
``a5ocr.acquisition.apply(glyph, params(pose))`` for EVERY pose in the sub-box (the other
stages at the ``FixedCamera`` value), widened by eps_A and clipped to [0, 1]: so a certificate
of the classifier over that box proves every pose, and every attack of size eps_A on it.

Why it is sound, step by step (``apply`` is the reference: kornia ``warp_perspective``,
bilinear, ``align_corners=True``, zeros padding):

1. Output pixel p = (u, v) (column, row) samples the glyph at the source point
   q = H^-1 p, H = S_c(s) R_c(theta) T(t) (c the canvas centre): with d = p - c,
   q_x = c + (cos(theta) d_x - sin(theta) d_y) / s - t_x = c + rho cos(theta + phi) / s - t_x,
   q_y = c + (sin(theta) d_x + cos(theta) d_y) / s - t_y = c + rho sin(theta + phi) / s - t_y,
   with (rho, phi) the polar form of d (checked against ``acquisition.homography`` in the tests).
   ``source_boxes`` computes the EXACT range of each coordinate over the sub-box: the range of
   cos over an angle interval is its end values, plus 1 / -1 where the interval holds a multiple
   of 2 pi / an odd multiple of pi; times 1/s in [1/s_hi, 1/s_lo] (positive) takes the min / max
   of the four products; the shift is additive. The box is then widened by ``COORD_MARGIN`` px,
   which covers kornia's float32 homography and grid arithmetic (errors ~1e-5 px at 32-128 px).
2. Bilinear resampling with zeros padding is the bilinear interpolant f of the glyph padded with
   zeros: continuous, and bilinear on each unit cell of the integer lattice. On a rectangle the
   integer lines cut into pieces, each inside one cell, f is linear in x and in y separately,
   so its extremes on each piece lie at the piece's corners. Hence the range of f over the
   source box [x0, x1] x [y0, y1] is EXACTLY the min / max of f over the finite grid
   {x0, integers in (x0, x1), x1} x {y0, integers in (y0, y1), y1} (``bilinear_range``).
3. x = 1 - w' (noise fixed at 0) is decreasing in w'; the Gaussian blur (reflect border) is
   linear with nonnegative weights, brightness a positive factor, and the contrast blend
   c x + (1 - c) mean_gray(x) has nonnegative coefficients for c <= 1 (for c > 1 the mean term
   takes the opposite end); the clamps are monotone: each stage maps (lower, upper) to a sound
   (lower, upper) (``camera_bounds``). Saturation and hue are identities on gray glyphs.
4. The result is widened by ``VALUE_MARGIN``, above the float32 rounding of ``apply``'s ~50
   operations on values in [0, 1] (< 1e-5), then by eps_A, and clipped to [0, 1] (the attack
   clips too). All of this is computed in float64.

The tests check containment against ``apply`` on 10^4 poses per box, corners included.
"""

from __future__ import annotations

import math

import kornia
import torch

from a5ocr.acquisition import sensor_integrate
from a5ocr.certify_range.box import ANGLE, SCALE, SHIFT_X, SHIFT_Y, FixedCamera

COORD_MARGIN = 1e-3  # px added to each side of the source box (kornia's float32 grid error)
VALUE_MARGIN = 1e-5  # added to each side of the image interval (apply's float32 rounding)
MAX_ELEMENTS = 1 << 22  # float64 elements per chunk of the bilinear range (memory bound)


def _cos_range(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact range of cos over [a, b] (elementwise, a <= b, radians)."""
    ca, cb = torch.cos(a), torch.cos(b)
    lo, hi = torch.minimum(ca, cb), torch.maximum(ca, cb)
    two_pi = 2.0 * math.pi
    has_max = torch.floor(b / two_pi) * two_pi >= a  # a multiple of 2 pi in [a, b]
    has_min = torch.floor((b - math.pi) / two_pi) * two_pi + math.pi >= a  # an odd multiple of pi
    return torch.where(has_min, -torch.ones_like(lo), lo), torch.where(has_max, torch.ones_like(hi), hi)


def _scaled_range(lo: torch.Tensor, hi: torch.Tensor, k_lo: torch.Tensor, k_hi: torch.Tensor):
    """Range of k * v for v in [lo, hi], k in [k_lo, k_hi] (k > 0)."""
    prods = torch.stack([lo * k_lo, lo * k_hi, hi * k_lo, hi * k_hi])
    return prods.min(dim=0).values, prods.max(dim=0).values


def pixel_polar(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rho, phi) [R*R] of every output pixel about the canvas centre, row-major (v, u)."""
    c = (resolution - 1) / 2.0
    v, u = torch.meshgrid(torch.arange(resolution, dtype=torch.float64),
                          torch.arange(resolution, dtype=torch.float64), indexing="ij")
    dx, dy = (u - c).flatten(), (v - c).flatten()
    return torch.hypot(dx, dy), torch.atan2(dy, dx)


def source_boxes(boxes: torch.Tensor, resolution: int) -> torch.Tensor:
    """Sub-boxes [N, 4, 2] -> [N, R*R, 2 (x, y), 2 (low, high)] float64: a sound box of the
    source point of every output pixel over each sub-box (step 1 of the module docstring)."""
    boxes = boxes.double()
    rho, phi = pixel_polar(resolution)
    c = (resolution - 1) / 2.0
    th0 = torch.deg2rad(boxes[:, ANGLE, 0]).unsqueeze(1) + phi  # [N, P]
    th1 = torch.deg2rad(boxes[:, ANGLE, 1]).unsqueeze(1) + phi
    k_lo = (1.0 / boxes[:, SCALE, 1]).unsqueeze(1)
    k_hi = (1.0 / boxes[:, SCALE, 0]).unsqueeze(1)
    cos_lo, cos_hi = _cos_range(th0, th1)
    sin_lo, sin_hi = _cos_range(th0 - math.pi / 2, th1 - math.pi / 2)  # sin(t) = cos(t - pi/2)
    x_lo, x_hi = _scaled_range(rho * cos_lo, rho * cos_hi, k_lo, k_hi)
    y_lo, y_hi = _scaled_range(rho * sin_lo, rho * sin_hi, k_lo, k_hi)
    tx, ty = boxes[:, SHIFT_X].unsqueeze(1), boxes[:, SHIFT_Y].unsqueeze(1)  # [N, 1, 2]
    xs = torch.stack([c + x_lo - tx[..., 1] - COORD_MARGIN, c + x_hi - tx[..., 0] + COORD_MARGIN], dim=-1)
    ys = torch.stack([c + y_lo - ty[..., 1] - COORD_MARGIN, c + y_hi - ty[..., 0] + COORD_MARGIN], dim=-1)
    return torch.stack([xs, ys], dim=2)


def _grid_points(lo: torch.Tensor, hi: torch.Tensor, m: int) -> torch.Tensor:
    """[...] ends -> [..., m] the points {lo, integers in (lo, hi), hi} (repeats of hi pad)."""
    steps = torch.arange(1, m - 1, dtype=lo.dtype)
    inner = torch.minimum(torch.floor(lo).unsqueeze(-1) + steps, hi.unsqueeze(-1))
    return torch.cat([lo.unsqueeze(-1), inner, hi.unsqueeze(-1)], dim=-1)


def _bilinear_at(padded: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The zeros-padded bilinear interpolant at points x, y [n, ...] of glyph n of ``padded``
    [n, R+3, R+3] (pixel i at padded index i + 1; points clamped to [-1, R], where f is 0 beyond)."""
    r = padded.shape[-1] - 3
    x, y = x.clamp(-1.0, float(r)), y.clamp(-1.0, float(r))
    x0, y0 = torch.floor(x), torch.floor(y)
    ax, ay = x - x0, y - y0
    i, j = x0.long() + 1, y0.long() + 1
    flat = padded.flatten(1)
    width = padded.shape[-1]
    shape = x.shape

    def at(jj, ii):
        return flat.gather(1, (jj * width + ii).flatten(1)).view(shape)

    top = (1 - ax) * at(j, i) + ax * at(j, i + 1)
    bottom = (1 - ax) * at(j + 1, i) + ax * at(j + 1, i + 1)
    return (1 - ay) * top + ay * bottom


def bilinear_range(glyphs: torch.Tensor, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact range of the bilinear glyph over each source box (step 2 of the module docstring).

    glyphs [N, R, R] (one per box), src [N, P, 2, 2] from ``source_boxes`` -> (w_lower, w_upper)
    [N, P] float64."""
    n, r = glyphs.shape[0], glyphs.shape[-1]
    padded = torch.nn.functional.pad(glyphs.double(), (1, 2, 1, 2))
    x0, x1, y0, y1 = src[..., 0, 0], src[..., 0, 1], src[..., 1, 0], src[..., 1, 1]
    x0, x1 = x0.clamp(-1.0, float(r)), x1.clamp(-1.0, float(r))
    y0, y1 = y0.clamp(-1.0, float(r)), y1.clamp(-1.0, float(r))
    mx = int((torch.ceil(x1) - torch.floor(x0)).max().item()) + 1 if n else 2
    my = int((torch.ceil(y1) - torch.floor(y0)).max().item()) + 1 if n else 2
    mx, my = max(mx, 2), max(my, 2)
    lo = torch.empty(n, src.shape[1], dtype=torch.float64)
    hi = torch.empty_like(lo)
    step = max(1, MAX_ELEMENTS // (src.shape[1] * mx * my))
    for s in range(0, n, step):
        e = slice(s, s + step)
        gx = _grid_points(x0[e], x1[e], mx).unsqueeze(-1).expand(-1, -1, mx, my)
        gy = _grid_points(y0[e], y1[e], my).unsqueeze(-2).expand(-1, -1, mx, my)
        vals = _bilinear_at(padded[e], gx, gy).flatten(2)
        lo[e], hi[e] = vals.min(dim=2).values, vals.max(dim=2).values
    return lo, hi


def camera_bounds(w_lo: torch.Tensor, w_hi: torch.Tensor, cam: FixedCamera, blur_kernel: int):
    """Warped-ink bounds [N, 1, R, R] -> image bounds [N, 3, R, R] through stages 4-8 of
    ``apply`` at ``cam`` (step 3 of the module docstring)."""
    n = w_lo.shape[0]
    lo, hi = 1.0 - w_hi, 1.0 - w_lo
    sigma = torch.full((n, 2), float(cam.blur_sigma), dtype=torch.float64)
    k = (blur_kernel, blur_kernel)
    # one channel blurred, then replicated: the blur is per channel and the channels are equal
    lo = kornia.filters.gaussian_blur2d(lo, k, sigma, border_type="reflect").expand(n, 3, -1, -1)
    hi = kornia.filters.gaussian_blur2d(hi, k, sigma, border_type="reflect").expand(n, 3, -1, -1)
    lo, hi = lo * cam.brightness, hi * cam.brightness
    m_lo = kornia.color.rgb_to_grayscale(lo).mean(dim=(1, 2, 3), keepdim=True)
    m_hi = kornia.color.rgb_to_grayscale(hi).mean(dim=(1, 2, 3), keepdim=True)
    c = cam.contrast
    if c <= 1.0:
        lo, hi = c * lo + (1 - c) * m_lo, c * hi + (1 - c) * m_hi
    else:  # 1 - c < 0: the mean term's lower end comes from the upper image
        lo, hi = c * lo + (1 - c) * m_hi, c * hi + (1 - c) * m_lo
    return lo.clamp(0.0, 1.0), hi.clamp(0.0, 1.0)


def interval_images(glyphs: torch.Tensor, boxes: torch.Tensor, cam: FixedCamera, blur_kernel: int,
                    eps_a: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound image bounds of every pose of each sub-box, widened by eps_A.

    glyphs [N, S*R, S*R] ink (glyph n for sub-box n; S = ``cam.print_scale``), boxes [N, 4, 2]
    (sensor px) -> (x_lower, x_upper) [N, 3, R, R] float64 in [0, 1]. At S > 1 the pose acts on
    the print as the same rotation and scale about the print's centre with the shift times S
    (``acquisition.print_homography``): the bilinear range is taken per print pixel, then the
    S x S box filter (nonnegative weights, monotone) maps it to a sound sensor-pixel range."""
    n, size, s = glyphs.shape[0], glyphs.shape[-1], cam.print_scale
    boxes = boxes.clone()
    boxes[:, SHIFT_X : SHIFT_Y + 1] *= s
    w_lo, w_hi = bilinear_range(glyphs, source_boxes(boxes, size))
    w_lo = sensor_integrate(w_lo.view(n, 1, size, size), s)
    w_hi = sensor_integrate(w_hi.view(n, 1, size, size), s)
    lo, hi = camera_bounds(w_lo, w_hi, cam, blur_kernel)
    widen = VALUE_MARGIN + float(eps_a)
    return (lo - widen).clamp(0.0, 1.0), (hi + widen).clamp(0.0, 1.0)
