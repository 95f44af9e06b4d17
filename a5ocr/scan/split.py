"""How well a piece of ink reads, and the best way to cut a character into pieces that read
(``a5ocr scan``, step 4: recognition-driven segmentation, as classic OCR does it).

**Score** (``read_score``): the classifier's confidence in the class read times how plausible
the ink is for that class -- its width on the page against the prototype's, its top and bottom
on the normalised canvas, its shape (cosine similarity to the prototype) -- or, when better,
how plausible it is as one of the source font's punctuation marks (``Reader.marks``: a slash
or a full stop touching a letter is a good piece of a split, though the classifier, which
knows only the run's alphabet, cannot read it).

**Segmentation** (``best_segmentation``): candidate cut columns along a character (the lows of
its column ink profile, and columns every ~0.05 em), every run of columns between two cuts as
wide as some prototype allows (``width_limits``) read in one batch, and the cuts whose pieces
read best (the largest product of scores, a Viterbi path over the cuts) found by dynamic
programming, up to ``max_pieces`` pieces.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from a5ocr.scan.geometry import PageGeometry, normalize_glyph
from a5ocr.scan.ink import ink_extents
from a5ocr.scan.reader import Reader
from a5ocr.scan.segmentation import Glyph, Segmentation, glyph_window, isolated, measure, owned


def plausible(rho: float) -> float:
    """How plausible an ink width ``rho`` times the prototype's is (1 within +-20%)."""
    d = abs(math.log(max(rho, 1e-6))) - 0.2
    return 1.0 if d <= 0 else math.exp(-((d / 0.15) ** 2))


def fits(table: dict, y: int, canvas: np.ndarray, top: float, bottom: float, rho: float, em: float) -> float:
    """How plausible ``canvas`` (ink top and bottom on it, ink width ``rho`` times the prototype's)
    is as prototype ``y`` of ``table``: the product of the width's plausibility (``plausible``),
    of its top and bottom (within 0.06 em of the prototype's) and of its shape (cosine similarity
    >= 0.9; two touching letters read as one class match it at 0.3-0.6)."""
    dev = max(abs(top - table["top"][y]), abs(bottom - table["bottom"][y])) / em - 0.06
    vertical = 1.0 if dev <= 0 else math.exp(-((dev / 0.06) ** 2))
    proto = table["glyphs"][y]
    cos = float((canvas * proto).sum() / max(math.sqrt(float((canvas**2).sum()) * float((proto**2).sum())), 1e-12))
    match = 1.0 if cos >= 0.9 else math.exp(-(((0.9 - cos) / 0.1) ** 2))
    return plausible(rho) * vertical * match


def read_score(reader: Reader, geo: PageGeometry, g: Glyph, canvas: np.ndarray, probs: np.ndarray) -> float:
    """How well a character is read: the confidence of the class read times how plausible its
    ink is for that class (``fits``: width on the page within 20% of the prototype's, top and
    bottom on the normalised canvas, shape) -- or, when better, how plausible it is as one of the
    source font's punctuation marks (``Reader.marks``: a slash or a full stop beside a letter is
    a good piece of a split, though the classifier cannot read it)."""
    top, bottom = ink_extents(canvas.max(axis=1))
    if not math.isfinite(top):
        return 0.0
    k, _ = geo.of(g)
    width = (g.right - g.left) / k  # canvas px
    em = reader.units_per_em / reader.units_per_pixel
    t = reader.tables[geo.table or "robust"]
    y = int(np.argmax(probs))
    best = float(probs[y]) * fits(t, y, canvas, top, bottom, width / max(t["right"][y] - t["left"][y], 1e-6), em)
    marks = reader.marks
    for m in range(len(marks["chars"]) if marks is not None else 0):
        rho = width / max(marks["right"][m] - marks["left"][m], 1e-6)
        best = max(best, fits(marks, m, canvas, top, bottom, rho, em))
    return best


def set_box(seg: Segmentation, g: Glyph) -> bool:
    """The mask box of ``g``'s own pixels; False when it has none."""
    xa, ya, xb, yb = win = glyph_window(seg, g)
    rows, cols = np.nonzero(owned(seg, g, win) & (seg.labels[ya:yb, xa:xb] > 0))
    if rows.size == 0:
        return False
    g.box = (xa + int(cols.min()), ya + int(rows.min()), xa + int(cols.max()) + 1, ya + int(rows.max()) + 1)
    return True


def cut_pieces(seg: Segmentation, g: Glyph, a: int, b: int) -> tuple[Glyph, Glyph] | None:
    """``g`` cut in two: the left piece keeps its columns < ``b``, the right one those >= ``a``
    (a < b: the columns between belong to both -- two crossbars fused into one, as in ft, tt;
    a > b: those between belong to neither). None when a piece has no ink."""
    c0, c1 = g.cols if g.cols is not None else (-(1 << 30), 1 << 30)
    left = Glyph(comps=list(g.comps), box=g.box, line=g.line, cols=(c0, min(c1, b)))
    right = Glyph(comps=list(g.comps), box=g.box, line=g.line, cols=(max(c0, a), c1))
    if not (set_box(seg, left) and set_box(seg, right)):
        return None
    measure(seg, left)
    measure(seg, right)
    return left, right


def read_scores(seg: Segmentation, reader: Reader, geo: PageGeometry, glyphs: list[Glyph]) -> list[float]:
    canv = np.stack([normalize_glyph(seg, q, reader, *geo.of(q)) for q in glyphs])
    probs, _ = reader.classify(canv)
    return [read_score(reader, geo, q, canv[i], probs[i]) for i, q in enumerate(glyphs)]


def cut_candidates(seg: Segmentation, reader: Reader, geo: PageGeometry, g: Glyph) -> list[int]:
    """Page columns where ``g`` may be two letters touching, at least 0.08 em from either end:
    up to 8 columns in the lows of its column ink profile (the joint of two letters is a single
    thin stroke) and 12 evenly spaced ones (a joint along a crossbar is a long low where the
    lowest columns need not be the right cut)."""
    k, _ = geo.of(g)
    min_w = 0.08 * reader.units_per_em / reader.units_per_pixel * k
    xa, ya, xb, yb = win = glyph_window(seg, g)
    prof = ndimage.gaussian_filter1d(isolated(seg, g, win).sum(axis=0).astype(np.float64), 1.0)
    lo, hi = int(math.ceil(g.left + min_w)) - xa, int(math.floor(g.right - min_w)) - xa
    if hi <= lo:
        return []
    inner = prof[lo:hi]
    lows = np.nonzero(inner <= inner.min() + 0.5 * (np.median(inner) - inner.min()))[0]
    if lows.size > 8:
        lows = lows[np.round(np.linspace(0, lows.size - 1, 8)).astype(int)]
    even = np.round(np.linspace(0, inner.size - 1, min(12, inner.size))).astype(int)
    return [xa + lo + int(m) for m in sorted(set(lows.tolist()) | set(even.tolist()))]


def column_piece(seg: Segmentation, g: Glyph, c0: int, c1: int) -> Glyph | None:
    """The part of ``g`` in page columns [c0, c1) (and its own columns), measured; None without ink."""
    g0, g1 = g.cols if g.cols is not None else (-(1 << 30), 1 << 30)
    q = Glyph(comps=list(g.comps), box=g.box, line=g.line, cols=(max(g0, c0), min(g1, c1)))
    if not set_box(seg, q):
        return None
    measure(seg, q)
    return q if math.isfinite(q.left) and math.isfinite(q.right) else None


def width_limits(reader: Reader, geo: PageGeometry, g: Glyph) -> tuple[float, float]:
    """(narrowest, widest) ink a piece may have, page px: 0.6 x the narrowest prototype of the
    page's table and the marks, 1.3 x the widest (the length prior of a segmentation)."""
    tables = [reader.tables[geo.table or "robust"]] + ([reader.marks] if reader.marks is not None else [])
    widths = np.concatenate([np.nan_to_num(t["right"] - t["left"], nan=0.0) for t in tables])
    widths = widths[widths > 0]
    k, _ = geo.of(g)
    return 0.6 * float(widths.min()) * k, 1.3 * float(widths.max()) * k


def too_narrow_to_cut(reader: Reader, geo: PageGeometry, g: Glyph) -> bool:
    """Whether ``g`` is narrower than two of the narrowest prototypes side by side (an i or an l
    blurred wide, whose halves each read as an i or an l, is one letter)."""
    lo_w, _ = width_limits(reader, geo, g)
    return g.right - g.left < 2 * lo_w / 0.6


def _segment_columns(seg: Segmentation, reader: Reader, geo: PageGeometry, g: Glyph) -> list[int]:
    """The columns a segmentation may cut ``g`` at: its ends, the candidates of ``cut_candidates``
    and a column every 0.04 em at least 0.05 em from either end (a mark beside a letter)."""
    em = reader.units_per_em / reader.units_per_pixel * geo.of(g)[0]
    x0, x1 = int(math.floor(g.left)), int(math.ceil(g.right))
    step = max(1, int(round(0.04 * em)))
    grid = range(int(math.ceil(g.left + 0.05 * em)), int(math.floor(g.right - 0.05 * em)) + 1, step)
    inner = sorted(c for c in set(grid) | set(cut_candidates(seg, reader, geo, g)) if x0 < c < x1)
    return [x0] + inner + [x1 + 1]


def best_segmentation(seg: Segmentation, reader: Reader, geo: PageGeometry, g: Glyph,
                      max_pieces: int = 4) -> tuple[list[Glyph], list[float]]:
    """``g`` cut at 1 to ``max_pieces`` - 1 of its ``_segment_columns`` into the pieces that read best
    (the module doc): every run of columns between two cuts whose ink is within ``width_limits``
    is read (one batch), and the path of at least two pieces with the largest product of
    ``read_score`` is found by dynamic programming over (cut, pieces so far). Returns the pieces
    and their scores, left to right; ([], []) when no path of two or more pieces exists."""
    lo_w, hi_w = width_limits(reader, geo, g)
    if g.right - g.left + 1 > max_pieces * (hi_w + 2):  # no path: each piece spans at most hi_w + 2 of the columns
        return [], []
    if too_narrow_to_cut(reader, geo, g):
        return [], []
    cols = _segment_columns(seg, reader, geo, g)
    n = len(cols)
    spans, pieces = [], []
    for i in range(n - 1):
        for j in range(i + 1, n):
            if (i, j) == (0, n - 1) or cols[j] - cols[i] < lo_w:
                continue
            if cols[j] - cols[i] > hi_w + 2:
                break
            q = column_piece(seg, g, cols[i] if i else -(1 << 30), cols[j] if j < n - 1 else 1 << 30)  # ends keep the fringe
            if q is not None and lo_w <= q.right - q.left <= hi_w:
                spans.append((i, j))
                pieces.append(q)
    if not pieces:
        return [], []
    scores = read_scores(seg, reader, geo, pieces)
    # best[c][j]: (log-score, previous node, piece index) of the best path of c pieces from node 0 to node j
    best = [dict() for _ in range(max_pieces + 1)]
    best[0][0] = (0.0, -1, -1)
    for c in range(1, max_pieces + 1):
        for p, ((i, j), s) in enumerate(zip(spans, scores)):
            if i in best[c - 1] and s > 0:
                v = best[c - 1][i][0] + math.log(s)
                if j not in best[c] or v > best[c][j][0]:
                    best[c][j] = (v, i, p)
    ends = [(best[c][n - 1][0], c) for c in range(2, max_pieces + 1) if n - 1 in best[c]]
    if not ends:
        return [], []
    _, c = max(ends)
    out, node = [], n - 1
    for cc in range(c, 0, -1):
        _, prev, p = best[cc][node]
        out.append(p)
        node = prev
    out.reverse()
    return [pieces[p] for p in out], [scores[p] for p in out]
