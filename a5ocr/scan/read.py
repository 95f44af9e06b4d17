"""``a5ocr scan``: read a scanned page with a design run's classifier, with a certificate per character.

Pipeline (running text):

1. **Page** (``a5ocr.scan.page.read_page``): PNG / JPEG / TIFF to float gray, 1 = paper; the pixel
   count is checked from the header before decoding (decompression-bomb guard).
2. **Binarisation**: Otsu's threshold on the lightly smoothed page (sigma 0.7 px) splits paper
   from ink; the paper level is the median gray of the paper class, the ink level the median of
   the ink class's interior (its 1-px erosion). Coverage ``c = (paper - gray) / (paper - ink)``
   clipped to [0, 1] (1 = full ink); the ink mask is ``c >= 0.5`` (smoothed). A page whose two
   classes differ by less than 0.15 in gray has no text (empty result).
3. **Deskew**: the angle in [-3, 3] degrees that maximises the sum of squares of the ink's
   projection profile on the rotated vertical axis (a 0.1-degree scan, refined to 0.01 degree);
   above 0.05 degree the page is rotated back (bilinear, enlarged so nothing is cut). What is
   left (the profile is coarse on a few short lines) is taken up by the baselines, fitted with a
   slope per line (step 5). Boxes are reported in the coordinates of the page as read.
4. **Characters**: 8-connected components of the mask (``scipy.ndimage.label``); specks smaller
   than (0.06 h)^2 px (h = the 75th percentile component height) are dropped. Lines: components of
   height >= 0.35 h, in order of their vertical centre, join the line whose vertical span covers
   at least half their height; smaller ones join the line whose span (grown by half its height)
   holds their centre, or are dropped. Within a line, pieces stacked vertically (horizontal
   overlap >= half the narrower, vertical overlap <= a quarter of the shorter) are one
   character: the dots of i and j, and strokes broken by a light print. Each character owns the
   page pixels nearest to its components (Euclidean distance transform, up to 0.04 h px: the
   anti-aliased fringe); neighbours' ink is masked out. A character in pieces side by side (a
   defended glyph printed with a gap in a stroke: an h as "ti", an x as "ie", or a loose piece
   blurred into the next letter) is regrouped by recognition first (``join_broken``): two
   neighbours of which one reads badly are replaced by their union, or by their union cut anew,
   when that reads better. Letters that touch (ft, rt, vw ... after
   blur) are then split by recognition (``split_merged``): a character that reads badly -- low
   confidence, or an ink box or a shape that does not fit the class read -- is cut at a column
   in the lows of its ink profile when the pieces read better. Characters are read left to
   right; a space is emitted where the ink gap, less the gap the font itself leaves between the
   two characters read (right bearing + left bearing, from the prototypes and the source font's
   advance widths), exceeds half the font's space advance.
5. **Normalisation**, exactly as ``a5ocr.glyphs.rasterize`` frames prototypes: the canvas is
   R x R; one canvas pixel is ``units_per_pixel`` font units; the glyph's baseline is at canvas
   row ``baseline`` and its ink box is centred at R / 2. On the page, the character's ink box
   centre (0.5-level crossings) goes to the column where the prototype of the class read has it
   (R / 2 up to the framing's rounding), the line's baseline to the design baseline row, and each
   canvas pixel is the exact mean of the page's coverage over its footprint (page pixels as
   uniform squares, separable box re-binning): ink w in [0, 1]; the classifier sees
   ``x = 1 - w`` on 3 channels (``Acquisition``'s convention, paper = 1).

   **Scale** (page pixels per canvas pixel) and **baselines**: the font size on the page is
   unknown. A first guess per line takes the baseline as the median bottom of its characters and
   the height from the line's highest ink to that baseline, matched to the tallest glyph of the
   design above its baseline (median over lines). Then a fixed point: normalise, classify, and
   compare each normalised character's ink moments (mean and standard deviation of its rows,
   weighted by ink -- unlike edge positions, not biased by blur) with those of the prototype of
   the class it was read as: the page scale is the median ratio of the deviations; each line's
   baseline follows from the ink centroids (a Theil-Sen line through the implied baselines, so a
   residual skew is absorbed); repeated until the labels are stable and the scale moves by
   < 0.2% (at most 5 rounds). Medians make it robust to a minority of misread characters; one
   scale per page, except a line of >= 6 characters whose own median differs by > 15% (a heading
   in another size). The prototypes compared are the robust glyphs as the exported font prints
   them (the 0.5 iso-line of the design) or the original glyphs, whichever the page's
   characters are closer to (the page may be printed in either font).
6. **Certificates**: each character's label is the classifier's answer; it is certified when the
   sound float64 bound (``a5ocr.bounds.certify``; IBP first, then CROWN-IBP on the rest with
   ``method="crown-ibp"``) proves that no change of L-inf size eps_A of its normalised image
   changes that answer. Its radius is the largest such size (IBP bisection, each step a float64
   proof; at least eps_A where certified). The certificate is about the classifier's input. With
   the segmentation and the fitted geometry held fixed, the chain from the page is an average
   (bilinear deskew, box re-binning) followed by the level stretch 1 / (paper - ink), so a change
   of size e of the page's pixels moves the input by at most e / (paper - ink): ``page_eps_a`` =
   eps_A (paper - ink) in the JSON. Segmentation and the geometry fit are not covered.

Glyph sheets from ``a5ocr export --sheet`` (a ``<sheet>.layout.json`` beside the page, or
``layout=``): the four registration discs are found near their expected places (scaled to the
page size), their coverage-weighted centroids fix a homography from the layout's pixels to the
page, and each glyph's R x R canvas is sampled back from its known box (each design pixel is a
uniform square on the sheet, so the mean over its footprint is the design pixel again).

Bad input raises ``ScanError`` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from a5ocr import fonts
from a5ocr.errors import GlyphError, RunError
from a5ocr.runs import load_design
from a5ocr.scan.page import PageError, ScanError, read_page, rotate_box, rotate_image, write_image

SCAN_FORMAT = "a5ocr-scan-1"
METHODS = ("ibp", "crown-ibp")
MAX_SKEW_DEG = 3.0


# --------------------------------------------------------------------------- the run


@dataclass
class Reader:
    """A run's classifier and the glyph geometry to normalise characters to its canvas."""

    chars: str
    model: torch.nn.Module
    resolution: int
    units_per_pixel: float
    units_per_em: int
    baseline: float  # canvas row (continuous) of the baseline
    space_units: float
    tables: dict  # name -> {"top", "bottom", "left", "right", "mean_y", "std_y": [K], "glyphs": [K, R, R]}
    bearings: dict  # name -> (left side bearing [K], right side bearing [K]) of the ink, font units (or None)
    run_dir: str = ""
    classifier_path: str = ""
    eps_a_design: float | None = None

    @property
    def tallest_above_baseline(self) -> float:
        """Canvas px from the baseline up to the highest ink of any robust glyph."""
        return float(self.baseline - np.min(self.tables["robust"]["top"]))


def _font_metrics(design) -> tuple[float, np.ndarray | None]:
    """The source font's space advance and per-character advance widths (font units); a
    quarter em and None when the font is gone."""
    path = fonts.shipped_twin(design.font_path)
    if path is None:
        return design.units_per_em / 4.0, None
    try:
        space, adv = fonts.advances(path, design.chars)
    except GlyphError:
        return design.units_per_em / 4.0, None
    return (design.units_per_em / 4.0 if space is None else space), adv


def load_reader(run_dir: Path | str, classifier: Path | str | None = None) -> Reader:
    """Read a design run (``glyphs.safetensors`` and ``classifier.safetensors``, or ``classifier``)."""
    from a5ocr.models import CheckpointError, load_classifier

    try:
        design = load_design(run_dir)
    except RunError as err:
        raise ScanError(str(err)) from None
    path = Path(classifier) if classifier else Path(run_dir) / "classifier.safetensors"
    try:
        model, meta = load_classifier(path)
    except CheckpointError as err:
        raise ScanError(str(err)) from None
    if meta["resolution"] != design.resolution or meta["chars"] != design.chars:
        raise ScanError(f"classifier {path} does not fit the run's glyphs ({meta['resolution']}px, {meta['chars']!r} vs "
                        f"{design.resolution}px, {design.chars!r})")
    model = model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    space, advance = _font_metrics(design)
    origin = np.array(design.origin_x, np.float64)
    tables, bearings = {}, {}
    for name in ("robust", "original"):
        w = getattr(design, name).numpy().astype(np.float64)
        if name == "robust":
            w = np.stack([as_printed(g, design.ink) for g in w])
        tops, bottoms = (np.array(v, np.float64) for v in zip(*(ink_extents(g.max(axis=1)) for g in w)))
        lefts, rights = (np.array(v, np.float64) for v in zip(*(ink_extents(g.max(axis=0)) for g in w)))
        mean_y, std_y = (np.array(v, np.float64) for v in zip(*(row_moments(g) for g in w)))
        tables[name] = {"top": tops, "bottom": bottoms, "left": lefts, "right": rights,
                        "mean_y": mean_y, "std_y": std_y, "glyphs": w.astype(np.float32)}
        if advance is None:
            bearings[name] = None
        else:
            lsb = (lefts - origin) * design.units_per_pixel
            rsb = advance - (rights - origin) * design.units_per_pixel
            bearings[name] = (np.nan_to_num(lsb), np.nan_to_num(rsb))
    return Reader(
        chars=design.chars, model=model, resolution=design.resolution, units_per_pixel=design.units_per_pixel,
        units_per_em=design.units_per_em, baseline=design.baseline,
        space_units=space, tables=tables, bearings=bearings,
        run_dir=str(run_dir), classifier_path=str(path), eps_a_design=design.eps_a,
    )


# --------------------------------------------------------------------------- low-level steps


def as_printed(w: np.ndarray, ink: str = "gray", oversample: int = 8) -> np.ndarray:
    """A designed glyph [R, R] as the exported font prints it at the design geometry: a font
    outline is monochrome, the 0.5 iso-line of the bilinear interpolant of the design (gray
    designs; ``a5ocr.export``'s "contour" outline) or the ink > 0.5 pixels (binary designs);
    the result is its coverage per canvas pixel."""
    from scipy import ndimage

    if ink == "binary":
        return (w > 0.5).astype(np.float64)
    r = w.shape[0]
    fine = (np.arange(r * oversample) + 0.5) / oversample - 0.5  # pixel-index coordinates
    rr, cc = np.meshgrid(fine, fine, indexing="ij")
    up = ndimage.map_coordinates(w.astype(np.float64), [rr.ravel(), cc.ravel()], order=1, mode="constant", cval=0.0)
    solid = (up.reshape(r * oversample, r * oversample) > 0.5).astype(np.float64)
    return solid.reshape(r, oversample, r, oversample).mean(axis=(1, 3))


def row_moments(c: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the rows of a canvas, weighted by its ink (row i at i + 0.5)."""
    m = np.asarray(c, np.float64).sum(axis=1)
    tot = m.sum()
    if tot <= 1e-9:
        return math.nan, math.nan
    v = np.arange(m.size) + 0.5
    mu = float((v * m).sum() / tot)
    return mu, float(math.sqrt(max((((v - mu) ** 2) * m).sum() / tot, 0.0)))


def ink_extents(profile: np.ndarray, level: float = 0.5) -> tuple[float, float]:
    """First and last crossing of ``level`` (times the peak when the peak is below 1) of a
    1-D ink profile, with linear interpolation between pixel centres (pixel i centred at i + 0.5).
    Returns (start, end) in continuous coordinates; (nan, nan) for a profile without ink."""
    p = np.asarray(profile, np.float64)
    peak = float(p.max()) if p.size else 0.0
    if peak <= 1e-6:
        return math.nan, math.nan
    lv = level * min(1.0, peak)
    idx = np.nonzero(p >= lv)[0]
    i, j = int(idx[0]), int(idx[-1])
    if i == 0:
        start = 0.0
    else:
        a, b = p[i - 1], p[i]
        start = (i - 0.5) + (lv - a) / (b - a) if b > a else i + 0.0
    if j == p.size - 1:
        end = float(p.size)
    else:
        a, b = p[j], p[j + 1]
        end = (j + 0.5) + (a - lv) / (a - b) if a > b else j + 1.0
    return float(start), float(end)


def otsu_threshold(gray: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]."""
    hist, edges = np.histogram(np.clip(gray, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mt = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 / w0[-1] - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


@dataclass
class Levels:
    paper: float
    ink: float
    threshold: float

    @property
    def contrast(self) -> float:
        return self.paper - self.ink

    def coverage(self, gray: np.ndarray) -> np.ndarray:
        return np.clip((self.paper - gray) / max(self.contrast, 1e-6), 0.0, 1.0).astype(np.float32)


def paper_and_ink(gray: np.ndarray) -> Levels | None:
    """Paper and ink gray levels of a page (see the module doc); None for a page without text."""
    from scipy import ndimage

    smooth = ndimage.gaussian_filter(gray.astype(np.float32), 0.7)
    t = otsu_threshold(smooth)
    dark = smooth < t
    n_dark = int(dark.sum())
    if n_dark == 0 or n_dark == dark.size:
        return None
    paper = float(np.median(gray[~dark]))
    core = ndimage.binary_erosion(dark)
    ink = float(np.median(gray[core])) if core.sum() >= 20 else float(np.percentile(gray[dark], 10))
    if paper - ink < 0.15:
        return None
    return Levels(paper=paper, ink=ink, threshold=t)


def ink_mask(gray: np.ndarray, levels: Levels) -> np.ndarray:
    from scipy import ndimage

    return levels.coverage(ndimage.gaussian_filter(gray.astype(np.float32), 0.7)) >= 0.5


def estimate_skew(mask: np.ndarray, max_angle: float = MAX_SKEW_DEG, max_points: int = 400_000) -> float:
    """Angle (degrees, counter-clockwise on screen, as ``a5ocr.scan.page.rotate_image``) by which the
    text lines of an ink mask are rotated: the one in [-max_angle, max_angle] whose projection
    x sin(a) + y cos(a) of the ink pixels has the sharpest profile (largest sum of squares)."""
    ys, xs = np.nonzero(mask)
    if ys.size < 10:
        return 0.0
    if ys.size > max_points:
        step = int(math.ceil(ys.size / max_points))
        ys, xs = ys[::step], xs[::step]
    x = xs.astype(np.float64) + 0.5 - mask.shape[1] / 2
    y = ys.astype(np.float64) + 0.5 - mask.shape[0] / 2

    def score(a: float) -> float:
        r = math.radians(a)
        p = x * math.sin(r) + y * math.cos(r)
        h = np.bincount(np.floor(p - p.min()).astype(np.int64))
        return float(np.dot(h, h))

    coarse = np.arange(-max_angle, max_angle + 1e-9, 0.1)
    best = float(coarse[int(np.argmax([score(a) for a in coarse]))])
    fine = np.arange(best - 0.1, best + 0.1 + 1e-9, 0.01)
    return float(fine[int(np.argmax([score(a) for a in fine]))])


# --------------------------------------------------------------------------- segmentation


@dataclass
class Glyph:
    """One character found on the page; coordinates in the deskewed page (px, y down)."""

    comps: list[int]
    box: tuple[int, int, int, int]  # [x0, y0, x1, y1) of its mask pixels
    line: int = 0
    cols: tuple[int, int] | None = None  # a piece of a split: only the page columns [c0, c1) of its components
    space_before: bool = False
    left: float = math.nan  # 0.5-level ink extents (sub-pixel)
    right: float = math.nan
    top: float = math.nan
    bottom: float = math.nan

    @property
    def centre_x(self) -> float:
        return 0.5 * (self.left + self.right)


@dataclass
class Segmentation:
    """The deskewed page and its characters by line."""

    gray: np.ndarray  # deskewed page (as read when no rotation was needed)
    coverage: np.ndarray
    labels: np.ndarray  # component labels of the deskewed mask
    levels: Levels | None
    angle: float  # skew found, degrees (the page was rotated by -angle)
    shape_in: tuple[int, int]
    lines: list[list[Glyph]] = field(default_factory=list)
    ref_height: float = 0.0
    dmax: float = 2.0  # px of anti-aliased fringe a character keeps around its mask
    owner_bands: list = field(default_factory=list)  # per line: (y0, y1, owner map [y1 - y0, W])

    @property
    def glyphs(self) -> list[Glyph]:
        return [g for line in self.lines for g in line]

    def page_box(self, box) -> list[float]:
        """A deskewed box -> the axis-aligned box in the page as read."""
        if self.angle == 0.0:
            return [float(v) for v in box]
        return rotate_box(box, self.angle, self.gray.shape, self.shape_in)


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _merge_stacked(boxes: list[tuple[int, int, int, int]]) -> list[list[int]]:
    """Groups (indices) of boxes stacked vertically (see the module doc), in any order."""
    n = len(boxes)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = sorted(range(n), key=lambda i: boxes[i][0])
    for ii, i in enumerate(order):
        x0, y0, x1, y1 = boxes[i]
        for j in order[ii + 1 :]:
            u0, v0, u1, v1 = boxes[j]
            if u0 >= x1:
                break
            hov = _overlap(x0, x1, u0, u1)
            vov = _overlap(y0, y1, v0, v1)
            if hov >= 0.5 * min(x1 - x0, u1 - u0) and vov <= 0.25 * min(y1 - y0, v1 - v0):
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def segment(gray: np.ndarray, deskew: bool = True) -> Segmentation:
    """Binarise, deskew and split a page into lines of characters (module doc, steps 2-4)."""
    from scipy import ndimage

    shape_in = gray.shape
    levels = paper_and_ink(gray)
    empty = Segmentation(gray=gray, coverage=np.zeros_like(gray), labels=np.zeros(gray.shape, np.int32),
                         levels=levels, angle=0.0, shape_in=shape_in)
    if levels is None:
        return empty
    mask = ink_mask(gray, levels)
    angle = estimate_skew(mask) if deskew else 0.0
    if abs(angle) > 0.05:
        gray = rotate_image(gray, -angle, fill=levels.paper, expand=True, order=1)
        mask = ink_mask(gray, levels)
    else:
        angle = 0.0
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    seg = Segmentation(gray=gray, coverage=levels.coverage(gray), labels=labels, levels=levels, angle=angle, shape_in=shape_in)
    if n == 0:
        return seg
    slices = ndimage.find_objects(labels)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    boxes = {}
    for i, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        boxes[i] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    heights = np.array([b[3] - b[1] for i, b in boxes.items() if areas[i] >= 8], np.float64)
    if heights.size == 0:
        return seg
    h_ref = float(np.percentile(heights, 75))
    min_area = max(3.0, (0.06 * h_ref) ** 2)
    page_h, page_w = mask.shape
    keep = {i: b for i, b in boxes.items()
            if areas[i] >= min_area and (b[3] - b[1]) <= 6 * h_ref and (b[2] - b[0]) <= max(6 * h_ref, 0.02 * page_w)}
    if not keep:
        return seg
    seg.ref_height = h_ref
    big = sorted((i for i, b in keep.items() if b[3] - b[1] >= 0.35 * h_ref), key=lambda i: keep[i][1] + keep[i][3])
    line_spans: list[list[float]] = []  # [y0, y1]
    members: list[list[int]] = []
    for i in big:
        x0, y0, x1, y1 = keep[i]
        best, best_ov = -1, 0.0
        for li in range(max(0, len(line_spans) - 4), len(line_spans)):
            ov = _overlap(y0, y1, *line_spans[li]) / (y1 - y0)
            if ov >= 0.5 and ov > best_ov:
                best, best_ov = li, ov
        if best < 0:
            line_spans.append([float(y0), float(y1)])
            members.append([i])
        else:
            line_spans[best] = [min(line_spans[best][0], y0), max(line_spans[best][1], y1)]
            members[best].append(i)
    # merge lines whose spans overlap heavily (a line started by a descender or a dot)
    order = sorted(range(len(line_spans)), key=lambda li: line_spans[li][0])
    merged_spans, merged_members = [], []
    for li in order:
        s = line_spans[li]
        if merged_spans:
            t = merged_spans[-1]
            if _overlap(*s, *t) >= 0.5 * min(s[1] - s[0], t[1] - t[0]):
                merged_spans[-1] = [min(s[0], t[0]), max(s[1], t[1])]
                merged_members[-1] += members[li]
                continue
        merged_spans.append(list(s))
        merged_members.append(list(members[li]))
    for i, b in keep.items():
        if b[3] - b[1] >= 0.35 * h_ref:
            continue
        cy = 0.5 * (b[1] + b[3])
        best, best_d = -1, math.inf
        for li, (s0, s1) in enumerate(merged_spans):
            grow = 0.5 * (s1 - s0)
            d = 0.0 if s0 <= cy <= s1 else min(abs(cy - s0), abs(cy - s1))
            if d <= grow and d < best_d:
                best, best_d = li, d
        if best >= 0:
            merged_members[best].append(i)
    for li, comps in enumerate(merged_members):
        cboxes = [keep[i] for i in comps]
        line = []
        for group in _merge_stacked(cboxes):
            gb = [cboxes[g] for g in group]
            box = (min(b[0] for b in gb), min(b[1] for b in gb), max(b[2] for b in gb), max(b[3] for b in gb))
            line.append(Glyph(comps=[comps[g] for g in group], box=box, line=li))
        line.sort(key=lambda g: 0.5 * (g.box[0] + g.box[2]))
        seg.lines.append(line)
    _isolate_and_measure(seg)
    return seg


def _isolate_and_measure(seg: Segmentation) -> None:
    """Per line: which component owns each pixel (the nearest component ink within ``seg.dmax``
    px; ``seg.owner_bands``; a character owns the pixels of its components, so characters can be
    regrouped without recomputing the map) and each character's sub-pixel ink extents."""
    from scipy import ndimage

    n_labels = int(seg.labels.max())
    # ink of components that are no character (specks, borders) is owned by nobody (-1)
    lookup = np.full(n_labels + 1, -1, np.int32)
    lookup[0] = 0
    for g in seg.glyphs:
        lookup[g.comps] = g.comps
    seg.dmax = max(2.0, 0.04 * seg.ref_height)
    h = seg.labels.shape[0]
    for line in seg.lines:
        y0 = min(g.box[1] for g in line)
        y1 = max(g.box[3] for g in line)
        pad = int(math.ceil(1.2 * (y1 - y0) + seg.dmax + 2))
        b0, b1 = max(0, y0 - pad), min(h, y1 + pad)
        ids = lookup[seg.labels[b0:b1]]
        dist, (ri, ci) = ndimage.distance_transform_edt(ids == 0, return_indices=True)
        owner = ids[ri, ci]
        owner[dist > seg.dmax] = 0
        seg.owner_bands.append((b0, b1, owner))
        for g in line:
            _measure(seg, g)


def _glyph_window(seg: Segmentation, g: Glyph) -> tuple[int, int, int, int]:
    b0, b1, _ = seg.owner_bands[g.line]
    m = int(math.ceil(seg.dmax)) + 1
    return max(0, g.box[0] - m), max(b0, g.box[1] - m), min(seg.labels.shape[1], g.box[2] + m), min(b1, g.box[3] + m)


def _owned(seg: Segmentation, g: Glyph, window: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean map of the pixels of ``g`` over ``window`` = (x0, y0, x1, y1) (inside its line's band)."""
    xa, ya, xb, yb = window
    b0, _, owner = seg.owner_bands[g.line]
    band = owner[ya - b0 : yb - b0, xa:xb]
    own = band == g.comps[0] if len(g.comps) == 1 else np.isin(band, g.comps)
    if g.cols is not None:
        cols = np.arange(xa, xb)
        own &= ((cols >= g.cols[0]) & (cols < g.cols[1]))[None, :]
    return own


def _isolated(seg: Segmentation, g: Glyph, window: tuple[int, int, int, int]) -> np.ndarray:
    """Coverage of ``g`` alone over ``window`` = (x0, y0, x1, y1) (inside its line's band)."""
    xa, ya, xb, yb = window
    return np.where(_owned(seg, g, window), seg.coverage[ya:yb, xa:xb], 0.0).astype(np.float32)


def _measure(seg: Segmentation, g: Glyph) -> None:
    """Sub-pixel 0.5-level ink extents of a character (deskewed page px)."""
    xa, ya, xb, yb = win = _glyph_window(seg, g)
    iso = _isolated(seg, g, win)
    t, bt = ink_extents(iso.max(axis=1))
    lf, rt = ink_extents(iso.max(axis=0))
    g.top, g.bottom, g.left, g.right = ya + t, ya + bt, xa + lf, xa + rt


# --------------------------------------------------------------------------- normalisation


def area_weights(start: float, step: float, r: int, size: int) -> np.ndarray:
    """[r, size] weights of exact box re-binning: output cell j covers the input interval
    [start + j step, start + (j + 1) step) (input pixel i covers [i, i + 1)); W[j, i] is the
    overlap length divided by ``step``, so each row averages the input over its cell (input
    outside [0, size) counts as 0)."""
    a = start + np.arange(r, dtype=np.float64)[:, None] * step
    i = np.arange(size, dtype=np.float64)[None, :]
    return np.clip(np.minimum(a + step, i + 1) - np.maximum(a, i), 0.0, None) / step


def normalize_glyph(seg: Segmentation, g: Glyph, reader: Reader, k: float, baseline_y: float,
                    centre_u: float | None = None) -> np.ndarray:
    """The R x R ink canvas of glyph ``g``: the centre of its ink box (0.5-level crossings) at
    canvas column ``centre_u`` (default R / 2; given the class read, the column where that
    class's prototype has it, which is R / 2 up to the framing's rounding and the difference
    between the box of any ink and of half ink), page row ``baseline_y`` at the design
    baseline, ``k`` page px per canvas px. Each canvas pixel is the exact mean of the page's
    coverage over its footprint (pixels as uniform squares); other characters' ink is masked out."""
    r = reader.resolution
    b0, b1, _ = seg.owner_bands[g.line]
    h, w = seg.coverage.shape
    x_start = g.centre_x - (0.5 * r if centre_u is None else centre_u) * k
    y_start = baseline_y - reader.baseline * k
    xa, xb = max(0, int(math.floor(x_start))), min(w, int(math.ceil(x_start + r * k)) + 1)
    ya, yb = max(b0, int(math.floor(y_start))), min(b1, int(math.ceil(y_start + r * k)) + 1)
    if xb <= xa or yb <= ya:
        return np.zeros((r, r), np.float32)
    iso = _isolated(seg, g, (xa, ya, xb, yb)).astype(np.float64)
    wx = area_weights(x_start - xa, k, r, xb - xa)
    wy = area_weights(y_start - ya, k, r, yb - ya)
    return np.clip(wy @ iso @ wx.T, 0.0, 1.0).astype(np.float32)


def _classify(model: torch.nn.Module, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ink canvases [n, R, R] -> (probabilities [n, K], x [n, 3, R, R] = 1 - w)."""
    x = torch.from_numpy(1.0 - np.clip(w, 0.0, 1.0)).float().unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1).numpy() if len(x) else np.zeros((0, 1))
    return probs, x


@dataclass
class PageGeometry:
    """Scale (page px per canvas px) and baseline (deskewed page y) of each line, and the
    prototype table ("robust" or "original") the page is compared with."""

    k: np.ndarray
    baseline: np.ndarray  # at x = x_ref
    table: str | None = None
    slope: np.ndarray | None = None  # dy/dx of each baseline (the skew left after deskewing)
    x_ref: np.ndarray | None = None

    def baseline_at(self, line: int, x: float) -> float:
        if self.slope is None:
            return float(self.baseline[line])
        return float(self.baseline[line] + self.slope[line] * (x - self.x_ref[line]))

    def of(self, g: Glyph) -> tuple[float, float]:
        return float(self.k[g.line]), self.baseline_at(g.line, g.centre_x)


def first_guess(seg: Segmentation, reader: Reader) -> PageGeometry:
    """Scale and baselines from line extents alone (module doc, step 5)."""
    ks, bases = [], []
    for line in seg.lines:
        base = float(np.median([g.bottom for g in line]))
        bases.append(base)
        height = base - float(np.min([g.top for g in line]))
        if height > 0:
            ks.append((height / reader.tallest_above_baseline, len(line)))
    k = 1.0
    if ks:
        vals = np.array([v for v, _ in ks])
        wts = np.array([c for _, c in ks], np.float64)
        order = np.argsort(vals)
        cum = np.cumsum(wts[order])
        k = float(vals[order][np.searchsorted(cum, cum[-1] / 2)])
    return PageGeometry(k=np.full(len(seg.lines), k), baseline=np.array(bases, np.float64))


def _normalize_all(seg: Segmentation, reader: Reader, geo: PageGeometry, labels: np.ndarray | None = None) -> np.ndarray:
    glyphs = seg.glyphs
    if not glyphs:
        return np.zeros((0, reader.resolution, reader.resolution), np.float32)
    if labels is None or geo.table is None:
        return np.stack([normalize_glyph(seg, g, reader, *geo.of(g)) for g in glyphs])
    t = reader.tables[geo.table]
    centres = np.nan_to_num(0.5 * (t["left"] + t["right"]), nan=reader.resolution / 2)
    return np.stack([normalize_glyph(seg, g, reader, *geo.of(g), centre_u=float(centres[y])) for g, y in zip(glyphs, labels)])


def fit_geometry(seg: Segmentation, reader: Reader, geo: PageGeometry | None = None, labels: np.ndarray | None = None,
                 max_rounds: int = 5) -> tuple[PageGeometry, np.ndarray, np.ndarray]:
    """The fixed point of module doc step 5, from ``geo`` (default ``first_guess``).

    ``labels``: known classes of ``seg.glyphs`` (a test oracle); None reads them with the
    classifier. Returns (geometry, canvases [n, R, R] and probabilities [n, K] at it)."""
    geo = geo or first_guess(seg, reader)
    glyphs = seg.glyphs
    line_of = np.array([g.line for g in glyphs], np.int64)
    prev = None
    for _ in range(max_rounds):
        canv = _normalize_all(seg, reader, geo, labels if labels is not None else prev)
        probs, _ = _classify(reader.model, canv)
        lab = labels if labels is not None else probs.argmax(1)
        # ink moments of the normalised characters vs their prototypes: the rows' mean and
        # spread are unbiased by blur (the 0.5-level extents of round or thin tops are not)
        mom = np.array([row_moments(c) for c in canv]).reshape(-1, 2)
        ok = np.isfinite(mom).all(1) & (mom[:, 1] > 0.5)
        if not ok.any():
            break
        if geo.table is None:
            # the page is printed in the robust font or in the source font: the closer prototypes
            dist = {name: float(np.median(((canv[ok] - t["glyphs"][lab[ok]]) ** 2).sum(axis=(1, 2))))
                    for name, t in reader.tables.items()}
            geo.table = min(dist, key=lambda nm: (dist[nm], nm != "robust"))
        t = reader.tables[geo.table]
        kk = geo.k[line_of]
        kk_new = kk * mom[:, 1] / np.maximum(t["std_y"][lab], 1e-6)
        k_page = float(np.median(kk_new[ok]))
        # page y of each character's ink centroid, and the baseline it implies at the new scale
        base_now = np.array([geo.of(g)[1] for g in glyphs])
        centre_page = base_now + (mom[:, 0] - reader.baseline) * kk
        centre_design = t["mean_y"][lab]
        xs = np.array([g.centre_x for g in glyphs])
        new_k = np.full(len(seg.lines), k_page)
        new_base = geo.baseline.copy()
        slope = np.zeros(len(seg.lines))
        x_ref = np.array([float(np.mean([g.centre_x for g in line])) for line in seg.lines])
        for li in range(len(seg.lines)):
            sel = ok & (line_of == li)
            if sel.sum() >= 6:
                kl = float(np.median(kk_new[sel]))
                if abs(math.log(kl / k_page)) > 0.15:
                    new_k[li] = kl
            if sel.any():
                implied = centre_page[sel] - (centre_design[sel] - reader.baseline) * new_k[li]
                slope[li] = _theil_sen(xs[sel], implied, min_dx=reader.units_per_em / reader.units_per_pixel * new_k[li])
                new_base[li] = float(np.median(implied - slope[li] * (xs[sel] - x_ref[li])))
        moved = float(np.max(np.abs(new_k / geo.k - 1.0)))
        stable = prev is not None and np.array_equal(prev, lab)
        geo = PageGeometry(k=new_k, baseline=new_base, table=geo.table, slope=slope, x_ref=x_ref)
        prev = lab.copy()
        if stable and moved < 0.002:
            break
    canv = _normalize_all(seg, reader, geo, labels if labels is not None else prev)
    probs, _ = _classify(reader.model, canv)
    return geo, canv, probs


def _theil_sen(x: np.ndarray, y: np.ndarray, min_dx: float, max_slope: float = math.tan(math.radians(1.0))) -> float:
    """Median slope of the point pairs at least ``min_dx`` apart (0 with fewer than 4 points or
    no such pair), clipped to +-``max_slope``: the baseline's residual skew, robust to misreads."""
    if x.size < 4:
        return 0.0
    dx = x[None, :] - x[:, None]
    dy = y[None, :] - y[:, None]
    far = dx > min_dx
    if not far.any():
        return 0.0
    return float(np.clip(np.median(dy[far] / dx[far]), -max_slope, max_slope))


def _plausible(rho: float) -> float:
    """How plausible an ink width ``rho`` times the prototype's is (1 within +-20%)."""
    d = abs(math.log(max(rho, 1e-6))) - 0.2
    return 1.0 if d <= 0 else math.exp(-((d / 0.15) ** 2))


def _score(reader: Reader, geo: PageGeometry, g: Glyph, canvas: np.ndarray, probs: np.ndarray) -> float:
    """How well a character is read: the confidence of the class read, times the plausibility of
    its ink for that class -- width on the page (within 20% of the prototype's), top and bottom
    on the normalised canvas (within 0.06 em), and the cosine similarity of the canvas to the
    prototype (>= 0.9; two touching letters read as one class match it at 0.3-0.6)."""
    t = reader.tables[geo.table or "robust"]
    y = int(np.argmax(probs))
    k, _ = geo.of(g)
    rho = (g.right - g.left) / max((t["right"][y] - t["left"][y]) * k, 1e-6)
    top, bottom = ink_extents(canvas.max(axis=1))
    if not math.isfinite(top):
        return 0.0
    em = reader.units_per_em / reader.units_per_pixel
    dev = max(abs(top - t["top"][y]), abs(bottom - t["bottom"][y])) / em - 0.06
    vertical = 1.0 if dev <= 0 else math.exp(-((dev / 0.06) ** 2))
    proto = t["glyphs"][y]
    cos = float((canvas * proto).sum() / max(math.sqrt(float((canvas**2).sum()) * float((proto**2).sum())), 1e-12))
    match = 1.0 if cos >= 0.9 else math.exp(-(((0.9 - cos) / 0.1) ** 2))
    return float(probs[y]) * _plausible(rho) * vertical * match


def _set_box(seg: Segmentation, g: Glyph) -> bool:
    """The mask box of ``g``'s own pixels; False when it has none."""
    xa, ya, xb, yb = win = _glyph_window(seg, g)
    rows, cols = np.nonzero(_owned(seg, g, win) & (seg.labels[ya:yb, xa:xb] > 0))
    if rows.size == 0:
        return False
    g.box = (xa + int(cols.min()), ya + int(rows.min()), xa + int(cols.max()) + 1, ya + int(rows.max()) + 1)
    return True


def _pieces(seg: Segmentation, g: Glyph, a: int, b: int) -> tuple[Glyph, Glyph] | None:
    """``g`` cut in two: the left piece keeps its columns < ``b``, the right one those >= ``a``
    (a < b: the columns between belong to both -- two crossbars fused into one, as in ft, tt;
    a > b: those between belong to neither). None when a piece has no ink."""
    c0, c1 = g.cols if g.cols is not None else (-(1 << 30), 1 << 30)
    left = Glyph(comps=list(g.comps), box=g.box, line=g.line, cols=(c0, min(c1, b)))
    right = Glyph(comps=list(g.comps), box=g.box, line=g.line, cols=(max(c0, a), c1))
    if not (_set_box(seg, left) and _set_box(seg, right)):
        return None
    _measure(seg, left)
    _measure(seg, right)
    return left, right


def _read(seg: Segmentation, reader: Reader, geo: PageGeometry, glyphs: list[Glyph]) -> list[float]:
    canv = np.stack([normalize_glyph(seg, q, reader, *geo.of(q)) for q in glyphs])
    probs, _ = _classify(reader.model, canv)
    return [_score(reader, geo, q, canv[i], probs[i]) for i, q in enumerate(glyphs)]


def _cut_candidates(seg: Segmentation, reader: Reader, geo: PageGeometry, g: Glyph) -> list[int]:
    """Page columns where ``g`` may be two letters touching, at least 0.08 em from either end:
    up to 8 columns in the lows of its column ink profile (the joint of two letters is a single
    thin stroke) and 12 evenly spaced ones (a joint along a crossbar is a long low where the
    lowest columns need not be the right cut)."""
    from scipy import ndimage

    k, _ = geo.of(g)
    min_w = 0.08 * reader.units_per_em / reader.units_per_pixel * k
    xa, ya, xb, yb = win = _glyph_window(seg, g)
    prof = ndimage.gaussian_filter1d(_isolated(seg, g, win).sum(axis=0).astype(np.float64), 1.0)
    lo, hi = int(math.ceil(g.left + min_w)) - xa, int(math.floor(g.right - min_w)) - xa
    if hi <= lo:
        return []
    inner = prof[lo:hi]
    lows = np.nonzero(inner <= inner.min() + 0.5 * (np.median(inner) - inner.min()))[0]
    if lows.size > 8:
        lows = lows[np.round(np.linspace(0, lows.size - 1, 8)).astype(int)]
    even = np.round(np.linspace(0, inner.size - 1, min(12, inner.size))).astype(int)
    return [xa + lo + int(m) for m in sorted(set(lows.tolist()) | set(even.tolist()))]


def _best_split(seg: Segmentation, reader: Reader, geo: PageGeometry, g: Glyph, lookahead: int) -> tuple[float, int, int]:
    """(score, a, b) of the best way to cut ``g`` in two (``_pieces``) -- or, with ``lookahead``,
    in up to three: a piece that reads badly and is wide enough for two letters (> 0.35 em)
    counts with its own best cut (tried for the 3 cuts nearest the other side's best). The left
    piece's cut b and the right piece's cut a are chosen apart, with an overlap of at most
    0.2 em and a gap of at most 0.05 em. The score of a split is its worst piece's. All
    candidate pieces are read in one batch. Score 0 when there is no cut."""
    em = reader.units_per_em / reader.units_per_pixel * geo.of(g)[0]
    cuts = _cut_candidates(seg, reader, geo, g)
    lefts, rights, lcuts, rcuts = [], [], [], []
    for cut in cuts:
        pair = _pieces(seg, g, cut, cut)
        if pair is None:
            continue
        lefts.append(pair[0])
        rights.append(pair[1])
        lcuts.append(cut)
        rcuts.append(cut)
    if not lefts:
        return 0.0, 0, 0
    glyphs = lefts + rights
    canv = np.stack([normalize_glyph(seg, q, reader, *geo.of(q)) for q in glyphs])
    probs, _ = _classify(reader.model, canv)
    scores = np.array([_score(reader, geo, q, canv[i], probs[i]) for i, q in enumerate(glyphs)])
    sl, sr = scores[: len(lefts)], scores[len(lefts) :]
    lcuts_a, rcuts_a = np.array(lcuts), np.array(rcuts)
    if lookahead > 0:
        for side, other_best in ((sr, lcuts_a[int(np.argmax(sl))]), (sl, rcuts_a[int(np.argmax(sr))])):
            pieces = rights if side is sr else lefts
            cut_pos = rcuts_a if side is sr else lcuts_a
            for i in np.argsort(np.abs(cut_pos - other_best))[:3]:
                q = pieces[i]
                if side[i] < 0.9 and q.right - q.left > 0.35 * em:
                    side[i] = max(side[i], _best_split(seg, reader, geo, q, 0)[0])
    a = rcuts_a[None, :]
    b = lcuts_a[:, None]
    allowed = (b - a <= 0.2 * em) & (a - b <= 0.05 * em)
    pair = np.where(allowed, np.minimum(sl[:, None], sr[None, :]), -1.0)
    i, j = np.unravel_index(int(np.argmax(pair)), pair.shape)
    if pair[i, j] < 0:
        return 0.0, 0, 0
    return float(pair[i, j]), int(rcuts_a[j]), int(lcuts_a[i])


def split_merged(seg: Segmentation, reader: Reader, geo: PageGeometry, canv: np.ndarray, probs: np.ndarray,
                 max_pieces: int = 4) -> bool:
    """Split characters that touch (module doc, step 4): a character that reads badly (``_score``
    below 0.9) is cut at a column (``_cut_candidates``) when
    the pieces read better than the whole (and at least 0.3; with one level of lookahead, so
    that three letters in one blob are found); pieces are tried again, up to ``max_pieces``."""
    changed = False
    queue = [(g, _score(reader, geo, g, canv[i], probs[i]), 1) for i, g in enumerate(seg.glyphs)]
    while queue:
        g, whole, pieces = queue.pop()
        if whole >= 0.9 or pieces >= max_pieces:
            continue
        score, a, b = _best_split(seg, reader, geo, g, lookahead=1 if pieces + 1 < max_pieces else 0)
        if score <= max(whole, 0.3):
            continue
        left, right = _pieces(seg, g, a, b)
        line = seg.lines[g.line]
        i = next(j for j, q in enumerate(line) if q is g)
        line[i : i + 1] = [left, right]
        s_left, s_right = _read(seg, reader, geo, [left, right])
        queue += [(left, s_left, pieces + 1), (right, s_right, pieces + 1)]
        changed = True
    return changed


def _joined(seg: Segmentation, a: Glyph, b: Glyph) -> Glyph:
    """One character made of the neighbours ``a`` and ``b`` (whole characters, not split pieces)."""
    box = (min(a.box[0], b.box[0]), min(a.box[1], b.box[1]), max(a.box[2], b.box[2]), max(a.box[3], b.box[3]))
    u = Glyph(comps=a.comps + b.comps, box=box, line=a.line)
    _measure(seg, u)
    return u


def join_broken(seg: Segmentation, reader: Reader, geo: PageGeometry, canv: np.ndarray, probs: np.ndarray,
                max_gap_em: float = 0.08, max_parts: int = 4) -> bool:
    """Regroup neighbours that are one character in pieces (module doc, step 4) -- the converse
    of ``split_merged``. A defended glyph may print in pieces that do not touch (an h whose stem
    and arch are apart reads "ti", an x of two strokes "ie"), and a piece may touch the next
    letter instead (the loose leg of an x blurred into the e before it). For two neighbours on a
    line, whole characters less than ``max_gap_em`` em apart (or overlapping) of which one reads
    badly (``_score`` < 0.9), two regroupings are read: their union as one character, and their
    union cut again in two at its best column (``_best_split``). The better one replaces the
    pair when its worst character reads better than the pair's worse one and at least 0.5; the
    best move of a line is taken first and the line tried again, a character being made of at
    most ``max_parts`` pieces. Pieces of a split are never regrouped."""
    changed = False
    index = {id(g): i for i, g in enumerate(seg.glyphs)}
    scores = {id(g): _score(reader, geo, g, canv[index[id(g)]], probs[index[id(g)]]) for g in seg.glyphs}
    parts = {id(g): 1 for g in seg.glyphs}
    best: dict = {}  # (id a, id b) -> (gain, new characters, their scores) of a pair already read
    keep = list(seg.glyphs)  # every character the dicts' ids refer to stays alive (ids are not reused)
    for line in seg.lines:
        while True:
            fresh = []
            for a, b in zip(line, line[1:]):
                if (id(a), id(b)) in best or a.cols is not None or b.cols is not None:
                    continue
                em = reader.units_per_em / reader.units_per_pixel * geo.of(a)[0]
                if (parts[id(a)] + parts[id(b)] > max_parts or min(scores[id(a)], scores[id(b)]) >= 0.9
                        or b.left - a.right > max_gap_em * em):
                    best[(id(a), id(b))] = (0.0, [], [])  # two pieces that each read plausibly stay two
                    continue
                fresh.append((a, b))
            if fresh:
                unions = [_joined(seg, a, b) for a, b in fresh]
                keep += unions
                for (a, b), u, su in zip(fresh, unions, _read(seg, reader, geo, unions)):
                    floor = max(min(scores[id(a)], scores[id(b)]), 0.5)
                    move = (su - floor, [u], [su])
                    s_cut, c_a, c_b = _best_split(seg, reader, geo, u, lookahead=0)
                    pair = _pieces(seg, u, c_a, c_b) if s_cut > move[0] + floor else None
                    if pair is not None:
                        keep += pair
                        s_pair = _read(seg, reader, geo, list(pair))
                        if min(s_pair) - floor > move[0]:
                            move = (min(s_pair) - floor, list(pair), s_pair)
                    best[(id(a), id(b))] = move
            pairs = [(best.get((id(a), id(b)), (0.0, [], [])), i) for i, (a, b) in enumerate(zip(line, line[1:]))]
            if not pairs:
                break
            (gain, new, s_new), i = max(pairs, key=lambda m: m[0][0])
            if gain <= 0:
                break
            n_parts = parts[id(line[i])] + parts[id(line[i + 1])]
            for q, sq in zip(new, s_new):
                scores[id(q)] = sq
                parts[id(q)] = n_parts
            line[i : i + 2] = new
            changed = True
    return changed


def _mark_spaces(seg: Segmentation, reader: Reader, k_per_glyph: np.ndarray, labels: np.ndarray, table: str) -> None:
    """Set ``space_before`` from the ink gaps (module doc, step 4). With the source font's advance
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


# --------------------------------------------------------------------------- certificates


def certify_canvases(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, eps_a: float, method: str,
                     radius_steps: int = 10, cap: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sound float64 certificates at eps_a and certified radii of inputs x [n, 3, R, R] for ``labels``.

    IBP first; with ``method="crown-ibp"`` CROWN-IBP proves what IBP leaves. The radius searches
    [eps_a, cap] (cap = min(1, 4 eps_a); a radius equal to the cap means "at least") for the
    certified inputs and [0, eps_a) for the others: an IBP bisection in float32 as a guide, whose
    result is then proven with the float64 IBP certificate (inputs whose proof fails are bisected
    again in float64). Every radius reported is a float64 proof (or eps_a, proven above, or 0).
    Returns (certified [n] bool, radius [n] float)."""
    from a5ocr import bounds

    n = x.shape[0]
    if n == 0:
        return np.zeros(0, bool), np.zeros(0)
    cap = min(1.0, 4.0 * eps_a) if cap is None else cap

    def box(idx, eps, dtype):
        e = eps.to(dtype).view(-1, 1, 1, 1)
        xi = x[idx].to(dtype)
        return (xi - e).clamp(0.0, 1.0), (xi + e).clamp(0.0, 1.0)

    def proof(idx: torch.Tensor, eps: torch.Tensor, how: str = "ibp") -> torch.Tensor:
        return bounds.certify(model, *box(idx, eps, torch.float64), labels[idx], method=how)

    def guide(idx: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            lb = bounds.margin_lower_bounds(model, *box(idx, eps, torch.float32), labels[idx], "ibp")
        return (lb > 0).scatter(1, labels[idx].view(-1, 1), True).all(1)

    def bisect(check, idx, lo, hi):
        for _ in range(radius_steps):
            mid = 0.5 * (lo + hi)
            good = check(idx, mid)
            lo, hi = torch.where(good, mid, lo), torch.where(good, hi, mid)
        return lo

    everyone = torch.arange(n)
    eps = torch.full((n,), float(eps_a), dtype=torch.float64)
    cert = proof(everyone, eps)
    if method == "crown-ibp" and (~cert).any():
        rest = everyone[~cert]
        cert[rest] = proof(rest, eps[rest], "crown-ibp")
    floor = torch.where(cert, eps, torch.zeros_like(eps))
    radius = floor.clone()
    top = torch.where(cert, torch.full_like(eps, cap), eps)
    at_cap = torch.zeros(n, dtype=torch.bool)
    if cert.any():
        at_cap[everyone[cert]] = proof(everyone[cert], top[cert])
    radius[at_cap] = cap
    todo = everyone[~at_cap]
    if todo.numel():
        found = bisect(guide, todo, floor[todo], top[todo])
        need = found > floor[todo]
        if need.any():
            idx = todo[need]
            ok = proof(idx, found[need])
            radius[idx[ok]] = found[need][ok]
            bad = idx[~ok]
            if bad.numel():
                radius[bad] = bisect(proof, bad, floor[bad], found[need][~ok])
    return cert.numpy(), radius.numpy()


# --------------------------------------------------------------------------- results


@dataclass
class ScanChar:
    char: str
    box: list[float]  # [x0, y0, x1, y1] in the page as read
    line: int
    confidence: float
    certified: bool
    radius: float
    space_before: bool = False
    second: str = ""
    second_confidence: float = 0.0
    expected: str | None = None  # sheets: the character printed in that box

    def to_dict(self) -> dict:
        d = {"label": self.char, "box": [round(v, 2) for v in self.box], "line": self.line,
             "confidence": round(self.confidence, 6), "certified": bool(self.certified), "radius": round(self.radius, 6),
             "runner_up": self.second, "runner_up_confidence": round(self.second_confidence, 6)}
        if self.expected is not None:
            d["expected"] = self.expected
            d["correct"] = self.expected == self.char
        return d


@dataclass
class ScanResult:
    page: str
    mode: str  # "text" or "sheet"
    eps_a: float
    method: str
    chars: list[ScanChar]
    page_px: tuple[int, int]
    info: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        out, line = [], None
        for c in self.chars:
            if line is not None and c.line != line:
                out.append("\n")
            elif c.space_before:
                out.append(" ")
            out.append(c.char)
            line = c.line
        return "".join(out)

    @property
    def certified_count(self) -> int:
        return sum(c.certified for c in self.chars)

    @property
    def certified_fraction(self) -> float | None:
        return self.certified_count / len(self.chars) if self.chars else None

    def to_dict(self) -> dict:
        n = len(self.chars)
        d = {
            "format": SCAN_FORMAT, "page": self.page, "mode": self.mode, "page_px": list(self.page_px),
            "eps_a": self.eps_a, "method": self.method, "text": self.text,
            "counts": {"characters": n, "certified": self.certified_count, "uncertified": n - self.certified_count,
                       "lines": len({c.line for c in self.chars})},
            "certified_fraction": self.certified_fraction,
            "radius_cap": min(1.0, 4.0 * self.eps_a),
        }
        if any(c.expected is not None for c in self.chars):
            d["accuracy"] = sum(c.expected == c.char for c in self.chars) / n if n else None
        d.update(self.info)
        d["units"] = "box = [x0, y0, x1, y1] in pixels of the page as read (y down); radius = certified L-inf radius of the normalised character image (at the cap: at least that)"
        d["characters"] = [c.to_dict() for c in self.chars]
        return d


def _check_options(eps_a: float, method: str) -> None:
    if not (isinstance(eps_a, (int, float)) and math.isfinite(eps_a) and 0.0 < eps_a < 1.0):
        raise ScanError(f"--eps-a must be in (0, 1), got {eps_a}")
    if method not in METHODS:
        raise ScanError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")


def _results(reader: Reader, probs: np.ndarray, x: torch.Tensor, eps_a: float, method: str, boxes, lines, spaces,
             expected=None) -> list[ScanChar]:
    pred = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    cert, radius = certify_canvases(reader.model, x, torch.from_numpy(pred).long(), eps_a, method)
    out = []
    for i in range(len(pred)):
        order = np.argsort(-probs[i])
        second = int(order[1]) if probs.shape[1] > 1 else int(order[0])
        out.append(ScanChar(
            char=reader.chars[int(pred[i])], box=boxes[i], line=int(lines[i]), confidence=float(probs[i, pred[i]]),
            certified=bool(cert[i]), radius=float(radius[i]), space_before=bool(spaces[i]),
            second=reader.chars[second], second_confidence=float(probs[i, second]),
            expected=None if expected is None else expected[i],
        ))
    return out


def scan_text(gray: np.ndarray, reader: Reader, eps_a: float, method: str = "crown-ibp", page_name: str = "") -> ScanResult:
    """Read a page of running text (module doc)."""
    _check_options(eps_a, method)
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
    _, x = _classify(reader.model, canv)
    px_per_unit = float(np.median(k)) / reader.units_per_pixel
    info.update({"glyph_table": geo.table, "scale_px_per_canvas_px": round(float(np.median(k)), 4),
                 "em_px": round(reader.units_per_em * px_per_unit, 2),
                 "baselines_px": [round(float(b), 2) for b in geo.baseline]})
    if geo.slope is not None and len(geo.slope):
        info["skew_deg"] = round(seg.angle - math.degrees(math.atan(float(np.median(geo.slope)))), 3)
    boxes = [seg.page_box(g.box) for g in glyphs]
    chars = _results(reader, probs, x, eps_a, method, boxes, [g.line for g in glyphs], [g.space_before for g in glyphs])
    return ScanResult(page=page_name, mode="text", eps_a=eps_a, method=method, chars=chars,
                      page_px=(gray.shape[1], gray.shape[0]), info=info)


# --------------------------------------------------------------------------- glyph sheets


def find_layout(page: Path | str, layout: Path | str | None = None) -> dict | None:
    """The sheet layout of a page: ``layout`` if given, else ``<page stem>.layout.json`` beside it."""
    from a5ocr.export import SHEET_FORMAT, layout_path

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
    from scipy import ndimage

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
    """3x3 H with dst ~ H src (least squares over >= 4 point pairs, normalised DLT with h33 = 1)."""
    def norm(p):
        c = p.mean(0)
        s = math.sqrt(2) / max(np.sqrt(((p - c) ** 2).sum(1)).mean(), 1e-12)
        return np.array([[s, 0, -s * c[0]], [0, s, -s * c[1]], [0, 0, 1.0]])

    ts, td = norm(src), norm(dst)
    ps = (np.c_[src, np.ones(len(src))] @ ts.T)[:, :2]
    pd = (np.c_[dst, np.ones(len(dst))] @ td.T)[:, :2]
    rows, rhs = [], []
    for (x, y), (u, v) in zip(ps, pd):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rhs.append(u)
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.append(v)
    sol, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    hn = np.append(sol, 1.0).reshape(3, 3)
    hm = np.linalg.inv(td) @ hn @ ts
    return hm / hm[2, 2]


def _apply_h(hm: np.ndarray, pts: np.ndarray) -> np.ndarray:
    p = np.c_[pts, np.ones(len(pts))] @ hm.T
    return p[:, :2] / p[:, 2:3]


def scan_sheet(gray: np.ndarray, layout: dict, reader: Reader, eps_a: float, method: str = "crown-ibp",
               page_name: str = "", sheet_page: int = 0) -> ScanResult:
    """Read a scanned glyph sheet with its layout (module doc)."""
    from scipy import ndimage

    _check_options(eps_a, method)
    if str(layout["chars"]) != reader.chars or int(layout["resolution"]) != reader.resolution:
        raise ScanError("the sheet was exported from another run (its characters or resolution differ from the classifier's)")
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
    probs, x = _classify(reader.model, canv)
    rows = sorted({int(b["box_px"][1]) for b in boxes})
    line_of = [rows.index(int(b["box_px"][1])) for b in boxes]
    chars = _results(reader, probs, x, eps_a, method, page_boxes, line_of, [False] * len(boxes), expected)
    info = {"sheet_page": sheet_page + 1, "marks_px": [[round(v, 2) for v in p] for p in dst.tolist()],
            "paper": round(levels.paper, 4), "ink": round(levels.ink, 4),
            "page_eps_a": round(eps_a * levels.contrast, 6)}
    return ScanResult(page=page_name, mode="sheet", eps_a=eps_a, method=method, chars=chars,
                      page_px=(gray.shape[1], gray.shape[0]), info=info)


# --------------------------------------------------------------------------- entry points


def load_page(path: Path | str) -> np.ndarray:
    try:
        return read_page(path)
    except PageError as err:
        raise ScanError(str(err)) from None


def scan(page: Path | str, run_dir: Path | str, eps_a: float | None = None, method: str = "crown-ibp",
         layout: Path | str | None = None, classifier: Path | str | None = None, sheet_page: int = 1) -> ScanResult:
    """Read a page file: a glyph sheet when it has a layout (beside it or ``layout``), else running
    text. ``eps_a`` defaults to the run's (0.1 when unknown); ``sheet_page`` is 1-based."""
    reader = load_reader(run_dir, classifier)
    eps = float(eps_a) if eps_a is not None else (reader.eps_a_design or 0.1)
    _check_options(eps, method)
    if not (isinstance(sheet_page, int) and sheet_page >= 1):
        raise ScanError(f"--sheet-page must be a page number >= 1, got {sheet_page!r}")
    lay = find_layout(page, layout)
    gray = load_page(page)
    name = Path(page).name
    if lay is not None:
        return scan_sheet(gray, lay, reader, eps, method, name, sheet_page - 1)
    return scan_text(gray, reader, eps, method, name)


def write_json(result: ScanResult, path: Path | str) -> Path:
    from a5ocr.runio import write_json as _write

    path = Path(path)
    if path.suffix.lower() != ".json":
        raise ScanError(f"--json must end in .json, got {path.name!r}")
    if not path.parent.is_dir():
        raise ScanError(f"cannot write {path}: folder {path.parent} does not exist")
    _write(path, result.to_dict())
    return path


def write_overlay(result: ScanResult, gray: np.ndarray, path: Path | str) -> Path:
    """The page with a box per character: green certified, red not."""
    from PIL import Image, ImageDraw

    from a5ocr.scan.page import to_u8

    path = Path(path)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        raise ScanError(f"--overlay must be a .png (or .jpg, .tif), got {path.name!r}")
    img = Image.fromarray(to_u8(gray), mode="L").convert("RGB")
    draw = ImageDraw.Draw(img)
    width = max(1, round(max(gray.shape) / 1200))
    for c in result.chars:
        x0, y0, x1, y1 = c.box
        colour = (0, 170, 0) if c.certified else (230, 0, 0)
        draw.rectangle([x0 - width, y0 - width, x1 + width - 1, y1 + width - 1], outline=colour, width=width)
    try:
        write_image(path, img)
    except PageError as err:
        raise ScanError(str(err)) from None
    return path
