"""The cubic fit of dense outlines (``a5ocr.export.cubic``) and the smooth cubic outlines of a
design (``smooth.smooth_cubics``), checked against answers computed here: distances to the
curve sampled densely, tangents at the joins, corners of analytic shapes, the pixel masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fontTools.pens.recordingPen import RecordingPen

from a5ocr.export import cubic, smooth


def _curve_points(pieces, per_piece: int = 4000) -> np.ndarray:
    t = np.linspace(0.0, 1.0, per_piece)
    return np.vstack([cubic.evaluate(p, t) for p in pieces])


def _distance(pts: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Each point's distance to the nearest of ``curve``'s samples (an upper bound: samples 1/200 px apart here)."""
    return np.array([np.hypot(*(curve - p).T).min() for p in pts])


def _join_angles(pieces: np.ndarray) -> np.ndarray:
    """Degrees between the arriving and the leaving handle at each join (piece k's end, k+1's start)."""
    arrive = pieces[:, 3] - pieces[:, 2]
    leave = np.roll(pieces, -1, axis=0)[:, 1] - np.roll(pieces, -1, axis=0)[:, 0]
    cross = arrive[:, 0] * leave[:, 1] - arrive[:, 1] * leave[:, 0]
    return np.degrees(np.abs(np.arctan2(cross, (arrive * leave).sum(1))))


def _circle(r: float = 10.0, n: int = 500) -> np.ndarray:
    a = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    return np.c_[16 + r * np.cos(a), 16 + r * np.sin(a)]


@pytest.mark.parametrize("tol", [0.2, 0.05, 0.01])
def test_a_circle_is_fitted_within_the_tolerance_by_few_g1_cubics(tol):
    loop = _circle()
    fits = cubic.fit_loop(loop, tol)
    pieces = np.array([c for c, _ in fits])
    assert cubic.loop_corners(loop, 65.0, 0.75).size == 0
    # every point of the loop within the tolerance of the curve, and the curve near the loop
    assert _distance(loop, _curve_points(pieces)).max() <= tol + 1e-3
    assert np.abs(np.hypot(*(_curve_points(pieces) - 16).T) - 10.0).max() <= tol + 1e-3
    # four cubics approximate a circle to 2.7e-4 of its radius: a handful suffice
    assert len(pieces) <= {0.2: 4, 0.05: 6, 0.01: 8}[tol]
    assert _join_angles(pieces).max() < 1e-6  # one tangent at every join (G1)
    assert all(np.array_equal(pieces[k, 3], pieces[(k + 1) % len(pieces), 0]) for k in range(len(pieces)))
    # the pieces cover the loop's points in order, each point once (the joins twice)
    idx = np.concatenate([i[:-1] for _, i in fits])
    assert sorted(idx.tolist()) == list(range(len(loop)))


def test_a_square_keeps_its_corners_and_becomes_four_lines():
    side = np.linspace(0.0, 8.0, 64, endpoint=False)
    loop = np.vstack([np.c_[4 + side, np.full(64, 4.0)], np.c_[np.full(64, 12.0), 4 + side],
                      np.c_[12 - side, np.full(64, 12.0)], np.c_[np.full(64, 4.0), 12 - side]])
    assert cubic.loop_corners(loop, 65.0, 0.75).tolist() == [0, 64, 128, 192]
    pieces = np.array([c for c, _ in cubic.fit_loop(loop, 0.05)])
    assert len(pieces) == 4 and cubic.is_line(pieces, 1e-9).all()
    assert sorted(map(tuple, pieces[:, 0])) == [(4, 4), (4, 12), (12, 4), (12, 12)]
    assert np.allclose(_join_angles(pieces), 90.0)


def test_a_wavy_open_span_keeps_each_piece_within_the_tolerance():
    """A span with inflections (no single cubic fits): every point within the tolerance of its
    own piece at the parameter of its nearest curve point, joins G1, the span's end tangents kept."""
    x = np.linspace(0.0, 20.0, 800)
    pts = np.c_[x, 2 * np.sin(x) + 0.3 * np.sin(3.7 * x)]
    t0, t1 = cubic._unit(pts[1] - pts[0]), cubic._unit(pts[-2] - pts[-1])
    fits = cubic.fit_span(pts, t0, t1, 0.05)
    assert 3 <= len(fits) <= 30
    assert fits[0][1] == 0 and fits[-1][2] == len(pts) - 1
    for (ctrl, i, j), nxt in zip(fits, fits[1:] + [None]):
        assert _distance(pts[i:j + 1], cubic.evaluate(ctrl, np.linspace(0, 1, 2000))).max() <= 0.05 + 1e-3
        if nxt is not None:
            assert nxt[1] == j and _join_angles(np.array([ctrl, nxt[0]]))[0] < 1e-6
    assert np.allclose(cubic._unit(fits[0][0][1] - fits[0][0][0]), t0)
    assert np.allclose(cubic._unit(fits[-1][0][2] - fits[-1][0][3]), t1)


def test_smooth_cubics_cover_an_annulus_as_the_design_and_join_smoothly():
    """An anti-aliased ring (32 px): two loops, IoU of the ink masks >= the target, every join G1
    or a corner the data has (none here), few pieces."""
    yy, xx = np.mgrid[:32, :32] + 0.5
    r = np.hypot(xx - 16, yy - 16)
    w = np.clip(np.minimum(11.0 - r, r - 6.0) + 0.5, 0.0, 1.0)
    loops = smooth.smooth_cubics(w)
    assert len(loops) == 2 and sum(len(lp) for lp in loops) <= 16
    rec = RecordingPen()
    smooth.draw_cubics(rec, loops)
    assert smooth.mask_iou(smooth.recording_coverage(rec, 32, 8) > 0.5, w > 0.5) >= 0.99
    for lp in loops:
        assert _join_angles(lp).max() < 1.0
