"""The complete, smooth exported font (every source glyph kept, designed glyphs fitted with curves),
its file permissions, and the vector PDF sheet read back by ``a5ocr scan``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import freetype
import numpy as np
import pytest
import torch
from fontTools.pens.areaPen import AreaPen
from fontTools.pens.recordingPen import DecomposingRecordingPen
from fontTools.ttLib import TTFont

from a5ocr import export as ex
from a5ocr import runio
from a5ocr.export import smooth
from a5ocr.runs import load_design

CHARS = "AOo0"
LABEL = "SN-4521/B."


@pytest.fixture(scope="module")
def comic_run(gray_design_run) -> Path:
    """A tiny gray A5/PC design of Comic Neue (a CFF source) of CHARS, 32x32: the session's (conftest)."""
    return gray_design_run


@pytest.fixture(scope="module")
def dejavu_run(tmp_path_factory) -> Path:
    """A synthetic gray design of DejaVu Sans (a TrueType source with composites and kerning)."""
    from a5ocr.glyphs import rasterize
    from a5ocr.runs import save_glyphs
    from a5ocr.training.trainer import RobustGlyphs

    out = tmp_path_factory.mktemp("dejavu")
    g = rasterize("dejavu-sans", CHARS, 32)
    robust = RobustGlyphs(g.images, 0.3, "gray")
    with torch.no_grad():
        robust.z.copy_(torch.randn(robust.z.shape, generator=torch.Generator().manual_seed(1)))
    save_glyphs(out / "glyphs.safetensors", g, robust, eps_d=0.3, ink="gray")
    return out


def _outline(font: TTFont, name: str) -> list:
    rec = DecomposingRecordingPen(font.getGlyphSet())
    font.getGlyphSet()[name].draw(rec)
    return rec.value


def _area(font: TTFont, name: str) -> float:
    pen = AreaPen(font.getGlyphSet())
    font.getGlyphSet()[name].draw(pen)
    return abs(pen.value)


def _no_notdef(path: Path, text: str) -> None:
    face = freetype.Face(str(path))
    face.set_pixel_sizes(0, 48)
    for c in text:
        assert face.get_char_index(c) != 0, c
        face.load_char(c, freetype.FT_LOAD_RENDER)
        if not c.isspace():
            assert max(face.glyph.bitmap.buffer) > 0, c


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        runio.write_bytes(tmp_path / "a.bin", b"x")
        runio.write_json(tmp_path / "b.json", {"k": 1})
        with runio.atomic_path(tmp_path / "c.txt") as tmp:
            assert stat.S_IMODE(tmp.stat().st_mode) == mode  # already while being written
            tmp.write_text("y")
    finally:
        os.umask(old)
    for name in ("a.bin", "b.json", "c.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json", "c.txt"]  # no temporary left


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_weight_files_respect_the_umask(tmp_path, umask, mode):
    """safetensors' save_file makes its own 0600 file in the temporary's place: the classifier
    and every other weight file still get the umask's mode."""
    from torch import nn  # local: only this test builds a module

    from a5ocr import models

    old = os.umask(umask)
    try:
        models.save_module(nn.Linear(3, 2), tmp_path / "classifier.safetensors", {"arch": "test"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "classifier.safetensors").stat().st_mode) == mode


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path):
    (tmp_path / "f").write_text("old")
    with pytest.raises(RuntimeError):
        with runio.atomic_path(tmp_path / "f") as tmp:
            tmp.write_text("new")
            raise RuntimeError
    assert (tmp_path / "f").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f"]


@pytest.mark.parametrize("suffix", [".otf", ".ttf"])
def test_the_font_keeps_every_glyph_of_a_cff_source(comic_run, gray_design_font, suffix):
    d = load_design(comic_run)
    src = TTFont(d.font_path)
    path, info = gray_design_font(suffix)  # export_font(comic_run, ...), shared (conftest)
    out = TTFont(str(path))
    assert out.getBestCmap() == src.getBestCmap()  # every character, same glyph names
    assert out.getGlyphOrder() == src.getGlyphOrder() and info["glyphs"] == len(src.getGlyphOrder())
    assert ("CFF " if suffix == ".otf" else "glyf") in out
    for tag in ("GPOS", "GSUB", "GDEF"):
        assert out[tag].compile(out) == src[tag].compile(src)  # kerning and layout untouched
    cmap = src.getBestCmap()
    for c in "-/.:5\u00e9\u00c1":  # punctuation, an undesigned digit, accented letters
        name = cmap[ord(c)]
        assert out["hmtx"][name] == src["hmtx"][name]
        if suffix == ".otf":  # the source's charstrings themselves
            assert _outline(out, name) == _outline(src, name), c
        else:  # cubic -> quadratic within upem / 1000
            assert _area(out, name) == pytest.approx(_area(src, name), rel=0.005), c
    for c in CHARS:  # the designed glyphs are new, their advances the source's
        assert _outline(out, cmap[ord(c)]) != _outline(src, cmap[ord(c)])
        assert out["hmtx"][cmap[ord(c)]][0] == src["hmtx"][cmap[ord(c)]][0]
    _no_notdef(path, LABEL + " " + CHARS)


@pytest.mark.parametrize("suffix", [".ttf", ".otf"])
def test_the_font_keeps_every_glyph_of_a_truetype_source(dejavu_run, tmp_path, suffix):
    d = load_design(dejavu_run)
    src = TTFont(d.font_path)
    path = tmp_path / f"f{suffix}"
    ex.export_font(dejavu_run, path)
    out = TTFont(str(path))
    assert out.getBestCmap() == src.getBestCmap() and out.getGlyphOrder() == src.getGlyphOrder()
    assert out["kern"].compile(out) == src["kern"].compile(src) and out["GPOS"].compile(out) == src["GPOS"].compile(src)
    cmap = src.getBestCmap()
    assert src["glyf"]["Aacute"].isComposite()  # an accented letter built on a designed base
    for c in "-/.:5\u00c1":
        name = cmap[ord(c)]
        if suffix == ".ttf":  # the source's glyphs; the composite decomposed, its outline the source's
            assert _outline(out, name) == _outline(src, name), c
            assert (out["glyf"][name] == src["glyf"][name]) == (c != "\u00c1")
        else:  # quadratic -> cubic (exact up to integer control points), contours reversed
            assert "CFF " in out and "glyf" not in out
            assert _area(out, name) == pytest.approx(_area(src, name), rel=0.002), c
    _no_notdef(path, LABEL + " \u00c1\u00d6")


def test_exported_fonts_are_readable_by_others(comic_run, tmp_path):
    old = os.umask(0o022)
    try:
        ex.export_font(comic_run, tmp_path / "f.ttf")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.ttf").stat().st_mode) == 0o644


@pytest.mark.parametrize("suffix", [".ttf", ".otf"])
def test_smooth_outlines_match_the_design_with_few_points(comic_run, gray_design_font, suffix):
    d = load_design(comic_run)
    path, info = gray_design_font(suffix)  # export_font(comic_run, ...), shared (conftest)
    assert info["method"] == "smooth"
    ious = ex.iou(ex.rasterize_at_design(path, d), d.robust)
    assert ious.min().item() >= 0.97, ious.tolist()
    for c in CHARS:
        assert info["points_by_char"][c] <= 3 * info["source_points"][c], (c, info["points_by_char"], info["source_points"])
    font = TTFont(str(path))
    ops = {op for c in CHARS for op, _ in _outline(font, font.getBestCmap()[ord(c)])}
    assert ("qCurveTo" if suffix == ".ttf" else "curveTo") in ops


def test_a_disc_becomes_a_smooth_circle():
    """An anti-aliased disc (radius 10 px of 32): the spline stays within 0.1 px of the circle,
    tangent-continuous (no corner), with a handful of control points, and covers the pixels as the design."""
    yy, xx = np.mgrid[:32, :32] + 0.5
    disc = np.clip(10.0 - np.hypot(xx - 16, yy - 16) + 0.5, 0, 1)
    loops = smooth.smooth_polygons(disc)
    assert len(loops) == 1
    pts, corner = loops[0]
    assert not corner.any() and 8 <= len(pts) <= 24
    ring = smooth._flatten(_record(loops))[0]
    assert np.abs(np.hypot(ring[:, 0] - 16, ring[:, 1] - 16) - 10.0).max() < 0.1
    cov = smooth.spline_coverage(loops, 32, 8)
    assert smooth.mask_iou(cov > 0.5, disc > 0.5) >= 0.99  # the target of the tolerance search


def _wavy_ring(n: int = 128) -> np.ndarray:
    """An anti-aliased ring at print resolution whose outer edge waves (12 bumps of 1.5 px): a
    design whose faithful outline needs many points."""
    yy, xx = np.mgrid[:n, :n] + 0.5
    r, a = np.hypot(xx - n / 2, yy - n / 2), np.arctan2(yy - n / 2, xx - n / 2)
    outer = 40.0 + 1.5 * np.sin(12 * a) - r
    return np.clip(np.minimum(outer, r - 28.0) + 0.5, 0, 1)


def test_a_point_budget_trades_fidelity_down_to_its_floor_and_no_further():
    w = _wavy_ring()
    design = w > 0.5
    iou = lambda loops: smooth.mask_iou(smooth.spline_coverage(loops, 128, 4) > 0.5, design)  # noqa: E731
    points = lambda loops: sum(len(p) for p, _ in loops)  # noqa: E731
    free = smooth.smooth_polygons(w, 4, 0.99)
    assert iou(free) >= 0.99
    budget = points(free) * 2 // 3
    tight = smooth.smooth_polygons(w, 4, 0.99, max_points=budget, floor_iou=0.97)
    assert points(tight) <= budget and iou(tight) >= 0.97  # (least squares: here above the free one)
    # a budget no outline above the floor meets: the fidelity target's outline, not a worse one
    assert points(smooth.smooth_polygons(w, 4, 0.99, max_points=8, floor_iou=0.97)) == points(free)
    # CFF: the merge is chosen the same way (its points counted as the font stores them)
    merged = smooth.cubic_outline(free, w, 4, 0.99)
    few = smooth.cubic_outline(free, w, 4, 0.99, max_points=smooth.recording_points(merged) * 3 // 4, floor_iou=0.95)
    assert smooth.recording_points(few) <= smooth.recording_points(merged) * 3 // 4
    assert smooth.mask_iou(smooth.recording_coverage(few, 128, 4) > 0.5, design) >= 0.95
    ops = {op for op, _ in few.value}
    assert "curveTo" in ops and "qCurveTo" not in ops
    # the search over a budget: only outlines within it, the measured ones few
    dense = smooth.trace_outline(w, 4)
    fit = smooth.budget_fit(dense, w, 4, 65.0, budget, lambda lp: [(points(lp), lp)], lambda lp: smooth.spline_coverage(lp, 128, 4))
    assert 0 < len(fit) <= smooth.BUDGET_EVALUATED and all(n <= budget for _, n, _ in fit)
    assert max(i for i, _, _ in fit) >= iou(tight) - 1e-12  # what smooth_polygons chose is among the best
    tried = [(0.99, 50, "a"), (0.98, 30, "b"), (0.96, 20, "c")]
    assert smooth.within_budget(tried, tried[0], 40, 0.97)[2] == "b"
    assert smooth.within_budget(tried, tried[0], 25, 0.97)[2] == "a"
    assert smooth.within_budget(tried, tried[0], 25, None)[2] == "c"


def test_least_squares_controls_fit_the_outline_closer_than_the_polygons_reading():
    """On a dense circle simplified to a few vertices, the off-curve points fitted by least
    squares put the spline nearer the circle than reading them off the polygon does."""
    t = np.linspace(0, 2 * np.pi, 800, endpoint=False)
    dense = np.c_[64 + 30 * np.cos(t), 64 - 30 * np.sin(t)]
    poly = smooth.tracers.simplify(dense, 1.0)
    corner = smooth.corners(poly, 65.0)
    read = poly + 0.5 * (smooth.through_points(poly, corner) - poly)
    fitted = smooth.least_squares_controls(dense, poly, corner, read)
    err = lambda c: np.abs(np.hypot(*(smooth._flatten(_record([(c, corner)]))[0] - 64).T) - 30).max()  # noqa: E731
    assert not corner.any() and err(fitted) < 0.5 * err(read)
    # a vertex not on the dense outline: no fit, the reading back
    assert smooth.least_squares_controls(dense, poly + 0.01, corner, read) is read


def _record(loops):
    from fontTools.pens.recordingPen import RecordingPen

    rec = RecordingPen()
    for p, c in loops:
        smooth.draw_spline(rec, p, c)
    return rec


def test_a_scan_of_the_vector_sheet_aligns_by_its_marks(comic_run, gray_design_font, tmp_path):
    """Rasterize the PDF sheet (pdfium, 150 dpi), degrade it as a scanner would, scan it with its
    layout: the marks are found, the glyphs read; each box sampled back is the font's rendering."""
    import json
    import shutil

    import pypdfium2 as pdfium
    from PIL import Image

    from a5ocr import scan as sc
    from a5ocr.scan import page as pg
    from a5ocr.scan.render_text import degrade

    d = load_design(comic_run)
    lay = ex.export_sheet(comic_run, tmp_path / "sheet.pdf", glyph_mm=10.0, dpi=150)
    assert lay["outline"] == "smooth" and lay["upsample"] == "vector"
    doc = pdfium.PdfDocument(str(tmp_path / "sheet.pdf"))
    img = doc[0].render(scale=150 / 72, grayscale=True).to_pil().convert("L")
    fine = doc[0].render(scale=600 / 72, grayscale=True).to_pil().convert("L")  # 4x the layout's px
    doc.close()
    assert abs(img.width - lay["page_px"][0]) <= 1 and abs(img.height - lay["page_px"][1]) <= 1
    gray = np.asarray(img, np.float32) / 255.0
    scanned, _ = degrade(gray, np.random.default_rng(5))
    pg.write_image(tmp_path / "scan.png", scanned)
    shutil.copy(ex.layout_path(tmp_path / "sheet.pdf"), tmp_path / "scan.layout.json")
    res = sc.scan(tmp_path / "scan.png", comic_run, method="ibp")
    assert res.mode == "sheet" and [c.expected for c in res.chars] == list(CHARS)
    assert res.to_dict()["accuracy"] >= 0.75
    # the clean rasterized sheet, read back per box, is the font at the design geometry
    from a5ocr.scan.binarize import paper_and_ink
    from a5ocr.scan.sheet import find_marks

    src, dst = find_marks(gray, json.loads((tmp_path / "scan.layout.json").read_text()), paper_and_ink(gray))
    assert np.abs(src * [img.width / lay["page_px"][0], img.height / lay["page_px"][1]] - dst).max() < 0.5
    font_ink = ex.rasterize_at_design(gray_design_font(".ttf")[0], d)  # export_font(comic_run, ...), shared
    for b in lay["boxes"]:
        x0, y0, x1, y1 = b["box_px"]
        crop = fine.crop((4 * x0, 4 * y0, 4 * x1, 4 * y1)).resize((32, 32), Image.BOX)  # area average onto the canvas
        ink = 1.0 - np.asarray(crop, np.float32) / 255.0
        assert ex.iou(torch.from_numpy(ink[None]), font_ink[b["index"]][None]).item() > 0.95


def test_a_print_resolution_design_exports_smoothly(tmp_path):
    """A 128x128 design (print resolution, the canvas geometry of the 32-px ones): the font
    renders it at 128 px with IoU >= 0.97, from curves."""
    from a5ocr.glyphs import rasterize
    from a5ocr.runs import save_glyphs
    from a5ocr.training.trainer import RobustGlyphs

    g = rasterize("comic-neue", "Og", 128)
    robust = RobustGlyphs(g.images, 0.5, "gray")
    with torch.no_grad():  # a smooth perturbation: coarse noise upsampled
        z = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        robust.z.copy_(2 * torch.nn.functional.interpolate(z, size=128, mode="bilinear")[:, 0])
    save_glyphs(tmp_path / "glyphs.safetensors", g, robust, eps_d=0.5, ink="gray")
    d = load_design(tmp_path)
    assert d.resolution == 128 and (d.robust - d.original).abs().max() > 0.2
    info = ex.export_font(tmp_path, tmp_path / "f.ttf")
    ious = ex.iou(ex.rasterize_at_design(tmp_path / "f.ttf", d), d.robust)
    assert ious.min().item() >= 0.97, ious.tolist()
    assert info["method"] == "smooth" and all(info["points_by_char"][c] < 200 for c in "Og")
