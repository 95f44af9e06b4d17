"""Characters normalised to the design's canvas, and the page geometry that does it (``a5ocr
scan``, step 5), exactly as ``a5ocr.glyphs.rasterize`` frames prototypes.

The canvas is R x R; one canvas pixel is ``units_per_pixel`` font units; the glyph's baseline is
at canvas row ``baseline`` and its ink box is centred at R / 2. On the page, the character's ink
box centre (0.5-level crossings) goes to the column where the prototype of the class read has it
(R / 2 up to the framing's rounding), the line's baseline to the design baseline row, and each
canvas pixel is the exact mean of the page's coverage over its footprint (page pixels as uniform
squares, separable box re-binning): ink w in [0, 1].

**Scale** (page pixels per canvas pixel) and **baselines**: the font size on the page is
unknown. A first guess per line takes the baseline as the median bottom of its characters and
the height from the line's highest ink to that baseline, matched to the tallest glyph of the
design above its baseline (median over lines). Then a fixed point: normalise, classify, and
compare each normalised character's ink moments (mean and standard deviation of its rows,
weighted by ink -- unlike edge positions, not biased by blur) with those of the prototype of the
class it was read as: the page scale is the median ratio of the deviations; each line's baseline
follows from the ink centroids (a Theil-Sen line through the implied baselines, so a residual
skew is absorbed); repeated until the labels are stable and the scale moves by < 0.2% (at most 5
rounds). Medians make it robust to a minority of misread characters; one scale per page, except
a line of >= 6 characters whose own median differs by > 15% (a heading in another size). The
prototypes compared are the robust glyphs as the exported font prints them or the original
glyphs, whichever the page's characters are closer to (the page may be printed in either font).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from a5ocr.scan.ink import area_weights, row_moments
from a5ocr.scan.reader import Reader
from a5ocr.scan.segmentation import Glyph, Segmentation, isolated


def normalize_glyph(seg: Segmentation, g: Glyph, reader: Reader, k: float, baseline_y: float,
                    centre_u: float | None = None) -> np.ndarray:
    """The R x R ink canvas of glyph ``g``: the centre of its ink box (0.5-level crossings) at
    canvas column ``centre_u`` (default R / 2; given the class read, the column where that
    class's prototype has it, which is R / 2 up to the framing's rounding and the difference
    between the box of any ink and of half ink), page row ``baseline_y`` at the design
    baseline, ``k`` page px per canvas px. Each canvas pixel is the exact mean of the page's
    coverage over its footprint (pixels as uniform squares); other characters' ink is masked out."""
    r = reader.resolution
    b0, b1, _ = seg.owner_bands[g.line]
    h, w = seg.coverage.shape
    x_start = g.centre_x - (0.5 * r if centre_u is None else centre_u) * k
    y_start = baseline_y - reader.baseline * k
    xa, xb = max(0, int(math.floor(x_start))), min(w, int(math.ceil(x_start + r * k)) + 1)
    ya, yb = max(b0, int(math.floor(y_start))), min(b1, int(math.ceil(y_start + r * k)) + 1)
    if xb <= xa or yb <= ya:
        return np.zeros((r, r), np.float32)
    iso = isolated(seg, g, (xa, ya, xb, yb)).astype(np.float64)
    wx = area_weights(x_start - xa, k, r, xb - xa)
    wy = area_weights(y_start - ya, k, r, yb - ya)
    return np.clip(wy @ iso @ wx.T, 0.0, 1.0).astype(np.float32)



@dataclass
class PageGeometry:
    """Scale (page px per canvas px) and baseline (deskewed page y) of each line, and the
    prototype table ("robust" or "original") the page is compared with."""

    k: np.ndarray
    baseline: np.ndarray  # at x = x_ref
    table: str | None = None
    slope: np.ndarray | None = None  # dy/dx of each baseline (the skew left after deskewing)
    x_ref: np.ndarray | None = None

    def baseline_at(self, line: int, x: float) -> float:
        if self.slope is None:
            return float(self.baseline[line])
        return float(self.baseline[line] + self.slope[line] * (x - self.x_ref[line]))

    def of(self, g: Glyph) -> tuple[float, float]:
        return float(self.k[g.line]), self.baseline_at(g.line, g.centre_x)


def first_guess(seg: Segmentation, reader: Reader) -> PageGeometry:
    """Scale and baselines from line extents alone (the module doc)."""
    ks, bases = [], []
    for line in seg.lines:
        base = float(np.median([g.bottom for g in line]))
        bases.append(base)
        height = base - float(np.min([g.top for g in line]))
        if height > 0:
            ks.append((height / reader.tallest_above_baseline, len(line)))
    k = 1.0
    if ks:
        vals = np.array([v for v, _ in ks])
        wts = np.array([c for _, c in ks], np.float64)
        order = np.argsort(vals)
        cum = np.cumsum(wts[order])
        k = float(vals[order][np.searchsorted(cum, cum[-1] / 2)])
    return PageGeometry(k=np.full(len(seg.lines), k), baseline=np.array(bases, np.float64))


def _normalize_all(seg: Segmentation, reader: Reader, geo: PageGeometry, labels: np.ndarray | None = None) -> np.ndarray:
    glyphs = seg.glyphs
    if not glyphs:
        return np.zeros((0, reader.resolution, reader.resolution), np.float32)
    if labels is None or geo.table is None:
        return np.stack([normalize_glyph(seg, g, reader, *geo.of(g)) for g in glyphs])
    t = reader.tables[geo.table]
    centres = np.nan_to_num(0.5 * (t["left"] + t["right"]), nan=reader.resolution / 2)
    return np.stack([normalize_glyph(seg, g, reader, *geo.of(g), centre_u=float(centres[y])) for g, y in zip(glyphs, labels)])


def fit_geometry(seg: Segmentation, reader: Reader, geo: PageGeometry | None = None, labels: np.ndarray | None = None,
                 max_rounds: int = 5) -> tuple[PageGeometry, np.ndarray, np.ndarray]:
    """The fixed point of the module doc, from ``geo`` (default ``first_guess``).

    ``labels``: known classes of ``seg.glyphs`` (a test oracle); None reads them with the
    classifier. Returns (geometry, canvases [n, R, R] and probabilities [n, K] at it)."""
    geo = geo or first_guess(seg, reader)
    glyphs = seg.glyphs
    line_of = np.array([g.line for g in glyphs], np.int64)
    prev = None
    for _ in range(max_rounds):
        canv = _normalize_all(seg, reader, geo, labels if labels is not None else prev)
        probs, _ = reader.classify(canv)
        lab = labels if labels is not None else probs.argmax(1)
        # ink moments of the normalised characters vs their prototypes: the rows' mean and
        # spread are unbiased by blur (the 0.5-level extents of round or thin tops are not)
        mom = np.array([row_moments(c) for c in canv]).reshape(-1, 2)
        ok = np.isfinite(mom).all(1) & (mom[:, 1] > 0.5)
        if not ok.any():
            break
        if geo.table is None:
            # the page is printed in the robust font or in the source font: the closer prototypes
            dist = {name: float(np.median(((canv[ok] - t["glyphs"][lab[ok]]) ** 2).sum(axis=(1, 2))))
                    for name, t in reader.tables.items()}
            geo.table = min(dist, key=lambda nm: (dist[nm], nm != "robust"))
        t = reader.tables[geo.table]
        kk = geo.k[line_of]
        kk_new = kk * mom[:, 1] / np.maximum(t["std_y"][lab], 1e-6)
        k_page = float(np.median(kk_new[ok]))
        # page y of each character's ink centroid, and the baseline it implies at the new scale
        base_now = np.array([geo.of(g)[1] for g in glyphs])
        centre_page = base_now + (mom[:, 0] - reader.baseline) * kk
        centre_design = t["mean_y"][lab]
        xs = np.array([g.centre_x for g in glyphs])
        new_k = np.full(len(seg.lines), k_page)
        new_base = geo.baseline.copy()
        slope = np.zeros(len(seg.lines))
        x_ref = np.array([float(np.mean([g.centre_x for g in line])) for line in seg.lines])
        for li in range(len(seg.lines)):
            sel = ok & (line_of == li)
            if sel.sum() >= 6:
                kl = float(np.median(kk_new[sel]))
                if abs(math.log(kl / k_page)) > 0.15:
                    new_k[li] = kl
            if sel.any():
                implied = centre_page[sel] - (centre_design[sel] - reader.baseline) * new_k[li]
                slope[li] = _theil_sen(xs[sel], implied, min_dx=reader.units_per_em / reader.units_per_pixel * new_k[li])
                new_base[li] = float(np.median(implied - slope[li] * (xs[sel] - x_ref[li])))
        moved = float(np.max(np.abs(new_k / geo.k - 1.0)))
        stable = prev is not None and np.array_equal(prev, lab)
        geo = PageGeometry(k=new_k, baseline=new_base, table=geo.table, slope=slope, x_ref=x_ref)
        prev = lab.copy()
        if stable and moved < 0.002:
            break
    canv = _normalize_all(seg, reader, geo, labels if labels is not None else prev)
    probs, _ = reader.classify(canv)
    return geo, canv, probs


def _theil_sen(x: np.ndarray, y: np.ndarray, min_dx: float, max_slope: float = math.tan(math.radians(1.0))) -> float:
    """Median slope of the point pairs at least ``min_dx`` apart (0 with fewer than 4 points or
    no such pair), clipped to +-``max_slope``: the baseline's residual skew, robust to misreads."""
    if x.size < 4:
        return 0.0
    dx = x[None, :] - x[:, None]
    dy = y[None, :] - y[:, None]
    far = dx > min_dx
    if not far.any():
        return 0.0
    return float(np.clip(np.median(dy[far] / dx[far]), -max_slope, max_slope))

