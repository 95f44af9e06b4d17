"""Cubic Bezier curves fitted to a dense closed outline, within a distance tolerance, corners kept.

``fit_loop(loop, tolerance, corner_deg, window)`` fits a closed polyline [n, 2] (the sub-pixel
exact 0.5 iso-line of ``a5ocr.export.smooth``: hundreds of points, 1/8 px apart) with few cubic
pieces: the loop is cut at its corners (where the direction over ``window`` px of arc either
side turns by more than ``corner_deg``; a loop without corners is cut at its first point and
half-way round, with the tangent of the outline there), and each span between cuts is fitted as
Schneider's algorithm does (P. J. Schneider, "An algorithm for automatically fitting digitized
curves", Graphics Gems, 1990): one cubic by least squares with the end tangents given
(chord-length parameters, improved by Newton steps towards the closest curve point), and where
the farthest point is more than ``tolerance`` away, two fits split at that point, sharing the
outline's tangent there. So the pieces meet with one tangent (G1) at every join but a corner,
and every point of the loop lies within ``tolerance`` of its piece (at its parameter).

Why hand-written: no well-kept library fits cubics to points within a tolerance. fontTools
converts between curve kinds (cu2qu, qu2cu) but fits no data; scipy's smoothing splines
(``splprep``) are C2 B-splines (one knot per piece, more pieces than a G1 fit for the same
error, and corners need cutting anyway); on PyPI, ``beziers`` (its fitter "lifted from
Inkscape", a GPL program, per point Python objects, and it silently returns nothing past
``maxSegments``) and ``cubic-bezier-spline`` (C2 interpolation/approximation of given knots, no
tolerance). The fit here is vectorised numpy, a few dozen lines, written from the paper.

Pieces are [m, 4, 2] arrays (start, two handles, end); piece k's end is piece k+1's start, the
last ends where the first starts. ``is_line`` tells pieces that are straight (handles on the chord).
"""

from __future__ import annotations

import math

import numpy as np

NEWTON_STEPS = 4


def bernstein(u: np.ndarray) -> np.ndarray:
    """[m, 4] cubic Bernstein weights at parameters u [m]."""
    v = 1.0 - u
    return np.stack([v ** 3, 3 * v * v * u, 3 * v * u * u, u ** 3], axis=1)


def evaluate(ctrl: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Points [m, 2] of the cubic with control points ``ctrl`` [4, 2] at u [m]."""
    return bernstein(u) @ ctrl


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.hypot(v[..., 0], v[..., 1])
    return v / np.where(n > 0, n, 1.0)[..., None]


def _chord_params(pts: np.ndarray) -> np.ndarray:
    d = np.r_[0.0, np.cumsum(np.hypot(*np.diff(pts, axis=0).T))]
    return d / d[-1] if d[-1] > 0 else np.linspace(0.0, 1.0, len(pts))


def _least_squares(pts: np.ndarray, u: np.ndarray, t0: np.ndarray, t1: np.ndarray | None) -> np.ndarray:
    """The cubic from pts[0] to pts[-1] leaving along t0 and arriving against t1 (t1 points back
    into the curve) whose handles minimise the squared distances at parameters u (linear least
    squares: the two handle lengths; with ``t1`` None the second handle is free, a point)."""
    p0, p3 = pts[0], pts[-1]
    b = bernstein(u)
    rest = pts - np.outer(b[:, 0] + b[:, 1], p0) - np.outer(b[:, 2] + b[:, 3], p3)
    chord = float(np.hypot(*(p3 - p0)))
    cols = [b[:, 1:2] * t0] + ([b[:, 2:3] * t1] if t1 is not None else
                               [np.outer(b[:, 2], [1.0, 0.0]), np.outer(b[:, 2], [0.0, 1.0])])
    a = np.stack([c.ravel() for c in cols], axis=1)  # unknowns: handle 1 length, handle 2 length or offset
    sol, _, rank, _ = np.linalg.lstsq(a, rest.ravel(), rcond=None)
    h2 = sol[1] * t1 if t1 is not None else sol[1:3]
    al, ar = sol[0], (sol[1] if t1 is not None else float(np.hypot(*h2)))
    if rank < a.shape[1] or not (1e-3 * chord < al < 2 * chord and 1e-3 * chord < ar < 2 * chord):
        # Schneider's fallback (a negative or huge handle would loop): a third of the chord
        al = ar = chord / 3.0
        h2 = ar * (t1 if t1 is not None else _unit(p0 - p3))
    return np.array([p0, p0 + al * t0, p3 + h2, p3])


def _newton(ctrl: np.ndarray, pts: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One Newton step per point towards the parameter of its closest curve point."""
    d1 = 3 * np.diff(ctrl, axis=0)
    d2 = 2 * np.diff(d1, axis=0)
    v = 1.0 - u
    q = evaluate(ctrl, u) - pts
    q1 = np.outer(v * v, d1[0]) + np.outer(2 * v * u, d1[1]) + np.outer(u * u, d1[2])
    q2 = np.outer(v, d2[0]) + np.outer(u, d2[1])
    num = (q * q1).sum(1)
    den = (q1 * q1).sum(1) + (q * q2).sum(1)
    step = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-12)
    return np.clip(u - step, 0.0, 1.0)


def fit_one(pts: np.ndarray, t0: np.ndarray, t1: np.ndarray | None, stats: dict | None = None,
            tolerance: float = 0.0) -> tuple[np.ndarray, float]:
    """One cubic through pts[0] and pts[-1] with end tangents t0 (forward) and t1 (backward) and
    the largest distance of a point from it at its parameter: least squares at chord-length
    parameters, then up to ``NEWTON_STEPS`` reparameterisations while that distance is above
    ``tolerance`` but within 4 times it (further off, reparameterising rarely helps)."""
    if len(pts) <= 3:
        chord = float(np.hypot(*(pts[-1] - pts[0])))
        back = t1 if t1 is not None else _unit(pts[0] - pts[-1])
        ctrl = np.array([pts[0], pts[0] + chord / 3 * t0, pts[-1] + chord / 3 * back, pts[-1]])
        return ctrl, float(np.hypot(*(evaluate(ctrl, _chord_params(pts)) - pts).T).max())
    u = _chord_params(pts)
    for _ in range(NEWTON_STEPS + 1):
        ctrl = _least_squares(pts, u, t0, t1)
        if stats is not None:
            stats["fits"] = stats.get("fits", 0) + 1
        err = float(np.hypot(*(evaluate(ctrl, u) - pts).T).max())
        if err <= tolerance or err > 4 * tolerance:
            break
        u = _newton(ctrl, pts, u)
    return ctrl, err


def fit_span(pts: np.ndarray, t0: np.ndarray, t1: np.ndarray, tolerance: float, stats: dict | None = None
             ) -> list[tuple[np.ndarray, int, int]]:
    """Cubics (ctrl [4, 2], first point, last point) from pts[0] to pts[-1], end tangents t0
    (forward) and t1 (backward), each within ``tolerance`` of its points pts[first:last + 1]. Each piece is the longest that fits from where the last
    one ended (bisection on its end point), its end handle free (the next piece leaves along
    it: G1), so pieces are few; ``stats`` (optional) counts ``fits`` (least-squares solves)."""
    m = len(pts)
    out, i, ti = [], 0, t0
    while i < m - 1:
        ctrl, err = fit_one(pts[i:], ti, t1, stats, tolerance)
        j = m - 1
        if err > tolerance:
            lo, hi = i + 1, m - 1  # the piece to lo fits (two points always do), to hi does not
            ctrl, _ = fit_one(pts[i:lo + 1], ti, None, stats, tolerance)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                c, e = fit_one(pts[i:mid + 1], ti, None, stats, tolerance)
                if e <= tolerance:
                    lo, ctrl = mid, c
                else:
                    hi = mid
            j = lo
        out.append((ctrl, i, j))
        i, ti = j, _unit(ctrl[3] - ctrl[2])
    return out


def _arc_offsets(loop: np.ndarray, length: float) -> int:
    """Points either side spanning about ``length`` of arc (at least 1, at most a quarter loop)."""
    step = float(np.mean(np.hypot(*(np.roll(loop, -1, axis=0) - loop).T)))
    return int(min(max(1, round(length / max(step, 1e-12))), max(1, len(loop) // 4)))


def loop_corners(loop: np.ndarray, corner_deg: float, window: float) -> np.ndarray:
    """Indices of the corners of a closed loop: the local maxima of the turn between the chords
    ``window`` px of arc before and after a point, where that turn exceeds ``corner_deg``."""
    a = _arc_offsets(loop, window)
    before, after = loop - np.roll(loop, a, axis=0), np.roll(loop, -a, axis=0) - loop
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    turn = np.abs(np.arctan2(cross, (before * after).sum(1)))
    peak = np.ones(len(loop), bool)
    for s in range(1, a + 1):  # a peak is the largest turn within the window (first of equals)
        peak &= (turn > np.roll(turn, s)) & (turn >= np.roll(turn, -s))
    return np.nonzero(peak & (turn > math.radians(corner_deg)))[0]


def fit_loop(loop: np.ndarray, tolerance: float, corner_deg: float = 65.0, window: float = 0.75,
             stats: dict | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cubic pieces of a closed loop [n, 2] (module doc), in the loop's direction: (ctrl [4, 2],
    the indices into ``loop`` of the points it was fitted to) each."""
    loop = np.asarray(loop, np.float64)
    n = len(loop)
    a = _arc_offsets(loop, window)
    cuts = loop_corners(loop, corner_deg, window)
    smooth = cuts.size == 0
    if smooth:
        cuts = np.array([0, n // 2])
    pieces = []
    for s, e in zip(cuts, np.roll(cuts, -1)):
        idx = (s + np.arange((e - s) % n + 1 if e != s else n + 1)) % n
        span = loop[idx]
        if smooth:  # the outline's own tangent at both cuts: the loop stays G1 there
            t0 = _unit(loop[(s + a) % n] - loop[(s - a) % n])
            t1 = _unit(loop[(e - a) % n] - loop[(e + a) % n])
        else:
            k = min(a, len(span) - 1)
            t0, t1 = _unit(span[k] - span[0]), _unit(span[-1 - k] - span[-1])
        pieces.extend((ctrl, idx[i:j + 1]) for ctrl, i, j in fit_span(span, t0, t1, tolerance, stats))
    return pieces


def refit(loop: np.ndarray, piece: tuple[np.ndarray, np.ndarray], tolerance: float, at: np.ndarray | None = None,
          stats: dict | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """One piece of ``fit_loop`` fitted again to its points within ``tolerance``, its end
    tangents kept (so the joins with its neighbours stay as they were); with ``at`` (a point
    [2]), split first at its point nearest ``at`` (there the curve then passes through the
    outline, with the outline's tangent)."""
    ctrl, idx = piece
    t0, t1 = _unit(ctrl[1] - ctrl[0]), _unit(ctrl[2] - ctrl[3])
    if len(idx) <= 3 or not (t0.any() and t1.any()):
        return [piece]
    pts = loop[idx]
    if at is None:
        return [(c, idx[i:j + 1]) for c, i, j in fit_span(pts, t0, t1, tolerance, stats)]
    m = int(np.clip(np.argmin(np.hypot(*(pts - at).T)), 1, len(pts) - 2))
    a = max(1, min(m, len(pts) - 1 - m, _arc_offsets(loop, 0.25 * float(np.hypot(*(pts[-1] - pts[0]))) + 1e-9)))
    back = _unit(pts[m - a] - pts[m + a])
    left = [(c, idx[i:j + 1]) for c, i, j in fit_span(pts[: m + 1], t0, back, tolerance, stats)]
    return left + [(c, idx[m + i:m + j + 1]) for c, i, j in fit_span(pts[m:], -back, t1, tolerance, stats)]


def is_line(pieces: np.ndarray, tol: float) -> np.ndarray:
    """[m] bool: pieces whose handles lie within ``tol`` of their chord, between its ends."""
    p0, p3 = pieces[:, 0], pieces[:, 3]
    d = p3 - p0
    length = np.hypot(d[:, 0], d[:, 1])
    ok = length > 0
    for h in (pieces[:, 1], pieces[:, 2]):
        r = h - p0
        along = (r * d).sum(1) / np.where(ok, length * length, 1.0)
        off = np.abs(r[:, 0] * d[:, 1] - r[:, 1] * d[:, 0]) / np.where(ok, length, 1.0)
        ok &= (off <= tol) & (along >= 0) & (along <= 1)
    return ok
