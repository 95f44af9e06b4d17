"""Export of a design: printable sheets, installable fonts, PNGs and figures.

Modules, one concept each: ``sheet`` (page layout, rendering, registration discs, the layout
sidecar), ``pdf`` (the lossless PDF writer), ``font`` (fontTools font building and verification),
``outline`` (raster -> contour tracers), ``images`` (per-glyph PNGs, the Fig. 4 figure),
``roundtrip`` (FreeType rendering at the design geometry, IoU), ``common`` (shared helpers).
"""

from a5ocr.errors import ExportError
from a5ocr.export.common import MM_PER_INCH, PT_PER_INCH, check_output, mm_to_px
from a5ocr.export.font import OUTLINE_METHODS, export_font, glyph_loops, resolve_outline_method
from a5ocr.export.images import comparison_figure, export_pngs
from a5ocr.export.roundtrip import iou, rasterize_at_design
from a5ocr.export.sheet import PAPER_MM, SHEET_FORMAT, export_sheet, layout_path, sheet_layout, upsample_glyph

__all__ = [
    "ExportError",
    "MM_PER_INCH",
    "OUTLINE_METHODS",
    "PAPER_MM",
    "PT_PER_INCH",
    "SHEET_FORMAT",
    "check_output",
    "comparison_figure",
    "export_font",
    "export_pngs",
    "export_sheet",
    "glyph_loops",
    "iou",
    "layout_path",
    "mm_to_px",
    "rasterize_at_design",
    "resolve_outline_method",
    "sheet_layout",
    "upsample_glyph",
]
