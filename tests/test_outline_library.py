"""The outline tracers built on scikit-image (``find_contours``, ``approximate_polygon``): what the
font export relies on, checked against independent answers (the bilinear interpolant evaluated by
scipy, the topology of its half level set on a 64x finer grid, point-to-polygon distances)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from a5ocr.export import outline


def _bilinear(w: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """The bilinear interpolant of pixel image ``w`` (pixel c's value at c + 0.5, 0 outside) at
    image points (x, y), by scipy (not by the code under test)."""
    p = np.pad(w, 1)
    return ndimage.map_coordinates(p, [pts[:, 1] + 0.5, pts[:, 0] + 0.5], order=1, mode="constant")


def _traced(w: np.ndarray, factor: int) -> list[np.ndarray]:
    f, x0, step = outline.bilinear_upsample(w, factor)
    return [x0 + loop * step for loop in outline.trace_level(f, 0.5)]


def _annulus(n: int = 24, r_out: float = 8.0, r_in: float = 4.0) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n] + 0.5
    r = np.hypot(xx - n / 2, yy - n / 2)
    return np.clip(np.minimum(r_out - r, r - r_in) + 0.5, 0.0, 1.0)


def test_every_traced_point_lies_on_the_bilinear_half_level():
    """A random gray image (saddle cells included): each crossing point is exact, not a fit."""
    w = np.random.default_rng(3).uniform(0.0, 1.0, (9, 9))
    for factor in (1, 3, 8):
        loops = _traced(w, factor)
        assert loops
        pts = np.vstack(loops)
        assert np.abs(_bilinear(w, pts) - 0.5).max() < 1e-9, factor


def test_loops_are_closed_without_repeats_and_keep_ink_on_the_right():
    """TrueType orientation: outer loop clockwise and hole counter-clockwise once y points up, ink
    on the right of every segment (sampled 0.05 px either side of its midpoint)."""
    w = _annulus()
    loops = _traced(w, 4)
    assert len(loops) == 2
    areas = sorted(outline.signed_area(lp * [1, -1]) for lp in loops)  # y up
    assert areas[0] == pytest.approx(-np.pi * 64, rel=0.01) and areas[1] == pytest.approx(np.pi * 16, rel=0.02)
    for lp in loops:
        nxt = np.roll(lp, -1, axis=0)
        assert not np.all(lp == nxt, axis=1).any()  # the closing point is not repeated, nor any other
        d = nxt - lp
        right = np.stack([-d[:, 1], d[:, 0]], axis=1)  # right of travel with y up = (-dy, dx) with y down
        right /= np.hypot(right[:, 0], right[:, 1])[:, None]
        mid = (lp + nxt) / 2
        assert (_bilinear(w, mid + 0.05 * right) > 0.5).all() and (_bilinear(w, mid - 0.05 * right) < 0.5).all()


def _components(w: np.ndarray) -> int:
    """Connected parts of {bilinear > 0.5}, counted on a 64x finer grid where 4- and 8-connectivity agree."""
    f, _, _ = outline.bilinear_upsample(w, 64)
    four = ndimage.label(f > 0.5)[1]
    eight = ndimage.label(f > 0.5, structure=np.ones((3, 3)))[1]
    assert four == eight
    return four


@pytest.mark.parametrize("a,b,c,d", [
    (1.0, 0.0, 1.0, 0.0),      # saddle value 0.5: apart
    (1.0, 0.4, 1.0, 0.4),      # 0.7: joined
    (0.51, 0.36, 0.86, 0.32),  # 0.469 (apart), though the centre value is 0.5125
    (0.71, 0.02, 0.68, 0.49),  # 0.5375 (joined), though the centre value is 0.475
])
def test_a_saddle_cell_joins_its_ink_as_the_bilinear_interpolant_does(a, b, c, d):
    """Ink at two opposite pixel centres of one cell (traced at 1x, the cell itself ambiguous):
    one loop where the interpolant joins them, two where it does not, as the 64x grid counts."""
    w = np.zeros((4, 4))
    w[1, 1], w[1, 2], w[2, 2], w[2, 1] = a, b, c, d
    loops = _traced(w, 1)
    assert len(loops) == _components(w)
    assert all(outline.signed_area(lp * [1, -1]) < 0 for lp in loops)  # outer loops, clockwise with y up


def _distance_to_polygon(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    a, b = poly, np.roll(poly, -1, axis=0)
    ab = b - a
    t = np.clip(((pts[:, None] - a[None]) * ab[None]).sum(-1) / (ab * ab).sum(-1)[None], 0.0, 1.0)
    near = a[None] + t[..., None] * ab[None]
    return np.hypot(*(pts[:, None] - near).transpose(2, 0, 1)).min(axis=1)


def test_simplify_keeps_every_point_within_the_tolerance_and_the_orientation():
    loop = _traced(_annulus(), 8)[0]
    for tol in (0.02, 0.1, 0.3):
        poly = outline.simplify(loop, tol)
        assert 3 <= len(poly) < len(loop)
        assert (_distance_to_polygon(loop, poly) <= tol + 1e-12).all()
        assert {tuple(p) for p in poly} <= {tuple(p) for p in loop}  # vertices are traced points
        assert np.sign(outline.signed_area(poly)) == np.sign(outline.signed_area(loop))
    assert len(outline.simplify(loop, 0.3)) < len(outline.simplify(loop, 0.02))


def test_simplify_at_zero_drops_only_repeated_and_exactly_collinear_points():
    """The pixel outlines' integer font units: exact tests, nothing within a tolerance."""
    square = np.array([[0, 0], [2, 0], [4, 0], [4, 0], [4, 3], [4, 4], [0, 4], [0, 1]], float)
    assert outline.simplify(square, 0.0).tolist() == [[0, 0], [4, 0], [4, 4], [0, 4]]
    bent = np.array([[0, 0], [2, 1e-9], [4, 0], [4, 4], [0, 4]])
    assert len(outline.simplify(bent, 0.0)) == 5
    assert len(outline.simplify(bent, 1e-6)) == 4


def test_each_loop_starts_at_its_leftmost_crossing_of_its_topmost_grid_row():
    """Where ``simplify`` splits a loop (the start the measured outlines were made with)."""
    f, _, _ = outline.bilinear_upsample(_annulus(), 4)
    loops = outline.trace_level(f, 0.5)
    assert len(loops) == 2
    for lp in loops:
        on_row = lp[(lp[:, 1] == np.floor(lp[:, 1])) & (lp[:, 0] != np.floor(lp[:, 0]))]
        top = on_row[on_row[:, 1] == on_row[:, 1].min()]
        assert lp[0, 1] == top[0, 1] and lp[0, 0] == top[:, 0].min()
        assert lp[:, 1].min() > lp[0, 1] - 1  # no grid row above it is crossed
