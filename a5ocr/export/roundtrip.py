"""The round-trip check of an exported font: render it at the run's exact canvas geometry and
compare ink masks with the prototypes.

``rasterize_at_design`` renders any font with the run's canvas geometry (``a5ocr.glyphs.rasterize``
instead re-derives scale and placement from the new outlines' union box, which moves when the
design grows or shrinks the ink); ``iou`` compares the ink > level masks per glyph.
"""

from __future__ import annotations

import math
from pathlib import Path

import freetype
import numpy as np
import torch

from a5ocr import fonts
from a5ocr.errors import ExportError, GlyphError
from a5ocr.runs import Design


def rasterize_at_design(font_path: Path | str, design: Design, oversample: int = 4) -> torch.Tensor:
    """Render ``design.chars`` of a font with FreeType at the run's exact canvas geometry -> [K, N, N] ink.

    N is the print resolution S*R (the design's grid; R at S = 1), where the geometry lives: the
    origin of glyph k is placed at canvas (origin_x[k], baseline) and one canvas pixel is
    ``units_per_pixel`` font units; each pixel is the ink coverage (FreeType anti-aliasing at
    ``oversample`` x the resolution, box-filtered), as in ``a5ocr.glyphs.rasterize``. The result
    replaces ``design.robust`` in the run's acquisition (which integrates it onto the R sensor).
    """
    r = design.print_resolution
    big = r * oversample
    try:
        face = fonts.open_face(font_path)
    except GlyphError as err:
        raise ExportError(str(err)) from None
    upem = face.units_per_EM
    face.set_char_size(upem * 64)  # 1 px per font unit
    scale = oversample / design.units_per_pixel  # oversampled px per font unit
    s16 = int(round(scale * 65536))
    matrix = freetype.Matrix(s16, 0, 0, s16)
    out = np.zeros((len(design.chars), r, r), np.float32)
    for k, c in enumerate(design.chars):
        ox, oy = design.origin_x[k] * oversample, design.baseline * oversample
        ix, iy = math.floor(ox), math.ceil(oy)
        dx, dy = int(round((ox - ix) * 64)), int(round((iy - oy) * 64))
        face.set_transform(matrix, freetype.Vector(dx, dy))
        face.load_char(c, freetype.FT_LOAD_RENDER | freetype.FT_LOAD_NO_HINTING)
        cov, left, top = fonts.bitmap(face.glyph)
        if cov.size == 0:
            continue
        x0, y0 = ix + left, iy - top
        h, w = cov.shape
        canvas = np.zeros((big, big), np.float32)
        ys, xs, ye, xe = max(0, y0), max(0, x0), min(big, y0 + h), min(big, x0 + w)
        if ye > ys and xe > xs:
            canvas[ys:ye, xs:xe] = cov[ys - y0 : ye - y0, xs - x0 : xe - x0]
        out[k] = canvas.reshape(r, oversample, r, oversample).mean(axis=(1, 3))
    return torch.from_numpy(np.clip(out, 0.0, 1.0))


def iou(a: torch.Tensor, b: torch.Tensor, level: float = 0.5) -> torch.Tensor:
    """Per-glyph IoU of the ink masks ``a > level`` and ``b > level``; a, b: [K, R, R] -> [K] (1 where both empty)."""
    ma, mb = a > level, b > level
    inter = (ma & mb).flatten(1).sum(1).float()
    union = (ma | mb).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
