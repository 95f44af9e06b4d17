"""Binarisation and skew of a page (``a5ocr scan``, steps 2 and 3).

**Binarisation**: Otsu's threshold on the lightly smoothed page (sigma 0.7 px) splits paper from
ink; the paper level is the median gray of the paper class, the ink level the median of the ink
class's interior (its 1-px erosion). Coverage ``c = (paper - gray) / (paper - ink)`` clipped to
[0, 1] (1 = full ink); the ink mask is ``c >= 0.5`` (smoothed). A page whose two classes differ
by less than 0.15 in gray has no text (no levels).

Otsu's threshold is scikit-image's; smoothing, erosion and labelling are scipy.ndimage's.

**Skew**: the angle in [-3, 3] degrees that maximises the sum of squares of the ink's projection
profile on the rotated vertical axis (a 0.1-degree scan, refined to 0.01 degree). Our own code:
neither scikit-image nor OpenCV has a projection-profile deskew (their Hough transforms find
lines, not the skew of text lines), and this one is 30 lines over the ink pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

MAX_SKEW_DEG = 3.0


def otsu_threshold(gray: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (scikit-image's, on the clipped page)."""
    return float(threshold_otsu(np.clip(gray, 0.0, 1.0), nbins=bins))


@dataclass
class Levels:
    """Gray levels of a page's paper and ink, and the Otsu threshold between them."""

    paper: float
    ink: float
    threshold: float

    @property
    def contrast(self) -> float:
        return self.paper - self.ink

    def coverage(self, gray: np.ndarray) -> np.ndarray:
        return np.clip((self.paper - gray) / max(self.contrast, 1e-6), 0.0, 1.0).astype(np.float32)


def paper_and_ink(gray: np.ndarray) -> Levels | None:
    """Paper and ink gray levels of a page (see the module doc); None for a page without text."""
    smooth = ndimage.gaussian_filter(gray.astype(np.float32), 0.7)
    t = otsu_threshold(smooth)
    dark = smooth < t
    n_dark = int(dark.sum())
    if n_dark == 0 or n_dark == dark.size:
        return None
    paper = float(np.median(gray[~dark]))
    core = ndimage.binary_erosion(dark)
    ink = float(np.median(gray[core])) if core.sum() >= 20 else float(np.percentile(gray[dark], 10))
    if paper - ink < 0.15:
        return None
    return Levels(paper=paper, ink=ink, threshold=t)


def ink_mask(gray: np.ndarray, levels: Levels) -> np.ndarray:
    """The ink mask: coverage >= 0.5 of the lightly smoothed page."""
    return levels.coverage(ndimage.gaussian_filter(gray.astype(np.float32), 0.7)) >= 0.5


def estimate_skew(mask: np.ndarray, max_angle: float = MAX_SKEW_DEG, max_points: int = 400_000) -> float:
    """Angle (degrees, counter-clockwise on screen, as ``a5ocr.scan.page.rotate_image``) by which the
    text lines of an ink mask are rotated: the one in [-max_angle, max_angle] whose projection
    x sin(a) + y cos(a) of the ink pixels has the sharpest profile (largest sum of squares)."""
    ys, xs = np.nonzero(mask)
    if ys.size < 10:
        return 0.0
    if ys.size > max_points:
        step = int(math.ceil(ys.size / max_points))
        ys, xs = ys[::step], xs[::step]
    x = xs.astype(np.float64) + 0.5 - mask.shape[1] / 2
    y = ys.astype(np.float64) + 0.5 - mask.shape[0] / 2

    def score(a: float) -> float:
        r = math.radians(a)
        p = x * math.sin(r) + y * math.cos(r)
        h = np.bincount(np.floor(p - p.min()).astype(np.int64))
        return float(np.dot(h, h))

    coarse = np.arange(-max_angle, max_angle + 1e-9, 0.1)
    best = float(coarse[int(np.argmax([score(a) for a in coarse]))])
    fine = np.arange(best - 0.1, best + 0.1 + 1e-9, 0.01)
    return float(fine[int(np.argmax([score(a) for a in fine]))])
