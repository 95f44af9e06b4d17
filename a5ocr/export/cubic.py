"""A CFF outline within a point budget: cubic Beziers and lines fitted to a dense closed outline.

``budget_cubics(dense, max_points)`` fits the dense outline (``smooth.trace_outline``: the
design's sub-pixel half-ink line) with closed contours of cubic pieces (3 points each: two
off-curve, one on-curve) and straight lines (1 point), using at most ``max_points`` points over
all loops, so that the squared distance of the dense outline to the curves is least:

1. Each loop is resampled every ``STEP`` px of arc length; ``CANDIDATES`` of those samples,
   evenly spaced, are the candidate on-curve points.
2. Every arc between two candidates (up to half the loop) gets its least-squares cubic (end
   points at the candidates, the two off-curve points solved, arc-length parameters refined by
   one Gauss-Newton projection step) and its chord, each with its squared error.
3. Dynamic programming over (points used, candidate reached) gives, for every point count, the
   segmentation of the loop with the least error (from a few starting candidates); a min-plus
   knapsack shares the glyph's budget among its loops.
4. The chosen segmentation is refined jointly: every sample projected onto its piece, then all
   on-curve and off-curve points of the loop solved at once by linear least squares, with rows
   keeping the joins tangent-continuous (G1: incoming and outgoing handles collinear, in the
   current handle-length ratio) where the pieces meet at less than ``corner_deg``.
5. Where a rasteriser's coverage is given, the fit is measured the way the export measures it
   (ink > 0.5 mask IoU against the design) and refined again (step 4, the segmentation kept)
   up to ``BOOST_ROUNDS`` times with the
   samples in and next to the wrong pixels weighted ``BOOST`` times more (cumulatively); the
   fit with the best IoU is kept. (The design's pixels next to the edge are often within a few
   hundredths of one half: a squared-distance fit with 0.1 px rms error still flips 2-3% of
   them, measured on "0", "H"; the reweighting recovers ~1 IoU point.)

Chords are allowed only where the outline is straight within ``LINE_TOLERANCE``: a chord costs
1 point against a cubic's 3, and an unconstrained programme approximates curves by facets.

Why hand-written: fontTools' ``qu2cu`` merges quadratic splines into cubics but cannot go below
about 2 cubic points per quadratic piece of a tight spline (measured: 6 designed glyphs of the
S = 4 Comic Neue design kept > 3x the source glyph's points at every merge tolerance, the best
"0" within its budget at IoU 0.947), and no maintained PyPI package fits Bezier curves to a
polyline under a point budget (Schneider's fitter, as in 66b3586, works to an error bound piece
by piece and spent 69 points on "l" where the budget is 42). Used only for glyphs over their
point budget (``smooth.cubic_outline``); the outline within budget is chosen by the mask IoU
against the design like every other candidate.
"""

from __future__ import annotations

import math

import numpy as np
from fontTools.pens.recordingPen import RecordingPen
from scipy import ndimage

from a5ocr.export import outline

STEP = 0.25  # px between resamples of the dense outline (at 128 px per canvas; scaled with it)
LINE_TOLERANCE = 0.03  # px (at 128 px per canvas): a chord only where no sample is further off it
CANDIDATES = 160  # candidate on-curve points per loop (fewer on a short loop)
STARTS = 8  # starting candidates tried per loop by the dynamic programme
REFINE = 6  # rounds of projection + joint least squares
G1_WEIGHT = 30.0  # weight of a tangent-continuity row against one sample's residual
SPAN_SAMPLES = 48  # at most this many samples per arc in the dynamic programme's error table
SPECK_AREA = 0.5  # px^2: smaller loops are dropped (alone they cannot carry a pixel's coverage across one half)
BOOST, BOOST_ROUNDS = 4.0, 8  # refits weighing the samples at wrong pixels more (budget_cubics)


def _resample(loop: np.ndarray, step: float) -> np.ndarray:
    """[m, 2] points every ``step`` px of arc length along the closed ``loop`` (not repeated)."""
    closed = np.vstack([loop, loop[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    arc = np.r_[0.0, np.cumsum(seg)]
    m = max(8, int(round(arc[-1] / step)))
    s = np.arange(m) * (arc[-1] / m)
    return np.c_[np.interp(s, arc, closed[:, 0]), np.interp(s, arc, closed[:, 1])]


def _bernstein(t: np.ndarray) -> np.ndarray:
    u = 1.0 - t
    return np.stack([u ** 3, 3 * t * u ** 2, 3 * t ** 2 * u, t ** 3], axis=-1)


def _fit_spans(q: np.ndarray, idx: np.ndarray, span: int, line_tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares cubic and chord errors of the arcs from candidate i to candidate i + span
    (all i at once). q [m, 2] samples, idx [M] candidate sample indices. Returns (cubic [M], line
    [M]); a chord is allowed (finite error) only where no sample is more than ``line_tol`` px
    off it: a straight run of the outline, not a facet of a curve."""
    m, big = len(q), len(idx)
    lo = idx
    hi = idx[(np.arange(big) + span) % big] + m * ((np.arange(big) + span) // big)
    length = hi - lo  # samples per arc (> 0)
    stride = max(1, math.ceil(int(length.max()) / SPAN_SAMPLES))  # long arcs: every stride-th sample
    k = np.arange(0, int(length.max()) + stride, stride)[None, :]
    valid = k <= length[:, None]
    at = (lo[:, None] + np.minimum(k, length[:, None])) % m
    x = q[at]  # [M, n, 2], padded with the end point
    p0, p3 = q[lo % m], q[hi % m]
    t = np.minimum(k / length[:, None], 1.0)
    wgt = valid.astype(np.float64)
    for _ in range(2):  # solve, project once, solve again
        b = _bernstein(t)
        rhs = x - b[..., :1] * p0[:, None] - b[..., 3:] * p3[:, None]
        a11 = (wgt * b[..., 1] ** 2).sum(1)
        a12 = (wgt * b[..., 1] * b[..., 2]).sum(1)
        a22 = (wgt * b[..., 2] ** 2).sum(1)
        r1 = (wgt[..., None] * b[..., 1:2] * rhs).sum(1)
        r2 = (wgt[..., None] * b[..., 2:3] * rhs).sum(1)
        det = a11 * a22 - a12 ** 2
        ok = np.abs(det) > 1e-12
        det = np.where(ok, det, 1.0)
        c1 = np.where(ok[:, None], (a22[:, None] * r1 - a12[:, None] * r2) / det[:, None], p0 + (p3 - p0) / 3)
        c2 = np.where(ok[:, None], (a11[:, None] * r2 - a12[:, None] * r1) / det[:, None], p0 + 2 * (p3 - p0) / 3)
        ctrl = np.stack([p0, c1, c2, p3], axis=1)  # [M, 4, 2]
        t = _project(x, ctrl, t)
    resid = _at(_bernstein(t), ctrl) - x
    cubic = stride * (wgt * (resid ** 2).sum(-1)).sum(1)
    d = p3 - p0
    norm = np.maximum(np.linalg.norm(d, axis=1), 1e-12)
    cross = (x[..., 0] - p0[:, None, 0]) * d[:, None, 1] - (x[..., 1] - p0[:, None, 1]) * d[:, None, 0]
    off = np.abs(cross / norm[:, None]) * valid
    line = np.where(off.max(1) <= line_tol, stride * (off ** 2).sum(1), np.inf)
    return cubic, line


def _at(b: np.ndarray, ctrl: np.ndarray) -> np.ndarray:
    """Points sum_k b[..., n, k] ctrl[..., k, :] (broadcast sums: faster than einsum on these shapes)."""
    out = b[..., 0, None] * ctrl[..., None, 0, :]
    for i in range(1, 4):
        out = out + b[..., i, None] * ctrl[..., None, i, :]
    return out


def _project(x: np.ndarray, ctrl: np.ndarray, t: np.ndarray) -> np.ndarray:
    """One Gauss-Newton step of each sample's parameter towards its nearest point on its cubic,
    clipped to [0, 1]. x [..., n, 2], ctrl [..., 4, 2], t [..., n]."""
    u = 1.0 - t
    b = _bernstein(t)
    d1 = np.stack([-3 * u ** 2, 3 * u ** 2 - 6 * t * u, 6 * t * u - 3 * t ** 2, 3 * t ** 2], axis=-1)
    pos, der = _at(b, ctrl), _at(d1, ctrl)
    step = ((x - pos) * der).sum(-1) / np.maximum((der * der).sum(-1), 1e-12)
    return np.clip(t + step, 0.0, 1.0)


def _loop_table(q: np.ndarray, max_points: int, line_tol: float) -> tuple[np.ndarray, list]:
    """Per point count p <= ``max_points``: the least error of a closed segmentation of the loop
    q [m, 2] using p points, and that segmentation ([(start sample, end sample, is_cubic)])."""
    m = len(q)
    big = min(CANDIDATES, m)
    idx = np.round(np.arange(big) * (m / big)).astype(int)
    longest = max(1, big // 2)
    cub = np.full((longest + 1, big), np.inf)
    lin = np.full((longest + 1, big), np.inf)
    for span in range(1, longest + 1):
        cub[span], lin[span] = _fit_spans(q, idx, span, line_tol)
    best_err = np.full(max_points + 1, np.inf)
    best_seg: list = [None] * (max_points + 1)
    for s in np.unique(np.round(np.arange(STARTS) * (big / STARTS / 2)).astype(int) % big):
        # d[p, j]: least error reaching candidate s + j with p points; back[p, j]: (span, cubic?)
        d = np.full((max_points + 1, big + 1), np.inf)
        back = np.zeros((max_points + 1, big + 1, 2), np.int64)
        d[0, 0] = 0.0
        cols = (s + np.arange(big)) % big  # rotated candidate order
        spans = np.arange(1, longest + 1)[:, None]
        j = np.arange(big + 1)[None, :]
        frm = j - spans  # [spans, big + 1] the candidate a piece ending at j starts from
        ok = frm >= 0
        frm_c = np.where(ok, frm, 0)
        costs = [np.where(ok, c[spans, cols[frm_c % big]], np.inf) for c in (lin, cub)]
        for p in range(1, max_points + 1):
            for kind, cost in enumerate(costs):
                prev = p - (3 if kind else 1)
                if prev < 0:
                    continue
                cand = d[prev][frm_c] + cost  # [spans, big + 1]
                arg = np.argmin(cand, axis=0)
                val = cand[arg, np.arange(big + 1)]
                better = val < d[p]
                d[p, better] = val[better]
                back[p, better, 0] = arg[better] + 1
                back[p, better, 1] = kind
        for p in range(1, max_points + 1):
            if p == 2:
                continue  # only two chords close a loop with 2 points: no area
            if d[p, big] < best_err[p]:
                best_err[p] = d[p, big]
                seg, j, pp = [], big, p
                while j > 0:
                    span, kind = back[pp, j]
                    a = idx[cols[(j - span) % big]]
                    seg.append((int(a), int(idx[cols[j % big]]), bool(kind)))
                    j, pp = j - span, pp - (3 if kind else 1)
                best_seg[p] = seg[::-1]
    return np.minimum.accumulate(best_err), _carry(best_err, best_seg)


def _carry(err: np.ndarray, seg: list) -> list:
    """The segmentation of the least error with at most p points, for every p."""
    out, best, cur = [], np.inf, None
    for e, s in zip(err, seg):
        if e < best:
            best, cur = e, s
        out.append(cur)
    return out


def _share(tables: list[np.ndarray], max_points: int) -> list[int] | None:
    """Points per loop (min-plus knapsack of the loops' error tables) within ``max_points``; None if none fits."""
    total = np.zeros(max_points + 1)
    picks: list[np.ndarray] = []
    for err in tables:
        new = np.full(max_points + 1, np.inf)
        arg = np.zeros(max_points + 1, np.int64)
        for p in range(max_points + 1):
            c = total[: p + 1][::-1] + err[: p + 1]  # p' to this loop, p - p' to the ones before
            k = int(np.argmin(c))
            new[p], arg[p] = c[k], k
        picks.append(arg)
        total = new
    if not np.isfinite(total[max_points]):
        return None
    out, p = [], max_points
    for arg in picks[::-1]:
        out.append(int(arg[p]))
        p -= int(arg[p])
    return out[::-1]


def _refine(q: np.ndarray, qw: np.ndarray, seg: list, corner_deg: float) -> list:
    """Jointly refined pieces of one loop: [(kind, points)], kind 'line' (end) or 'cubic' (c1, c2, end)."""
    m, k = len(q), len(seg)
    # variables per piece: on-curve start A_i, then (cubic) c1_i, c2_i
    base = np.zeros(k, np.int64)
    nvar = 0
    for i, (_, _, cubic) in enumerate(seg):
        base[i] = nvar
        nvar += 3 if cubic else 1
    sam = []  # per piece: sample indices (start inclusive, end exclusive: the end is the next start)
    for a, b, _ in seg:
        n = (b - a) % m or m
        sam.append((a + np.arange(n)) % m)
    ctrl = []
    for i, (a, b, cubic) in enumerate(seg):
        p0, p3 = q[a], q[b]
        ctrl.append(np.stack([p0, p0 + (p3 - p0) / 3, p0 + 2 * (p3 - p0) / 3, p3]) if cubic else np.stack([p0, p3]))
    ts = [np.arange(len(s)) / len(s) for s in sam]
    # start from the per-piece fits of the dynamic programme
    x = _pieces_to_vars(ctrl, seg, base, nvar)
    for i, (_, _, cubic) in enumerate(seg):
        if cubic:
            x = _fit_one(q, sam[i], ts[i], x, base, i, k, seg)
    for _ in range(REFINE):
        ctrl = _vars_to_pieces(x, seg, base, k)
        for i, (_, _, cubic) in enumerate(seg):
            if cubic:
                for _ in range(2):
                    ts[i] = _project(q[sam[i]], ctrl[i], ts[i])
            else:
                d = ctrl[i][1] - ctrl[i][0]
                ts[i] = np.clip(((q[sam[i]] - ctrl[i][0]) @ d) / max(float(d @ d), 1e-12), 0.0, 1.0)
        x = _joint(q, qw, sam, ts, x, seg, base, nvar, corner_deg)
    return _as_pieces(_vars_to_pieces(x, seg, base, k), seg)


def _pieces_to_vars(ctrl, seg, base, nvar) -> np.ndarray:
    x = np.zeros((nvar, 2))
    for i, (_, _, cubic) in enumerate(seg):
        x[base[i]] = ctrl[i][0]
        if cubic:
            x[base[i] + 1], x[base[i] + 2] = ctrl[i][1], ctrl[i][2]
    return x


def _vars_to_pieces(x, seg, base, k) -> list:
    out = []
    for i, (_, _, cubic) in enumerate(seg):
        end = x[base[(i + 1) % k]]
        out.append(np.stack([x[base[i]], x[base[i] + 1], x[base[i] + 2], end]) if cubic else np.stack([x[base[i]], end]))
    return out


def _piece_columns(i, seg, base, k) -> list[int]:
    """Variable indices of piece i's control points in order (start, [c1, c2,] end)."""
    nxt = base[(i + 1) % k]
    return [base[i], base[i] + 1, base[i] + 2, nxt] if seg[i][2] else [base[i], nxt]


def _fit_one(q, s, t, x, base, i, k, seg) -> np.ndarray:
    """Piece i's off-curve points by least squares with its end points held (the starting point)."""
    b = _bernstein(t)
    cols = _piece_columns(i, seg, base, k)
    rhs = q[s] - b[:, :1] * x[cols[0]] - b[:, 3:] * x[cols[3]]
    sol, *_ = np.linalg.lstsq(b[:, 1:3], rhs, rcond=None)
    x = x.copy()
    x[cols[1]], x[cols[2]] = sol
    return x


def _joint(q, qw, sam, ts, x, seg, base, nvar, corner_deg) -> np.ndarray:
    """All control points of the loop by one linear least squares (module doc, step 4)."""
    k = len(seg)
    rows, rhs = [], []
    for i in range(k):
        cols = _piece_columns(i, seg, base, k)
        t = ts[i]
        coef = _bernstein(t) if seg[i][2] else np.stack([1.0 - t, t], axis=-1)
        a = np.zeros((len(t), nvar))
        for c, col in enumerate(cols):
            a[:, col] += coef[:, c]
        root = np.sqrt(qw[sam[i]])[:, None]
        rows.append(root * a)
        rhs.append(root * q[sam[i]])
    # tangent continuity at smooth joins: l_out (A - h_in) = l_in (h_out - A), lengths from x
    cos_corner = math.cos(math.radians(corner_deg))
    for i in range(k):
        prev = (i - 1) % k
        a_col = base[i]
        h_in = _piece_columns(prev, seg, base, k)[-2]
        h_out = _piece_columns(i, seg, base, k)[1]
        v_in, v_out = x[a_col] - x[h_in], x[h_out] - x[a_col]
        l_in, l_out = np.linalg.norm(v_in), np.linalg.norm(v_out)
        if l_in < 1e-9 or l_out < 1e-9 or (v_in @ v_out) / (l_in * l_out) < cos_corner:
            continue  # a corner (or a degenerate handle): no row
        if not (seg[i][2] or seg[prev][2]):
            continue  # two lines: nothing to move but the join itself
        row = np.zeros(nvar)
        row[a_col] += 1.0
        row[h_in] -= l_out / (l_in + l_out)
        row[h_out] -= l_in / (l_in + l_out)
        rows.append(G1_WEIGHT * row[None, :])
        rhs.append(np.zeros((1, 2)))
    lam = 1e-4  # a small pull to the current points keeps the system well posed
    a_mat = np.vstack(rows + [lam * np.eye(nvar)])
    b_mat = np.vstack(rhs + [lam * x])
    sol, *_ = np.linalg.lstsq(a_mat, b_mat, rcond=None)
    return sol


def _as_pieces(ctrl, seg) -> list:
    return [("cubic", c[1:]) if cubic else ("line", c[1:]) for c, (_, _, cubic) in zip(ctrl, seg)]


def _record(pieces: list[list]) -> RecordingPen:
    """moveTo / curveTo / lineTo / closePath of each loop's pieces (the closing point the start, exactly)."""
    rec = RecordingPen()
    for loop in pieces:
        start = tuple(float(v) for v in loop[-1][1][-1])
        rec.moveTo(start)
        for n, (kind, pts) in enumerate(loop):
            pts = [tuple(float(v) for v in pt) for pt in pts]
            if n == len(loop) - 1:
                pts[-1] = start
            if kind == "cubic":
                rec.curveTo(*pts)
            else:
                rec.lineTo(*pts)
        rec.closePath()
    return rec


def _pixels(q: np.ndarray, r: int) -> np.ndarray:
    """[m] flat index of the pixel each sample lies in (canvas px, clipped to the canvas)."""
    pix = np.clip(np.floor(q).astype(int), 0, r - 1)
    return pix[:, 1] * r + pix[:, 0]


def budget_cubics(dense: list[np.ndarray], max_points: int, resolution: int = 128, corner_deg: float = 65.0,
                  design: np.ndarray | None = None, coverage=None, rounds: int = BOOST_ROUNDS) -> RecordingPen | None:
    """The closed cubic-and-line outline of the loops ``dense`` (canvas px, [n, 2] each, not
    repeating the start) with at most ``max_points`` points (module doc), as a recording of
    moveTo / curveTo (one cubic each) / lineTo / closePath in the loops' own orientation; None
    where the budget cannot hold every loop (2 cubic pieces per loop at least). Loops under
    ``SPECK_AREA`` are dropped (the N of a default design run held 25 such specks of the fitted
    field's iso-line, each 2-6 points: more than its whole budget). ``resolution``:
    the canvas's px, which ``STEP`` and ``LINE_TOLERANCE`` (given at 128 px) scale with.

    With the design's ink mask ``design`` [R, R] and ``coverage(recording)`` -> [R, R] (what a
    rasteriser makes of an outline), up to ``rounds`` refits weigh the samples in and next to
    the pixels the last fit got wrong (coverage > 0.5 against the mask) ``BOOST`` times more;
    the fit with the highest mask IoU is returned."""
    unit = resolution / 128.0
    loops = [_resample(np.asarray(lp, np.float64), STEP * unit) for lp in dense
             if len(lp) >= 3 and abs(outline.signed_area(np.asarray(lp, np.float64))) >= SPECK_AREA]
    tables = [_loop_table(q, max_points, LINE_TOLERANCE * unit) for q in loops]
    share = _share([t[0] for t in tables], max_points)
    if share is None:
        return None
    weights = [np.ones(len(q)) for q in loops]
    best, best_iou = None, -1.0
    for _ in range(1 + (rounds if coverage is not None else 0)):
        rec = _record([_refine(q, qw, segs[p], corner_deg) for q, qw, (_, segs), p in zip(loops, weights, tables, share)])
        if coverage is None:
            return rec
        ink = coverage(rec) > 0.5
        iou = outline.mask_iou(ink, design)
        if iou > best_iou:
            best, best_iou = rec, iou
        wrong = ink != design
        if not wrong.any():
            break
        near = ndimage.binary_dilation(wrong, np.ones((3, 3), bool)).ravel()
        weights = [qw * np.where(near[_pixels(q, design.shape[0])], BOOST, 1.0) for q, qw in zip(loops, weights)]
    return best
