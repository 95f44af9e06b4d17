"""Printable sheets of the robust glyphs (``export_sheet``) and their layout sidecar.

A ``.pdf`` sheet is vector (``a5ocr.export.pdf``, reportlab): each robust glyph filled from the
font's outline (``font.designed_glyph``, ``outline`` as for ``--font``) in its ``glyph_mm``
square, exact at any printer resolution, with the same labels, header and registration discs.
A ``.png`` sheet is a page image rendered with PIL at ``dpi``: each robust glyph's canvas (the
print, S*R x S*R pixels; R x R at S = 1) printed as a ``glyph_mm`` square, upsampled to device pixels with NEAREST neighbour by default (every design
pixel becomes a uniform square of its ink level, so box-filtering an aligned scan back to R x R
gives the design again, and to the sensor's R x R its S x S box filter; ``upsample="bilinear"``
looks smoother), labelled below with its
character, a header line (family, eps_A, eps_D, ink, chars) and four registration discs at known
positions. A JSON sidecar (``layout_path(sheet)``, format ``SHEET_FORMAT``) gives the paper size,
dpi, every glyph box in mm and px (px at ``dpi``, also for a PDF), the disc centres, for
aligning a scan (``a5ocr.scan``), and the canvas: ``resolution`` (the sensor's R, what the scan
samples each box to) and ``print_scale`` S.
"""

from __future__ import annotations

import json
import math
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fontTools.misc.transform import Transform

from a5ocr import fonts
from a5ocr.errors import ExportError
from a5ocr.export.common import MM_PER_INCH, canvas_text, check_output, ink_u8, load_design, mm_to_px, source_font
from a5ocr.export.font import designed_glyph, resolve_outline_method
from a5ocr.export.pdf import label_covers, write_sheet_pdf
from a5ocr.runio import atomic_path
from a5ocr.runs import Design

SHEET_FORMAT = "a5ocr-sheet-1"
PAPER_MM: dict[str, tuple[float, float]] = {"a4": (210.0, 297.0), "letter": (215.9, 279.4)}


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
        img = Image.fromarray(np.asarray(w, np.float32), mode="F").resize((size, size), Image.BILINEAR)
        return np.clip(np.asarray(img), 0.0, 1.0)
    raise ExportError(f"unknown upsampling {method!r} (nearest or bilinear)")


# --------------------------------------------------------------------------- layout


def _check_sheet_options(glyph_mm: float, dpi: int, paper: str) -> None:
    if paper not in PAPER_MM:
        raise ExportError(f"unknown paper size {paper!r} (one of: {', '.join(PAPER_MM)})")
    if not (isinstance(dpi, int) and 72 <= dpi <= 2400):
        raise ExportError(f"dpi must be an integer in [72, 2400], got {dpi!r}")
    if not (math.isfinite(glyph_mm) and 2.0 <= glyph_mm <= 150.0):
        raise ExportError(f"glyph size must be in [2, 150] mm, got {glyph_mm}")


def _marks(pw_mm: float, ph_mm: float, dpi: int) -> list[dict]:
    """The four registration discs: centres 10 mm from each edge, 5 mm across."""
    mark_inset, mark_d = 10.0, 5.0
    marks = []
    for name, (mx, my) in {
        "top-left": (mark_inset, mark_inset),
        "top-right": (pw_mm - mark_inset, mark_inset),
        "bottom-left": (mark_inset, ph_mm - mark_inset),
        "bottom-right": (pw_mm - mark_inset, ph_mm - mark_inset),
    }.items():
        marks.append({"name": name, "center_mm": [mx, my], "center_px": [mm_to_px(mx, dpi), mm_to_px(my, dpi)],
                      "diameter_mm": mark_d})
    return marks


def sheet_layout(k: int, glyph_mm: float, dpi: int, paper: str) -> dict:
    """Where everything goes on the pages (no drawing). Coordinates from the page's top-left, y down.

    Returns a JSON-ready dict: paper_mm, dpi, page_px [W, H], pages, glyph_px, marks (centres,
    same on every page), boxes (per glyph: page, box_px [x0, y0, x1, y1) and box_mm).
    """
    paper = str(paper).lower()
    _check_sheet_options(glyph_mm, dpi, paper)
    pw_mm, ph_mm = PAPER_MM[paper]
    page_px = (int(round(mm_to_px(pw_mm, dpi))), int(round(mm_to_px(ph_mm, dpi))))
    px = lambda mm: mm_to_px(mm, dpi)  # noqa: E731
    marks = _marks(pw_mm, ph_mm, dpi)
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


# --------------------------------------------------------------------------- drawing


def _text_font(size_px: float, text: str = "", fallback: Path | None = None):
    """A PIL font: the shipped DejaVu Sans, or ``fallback`` (the source font) where DejaVu lacks ``text``."""
    dejavu = fonts.LABEL_FONT
    path = dejavu
    if text and fallback is not None and not fonts.covers(dejavu, text) and fonts.covers(fallback, text):
        path = fallback
    return ImageFont.truetype(str(path), max(6, int(size_px)))


def _labels(design: Design, layout: dict, src: Path | None) -> dict:
    """Per glyph index: (label text, PIL font). Labels name the character and its code point (O, o
    and 0 look alike in many fonts), in DejaVu Sans, shrunk to fit the cell."""
    px = lambda mm: mm_to_px(mm, layout["dpi"])  # noqa: E731
    label_font_px = px(min(3.5, 0.8 * layout["label_mm"]))
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
    return labels


def _header_text(design: Design, layout: dict, p: int) -> str:
    """The header line of page p: family, budgets, ink, resolution (and the page number)."""
    eps_a = f"{design.eps_a:g}" if design.eps_a is not None else "?"
    header = f"{design.family} A5   eps_A {eps_a}   eps_D {design.eps_d:g}   ink {design.ink}   {canvas_text(design)}"
    return header + (f"   page {p + 1}/{layout['pages']}" if layout["pages"] > 1 else "")


def _draw_header(img: Image.Image, design: Design, layout: dict, p: int, upsample: str, src: Path | None) -> None:
    """The header (family, budgets, ink, resolution; the characters) and the printing note at the foot."""
    dpi = layout["dpi"]
    px = lambda mm: mm_to_px(mm, dpi)  # noqa: E731
    detail = f"chars: {design.chars}"
    header_font = _text_font(px(3.2))
    small_font = _text_font(px(2.2))
    detail_font = _text_font(px(2.2), design.chars, src)
    draw = ImageDraw.Draw(img)
    draw.text((px(18), px(7.5)), _header_text(design, layout, p), fill=0, font=header_font)
    draw.text((px(18), px(12.5)), detail, fill=0, font=detail_font)
    draw.text((px(18), img.height - px(12.5)),
              f"glyph {layout['glyph_mm']:g} mm, {dpi} dpi, {upsample} upsampling; print at 100% (no fit to page)",
              fill=0, font=small_font)


def _draw_labels_and_ticks(img: Image.Image, layout: dict, p: int, labels: dict) -> None:
    px = lambda mm: mm_to_px(mm, layout["dpi"])  # noqa: E731
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


def _render_pages(design: Design, layout: dict, upsample: str) -> list[np.ndarray]:
    """Draw the pages: list of [H, W] uint8 (255 = paper)."""
    w_px, h_px = layout["page_px"]
    try:
        src = source_font(design)
    except ExportError:
        src = None
    labels = _labels(design, layout, src)
    robust = design.robust.detach().cpu().numpy()
    pages = []
    for p in range(layout["pages"]):
        img = Image.new("L", (w_px, h_px), 255)
        _draw_header(img, design, layout, p, upsample, src)
        arr = np.asarray(img).copy()
        for m in layout["marks"]:
            _draw_disc(arr, *m["center_px"], mm_to_px(m["diameter_mm"], layout["dpi"]) / 2)
        for b in layout["boxes"]:
            if b["page"] != p:
                continue
            x0, y0, x1, y1 = b["box_px"]
            big = upsample_glyph(robust[b["index"]], x1 - x0, upsample)
            arr[y0:y1, x0:x1] = ink_u8(big)
        img = Image.fromarray(arr, mode="L")
        _draw_labels_and_ticks(img, layout, p, labels)
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


# --------------------------------------------------------------------------- export


def export_sheet(
    run_dir: Path | str,
    path: Path | str,
    glyph_mm: float = 10.0,
    dpi: int = 600,
    paper: str = "a4",
    upsample: str = "nearest",
    outline: str = "auto",
) -> dict:
    """A printable sheet of the robust glyphs (``.pdf``, or ``.png`` for a one-page sheet).

    Each glyph's R x R canvas is printed as a ``glyph_mm`` square: in a PDF as the vector outline
    ``outline`` (as the font's), in a PNG as ``glyph_px`` = round(glyph_mm / 25.4 * dpi) device
    pixels (``upsample`` = nearest or bilinear). Also writes the layout sidecar
    ``layout_path(path)``; returns the layout dict.
    """
    path = check_output(path, (".pdf", ".png"), "the sheet")
    if upsample not in ("nearest", "bilinear"):
        raise ExportError(f"unknown upsampling {upsample!r} (nearest or bilinear)")
    layout = sheet_layout(1, glyph_mm, dpi, paper)  # validates the options before any reading
    design = load_design(run_dir)
    layout = sheet_layout(len(design.chars), glyph_mm, dpi, paper)
    is_pdf = path.suffix.lower() == ".pdf"
    if not is_pdf and layout["pages"] > 1:
        raise ExportError(f"{len(design.chars)} glyphs of {glyph_mm:g} mm need {layout['pages']} pages: write a .pdf or use a smaller --glyph-mm")
    method = resolve_outline_method(design, outline)
    layout = _sidecar(design, layout, path, "vector" if is_pdf else upsample)
    if is_pdf:
        layout["outline"] = method
    pages = None if is_pdf else _render_pages(design, layout, upsample)
    with ExitStack() as stack:
        tmp_sheet = stack.enter_context(atomic_path(path))
        tmp_layout = stack.enter_context(atomic_path(layout_path(path)))
        if is_pdf:
            write_sheet_pdf(tmp_sheet, layout, _vector_glyphs(design, method), _pdf_texts(design, layout, method))
        else:
            Image.fromarray(pages[0], mode="L").save(tmp_sheet, format="PNG", dpi=(dpi, dpi))
        tmp_layout.write_text(json.dumps(layout, indent=2) + "\n")
    return layout


def _vector_glyphs(design: Design, method: str) -> list[tuple]:
    """Per glyph: its outline in font units (the font's) and the transform font units -> canvas px."""
    out = []
    for k in range(len(design.chars)):
        upp = design.units_per_pixel
        to_canvas = Transform(1 / upp, 0, 0, -1 / upp, design.origin_x[k], design.baseline)
        out.append((designed_glyph(design, k, method), to_canvas))
    return out


def _pdf_texts(design: Design, layout: dict, method: str) -> dict:
    """The PDF's header per page, detail and foot lines and glyph labels (code point only where DejaVu lacks the character)."""
    labels = [f"{c}  U+{ord(c):04X}" if label_covers(c) else f"U+{ord(c):04X}" for c in design.chars]
    chars = design.chars if label_covers(design.chars) else "".join(c if label_covers(c) else "?" for c in design.chars)
    return {
        "header": [_header_text(design, layout, p) for p in range(layout["pages"])],
        "detail": f"chars: {chars}", "labels": labels, "resolution": design.print_resolution,
        "footer": f"glyph {layout['glyph_mm']:g} mm, vector outlines ({method}); print at 100% (no fit to page)",
    }


def _sidecar(design: Design, layout: dict, path: Path, upsample: str) -> dict:
    """The layout sidecar's content: the run's description, then the layout, each box with its character."""
    for b in layout["boxes"]:
        b["char"] = design.chars[b["index"]]
        b["codepoint"] = f"U+{ord(b['char']):04X}"
    return {
        "format": SHEET_FORMAT, "sheet": path.name, "run_dir": str(design.run_dir), "family": design.family,
        "chars": design.chars, "resolution": design.resolution, "print_scale": design.print_scale,
        "eps_a": design.eps_a, "eps_d": design.eps_d,
        "ink": design.ink, "upsample": upsample, **layout,
        "units": "mm and px from the page's top-left corner, y down; box_px = [x0, y0, x1, y1) in device pixels at dpi",
    }
