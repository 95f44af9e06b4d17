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
``total_variation``, mean over pixels) to the training loss, for smoother changes still (for
``outline``: on the edge offset d over the band the edges can move through, what makes edges
wavy and costs a font's outline points; ``penalty``).

An ``outline`` parameterisation moves the glyph's edges instead of its ink levels: a print is
monochrome (ink or paper; a font outline can hold nothing else), and the gray levels a camera
sees come from how much of each sensor pixel the ink covers. The designed glyph is the
anti-aliased rendering (a 1-print-px ramp, what a rasteriser makes of an outline) of the region
{phi + d > 0}, phi the source glyph's signed distance in print pixels (``signed_distance``: the
exact distance to the sub-pixel edge that the anti-aliased pixels locate; the design adds the
rendering's change to w, so d = 0 gives the source glyph back exactly) and d an offset field
on the same coarse grid as ``coarse`` (z ``factor`` times coarser, upsampled smoothly),
d = eps_D scale (2 sigmoid(up(z)) - 1), ``scale`` the print scale S (a design sets it): every edge
moves by at most eps_D sensor pixels (2 print px for eps_D 0.5 at S = 4), however coarse z's grid
(``outline:8`` at S = 4: z on a 16x16 grid, the same offset budget; measured, its edges were
not visibly smoother: README). The budget is on the edge motion, not on the ink: a print
pixel flips from paper to ink (|dw| up to 1), while a straight edge moved by eps_D sensor
pixels changes each sensor pixel's ink by at most eps_D, as the per-pixel budget does at the
sensor grid (more at corners and thin strokes; the design's summary says how much, measured).
The shape stays one clean shape: edges move smoothly, no speckle, no gray ink for a font to lose.

API: ``Parameterisation(kind, factor, mode, tv, scale)`` with ``z_shape`` / ``init`` (z = 0: no
change), ``glyphs(w, z, eps_d)`` (the designed glyphs), ``change`` (dw before the clamp) and
``penalty`` (``level``: the outline's signed distance, ``signed_distance(w)``, computed when not
given); ``to_dict`` / ``from_dict`` for ``config.json``; ``change_record`` (the measured change,
for the run's summary).

Shape: w [..., N, N] (N the print resolution); z [..., N, N] (``pixel``) or
[..., N / factor, N / factor] (``coarse``, ``outline``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage import measure

from a5ocr.acquisition import sensor_integrate
from a5ocr.training.losses import defended

KINDS = ("pixel", "coarse", "outline")
MODES = ("bicubic", "bilinear")


@dataclass(frozen=True)
class Parameterisation:
    """The glyph change's free parameters.

    ``kind``: ``pixel`` (the paper's: one z per print pixel), ``coarse`` (z on a grid
    ``factor`` times coarser, upsampled with ``mode``) or ``outline`` (z on that grid moves the
    edges of a monochrome glyph, module doc); ``tv``: the weight of the total-variation
    penalty on dw (0: none). ``Parameterisation()`` is the paper's.

    Example: ``p = Parameterisation("coarse", factor=4); z = p.init(w.shape); w_rob = p.glyphs(w, z, 0.5)``.
    """

    kind: str = "pixel"
    factor: int = 1
    mode: str = "bicubic"
    tv: float = 0.0
    # outline only: print px per unit of eps_D in the edge offset (the print scale S: eps_D sensor
    # px); None: ``factor`` (a record from before the field; the design fills in its S)
    scale: int | None = None

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
        if self.scale is not None and (self.kind != "outline" or isinstance(self.scale, bool)
                                       or not isinstance(self.scale, int) or self.scale < 1):
            raise ValueError(f"an outline's offset scale is an integer of at least 1 (other kinds have none), got {self.scale!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["scale"] is None:  # records without it stay as they were
            del d["scale"]
        return d

    @classmethod
    def from_dict(cls, d: dict | None) -> "Parameterisation":
        """The inverse of ``to_dict``; None or {} (a run before parameterisations) is the paper's."""
        return cls(**(d or {}))

    @classmethod
    def parse(cls, text: str, tv: float = 0.0) -> "Parameterisation":
        """An option's text: ``pixel``, ``coarse:F``, ``outline:F``, or either with ``:MODE``
        (bicubic or bilinear), with total-variation weight ``tv``; ValueError (one line) on anything else."""
        kind, *rest = text.strip().split(":")
        if kind == "pixel" and not rest:
            return cls(tv=tv)
        if kind not in ("coarse", "outline") or not 1 <= len(rest) <= 2 or not rest[0].isdigit():
            raise ValueError(f"the glyph change is pixel, coarse:F, outline:F or either with :MODE (F an integer), got {text!r}")
        return cls(kind, int(rest[0]), *rest[1:], tv=tv)

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

    def max_offset(self, eps_d: float) -> float:
        """How far an ``outline`` change moves an edge at most, in print pixels: eps_D x ``scale``
        (eps_D sensor pixels once the design sets scale = S; eps_D grid cells without it)."""
        return float(eps_d) * (self.scale or self.factor)

    def glyphs(self, w: torch.Tensor, z: torch.Tensor, eps_d: float, level: torch.Tensor | None = None) -> torch.Tensor:
        """The designed glyphs: clamp(w + eps_D (2 sigmoid(up(z)) - 1), 0, 1) (pixel, coarse:
        |result - w| <= eps_D), or for ``outline`` clamp(0.5 + phi + d, 0, 1) with phi = ``level``
        (``signed_distance(w)`` when None) and |d| <= ``max_offset(eps_d)`` print px."""
        u = self._checked_field(w, z)
        if self.kind != "outline":
            return defended(w, u, eps_d)
        phi = signed_distance(w) if level is None else level
        moved = (0.5 + phi + self.max_offset(eps_d) * (2.0 * torch.sigmoid(u) - 1.0)).clamp(0.0, 1.0)
        # w plus the rendering's change (not the rendering itself): exactly w at d = 0, where
        # clamp(0.5 + phi) rounds an edge pixel's coverage in float32 (phi = w - 0.5)
        return (w + (moved - (0.5 + phi).clamp(0.0, 1.0))).clamp(0.0, 1.0)

    def change(self, w: torch.Tensor, z: torch.Tensor, eps_d: float, level: torch.Tensor | None = None) -> torch.Tensor:
        """dw = ``glyphs(w, z, eps_d, level)`` - w (what the print changes, after the clamp to [0, 1])."""
        return self.glyphs(w, z, eps_d, level) - w

    def penalty(self, w: torch.Tensor, z: torch.Tensor, eps_d: float, level: torch.Tensor | None = None) -> torch.Tensor:
        """``tv`` x the mean total variation of dw over the glyphs (a scalar; 0 when ``tv`` is 0):
        the mean absolute difference of dw between neighbouring print pixels, both directions.

        For ``outline``, of the edge offset d instead, in units of its largest value and over the
        band an edge can move through (|phi| <= max offset + 1 px): what makes an edge wavy (an
        offset that flips between +-max along the edge: each flip a step in the outline, and
        points in a font); the ink change dw is there even for a constant offset (the moved edge)."""
        if self.tv == 0:
            return torch.zeros((), device=z.device, dtype=z.dtype)
        if self.kind == "outline":
            phi = signed_distance(w) if level is None else level
            band = (phi.abs() <= self.max_offset(eps_d) + 1.0).to(z.dtype)
            d = 2.0 * torch.sigmoid(self._checked_field(w, z)) - 1.0  # d / max offset
            bx, by = band[..., :, 1:] * band[..., :, :-1], band[..., 1:, :] * band[..., :-1, :]
            total = ((d[..., :, 1:] - d[..., :, :-1]).abs() * bx).sum() + ((d[..., 1:, :] - d[..., :-1, :]).abs() * by).sum()
            return self.tv * total / band.sum().clamp_min(1.0)
        dw = self.change(w, z, eps_d, level)
        return self.tv * kornia.losses.total_variation(dw, reduction="mean").mean()


def change_record(w: torch.Tensor, designed: torch.Tensor, scale: int) -> dict:
    """How much ``designed`` [K, N, N] changed the ink of ``w``, measured: the largest |dw| on the
    print grid, and on the sensor grid (each S x S block's mean, the glyph as a camera in the
    identity pose sees it; what eps_D bounds at S = 1), with the mean |dw| there."""
    dw = (designed - w).to(torch.float64)
    sensor = sensor_integrate(dw[:, None], scale)[:, 0]
    return {"print_max": round(dw.abs().max().item(), 4), "sensor_max": round(sensor.abs().max().item(), 4),
            "sensor_mean": round(sensor.abs().mean().item(), 5)}


def signed_distance(w: torch.Tensor) -> torch.Tensor:
    """phi [..., N, N] (w's dtype and device), in pixels, > 0 in the ink: the Euclidean signed
    distance of each pixel centre to the glyph's sub-pixel edge, for glyph ink ``w`` in [0, 1]
    with anti-aliased edges (pixel (r, c)'s centre at (c + 0.5, r + 0.5)).

    The edge is the zero line of a pixel-grid estimate (``_grid_distance``: an anti-aliased
    pixel's coverage less one half, the Euclidean feature transform's distance beyond), traced
    by marching squares (scikit-image's ``find_contours``: linear along the grid lines, so a
    straight edge along the grid is found exactly and an oblique one within hundredths of a
    pixel); phi is the exact distance to that polyline. Why not the grid estimate itself: off
    the grid's axes its distances run between pixel centres, so its level sets {phi = -d}
    scallop (the edges an offset d moved were ragged, measured: 2.64x the source's outline
    points in the exported font on a 21-glyph sample against 2.06x with this one). Edge pixels
    keep clamp(0.5 + phi, 0, 1) within a few hundredths of w (the rasteriser's coverage is not
    linear in the distance at corners); the outline change adds the rendering's difference to w,
    so d = 0 still gives w exactly. A glyph without ink (or without paper) is at -N (N)
    everywhere. Not differentiable (the source glyph is a constant)."""
    grid = _grid_distance(w)
    n_r, n_c = grid.shape[-2:]
    yy, xx = np.mgrid[0:n_r, 0:n_c]
    centres = np.c_[xx.ravel(), yy.ravel()].astype(np.float64)  # grid index units: the centres
    out = np.empty_like(grid)
    for i, g in enumerate(grid):
        if (g > 0).all() or (g <= 0).all():
            out[i] = g
            continue
        segments = [c[:, ::-1] - 1.0 for c in measure.find_contours(np.pad(g, 1, mode="edge"), 0.0)]
        a = np.concatenate([c[:-1] for c in segments])
        b = np.concatenate([c[1:] for c in segments])
        dist = _distance_to_segments(centres, a, b)
        out[i] = np.where(g.ravel() > 0, dist, -dist).reshape(n_r, n_c)
    return torch.from_numpy(out.reshape(w.shape)).to(device=w.device, dtype=w.dtype)


def _distance_to_segments(p: np.ndarray, a: np.ndarray, b: np.ndarray, step: float = 0.5, k: int = 8) -> np.ndarray:
    """[P] distance of points p [P, 2] to the nearest of the segments a -> b [S, 2]: exact
    point-to-segment distances to the segments of the ``k`` nearest of samples placed every
    ``step`` along them (scipy's KD-tree). Never below the true distance; above it only if
    none of those samples lies on the nearest segment (then by under step / 2)."""
    length = np.hypot(*(b - a).T)
    count = np.maximum(1, np.ceil(length / step).astype(np.int64))
    owner = np.repeat(np.arange(len(a)), count)
    t = (np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count)) / count[owner]
    samples = a[owner] + t[:, None] * (b - a)[owner]
    _, idx = cKDTree(samples).query(p, k=min(k, len(samples)))
    seg = owner[idx.reshape(len(p), -1)]  # [P, k]
    sa, sb = a[seg], b[seg]
    ab = sb - sa
    u = np.clip(((p[:, None] - sa) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    return np.hypot(*(sa + u[..., None] * ab - p[:, None]).transpose(2, 0, 1)).min(axis=1)


def _grid_distance(w: torch.Tensor) -> np.ndarray:
    """[K, N, N] float64 pixel-grid signed distance of ``w`` (``signed_distance``'s first step).

    On an anti-aliased edge pixel (0 < w < 1) its coverage less one half (a straight edge's
    signed distance at the pixel's centre, for the rasteriser's box filter). Elsewhere
    +-|x - f| + phi_f, f the nearest "edge feature" (scipy's exact Euclidean feature transform):
    an edge pixel (phi_f its own) or a pixel of the other side of the ink > 0.5 mask that no
    edge pixel separates (the edge half-way: phi_f = -+0.5). Exact along the grid's axes;
    clamp(0.5 + phi, 0, 1) == w to rounding."""
    arr = w.detach().to("cpu", torch.float64).numpy().reshape(-1, *w.shape[-2:])
    out = np.empty_like(arr)
    far = float(max(w.shape[-2:]))
    for i, a in enumerate(arr):
        ink, edge = a > 0.5, (a > 0) & (a < 1)
        if ink.all() or not ink.any():
            out[i] = far if ink.all() else -far
            continue
        own = np.where(edge, _edge_distance(a), np.where(ink, 0.5, -0.5))  # each feature's own signed distance
        phi = own.copy()
        for side, sign in ((ink & ~edge, 1.0), (~ink & ~edge, -1.0)):
            features = edge | (~ink if sign > 0 else ink)  # the edge, or the other side itself
            dist, (fr, fc) = ndimage.distance_transform_edt(~features, return_indices=True)
            phi[side] = (own[fr, fc] + sign * dist)[side]
        # next to the edge, the tightest of the neighbouring edge pixels' estimates (each is
        # own + |x - f| >= the distance to a straight edge; the transform breaks ties by chance)
        p = np.pad(np.where(edge, own, np.nan), 1, constant_values=np.nan)
        near = [p[1 + dr:p.shape[0] - 1 + dr, 1 + dc:p.shape[1] - 1 + dc] + math.hypot(dr, dc) * s
                for s in (1.0, -1.0) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]
        with np.errstate(all="ignore"):
            inner, outer = np.fmin.reduce(near[:8]), np.fmax.reduce(near[8:])
        phi = np.where(ink & ~edge & ~np.isnan(inner), np.fmin(phi, inner), phi)
        phi = np.where(~ink & ~edge & ~np.isnan(outer), np.fmax(phi, outer), phi)
        out[i] = phi
    return out


def _edge_distance(a: np.ndarray) -> np.ndarray:
    """[N, N] signed distance (> 0 in the ink) from each pixel centre to a straight edge that
    covers the pixel by ``a``, the edge's normal taken from the image gradient (Sobel weights
    sqrt 2): the inverse of the box filter's coverage of a unit square cut by a line (Gustavson
    and Strand 2011, "Anti-aliased Euclidean distance transform"; hand-written, 10 lines: no
    library has it). Along the grid's axes it is a - 1/2; meaningful on edge pixels only."""
    r2 = math.sqrt(2.0)
    p = np.pad(a, 1, mode="edge")
    gx = (p[:-2, 2:] + r2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + r2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + r2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + r2 * p[:-2, 1:-1] + p[:-2, 2:])
    norm = np.hypot(gx, gy)
    gx, gy = np.abs(gx) / np.maximum(norm, 1e-12), np.abs(gy) / np.maximum(norm, 1e-12)
    gx, gy = np.maximum(gx, gy), np.minimum(gx, gy)  # gx >= gy >= 0: the distance is symmetric
    flat = (norm < 1e-12) | (gy < 1e-9)
    gy = np.where(flat, 0.0, gy)
    gx = np.where(flat, 1.0, gx)
    a1 = 0.5 * gy / gx  # coverage where the line leaves the pixel's corner triangle
    with np.errstate(invalid="ignore"):
        df = np.where(a < a1, 0.5 * (gx + gy) - np.sqrt(2.0 * gx * gy * np.maximum(a, 0.0)),
                      np.where(a < 1.0 - a1, (0.5 - a) * gx,
                               -0.5 * (gx + gy) + np.sqrt(2.0 * gx * gy * np.maximum(1.0 - a, 0.0))))
    return np.where(flat, a - 0.5, -df)
