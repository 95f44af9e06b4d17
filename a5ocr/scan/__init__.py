"""Scanned pages: read and certify printed characters; render-text for test pages.

The stages of a read, one module each (the pipeline is described in ``a5ocr.scan.read``):
``page`` (image I/O, rotations), ``binarize`` (paper and ink levels, skew), ``segmentation``
(lines and characters), ``reader`` (the run's classifier and prototypes), ``geometry``
(normalisation to the design canvas), ``regroup`` (pieces joined, touching letters split), ``split`` (recognition-driven cuts of touching characters),
``certify`` (certificates and radii), ``result`` (the result, JSON, overlay), ``text`` and
``sheet`` (running text and glyph sheets), ``read`` (the entry points); ``render_text`` draws
test pages.
"""

from a5ocr.errors import GlyphError, PageError, RunError, ScanError
from a5ocr.scan.binarize import MAX_SKEW_DEG, Levels, estimate_skew, ink_mask, otsu_threshold, paper_and_ink
from a5ocr.scan.certify import METHODS, certify_canvases, check_options
from a5ocr.scan.geometry import PageGeometry, area_weights, first_guess, fit_geometry, normalize_glyph
from a5ocr.scan.ink import ink_extents, row_moments
from a5ocr.scan.read import load_page, scan, scan_and_write
from a5ocr.scan.reader import Reader, as_printed, load_reader
from a5ocr.scan.regroup import join_broken, split_merged
from a5ocr.scan.result import SCAN_FORMAT, ScanChar, ScanResult, write_json, write_overlay
from a5ocr.scan.segmentation import Glyph, Segmentation, segment
from a5ocr.scan.sheet import find_layout, find_marks, fit_homography, scan_sheet
from a5ocr.scan.text import scan_text

__all__ = [
    # errors
    "GlyphError", "PageError", "RunError", "ScanError",
    # entry points
    "scan", "scan_and_write", "scan_text", "scan_sheet", "load_page", "load_reader", "check_options", "METHODS",
    # results
    "SCAN_FORMAT", "ScanChar", "ScanResult", "write_json", "write_overlay",
    # the stages
    "MAX_SKEW_DEG", "Levels", "otsu_threshold", "paper_and_ink", "ink_mask", "estimate_skew",
    "Glyph", "Segmentation", "segment",
    "Reader", "as_printed", "ink_extents", "row_moments",
    "PageGeometry", "area_weights", "normalize_glyph", "first_guess", "fit_geometry",
    "join_broken", "split_merged",
    "certify_canvases",
    "find_layout", "find_marks", "fit_homography",
]
