"""Glyph sheets from ``a5ocr export --sheet`` read back (``a5ocr scan`` on a page with a layout).

The layout is a ``<sheet>.layout.json`` beside the page, or ``layout=``. The four registration
discs are found near their expected places (scaled to the page size), their coverage-weighted
centroids fix a homography from the layout's pixels to the page, and each glyph's R x R canvas
is sampled back from its known box (each design pixel is a uniform square on the sheet, so the
mean over its footprint is the design pixel again). R is the sensor's, the classifier's input:
for a design printed at S > 1 (S*R print pixels per box) each canvas pixel is the mean over the
S x S print pixels it covers, the acquisition's box filter. The classifier is shown each canvas
in the acquisition's mean pose (``Reader.classify``), as in running text. Each character is certified as in running
text (``a5ocr.scan.certify``) and compared with the character printed in its box.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.transform import ProjectiveTransform

from a5ocr.errors import ScanError
from a5ocr.export import SHEET_FORMAT, layout_path
from a5ocr.scan.binarize import Levels, paper_and_ink
from a5ocr.scan.certify import check_options
from a5ocr.scan.reader import Reader
from a5ocr.scan.result import ScanResult, scan_chars


def find_layout(page: Path | str, layout: Path | str | None = None) -> dict | None:
    """The sheet layout of a page: ``layout`` if given, else ``<page stem>.layout.json`` beside it."""
    path = Path(layout) if layout else layout_path(page)
    if layout is None and not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ScanError(f"cannot read the sheet layout {path}: {err}") from None
    if not isinstance(d, dict) or d.get("format") != SHEET_FORMAT:
        raise ScanError(f"{path} is not an a5ocr sheet layout (format {SHEET_FORMAT!r})")
    for key in ("marks", "boxes", "page_px", "dpi", "chars", "resolution"):
        if key not in d:
            raise ScanError(f"{path}: the sheet layout lacks {key!r}")
    return d


def find_marks(gray: np.ndarray, layout: dict, levels: Levels) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the 4 registration discs: (layout px [4, 2], page px [4, 2])."""
    h, w = gray.shape
    lw, lh = layout["page_px"]
    sx, sy = w / lw, h / lh
    dpi = float(layout["dpi"])
    src, dst = [], []
    cov = levels.coverage(gray)
    for m in layout["marks"]:
        cx, cy = m["center_px"]
        r_px = 0.5 * m["diameter_mm"] / 25.4 * dpi
        ex, ey = cx * sx, cy * sy
        win = 4.0 * r_px * max(sx, sy) + 0.03 * max(w, h)
        x0, x1 = max(0, int(ex - win)), min(w, int(ex + win) + 1)
        y0, y1 = max(0, int(ey - win)), min(h, int(ey + win) + 1)
        sub = cov[y0:y1, x0:x1]
        lab, n = ndimage.label(sub >= 0.5)
        best, best_d = None, math.inf
        disc_area = math.pi * (r_px * math.sqrt(sx * sy)) ** 2
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None:
                continue
            bh, bw = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
            area = float((lab[sl] == i).sum())
            if not (0.4 * disc_area <= area <= 2.5 * disc_area and 0.7 <= bw / bh <= 1.4 and 0.6 <= area / (bw * bh) <= 0.95):
                continue
            ccx, ccy = x0 + (sl[1].start + sl[1].stop) / 2, y0 + (sl[0].start + sl[0].stop) / 2
            d = math.hypot(ccx - ex, ccy - ey)
            if d < best_d:
                best, best_d = (i, sl), d
        if best is None:
            raise ScanError(f"registration mark {m.get('name', '?')} not found near ({ex:.0f}, {ey:.0f}) px: is this the sheet of the layout, scanned whole?")
        i, sl = best
        pad = 3
        ya, yb = max(0, sl[0].start - pad), min(sub.shape[0], sl[0].stop + pad)
        xa, xb = max(0, sl[1].start - pad), min(sub.shape[1], sl[1].stop + pad)
        grown = ndimage.binary_dilation(lab[ya:yb, xa:xb] == i, iterations=2)
        wgt = sub[ya:yb, xa:xb] * grown
        rows, cols = np.mgrid[ya:yb, xa:xb]
        tot = float(wgt.sum())
        dst.append([x0 + float((wgt * (cols + 0.5)).sum()) / tot, y0 + float((wgt * (rows + 0.5)).sum()) / tot])
        src.append([cx, cy])
    return np.array(src, np.float64), np.array(dst, np.float64)


def _check_marks(src: np.ndarray, dst: np.ndarray, shape: tuple[int, int], layout: dict) -> None:
    """The found marks must form the layout's rectangle up to a mild perspective: opposite sides
    within 5% of each other's scale, and the page's scale within 20% of the expected one."""
    def side(p, i, j):
        return float(np.linalg.norm(p[i] - p[j]))

    names = [m.get("name") for m in layout["marks"]]
    corners = ("top-left", "top-right", "bottom-left", "bottom-right")
    if len(src) != 4 or sorted(map(str, names)) != sorted(corners):
        raise ScanError("the sheet layout must have the 4 corner registration marks")
    tl, tr, bl, br = (names.index(c) for c in corners)
    scales = [side(dst, i, j) / max(side(src, i, j), 1e-9) for i, j in ((tl, tr), (bl, br), (tl, bl), (tr, br))]
    expected = math.sqrt(shape[1] / layout["page_px"][0] * shape[0] / layout["page_px"][1])
    if abs(scales[0] / scales[1] - 1) > 0.05 or abs(scales[2] / scales[3] - 1) > 0.05 or not (
            0.8 < float(np.mean(scales)) / expected < 1.25):
        raise ScanError("the registration marks found do not form the sheet's rectangle: scan the whole sheet, flat")


def fit_homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 H with dst ~ H src (h33 = 1) over >= 4 point pairs: scikit-image's normalised DLT
    (``ProjectiveTransform.from_estimate``; total least squares, exact on 4 pairs). ScanError when
    the pairs fix no homography: fewer than 4, coincident or collinear points (scikit-image's
    failed estimation), or an H that folds or flattens the plane over the points (our check below)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.ndim != 2 or src.shape[1:] != (2,) or src.shape != dst.shape or len(src) < 4:
        raise ScanError(f"a homography needs >= 4 point pairs of (x, y), got {src.shape} -> {dst.shape}")
    tf = ProjectiveTransform.from_estimate(src, dst)
    if not tf or not np.all(np.isfinite(tf.params)):
        raise ScanError(f"the registration marks fix no homography ({tf})")
    hm = tf.params
    # ours (scikit-image has no such check): it returns a least-squares H even where the points fix
    # none (3 of 4 collinear: entries ~1e15). A homography's Jacobian determinant is det(H) / w^3
    # (w = the homogeneous coordinate): it must keep one sign over the points (the horizon not
    # between them) and, relative to the spread of dst over src, be neither ~0 nor huge (flattened).
    def spread(p):
        return float(np.sqrt(((p - p.mean(0)) ** 2).sum(1).mean()))

    w = np.c_[src, np.ones(len(src))] @ hm[2]
    jac = np.linalg.det(hm) / w**3
    rel = np.abs(jac) / max((spread(dst) / max(spread(src), 1e-300)) ** 2, 1e-300)
    if not (np.all(jac > 0) or np.all(jac < 0)) or not np.all((rel > 1e-8) & (rel < 1e8)):
        raise ScanError("the registration marks fix no homography (degenerate: collinear or folded points)")
    return hm


def _apply_h(hm: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ hm.T
    return p[:, :2] / p[:, 2:3]


def scan_sheet(gray: np.ndarray, layout: dict, reader: Reader, eps_a: float, method: str = "crown-ibp",
               page_name: str = "", sheet_page: int = 0) -> ScanResult:
    """Read a scanned glyph sheet with its layout (the module doc)."""
    check_options(eps_a, method)
    if (str(layout["chars"]) != reader.chars or int(layout["resolution"]) != reader.resolution
            or int(layout.get("print_scale", 1)) != reader.print_scale):
        raise ScanError("the sheet was exported from another run (its characters, resolution or print scale differ from the run's)")
    boxes = [b for b in layout["boxes"] if int(b.get("page", 0)) == sheet_page]
    if not boxes:
        raise ScanError(f"the sheet layout has no glyphs on page {sheet_page + 1}")
    levels = paper_and_ink(gray)
    if levels is None:
        raise ScanError("the page is blank: no registration marks")
    src, dst = find_marks(gray, layout, levels)
    _check_marks(src, dst, gray.shape, layout)
    hm = fit_homography(src, dst)
    cov = levels.coverage(gray)
    r = reader.resolution
    scale = math.sqrt(abs(np.linalg.det(hm[:2, :2])))
    canv, page_boxes, expected = [], [], []
    for b in boxes:
        x0, y0, x1, y1 = (float(v) for v in b["box_px"])
        gpx = (x1 - x0) / r
        n = int(np.clip(math.ceil(gpx * scale), 2, 8))
        sub = (np.arange(r * n) + 0.5) / n
        vv, uu = np.meshgrid(y0 + sub * (y1 - y0) / r, x0 + sub * (x1 - x0) / r, indexing="ij")
        p = _apply_h(hm, np.c_[uu.ravel(), vv.ravel()])
        vals = ndimage.map_coordinates(cov, [p[:, 1] - 0.5, p[:, 0] - 0.5], order=1, mode="constant", cval=0.0)
        canv.append(vals.reshape(r, n, r, n).mean(axis=(1, 3)))
        corners = _apply_h(hm, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
        page_boxes.append([float(corners[:, 0].min()), float(corners[:, 1].min()), float(corners[:, 0].max()), float(corners[:, 1].max())])
        expected.append(b.get("char", layout["chars"][int(b["index"])]))
    canv = np.stack(canv).astype(np.float32)
    probs, x = reader.classify(canv)
    rows = sorted({int(b["box_px"][1]) for b in boxes})
    line_of = [rows.index(int(b["box_px"][1])) for b in boxes]
    chars = scan_chars(reader, probs, x, eps_a, method, page_boxes, line_of, [False] * len(boxes), expected)
    info = {"sheet_page": sheet_page + 1, "marks_px": [[round(v, 2) for v in p] for p in dst.tolist()],
            "paper": round(levels.paper, 4), "ink": round(levels.ink, 4), "pose_scale": round(reader.pose_scale, 6),
            "page_eps_a": round(eps_a * levels.contrast, 6)}
    return ScanResult(page=page_name, mode="sheet", eps_a=eps_a, method=method, chars=chars,
                      page_px=(gray.shape[1], gray.shape[0]), info=info)

