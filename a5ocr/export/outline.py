"""Raster -> outline: closed polygons around the ink of a glyph image, for font export.

Two tracers returning closed loops with one orientation rule (ink on the right of the direction
of travel once y points up, so outer contours run clockwise and holes counter-clockwise: the
TrueType convention):

* ``trace_level(f, level)``: marching squares on a grid of samples ``f`` [H, W] at the
  iso-level ``level``, by scikit-image (``skimage.measure.find_contours``); crossing points are
  interpolated linearly along the grid lines, so for a bilinear image sampled on a finer grid
  they lie exactly on the bilinear iso-line. A saddle cell (ink at two opposite corners only)
  joins its ink corners or keeps them apart as the bilinear interpolant does (the value at its
  saddle point); ``find_contours`` takes one rule per grid (``fully_connected``), so the rule of
  most saddle cells is taken for all (exact when they agree).
* ``trace_pixels(mask)``: the exact boundary of the union of the True pixels of ``mask``
  [H, W] (pixel (r, c) is the square [c, c+1] x [r, r+1]); two pixels touching only at a
  corner give two loops touching at that point. Hand-written: no library traces pixel edges
  (``find_contours`` gives iso-lines through pixel centres, not the squares' union).

Loops are [n, 2] float arrays of (x, y) in image coordinates (x right, y down), without the
closing point repeated. ``simplify`` removes points within a tolerance (Ramer-Douglas-Peucker,
``skimage.measure.approximate_polygon``) and exactly collinear ones, ``bilinear_upsample``
samples the bilinear interpolant of a pixel image; ``mask_iou`` is the IoU the outline fits
are judged by (of a rendering's and the design's ink masks).

Measured against the hand-written marching squares and RDP these replaced, on the grids the
export traces for renders/comic-neue-62-0.1 (62 glyphs, 32x32, 8x oversampling; the design for
``contour``, the fitted field for ``smooth``): the same crossing points bit for bit (the old
tracer repeated the point where the iso-line passes through a grid node), no saddle cell at all
(1 at 4x, 24 at 1x, where the old rule, the cell's centre value, decided 5 against the bilinear
interpolant and this one 2, in the 2 glyphs with saddles of both kinds); the exported fonts, as
``benchmarks/font_outlines.py`` measures them: .ttf points 2857 -> 2858, IoU min / mean 0.9801 /
0.9969 both; .otf 4846 -> 4849, 0.9826 / 0.9970 -> 0.9826 / 0.9968; ``contour`` .ttf 8127 -> 8154
points, IoU the same (``approximate_polygon`` measures a point's distance to the segment, ours did to
its line: on the same traced loops 8161 -> 8182 points at 0.02 px).
"""

from __future__ import annotations

import numpy as np
from skimage import measure


def _chain(succ: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
    """Follow ``succ`` (node -> next node, -1 = none) from every node in ``starts``; closed loops of node ids."""
    seen = np.zeros(succ.shape[0], bool)
    loops = []
    for s in starts:
        if seen[s]:
            continue
        loop = []
        n = int(s)
        while not seen[n]:
            seen[n] = True
            loop.append(n)
            n = int(succ[n])
            if n < 0:
                raise RuntimeError("open contour while tracing pixel edges")
        loops.append(np.array(loop, dtype=np.int64))
    return loops


def trace_level(f: np.ndarray, level: float = 0.5) -> list[np.ndarray]:
    """Closed iso-contours of ``{f > level}`` for samples ``f`` [H, W] (node (i, j) at x=j, y=i).

    The border of ``f`` must be at most ``level`` (pad with paper first), so every contour closes.
    Returns loops [n, 2] of (x, y) in grid units; outer contours clockwise, holes
    counter-clockwise, with y pointing up (see the module docstring).
    """
    f = np.asarray(f, dtype=np.float64)
    h, w = f.shape
    if h < 2 or w < 2:
        return []
    if (f[0] > level).any() or (f[-1] > level).any() or (f[:, 0] > level).any() or (f[:, -1] > level).any():
        raise ValueError("trace_level: the border of the grid must be at or below the level")
    # (row, col) points, values below the level on the left: ink on the right once y points up
    joined = "high" if _saddles_join(f, level) else "low"
    loops = []
    for c in measure.find_contours(f, level, fully_connected=joined, positive_orientation="low"):
        if len(c) < 2 or not np.array_equal(c[0], c[-1]):
            raise RuntimeError("open contour while tracing (grid border not below the level?)")
        loops.append(_start_at_top(c[:-1, ::-1]))
    return loops


def _start_at_top(loop: np.ndarray) -> np.ndarray:
    """``loop`` rotated to start at its leftmost crossing of the topmost grid row it crosses.

    Where the hand-written tracer started its loops, and the start is where ``simplify`` splits a
    loop: kept so that the exported outlines stay those measured (README: renders/comic-neue-62-0.1,
    .ttf IoU min 0.980, mean 0.997, 1.25x the source's points; .otf 0.983, 0.997, 2.14x). With
    ``find_contours``' own start the same points give 45 of 62 .ttf glyphs other point counts
    (2788 points instead of 2857, .otf 4724 instead of 4846) and IoU moves both ways (.otf mean 0.9958).
    """
    on_row = loop[:, 1] == np.floor(loop[:, 1])
    cand = np.nonzero(on_row & (loop[:, 0] != np.floor(loop[:, 0])))[0]  # not at a grid node
    if cand.size == 0:
        cand = np.nonzero(on_row)[0] if on_row.any() else np.arange(len(loop))
    k = int(cand[np.lexsort((loop[cand, 0], loop[cand, 1]))[0]])
    return np.ascontiguousarray(np.roll(loop, -k, axis=0))


def _saddles_join(f: np.ndarray, level: float) -> bool:
    """Whether most saddle cells of ``f`` (above the level at two opposite corners only) join
    their two corners on the bilinear interpolant: its value at its saddle point, (a c - b d) /
    (a + c - b - d) for corners a, c and b, d opposite, is above the level (the asymptotic
    decider; ``find_contours`` takes one rule for the whole grid, see the module doc)."""
    ins = f > level
    a, b, c, d = f[:-1, :-1], f[:-1, 1:], f[1:, 1:], f[1:, :-1]
    saddle = (ins[:-1, :-1] == ins[1:, 1:]) & (ins[:-1, 1:] == ins[1:, :-1]) & (ins[:-1, :-1] != ins[:-1, 1:])
    if not saddle.any():
        return False
    a, b, c, d = a[saddle], b[saddle], c[saddle], d[saddle]
    joins = (a * c - b * d) / (a + c - b - d) > level  # a + c - b - d != 0 in a saddle cell
    return 2 * int(joins.sum()) > joins.size


def trace_pixels(mask: np.ndarray) -> list[np.ndarray]:
    """Exact boundary loops of the True pixels of ``mask`` [H, W] (pixel (r, c) = [c, c+1] x [r, r+1]).

    Same orientation rule as ``trace_level``; only the corners of the boundary are kept.
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    h, w = m.shape  # padded; vertex (x, y) with x in [0, w], y in [0, h] -> id y*(w+1)+x
    nv = (h + 1) * (w + 1)
    # Directed unit edges with the ink on the right (y up) == cross(d, ink - p) > 0 in image coords.
    froms, tos = [], []
    # Vertical boundaries at x = c between pixel (r, c-1) and (r, c).
    left, right = m[:, :-1], m[:, 1:]
    r, c = np.nonzero(left & ~right)  # ink on the left (x smaller): walk down (y increasing)
    froms.append(r * (w + 1) + (c + 1)); tos.append((r + 1) * (w + 1) + (c + 1))
    r, c = np.nonzero(~left & right)  # ink on the right: walk up
    froms.append((r + 1) * (w + 1) + (c + 1)); tos.append(r * (w + 1) + (c + 1))
    # Horizontal boundaries at y = r between pixel (r-1, c) and (r, c).
    top, bottom = m[:-1, :], m[1:, :]
    r, c = np.nonzero(top & ~bottom)  # ink above (y smaller): walk left (x decreasing)
    froms.append((r + 1) * (w + 1) + (c + 1)); tos.append((r + 1) * (w + 1) + c)
    r, c = np.nonzero(~top & bottom)  # ink below: walk right
    froms.append((r + 1) * (w + 1) + c); tos.append((r + 1) * (w + 1) + (c + 1))
    fr, to = np.concatenate(froms), np.concatenate(tos)
    if fr.size == 0:
        return []
    # A vertex has one outgoing edge, or two at a diagonal (saddle) vertex. Chain edges (not
    # vertices): after arriving along d, take the outgoing edge turning towards the ink (right
    # turn in y-up = cross(d, d') > 0 in image coordinates), which keeps loops apart.
    order = np.argsort(fr, kind="stable")
    fr_s, to_s = fr[order], to[order]
    first = np.searchsorted(fr_s, np.arange(nv))
    count = np.bincount(fr_s, minlength=nv)

    def xy(v: np.ndarray) -> np.ndarray:
        return np.stack([v % (w + 1), v // (w + 1)], axis=-1)

    d_all = xy(to_s) - xy(fr_s)
    succ = np.empty(fr_s.size, dtype=np.int64)
    for e in range(fr_s.size):
        v = to_s[e]
        k0, n = first[v], count[v]
        if n == 1:
            succ[e] = k0
        else:
            d = d_all[e]
            best = k0
            for k in range(k0, k0 + n):
                dn = d_all[k]
                if d[0] * dn[1] - d[1] * dn[0] > 0:
                    best = k
            succ[e] = best
    loops = []
    for idx in _chain(succ, np.arange(fr_s.size)):
        pts = xy(fr_s[idx]).astype(np.float64) - 1.0  # undo the padding
        loops.append(pts)
    return [simplify(p, 0.0) for p in loops]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1 where both are empty)."""
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def signed_area(loop: np.ndarray) -> float:
    """Shoelace area of a closed loop [n, 2]; positive = counter-clockwise in a y-up frame."""
    x, y = loop[:, 0], loop[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def simplify(loop: np.ndarray, tol: float) -> np.ndarray:
    """Drop points of a closed loop that lie within ``tol`` of the simplified outline
    (Ramer-Douglas-Peucker, ``skimage.measure.approximate_polygon``, on the loop closed at its
    first point), then repeated and exactly collinear points.

    ``tol = 0`` removes exactly collinear points and repeated points only (``approximate_polygon``
    returns its input at 0: the exact test is ours, for the integer font units of the pixel outlines).
    """
    pts = np.asarray(loop, dtype=np.float64)
    if len(pts) < 3:
        return pts
    pts = pts[np.any(pts != np.roll(pts, -1, axis=0), axis=1)]  # drop repeated consecutive points
    if len(pts) < 3:
        return pts
    if tol > 0:
        pts = measure.approximate_polygon(np.vstack([pts, pts[:1]]), tol)[:-1]
    return _drop_collinear(pts)


def _drop_collinear(pts: np.ndarray) -> np.ndarray:
    """Remove repeated points and points on a straight line between their neighbours (cyclic)."""
    changed = True
    while changed and len(pts) >= 3:
        prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
        a, b = pts - prev, nxt - pts
        cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
        dot = a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1]
        drop = (np.all(a == 0, axis=1)) | ((cross == 0) & (dot > 0))
        if drop.any():
            # never drop two neighbours in one pass (their test used each other)
            idx = np.nonzero(drop)[0]
            keep_drop = np.ones(idx.size, bool)
            keep_drop[1:] = np.diff(idx) > 1
            if idx.size > 1 and idx[0] == 0 and idx[-1] == len(pts) - 1:
                keep_drop[-1] = False
            mask = np.ones(len(pts), bool)
            mask[idx[keep_drop]] = False
            pts = pts[mask]
        changed = bool(drop.any())
    return pts


def bilinear_upsample(w: np.ndarray, factor: int) -> tuple[np.ndarray, float, float]:
    """Sample the bilinear interpolant of a pixel image on a grid ``factor`` times finer.

    ``w`` [R, C]: value of pixel (r, c) at its centre (c + 0.5, r + 0.5); outside the image the
    value is 0 (one pixel of 0 is padded on every side). Returns ``(f, x0, step)``: ``f``
    [(R+1)*factor+1, (C+1)*factor+1]; grid node (i, j) sits at image coordinates
    (x0 + j*step, x0 + i*step), with x0 = -0.5 and step = 1/factor, so the border is 0 and
    every pixel centre is a node.
    """
    if factor < 1:
        raise ValueError("factor must be at least 1")
    p = np.pad(np.asarray(w, dtype=np.float64), 1)

    def interp_matrix(n_pix: int) -> np.ndarray:
        # nodes at padded-index coordinates k/factor, k = 0..(n_pix-1)*factor
        k = np.arange((n_pix - 1) * factor + 1)
        pos = k / factor
        lo = np.minimum(np.floor(pos).astype(int), n_pix - 2)
        frac = pos - lo
        m = np.zeros((k.size, n_pix))
        m[k, lo] = 1.0 - frac
        m[k, lo + 1] += frac
        return m

    my, mx = interp_matrix(p.shape[0]), interp_matrix(p.shape[1])
    return my @ p @ mx.T, -0.5, 1.0 / factor
