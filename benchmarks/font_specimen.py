"""The README picture of an exported font: source glyphs and robust glyphs at 72 pt, side by side.

    python benchmarks/font_specimen.py RUN_DIR docs/font-72pt.png [--text "AaBbGg08 SN-4521/B."] [--dpi 150] [--format otf]

Exports the run's font (``a5ocr.export.export_font``, TrueType or ``--format otf``: CFF, default outline) to a temporary
folder and sets the same text in the source font (top) and the exported font (bottom) with
FreeType at 72 pt and ``--dpi`` (anti-aliased, unhinted, the fonts' own advances and kerning
unused), labelled with each font's family name.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import freetype
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from a5ocr import fonts
from a5ocr.export import export_font
from a5ocr.export.common import source_font
from a5ocr.runs import load_design


def set_line(font_path: Path, text: str, pt: float, dpi: int) -> np.ndarray:
    """Ink [H, W] in [0, 1] of one line of ``text`` set in ``font_path`` at ``pt`` points, ``dpi``."""
    face = freetype.Face(str(font_path))
    face.set_char_size(int(pt * 64), 0, dpi, dpi)
    asc = face.size.ascender / 64
    height = int(np.ceil((face.size.ascender - face.size.descender) / 64)) + 4
    pen_x, pieces = 8.0, []
    for c in text:
        face.load_char(c, freetype.FT_LOAD_RENDER | freetype.FT_LOAD_NO_HINTING)
        cov, left, top = fonts.bitmap(face.glyph)
        pieces.append((cov, int(round(pen_x)) + left, int(round(asc)) + 2 - top))
        pen_x += face.glyph.advance.x / 64
    out = np.zeros((height, int(pen_x) + 16), np.float32)
    for cov, x0, y0 in pieces:
        if cov.size:
            h, w = cov.shape
            ys, xs = max(0, y0), max(0, x0)
            out[ys : y0 + h, xs : x0 + w] = np.maximum(out[ys : y0 + h, xs : x0 + w], cov[ys - y0 :, xs - x0 :])
    return out


def specimen(run_dir: Path, out: Path, text: str, dpi: int, fmt: str = "ttf") -> None:
    design = load_design(run_dir)
    src = source_font(design)
    with tempfile.TemporaryDirectory() as tmp:
        robust = Path(tmp) / f"robust.{fmt}"
        info = export_font(run_dir, robust)
        rows = [(f"{design.family} (source)", set_line(src, text, 72, dpi)),
                (f"{info['family']} (exported .{fmt}, outline {info['method']})", set_line(robust, text, 72, dpi))]
    label_font = ImageFont.truetype(str(fonts.LABEL_FONT), max(12, dpi // 8))
    width = max(r.shape[1] for _, r in rows)
    label_h = dpi // 5
    canvas = Image.new("L", (width, sum(r.shape[0] + label_h for _, r in rows)), 255)
    draw = ImageDraw.Draw(canvas)
    y = 0
    for label, ink in rows:
        draw.text((8, y + 2), label, fill=90, font=label_font)
        canvas.paste(Image.fromarray(np.round((1 - ink) * 255).astype(np.uint8), "L"), (0, y + label_h))
        y += ink.shape[0] + label_h
    canvas.save(out, dpi=(dpi, dpi))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--text", default="AaBbGg08 SN-4521/B.")
    ap.add_argument("--dpi", type=int, default=150)
    ap.add_argument("--format", choices=("ttf", "otf"), default="ttf")
    args = ap.parse_args()
    specimen(args.run_dir, args.out, args.text, args.dpi, args.format)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
