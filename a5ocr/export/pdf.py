"""The PDF sheet, drawn with reportlab: glyphs as vector outlines, exact at any printer resolution.

Each page is the paper size in points exactly (A4 = 595.276 x 841.89 pt). Every robust glyph is
filled from its outline (the font's: ``font.designed_glyph``, drawn through fontTools'
``ReportLabPen``, so TrueType quadratics become the exact cubics a PDF holds), mapped from the
glyph's canvas onto its layout box; registration discs, corner ticks, labels and the header are
vector too (text in the shipped DejaVu Sans, embedded). The layout (``sheet.sheet_layout``) is in
mm from the page's top-left corner, y down; PDF user space is in points from the bottom-left, y up.
reportlab runs with ``invariant=1``: the same design writes the same bytes (no date, no random id).
"""

from __future__ import annotations

from pathlib import Path

from fontTools.misc.transform import Transform
from fontTools.pens.recordingPen import RecordingPen
from fontTools.pens.reportLabPen import ReportLabPen
from fontTools.pens.transformPen import TransformPen
from reportlab.graphics import renderPDF
from reportlab.graphics.shapes import Drawing
from reportlab.lib import colors
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont as ReportLabTTFont
from reportlab.pdfgen import canvas as rl_canvas

from a5ocr import fonts
from a5ocr.export.common import MM_PER_INCH, PT_PER_INCH

LABEL_FONT = "DejaVuSans"
PT_PER_MM = PT_PER_INCH / MM_PER_INCH


def _register_label_font() -> None:
    if LABEL_FONT not in pdfmetrics.getRegisteredFontNames():
        pdfmetrics.registerFont(ReportLabTTFont(LABEL_FONT, str(fonts.LABEL_FONT)))


def label_covers(text: str) -> bool:
    """Whether the embedded label font (DejaVu Sans) has every character of ``text``."""
    return fonts.covers(fonts.LABEL_FONT, text)


def write_sheet_pdf(path: Path | str, layout: dict, glyphs: list[tuple[RecordingPen, Transform]], texts: dict) -> None:
    """Write the sheet's pages to ``path``.

    ``glyphs[i]``: glyph i's outline (pen calls) and the transform from its coordinates to the
    glyph's canvas px (u right, v down, [0, N], N = texts["resolution"]); ``texts``: "header" (list per page), "detail",
    "footer", "labels" (per glyph), "resolution" (the canvas px the transforms map to: the print's S*R).
    """
    _register_label_font()
    w_mm, h_mm = layout["paper_mm"]
    c = rl_canvas.Canvas(str(path), pagesize=(w_mm * PT_PER_MM, h_mm * PT_PER_MM), invariant=1, pageCompression=1)
    c.setTitle(texts["header"][0])
    c.setAuthor("a5ocr")
    c.setCreator("a5ocr export (reportlab)")
    for p in range(layout["pages"]):
        _header(c, layout, texts, p)
        _marks(c, layout)
        boxes = [b for b in layout["boxes"] if b["page"] == p]
        _glyphs(c, layout, boxes, glyphs, int(texts["resolution"]))
        _labels_and_ticks(c, layout, boxes, texts["labels"])
        c.showPage()
    c.save()


def _y(layout: dict, y_mm: float) -> float:
    """Page y in points (from the bottom) of a layout y in mm (from the top)."""
    return (layout["paper_mm"][1] - y_mm) * PT_PER_MM


def _header(c, layout: dict, texts: dict, p: int) -> None:
    c.setFillColor(colors.black)
    c.setFont(LABEL_FONT, 3.2 * PT_PER_MM)
    c.drawString(18 * PT_PER_MM, _y(layout, 7.5 + 3.2 * 0.8), texts["header"][p])
    c.setFont(LABEL_FONT, 2.2 * PT_PER_MM)
    c.drawString(18 * PT_PER_MM, _y(layout, 12.5 + 2.2 * 0.8), texts["detail"])
    c.drawString(18 * PT_PER_MM, _y(layout, layout["paper_mm"][1] - 12.5 + 2.2 * 0.8), texts["footer"])


def _marks(c, layout: dict) -> None:
    """The registration discs: filled black circles at the layout's centres."""
    c.setFillColor(colors.black)
    for m in layout["marks"]:
        x_mm, y_mm = m["center_mm"]
        c.circle(x_mm * PT_PER_MM, _y(layout, y_mm), m["diameter_mm"] / 2 * PT_PER_MM, stroke=0, fill=1)


def _glyphs(c, layout: dict, boxes: list[dict], glyphs: list, r: int) -> None:
    """Fill each glyph's outline, mapped from its canvas onto its box (nonzero winding)."""
    w_mm, h_mm = layout["paper_mm"]
    drawing = Drawing(w_mm * PT_PER_MM, h_mm * PT_PER_MM)
    for b in boxes:
        rec, to_canvas = glyphs[b["index"]]
        x0, y0, x1, y1 = b["box_mm"]
        s = (x1 - x0) / r * PT_PER_MM  # points per canvas px
        to_page = Transform(s, 0, 0, -s, x0 * PT_PER_MM, _y(layout, y0))
        pen = ReportLabPen(None)
        rec.replay(TransformPen(pen, to_page.transform(to_canvas)))
        pen.path.fillColor, pen.path.strokeColor, pen.path.strokeWidth = colors.black, None, 0
        pen.path.fillMode = rl_canvas.FILL_NON_ZERO
        drawing.add(pen.path)
    renderPDF.draw(drawing, c, 0, 0)


def _labels_and_ticks(c, layout: dict, boxes: list[dict], labels: list[str]) -> None:
    """Each glyph's label below its box (shrunk to its cell) and light corner ticks 1 mm outside the box."""
    cell_pt = layout["cell_mm"][0] * 0.95 * PT_PER_MM
    size0 = min(3.5, 0.8 * layout["label_mm"]) * PT_PER_MM
    c.setLineWidth(0.15 * PT_PER_MM)
    c.setStrokeGray(150 / 255)
    for b in boxes:
        x0, y0, x1, y1 = b["box_mm"]
        text, size = labels[b["index"]], size0
        while pdfmetrics.stringWidth(text, LABEL_FONT, size) > cell_pt and size > 4:
            size *= 0.9
        c.setFont(LABEL_FONT, size)
        c.setFillColor(colors.black)
        c.drawCentredString((x0 + x1) / 2 * PT_PER_MM, _y(layout, y1 + 0.8) - 0.8 * size, text)
        t, g = 1.5, 1.0
        for cx, cy, sx, sy in ((x0, y0, -1, -1), (x1, y0, 1, -1), (x0, y1, -1, 1), (x1, y1, 1, 1)):
            ex, ey = cx + sx * g, cy + sy * g
            c.line(ex * PT_PER_MM, _y(layout, ey), (ex - sx * t) * PT_PER_MM, _y(layout, ey))
            c.line(ex * PT_PER_MM, _y(layout, ey), ex * PT_PER_MM, _y(layout, ey - sy * t))
