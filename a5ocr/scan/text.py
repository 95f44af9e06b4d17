"""A page of running text read (``a5ocr scan``): segment, fit the geometry, regroup by
recognition, mark the spaces, report characters outside the alphabet (``reader.outside_alphabet``),
certify the others (the steps are described in ``a5ocr.scan.read``).

**Spaces**: characters are read left to right; a space is emitted where the ink gap, less the gap
the font itself leaves between the two characters read (right bearing + left bearing, from the
prototypes and the source font's advance widths), exceeds half the font's space advance.
"""

from __future__ import annotations

import math

import numpy as np

from a5ocr.scan.certify import check_options
from a5ocr.scan.geometry import fit_geometry
from a5ocr.scan.reader import Reader, outside_alphabet
from a5ocr.scan.regroup import join_broken, split_merged
from a5ocr.scan.result import ScanResult, scan_chars
from a5ocr.scan.segmentation import Segmentation, segment


def _mark_spaces(seg: Segmentation, reader: Reader, k_per_glyph: np.ndarray, labels: np.ndarray, table: str) -> None:
    """Set ``space_before`` from the ink gaps (the module doc). With the source font's advance
    widths, the gap expected between two read characters set without a space (right bearing of
    the first + left bearing of the second) is subtracted first, so that a j's hook or a wide
    side bearing does not hide a space or make one."""
    glyphs = seg.glyphs
    if len(glyphs) < 2:
        return
    ppu = float(np.median(k_per_glyph)) / reader.units_per_pixel  # page px per font unit
    index = {id(g): i for i, g in enumerate(glyphs)}
    bear = reader.bearings.get(table)
    space_px = reader.space_units * ppu
    if bear is not None:
        lsb, rsb = bear
        for line in seg.lines:
            for a, b in zip(line, line[1:]):
                ia, ib = index[id(a)], index[id(b)]
                expected = (rsb[labels[ia]] + lsb[labels[ib]]) * ppu
                b.space_before = (b.left - a.right) - expected > 0.5 * space_px
        return
    gaps = [b.left - a.right for line in seg.lines for a, b in zip(line, line[1:])]
    em = reader.units_per_em * ppu
    letter_gap = min(max(float(np.median(gaps)), 0.0), 0.15 * em) if gaps else 0.0
    for line in seg.lines:
        for a, b in zip(line, line[1:]):
            b.space_before = (b.left - a.right) > letter_gap + 0.5 * space_px


def scan_text(gray: np.ndarray, reader: Reader, eps_a: float, method: str = "crown-ibp", page_name: str = "") -> ScanResult:
    """Read a page of running text (the module doc)."""
    check_options(eps_a, method)
    seg = segment(gray)
    glyphs = seg.glyphs
    info: dict = {"skew_deg": round(seg.angle, 3)}
    if seg.levels is not None:
        info.update({"paper": round(seg.levels.paper, 4), "ink": round(seg.levels.ink, 4),
                     "page_eps_a": round(eps_a * seg.levels.contrast, 6)})
    if not glyphs:
        info["note"] = "no text found on the page"
        return ScanResult(page=page_name, mode="text", eps_a=eps_a, method=method, chars=[],
                          page_px=(gray.shape[1], gray.shape[0]), info=info)
    geo, canv, probs = fit_geometry(seg, reader)
    if join_broken(seg, reader, geo, canv, probs):
        geo, canv, probs = fit_geometry(seg, reader, geo, max_rounds=2)
    if split_merged(seg, reader, geo, canv, probs):
        geo, canv, probs = fit_geometry(seg, reader, geo, max_rounds=2)
    glyphs = seg.glyphs
    k = geo.k[[g.line for g in glyphs]]
    _mark_spaces(seg, reader, k, probs.argmax(1), geo.table)
    _, x = reader.classify(canv)
    px_per_unit = float(np.median(k)) / reader.units_per_pixel
    info.update({"glyph_table": geo.table, "pose_scale": round(reader.pose_scale, 6), "scale_px_per_canvas_px": round(float(np.median(k)), 4),
                 "em_px": round(reader.units_per_em * px_per_unit, 2),
                 "baselines_px": [round(float(b), 2) for b in geo.baseline]})
    if geo.slope is not None and len(geo.slope):
        info["skew_deg"] = round(seg.angle - math.degrees(math.atan(float(np.median(geo.slope)))), 3)
    boxes = [seg.page_box(g.box) for g in glyphs]
    outside = outside_alphabet(canv, probs.argmax(1), reader.tables[geo.table or "robust"])
    info["outside_alphabet"] = int(outside[0].sum())
    info["split_pieces"] = sum(g.cols is not None for g in glyphs)
    chars = scan_chars(reader, probs, x, eps_a, method, boxes, [g.line for g in glyphs], [g.space_before for g in glyphs],
                       outside=outside, split=[g.cols is not None for g in glyphs])
    return ScanResult(page=page_name, mode="text", eps_a=eps_a, method=method, chars=chars,
                      page_px=(gray.shape[1], gray.shape[0]), info=info)

