"""Export of a design: printable sheets, installable fonts, PNGs and figures.

Modules, one concept each: ``sheet`` (page layout, rendering, registration discs, the layout
sidecar), ``pdf`` (the vector PDF sheet, drawn with reportlab), ``font`` (the exported font:
the source font with the designed glyphs replaced, and its verification), ``glyph_tables`` (the
source font's outline table, kept or converted, designed glyphs swapped in), ``smooth`` (smooth
outlines of a design: a fitted coverage field's half-ink line as a spline), ``outline`` (raster
-> contour tracers: pixels, contour, halftone), ``images`` (per-glyph PNGs, the Fig. 4 figure),
``roundtrip`` (FreeType rendering at the design geometry, IoU), ``common`` (shared helpers);
for other verifiers: ``onnx_model`` (the classifier as ONNX) and ``vnnlib`` (one VNNLIB property
per evaluation sample, ``instances.csv`` and a manifest of our verdicts: a VNN-COMP benchmark).
"""

from a5ocr.errors import ExportError
from a5ocr.export.common import MM_PER_INCH, PT_PER_INCH, check_output, mm_to_px
from a5ocr.export.font import OUTLINE_METHODS, export_font, glyph_loops, resolve_outline_method
from a5ocr.export.images import comparison_figure, export_pngs
from a5ocr.export.onnx_model import OPSET, export_onnx, export_run_onnx, load_run, onnx_logits
from a5ocr.export.roundtrip import iou, rasterize_at_design
from a5ocr.export.sheet import PAPER_MM, SHEET_FORMAT, export_sheet, layout_path, sheet_layout, upsample_glyph
from a5ocr.export.vnnlib import VNNLIB_FORMAT, check_vnnlib_options, evaluation_samples, export_vnnlib, vnnlib_text

__all__ = [
    "ExportError",
    "MM_PER_INCH",
    "OPSET",
    "OUTLINE_METHODS",
    "PAPER_MM",
    "PT_PER_INCH",
    "SHEET_FORMAT",
    "VNNLIB_FORMAT",
    "check_output",
    "check_vnnlib_options",
    "comparison_figure",
    "evaluation_samples",
    "export_font",
    "export_onnx",
    "export_pngs",
    "export_run_onnx",
    "export_sheet",
    "export_vnnlib",
    "glyph_loops",
    "iou",
    "layout_path",
    "load_run",
    "mm_to_px",
    "onnx_logits",
    "rasterize_at_design",
    "resolve_outline_method",
    "sheet_layout",
    "upsample_glyph",
    "vnnlib_text",
]
