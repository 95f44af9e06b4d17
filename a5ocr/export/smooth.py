"""Smooth outlines of a gray (or binary) design: quadratic splines on the design's half-ink line.

The design is a pixel image w [R, R] (any R: 32 at the sensor grid, 128 at print resolution). A
font outline is monochrome, and what a rasteriser makes of it is the ink coverage of each pixel;
the outline is fitted so that this coverage matches the design: ``fit_field`` finds a field g
[R, R] whose bilinear half level set {g > 0.5} covers each pixel by about w (the coverage counted
on an ``oversample``-times finer grid), pushed to at least 0.5 + ``margin`` where w > 0.5 and at
most 0.5 - ``margin`` where w <= 0.5 (so that the ink > 0.5 masks agree with room to spare), by
a damped fixed-point iteration g += eta (w - coverage + margin terms) starting from g = w, keeping
the iterate whose masks agree best. (The plain 0.5 iso-line of the bilinear design, ``contour``,
misses thin gray strokes: IoU 0.83 for a 1-px-wide "i" of a 32-px A5/PC design.) Its 0.5 iso-line
(``outline.bilinear_upsample`` + ``outline.trace_level``: sub-pixel exact, paper outside the
canvas, scikit-image's marching squares) is simplified with Ramer-Douglas-Peucker (scikit-image's
``approximate_polygon``) to ``tolerance`` design pixels. The simplified
polygon is then read as the control polygon of a TrueType quadratic spline: every vertex is an
off-curve point, the on-curve points are implied half-way between them (so the curve is C1:
tangent-continuous, no staircase, no kink), except at corners (turning angle above
``corner_deg``), which stay on-curve and sharp. A spline with k control points has k TrueType
points, so the point count is the polygon's; for CFF the same splines are merged into cubics by
``fontTools.qu2cu`` (``Qu2CuPen``, ``cubic_outline``: the merge tolerance per glyph). A glyph
over a point budget (the font's: 3x the source glyph's) gets the most faithful outline within it
that keeps a floor IoU (``budget_fit``: a fine tolerance grid, control points read or fitted to
the dense outline by least squares, ``least_squares_controls``; for CFF, where no merge keeps
the floor, cubics fitted to the dense outline under the budget, ``cubic.budget_cubics``).

Why hand-written (a reading of the polygon, not a curve fit): the bitmap tracers on PyPI that fit
curves are potrace ports (GPL, this project is MIT) or vtracer (MIT, but its splines follow the
bitmap's staircase: hundreds of segments per glyph at 8x oversampling, measured), and a
least-squares fit (scipy ``splprep``) rounds corners and needs knot-to-Bezier conversion for
little gain: the iso-line is already sub-pixel exact, and RDP + the spline reading keep it
within ~``tolerance`` px (tests measure the IoU against the design). The outline is produced as
pen calls once (``draw_spline``); the pen decides the format (``TTGlyphPen``, ``T2CharStringPen``
behind ``Qu2CuPen``, ``ReportLabPen``).
"""

from __future__ import annotations

import math

import numpy as np
from fontTools.pens.basePen import decomposeQuadraticSegment
from fontTools.pens.qu2cuPen import Qu2CuPen
from fontTools.pens.recordingPen import RecordingPen
from matplotlib.path import Path as MplPath

from a5ocr.export import outline as tracers
from a5ocr.export.cubic import budget_cubics
from a5ocr.export.outline import mask_iou


def _fine(g: np.ndarray, n: int) -> np.ndarray:
    """The bilinear interpolant of g [R, R] (pixel c's value at c + 0.5, 0 outside) at the centres
    c + (i + 0.5) / n of an n-times finer grid -> [R n, R n]. Gathers, not a matrix product: tiny
    BLAS calls cost more than the work when the CPU is shared."""
    r = g.shape[0]
    pos = (np.arange(r * n) + 0.5) / n + 0.5  # in the zero-padded image's index
    lo = np.floor(pos).astype(int)
    frac = pos - lo
    p = np.pad(g, 1)
    rows = p[lo] * (1.0 - frac)[:, None] + p[lo + 1] * frac[:, None]
    return rows[:, lo] * (1.0 - frac)[None, :] + rows[:, lo + 1] * frac[None, :]


def fit_field(w: np.ndarray, oversample: int = 8, margin: float = 0.2, iters: int = 100, eta: float = 0.5) -> np.ndarray:
    """The field g [R, R] whose half level set covers the pixels as the design w [R, R] (module doc)."""
    w = np.asarray(w, np.float64)
    r = w.shape[0]
    ink = w > 0.5
    g, best, best_bad = w.copy(), w, np.inf
    for t in range(iters):
        cov = (_fine(g, oversample) > 0.5).reshape(r, oversample, r, oversample).mean(axis=(1, 3))
        bad = int(((cov > 0.5) != ink).sum())
        if bad < best_bad:
            best, best_bad = g.copy(), bad
        short = np.where(ink, np.maximum(0.0, 0.5 + margin - cov), -np.maximum(0.0, cov - 0.5 + margin))
        if bad == 0 and not short.any():
            break
        err = (w - cov) + short
        g = g + eta * (0.97 ** t) * err
    return best


# RDP tolerances tried, coarse to fine, in design px at 32 px per canvas (scaled with the canvas above 32).
TOLERANCES = (0.3, 0.22, 0.16, 0.12, 0.09, 0.06, 0.04)


# RDP tolerances searched for a glyph over its point budget (``budget_fit``), in design px at 32
# px per canvas (scaled as ``TOLERANCES``): a fine geometric grid, as the budget falls anywhere.
BUDGET_TOLERANCES = tuple(float(t) for t in np.geomspace(0.03, 0.6, 40))  # finest first
BUDGET_EVALUATED = 6  # the finest candidates within the budget whose IoU is measured


def trace_outline(w: np.ndarray, oversample: int = 8) -> list[np.ndarray]:
    """The dense outline the splines are fitted to: the 0.5 iso-line of the bilinear interpolant
    of ``fit_field(w)`` on an ``oversample``-times finer grid, closed loops [n, 2] in canvas px."""
    f, x0, step = tracers.bilinear_upsample(fit_field(np.asarray(w, np.float64), oversample), oversample)
    return [x0 + loop * step for loop in tracers.trace_level(f, 0.5)]


def smooth_polygons(w: np.ndarray, oversample: int = 8, target_iou: float = 0.99, corner_deg: float = 65.0,
                    max_points: int | None = None, floor_iou: float | None = None,
                    dense: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """The loops of ``smooth_fit``."""
    return smooth_fit(w, oversample, target_iou, corner_deg, max_points, floor_iou, dense)[2]


def smooth_fit(w: np.ndarray, oversample: int = 8, target_iou: float = 0.99, corner_deg: float = 65.0,
               max_points: int | None = None, floor_iou: float | None = None,
               dense: list[np.ndarray] | None = None) -> tuple[float, int, list[tuple[np.ndarray, np.ndarray]]]:
    """(IoU, points, loops): control polygons of the smooth outline of ink ``w`` [R, R] in canvas px (x right, y down).

    The coarsest RDP tolerance of ``TOLERANCES`` whose spline covers the pixels so that the ink >
    0.5 masks of coverage and design reach ``target_iou`` (coverage counted on the
    ``oversample`` grid, as a rasteriser would); the best one if none does. A point budget
    (``max_points``, with ``floor_iou``): where that outline has more points, the most faithful
    of ``budget_fit``'s outlines within the budget whose IoU is at least ``floor_iou``
    (``within_budget``). ``dense``: ``trace_outline(w, oversample)`` when given. The loops are
    (points [n, 2], is_corner [n] bool) per closed loop, TrueType orientation (outer contours
    clockwise once y points up), loops with fewer than 3 points or under 0.05 px^2 dropped; the
    IoU is their mask IoU with the design.
    """
    w = np.asarray(w, np.float64)
    dense = trace_outline(w, oversample) if dense is None else dense
    scale = max(1.0, w.shape[0] / 32.0)
    tried: list[tuple[float, int, list]] = []
    for tol in TOLERANCES:
        loops = _control_loops(dense, tol * scale, corner_deg)
        tried.append((_iou(loops, w, oversample), sum(len(p) for p, _ in loops), loops))
        if tried[-1][0] >= target_iou:
            break
    best = max(tried, key=lambda t: t[0]) if tried[-1][0] < target_iou else tried[-1]
    if max_points is None or best[1] <= max_points:
        return best
    fit = budget_fit(dense, w, oversample, corner_deg, max_points, lambda loops: [(sum(len(p) for p, _ in loops), loops)],
                     lambda loops: spline_coverage(loops, w.shape[0], oversample))
    return within_budget(tried + fit, best, max_points, floor_iou)


def _iou(loops: list, w: np.ndarray, oversample: int) -> float:
    return mask_iou(spline_coverage(loops, w.shape[0], oversample) > 0.5, w > 0.5)


def budget_fit(dense: list[np.ndarray], w: np.ndarray, oversample: int, corner_deg: float, max_points: int,
               make, coverage) -> list[tuple[float, int, object]]:
    """Outlines for a glyph over its point budget, the most faithful first: every tolerance of
    ``BUDGET_TOLERANCES``, each read from the simplified polygon (``_control_loops``) and with
    its off-curve points fitted to ``dense`` by least squares (``least_squares_controls``);
    ``make(loops)`` -> [(points, outline), ...], most faithful first, gives each its format's
    outlines (the splines; for CFF the qu2cu merges, finest first: the first within the budget
    is kept), ``coverage(outline)`` its coverage [R, R]. Counting points is cheap, a
    coverage is not: the ``BUDGET_EVALUATED`` candidates with the finest tolerances among those
    within ``max_points`` are measured. Returns (IoU, points, outline) each."""
    w = np.asarray(w, np.float64)
    scale = max(1.0, w.shape[0] / 32.0)
    fits = []  # (tolerance, variant, points, outline), within the budget
    for tol in BUDGET_TOLERANCES:
        read = _control_loops(dense, tol * scale, corner_deg, with_dense=True)
        if sum(len(ctrl) for _, _, ctrl, _ in read) > 3 * max_points:
            continue  # no merge brings that many under the budget
        for variant, loops in enumerate(([(ctrl, c) for _, _, ctrl, c in read],
                                         [(least_squares_controls(d, poly, c, ctrl), c) for d, poly, ctrl, c in read])):
            within = [m for m in make(loops) if m[0] <= max_points]
            if within:  # the most faithful (the list's first) within the budget
                fits.append((tol, variant, *within[0]))
        if len({f[0] for f in fits}) * 2 >= BUDGET_EVALUATED:
            break
    fits = fits[:BUDGET_EVALUATED]
    design = w > 0.5
    return [(mask_iou(coverage(outline) > 0.5, design), points, outline) for _, _, points, outline in fits]


def within_budget(tried: list, best: tuple, max_points: int, floor_iou: float | None) -> tuple:
    """Of candidate outlines ``tried`` (IoU, points, outline), the highest-IoU one with at most
    ``max_points`` points and IoU >= ``floor_iou``; ``best`` (over budget) where none is."""
    fits = [t for t in tried if t[1] <= max_points and (floor_iou is None or t[0] >= floor_iou)]
    return max(fits, key=lambda t: t[0]) if fits else best


def _control_loops(dense: list[np.ndarray], tolerance: float, corner_deg: float, with_dense: bool = False) -> list:
    """(control points, corner flags) per loop of ``dense`` simplified to ``tolerance``; with
    ``with_dense``, (dense loop, simplified polygon, control points, corner flags)."""
    out = []
    for loop, poly in zip(dense, _simplified(dense, tolerance)):
        if poly is None:
            continue
        corner = corners(poly, corner_deg)
        # half-way between reading the vertices as control points (the spline cuts inside convex
        # turns) and solving for a spline through them (overshoots next to long straight edges)
        ctrl = poly + 0.5 * (through_points(poly, corner) - poly)
        out.append((loop, poly, ctrl, corner) if with_dense else (ctrl, corner))
    return out


def _simplified(dense: list[np.ndarray], tolerance: float) -> list[np.ndarray | None]:
    """Each loop of ``dense`` simplified (``outline.simplify``); None for one too small to keep
    (fewer than 3 points or under 0.05 px^2)."""
    out = []
    for loop in dense:
        poly = tracers.simplify(loop, tolerance)
        out.append(None if len(poly) < 3 or abs(tracers.signed_area(poly)) < 0.05 else poly)
    return out


def least_squares_controls(dense: np.ndarray, poly: np.ndarray, corner: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The off-curve points of ``draw_spline``'s spline on ``poly``'s vertices (corners fixed)
    that fit the dense outline ``dense`` [m, 2] best in least squares; ``start`` where that
    cannot be set up (a vertex not on ``dense``).

    The spline is linear in its control points once each dense point has its piece and parameter
    u: piece j (around off-curve point c_j) runs between the on-curve points on either side of
    c_j (the implied mid-points, or a corner), so the dense points between vertex j-1 and j are
    split at their arc-length middle (at the corner itself when one of them is a corner), and u
    is the arc-length fraction within the piece. A small pull (1e-3) towards ``start`` keeps a
    piece without dense points in place. Why ours: ``scipy.interpolate.splprep`` fits knots of
    its own (on-curve points TrueType would have to store), fontTools has no curve fit; this is
    TrueType's own spline form (a uniform quadratic B-spline between corners). Used for glyphs
    over their point budget only (``budget_fit``): as the only reading (history b6f6573)
    it gained little on wavy designs and moved 32-px designs' outlines."""
    n = len(poly)
    where = {tuple(p): i for i, p in enumerate(dense)}
    idx = [where.get(tuple(p)) for p in poly]
    if None in idx or n < 3 or corner.all():
        return start
    arc = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(np.vstack([dense, dense[:1]]), axis=0), axis=1))]
    total = arc[-1]
    ss = np.r_[arc[:-1] - total, arc[:-1], arc[:-1] + total]  # the loop three times, unwrapped
    pts = np.vstack([dense, dense, dense])
    rows, rhs = [], []
    for j in range(n):
        if corner[j]:
            continue
        a, b = (j - 1) % n, (j + 1) % n
        sj, sa, sb = arc[idx[j]], arc[idx[a]], arc[idx[b]]
        sa, sb = sa - total if sa > sj else sa, sb + total if sb < sj else sb
        s0 = sa if corner[a] else 0.5 * (sa + sj)
        s1 = sb if corner[b] else 0.5 * (sj + sb)
        if s1 <= s0:
            continue
        sel = (ss >= s0) & (ss < s1)
        u = (ss[sel] - s0) / (s1 - s0)
        coef = np.zeros((sel.sum(), n))
        target = pts[sel].copy()
        left, right = (1 - u) ** 2, u ** 2
        coef[:, j] += 2 * u * (1 - u)
        for k, wgt in ((a, left), (b, right)):
            if corner[k]:
                target -= wgt[:, None] * poly[k]
            else:  # the implied on-curve point half-way between c_j and c_k
                coef[:, j] += 0.5 * wgt
                coef[:, k] += 0.5 * wgt
        rows.append(coef)
        rhs.append(target)
    free = ~corner
    lam = 1e-3
    a_mat = np.vstack(rows + [lam * np.eye(n)])[:, free]
    b_vec = np.vstack(rhs + [lam * np.where(free[:, None], start, 0.0)])
    sol, *_ = np.linalg.lstsq(a_mat, b_vec, rcond=None)  # corner columns: moved to the right side
    out = poly.astype(np.float64).copy()
    out[free] = sol
    return out


def spline_coverage(loops: list[tuple[np.ndarray, np.ndarray]], r: int, oversample: int) -> np.ndarray:
    """[r, r] fraction of each pixel inside the splines of ``loops`` (even-odd over the loops),
    counted at the centres of an ``oversample``-times finer grid; the splines flattened to 8 points per piece."""
    rec = RecordingPen()
    for poly, corner in loops:
        draw_spline(rec, poly, corner)
    return recording_coverage(rec, r, oversample)


def recording_coverage(rec: RecordingPen, r: int, oversample: int) -> np.ndarray:
    """``spline_coverage`` of a recording in canvas px (lines, quadratic and cubic pieces)."""
    n = r * oversample
    sub = (np.arange(n) + 0.5) / oversample
    inside = np.zeros((n, n), bool)
    for ring in _flatten(rec):  # each ring tested on the centres of its bounding box only
        (x0, y0), (x1, y1) = ring.min(0), ring.max(0)
        c0, c1 = np.searchsorted(sub, x0), np.searchsorted(sub, x1, side="right")
        r0, r1 = np.searchsorted(sub, y0), np.searchsorted(sub, y1, side="right")
        if c1 <= c0 or r1 <= r0:
            continue
        yy, xx = np.meshgrid(sub[r0:r1], sub[c0:c1], indexing="ij")
        inside[r0:r1, c0:c1] ^= MplPath(ring).contains_points(np.c_[xx.ravel(), yy.ravel()]).reshape(r1 - r0, c1 - c0)
    return inside.reshape(r, oversample, r, oversample).mean(axis=(1, 3))


def _flatten(rec: RecordingPen, per_piece: int = 8) -> list[np.ndarray]:
    """Closed polygons along the lines, quadratic and cubic pieces of a recording
    (moveTo/lineTo/qCurveTo/curveTo/closePath; a curveTo of one cubic at a time, as qu2cu gives)."""
    rings, cur = [], []
    t = (np.arange(per_piece) + 1.0)[:, None] / per_piece
    for op, args in rec.value:
        if op == "moveTo":
            cur = [np.asarray(args[0], np.float64)]
        elif op == "lineTo":
            cur.append(np.asarray(args[0], np.float64))
        elif op == "qCurveTo":
            for off, on in decomposeQuadraticSegment(args):
                p0, p1, p2 = cur[-1], np.asarray(off), np.asarray(on)
                cur.extend((1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t ** 2 * p2)
        elif op == "curveTo":
            if len(args) != 3:
                raise ValueError("curveTo with other than 3 points (one cubic) is not flattened")
            p0, (p1, p2, p3) = cur[-1], (np.asarray(a, np.float64) for a in args)
            cur.extend((1 - t) ** 3 * p0 + 3 * t * (1 - t) ** 2 * p1 + 3 * t ** 2 * (1 - t) * p2 + t ** 3 * p3)
        elif op == "closePath":
            rings.append(np.array(cur))
    return rings


# qu2cu merge tolerances tried, coarse to fine, in design px (print px at print resolution); the
# finest is the one every design was merged with before (``font.MERGE_PX``).
MERGE_TOLERANCES = (1.0, 0.7, 0.5, 0.3, 0.2, 0.1)
FIT_GRID = 1024  # px per canvas side (at least) of the finer coverage grid of ``cubic_outline``


def cubic_outline(loops: list[tuple[np.ndarray, np.ndarray]], w: np.ndarray, oversample: int = 8,
                  target_iou: float = 0.99, max_points: int | None = None, floor_iou: float | None = None,
                  dense: list[np.ndarray] | None = None, corner_deg: float = 65.0,
                  loops_iou: float | None = None) -> RecordingPen:
    """The quadratic splines of ``loops`` (``smooth_polygons``) merged into cubics (CFF) by
    fontTools' qu2cu (``Qu2CuPen``, all cubic) at the coarsest of ``MERGE_TOLERANCES`` whose
    coverage keeps the ink > 0.5 mask IoU with the design ``w`` [R, R] at ``target_iou`` (or at
    the splines' own IoU, where that is lower); the finest if none does. Over the point budget
    ``max_points``: the most faithful merge within it whose IoU is at least ``floor_iou``
    (``within_budget``), of these and, where ``dense`` (``trace_outline``) is given, of
    ``budget_fit``'s outlines, each merged at every tolerance. With ``dense`` and ``floor_iou``:
    where none of those is within the budget above the floor, or the chosen merge's IoU on a
    finer grid (``FIT_GRID``) is below the floor, the cubics fitted to ``dense`` within the
    budget (``cubic.budget_cubics``; qu2cu cannot merge a tight spline below ~2 cubic points
    per quadratic piece) replace it where their finer-grid IoU is higher (and, over the budget,
    at least the floor). A recording in canvas px,
    TrueType orientation (the CFF writer reverses it). ``loops_iou``: the splines' IoU where
    known (``smooth_fit``'s), measured otherwise. Why per glyph: one tolerance for all
    either leaves a bumpy glyph with 4-5x the source's points (qu2cu keeps every bump within a
    tight tolerance) or moves a thin glyph's edges too far."""
    r = w.shape[0]
    design = np.asarray(w) > 0.5
    goal = min(target_iou, _iou(loops, w, oversample) if loops_iou is None else loops_iou)
    tried = []
    for tol in MERGE_TOLERANCES:
        rec = _merged(loops, tol)
        tried.append((mask_iou(recording_coverage(rec, r, oversample) > 0.5, design), recording_points(rec), rec))
        if tried[-1][0] >= goal:
            break
    best = tried[-1]
    over = max_points is not None and best[1] > max_points
    if over and dense is not None:
        tried += budget_fit(dense, w, oversample, corner_deg, max_points,
                            lambda lp: [(recording_points(m), m) for m in (_merged(lp, t) for t in sorted(MERGE_TOLERANCES))],
                            lambda rec: recording_coverage(rec, r, oversample))
    chosen = within_budget(tried, best, max_points, floor_iou) if over else best
    if dense is None or floor_iou is None:
        return chosen[2]
    # the cubic fit: where no merge within the budget keeps the floor, or where the chosen one
    # keeps it on the check's grid of sample centres only (a finer grid, ``FIT_GRID``, is nearer
    # FreeType's exact areas: at 32 px the 8x grid passed S = 1 "0" at IoU 1.0 where FreeType
    # gave 0.971; at 128 px the 4x grid passed a thin "i" merge at 0.981, FreeType 0.960)
    fine = max(oversample, FIT_GRID // r)
    exact = lambda rec: mask_iou(recording_coverage(rec, r, fine) > 0.5, design)  # noqa: E731
    still_over = max_points is not None and chosen[1] > max_points
    chosen_exact = -1.0 if still_over else exact(chosen[2])
    if still_over or chosen_exact < floor_iou:
        fit = budget_cubics(dense, chosen[1] if max_points is None else max_points, r, corner_deg, design=design,
                            coverage=lambda rec: recording_coverage(rec, r, fine))
        if fit is not None:
            fit_exact = exact(fit)
            if fit_exact > chosen_exact and (not still_over or fit_exact >= floor_iou):
                return fit
    return chosen[2]


def _merged(loops: list[tuple[np.ndarray, np.ndarray]], tol: float) -> RecordingPen:
    """The splines of ``loops`` merged into cubics by qu2cu within ``tol`` px."""
    rec = RecordingPen()
    pen = Qu2CuPen(rec, tol, all_cubic=True)
    for poly, corner in loops:
        draw_spline(pen, poly, corner)
    return rec


def recording_points(rec: RecordingPen) -> int:
    """On-curve + off-curve points of a recording as a font stores them (a contour's closing
    point not repeated; TrueType's implied on-curve points not counted)."""
    n, start, last = 0, None, None
    for op, args in rec.value:
        if op == "moveTo":
            start = args[0]
        if op in ("moveTo", "lineTo", "curveTo", "qCurveTo"):
            n += sum(a is not None for a in args)
            last = args[-1]
        elif op == "closePath" and last == start and last is not None:
            n -= 1
    return n


def through_points(poly: np.ndarray, corner: np.ndarray) -> np.ndarray:
    """Control points whose spline (``draw_spline``) passes through every vertex of ``poly``.

    The quadratic piece around an off-curve point c_j runs from the implied on-curve point
    (c_{j-1} + c_j) / 2 to (c_j + c_{j+1}) / 2; its midpoint (c_{j-1} + 6 c_j + c_{j+1}) / 8 is set to
    vertex p_j (next to an on-curve corner A: (2A + 5 c_j + c_{j+1}) / 8; between two corners:
    (A + 2 c_j + B) / 4): one tridiagonal (cyclic without corners), diagonally dominant system per
    span between corners. Corners stay where they are.
    """
    n = len(poly)
    out = poly.astype(np.float64).copy()
    idx = np.nonzero(corner)[0]
    if idx.size == 0:
        a = np.zeros((n, n))
        for j in range(n):
            a[j, (j - 1) % n], a[j, j], a[j, (j + 1) % n] = 1 / 8, 6 / 8, 1 / 8
        return np.linalg.solve(a, out)
    for s, e in zip(idx, np.roll(idx, -1)):
        span = [(s + i) % n for i in range(1, (e - s - 1) % n + 1)]
        if span:
            out[span] = _solve_span(poly[s], poly[e], poly[span])
    return out


def _solve_span(a_pt: np.ndarray, b_pt: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Off-curve points c_1..c_k between on-curve corners A and B whose spline passes through p_1..p_k."""
    k = len(p)
    if k == 1:
        return (4 * p - a_pt - b_pt) / 2
    m = np.zeros((k, k))
    rhs = 8 * p.astype(np.float64)
    for j in range(k):
        m[j, j] = 6.0
        if j > 0:
            m[j, j - 1] = 1.0
        if j < k - 1:
            m[j, j + 1] = 1.0
    m[0, 0], m[-1, -1] = 5.0, 5.0
    rhs[0] -= 2 * a_pt
    rhs[-1] -= 2 * b_pt
    return np.linalg.solve(m, rhs)


def corners(poly: np.ndarray, corner_deg: float) -> np.ndarray:
    """[n] bool: vertices of a closed polygon where the direction turns by more than ``corner_deg``."""
    a = poly - np.roll(poly, 1, axis=0)
    b = np.roll(poly, -1, axis=0) - poly
    turn = np.abs(np.arctan2(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0], (a * b).sum(1)))
    return turn > math.radians(corner_deg)


def draw_spline(pen, pts: np.ndarray, corner: np.ndarray) -> None:
    """Draw one closed loop: off-curve control points ``pts`` [n, 2] except ``corner`` ones (on-curve).

    A loop without corners starts at the implied on-curve point between its last and first
    control points (made explicit: a pen contour starts on the curve).
    """
    pts = [tuple(float(v) for v in p) for p in pts]
    n = len(pts)
    idx = np.nonzero(corner)[0]
    if idx.size == 0:
        start = ((pts[-1][0] + pts[0][0]) / 2, (pts[-1][1] + pts[0][1]) / 2)
        pen.moveTo(start)
        pen.qCurveTo(*pts, start)
        pen.closePath()
        return
    s = int(idx[0])
    order = [(s + i) % n for i in range(1, n + 1)]  # ends at the start corner
    pen.moveTo(pts[s])
    pending: list[tuple[float, float]] = []
    for i in order:
        if corner[i]:
            if pending:
                pen.qCurveTo(*pending, pts[i])
            elif i != s:
                pen.lineTo(pts[i])
            pending = []
        else:
            pending.append(pts[i])
    pen.closePath()
