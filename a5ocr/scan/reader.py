"""A design run as a reader of printed characters: its classifier, the canvas geometry that
characters are normalised to, and the prototype tables they are compared with.

The prototypes are the robust glyphs as the exported font prints them (``as_printed``: the 0.5
iso-line of the design) and the original glyphs; a page may be printed in either font. Per
table and class: the ink box (0.5-level crossings), the rows' ink moments and the canvas; with
the source font's advance widths, the side bearings of the ink (for the spaces).

**Print and sensor.** A design with print scale S > 1 holds its glyphs at the print resolution
S*R with its geometry in print pixels; the classifier reads the sensor's R x R. Page characters
are normalised to the sensor canvas (``Reader.resolution`` = R, ``units_per_pixel`` x S,
``baseline`` / S), and the prototypes they are compared with are the print (as printed at S*R)
box-filtered S x S onto it (``acquisition.sensor_integrate``): each sensor pixel the mean of the
print pixels it covers, as the acquisition sees the print and as the page's coverage is
re-binned (``geometry.normalize_glyph``).

**The acquisition's mean pose.** The classifier was trained on acquisitions, never on the
canvas itself: the camera's perspective moves each corner of the canvas inward by
U(0, distortion x (R - 1) / 2) per axis with probability ``perspective_p`` (shift and rotation
have mean 0), so a typical acquired glyph is the canvas shrunk about its centre by
``mean_pose_scale`` = 1 - perspective_p x distortion / 2 (0.876 for the default camera). The
identity canvas is at the edge of that distribution, where a classifier can be unsure (measured
on the 62-character CPU run: its own robust 0 at the identity canvas is read as O, at 0.876 as
0). So ``Reader.classify`` shows the classifier each normalised canvas in the mean pose
(``pose_canvases``: exact box re-binning, an average, so the certificate's page budget argument
holds unchanged); the geometry fit works on the identity canvases, against identity
prototypes. The pose comes from the run's config.json; a run without one is read at the
identity (scale 1).

**Outside the alphabet.** The classifier has no reject class: a hyphen, slash, full stop or
colon is read as one of the run's characters, often with full confidence and even certified
(the certificate is about the classifier's input, not about which character was printed). So
the reader compares each normalised character with the prototype of the class it was read as
(``outside_alphabet``): a character is reported as outside the alphabet (``OUTSIDE_MARK``, not
certified) when its ink differs from the prototype's by more than ``OUTSIDE_ERROR`` (squared
difference relative to the prototype's ink) AND its ink's top or bottom is off the prototype's
by more than ``OUTSIDE_BOX``, or its width by more than ``OUTSIDE_WIDTH``, of the prototype's
height, or more than ``OUTSIDE_GAP`` of the rows the prototype inks hold no ink in the character
(no pixel above ``GAP_INK``). Both, because a heavy (bold) print changes the ink but hardly the
box or the inked rows, while the marks `-.` are far lower than any letter or digit, `/` spans
other rows than the 7 or l it is read as, a mark merged with a letter (`/W` read as M) is wider,
and a colon read as `i` spans the i's rows (its upper dot where the i's dot is, at S = 4) but
leaves the rows of the i's stem between its dots empty. Measured on degraded 300-dpi
serial-number pages at 12 and 9 pt (``benchmarks/scan_serial.py``, the 62-character CPU run,
both fonts): designed characters read correctly: ink error 0.07-0.25 (up to 1.3 for a letter
with a touching neighbour), height mismatch 99% <= 0.04, width mismatch <= 0.38; the `-/.:` read
as a letter: ink error >= 0.49, height mismatch >= 0.139; `/W` read as M: width mismatch 0.51-0.53.

The classifier sees ``x = 1 - w`` on 3 channels for an ink canvas w (``Acquisition``'s
convention, paper = 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import freetype
import numpy as np
import torch
from scipy import ndimage

from a5ocr import fonts
from a5ocr.acquisition import AcquisitionConfig, sensor_integrate
from a5ocr.errors import CheckpointError, GlyphError, RunError, ScanError
from a5ocr.models import load_classifier
from a5ocr.runs import load_design, read_json
from a5ocr.scan.ink import area_weights, ink_extents, row_moments

OUTSIDE_ERROR = 0.4  # prototype ink error above which a character may be outside the alphabet (module doc)
OUTSIDE_BOX = 0.1  # and top / bottom mismatch, as a fraction of the prototype's height
OUTSIDE_WIDTH = 0.45  # or width mismatch, as a fraction of the prototype's height
OUTSIDE_GAP = 0.3  # or the fraction of the prototype's inked rows left without ink (module doc)
GAP_INK = 0.2  # a row of the canvas with no pixel above this holds no ink
OUTSIDE_MARK = "\ufffd"  # what such a character is reported as (the Unicode replacement character)
MARKS = "-/.:,;"  # punctuation of labels and serial numbers that a split may find beside a letter (``mark_prototypes``)


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
    tables: dict  # name -> {"top", "bottom", "left", "right", "mean_y", "std_y": [K], "glyphs": [K, R, R]} (sensor px)
    bearings: dict  # name -> (left side bearing [K], right side bearing [K]) of the ink, font units (or None)
    run_dir: str = ""
    classifier_path: str = ""
    eps_a_design: float | None = None
    print_scale: int = 1  # the design's glyphs are S*R; everything above is on the sensor's R
    pose_scale: float = 1.0  # the acquisition's mean pose (module doc): what the classifier is shown
    marks: dict | None = None  # the source font's ``MARKS`` on the canvas (``mark_prototypes``); None without the font

    def classify(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised canvases [n, R, R] -> (probabilities [n, K], classifier inputs x [n, 3, R, R]),
        each canvas shown in the acquisition's mean pose (``pose_canvases``); x is what a certificate is about."""
        return classify(self.model, pose_canvases(w, self.pose_scale))

    @property
    def tallest_above_baseline(self) -> float:
        """Canvas px from the baseline up to the highest ink of any robust glyph."""
        return float(self.baseline - np.min(self.tables["robust"]["top"]))


def mean_pose_scale(cfg: AcquisitionConfig) -> float:
    """The scale about the canvas centre of the acquisition's mean pose (module doc): each corner
    moves inward by distortion x (R - 1) / 4 on average with probability perspective_p."""
    return 1.0 - cfg.perspective_p * cfg.distortion / 2.0


def pose_canvases(w: np.ndarray, scale: float) -> np.ndarray:
    """Canvases [n, R, R] shrunk by ``scale`` about the canvas centre c = R / 2 by exact box
    re-binning: posed pixel j is the mean of the canvas over [c + (j - c) / s, c + (j + 1 - c) / s)
    (outside the canvas is paper); the identity at scale 1."""
    w = np.asarray(w, np.float32)
    if scale == 1.0 or not len(w):
        return w
    r = w.shape[-1]
    p = area_weights(r / 2 * (1 - 1 / scale), 1 / scale, r, r)
    # two matrix products (p @ w @ p.T per canvas): the same sums as one einsum, which without
    # optimize=True loops over all four indices (O(n R^4): 31 ms against 0.2 ms for 22 canvases)
    return (p @ w.astype(np.float64) @ p.T).astype(np.float32)


def _pose_of_run(run_dir: Path) -> float:
    """``mean_pose_scale`` of the run's acquisition (config.json); 1 without a config (module doc)."""
    try:
        rec = read_json(run_dir / "config.json")
        cfg = (rec or {}).get("config")
        if not isinstance(cfg, dict):
            return 1.0
        return mean_pose_scale(AcquisitionConfig.from_dict(cfg.get("acquisition") or {}))
    except (RunError, TypeError, ValueError) as err:
        raise ScanError(f"{run_dir / 'config.json'}: bad acquisition config ({err})") from None


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


def sensor_prototypes(w: np.ndarray, print_scale: int) -> np.ndarray:
    """Print-resolution glyphs [K, S*R, S*R] box-filtered S x S onto the sensor grid [K, R, R]
    (``acquisition.sensor_integrate``: each sensor pixel the mean of the print pixels it covers)."""
    x = torch.from_numpy(np.ascontiguousarray(w, np.float64))[:, None]
    return sensor_integrate(x, print_scale)[:, 0].numpy()


def _prototype_tables(design, advance: np.ndarray | None) -> tuple[dict, dict]:
    """The "robust" (as printed) and "original" prototype tables of a design on the sensor grid
    (the module doc), and the side bearings of their ink (None without the source font's advance widths)."""
    s = design.print_scale
    origin = np.array(design.origin_x, np.float64) / s  # sensor px
    upp = design.units_per_pixel * s  # font units per sensor px
    tables, bearings = {}, {}
    for name in ("robust", "original"):
        w = getattr(design, name).numpy().astype(np.float64)
        if name == "robust":  # as printed at the print resolution, 1/8 sensor px either way
            w = np.stack([as_printed(g, design.ink, oversample=max(2, 8 // s)) for g in w])
        w = sensor_prototypes(w, s)
        tops, bottoms = (np.array(v, np.float64) for v in zip(*(ink_extents(g.max(axis=1)) for g in w)))
        lefts, rights = (np.array(v, np.float64) for v in zip(*(ink_extents(g.max(axis=0)) for g in w)))
        mean_y, std_y = (np.array(v, np.float64) for v in zip(*(row_moments(g) for g in w)))
        tables[name] = {"top": tops, "bottom": bottoms, "left": lefts, "right": rights,
                        "mean_y": mean_y, "std_y": std_y, "glyphs": w.astype(np.float32)}
        if advance is None:
            bearings[name] = None
        else:
            lsb = (lefts - origin) * upp
            rsb = advance - (rights - origin) * upp
            bearings[name] = (np.nan_to_num(lsb), np.nan_to_num(rsb))
    return tables, bearings


def load_reader(run_dir: Path | str, classifier: Path | str | None = None) -> Reader:
    """Read a design run (``glyphs.safetensors`` and ``classifier.safetensors``, or ``classifier``)."""
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
    tables, bearings = _prototype_tables(design, advance)
    s = design.print_scale
    return Reader(
        chars=design.chars, model=model, resolution=design.resolution, units_per_pixel=design.units_per_pixel * s,
        units_per_em=design.units_per_em, baseline=design.baseline / s,
        space_units=space, tables=tables, bearings=bearings,
        run_dir=str(run_dir), classifier_path=str(path), eps_a_design=design.eps_a, print_scale=s,
        pose_scale=_pose_of_run(Path(run_dir)),
        marks=mark_prototypes(design, MARKS),
    )


def mark_prototypes(design, marks: str, oversample: int = 8) -> dict | None:
    """The source font's punctuation ``marks`` (those it maps and the run does not design) framed
    as ``a5ocr.glyphs.rasterize`` frames the designed glyphs, on the sensor canvas: the design's
    font units per pixel and baseline, each centred on its own ink box, rendered by FreeType
    ``oversample`` times finer and box-filtered down. The exported robust font keeps the source's
    punctuation, so these are how a page in either font prints them. {"chars", "glyphs" [M, R, R],
    "top", "bottom", "left", "right" [M]}; None when the font is gone or maps none of them."""
    path = fonts.shipped_twin(design.font_path)
    if path is None:
        return None
    try:
        mapped = fonts.cmap(path)
        face = fonts.open_face(path)
    except GlyphError:
        return None
    chars = "".join(c for c in marks if ord(c) in mapped and c not in design.chars)
    if not chars:
        return None
    r, s = design.resolution, design.print_scale
    big = r * oversample
    face.set_char_size(int(round(design.units_per_em / (design.units_per_pixel * s) * oversample * 64)))
    base = int(round(design.baseline / s * oversample))
    glyphs = np.zeros((len(chars), r, r), np.float64)
    for k, c in enumerate(chars):
        face.load_char(c, freetype.FT_LOAD_RENDER | freetype.FT_LOAD_NO_HINTING | freetype.FT_LOAD_TARGET_NORMAL)
        cov, _, top = fonts.bitmap(face.glyph)
        cols = np.nonzero(cov.max(axis=0) > 0)[0] if cov.size else np.zeros(0, int)
        if not cols.size:
            continue
        canvas = np.zeros((big + cov.shape[0], big + cov.shape[1]), np.float64)  # room for a glyph past the edge
        x0, y0 = int(round(big / 2 - (cols[0] + cols[-1] + 1) / 2)), base - top
        ys, xs = max(0, y0), max(0, x0)
        canvas[ys : y0 + cov.shape[0], xs : x0 + cov.shape[1]] = cov[ys - y0 :, xs - x0 :]
        glyphs[k] = canvas[:big, :big].reshape(r, oversample, r, oversample).mean(axis=(1, 3))
    chars, glyphs = _with_pieces(chars, glyphs)
    tops, bottoms = (np.array(v, np.float64) for v in zip(*(ink_extents(g.max(axis=1)) for g in glyphs)))
    lefts, rights = (np.array(v, np.float64) for v in zip(*(ink_extents(g.max(axis=0)) for g in glyphs)))
    return {"chars": chars, "glyphs": glyphs.astype(np.float32), "top": tops, "bottom": bottoms, "left": lefts, "right": rights}


def as_printed(w: np.ndarray, ink: str = "gray", oversample: int = 8) -> np.ndarray:
    """A designed glyph [N, N] (its own grid: the print) as the exported font prints it at the design geometry: a font
    outline is monochrome, the 0.5 iso-line of the bilinear interpolant of the design (gray
    designs; ``a5ocr.export``'s "contour" outline) or the ink > 0.5 pixels (binary designs);
    the result is its coverage per canvas pixel."""
    if ink == "binary":
        return (w > 0.5).astype(np.float64)
    r = w.shape[0]
    fine = (np.arange(r * oversample) + 0.5) / oversample - 0.5  # pixel-index coordinates
    rr, cc = np.meshgrid(fine, fine, indexing="ij")
    up = ndimage.map_coordinates(w.astype(np.float64), [rr.ravel(), cc.ravel()], order=1, mode="constant", cval=0.0)
    solid = (up.reshape(r * oversample, r * oversample) > 0.5).astype(np.float64)
    return solid.reshape(r, oversample, r, oversample).mean(axis=(1, 3))


def outside_alphabet(canv: np.ndarray, labels: np.ndarray, table: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised canvases [n, R, R] against the prototypes of the classes read (``table``, one of
    ``Reader.tables``; the module doc): (outside [n] bool, ink error |canvas - prototype|^2 /
    |prototype|^2 [n], box mismatch [n]: max(|top - top_p|, |bottom - bottom_p|) / height_p, or
    the width mismatch scaled by OUTSIDE_BOX / OUTSIDE_WIDTH, or the empty fraction of the
    prototype's inked rows scaled by OUTSIDE_BOX / OUTSIDE_GAP, when that is larger; inf without ink)."""
    n = len(canv)
    if not n:
        return np.zeros(0, bool), np.zeros(0), np.zeros(0)
    y = np.asarray(labels, np.int64)
    p = table["glyphs"][y].astype(np.float64)
    err = ((canv - p) ** 2).sum(axis=(1, 2)) / np.maximum((p**2).sum(axis=(1, 2)), 1e-9)
    row_ink = np.asarray(canv).max(axis=2)  # [n, R] each row's darkest pixel
    top, bottom = (np.array(v, np.float64) for v in zip(*(ink_extents(r) for r in row_ink)))
    left, right = (np.array(v, np.float64) for v in zip(*(ink_extents(c.max(axis=0)) for c in canv)))
    height = np.maximum(table["bottom"][y] - table["top"][y], 1e-6)
    rows = np.maximum(np.abs(top - table["top"][y]), np.abs(bottom - table["bottom"][y])) / height
    width = np.abs((right - left) - (table["right"][y] - table["left"][y])) / height
    inked = p.max(axis=2) > 0.5  # [n, R] the prototype's inked rows
    empty = (inked & (row_ink <= GAP_INK)).sum(1) / np.maximum(inked.sum(1), 1)
    box = np.maximum(np.maximum(rows, width * (OUTSIDE_BOX / OUTSIDE_WIDTH)), empty * (OUTSIDE_BOX / OUTSIDE_GAP))
    # one number: > OUTSIDE_BOX is outside
    box = np.where(np.isfinite(box), box, np.inf)
    return (err > OUTSIDE_ERROR) & (box > OUTSIDE_BOX), err, box


def _with_pieces(chars: str, glyphs: np.ndarray) -> tuple[str, np.ndarray]:
    """Marks that print in pieces (the dots of a colon, a semicolon's dot and comma) and each of
    their pieces apart, as the same mark: a letter touching one dot of a colon takes it into its
    own component, and the split that frees the letter leaves the dot alone. Pieces are the
    8-connected components of the ink above 0.05, each with the ink within a pixel of it."""
    out_chars, out = list(chars), list(glyphs)
    for c, g in zip(chars, glyphs):
        lab, n = ndimage.label(g > 0.05, structure=np.ones((3, 3), bool))
        for i in range(1, n + 1 if n > 1 else 1):
            near = ndimage.binary_dilation(lab == i, structure=np.ones((3, 3), bool))
            out_chars.append(c)
            out.append(np.where(near, g, 0.0))
    return "".join(out_chars), np.stack(out)


def classify(model: torch.nn.Module, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ink canvases [n, R, R] -> (probabilities [n, K], x [n, 3, R, R] = 1 - w)."""
    x = torch.from_numpy(1.0 - np.clip(w, 0.0, 1.0)).float().unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1).numpy() if len(x) else np.zeros((0, 1))
    return probs, x
