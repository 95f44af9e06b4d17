"""Cubic outlines under a point budget (``a5ocr.export.cubic``): exact answers on shapes whose best
cubic-and-line outline is known, the budget and orientation kept, and the CFF export's use of it
where no qu2cu merge fits the budget."""

from __future__ import annotations

import math

import numpy as np
import pytest

from a5ocr.export import cubic, outline, smooth


def _circle(cx: float, cy: float, rad: float, n: int = 2000, clockwise: bool = False) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False) * (-1 if clockwise else 1)
    return np.c_[cx + rad * np.cos(t), cy + rad * np.sin(t)]


def _pieces(rec):
    return [op for op, _ in rec.value if op in ("curveTo", "lineTo")]


def _radial_error(rec, cx, cy, rad) -> float:
    ring = np.vstack(smooth._flatten(rec, 64))
    return float(np.abs(np.hypot(ring[:, 0] - cx, ring[:, 1] - cy) - rad).max())


def test_a_circle_in_twelve_points_is_four_tangent_continuous_cubics_within_the_classic_error():
    """The best 4-cubic circle is off by ~2.7e-4 of the radius (the textbook kappa one by 2.7e-4
    outward only): a fit within 12 points must be 4 cubics, round to 1e-3 R, G1 at every join."""
    rec = cubic.budget_cubics([_circle(64, 64, 30)], 12, 128)
    assert _pieces(rec) == ["curveTo"] * 4 and smooth.recording_points(rec) == 12
    assert _radial_error(rec, 64, 64, 30) < 1e-3 * 30
    ops = rec.value
    start = ops[0][1][0]
    assert ops[-2][1][-1] == start and ops[-1][0] == "closePath"  # closed exactly at the start
    ends = [np.asarray(start)] + [np.asarray(args[-1]) for op, args in ops[1:-1]]
    for i, (op, args) in enumerate(ops[1:-1]):  # the incoming and outgoing handles are collinear
        nxt = ops[1:-1][(i + 1) % 4][1]
        a, h_in, h_out = ends[i + 1], np.asarray(args[1]), np.asarray(nxt[0])
        u, v = a - h_in, h_out - a
        assert abs(u[0] * v[1] - u[1] * v[0]) / (np.linalg.norm(u) * np.linalg.norm(v)) < 0.02


def test_fewer_points_than_two_cubics_per_loop_give_no_outline_and_more_fit_closer():
    loop = _circle(64, 64, 30)
    assert cubic.budget_cubics([loop], 5, 128) is None
    errs = [_radial_error(cubic.budget_cubics([loop], p, 128), 64, 64, 30) for p in (6, 9, 12)]
    assert errs[0] > errs[1] > errs[2]


def test_a_rectangle_is_four_lines_on_its_corners():
    """Straight sides: a line each (1 point) and its corners exact; a curve is never faceted:
    the circle above used no line even where lines would be cheaper."""
    xs = np.r_[np.linspace(10, 22, 48, endpoint=False), np.full(32, 22.0), np.linspace(22, 10, 48, endpoint=False), np.full(32, 10.0)]
    ys = np.r_[np.full(48, 10.0), np.linspace(10, 18, 32, endpoint=False), np.full(48, 18.0), np.linspace(18, 10, 32, endpoint=False)]
    rec = cubic.budget_cubics([np.c_[xs, ys]], 4, 128)
    assert _pieces(rec) == ["lineTo"] * 4
    got = {tuple(np.round(args[0], 6)) for op, args in rec.value if op in ("moveTo", "lineTo")}
    assert got == {(10.0, 10.0), (22.0, 10.0), (22.0, 18.0), (10.0, 18.0)}
    # a budget of 12: the same 4 lines (cubics would not fit them closer), not 12 points' worth
    assert _pieces(cubic.budget_cubics([np.c_[xs, ys]], 12, 128)) == ["lineTo"] * 4


def test_loops_keep_their_orientation_and_share_the_budget_by_need():
    """A ring (outer clockwise with y up, hole counter-clockwise: TrueType's rule) and a dot: the
    pieces go where the error is (the big wavy outer loop gets the most), every loop keeps its
    direction, and the total stays within the budget."""
    t = np.linspace(0, 2 * np.pi, 3000, endpoint=False)
    outer = np.c_[64 + (40 + 1.5 * np.sin(12 * t)) * np.cos(t), 64 + (40 + 1.5 * np.sin(12 * t)) * np.sin(t)]
    hole = _circle(64, 64, 28, clockwise=True)
    dot = _circle(120, 8, 3)
    loops = [outer, hole, dot]
    rec = cubic.budget_cubics(loops, 66, 128)
    assert smooth.recording_points(rec) <= 66
    rings = smooth._flatten(rec, 16)
    assert len(rings) == 3
    for ring, loop in zip(rings, loops):
        assert np.sign(outline.signed_area(ring)) == np.sign(outline.signed_area(loop))
    counts, n = [], 0
    for op, _ in rec.value:
        if op == "closePath":
            counts.append(n)
            n = 0
        elif op == "curveTo":
            n += 1
    assert counts[0] > counts[1] >= counts[2] == 2


@pytest.fixture(scope="module")
def wavy_ring():
    """An anti-aliased ring at 64 px whose outer edge waves (12 bumps of 0.75 px), its traced outline."""
    n = 64
    yy, xx = np.mgrid[:n, :n] + 0.5
    r, a = np.hypot(xx - n / 2, yy - n / 2), np.arctan2(yy - n / 2, xx - n / 2)
    w = np.clip(np.minimum(20.0 + 0.75 * np.sin(12 * a) - r, r - 14.0) + 0.5, 0, 1)
    return w, smooth.trace_outline(w, 4)


def test_reweighting_the_wrong_pixels_raises_the_mask_iou(wavy_ring):
    w, dense = wavy_ring
    design = w > 0.5
    cover = lambda rec: smooth.recording_coverage(rec, 64, 4)  # noqa: E731
    iou = lambda rec: smooth.mask_iou(cover(rec) > 0.5, design)  # noqa: E731
    plain = cubic.budget_cubics(dense, 42, 64)
    boosted = cubic.budget_cubics(dense, 42, 64, design=design, coverage=cover)
    assert smooth.recording_points(boosted) <= 42
    assert iou(boosted) > iou(plain) + 0.005 and iou(boosted) >= 0.975  # measured: 0.969 -> 0.981


def test_the_cff_export_fits_cubics_where_no_merge_fits_the_budget(wavy_ring):
    """The wavy ring's splines merge (qu2cu, every tolerance) to more points than the budget, or
    lose the floor IoU: the CFF outline is then the fitted cubics, within budget, above the floor."""
    w, dense = wavy_ring
    design = w > 0.5
    loops = smooth.smooth_polygons(w, 4, 0.99, dense=dense)
    budget = 48
    merges = [smooth._merged(loops, tol) for tol in smooth.MERGE_TOLERANCES]
    cover = lambda rec: smooth.recording_coverage(rec, 64, 4)  # noqa: E731
    assert all(smooth.recording_points(m) > budget or smooth.mask_iou(cover(m) > 0.5, design) < 0.975 for m in merges)
    out = smooth.cubic_outline(loops, w, 4, 0.99, max_points=budget, floor_iou=0.975, dense=dense)
    assert smooth.recording_points(out) <= budget
    assert smooth.mask_iou(cover(out) > 0.5, design) >= 0.975
    assert {op for op, _ in out.value} <= {"moveTo", "curveTo", "lineTo", "closePath"}
    assert math.isfinite(outline.signed_area(smooth._flatten(out)[0]))
