"""Glyph prototypes: real font files -> ink images w in [0, 1].

fontTools opens and checks the font (every asked character must be in its cmap);
freetype-py rasterizes each glyph at one common scale and one common baseline, so that
case and size stay distinguishable (o/O, c/C, x/X differ as they do in print).

Each glyph is rendered at ``oversample`` times the target resolution with FreeType's
anti-aliased coverage, placed with sub-pixel precision, and box-filtered down: the value
of a pixel is the fraction of it covered by ink (1 = ink, 0 = paper).
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

    ``images``: [K, R, R] float32 ink coverage in [0, 1], one per character of ``chars``.
    Geometry (for export back to font units): a canvas pixel (col, row) of glyph k maps to
    font units x = (col - origin_x[k]) * units_per_pixel, y = (baseline - row) * units_per_pixel.
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

    @property
    def num_classes(self) -> int:
        return len(self.chars)


def _render(face, char: str, oversample: int):
    """Render one glyph with FreeType; returns (coverage [h, w] in [0,1], left, top) in oversampled px."""
    face.load_char(char, freetype.FT_LOAD_RENDER | freetype.FT_LOAD_NO_HINTING | freetype.FT_LOAD_TARGET_NORMAL)
    return fonts.bitmap(face.glyph)


def rasterize(
    font: str | Path = DEFAULT_FONT,
    chars: str = "62",
    resolution: int = 32,
    fill: float = 0.8,
    oversample: int = 4,
) -> GlyphSet:
    """Rasterize ``chars`` of ``font`` into [K, R, R] ink images at one common scale and baseline.

    The scale is chosen so that the union of all glyph boxes (tallest ascender to deepest
    descender, widest glyph) spans ``fill`` of the canvas; the baseline is common to all glyphs
    and each glyph is centred horizontally on its own ink box.
    """
    if resolution < 8:
        raise GlyphError("resolution must be at least 8 pixels")
    if not 0.1 <= fill <= 1.0:
        raise GlyphError("fill must be in [0.1, 1]")
    charset = resolve_charset(chars)
    path = resolve_font(font)
    family = check_font(path, charset)
    face = fonts.open_face(path)

    # Measure the union box in font units from the outlines' control boxes.
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
        raise GlyphError(f"font {path.name}: the asked glyphs have no ink")
    big = resolution * oversample
    units_per_big_px = max(union_h, union_w) / (fill * big)
    pixel_size = face.units_per_EM / units_per_big_px  # pixels per em at the oversampled size
    face.set_char_size(int(round(pixel_size * 64)))
    # Baseline row (oversampled px, from the top) that centres the union box vertically.
    top_px = max(tops) / units_per_big_px
    bottom_px = min(bottoms) / units_per_big_px
    # Rounded to a whole oversampled pixel: glyphs are placed at integer offsets, and the stored
    # baseline must be the one actually used (export maps pixels back to font units with it).
    baseline_big = float(round(big / 2 + (top_px + bottom_px) / 2))

    images = np.zeros((len(charset), resolution, resolution), np.float32)
    origins: list[float] = []
    for k, c in enumerate(charset):
        cov, left, top = _render(face, c, oversample)
        canvas = np.zeros((big, big), np.float32)
        if cov.size:
            ink_cols = np.nonzero(cov.max(axis=0) > 0)[0]
            centre = (ink_cols[0] + ink_cols[-1] + 1) / 2 if ink_cols.size else cov.shape[1] / 2
            x0 = int(round(big / 2 - centre))
            y0 = int(baseline_big) - top
            h, w = cov.shape
            ys, xs = max(0, y0), max(0, x0)
            ye, xe = min(big, y0 + h), min(big, x0 + w)
            if ye > ys and xe > xs:
                canvas[ys:ye, xs:xe] = cov[ys - y0 : ye - y0, xs - x0 : xe - x0]
            origins.append((x0 - left) / oversample)
        else:
            origins.append(resolution / 2)
        images[k] = canvas.reshape(resolution, oversample, resolution, oversample).mean(axis=(1, 3))
    return GlyphSet(
        chars=charset,
        images=torch.from_numpy(np.clip(images, 0.0, 1.0)),
        font_path=str(path),
        family=family,
        resolution=resolution,
        units_per_em=int(face.units_per_EM),
        units_per_pixel=units_per_big_px * oversample,
        baseline=baseline_big / oversample,
        origin_x=tuple(origins),
    )
