"""``a5ocr scan`` and ``a5ocr render-text``: page I/O, segmentation, deskew, normalisation,
certificates, glyph sheets, the end-to-end read of a page printed in a designed font, bad input.

One tiny design run (8 characters, 32x32, seconds) is shared by the module. Its classifier is
small and briefly trained, so the reading threshold is 90% of the characters (it reads these
pages perfectly on the machine the tests were written on)."""

from __future__ import annotations

import io
import json
import math
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SCAN_CHARS
from a5ocr import scan as sc
from a5ocr.evaluation import radius_cap
from a5ocr.scan import page as pg
from a5ocr.scan.render_text import RenderError, RenderOptions, render_text, truth_path, write_page

CHARS = SCAN_CHARS  # the characters of the shared scan_run (conftest)
TEXT = "BAD CAFE FACE\nHEAD BEACH EDGE\nDEAF GAB HEDGE"


@pytest.fixture(scope="module")
def run(scan_run):
    """A tiny design of CHARS on a 32 px canvas (conftest: trained in the background)."""
    return scan_run


@pytest.fixture(scope="module")
def font(run):
    """The run's robust font, exported beside it as RUN/a5.ttf."""
    return run / "a5.ttf"


@pytest.fixture(scope="module")
def reader(run):
    return sc.load_reader(run)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _page(tmp_path, text, font="comic-neue", name="page.png", **kw):
    opts = RenderOptions(**{"size_pt": 20.0, "width_in": 6.0, "margin_in": 0.4, **kw})
    gray, truth = render_text(text, font, opts)
    path, _ = write_page(tmp_path / name, gray, truth, opts.dpi)
    return path, gray, truth


# --------------------------------------------------------------------------- render-text


def test_render_text_writes_page_and_truth_reproducibly(tmp_path):
    path, gray, truth = _page(tmp_path, "Hello jiji World\nsecond line", seed=3)
    assert path.is_file() and truth_path(path).is_file()
    saved = json.loads(truth_path(path).read_text())
    assert saved["text"] == "Hello jiji World\nsecond line" and saved["lines"] == ["Hello jiji World", "second line"]
    assert len(saved["chars"]) == len("HellojijiWorldsecondline")
    assert abs(saved["degradation"]["angle_deg"]) <= 1.0 and saved["degradation"]["jpeg_quality"] == 85
    h, w = gray.shape
    for c in saved["chars"]:
        x0, y0, x1, y1 = c["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    again, _ = render_text("Hello jiji World\nsecond line", "comic-neue", RenderOptions(size_pt=20.0, width_in=6.0, margin_in=0.4, seed=3))
    assert np.array_equal(gray, again)
    other, _ = render_text("Hello jiji World\nsecond line", "comic-neue", RenderOptions(size_pt=20.0, width_in=6.0, margin_in=0.4, seed=4))
    assert not np.array_equal(gray, other)
    clean, t2 = render_text("Hello", "comic-neue", RenderOptions(clean=True))
    assert clean.max() == 1.0 and clean.min() < 0.05 and t2["degradation"] == {}


def test_render_text_wraps_and_refuses_missing_glyphs(tmp_path, font):
    gray, truth = render_text("ABC " * 40, "comic-neue", RenderOptions(width_in=4.0, margin_in=0.5, clean=True))
    assert len(truth["lines"]) > 2 and all(line for line in truth["lines"])
    with pytest.raises(RenderError, match="no glyph"):
        render_text("BAD \u4e2d\u6587", font)  # CJK: in neither the source font nor its export
    with pytest.raises(RenderError, match="empty"):
        render_text("   ", "comic-neue")
    with pytest.raises(sc.ScanError, match="font not found"):
        render_text("A", tmp_path / "none.ttf")


# --------------------------------------------------------------------------- pipeline without a classifier


def test_segmentation_counts_characters_lines_and_merges_dots(tmp_path):
    text = "jig fizz Jiminy\nquick brown fox\njumps high"
    _, gray, truth = _page(tmp_path, text, seed=1)
    seg = sc.segment(gray)
    assert len(seg.lines) == 3
    assert [len(line) for line in seg.lines] == [len(t.replace(" ", "")) for t in truth["lines"]]
    boxes = [seg.page_box(g.box) for g in seg.glyphs]
    ious = [_iou(b, c["box"]) for b, c in zip(boxes, truth["chars"])]
    assert min(ious) > 0.6 and float(np.median(ious)) > 0.8
    # the i and j boxes reach up to their dots: as tall as the truth boxes
    for b, c in zip(boxes, truth["chars"]):
        if c["char"] in "ij":
            assert abs(b[1] - c["box"][1]) < 4 and _iou(b, c["box"]) > 0.6


@pytest.mark.parametrize("angle", [1.7, -2.4])
def test_deskew_recovers_a_known_rotation(angle):
    clean, _ = render_text("The quick brown fox jumps\nover the lazy dog again", "comic-neue",
                           RenderOptions(clean=True, size_pt=18.0, width_in=6.0, margin_in=0.5))
    rotated = pg.rotate_image(clean, angle, fill=1.0, expand=True)
    levels = sc.paper_and_ink(rotated)
    est = sc.estimate_skew(sc.ink_mask(rotated, levels))
    assert abs(est - angle) < 0.3
    seg = sc.segment(rotated)
    assert abs(seg.angle - angle) < 0.3 and len(seg.lines) == 2


@pytest.mark.parametrize("scale,min_iou", [(1.0, 0.8), (2.9, 0.9)])
def test_normalisation_reproduces_the_prototypes(tmp_path, run, reader, scale, min_iou):
    """A clean page in the source font, normalised at the fitted geometry, gives the design's
    original prototypes: IoU of the ink > 0.5 masks >= 0.9 per character when a canvas pixel
    spans 2.9 page pixels; at the design geometry itself (1 page px per canvas px, the page's
    pixel grid not aligned with the canvas) >= 0.8 (the thin bars of E) and >= 0.93 on average."""
    from a5ocr.export import iou
    from a5ocr.runs import load_design

    design = load_design(run)
    size_pt = scale * reader.units_per_em / reader.units_per_pixel * 72 / 300
    _, gray, truth = _page(tmp_path, "ABCD EFGH\nHEAD BAG", clean=True, size_pt=size_pt)
    seg = sc.segment(gray)
    labels = np.array([CHARS.index(c["char"]) for c in truth["chars"]])
    assert len(seg.glyphs) == len(labels)
    geo, canv, _ = sc.fit_geometry(seg, reader, labels=labels)
    em_px = reader.units_per_em * float(np.median(geo.k)) / reader.units_per_pixel
    assert abs(em_px / (size_pt * 300 / 72) - 1) < 0.03
    assert geo.table == "original"  # the page is in the source font
    got = iou(torch.from_numpy(canv), design.original[torch.from_numpy(labels)])
    assert float(got.min()) >= min_iou and float(got.mean()) >= 0.93, got


def test_ink_extents_and_otsu():
    p = np.array([0, 0, 0.25, 1, 1, 1, 0.75, 0, 0])
    assert sc.ink_extents(p) == pytest.approx((2.5 + 0.25 / 0.75, 6.5 + 0.25 / 0.75))
    assert all(math.isnan(v) for v in sc.ink_extents(np.zeros(5)))
    g = np.r_[np.full(1000, 0.95), np.full(100, 0.1)]
    assert 0.1 < sc.otsu_threshold(g) < 0.95


def _template_reader(reader):
    """The reader with a nearest-prototype classifier (logits = -|x - p|^2 / 2 up to a common
    term, p = the robust glyphs as printed): a near-perfect reader of clean pages in the font.
    Its templates are the identity canvases, so it is shown them (pose scale 1, not the
    acquisition's mean pose that a trained classifier is shown)."""
    import dataclasses

    protos = 1 - torch.from_numpy(reader.tables["robust"]["glyphs"]).float()
    k, r, _ = protos.shape
    lin = torch.nn.Linear(3 * r * r, k)
    with torch.no_grad():
        lin.weight.copy_((2 * protos / 3).reshape(k, 1, r * r).expand(k, 3, r * r).reshape(k, -1) / 2)
        lin.bias.copy_(-(protos**2).flatten(1).sum(1) / 2)
    return dataclasses.replace(reader, model=torch.nn.Sequential(torch.nn.Flatten(), lin).eval(), pose_scale=1.0)


SPLIT_TEXT = "HEAD FACE\nBADGE"  # the page of the split and join tests (13 letters, two lines)


def test_touching_letters_are_split_by_recognition(reader, font):
    """Letters emboldened until some touch (fewer components than letters: two pairs at least)
    are read one by one. Two short lines: the recognition-driven split's search is the slow
    part of the suite (HEAD BEACH FACE / CAGE BADGE took 5x as long for one pair more)."""
    from scipy import ndimage

    gray, truth = render_text(SPLIT_TEXT, font, RenderOptions(clean=True, size_pt=20.0, width_in=6.0, margin_in=0.4))
    bold = ndimage.grey_erosion(gray, size=(3, 7))
    assert len(sc.segment(bold).glyphs) <= len(truth["chars"]) - 2
    result = sc.scan_text(bold, _template_reader(reader), 0.02, "ibp")
    assert result.text == truth["text"]


def test_letters_in_pieces_are_joined_by_recognition(reader, font):
    """Letters cut in two by a thin white gap (as a defended glyph or a light print may come
    out: more components than letters, pieces side by side) are read as one letter each."""
    gray, truth = render_text(SPLIT_TEXT, font, RenderOptions(clean=True, size_pt=20.0, width_in=6.0, margin_in=0.4))
    broken = gray.copy()
    for c in truth["chars"]:
        x0, y0, x1, y1 = (int(round(v)) for v in c["box"])
        mid = (x0 + x1) // 2
        broken[y0 : y1 + 1, mid - 1 : mid + 1] = 1.0  # a 2-px gap down the middle of every letter
    assert len(sc.segment(broken).glyphs) > len(truth["chars"])
    result = sc.scan_text(broken, _template_reader(reader), 0.02, "ibp")
    assert result.text == truth["text"]


# --------------------------------------------------------------------------- end to end


def test_scan_reads_a_page_in_the_designed_font(tmp_path, run, font):
    path, gray, truth = _page(tmp_path, TEXT, font=font, seed=2)
    result = sc.scan(path, run, method="ibp")
    assert result.eps_a == pytest.approx(0.02)  # the run's eps_A
    read = result.text.replace("\n", " ")
    want = truth["text"].replace("\n", " ")
    assert len(result.chars) == len(truth["chars"])
    assert len(read) == len(want)
    correct = sum(a == b for a, b in zip(read.replace(" ", ""), want.replace(" ", "")))
    assert correct / len(truth["chars"]) >= 0.9, (read, want)
    assert [i for i, c in enumerate(read) if c in " "] == [i for i, c in enumerate(want) if c == " "]
    ious = [_iou(c.box, t["box"]) for c, t in zip(result.chars, truth["chars"])]
    assert min(ious) > 0.6 and float(np.median(ious)) > 0.8
    # JSON and overlay
    sc.write_json(result, tmp_path / "r.json")
    sc.write_overlay(result, sc.load_page(path), tmp_path / "r.png")
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["text"] == result.text and d["counts"]["characters"] == len(truth["chars"])
    assert d["certified_fraction"] == pytest.approx(result.certified_count / len(result.chars))
    assert d["radius_cap"] == radius_cap(0.02)  # the evaluation stage's cap: one certified-radius search
    assert all(c["radius"] <= d["radius_cap"] for c in d["characters"])
    for c in d["characters"]:
        assert set(c) >= {"label", "box", "confidence", "certified", "radius", "expected", "correct"}
        assert 0.0 <= c["confidence"] <= 1.0 and (c["radius"] >= 0.02) == c["certified"]
    # render-text's truth beside the page is found: correctness is counted, and adds up
    k, n, t = d["counts"], len(result.chars), len(truth["chars"])
    assert d["truth"] == {"source": str(path) + ".truth.json", "characters": t}
    assert k["truth_characters"] == t and k["correct"] + k["wrong"] == n and k["correct"] == sum(c["correct"] for c in d["characters"])
    assert k["certified_correct"] == sum(c["certified"] and c["correct"] for c in d["characters"])
    assert k["certified_correct"] + k["certified_wrong"] == k["certified"] and len(d["certified_wrong"]) == k["certified_wrong"]
    assert all(w["certified"] and w["label"] != w["expected"] for w in d["certified_wrong"])
    assert sum(c["expected"] != "" for c in d["characters"]) + k["missed"] == t and len(d["missed"]) == k["missed"]
    assert d["accuracy"] == pytest.approx(k["correct"] / t) and d["accuracy"] >= 0.9
    assert d["certified_correct_fraction"] == pytest.approx(k["certified_correct"] / t)
    with Image.open(tmp_path / "r.png") as im:
        assert im.size == (gray.shape[1], gray.shape[0]) and im.mode == "RGB"
        arr = np.asarray(im)
    green = (arr[..., 1] > 150) & (arr[..., 0] < 60)
    red = (arr[..., 0] > 200) & (arr[..., 1] < 60)
    assert green.any() == (result.certified_count > 0) and red.any() == (result.certified_count < len(result.chars))


def _read(chars: str, certified: str) -> list:
    """Characters read (labels, and "1" certified / "0" not per character) on one line."""
    return [sc.ScanChar(char=c, box=[10.0 * i, 0.0, 10.0 * i + 8, 12.0], line=0, confidence=0.9, certified=f == "1",
                        radius=0.05 if f == "1" else 0.0) for i, (c, f) in enumerate(zip(chars, certified))]


def _result(chars, mode="text") -> sc.ScanResult:
    return sc.ScanResult(page="p.png", mode=mode, eps_a=0.02, method="ibp", chars=chars, page_px=(100, 20))


def test_truth_alignment_counts_correct_certified_and_certified_wrong():
    from a5ocr.scan.result import compare_with_truth

    # read B A D X C A F F against "BAD CAFE": an extra X (nothing there), the final E read as F
    res = compare_with_truth(_result(_read("BADXCAFF", "11011110")), "BAD CAFE", "truth.txt")
    assert [c.expected for c in res.chars] == ["B", "A", "D", "", "C", "A", "F", "E"]
    d = res.to_dict()
    assert d["counts"] == {"characters": 8, "certified": 6, "uncertified": 2, "lines": 1, "truth_characters": 7,
                           "correct": 6, "wrong": 2, "certified_correct": 5, "certified_wrong": 1, "missed": 0}
    assert d["truth"] == {"source": "truth.txt", "characters": 7} and d["missed"] == []
    assert [(w["index"], w["label"], w["expected"]) for w in d["certified_wrong"]] == [(3, "X", "")]
    assert (d["accuracy"], d["certified_correct_fraction"], d["certified_wrong_fraction"]) == (6 / 7, 5 / 7, 1 / 7)
    assert d["certified_fraction"] == 6 / 8
    # a true character nothing was read for is missed; a certified wrong read is listed
    res = compare_with_truth(_result(_read("BED", "111")), "BA\nXD", "t")
    d = res.to_dict()
    assert [c.expected for c in res.chars] == ["B", "A", "D"]  # E read for the A; the X is missed
    assert d["missed"] == [{"index": 2, "char": "X"}] and d["counts"]["missed"] == 1
    assert d["counts"]["certified_wrong"] == 1 and d["certified_wrong"][0]["label"] == "E"


def test_without_a_truth_correctness_is_null_and_pages_add_up():
    from a5ocr.scan.result import compare_with_truth, overall

    plain = _result(_read("BAD", "101")).to_dict()
    assert plain["truth"] is None and plain["missed"] is None and plain["certified_wrong"] is None
    assert plain["accuracy"] is None and plain["certified_correct_fraction"] is None
    assert all(plain["counts"][k] is None for k in ("truth_characters", "correct", "wrong", "certified_correct", "certified_wrong", "missed"))
    assert all(c["expected"] is None and c["correct"] is None for c in plain["characters"])
    a = compare_with_truth(_result(_read("BAD", "111")), "BAD", "a")
    b = compare_with_truth(_result(_read("CAFF", "0111")), "CAFE", "b")
    both = overall([a, b])
    assert both["counts"] == {"pages": 2, "characters": 7, "certified": 6, "uncertified": 1, "lines": 2, "truth_characters": 7,
                              "correct": 6, "wrong": 1, "certified_correct": 5, "certified_wrong": 1, "missed": 0}
    assert (both["accuracy"], both["certified_correct_fraction"], both["certified_fraction"]) == (6 / 7, 5 / 7, 6 / 7)
    partly = overall([a, _result(_read("BAD", "111"))])  # one page without a truth: no overall correctness
    assert partly["counts"]["characters"] == 6 and partly["counts"]["correct"] is None and partly["accuracy"] is None
    # a sheet's truth is its layout
    sheet = _result(_read("AB", "11"), mode="sheet")
    for c, e in zip(sheet.chars, "AC"):
        c.expected = e
    d = sheet.to_dict()
    assert d["truth"] == {"source": "sheet layout", "characters": 2} and d["counts"]["certified_wrong"] == 1


def test_a_perfect_read_against_a_changed_truth_counts_exactly_the_change(reader, font):
    from a5ocr.scan.result import compare_with_truth

    gray, truth = render_text("BAD CAFE\nHEAD", font, RenderOptions(clean=True, size_pt=20.0, width_in=6.0, margin_in=0.4))
    result = sc.scan_text(gray, _template_reader(reader), 0.02, "ibp")
    assert result.text == truth["text"]
    compare_with_truth(result, "BAD CAGE\nHEAD", "changed")  # the F (read index 5) is not what the truth says
    k = result.counts()
    assert [c.correct for c in result.chars] == [i != 5 for i in range(11)]
    assert (k["correct"], k["wrong"], k["missed"]) == (10, 1, 0)
    f = result.chars[5]
    assert k["certified_wrong"] == int(f.certified) and k["certified_correct"] == result.certified_count - int(f.certified)


def test_certificates_and_radii_are_sound(reader):
    from a5ocr import bounds

    r = reader.resolution
    design_w = torch.rand(6, r, r, generator=torch.Generator().manual_seed(0)) * 0.2
    x = (1 - design_w).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    labels = reader.model(x).argmax(1)
    cert, radius = sc.certify_canvases(reader.model, x, labels, 0.02, "crown-ibp")
    assert ((radius >= 0.02) == cert).all()
    pos = radius > 0
    if pos.any():
        e = torch.from_numpy(radius[pos]).view(-1, 1, 1, 1)
        xs = x[torch.from_numpy(pos)].double()
        lab = labels[torch.from_numpy(pos)]
        box = ((xs - e).clamp(0, 1), (xs + e).clamp(0, 1))
        ok = bounds.certify(reader.model, *box, lab, method="ibp") | bounds.certify(reader.model, *box, lab, method="crown-ibp")
        assert ok.all()  # every radius is a proof (IBP, or CROWN-IBP at eps_A)


def test_scan_a_glyph_sheet_with_registration_marks(tmp_path, run):
    from a5ocr.export import export_sheet
    from a5ocr.scan.render_text import degrade

    export_sheet(run, tmp_path / "sheet.png", glyph_mm=10.0, dpi=150)
    gray = pg.read_page(tmp_path / "sheet.png")
    scanned, _ = degrade(gray, np.random.default_rng(5))
    pg.write_image(tmp_path / "scan.png", scanned)
    shutil.copy(tmp_path / "sheet.layout.json", tmp_path / "scan.layout.json")
    res = sc.scan(tmp_path / "scan.png", run, method="ibp")
    d = res.to_dict()
    assert res.mode == "sheet" and len(res.chars) == len(CHARS) and d["accuracy"] >= 0.75
    assert [c.expected for c in res.chars] == list(CHARS)
    assert d["truth"]["source"] == "sheet layout" and d["counts"]["correct"] == sum(c.char == c.expected for c in res.chars)
    layout = json.loads((tmp_path / "sheet.layout.json").read_text())
    for c, b in zip(res.chars, layout["boxes"]):
        assert _iou(c.box, b["box_px"]) > 0.8  # a 1-degree rotation at most
    # a sheet of another page size / a blank page: the marks are not found
    pg.write_image(tmp_path / "blank.png", np.ones((300, 200), np.float32))
    with pytest.raises(sc.ScanError, match="blank"):
        sc.scan(tmp_path / "blank.png", run, layout=tmp_path / "sheet.layout.json")
    with pytest.raises(sc.ScanError, match="not an a5ocr sheet layout"):
        (tmp_path / "bad.json").write_text("{}")
        sc.scan(tmp_path / "scan.png", run, layout=tmp_path / "bad.json")


# --------------------------------------------------------------------------- image formats and bad input


def _rgba_page(gray: np.ndarray) -> Image.Image:
    """Black text drawn only through the alpha channel (transparent black paper)."""
    a = np.round((1 - gray) * 255).astype(np.uint8)
    rgba = np.zeros(gray.shape + (4,), np.uint8)
    rgba[..., 3] = a
    return Image.fromarray(rgba, "RGBA")


def test_gray_rgba_16bit_palette_tiff_read_alike(tmp_path, run, font):
    path, gray, truth = _page(tmp_path, "BAD CAFE", font=font, seed=0)
    base = pg.read_page(path)
    u8 = pg.to_u8(base)
    Image.fromarray(u8, "L").convert("RGB").save(tmp_path / "rgb.jpg", quality=98)
    _rgba_page(base).save(tmp_path / "rgba.png")
    Image.fromarray((base.astype(np.float64) * 65535).round().astype(np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(u8, "L").convert("P").save(tmp_path / "pal.png")
    Image.fromarray(u8, "L").save(tmp_path / "page.tif")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    for name, tol in (("rgba.png", 1 / 255 + 1e-6), ("g16.png", 1e-4), ("pal.png", 1 / 255 + 1e-6), ("page.tif", 1e-6), ("rgb.jpg", 0.2)):
        got = pg.read_page(tmp_path / name)
        assert got.shape == base.shape and float(np.abs(got - base).max()) <= tol, name
    first = sc.scan(path, run, method="ibp")
    want = first.text
    for name in ("rgba.png", "g16.png"):
        other = sc.scan(tmp_path / name, run, method="ibp")
        assert other.text == want
        assert other.to_dict()["truth"] is None and other.counts()["correct"] is None  # no truth beside: not guessed
    # the same truth as a text file gives the same figures as render-text's JSON found beside the page
    (tmp_path / "truth.txt").write_text("BAD\n CAFE\n", encoding="utf-8")
    by_text = sc.scan(tmp_path / "g16.png", run, method="ibp", truth=tmp_path / "truth.txt")
    assert by_text.truth["source"] == str(tmp_path / "truth.txt") and by_text.counts() == first.counts()
    with pytest.raises(sc.ScanError, match="--truth .* not found"):
        sc.scan(tmp_path / "g16.png", run, truth=tmp_path / "none.txt")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(sc.ScanError, match="not an a5ocr ground truth"):
        sc.scan(tmp_path / "g16.png", run, truth=tmp_path / "bad.json")


def _bomb_png(path, width=50_000, height=50_000):
    """A valid 1x1 PNG whose IHDR claims width x height (CRC fixed): never decoded here."""
    buf = io.BytesIO()
    Image.new("L", (1, 1), 255).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_bad_pages_give_clear_errors(tmp_path, run):
    (tmp_path / "notes.png").write_text("not an image at all")
    with pytest.raises(sc.ScanError, match="not an image"):
        sc.scan(tmp_path / "notes.png", run)
    (tmp_path / "doc.pdf").write_bytes(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    with pytest.raises(sc.ScanError, match="PDF input is not supported: convert it to PNG"):
        sc.scan(tmp_path / "doc.pdf", run)
    _bomb_png(tmp_path / "bomb.png")
    with pytest.raises(sc.ScanError, match="pixels"):
        sc.scan(tmp_path / "bomb.png", run)
    _bomb_png(tmp_path / "big.png", 12_000, 10_000)  # 120 Mpx: over our limit, under Pillow's error level
    with pytest.raises(sc.ScanError, match="megapixel"):
        pg.read_page(tmp_path / "big.png")
    good = io.BytesIO()
    Image.new("L", (64, 64), 128).save(good, format="PNG")
    (tmp_path / "cut.png").write_bytes(good.getvalue()[:60])
    with pytest.raises(sc.ScanError, match="cannot read"):
        sc.scan(tmp_path / "cut.png", run)
    with pytest.raises(sc.ScanError, match="page not found"):
        sc.scan(tmp_path / "missing.png", run)
    with pytest.raises(sc.ScanError, match="no designs"):
        sc.scan(tmp_path / "notes.png", tmp_path)
    pg.write_image(tmp_path / "white.png", np.ones((200, 300), np.float32))
    with pytest.raises(sc.ScanError, match="--eps-a"):
        sc.scan(tmp_path / "white.png", run, eps_a=1.5)
    with pytest.raises(sc.ScanError, match="--method"):
        sc.scan(tmp_path / "white.png", run, method="crown")


def test_blank_and_noisy_pages_give_an_empty_result(tmp_path, run):
    rng = np.random.default_rng(0)
    pg.write_image(tmp_path / "white.png", np.ones((400, 300), np.float32))
    pg.write_image(tmp_path / "noise.png", np.clip(0.93 + rng.normal(0, 0.02, (400, 300)), 0, 1).astype(np.float32))
    for name in ("white.png", "noise.png"):
        res = sc.scan(tmp_path / name, run, method="ibp")
        d = res.to_dict()
        assert res.chars == [] and d["text"] == "" and d["counts"]["characters"] == 0 and d["certified_fraction"] is None
        sc.write_overlay(res, sc.load_page(tmp_path / name), tmp_path / f"{name}.overlay.png")


# --------------------------------------------------------------------------- command line


def test_cli_render_text_and_scan(tmp_path, run, font):
    from typer.testing import CliRunner

    from a5ocr.cli.app import app

    runner = CliRunner()
    page = tmp_path / "p.png"
    r = runner.invoke(app, ["render-text", "BAD\\nFACE", "--font", str(font), "--out", str(page), "--size-pt", "18", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert page.is_file() and truth_path(page).is_file()
    assert json.loads(truth_path(page).read_text())["lines"] == ["BAD", "FACE"]
    args = ["scan", str(page), "--run", str(run), "--method", "ibp", "--json", str(tmp_path / "o.json"), "--overlay", str(tmp_path / "o.png")]
    r = runner.invoke(app, args + ["--require-certified"])
    d = json.loads((tmp_path / "o.json").read_text())
    assert r.exit_code == (0 if d["counts"]["uncertified"] == 0 else 1), r.output
    assert (tmp_path / "o.png").is_file() and "characters" in r.output
    assert d["truth"]["source"] == str(page) + ".truth.json" and "read correctly" in r.output
    assert f"certified but wrong {d['counts']['certified_wrong']}" in r.output
    # nothing is certified at a huge budget: --require-certified fails, without it the scan succeeds
    r = runner.invoke(app, args + ["--eps-a", "0.9", "--require-certified"])
    assert r.exit_code == 1 and json.loads((tmp_path / "o.json").read_text())["counts"]["certified"] == 0
    assert runner.invoke(app, args + ["--eps-a", "0.9"]).exit_code == 0
    r = runner.invoke(app, ["scan", str(page), "--run", str(run), "--json", str(tmp_path / "o.txt")])
    assert isinstance(r.exception, sc.ScanError) and "--json must end in .json" in str(r.exception)


def test_console_script_bad_input_is_one_line_exit_2(tmp_path, run, a5ocr_main):
    """Through the console entry point; the real process (``python -m a5ocr.cli.app scan`` on a
    page that is no image) runs in tests/test_cli.py with the other console-script errors."""
    (tmp_path / "x.png").write_text("text")
    code, out, err = a5ocr_main("scan", tmp_path / "x.png", "--run", run)
    assert code == 2 and "not an image" in err and len(err.strip().splitlines()) == 1 and not out
    code, out, err = a5ocr_main("scan", tmp_path / "x.png", "--run", run, "--threads", "0")
    assert code == 2 and err.strip() == "error: --threads must be at least 1" and not out


# --------------------------------------------------------------------------- print scale S > 1


@pytest.fixture(scope="module")
def run_s2(scan_run_s2):
    """A tiny design at print scale 2 made by the real CLI: glyphs 64x64 (print), classifier 32x32
    (sensor) (conftest.SCAN_S2_CLI, made in the background)."""
    return scan_run_s2


@pytest.fixture(scope="module")
def exported_s2(tmp_path_factory, run_s2):
    """``a5ocr export`` of the S = 2 run, once for the module: font f.ttf, PNG sheet s.png (its
    layout s.layout.json) at 150 dpi and the default 10 mm glyphs, png/; (folder, CLI result)."""
    from typer.testing import CliRunner

    from a5ocr.cli.app import app

    out = tmp_path_factory.mktemp("export_s2")
    r = CliRunner().invoke(app, ["export", str(run_s2), "--font", str(out / "f.ttf"), "--sheet",
                                 str(out / "s.png"), "--png-dir", str(out / "png"), "--dpi", "150"])
    return out, r


def test_export_of_a_print_scale_design_draws_the_print(exported_s2, run_s2):
    """`a5ocr export` of an S = 2 run: the font's outlines come from the 64-px print (FreeType at
    the print geometry reproduces it, IoU >= 0.97; at the sensor's 32 px the same geometry would be
    off by a factor 2), PNGs are 64 px, the sheet layout names the sensor's R and S."""
    from a5ocr.export import iou, rasterize_at_design
    from a5ocr.runs import load_design

    d = load_design(run_s2)
    assert (d.resolution, d.print_scale, tuple(d.robust.shape)) == (32, 2, (len(CHARS), 64, 64))
    out, r = exported_s2
    assert r.exit_code == 0, r.output
    assert "8 PNGs (64x64)" in r.output
    ink = rasterize_at_design(out / "f.ttf", d)
    assert ink.shape == d.robust.shape
    got = iou(ink, d.robust)
    assert float(got.min()) >= 0.97, got
    with Image.open(out / "png" / "U+0041.png") as im:
        assert im.size == (64, 64)
    lay = json.loads((out / "s.layout.json").read_text())
    assert (lay["resolution"], lay["print_scale"]) == (32, 2)


def test_the_reader_of_a_print_scale_design_works_on_the_sensor_canvas(tmp_path, run_s2):
    """The reader's prototypes are the print box-filtered 2 x 2 onto the 32-px sensor canvas, its
    geometry in sensor px; a clean page in the source font normalised at the fitted geometry has
    the right em size and gives the sensor prototypes back (IoU >= 0.9)."""
    from a5ocr.export import iou
    from a5ocr.runs import load_design

    d = load_design(run_s2)
    reader = sc.load_reader(run_s2)
    want = torch.nn.functional.avg_pool2d(d.original[:, None].double(), 2)[:, 0].float().numpy()
    assert reader.resolution == 32 and reader.print_scale == 2
    assert np.allclose(reader.tables["original"]["glyphs"], want, atol=1e-6)
    assert reader.units_per_pixel == pytest.approx(2 * d.units_per_pixel) and reader.baseline == pytest.approx(d.baseline / 2)
    size_pt = 2.9 * reader.units_per_em / reader.units_per_pixel * 72 / 300
    _, gray, truth = _page(tmp_path, "ABCD EFGH\nHEAD BAG", clean=True, size_pt=size_pt)
    seg = sc.segment(gray)
    labels = np.array([CHARS.index(c["char"]) for c in truth["chars"]])
    geo, canv, _ = sc.fit_geometry(seg, reader, labels=labels)
    em_px = reader.units_per_em * float(np.median(geo.k)) / reader.units_per_pixel
    assert abs(em_px / (size_pt * 300 / 72) - 1) < 0.03 and geo.table == "original"
    got = iou(torch.from_numpy(canv), torch.from_numpy(want)[torch.from_numpy(labels)])
    assert float(got.min()) >= 0.9 and float(got.mean()) >= 0.93, got


def test_scan_reads_pages_and_sheets_of_a_print_scale_design(tmp_path, run_s2, exported_s2):
    """`a5ocr render-text` in the S = 2 run's exported font, then `a5ocr scan`; and a degraded scan
    of its PNG sheet: both read (>= 90%, the tiny classifier's threshold as above). The font and
    the sheet are those `a5ocr export` wrote (``exported_s2``)."""
    from typer.testing import CliRunner

    from a5ocr.cli.app import app
    from a5ocr.scan.render_text import degrade

    runner = CliRunner()
    exported, done = exported_s2
    assert done.exit_code == 0, done.output
    page = tmp_path / "p.png"
    r = runner.invoke(app, ["render-text", TEXT.replace("\n", "\\n"), "--font", str(exported / "f.ttf"), "--out", str(page),
                            "--size-pt", "20", "--seed", "2"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["scan", str(page), "--run", str(run_s2), "--method", "ibp", "--json", str(tmp_path / "o.json")])
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "o.json").read_text())
    assert d["counts"]["truth_characters"] == len(TEXT.replace(" ", "").replace("\n", "")) and d["accuracy"] >= 0.9, d["text"]
    assert d["glyph_table"] == "robust"
    scanned, _ = degrade(pg.read_page(exported / "s.png"), np.random.default_rng(5))
    pg.write_image(tmp_path / "scan.png", scanned)
    shutil.copy(exported / "s.layout.json", tmp_path / "scan.layout.json")
    res = sc.scan(tmp_path / "scan.png", run_s2, method="ibp")
    assert res.mode == "sheet" and [c.expected for c in res.chars] == list(CHARS) and res.to_dict()["accuracy"] >= 0.75
    lay = json.loads((tmp_path / "scan.layout.json").read_text())
    lay["print_scale"] = 1  # a sheet of another run (same characters, another print scale) is refused
    (tmp_path / "other.json").write_text(json.dumps(lay))
    with pytest.raises(sc.ScanError, match="print scale"):
        sc.scan(tmp_path / "scan.png", run_s2, layout=tmp_path / "other.json")


# --------------------------------------------------------------------------- the acquisition's mean pose


def test_canvases_are_shown_in_the_acquisitions_mean_pose(run):
    """The mean pose of the default camera shrinks the canvas by 1 - 0.99 x 0.25 / 2 about its
    centre, by exact box re-binning: a centred 10-px square becomes exactly an 8-px square at
    scale 0.8, ink mass scales by s^2; the reader of a run takes the scale from its config."""
    from a5ocr.acquisition import AcquisitionConfig
    from a5ocr.scan.reader import classify, mean_pose_scale, pose_canvases

    assert mean_pose_scale(AcquisitionConfig()) == pytest.approx(1 - 0.99 * 0.25 / 2)
    assert mean_pose_scale(AcquisitionConfig(distortion=0.0)) == 1.0
    w = np.zeros((1, 32, 32), np.float32)
    w[0, 11:21, 11:21] = 1.0
    posed = pose_canvases(w, 0.8)
    want = np.zeros_like(w)
    want[0, 12:20, 12:20] = 1.0
    assert np.allclose(posed, want, atol=1e-6)
    blob = np.random.default_rng(0).random((2, 32, 32)).astype(np.float32)
    blob[:, :6], blob[:, -6:], blob[:, :, :6], blob[:, :, -6:] = 0, 0, 0, 0
    assert np.allclose(pose_canvases(blob, 0.876).sum(axis=(1, 2)), 0.876 ** 2 * blob.sum(axis=(1, 2)), rtol=1e-5)
    assert pose_canvases(blob, 1.0) is not None and np.array_equal(pose_canvases(blob, 1.0), blob)
    reader = sc.load_reader(run)
    cfg = json.loads((run / "config.json").read_text())["config"]["acquisition"]
    assert reader.pose_scale == pytest.approx(mean_pose_scale(AcquisitionConfig.from_dict(cfg))) and reader.pose_scale < 1
    probs, x = reader.classify(blob)
    p0, x0 = classify(reader.model, pose_canvases(blob, reader.pose_scale))
    assert np.array_equal(probs, p0) and torch.equal(x, x0)


def test_marks_outside_the_alphabet_are_reported_not_read_as_letters(tmp_path, run, font):
    """`-./:` printed between designed letters (the exported font keeps the source's punctuation):
    each is reported as outside the alphabet (U+FFFD, not certified, the classifier's label kept
    as read_as), the letters are read; an emboldened letter (heavier ink, same height) is not
    reported as outside."""
    from scipy import ndimage

    from a5ocr.scan.reader import OUTSIDE_ERROR, OUTSIDE_MARK, outside_alphabet

    path, _, truth = _page(tmp_path, "BAD-CAFE. HEAD:BEACH/FACE", font=font, seed=4)
    d = sc.scan(path, run, method="ibp").to_dict()
    read = d["characters"]
    punct = [t for t in truth["chars"] if t["char"] not in CHARS]
    assert len(punct) == 4
    for t in truth["chars"]:
        best = max(read, key=lambda c: _iou(c["box"], t["box"]))
        assert _iou(best["box"], t["box"]) > 0.5
        if t["char"] in CHARS:
            assert not best["outside_alphabet"]
        else:
            assert best["outside_alphabet"] and best["label"] == OUTSIDE_MARK and not best["certified"]
            assert best["read_as"] in CHARS and best["radius"] == 0.0
    assert d["counts"]["correct"] >= 0.9 * sum(c in CHARS for c in truth["text"])
    reader = sc.load_reader(run)
    protos = reader.tables["robust"]["glyphs"]
    bold = ndimage.grey_dilation(protos, size=(1, 1, 5))  # strokes 4 px wider: far in ink, not in height
    mask, ink_err, _ = outside_alphabet(bold, np.arange(len(CHARS)), reader.tables["robust"])
    assert not mask.any() and (ink_err > OUTSIDE_ERROR).all()
    dash = np.zeros_like(protos[:1])
    dash[0, 18:21, 10:22] = 1.0
    assert outside_alphabet(dash, np.array([0]), reader.tables["robust"])[0].all()


def test_a_character_much_wider_than_its_class_is_reported_outside():
    """A mark merged into a letter keeps the letter's height but widens it (`/W` read as M on a
    9-pt page). Against a 6 x 20 px bar prototype: a 16-px wide bar (ink error 5/3, width off by
    0.5 of the height) is outside the alphabet; a 9-px bar (a bold print: ink error 0.5, width off
    by 0.15) and the bar itself are not; a 6 x 8 bar (a hyphen's height) is."""
    from a5ocr.scan.ink import ink_extents
    from a5ocr.scan.reader import outside_alphabet

    def bar(width, height=20):
        c = np.zeros((32, 32), np.float32)
        c[6 : 6 + height, 16 - width // 2 : 16 - width // 2 + width] = 1.0
        return c

    proto = bar(6)
    (top, bottom), (left, right) = ink_extents(proto.max(axis=1)), ink_extents(proto.max(axis=0))
    table = {"glyphs": proto[None], "top": np.array([top]), "bottom": np.array([bottom]),
             "left": np.array([left]), "right": np.array([right])}
    canv = np.stack([bar(16), bar(9), proto, bar(6, 8)])
    mask, ink_err, _ = outside_alphabet(canv, np.zeros(4, np.int64), table)
    assert mask.tolist() == [True, False, False, True]
    assert np.allclose(ink_err, [10 * 20 / 120, 3 * 20 / 120, 0.0, 12 * 6 / 120])


def test_a_colon_read_as_i_is_reported_outside_but_a_bold_or_broken_i_is_not():
    """The S = 4 outline design's scans read colons as `i` (55 of 60 certified at 12 pt): the box
    of a colon whose upper dot sits where the i's dot does matches the i's, but the rows of the
    i's stem between the dots are empty. Against a synthetic i (a 4 x 4 dot over a 4 x 14 stem):
    the colon (two 4 x 4 dots, at the dot's rows and the stem's last rows) is outside; the i, a
    bold i (stem 8 px wide: a large ink error, no empty row) and an i whose stem is broken for two
    rows (a degraded print) are not."""
    from a5ocr.scan.ink import ink_extents
    from a5ocr.scan.reader import OUTSIDE_ERROR, outside_alphabet

    def glyph(stem_width=4, stem=True, broken=0, lower_dot=False):
        c = np.zeros((32, 32), np.float32)
        c[6:10, 14:18] = 1.0  # the dot
        if stem:
            c[12:26, 16 - stem_width // 2 : 16 - stem_width // 2 + stem_width] = 1.0
            c[18 : 18 + broken] = 0.0
        if lower_dot:
            c[22:26, 14:18] = 1.0
        return c

    proto = glyph()
    (top, bottom), (left, right) = ink_extents(proto.max(axis=1)), ink_extents(proto.max(axis=0))
    table = {"glyphs": proto[None], "top": np.array([top]), "bottom": np.array([bottom]),
             "left": np.array([left]), "right": np.array([right])}
    colon = glyph(stem=False, lower_dot=True)
    canv = np.stack([colon, proto, glyph(stem_width=8), glyph(broken=2)])
    mask, ink_err, box = outside_alphabet(canv, np.zeros(4, np.int64), table)
    assert mask.tolist() == [True, False, False, False]
    assert ink_err[0] > OUTSIDE_ERROR and ink_err[2] > OUTSIDE_ERROR  # the ink alone does not tell them apart
    rows_box = max(abs(ink_extents(colon.max(axis=1))[0] - top), abs(ink_extents(colon.max(axis=1))[1] - bottom))
    assert rows_box == 0.0  # nor does the box: the gap does
