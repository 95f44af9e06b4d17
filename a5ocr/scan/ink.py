"""Ink measures shared by the prototypes and the page's characters: the sub-pixel extents of an
ink profile (0.5-level crossings), the ink-weighted moments of a canvas's rows, and the weights
of exact box re-binning (``area_weights``: page -> canvas, and canvas -> the acquisition's mean pose).

Pixel i of a profile or canvas row i is centred at i + 0.5 (``a5ocr.scan.page``'s convention)."""

from __future__ import annotations

import math

import numpy as np


def row_moments(c: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the rows of a canvas, weighted by its ink (row i at i + 0.5)."""
    m = np.asarray(c, np.float64).sum(axis=1)
    tot = m.sum()
    if tot <= 1e-9:
        return math.nan, math.nan
    v = np.arange(m.size) + 0.5
    mu = float((v * m).sum() / tot)
    return mu, float(math.sqrt(max((((v - mu) ** 2) * m).sum() / tot, 0.0)))


def ink_extents(profile: np.ndarray, level: float = 0.5) -> tuple[float, float]:
    """First and last crossing of ``level`` (times the peak when the peak is below 1) of a
    1-D ink profile, with linear interpolation between pixel centres (pixel i centred at i + 0.5).
    Returns (start, end) in continuous coordinates; (nan, nan) for a profile without ink."""
    p = np.asarray(profile, np.float64)
    peak = float(p.max()) if p.size else 0.0
    if peak <= 1e-6:
        return math.nan, math.nan
    lv = level * min(1.0, peak)
    idx = np.nonzero(p >= lv)[0]
    i, j = int(idx[0]), int(idx[-1])
    if i == 0:
        start = 0.0
    else:
        a, b = p[i - 1], p[i]
        start = (i - 0.5) + (lv - a) / (b - a) if b > a else i + 0.0
    if j == p.size - 1:
        end = float(p.size)
    else:
        a, b = p[j], p[j + 1]
        end = (j + 0.5) + (a - lv) / (a - b) if a > b else j + 1.0
    return float(start), float(end)


def area_weights(start: float, step: float, r: int, size: int) -> np.ndarray:
    """[r, size] weights of exact box re-binning: output cell j covers the input interval
    [start + j step, start + (j + 1) step) (input pixel i covers [i, i + 1)); W[j, i] is the
    overlap length divided by ``step``, so each row averages the input over its cell (input
    outside [0, size) counts as 0)."""
    a = start + np.arange(r, dtype=np.float64)[:, None] * step
    i = np.arange(size, dtype=np.float64)[None, :]
    return np.clip(np.minimum(a + step, i + 1) - np.maximum(a, i), 0.0, None) / step
