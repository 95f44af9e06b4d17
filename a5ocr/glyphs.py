"""Glyph prototypes: real font files -> ink images w in [0, 1].

fontTools opens and checks the font (every asked character must be in its cmap);
freetype-py rasterizes each glyph at one common scale and one common baseline, so that
case and size stay distinguishable (o/O, c/C, x/X differ as they do in print).

Each glyph is rendered at ``oversample`` times the target resolution with FreeType's
anti-aliased coverage, placed with sub-pixel precision, and box-filtered down: the value
of a pixel is the fraction of it covered by ink (1 = ink, 0 = paper). With a print scale
S > 1 the glyphs are the print: the same canvas on a grid S times finer than the sensor's.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path

import freetype
import numpy as np
import torch

from a5ocr import fonts
from a5ocr.errors import GlyphError
from a5ocr.fonts import DEFAULT_FONT, resolve_font

CHARSETS: dict[str, str] = {
    # The paper's order: A-Z (0-25), a-z (26-51), 0-9 (52-61).
    "62": string.ascii_uppercase + string.ascii_lowercase + string.digits,
    "36": string.ascii_uppercase + string.digits,
    "26": string.ascii_uppercase,
    "10": string.digits,
}


def resolve_charset(chars: str) -> str:
    """``'62'``, ``'36'``, ``'26'``, ``'10'`` or an explicit string of distinct characters."""
    if chars in CHARSETS:
        return CHARSETS[chars]
    if not chars:
        raise GlyphError("the character set is empty")
    seen: list[str] = []
    for c in chars:
        if c.isspace():
            raise GlyphError("the character set may not contain whitespace")
        if c in seen:
            raise GlyphError(f"character {c!r} is repeated in the character set")
        seen.append(c)
    if len(seen) < 2:
        raise GlyphError("a classifier needs at least 2 characters")
    return "".join(seen)


def check_font(path: Path, chars: str) -> str:
    """Open the font with fontTools, check every character is mapped; return its family name."""
    with fonts.open_font(path) as font:
        family = fonts.family_name(font, path.stem)
    missing = fonts.missing_chars(path, chars)
    if missing:
        listing = " ".join(repr(c) for c in missing)
        raise GlyphError(f"font {path.name} has no glyph for {len(missing)} character(s): {listing}")
    return family


@dataclass(frozen=True)
class GlyphSet:
    """Prototype glyphs of one font.

    ``images``: [K, N, N] float32 ink coverage in [0, 1], one per character of ``chars``, with
    N = ``print_scale`` x ``resolution`` (the print grid; ``resolution`` is the sensor's R).
    Geometry (for export back to font units), in pixels of ``images``: a canvas pixel (col, row)
    of glyph k maps to font units x = (col - origin_x[k]) * units_per_pixel,
    y = (baseline - row) * units_per_pixel.
    """

    chars: str
    images: torch.Tensor
    font_path: str
    family: str
    resolution: int
    units_per_em: int
    units_per_pixel: float
    baseline: float
    origin_x: tuple[float, ...] = field(default_factory=tuple)
    print_scale: int = 1

    @property
    def num_classes(self) -> int:
        return len(self.chars)

    @property
    def print_resolution(self) -> int:
        return self.resolution * self.print_scale


def _render(face, char: str, oversample: int):
    """Render one glyph with FreeType; returns (coverage [h, w] in [0,1], left, top) in oversampled px."""
    face.load_char(char, freetype.FT_LOAD_RENDER | freetype.FT_LOAD_NO_HINTING | freetype.FT_LOAD_TARGET_NORMAL)
    return fonts.bitmap(face.glyph)


def _paste(canvas: np.ndarray, cov: np.ndarray, x0: int, y0: int) -> None:
    """Copy coverage ``cov`` into ``canvas`` with its top-left at (x0, y0), cropped to the canvas."""
    size = canvas.shape[0]
    h, w = cov.shape
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(size, y0 + h), min(size, x0 + w)
    if ye > ys and xe > xs:
        canvas[ys:ye, xs:xe] = cov[ys - y0 : ye - y0, xs - x0 : xe - x0]


def _common_scale(face, charset: str, big: int, fill: float, name: str) -> tuple[float, int, float]:
    """(font units per oversampled px, FreeType char size in 26.6 px, baseline row in oversampled
    px) so that the union box of ``charset`` spans ``fill`` of a ``big``-px canvas, centred."""
    face.set_char_size(face.units_per_EM * 64)  # 1 pixel = 1 font unit at 72 dpi... in 26.6 units
    tops, bottoms, widths = [], [], []
    for c in charset:
        face.load_char(c, freetype.FT_LOAD_NO_SCALE | freetype.FT_LOAD_NO_HINTING)
        bbox = face.glyph.outline.get_bbox()
        tops.append(bbox.yMax)
        bottoms.append(bbox.yMin)
        widths.append(bbox.xMax - bbox.xMin)
    union_h = max(tops) - min(bottoms)
    union_w = max(widths)
    if union_h <= 0 or union_w <= 0:
        raise GlyphError(f"font {name}: the asked glyphs have no ink")
    units_per_big_px = max(union_h, union_w) / (fill * big)
    pixel_size = face.units_per_EM / units_per_big_px  # pixels per em at the oversampled size
    # Baseline row (oversampled px, from the top) that centres the union box vertically.
    top_px = max(tops) / units_per_big_px
    bottom_px = min(bottoms) / units_per_big_px
    # Rounded to a whole oversampled pixel: glyphs are placed at integer offsets, and the stored
    # baseline must be the one actually used (export maps pixels back to font units with it).
    baseline_big = float(round(big / 2 + (top_px + bottom_px) / 2))
    return units_per_big_px, int(round(pixel_size * 64)), baseline_big


def _sensor_grid(face, charset: str, resolution: int, oversample: int, baseline_big: float):
    """The glyphs on the R grid: (images [K, R, R], each glyph's pen origin in oversampled px
    (None: no ink), origin_x in R px). Each glyph is centred horizontally on its own ink box."""
    big = resolution * oversample
    images = np.zeros((len(charset), resolution, resolution), np.float32)
    pens: list[int | None] = []
    origins: list[float] = []
    for k, c in enumerate(charset):
        cov, left, top = _render(face, c, oversample)
        canvas = np.zeros((big, big), np.float32)
        if cov.size:
            ink_cols = np.nonzero(cov.max(axis=0) > 0)[0]
            centre = (ink_cols[0] + ink_cols[-1] + 1) / 2 if ink_cols.size else cov.shape[1] / 2
            x0 = int(round(big / 2 - centre))
            _paste(canvas, cov, x0, int(baseline_big) - top)
            pens.append(x0 - left)
            origins.append((x0 - left) / oversample)
        else:
            pens.append(None)
            origins.append(resolution / 2)
        images[k] = canvas.reshape(resolution, oversample, resolution, oversample).mean(axis=(1, 3))
    return images, pens, origins


def _print_grid(face, charset: str, resolution: int, scale: int, oversample: int, pens: list[int | None],
                baseline_big: float) -> np.ndarray:
    """The glyphs on the print grid, S = ``scale`` times the R grid (the face already set S times
    larger), each pen origin at S x its sensor-grid origin: [K, S*R, S*R]. FreeType puts the pen origin on a
    whole pixel, so the outline sits at exactly S x its sensor-grid position."""
    size = resolution * scale
    big = size * oversample
    images = np.zeros((len(charset), size, size), np.float32)
    for k, c in enumerate(charset):
        cov, left, top = _render(face, c, oversample)
        if cov.size and pens[k] is not None:
            canvas = np.zeros((big, big), np.float32)
            _paste(canvas, cov, pens[k] * scale + left, int(baseline_big) * scale - top)
            images[k] = canvas.reshape(size, oversample, size, oversample).mean(axis=(1, 3))
    return images


def rasterize(
    font: str | Path = DEFAULT_FONT,
    chars: str = "62",
    resolution: int = 32,
    fill: float = 0.8,
    oversample: int = 4,
    print_scale: int = 1,
) -> GlyphSet:
    """Rasterize ``chars`` of ``font`` into [K, S*R, S*R] ink images at one common scale and baseline.

    The scale is chosen so that the union of all glyph boxes (tallest ascender to deepest
    descender, widest glyph) spans ``fill`` of the canvas; the baseline is common to all glyphs
    and each glyph is centred horizontally on its own ink box. ``resolution`` is the sensor's R;
    ``print_scale`` S renders the same canvas S times finer (the print): the placement is the
    R grid's, scaled by S, so box-filtering the print S x S gives the R raster up to FreeType's
    coverage quantisation (``tests/test_glyphs.py``). The geometry fields are in print pixels.
    """
    if resolution < 8:
        raise GlyphError("resolution must be at least 8 pixels")
    if not 0.1 <= fill <= 1.0:
        raise GlyphError("fill must be in [0.1, 1]")
    if isinstance(print_scale, bool) or not isinstance(print_scale, int) or print_scale < 1:
        raise GlyphError(f"the print scale must be an integer of at least 1, got {print_scale!r}")
    charset = resolve_charset(chars)
    path = resolve_font(font)
    family = check_font(path, charset)
    face = fonts.open_face(path)
    units_per_big_px, char_size, baseline_big = _common_scale(face, charset, resolution * oversample, fill, path.name)
    face.set_char_size(char_size)
    images, pens, origins = _sensor_grid(face, charset, resolution, oversample, baseline_big)
    if print_scale > 1:
        face.set_char_size(char_size * print_scale)
        images = _print_grid(face, charset, resolution, print_scale, oversample, pens, baseline_big)
    return GlyphSet(
        chars=charset,
        images=torch.from_numpy(np.clip(images, 0.0, 1.0)),
        font_path=str(path),
        family=family,
        resolution=resolution,
        units_per_em=int(face.units_per_EM),
        units_per_pixel=units_per_big_px * oversample / print_scale,
        baseline=baseline_big / oversample * print_scale,
        origin_x=tuple(o * print_scale for o in origins),
        print_scale=print_scale,
    )
