"""``a5ocr scan``: read a scanned page with a design run's classifier, with a certificate per character.

Pipeline (running text, ``a5ocr.scan.text.scan_text``); each step is described in full in its module:

1. **Page** (``a5ocr.scan.page.read_page``): PNG / JPEG / TIFF to float gray, 1 = paper; the pixel
   count is checked from the header before decoding (decompression-bomb guard).
2. **Binarisation** (``binarize``): Otsu's threshold splits paper from ink; coverage
   ``c = (paper - gray) / (paper - ink)`` clipped to [0, 1], the ink mask ``c >= 0.5``. A page
   whose two classes differ by less than 0.15 in gray has no text (empty result).
3. **Deskew** (``binarize.estimate_skew``, ``segmentation``): the angle in [-3, 3] degrees of the
   sharpest projection profile; above 0.05 degree the page is rotated back. Boxes are reported in
   the coordinates of the page as read.
4. **Characters** (``segmentation``): connected components, grouped into lines and characters (the dots
   of i and j, strokes broken by a light print); each owns the page pixels nearest to it.
   Characters in pieces are joined and letters that touch -- each other or a punctuation mark --
   split by recognition (``regroup``, ``split``: the cuts whose pieces the classifier, or the
   source font's marks, read best; such pieces are flagged ``split`` in the JSON); a
   space is emitted where the ink gap exceeds what the font leaves, by half a space (``text``).
5. **Normalisation** (``geometry``), exactly as ``a5ocr.glyphs.rasterize`` frames prototypes: each
   character to the design's R x R canvas, at a page scale and line baselines fitted by a fixed
   point on the ink moments of the characters read against their prototypes (``reader``: the
   robust glyphs as printed, or the original ones); the classifier sees ``x = 1 - w`` of the
   canvas in the run's mean acquisition pose (``reader``: shrunk about the centre by
   1 - perspective_p x distortion / 2, an exact box re-binning).
6. **Certificates** (``certify``): the label is the classifier's answer, certified when the sound
   float64 bound proves it for every change of L-inf size eps_A of the normalised image (IBP, then
   CROWN-IBP on the rest); its radius is the evaluation stage's certified radius, up to
   ``radius_cap(eps_A)``. ``page_eps_a`` = eps_A (paper - ink) is the budget on the page's pixels
   with the segmentation and the geometry held fixed (these are not covered).

Glyph sheets from ``a5ocr export --sheet`` (a ``<sheet>.layout.json`` beside the page, or
``layout=``) are read from their known boxes through the registration marks (``sheet``).
The result, its JSON and its overlay: ``result``.

**Truth** (``load_truth_text``): a running-text page is compared with its true text (``result``:
correct, certified and correct, certified but wrong, missed) when ``truth=`` names a file (a
ground truth JSON of ``a5ocr render-text``, or a UTF-8 text file), or else when the page has
render-text's ``<page>.truth.json`` beside it; without either, the correctness figures are null.
A glyph sheet's truth is its layout.

Bad input raises ``ScanError`` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from a5ocr.errors import PageError, RenderError, ScanError
from a5ocr.scan.certify import check_options
from a5ocr.scan.page import read_page
from a5ocr.scan.reader import load_reader
from a5ocr.scan.render_text import load_truth, truth_path
from a5ocr.scan.result import ScanResult, check_json_path, check_overlay_path, compare_with_truth, write_json, write_overlay
from a5ocr.scan.sheet import find_layout, scan_sheet
from a5ocr.scan.text import scan_text


def load_page(path: Path | str) -> np.ndarray:
    """A page file as float gray [H, W] in [0, 1] (``a5ocr.scan.page.read_page``); ``ScanError`` if unreadable."""
    try:
        return read_page(path)
    except PageError as err:
        raise ScanError(str(err)) from None


def load_truth_text(page: Path | str, truth: Path | str | None = None) -> tuple[str, str] | None:
    """The page's true text and where it came from (the module doc), or None when none is given
    and render-text's truth is not beside the page; ``ScanError`` for an unreadable file."""
    if truth is None:
        beside = truth_path(page)
        if not beside.is_file():
            return None
        truth = beside
    path = Path(truth)
    if not path.is_file():
        raise ScanError(f"--truth {path} not found")
    if path.suffix.lower() == ".json":
        try:
            return load_truth(path)["text"], str(path)
        except RenderError as err:
            raise ScanError(str(err)) from None
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as err:
        raise ScanError(f"cannot read --truth {path} as UTF-8 text: {err}") from None


def scan(page: Path | str, run_dir: Path | str, eps_a: float | None = None, method: str = "crown-ibp",
         layout: Path | str | None = None, classifier: Path | str | None = None, sheet_page: int = 1,
         truth: Path | str | None = None) -> ScanResult:
    """Read a page file: a glyph sheet when it has a layout (beside it or ``layout``), else running
    text, compared with its truth (``truth``, or render-text's beside the page: the module doc).
    ``eps_a`` defaults to the run's (0.1 when unknown); ``sheet_page`` is 1-based."""
    reader = load_reader(run_dir, classifier)
    eps = float(eps_a) if eps_a is not None else (reader.eps_a_design or 0.1)
    check_options(eps, method)
    if not (isinstance(sheet_page, int) and sheet_page >= 1):
        raise ScanError(f"--sheet-page must be a page number >= 1, got {sheet_page!r}")
    lay = find_layout(page, layout)
    if lay is not None and truth is not None:
        raise ScanError("--truth does not apply to a glyph sheet: its layout gives every box's character")
    known = None if lay is not None else load_truth_text(page, truth)
    gray = load_page(page)
    name = Path(page).name
    if lay is not None:
        return scan_sheet(gray, lay, reader, eps, method, name, sheet_page - 1)
    result = scan_text(gray, reader, eps, method, name)
    return result if known is None else compare_with_truth(result, *known)


def scan_and_write(page: Path | str, run_dir: Path | str, eps_a: float | None = None, method: str = "crown-ibp",
                   layout: Path | str | None = None, classifier: Path | str | None = None, sheet_page: int = 1,
                   json_out: Path | str | None = None, overlay: Path | str | None = None,
                   truth: Path | str | None = None) -> ScanResult:
    """``scan`` with its outputs (``a5ocr scan``): the output paths and ``layout`` are checked
    before the work, then the result is written as JSON (``json_out``) and as an overlay of the page."""
    if json_out is not None:
        check_json_path(Path(json_out))
    if overlay is not None:
        check_overlay_path(Path(overlay))
    if layout is not None and not Path(layout).is_file():
        raise ScanError(f"sheet layout not found: {layout}")
    result = scan(page, run_dir, eps_a=eps_a, method=method, layout=layout, classifier=classifier, sheet_page=sheet_page,
                  truth=truth)
    if json_out is not None:
        write_json(result, json_out)
    if overlay is not None:
        write_overlay(result, load_page(page), overlay)
    return result
