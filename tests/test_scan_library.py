"""The scan's library pieces: the sheet homography (scikit-image's ``ProjectiveTransform``) and the
grouping of stacked pieces (``scipy.sparse.csgraph.connected_components``) against exact answers and
the hand-written code they replaced."""

from __future__ import annotations

import numpy as np
import pytest

from a5ocr.errors import ScanError
from a5ocr.scan.segmentation import _merge_stacked, _overlap
from a5ocr.scan.sheet import _apply_h, fit_homography

LAYOUT_W, LAYOUT_H = 1240, 1754  # an A4 layout at 150 dpi, the marks 60 px in from the corners


def _random_homography(rng) -> np.ndarray:
    """A scan of the sheet: a rotation of a few degrees, a scale, a shift, a mild perspective."""
    a, s = np.deg2rad(rng.uniform(-3, 3)), rng.uniform(0.5, 4.0)
    return np.array([[s * np.cos(a), -s * np.sin(a), rng.uniform(-50, 50)],
                     [s * np.sin(a), s * np.cos(a), rng.uniform(-50, 50)],
                     [rng.uniform(-2e-5, 2e-5), rng.uniform(-2e-5, 2e-5), 1.0]])


def _corners(rng) -> np.ndarray:
    m = 60.0
    return np.array([[m, m], [LAYOUT_W - m, m], [m, LAYOUT_H - m], [LAYOUT_W - m, LAYOUT_H - m]]) + rng.uniform(-5, 5, (4, 2))


_GRID = np.stack(np.meshgrid(np.linspace(0, LAYOUT_W, 9), np.linspace(0, LAYOUT_H, 9)), -1).reshape(-1, 2)


def test_a_known_homography_is_recovered_from_its_exact_correspondences():
    rng = np.random.default_rng(0)
    for _ in range(50):
        hm = _random_homography(rng)
        for src in (_corners(rng), rng.uniform(0, [LAYOUT_W, LAYOUT_H], (12, 2))):
            fit = fit_homography(src, _apply_h(hm, src))
            assert fit[2, 2] == 1.0
            assert np.abs(fit - hm).max() / np.abs(hm).max() < 1e-9
            assert np.abs(_apply_h(fit, _GRID) - _apply_h(hm, _GRID)).max() < 1e-7  # px, over the whole sheet


@pytest.mark.parametrize("n_points,bound", [(4, 6.0), (40, 3.0)])
def test_noisy_correspondences_give_the_homography_within_the_noise(n_points, bound):
    """Marks found to sigma = 0.1 px: over the whole sheet the fitted map is off by at most `bound`
    sigma (4 marks: an exact fit through the noise; 40 points: least squares averages it down,
    though less at the sheet corners, outside their hull)."""
    rng = np.random.default_rng(1)
    sigma, worst = 0.1, 0.0
    for _ in range(30):
        hm = _random_homography(rng)
        src = _corners(rng) if n_points == 4 else rng.uniform(0, [LAYOUT_W, LAYOUT_H], (n_points, 2))
        fit = fit_homography(src, _apply_h(hm, src) + rng.normal(0, sigma, (n_points, 2)))
        worst = max(worst, float(np.abs(_apply_h(fit, _GRID) - _apply_h(hm, _GRID)).max()))
    assert worst < bound * sigma
    assert worst > 0.1 * sigma  # the noise is really there


@pytest.mark.parametrize("src,dst", [
    ([[0, 0], [1, 0], [0, 1]], [[0, 0], [2, 0], [0, 1]]),  # 3 pairs: under-determined
    ([[1, 1]] * 4, [[3, 3]] * 4),  # coincident
    ([[0, 0], [1, 1], [2, 2], [3, 3]], [[0, 1], [2, 2], [4, 3], [6, 4]]),  # all collinear
    ([[0, 0], [1, 0], [2, 0], [0, 1]], [[0, 0], [1, 0], [2, 0.5], [0, 1]]),  # 3 of 4 collinear: no homography
    ([[0, 0], [1, 0], [1, 1], [0, 1]], [[0, 0], [1, 0], [2, 0], [3, 0]]),  # the page marks on a line
    ([[0, 0], [1, 0], [1, 1], [0, 1]], [[0, 0], [1, 0], [0, 1], [1, 1]]),  # crossed: folds the square
])
def test_degenerate_marks_raise_a_scan_error(src, dst):
    with pytest.raises(ScanError, match="homography"):
        fit_homography(np.array(src, float), np.array(dst, float))


def test_a_mirrored_sheet_still_fits():
    src = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    hm = np.array([[-1.2, 0.1, 3.0], [0.05, 1.1, -2.0], [0.01, 0.02, 1.0]])
    assert np.abs(fit_homography(src, _apply_h(hm, src)) - hm).max() < 1e-12


# --------------------------------------------------------------------------- stacked pieces


def _merge_stacked_union_find(boxes):
    """REFERENCE ONLY: the hand-written union-find that ``_merge_stacked`` used before
    scipy.sparse.csgraph (copied here unchanged, to compare against)."""
    n = len(boxes)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = sorted(range(n), key=lambda i: boxes[i][0])
    for ii, i in enumerate(order):
        x0, y0, x1, y1 = boxes[i]
        for j in order[ii + 1:]:
            u0, v0, u1, v1 = boxes[j]
            if u0 >= x1:
                break
            hov = _overlap(x0, x1, u0, u1)
            vov = _overlap(y0, y1, v0, v1)
            if hov >= 0.5 * min(x1 - x0, u1 - u0) and vov <= 0.25 * min(y1 - y0, v1 - v0):
                parent[find(j)] = find(i)
    groups = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


# boxes [x0, y0, x1, y1): a 40-px x-height line
_LINE = {
    "i and j dots": [(0, 10, 8, 50), (1, 0, 7, 7), (20, 10, 28, 60), (22, 0, 29, 7)],
    "colon and semicolon": [(0, 20, 8, 28), (0, 42, 8, 50), (20, 20, 28, 28), (19, 42, 27, 58)],
    "three pieces stacked": [(0, 0, 10, 8), (1, 14, 9, 22), (0, 30, 10, 50)],
    "side by side": [(0, 10, 10, 50), (10, 10, 20, 50), (18, 0, 30, 8)],
    "overlapping vertically": [(0, 0, 10, 40), (2, 20, 12, 50)],
    "a dot left and one right of a stem": [(5, 10, 15, 50), (4, 0, 10, 6), (11, 0, 17, 6)],
    "order of the boxes shuffled": [(40, 10, 48, 50), (0, 0, 8, 8), (41, 0, 47, 7), (0, 12, 8, 50), (20, 10, 30, 50)],
    "one box": [(0, 0, 5, 5)],
    "none": [],
}


@pytest.mark.parametrize("name", list(_LINE))
def test_stacked_groups_of_typical_lines(name):
    boxes = _LINE[name]
    expected = {
        "i and j dots": [[0, 1], [2, 3]],
        "colon and semicolon": [[0, 1], [2, 3]],
        "three pieces stacked": [[0, 1, 2]],
        "side by side": [[0], [1], [2]],
        "overlapping vertically": [[0], [1]],
        "a dot left and one right of a stem": [[0, 1, 2]],
        "order of the boxes shuffled": [[0, 2], [1, 3], [4]],
        "one box": [[0]],
        "none": [],
    }[name]
    assert _merge_stacked(boxes) == expected == _merge_stacked_union_find(boxes)


def test_stacked_groups_equal_the_union_find_on_random_lines():
    """Same groups, members and order as the old code on random crowded lines (chains, dots,
    ties in x), including lines where many pieces join."""
    rng = np.random.default_rng(2)
    joined = 0
    for _ in range(300):
        n = int(rng.integers(2, 40))
        x0 = rng.integers(0, 4 * n, n)
        y0 = rng.integers(0, 60, n)
        boxes = [(int(a), int(b), int(a + rng.integers(1, 12)), int(b + rng.integers(1, 30))) for a, b in zip(x0, y0)]
        got = _merge_stacked(boxes)
        assert got == _merge_stacked_union_find(boxes)
        joined += sum(len(g) > 1 for g in got)
    assert joined > 300  # the random lines do merge, often
