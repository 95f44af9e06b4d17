"""Font files, read in one place: the shipped fonts, cmap coverage, metrics (fontTools) and
FreeType faces and bitmaps.

Every stage that reads a font (glyph rasterisation, export, render-text, scan) goes through
these functions, so a font is opened, checked and decoded the same way everywhere. Errors are
``GlyphError`` (a font that cannot give the asked glyphs); a caller of a later stage re-raises
them as its own error class with the same message.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import freetype
import numpy as np
from fontTools.ttLib import TTFont, TTLibError

from a5ocr.errors import A5Error, GlyphError

FONTS_DIR = Path(__file__).resolve().parent.parent / "fonts"
BUILTIN_FONTS: dict[str, str] = {
    "comic-neue": "comic-neue/ComicNeue-Regular.otf",
    "comic-neue-bold": "comic-neue/ComicNeue-Bold.otf",
    "dejavu-sans-mono": "dejavu/DejaVuSansMono.ttf",
    "dejavu-sans": "dejavu/DejaVuSans.ttf",
    "ocr-b": "ocr-b/OCRB.otf",
}
DEFAULT_FONT = "comic-neue"
LABEL_FONT = FONTS_DIR / "dejavu" / "DejaVuSans.ttf"
# What fontTools raises on a file that is not a readable font.
READ_ERRORS = (TTLibError, OSError, KeyError, AssertionError, ValueError, IndexError)


def resolve_font(font: str | Path) -> Path:
    """A built-in font name (see ``BUILTIN_FONTS``) or a path to a TTF/OTF file."""
    key = str(font)
    if key in BUILTIN_FONTS:
        return FONTS_DIR / BUILTIN_FONTS[key]
    path = Path(font).expanduser()
    if not path.is_file():
        names = ", ".join(BUILTIN_FONTS)
        raise GlyphError(f"font not found: {font} (give a TTF/OTF path or one of: {names})")
    return path


def shipped_twin(path: Path | str) -> Path | None:
    """``path`` if it is a file, else the shipped font of the same file name (a run folder
    written on another machine records that machine's path), else None."""
    p = Path(path)
    if p.is_file():
        return p
    for rel in BUILTIN_FONTS.values():
        if Path(rel).name == p.name and (FONTS_DIR / rel).is_file():
            return FONTS_DIR / rel
    return None


@contextmanager
def open_font(path: Path | str, what: str = "font") -> Iterator[TTFont]:
    """The font as a lazy fontTools ``TTFont``; ``GlyphError("cannot read <what> <path>: ...")``
    when it is not a readable font (also for errors raised while the caller reads its tables)."""
    try:
        with TTFont(str(path), lazy=True, fontNumber=0) as font:
            yield font
    except A5Error:
        raise
    except READ_ERRORS as err:
        raise GlyphError(f"cannot read {what} {path}: {err}") from None


def cmap(path: Path | str) -> dict[int, str]:
    """The best Unicode cmap of a font (code point -> glyph name)."""
    with open_font(path) as f:
        return dict(f.getBestCmap() or {})


def missing_chars(path: Path | str, text: str) -> list[str]:
    """The distinct non-space characters of ``text`` the font has no glyph for, in text order."""
    table = cmap(path)
    return list(dict.fromkeys(c for c in text if not c.isspace() and ord(c) not in table))


@functools.lru_cache(maxsize=64)
def covers(path: Path, text: str) -> bool:
    """Whether the font maps every non-space character of ``text``; an unreadable font covers nothing."""
    try:
        return not missing_chars(path, text)
    except GlyphError:
        return False


def family_name(font: TTFont, fallback: str) -> str:
    return str(font["name"].getBestFamilyName() or fallback)


def advances(path: Path | str, chars: str) -> tuple[float | None, np.ndarray]:
    """Advance widths (font units) of the space (None when the font has no space) and of each
    character of ``chars`` (``GlyphError`` when one is unmapped)."""
    with open_font(path) as f:
        table = f.getBestCmap() or {}
        hmtx = f["hmtx"]
        space = float(hmtx[table[32]][0]) if 32 in table else None
        return space, np.array([float(hmtx[table[ord(c)]][0]) for c in chars])


def open_face(path: Path | str, what: str = "") -> freetype.Face:
    """A FreeType face of the font; ``GlyphError("FreeType cannot open <what><path>: ...")``."""
    try:
        return freetype.Face(str(path))
    except freetype.FT_Exception as err:
        raise GlyphError(f"FreeType cannot open {what}{path}: {err}") from None


def bitmap(glyph) -> tuple[np.ndarray, int, int]:
    """The rendered bitmap of a FreeType glyph slot (after ``load_char`` with ``FT_LOAD_RENDER``):
    (coverage [h, w] float32 in [0, 1], bitmap_left, bitmap_top); [0, 0] coverage for no ink."""
    bmp = glyph.bitmap
    rows, width = bmp.rows, bmp.width
    if rows == 0 or width == 0:
        return np.zeros((0, 0), np.float32), glyph.bitmap_left, glyph.bitmap_top
    buf = np.array(bmp.buffer, dtype=np.uint8).reshape(rows, abs(bmp.pitch))[:, :width]
    return buf.astype(np.float32) / 255.0, glyph.bitmap_left, glyph.bitmap_top
