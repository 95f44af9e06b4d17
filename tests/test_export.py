"""Export: printable sheets (page size, glyph placement, registration marks), the installable font
(fontTools round trip, FreeType rendering vs the prototypes, certified error of the round trip),
PNGs, the figure, the CLI function, and bad input (ExportError, no partial file)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from a5ocr import export as ex
from a5ocr.export import outline
from a5ocr.errors import RunError
from a5ocr.runs import load_design

CHARS = "AOo0"
R = 32


def _design_run(tmp_path_factory, name: str, ink: str) -> Path:
    from a5ocr.training.design import DesignConfig, run_design

    out = tmp_path_factory.mktemp(name) / "run"
    # Fewer steps than the tiny preset (seconds); eps_A 0.01 keeps the certified error inside (0, 1)
    # so the round-trip comparison means something.
    run_design(DesignConfig(font="comic-neue", chars=CHARS, preset="tiny", resolution=R, ink=ink, eps_a=0.01,
                            stage1_steps=20, warmup=2, ramp=6, stage2_steps=10, samples_per_char=2, device="cpu",
                            certify_methods=("ibp",), out=str(out)))
    return out


@pytest.fixture(scope="module")
def gray_run(gray_design_run) -> Path:
    """A tiny A5/PC design (gray ink), 32x32, seconds: the session's (conftest), the same
    settings as ``binary_run`` but the ink."""
    return gray_design_run


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory) -> Path:
    return _design_run(tmp_path_factory, "binary", "binary")


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory) -> Path:
    """A synthetic gray design much noisier than a trained one: dw = eps_D (2 sigmoid(z) - 1), z ~ N(0.3, 1)."""
    from a5ocr.runs import save_glyphs
    from a5ocr.glyphs import rasterize
    from a5ocr.training.trainer import RobustGlyphs

    out = tmp_path_factory.mktemp("noisy")
    g = rasterize("dejavu-sans", CHARS, R)
    robust = RobustGlyphs(g.images, 0.5, "gray")
    with torch.no_grad():
        robust.z.copy_(torch.randn(robust.z.shape, generator=torch.Generator().manual_seed(0)) + 0.3)
    save_glyphs(out / "glyphs.safetensors", g, robust, eps_d=0.5, ink="gray")
    return out


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- sheets


@pytest.mark.parametrize("paper", ["a4", "letter"])
def test_pdf_page_is_the_paper_size_and_vector(gray_run, tmp_path, paper):
    from pypdf import PdfReader

    lay = ex.export_sheet(gray_run, tmp_path / "sheet.pdf", dpi=150, paper=paper)
    reader = PdfReader(tmp_path / "sheet.pdf")
    assert len(reader.pages) == lay["pages"] == 1
    page = reader.pages[0]
    w_mm, h_mm = ex.PAPER_MM[paper]
    box = [float(v) for v in page.mediabox]
    assert box[:2] == [0.0, 0.0]
    assert box[2] == pytest.approx(w_mm / 25.4 * 72, abs=0.01)  # A4: 595.276 pt, Letter: 612 pt
    assert box[3] == pytest.approx(h_mm / 25.4 * 72, abs=0.01)
    # vector: no image anywhere, glyphs as filled paths (curves), the labels as text in an embedded font
    xobjects = page["/Resources"].get("/XObject", {})
    assert all(xobjects[k].get_object().get("/Subtype") != "/Image" for k in xobjects)
    content = page.get_contents().get_data()
    assert b" c\n" in content or b" c " in content  # Bezier curve operators
    text = page.extract_text()
    for c in CHARS:
        assert f"U+{ord(c):04X}" in text
    assert "Comic Neue A5" in text
    fonts_used = [f.get_object()["/BaseFont"] for f in page["/Resources"]["/Font"].values()]
    assert any("DejaVuSans" in str(f) for f in fonts_used)
    # the same design writes the same bytes
    ex.export_sheet(gray_run, tmp_path / "again.pdf", dpi=150, paper=paper)
    assert (tmp_path / "again.pdf").read_bytes() == (tmp_path / "sheet.pdf").read_bytes()


def test_png_sheet_places_glyphs_at_the_requested_size(gray_run, tmp_path):
    dpi, glyph_mm = 300, 8.0
    path = tmp_path / "sheet.png"
    lay = ex.export_sheet(gray_run, path, glyph_mm=glyph_mm, dpi=dpi, paper="a4")
    saved = json.loads(ex.layout_path(path).read_text())
    assert saved["boxes"] == lay["boxes"] and saved["dpi"] == dpi and saved["paper_mm"] == [210.0, 297.0]
    img = Image.open(path)
    assert img.size == tuple(lay["page_px"])
    assert img.info["dpi"] == pytest.approx((dpi, dpi), abs=0.01)
    page = np.asarray(img)
    design = load_design(gray_run)
    want = glyph_mm / 25.4 * dpi
    assert abs(lay["glyph_px"] - want) <= 1
    for b in lay["boxes"]:
        x0, y0, x1, y1 = b["box_px"]
        assert x1 - x0 == y1 - y0 == lay["glyph_px"]
        assert b["box_mm"] == pytest.approx([v * 25.4 / dpi for v in b["box_px"]])
        assert b["char"] == CHARS[b["index"]]
        # the box holds exactly the nearest-upsampled design ...
        expect = ex.upsample_glyph(design.robust[b["index"]].numpy(), x1 - x0, "nearest")
        assert np.array_equal(page[y0:y1, x0:x1], ex.common.ink_u8(expect))
        # ... and the ink there matches the design's (mean ink, to the 8-bit level)
        assert (1 - page[y0:y1, x0:x1] / 255).mean() == pytest.approx(float(design.robust[b["index"]].mean()), abs=0.01)
        # the frame ticks stay outside: a 2-px ring around the box is paper
        ring = np.concatenate([page[y0 - 2 : y0, x0:x1].ravel(), page[y1 : y1 + 2, x0:x1].ravel(),
                               page[y0:y1, x0 - 2 : x0].ravel(), page[y0:y1, x1 : x1 + 2].ravel()])
        assert (ring == 255).all()
    # registration marks: filled discs whose ink centroid is the recorded centre
    assert [m["name"] for m in lay["marks"]] == ["top-left", "top-right", "bottom-left", "bottom-right"]
    for m in lay["marks"]:
        cx, cy = m["center_px"]
        assert m["center_px"] == pytest.approx([v / 25.4 * dpi for v in m["center_mm"]])
        r = m["diameter_mm"] / 2 / 25.4 * dpi
        assert page[int(cy), int(cx)] == 0
        span = int(r + 0.5 / 25.4 * dpi)  # the mark plus 0.5 mm: nothing else there
        ys, xs = int(cy) - span, int(cx) - span
        win = 1.0 - page[ys : int(cy) + span + 1, xs : int(cx) + span + 1] / 255.0
        assert win.sum() == pytest.approx(math.pi * r * r, rel=0.02)
        yy, xx = np.mgrid[: win.shape[0], : win.shape[1]]
        assert (xx * win).sum() / win.sum() + xs + 0.5 == pytest.approx(cx, abs=0.5)
        assert (yy * win).sum() / win.sum() + ys + 0.5 == pytest.approx(cy, abs=0.5)
    # the marks sit in the corners, 10 mm from the edges
    tl, br = lay["marks"][0]["center_mm"], lay["marks"][3]["center_mm"]
    assert tl == [10.0, 10.0] and br == [200.0, 287.0]


def test_large_glyphs_make_a_multipage_pdf_but_not_a_png(gray_run, tmp_path):
    lay = ex.export_sheet(gray_run, tmp_path / "big.pdf", glyph_mm=100.0, dpi=72)
    assert lay["pages"] == 4 and [b["page"] for b in lay["boxes"]] == [0, 1, 2, 3]
    from pypdf import PdfReader

    assert len(PdfReader(tmp_path / "big.pdf").pages) == 4
    with pytest.raises(ex.ExportError, match="pages"):
        ex.export_sheet(gray_run, tmp_path / "big.png", glyph_mm=100.0, dpi=72)
    assert not (tmp_path / "big.png").exists()


# --------------------------------------------------------------------------- font


@pytest.mark.parametrize("suffix", [".ttf", ".otf"])
def test_font_round_trips_through_ttx_and_maps_every_character(gray_run, gray_design_font, tmp_path, suffix):
    import freetype
    from fontTools.pens.areaPen import AreaPen
    from fontTools.ttLib import TTFont

    path, info = gray_design_font(suffix)  # export_font(gray_run, ...), shared (conftest)
    assert info["method"] == "smooth"
    font = TTFont(str(path))
    xml = io.StringIO()
    font.saveXML(xml)
    fresh = TTFont()
    fresh.importXML(io.StringIO(xml.getvalue()))
    buf = io.BytesIO()
    fresh.save(buf)
    again = TTFont(io.BytesIO(buf.getvalue()))
    cmap = again.getBestCmap()
    assert all(ord(c) in cmap for c in CHARS) and 32 in cmap
    assert again["name"].getBestFamilyName() == "Comic Neue A5"
    assert ("glyf" if suffix == ".ttf" else "CFF ") in again
    # metrics of the source font: advances, ascender, descender, units per em
    src = TTFont(load_design(gray_run).font_path)
    scmap = src.getBestCmap()
    for c in CHARS:
        assert again["hmtx"][cmap[ord(c)]][0] == src["hmtx"][scmap[ord(c)]][0]
    assert (again["hhea"].ascent, again["hhea"].descent) == (src["hhea"].ascent, src["hhea"].descent)
    assert again["head"].unitsPerEm == src["head"].unitsPerEm
    # winding: TrueType outer contours clockwise (negative area), CFF counter-clockwise
    glyphs = again.getGlyphSet()
    for c in CHARS:
        pen = AreaPen(glyphs)
        glyphs[cmap[ord(c)]].draw(pen)
        assert (pen.value < 0) if suffix == ".ttf" else (pen.value > 0)
    # FreeType opens the (re-saved) font and renders every character with ink
    (tmp_path / f"again{suffix}").write_bytes(buf.getvalue())
    face = freetype.Face(str(tmp_path / f"again{suffix}"))
    face.set_pixel_sizes(0, 48)
    for c in CHARS:
        face.load_char(c, freetype.FT_LOAD_RENDER)
        assert max(face.glyph.bitmap.buffer) > 0


def test_design_geometry_reproduces_the_source_font(gray_run):
    """The run's canvas->font-unit mapping: FreeType at that geometry gives back the original glyphs.

    (The residual is the stored baseline: a5ocr.glyphs renders at the baseline rounded to its
    1/4-px oversampling grid but stores the unrounded one, up to 1/8 px away.)
    """
    d = load_design(gray_run)
    again = ex.rasterize_at_design(d.font_path, d)
    assert (again - d.original).abs().mean() < 0.005
    assert (again - d.original).abs().max() < 0.13
    assert ex.iou(again, d.original).min() > 0.97


@pytest.mark.parametrize("run_name,outline_method,suffix,min_iou", [
    ("gray_run", "auto", ".ttf", 0.97),
    ("gray_run", "auto", ".otf", 0.97),
    ("gray_run", "contour", ".ttf", 0.95),
    ("noisy_run", "contour", ".ttf", 0.95),
    ("noisy_run", "halftone", ".ttf", 0.95),
    ("binary_run", "auto", ".ttf", 1.0),
    ("binary_run", "auto", ".otf", 1.0),
])
def test_font_rendering_matches_the_prototypes(request, tmp_path, run_name, outline_method, suffix, min_iou):
    run = request.getfixturevalue(run_name)
    d = load_design(run)
    if run_name == "gray_run" and outline_method == "auto":  # the defaults: the session's export (conftest)
        path, info = request.getfixturevalue("gray_design_font")(suffix)
    else:
        path = tmp_path / f"f{suffix}"
        info = ex.export_font(run, path, outline=outline_method)
    if run_name == "binary_run":
        assert info["method"] == "pixels"
    rendered = ex.rasterize_at_design(path, d)
    ious = ex.iou(rendered, d.robust)
    assert ious.min().item() >= min_iou, ious.tolist()
    if outline_method == "halftone" or run_name == "binary_run":  # gray levels kept (to integer font units)
        assert (rendered - d.robust).abs().mean() < 0.01


def test_glyphs_rasterize_rederives_the_geometry(gray_run, binary_run, gray_design_font, tmp_path):
    """a5ocr.glyphs.rasterize on the exported font re-derives scale and placement from the new
    outlines' union box, which is not the source's (the design and the 0.5 threshold move the
    ink extremes), so it only approximately matches the design canvas; rasterize_at_design is exact."""
    from a5ocr.glyphs import rasterize

    ex.export_font(binary_run, tmp_path / "f.ttf")
    for run, font in ((gray_run, gray_design_font(".ttf")[0]), (binary_run, tmp_path / "f.ttf")):
        d = load_design(run)
        g = rasterize(font, d.chars, d.resolution)
        assert g.units_per_em == d.units_per_em and g.family == "Comic Neue A5"
        assert g.units_per_pixel == pytest.approx(d.units_per_pixel, rel=0.03)
        assert abs(g.baseline - d.baseline) < 1.0
        assert ex.iou(g.images, d.robust).min() > 0.8


@pytest.mark.parametrize("run_name", ["gray_run", "binary_run"])
def test_certified_error_survives_the_font_round_trip(request, tmp_path, run_name):
    """Evaluate (IBP certificates) the run's classifier on FreeType renderings of the exported font
    and on the prototypes: same acquisitions (seed), certified error within 1 point."""
    from a5ocr.acquisition import Acquisition, AcquisitionConfig
    from a5ocr.evaluation import evaluate
    from a5ocr.models import load_classifier

    run = request.getfixturevalue(run_name)
    d = load_design(run)
    cfg = json.loads((run / "config.json").read_text())["config"]
    acq = Acquisition(d.resolution, AcquisitionConfig(**{**cfg["acquisition"], "blur_sigma": tuple(cfg["acquisition"]["blur_sigma"])}))
    model, _ = load_classifier(run / "classifier.safetensors")
    if run_name == "gray_run":  # the default export: the session's (conftest)
        font = request.getfixturevalue("gray_design_font")(".ttf")[0]
    else:
        font = tmp_path / "f.ttf"
        ex.export_font(run, font)
    rendered = ex.rasterize_at_design(font, d)

    def certified_error(glyphs):
        res = evaluate(model, glyphs, d.chars, acq, eps_a=cfg["eps_a"], samples_per_char=50,
                       seed=cfg["eval_seed"], methods=("ibp",))
        return res.summary()["certified_error"]["ibp"]

    reference = certified_error(d.robust)
    assert 0.0 < reference < 1.0  # a comparison that can fail
    # within 1 percentage point, counted in samples (a float 0.42 vs 0.43 must pass)
    assert abs(certified_error(rendered) - reference) <= 0.01 + 1e-9


# --------------------------------------------------------------------------- PNGs, figure, CLI


def test_pngs_and_figure(gray_run, tmp_path):
    files = ex.export_pngs(gray_run, tmp_path / "pngs")
    assert [p.name for p in files] == ["U+0041.png", "U+004F.png", "U+006F.png", "U+0030.png"]
    d = load_design(gray_run)
    for k, p in enumerate(files):
        arr = np.asarray(Image.open(p))
        assert arr.shape == (R, R) and np.array_equal(arr, ex.common.ink_u8(d.robust[k]))
    fig = ex.comparison_figure(gray_run, tmp_path / "fig.png")
    img = Image.open(fig)
    assert img.mode == "L" and img.width > img.height > 3 * R


def test_cli_export_writes_every_output(gray_run, tmp_path):
    import typer
    from typer.testing import CliRunner

    from a5ocr.cli.export_cmd import export

    app = typer.Typer()
    app.command()(export)

    @app.callback()
    def _root() -> None: ...

    runner = CliRunner()
    res = runner.invoke(app, ["export", str(gray_run), "--sheet", str(tmp_path / "s.pdf"), "--font", str(tmp_path / "f.otf"),
                              "--png-dir", str(tmp_path / "png"), "--figure", str(tmp_path / "fig.png"), "--dpi", "100"])
    assert res.exit_code == 0, res.output
    assert _listing(tmp_path) == ["f.otf", "fig.png", "png", "s.layout.json", "s.pdf"]
    res = runner.invoke(app, ["export", str(gray_run)])
    assert isinstance(res.exception, ex.ExportError) and "at least one" in str(res.exception)
    # a bad option fails before anything is written
    res = runner.invoke(app, ["export", str(gray_run), "--font", str(tmp_path / "g.ttf"), "--sheet", str(tmp_path / "t.pdf"), "--paper", "a3"])
    assert isinstance(res.exception, ex.ExportError) and "a3" in str(res.exception)
    assert not (tmp_path / "g.ttf").exists()


# --------------------------------------------------------------------------- bad input


def test_bad_input_raises_export_error_and_leaves_no_file(gray_run, tmp_path, monkeypatch):
    missing = tmp_path / "nope" / "x"
    for call, match in [
        (lambda: ex.export_sheet(gray_run, missing.with_suffix(".pdf")), "does not exist"),
        (lambda: ex.export_font(gray_run, missing.with_suffix(".ttf")), "does not exist"),
        (lambda: ex.comparison_figure(gray_run, missing.with_suffix(".png")), "does not exist"),
        (lambda: ex.export_pngs(gray_run, missing), "does not exist"),
        (lambda: ex.export_sheet(gray_run, tmp_path / "s.pdf", paper="a3"), "unknown paper size 'a3'"),
        (lambda: ex.export_sheet(gray_run, tmp_path / "s.tiff"), r"\.pdf or \.png"),
        (lambda: ex.export_font(gray_run, tmp_path / "f.woff"), r"\.ttf or \.otf"),
        (lambda: ex.export_font(gray_run, tmp_path / "f.ttf", outline="splines"), "unknown outline method"),
        (lambda: ex.export_sheet(gray_run, tmp_path / "s.pdf", glyph_mm=0.5), "glyph size"),
    ]:
        with pytest.raises(ex.ExportError, match=match):
            call()
    assert not (tmp_path / "nope").exists()
    # run folders without designs
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ex.ExportError, match="no glyphs.safetensors"):
        ex.export_font(empty, tmp_path / "f.ttf")
    from safetensors.torch import save_file

    save_file({"robust": torch.zeros(2, 8, 8)}, str(empty / "glyphs.safetensors"), metadata={"format": "something-else"})
    with pytest.raises(ex.ExportError, match="not an a5ocr design"):
        ex.export_sheet(empty, tmp_path / "s.pdf")
    (empty / "glyphs.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ex.ExportError, match="not a readable"):
        ex.export_pngs(empty, tmp_path / "pngs")
    with pytest.raises(RunError, match="not found"):
        load_design(tmp_path / "no-run")
    assert _listing(tmp_path) == ["empty"]
    # a failure while writing leaves neither the new file nor a temporary one, and keeps the old file
    (tmp_path / "keep.ttf").write_bytes(b"old")

    def broken(*args):
        raise ex.ExportError("simulated failure")

    monkeypatch.setattr(ex.font, "_verify_font", broken)
    with pytest.raises(ex.ExportError, match="simulated"):
        ex.export_font(gray_run, tmp_path / "keep.ttf")
    assert _listing(tmp_path) == ["empty", "keep.ttf"] and (tmp_path / "keep.ttf").read_bytes() == b"old"


# --------------------------------------------------------------------------- tracers


def test_pixel_tracer_is_exact_with_truetype_winding():
    m = np.zeros((7, 7), bool)
    m[1:6, 1:6] = True
    m[2:5, 2:5] = False  # a ring: outer 5x5, hole 3x3
    m[6, 6] = True  # a lone pixel touching the ring at a corner
    loops = outline.trace_pixels(m)
    # y up: flip y; outer contours clockwise (negative area), holes counter-clockwise
    areas = sorted(outline.signed_area(lp * [1, -1]) for lp in loops)
    assert areas == [-25.0, -1.0, 9.0]
    assert sorted(len(lp) for lp in loops) == [4, 4, 4]  # collinear points removed


def test_level_tracer_follows_the_bilinear_half_level():
    yy, xx = np.mgrid[:40, :40] + 0.5
    disc = np.clip(12.0 - np.hypot(xx - 20, yy - 20) + 0.5, 0, 1)  # anti-aliased disc, radius 12
    f, x0, step = outline.bilinear_upsample(disc, 4)
    loops = outline.trace_level(f, 0.5)
    assert len(loops) == 1
    loop = outline.simplify(x0 + loops[0] * step, 0.02)
    assert -outline.signed_area(loop * [1, -1]) == pytest.approx(math.pi * 144, rel=0.01)
    # the bilinear interpolant of the sampled ramp bends the circle by < 0.1 px between samples
    assert np.hypot(loop[:, 0] - 20, loop[:, 1] - 20) == pytest.approx(12.0, abs=0.1)
    with pytest.raises(ValueError):
        outline.trace_level(np.ones((3, 3)), 0.5)
