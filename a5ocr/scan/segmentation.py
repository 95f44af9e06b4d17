"""A page split into lines of characters (``a5ocr scan``, steps 3 and 4).

**Deskew**: above 0.05 degree (``binarize.estimate_skew``) the page is rotated back (bilinear,
enlarged so nothing is cut). What is left (the profile is coarse on a few short lines) is taken
up by the baselines, fitted with a slope per line (``geometry``). Boxes are reported in the
coordinates of the page as read (``Segmentation.page_box``).

**Characters**: 8-connected components of the mask (``scipy.ndimage.label``); specks smaller
than (0.06 h)^2 px (h = the 75th percentile component height) are dropped. Lines: components of
height >= 0.35 h, in order of their vertical centre, join the line whose vertical span covers at
least half their height; smaller ones join the line whose span (grown by half its height) holds
their centre, or are dropped. Within a line, pieces stacked vertically (horizontal overlap >=
half the narrower, vertical overlap <= a quarter of the shorter) are one character: the dots of
i and j, and strokes broken by a light print. Each character owns the page pixels nearest to its
components (Euclidean distance transform, up to 0.04 h px: the anti-aliased fringe); neighbours'
ink is masked out (``isolated``). Characters in pieces side by side, or touching, are regrouped
by recognition afterwards (``a5ocr.scan.regroup``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_array
from scipy.sparse.csgraph import connected_components

from a5ocr.scan.binarize import Levels, estimate_skew, ink_mask, paper_and_ink
from a5ocr.scan.ink import ink_extents
from a5ocr.scan.page import rotate_box, rotate_image


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
    """Groups (indices, ascending) of boxes stacked vertically (see the module doc): the connected
    components (``scipy.sparse.csgraph``) of the pairs our stacking test accepts, in order of their
    first box."""
    n = len(boxes)
    pi, pj = [], []
    order = sorted(range(n), key=lambda i: boxes[i][0])
    for ii, i in enumerate(order):
        x0, y0, x1, y1 = boxes[i]
        for j in order[ii + 1 :]:
            u0, v0, u1, v1 = boxes[j]
            if u0 >= x1:  # sorted by x0: no later box overlaps box i horizontally
                break
            hov = _overlap(x0, x1, u0, u1)
            vov = _overlap(y0, y1, v0, v1)
            if hov >= 0.5 * min(x1 - x0, u1 - u0) and vov <= 0.25 * min(y1 - y0, v1 - v0):
                pi.append(i)
                pj.append(j)
    graph = coo_array((np.ones(len(pi), np.int8), (pi, pj)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(int(label[i]), []).append(i)
    return list(groups.values())


def segment(gray: np.ndarray, deskew: bool = True) -> Segmentation:
    """Binarise, deskew and split a page into lines of characters (the module doc)."""
    shape_in = gray.shape
    levels = paper_and_ink(gray)
    empty = Segmentation(gray=gray, coverage=np.zeros_like(gray), labels=np.zeros(gray.shape, np.int32),
                         levels=levels, angle=0.0, shape_in=shape_in)
    if levels is None:
        return empty
    gray, mask, angle = _deskewed(gray, levels, deskew)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    seg = Segmentation(gray=gray, coverage=levels.coverage(gray), labels=labels, levels=levels, angle=angle, shape_in=shape_in)
    if n == 0:
        return seg
    found = _character_components(labels, n, mask.shape[1])
    if found is None:
        return seg
    keep, h_ref = found
    seg.ref_height = h_ref
    spans, members = _lines_of_tall_components(keep, h_ref)
    spans, members = _merge_overlapping_lines(spans, members)
    _attach_small_components(keep, h_ref, spans, members)
    for li, comps in enumerate(members):
        seg.lines.append(_line_glyphs(keep, comps, li))
    _isolate_and_measure(seg)
    return seg


def _deskewed(gray: np.ndarray, levels: Levels, deskew: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """(page, ink mask, angle): the page rotated back by its skew when above 0.05 degree (else as
    read, angle 0)."""
    mask = ink_mask(gray, levels)
    angle = estimate_skew(mask) if deskew else 0.0
    if abs(angle) > 0.05:
        gray = rotate_image(gray, -angle, fill=levels.paper, expand=True, order=1)
        mask = ink_mask(gray, levels)
    else:
        angle = 0.0
    return gray, mask, angle


def _character_components(labels: np.ndarray, n: int, page_w: int) -> tuple[dict, float] | None:
    """(component -> box [x0, y0, x1, y1) of the components that may be characters, the reference
    height h); None when there are none. Specks, and components far too tall or wide, are dropped."""
    slices = ndimage.find_objects(labels)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    boxes = {}
    for i, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        boxes[i] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    heights = np.array([b[3] - b[1] for i, b in boxes.items() if areas[i] >= 8], np.float64)
    if heights.size == 0:
        return None
    h_ref = float(np.percentile(heights, 75))
    min_area = max(3.0, (0.06 * h_ref) ** 2)
    keep = {i: b for i, b in boxes.items()
            if areas[i] >= min_area and (b[3] - b[1]) <= 6 * h_ref and (b[2] - b[0]) <= max(6 * h_ref, 0.02 * page_w)}
    if not keep:
        return None
    return keep, h_ref


def _lines_of_tall_components(keep: dict, h_ref: float) -> tuple[list[list[float]], list[list[int]]]:
    """Lines (vertical spans [y0, y1], member components) of the components of height >= 0.35 h."""
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
    return line_spans, members


def _merge_overlapping_lines(line_spans: list[list[float]], members: list[list[int]]) -> tuple[list, list]:
    """Lines whose spans overlap heavily (a line started by a descender or a dot) as one, top to bottom."""
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
    return merged_spans, merged_members


def _attach_small_components(keep: dict, h_ref: float, spans: list, members: list) -> None:
    """Components below 0.35 h join the line whose span, grown by half its height, holds their centre."""
    for i, b in keep.items():
        if b[3] - b[1] >= 0.35 * h_ref:
            continue
        cy = 0.5 * (b[1] + b[3])
        best, best_d = -1, math.inf
        for li, (s0, s1) in enumerate(spans):
            grow = 0.5 * (s1 - s0)
            d = 0.0 if s0 <= cy <= s1 else min(abs(cy - s0), abs(cy - s1))
            if d <= grow and d < best_d:
                best, best_d = li, d
        if best >= 0:
            members[best].append(i)


def _line_glyphs(keep: dict, comps: list[int], li: int) -> list[Glyph]:
    """The characters of line ``li`` (its components stacked vertically merged), left to right."""
    cboxes = [keep[i] for i in comps]
    line = []
    for group in _merge_stacked(cboxes):
        gb = [cboxes[g] for g in group]
        box = (min(b[0] for b in gb), min(b[1] for b in gb), max(b[2] for b in gb), max(b[3] for b in gb))
        line.append(Glyph(comps=[comps[g] for g in group], box=box, line=li))
    line.sort(key=lambda g: 0.5 * (g.box[0] + g.box[2]))
    return line


def _isolate_and_measure(seg: Segmentation) -> None:
    """Per line: which component owns each pixel (the nearest component ink within ``seg.dmax``
    px; ``seg.owner_bands``; a character owns the pixels of its components, so characters can be
    regrouped without recomputing the map) and each character's sub-pixel ink extents."""
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
            measure(seg, g)


def glyph_window(seg: Segmentation, g: Glyph) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) around a character's box with its fringe, inside its line's band."""
    b0, b1, _ = seg.owner_bands[g.line]
    m = int(math.ceil(seg.dmax)) + 1
    return max(0, g.box[0] - m), max(b0, g.box[1] - m), min(seg.labels.shape[1], g.box[2] + m), min(b1, g.box[3] + m)


def owned(seg: Segmentation, g: Glyph, window: tuple[int, int, int, int]) -> np.ndarray:
    """Boolean map of the pixels of ``g`` over ``window`` = (x0, y0, x1, y1) (inside its line's band)."""
    xa, ya, xb, yb = window
    b0, _, owner = seg.owner_bands[g.line]
    band = owner[ya - b0 : yb - b0, xa:xb]
    own = band == g.comps[0] if len(g.comps) == 1 else np.isin(band, g.comps)
    if g.cols is not None:
        cols = np.arange(xa, xb)
        own &= ((cols >= g.cols[0]) & (cols < g.cols[1]))[None, :]
    return own


def isolated(seg: Segmentation, g: Glyph, window: tuple[int, int, int, int]) -> np.ndarray:
    """Coverage of ``g`` alone over ``window`` = (x0, y0, x1, y1) (inside its line's band)."""
    xa, ya, xb, yb = window
    return np.where(owned(seg, g, window), seg.coverage[ya:yb, xa:xb], 0.0).astype(np.float32)


def measure(seg: Segmentation, g: Glyph) -> None:
    """Sub-pixel 0.5-level ink extents of a character (deskewed page px)."""
    xa, ya, xb, yb = win = glyph_window(seg, g)
    iso = isolated(seg, g, win)
    t, bt = ink_extents(iso.max(axis=1))
    lf, rt = ink_extents(iso.max(axis=0))
    g.top, g.bottom, g.left, g.right = ya + t, ya + bt, xa + lf, xa + rt
