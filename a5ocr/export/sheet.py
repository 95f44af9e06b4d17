"""Export robust designs: printable sheets, a comparison figure, PNGs and an installable font.

Input: a design run folder (``a5ocr design``) with ``glyphs.safetensors`` (format
``a5ocr-glyphs-1``: "original", "robust" [K, R, R] ink in [0, 1], 1 = ink, and the geometry that
maps canvas pixels to font units; see ``a5ocr.glyphs.GlyphSet``). Every file is written through
``runio.atomic_path`` (temporary file + rename), so a failure leaves no partial file; bad input
raises ``ExportError`` (a ``ValueError``) with a readable message.

Sheet (``export_sheet``)
    A page image rendered with PIL at ``dpi``: each robust glyph's R x R canvas printed as a
    ``glyph_mm`` square, upsampled to device pixels with NEAREST neighbour by default (every
    design pixel becomes a uniform square of its ink level, so box-filtering an aligned scan
    back to R x R gives the design again; ``upsample="bilinear"`` looks smoother), labelled
    below with its character, a header line (family, eps_A, eps_D, ink, chars) and four
    registration discs at known positions. A JSON sidecar (``layout_path(sheet)``) gives the
    paper size, dpi, every glyph box in mm and px and the disc centres, for aligning a scan.
    PDF: written here, not with PIL's PDF writer, because PIL stores grayscale pages as JPEG
    (lossy: it changes the ink levels) and its page size is the pixel size rounded; ours is
    one lossless Flate image per page and the MediaBox is the paper size in points exactly
    (A4 = 595.276 x 841.89 pt), the image stretched onto it (scale error < 0.5 px per page).

Font (``export_font``)
    TrueType (``.ttf``: glyf, quadratic splines used as straight segments only) or CFF
    (``.otf``), built with ``fontTools.fontBuilder``. Outlines are placed in the SOURCE font's
    units with the run's canvas geometry (x = (col - origin_x[k]) * units_per_pixel,
    y = (baseline - row) * units_per_pixel), so each designed glyph sits where the source glyph
    sat; advance widths, ascender/descender and the OS/2 vertical metrics are the source's.
    The hmtx left side bearing is the new outline's xMin (TrueType rasterisers put the origin
    at xMin - lsb, so copying the source's lsb would move every designed glyph sideways).
    Raster -> outline (``outline="auto"``):

    * ``binary`` designs: ``"pixels"``, the exact boundary of the ink pixels (lossless up to
      rounding to integer font units).
    * ``gray`` designs: ``"contour"``, the 0.5 iso-line of the bilinear interpolant of the
      design (pixel values at pixel centres, paper outside the canvas), traced with marching
      squares on a grid ``oversample`` times finer and simplified (tolerance 0.02 px). A font
      outline is monochrome: ink above 0.5 becomes solid, ink below 0.5 disappears, so the
      gray levels are lost (the part of the defence that lives in faint ink or partial
      erasures); edges stay where the design crosses half ink. Measured (comic-neue digits,
      32x32, a short ``cpu``-preset A5/PC run, FreeType rendering at the design geometry): IoU of
      the ink > 0.5 masks 0.969-0.995 per glyph, mean |rendered - design| 0.006; IBP certified
      error on 1000 acquisitions 0.1% vs 0.1% at the design's eps_A 0.1, 10.1% vs 11.1% at 0.2,
      48.0% vs 50.9% at 0.25 (thresholding sharpens the glyphs; it is a different design).
    * ``"halftone"`` (opt-in for gray designs): each pixel becomes a centred square dot of
      area w (side sqrt(w) px), full pixels merged into exact pixel outlines. At the design
      size and pixel grid the box-filtered coverage is the design again (up to rounding to
      integer font units), i.e. an amplitude-modulated screen with the design's pixel pitch;
      the dots are visible when printed large. Same run: IoU 0.985-1.0, mean |diff| 0.0016,
      certified error 11.4% vs 11.1% at eps_A 0.2, 51.4% vs 50.9% at 0.25.

    After writing, the font is re-read with fontTools and every character rendered by FreeType.
    ``rasterize_at_design`` renders any font with the run's exact canvas geometry (the check of
    the round trip; ``a5ocr.glyphs.rasterize`` instead re-derives scale and placement from the
    new outlines' union box, which moves when the design grows or shrinks the ink).

PNGs (``export_pngs``): each robust glyph as ``U+XXXX.png``, black ink on white, R x R (or
``scale`` times larger, nearest).
"""

from __future__ import annotations

import json
import math
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import freetype
import numpy as np
import torch
from fontTools.ttLib import TTFont

from a5ocr import fonts
from a5ocr.errors import ExportError, GlyphError, RunError
from a5ocr.runio import atomic_path
from a5ocr import runs
from a5ocr.runs import Design

SHEET_FORMAT = "a5ocr-sheet-1"
PAPER_MM: dict[str, tuple[float, float]] = {"a4": (210.0, 297.0), "letter": (215.9, 279.4)}
OUTLINE_METHODS = ("auto", "contour", "pixels", "halftone")
MM_PER_INCH = 25.4
PT_PER_INCH = 72.0



def _design(run_dir: Path | str) -> Design:
    """The run's designs (``runs.load_design``), a bad run folder as an ``ExportError``."""
    try:
        return runs.load_design(run_dir)
    except RunError as err:
        raise ExportError(str(err)) from None


def _source_font(design: Design) -> Path:
    """The source font file; falls back to a shipped font of the same file name."""
    path = fonts.shipped_twin(design.font_path)
    if path is None:
        raise ExportError(f"source font of the run not found: {design.font_path}")
    return path


def check_output(path: Path | str, suffixes: tuple[str, ...], what: str) -> Path:
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ExportError(f"{what} must end in {' or '.join(suffixes)}, got {path.name!r}")
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a folder")
    return path


def _ink_u8(w: torch.Tensor | np.ndarray) -> np.ndarray:
    """Ink [.., H, W] in [0, 1] -> 8-bit gray (0 = black ink, 255 = paper)."""
    arr = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
    return np.round((1.0 - np.clip(arr, 0.0, 1.0)) * 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- sheet


def mm_to_px(mm: float, dpi: float) -> float:
    return mm / MM_PER_INCH * dpi


def layout_path(sheet: Path | str) -> Path:
    """The JSON layout sidecar of a sheet: ``sheet.pdf`` -> ``sheet.layout.json``."""
    sheet = Path(sheet)
    return sheet.with_name(sheet.stem + ".layout.json")


def upsample_glyph(w: np.ndarray, size: int, method: str = "nearest") -> np.ndarray:
    """Ink [R, R] -> [size, size] device pixels; nearest: device pixel i shows design pixel floor((i + 0.5) R / size)."""
    r = w.shape[0]
    if method == "nearest":
        idx = np.minimum(((np.arange(size) + 0.5) * r / size).astype(int), r - 1)
        return w[np.ix_(idx, idx)]
    if method == "bilinear":
        from PIL import Image

        img = Image.fromarray(np.asarray(w, np.float32), mode="F").resize((size, size), Image.BILINEAR)
        return np.clip(np.asarray(img), 0.0, 1.0)
    raise ExportError(f"unknown upsampling {method!r} (nearest or bilinear)")


def _text_font(size_px: float, text: str = "", fallback: Path | None = None):
    """A PIL font: the shipped DejaVu Sans, or ``fallback`` (the source font) where DejaVu lacks ``text``."""
    from PIL import ImageFont

    dejavu = fonts.LABEL_FONT
    path = dejavu
    if text and fallback is not None and not fonts.covers(dejavu, text) and fonts.covers(fallback, text):
        path = fallback
    return ImageFont.truetype(str(path), max(6, int(size_px)))


def sheet_layout(k: int, glyph_mm: float, dpi: int, paper: str) -> dict:
    """Where everything goes on the pages (no drawing). Coordinates from the page's top-left, y down.

    Returns a JSON-ready dict: paper_mm, dpi, page_px [W, H], pages, glyph_px, marks (centres,
    same on every page), boxes (per glyph: page, box_px [x0, y0, x1, y1) and box_mm).
    """
    paper = str(paper).lower()
    if paper not in PAPER_MM:
        raise ExportError(f"unknown paper size {paper!r} (one of: {', '.join(PAPER_MM)})")
    if not (isinstance(dpi, int) and 72 <= dpi <= 2400):
        raise ExportError(f"dpi must be an integer in [72, 2400], got {dpi!r}")
    if not (math.isfinite(glyph_mm) and 2.0 <= glyph_mm <= 150.0):
        raise ExportError(f"glyph size must be in [2, 150] mm, got {glyph_mm}")
    pw_mm, ph_mm = PAPER_MM[paper]
    page_px = (int(round(mm_to_px(pw_mm, dpi))), int(round(mm_to_px(ph_mm, dpi))))
    px = lambda mm: mm_to_px(mm, dpi)  # noqa: E731
    mark_inset, mark_d = 10.0, 5.0  # disc centres 10 mm from each edge, 5 mm across
    marks = []
    for name, (mx, my) in {
        "top-left": (mark_inset, mark_inset),
        "top-right": (pw_mm - mark_inset, mark_inset),
        "bottom-left": (mark_inset, ph_mm - mark_inset),
        "bottom-right": (pw_mm - mark_inset, ph_mm - mark_inset),
    }.items():
        marks.append({"name": name, "center_mm": [mx, my], "center_px": [px(mx), px(my)], "diameter_mm": mark_d})
    glyph_px = int(round(px(glyph_mm)))
    if glyph_px < 4:
        raise ExportError(f"{glyph_mm} mm at {dpi} dpi is only {glyph_px} px: raise --dpi or --glyph-mm")
    label_mm = max(2.5, 0.25 * glyph_mm)
    gap_mm = max(3.0, 0.3 * glyph_mm)
    left, right, top, bottom = 18.0, pw_mm - 18.0, 22.0, ph_mm - 18.0
    cell_w, cell_h = glyph_mm + gap_mm, glyph_mm + label_mm + gap_mm
    cols = int((right - left + gap_mm) // cell_w)
    rows = int((bottom - top + gap_mm) // cell_h)
    if cols < 1 or rows < 1:
        raise ExportError(f"a {glyph_mm} mm glyph does not fit on {paper} paper")
    per_page = cols * rows
    # centre the used columns horizontally
    used_cols = min(cols, k)
    x_start = left + ((right - left) - (used_cols * cell_w - gap_mm)) / 2
    boxes = []
    for i in range(k):
        page, j = divmod(i, per_page)
        r, c = divmod(j, cols)
        x0 = int(round(px(x_start + c * cell_w)))
        y0 = int(round(px(top + r * cell_h)))
        box_px = [x0, y0, x0 + glyph_px, y0 + glyph_px]
        boxes.append({
            "index": i, "page": page, "box_px": box_px,
            "box_mm": [v * MM_PER_INCH / dpi for v in box_px],
        })
    return {
        "paper": paper, "paper_mm": [pw_mm, ph_mm], "dpi": dpi, "page_px": list(page_px),
        "pages": (k + per_page - 1) // per_page, "glyph_mm": glyph_mm, "glyph_px": glyph_px,
        "glyph_mm_printed": glyph_px * MM_PER_INCH / dpi, "cell_mm": [cell_w, cell_h], "label_mm": label_mm,
        "marks": marks, "boxes": boxes,
    }


def _render_pages(design: Design, layout: dict, upsample: str) -> list[np.ndarray]:
    """Draw the pages: list of [H, W] uint8 (255 = paper)."""
    from PIL import Image, ImageDraw

    dpi = layout["dpi"]
    w_px, h_px = layout["page_px"]
    px = lambda mm: mm_to_px(mm, dpi)  # noqa: E731
    label_font_px = px(min(3.5, 0.8 * layout["label_mm"]))
    try:
        src = _source_font(design)
    except ExportError:
        src = None
    # Labels name the character and its code point (O, o and 0 look alike in many fonts),
    # in DejaVu Sans, shrunk to fit the cell.
    cell_px = px(layout["cell_mm"][0]) * 0.95
    labels = {}
    for i, c in enumerate(design.chars):
        text = f"{c}  U+{ord(c):04X}"
        size = label_font_px
        font = _text_font(size, text, src)
        while font.getlength(text) > cell_px and size > 6:
            size *= 0.9
            font = _text_font(size, text, src)
        labels[i] = (text, font)
    eps_a = f"{design.eps_a:g}" if design.eps_a is not None else "?"
    header = f"{design.family} A5   eps_A {eps_a}   eps_D {design.eps_d:g}   ink {design.ink}   {design.resolution}x{design.resolution}"
    detail = f"chars: {design.chars}"
    header_font = _text_font(px(3.2))
    small_font = _text_font(px(2.2))
    detail_font = _text_font(px(2.2), design.chars, src)
    robust = design.robust.detach().cpu().numpy()
    pages = []
    for p in range(layout["pages"]):
        img = Image.new("L", (w_px, h_px), 255)
        draw = ImageDraw.Draw(img)
        page_note = f"   page {p + 1}/{layout['pages']}" if layout["pages"] > 1 else ""
        draw.text((px(18), px(7.5)), header + page_note, fill=0, font=header_font)
        draw.text((px(18), px(12.5)), detail, fill=0, font=detail_font)
        draw.text((px(18), h_px - px(12.5)),
                  f"glyph {layout['glyph_mm']:g} mm, {dpi} dpi, {upsample} upsampling; print at 100% (no fit to page)",
                  fill=0, font=small_font)
        arr = np.asarray(img).copy()
        for m in layout["marks"]:
            _draw_disc(arr, *m["center_px"], px(m["diameter_mm"]) / 2)
        for b in layout["boxes"]:
            if b["page"] != p:
                continue
            x0, y0, x1, y1 = b["box_px"]
            big = upsample_glyph(robust[b["index"]], x1 - x0, upsample)
            arr[y0:y1, x0:x1] = _ink_u8(big)
        img = Image.fromarray(arr, mode="L")
        draw = ImageDraw.Draw(img)
        for b in layout["boxes"]:
            if b["page"] != p:
                continue
            x0, y0, x1, y1 = b["box_px"]
            text, font = labels[b["index"]]
            draw.text(((x0 + x1) / 2, y1 + px(0.8)), text, fill=0, font=font, anchor="mt")
            # light corner ticks 1 mm outside the box: show the canvas without touching it
            t, g = px(1.5), px(1.0)
            for cx, cy, sx, sy in ((x0, y0, -1, -1), (x1, y0, 1, -1), (x0, y1, -1, 1), (x1, y1, 1, 1)):
                ex, ey = cx + sx * g, cy + sy * g
                draw.line([(ex, ey), (ex - sx * t, ey)], fill=150, width=max(1, int(px(0.15))))
                draw.line([(ex, ey), (ex, ey - sy * t)], fill=150, width=max(1, int(px(0.15))))
        pages.append(np.asarray(img))
    return pages


def _draw_disc(page: np.ndarray, cx: float, cy: float, r: float, supersample: int = 4) -> None:
    """Paint a black disc (centre in continuous px, pixel (x, y) covers [x, x+1] x [y, y+1]) with
    anti-aliased edges from ``supersample``^2 samples per pixel, so its ink centroid is (cx, cy)."""
    x0, x1 = max(0, int(cx - r) - 1), min(page.shape[1], int(cx + r) + 2)
    y0, y1 = max(0, int(cy - r) - 1), min(page.shape[0], int(cy + r) + 2)
    offs = (np.arange(supersample) + 0.5) / supersample
    xs = (np.arange(x0, x1)[:, None] + offs[None, :]).ravel()
    ys = (np.arange(y0, y1)[:, None] + offs[None, :]).ravel()
    inside = (xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2 <= r * r
    cover = inside.reshape(y1 - y0, supersample, x1 - x0, supersample).mean(axis=(1, 3))
    region = page[y0:y1, x0:x1].astype(np.float64)
    page[y0:y1, x0:x1] = np.round(region * (1.0 - cover)).astype(np.uint8)


def _pdf_bytes(pages: list[np.ndarray], paper_mm: tuple[float, float]) -> bytes:
    """A minimal PDF 1.4: one lossless (Flate) DeviceGray image per page, MediaBox = paper in points."""
    w_pt = paper_mm[0] / MM_PER_INCH * PT_PER_INCH
    h_pt = paper_mm[1] / MM_PER_INCH * PT_PER_INCH
    objs: list[bytes] = []  # object i+1

    def add(body: bytes) -> int:
        objs.append(body)
        return len(objs)

    catalog = add(b"")  # placeholders, filled below
    pages_id = add(b"")
    kids = []
    for arr in pages:
        h, w = arr.shape
        data = zlib.compress(np.ascontiguousarray(arr, np.uint8).tobytes(), 6)
        img_id = add(
            b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceGray "
            b"/BitsPerComponent 8 /Filter /FlateDecode /Length %d >>\nstream\n" % (w, h, len(data)) + data + b"\nendstream"
        )
        content = b"q %.4f 0 0 %.4f 0 0 cm /Im0 Do Q" % (w_pt, h_pt)
        content_id = add(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        page_id = add(
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %.4f %.4f] /Resources << /XObject << /Im0 %d 0 R >> "
            b"/ProcSet [/PDF /ImageB] >> /Contents %d 0 R >>" % (pages_id, w_pt, h_pt, img_id, content_id)
        )
        kids.append(page_id)
    objs[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id
    objs[pages_id - 1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, catalog, xref)
    return bytes(out)


def export_sheet(
    run_dir: Path | str,
    path: Path | str,
    glyph_mm: float = 10.0,
    dpi: int = 600,
    paper: str = "a4",
    upsample: str = "nearest",
) -> dict:
    """A printable sheet of the robust glyphs (``.pdf``, or ``.png`` for a one-page sheet).

    Each glyph's R x R canvas is printed as a ``glyph_mm`` square (``glyph_px`` = round(glyph_mm
    / 25.4 * dpi) device pixels, ``upsample`` = nearest or bilinear). Also writes the layout
    sidecar ``layout_path(path)``; returns the layout dict.
    """
    path = check_output(path, (".pdf", ".png"), "the sheet")
    if upsample not in ("nearest", "bilinear"):
        raise ExportError(f"unknown upsampling {upsample!r} (nearest or bilinear)")
    layout = sheet_layout(1, glyph_mm, dpi, paper)  # validates the options before any reading
    design = _design(run_dir)
    layout = sheet_layout(len(design.chars), glyph_mm, dpi, paper)
    is_pdf = path.suffix.lower() == ".pdf"
    if not is_pdf and layout["pages"] > 1:
        raise ExportError(f"{len(design.chars)} glyphs of {glyph_mm:g} mm need {layout['pages']} pages: write a .pdf or use a smaller --glyph-mm")
    for b in layout["boxes"]:
        b["char"] = design.chars[b["index"]]
        b["codepoint"] = f"U+{ord(b['char']):04X}"
    layout = {
        "format": SHEET_FORMAT, "sheet": path.name, "run_dir": str(design.run_dir), "family": design.family,
        "chars": design.chars, "resolution": design.resolution, "eps_a": design.eps_a, "eps_d": design.eps_d,
        "ink": design.ink, "upsample": upsample, **layout,
        "units": "mm and px from the page's top-left corner, y down; box_px = [x0, y0, x1, y1) in device pixels at dpi",
    }
    pages = _render_pages(design, layout, upsample)
    with ExitStack() as stack:
        tmp_sheet = stack.enter_context(atomic_path(path))
        tmp_layout = stack.enter_context(atomic_path(layout_path(path)))
        if is_pdf:
            tmp_sheet.write_bytes(_pdf_bytes(pages, tuple(layout["paper_mm"])))
        else:
            from PIL import Image

            Image.fromarray(pages[0], mode="L").save(tmp_sheet, format="PNG", dpi=(dpi, dpi))
        tmp_layout.write_text(json.dumps(layout, indent=2) + "\n")
    return layout


# --------------------------------------------------------------------------- figure, PNGs


def comparison_figure(run_dir: Path | str, path: Path | str, scale: int = 4) -> Path:
    """The paper's Fig. 4 for a run: robust, original and difference rows (``figures.glyph_sheet``)."""
    from a5ocr.figures import glyph_sheet

    path = check_output(path, (".png",), "the figure")
    if not 1 <= int(scale) <= 32:
        raise ExportError("figure scale must be in [1, 32]")
    design = _design(run_dir)
    glyph_sheet(design.original, design.robust, path, scale=int(scale))
    return path


def export_pngs(run_dir: Path | str, out_dir: Path | str, scale: int = 1) -> list[Path]:
    """Each robust glyph as ``out_dir/U+XXXX.png`` (R*scale square, black ink on white, nearest)."""
    from PIL import Image

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"cannot write PNGs into {out_dir}: it is a file")
    if not out_dir.parent.is_dir():
        raise ExportError(f"cannot write PNGs into {out_dir}: folder {out_dir.parent} does not exist")
    if not 1 <= int(scale) <= 64:
        raise ExportError("PNG scale must be in [1, 64]")
    design = _design(run_dir)
    images = []
    for c, w in zip(design.chars, design.robust):
        img = Image.fromarray(_ink_u8(w), mode="L")
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        images.append((out_dir / f"U+{ord(c):04X}.png", img))
    out_dir.mkdir(exist_ok=True)
    written = []
    for p, img in images:
        with atomic_path(p) as tmp:
            img.save(tmp, format="PNG")
        written.append(p)
    return written


# --------------------------------------------------------------------------- outlines


def glyph_loops(design: Design, k: int, method: str = "auto", oversample: int = 8) -> list[np.ndarray]:
    """Closed outline loops of robust glyph k in canvas coordinates (u, v), [n, 2] each.

    Orientation: ink on the right once y points up (TrueType: outer clockwise). ``method``:
    auto (pixels for binary designs, contour for gray), contour, pixels or halftone.
    """
    from a5ocr.export import outline

    method = resolve_outline_method(design, method)
    w = design.robust[k].detach().cpu().numpy().astype(np.float64)
    if method == "pixels":
        return outline.trace_pixels(w > 0.5)
    if method == "contour":
        f, x0, step = outline.bilinear_upsample(w, oversample)
        return [outline.simplify(x0 + loop * step, 0.02) for loop in outline.trace_level(f, 0.5)]
    # halftone: merged full pixels + one square dot of area w per partial pixel
    full = w >= 1.0 - 0.5 / 255.0
    loops = outline.trace_pixels(full)
    rows, cols = np.nonzero(~full & (w > 0.5 / 255.0))
    for r, c in zip(rows, cols):
        h = 0.5 * math.sqrt(float(w[r, c]))
        cx, cy = c + 0.5, r + 0.5
        # clockwise with y up == in image coords (y down): left-top, left-bottom... see outline._orient
        loops.append(np.array([[cx - h, cy - h], [cx + h, cy - h], [cx + h, cy + h], [cx - h, cy + h]]))
    return loops


def resolve_outline_method(design: Design, method: str) -> str:
    if method not in OUTLINE_METHODS:
        raise ExportError(f"unknown outline method {method!r} (one of: {', '.join(OUTLINE_METHODS)})")
    if method == "auto":
        return "pixels" if design.ink == "binary" else "contour"
    return method


def _font_loops(design: Design, k: int, method: str, oversample: int) -> list[list[tuple[int, int]]]:
    """Loops of glyph k in integer font units (y up), simplified; degenerate loops dropped."""
    from a5ocr.export.outline import signed_area, simplify

    out = []
    for loop in glyph_loops(design, k, method, oversample):
        pts = np.round(design.to_font_units(k, loop))
        pts = simplify(pts, 0.0)
        if len(pts) < 3 or abs(signed_area(pts)) < 1.0:
            continue
        out.append([(int(x), int(y)) for x, y in pts])
    return out


def _draw(pen, loops: list[list[tuple[int, int]]], reverse: bool = False) -> None:
    """Draw closed polygons with the pen protocol (moveTo / lineTo / closePath)."""
    for loop in loops:
        pts = loop[::-1] if reverse else loop
        pen.moveTo(pts[0])
        for p in pts[1:]:
            pen.lineTo(p)
        pen.closePath()


def _notdef_loops(upem: int, ascent: int) -> list[list[tuple[int, int]]]:
    w, h, t = upem // 2, int(0.7 * ascent) or upem // 2, max(1, upem // 20)
    x0 = upem // 20
    outer = [(x0, 0), (x0, h), (x0 + w - 2 * x0, h), (x0 + w - 2 * x0, 0)]  # clockwise (y up)
    inner = [(x0 + t, t), (x0 + w - 2 * x0 - t, t), (x0 + w - 2 * x0 - t, h - t), (x0 + t, h - t)]
    return [outer, inner]


def _source_info(path: Path, chars: str) -> dict:
    """Metrics and names of the source font needed by the export (read with fontTools)."""
    try:
        with fonts.open_font(path, "the source font") as f:
            cmap = f.getBestCmap() or {}
            missing = [c for c in chars if ord(c) not in cmap]
            if missing:
                raise ExportError(f"source font {path.name} lacks {''.join(missing)!r}")
            return _font_info(f, cmap, chars, path)
    except GlyphError as err:
        raise ExportError(str(err)) from None


def _font_info(f, cmap: dict, chars: str, path: Path) -> dict:
    hmtx = f["hmtx"]
    adv = {c: int(hmtx[cmap[ord(c)]][0]) for c in chars}
    upem = int(f["head"].unitsPerEm)
    space = int(hmtx[cmap[32]][0]) if 32 in cmap else upem // 4
    hhea = f["hhea"]
    info = {
        "upem": upem, "advance": adv, "space": space,
        "ascent": int(hhea.ascent), "descent": int(hhea.descent), "lineGap": int(hhea.lineGap),
        "names": {},
    }
    if "OS/2" in f:
        os2 = f["OS/2"]
        info["os2"] = {k: getattr(os2, k) for k in (
            "sTypoAscender", "sTypoDescender", "sTypoLineGap", "usWinAscent", "usWinDescent",
            "usWeightClass", "usWidthClass", "fsType", "sxHeight", "sCapHeight") if hasattr(os2, k)}
    if "post" in f:
        info["post"] = {"underlinePosition": int(f["post"].underlinePosition),
                        "underlineThickness": int(f["post"].underlineThickness)}
    name = f["name"]
    for nid in (0, 13, 14):
        text = name.getDebugName(nid)
        if text:
            info["names"][nid] = text
    info["family"] = fonts.family_name(f, path.stem)
    return info


def _glyph_name(c: str) -> str:
    from fontTools.agl import UV2AGL

    cp = ord(c)
    return UV2AGL.get(cp, f"uni{cp:04X}" if cp <= 0xFFFF else f"u{cp:05X}")


def export_font(
    run_dir: Path | str,
    path: Path | str,
    outline: str = "auto",
    oversample: int = 8,
    family: str | None = None,
) -> dict:
    """An installable font (``.ttf`` or ``.otf``) whose glyphs are the robust designs.

    Family name "<source family> A5" unless ``family`` is given. Returns a summary dict
    (path, family, method, glyphs, contours, points). The written file is re-read with fontTools
    and every character rendered by FreeType before it replaces ``path``.
    """
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.t2CharStringPen import T2CharStringPen
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    path = check_output(path, (".ttf", ".otf"), "the font")
    if not 1 <= int(oversample) <= 32:
        raise ExportError("outline oversampling must be in [1, 32]")
    design = _design(run_dir)
    method = resolve_outline_method(design, outline)
    src_path = _source_font(design)
    src = _source_info(src_path, design.chars)
    if src["upem"] != design.units_per_em:
        raise ExportError(f"source font {src_path} has {src['upem']} units per em, the run says {design.units_per_em}")
    is_ttf = path.suffix.lower() == ".ttf"
    family = family or f"{src['family']} A5"
    style = "Regular"
    ps_name = "".join(ch for ch in f"{family}-{style}" if ch.isalnum() or ch == "-")[:63]

    names = [".notdef", "space"] + [_glyph_name(c) for c in design.chars]
    loops: dict[str, list] = {".notdef": _notdef_loops(src["upem"], src["ascent"]), "space": []}
    advance = {".notdef": src["upem"] // 2, "space": src["space"]}
    for k, c in enumerate(design.chars):
        loops[names[k + 2]] = _font_loops(design, k, method, int(oversample))
        advance[names[k + 2]] = src["advance"][c]
    lsb = {n: (min(x for lp in loops[n] for x, _ in lp) if loops[n] else 0) for n in names}

    fb = FontBuilder(src["upem"], isTTF=is_ttf)
    fb.setupGlyphOrder(names)
    fb.setupCharacterMap({32: "space", **{ord(c): names[k + 2] for k, c in enumerate(design.chars)}})
    if is_ttf:
        glyphs = {}
        for n in names:
            pen = TTGlyphPen(None)
            _draw(pen, loops[n])
            glyphs[n] = pen.glyph()
        fb.setupGlyf(glyphs)
    else:
        charstrings = {}
        for n in names:
            pen = T2CharStringPen(advance[n], None)
            _draw(pen, loops[n], reverse=True)  # CFF: outer contours counter-clockwise
            charstrings[n] = pen.getCharString()
        fb.setupCFF(ps_name, {"FullName": f"{family} {style}", "FamilyName": family, "Weight": style}, charstrings, {})
    fb.setupHorizontalMetrics({n: (advance[n], lsb[n]) for n in names})
    fb.setupHorizontalHeader(ascent=src["ascent"], descent=src["descent"], lineGap=src["lineGap"])
    eps_a = f"{design.eps_a:g}" if design.eps_a is not None else "?"
    note = (f"Certifiably robust glyphs (A5, Frosio & Kautz CVPR 2023) designed by a5ocr from {src['family']}: "
            f"eps_A {eps_a}, eps_D {design.eps_d:g}, ink {design.ink}, {design.resolution}x{design.resolution}, "
            f"outline {method}. Only the characters {design.chars!r} and space.")
    name_strings = {
        "familyName": family, "styleName": style, "fullName": f"{family} {style}", "psName": ps_name,
        "uniqueFontIdentifier": f"a5ocr: {family} {style}", "version": "Version 1.000", "description": note,
    }
    copyright_ = src["names"].get(0)
    name_strings["copyright"] = (copyright_ + "\n" if copyright_ else "") + "Modified with a5ocr (robust glyph designs)."
    if 13 in src["names"]:
        name_strings["licenseDescription"] = src["names"][13]
    if 14 in src["names"]:
        name_strings["licenseInfoURL"] = src["names"][14]
    fb.setupNameTable(name_strings)
    os2 = {"sTypoAscender": src["ascent"], "sTypoDescender": src["descent"], "sTypoLineGap": src["lineGap"],
           "usWinAscent": src["ascent"], "usWinDescent": abs(src["descent"]), "fsType": 0}
    os2.update(src.get("os2", {}))
    os2.update({"achVendID": "NONE", "fsSelection": 0x40})
    fb.setupOS2(**os2)
    fb.setupPost(keepGlyphNames=is_ttf, **src.get("post", {}))

    with atomic_path(path) as tmp:
        fb.save(str(tmp))
        _verify_font(tmp, design.chars)
    contours = sum(len(loops[n]) for n in names[2:])
    points = sum(len(lp) for n in names[2:] for lp in loops[n])
    return {"path": str(path), "family": family, "method": method, "glyphs": len(names), "contours": contours, "points": points}


def _verify_font(path: Path, chars: str) -> None:
    """Re-read a written font with fontTools and render every character with FreeType."""
    try:
        with TTFont(str(path)) as f:
            for tag in f.keys():
                f[tag]  # decompile every table
            cmap = f.getBestCmap()
        missing = [c for c in chars if ord(c) not in cmap]
        if missing:
            raise ExportError(f"written font lacks {''.join(missing)!r}")
        face = freetype.Face(str(path))
        face.set_pixel_sizes(0, 64)
        for c in chars:
            face.load_char(c, freetype.FT_LOAD_RENDER | freetype.FT_LOAD_NO_HINTING)
    except ExportError:
        raise
    except Exception as err:  # any failure here means a broken font: no file is left
        raise ExportError(f"the written font does not read back: {err}") from None


# --------------------------------------------------------------------------- round trip


def rasterize_at_design(font_path: Path | str, design: Design, oversample: int = 4) -> torch.Tensor:
    """Render ``design.chars`` of a font with FreeType at the run's exact canvas geometry -> [K, R, R] ink.

    The origin of glyph k is placed at canvas (origin_x[k], baseline) and one canvas pixel is
    ``units_per_pixel`` font units; each pixel is the ink coverage (FreeType anti-aliasing at
    ``oversample`` x the resolution, box-filtered), as in ``a5ocr.glyphs.rasterize``.
    """
    r = design.resolution
    big = r * oversample
    try:
        face = fonts.open_face(font_path)
    except GlyphError as err:
        raise ExportError(str(err)) from None
    upem = face.units_per_EM
    face.set_char_size(upem * 64)  # 1 px per font unit
    scale = oversample / design.units_per_pixel  # oversampled px per font unit
    s16 = int(round(scale * 65536))
    matrix = freetype.Matrix(s16, 0, 0, s16)
    out = np.zeros((len(design.chars), r, r), np.float32)
    for k, c in enumerate(design.chars):
        ox, oy = design.origin_x[k] * oversample, design.baseline * oversample
        ix, iy = math.floor(ox), math.ceil(oy)
        dx, dy = int(round((ox - ix) * 64)), int(round((iy - oy) * 64))
        face.set_transform(matrix, freetype.Vector(dx, dy))
        face.load_char(c, freetype.FT_LOAD_RENDER | freetype.FT_LOAD_NO_HINTING)
        cov, left, top = fonts.bitmap(face.glyph)
        if cov.size == 0:
            continue
        x0, y0 = ix + left, iy - top
        h, w = cov.shape
        canvas = np.zeros((big, big), np.float32)
        ys, xs, ye, xe = max(0, y0), max(0, x0), min(big, y0 + h), min(big, x0 + w)
        if ye > ys and xe > xs:
            canvas[ys:ye, xs:xe] = cov[ys - y0 : ye - y0, xs - x0 : xe - x0]
        out[k] = canvas.reshape(r, oversample, r, oversample).mean(axis=(1, 3))
    return torch.from_numpy(np.clip(out, 0.0, 1.0))


def iou(a: torch.Tensor, b: torch.Tensor, level: float = 0.5) -> torch.Tensor:
    """Per-glyph IoU of the ink masks ``a > level`` and ``b > level``; a, b: [K, R, R] -> [K] (1 where both empty)."""
    ma, mb = a > level, b > level
    inter = (ma & mb).flatten(1).sum(1).float()
    union = (ma | mb).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
