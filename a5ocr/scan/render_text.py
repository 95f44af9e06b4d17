"""``a5ocr render-text``: a page of text in a font, as a scanner would see it, with its ground truth.

Layout: the text is split into paragraphs on newlines, each paragraph into words on white
space (runs of spaces become one space), and the words wrapped greedily to the text width of
the page (``width_in`` minus the margins; a word longer than a line is broken). Each character
is drawn by FreeType (freetype-py, anti-aliased, without hinting -- as ``a5ocr.glyphs`` renders
the prototypes) at its own sub-pixel pen position (unhinted advances, plus kerning where the
font has a 'kern' table), ``size_pt`` points at ``dpi``; lines are ``line_spacing`` em apart.

Degradation (skipped with ``clean``; every draw from ``numpy.random.default_rng(seed)``), in order:
paper and ink levels (paper in [0.90, 1.00], ink in [0.00, 0.12]); a rotation of at most 1 degree
about the page centre (``a5ocr.scan.page.rotate_image``); resampling down by a factor in [0.55, 0.85]
(area average) and back up (bicubic), as a scanner of lower optical resolution; a Gaussian blur
(sigma in [0.3, 1.0] px); Gaussian noise (sigma in [0.005, 0.03]); 8-bit quantisation and a JPEG
round trip at quality 85.

Ground truth (``truth_path(page)`` = ``page.png.truth.json``): the text as laid out (lines joined
by newlines), and per character its line and box [x0, y0, x1, y1] in page pixels: the box of the
clean rendering's pixels of coverage >= 0.5, carried through the rotation (the axis-aligned box
around the rotated box).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import freetype
import numpy as np
from PIL import Image
from scipy import ndimage

from a5ocr import fonts
from a5ocr.errors import GlyphError, PageError, RenderError
from a5ocr.runio import write_json
from a5ocr.scan.page import MAX_PAGE_PIXELS, rotate_box, rotate_image, to_u8, write_image

TRUTH_FORMAT = "a5ocr-text-truth-1"


@dataclass(frozen=True)
class RenderOptions:
    dpi: int = 300
    size_pt: float = 24.0
    seed: int = 0
    clean: bool = False
    width_in: float = 8.27  # A4
    margin_in: float = 0.75
    line_spacing: float = 1.5  # baseline to baseline, in em

    def check(self) -> None:
        if not (isinstance(self.dpi, int) and 72 <= self.dpi <= 1200):
            raise RenderError(f"--dpi must be an integer in [72, 1200], got {self.dpi!r}")
        if not (math.isfinite(self.size_pt) and 4.0 <= self.size_pt <= 200.0):
            raise RenderError(f"--size-pt must be in [4, 200], got {self.size_pt}")
        if not (math.isfinite(self.width_in) and 1.0 <= self.width_in <= 40.0):
            raise RenderError(f"page width must be in [1, 40] inches, got {self.width_in}")
        if not (0.0 <= self.margin_in < self.width_in / 2 - 0.25):
            raise RenderError(f"margin {self.margin_in} in leaves no room on a {self.width_in} in page")
        if not 1.0 <= self.line_spacing <= 4.0:
            raise RenderError(f"line spacing must be in [1, 4] em, got {self.line_spacing}")


def truth_path(page: Path | str) -> Path:
    """``page.png`` -> ``page.png.truth.json``."""
    page = Path(page)
    return page.with_name(page.name + ".truth.json")


def _font_path(font: str | Path) -> Path:
    try:
        return fonts.resolve_font(font)
    except GlyphError as err:
        raise RenderError(str(err)) from None


def _check_coverage(path: Path, text: str) -> None:
    try:
        missing = sorted(fonts.missing_chars(path, text))
    except GlyphError as err:
        raise RenderError(str(err)) from None
    if missing:
        raise RenderError(f"font {path.name} has no glyph for: {' '.join(repr(c) for c in missing)}")


class Typesetter:
    """One font at one size, through freetype-py without hinting (as ``a5ocr.glyphs`` renders
    prototypes): unhinted advances, kerning from the font's 'kern' table where it has one, and
    anti-aliased glyphs placed at sub-pixel pen positions."""

    def __init__(self, path: Path, size_px: float):
        self._ft = freetype
        try:
            self.face = fonts.open_face(path, "font ")
        except GlyphError as err:
            raise RenderError(str(err)) from None
        self.face.set_char_size(int(round(size_px * 64)))
        self.size_px = size_px
        self.ascent = self.face.size.ascender / 64.0
        self.descent = -self.face.size.descender / 64.0
        self._adv: dict[str, float] = {}
        self._flags = freetype.FT_LOAD_NO_HINTING | freetype.FT_LOAD_NO_BITMAP

    def advance(self, ch: str) -> float:
        if ch not in self._adv:
            self.face.set_transform(self._ft.Matrix(65536, 0, 0, 65536), self._ft.Vector(0, 0))
            self.face.load_char(ch, self._flags)
            self._adv[ch] = self.face.glyph.linearHoriAdvance / 65536.0
        return self._adv[ch]

    def kern(self, a: str, b: str) -> float:
        if not self.face.has_kerning:
            return 0.0
        k = self.face.get_kerning(self.face.get_char_index(a), self.face.get_char_index(b), self._ft.FT_KERNING_UNFITTED)
        return k.x / 64.0

    def positions(self, line: str) -> list[float]:
        """Pen x of each character of a line, from 0."""
        xs, x = [], 0.0
        for i, ch in enumerate(line):
            if i:
                x += self.kern(line[i - 1], ch)
            xs.append(x)
            x += self.advance(ch)
        return xs

    def width(self, line: str) -> float:
        return self.positions(line)[-1] + self.advance(line[-1]) if line else 0.0

    def glyph(self, ch: str, x: float, y: int):
        """Coverage [h, w] float32 of ``ch`` with its pen at (x, y) and its top-left pixel, or None."""
        ix = math.floor(x)
        self.face.set_transform(self._ft.Matrix(65536, 0, 0, 65536), self._ft.Vector(int(round((x - ix) * 64)), 0))
        self.face.load_char(ch, self._flags | self._ft.FT_LOAD_RENDER)
        cov, left, top = fonts.bitmap(self.face.glyph)
        if cov.size == 0:
            return None
        return cov, ix + left, y - top


def wrap(text: str, font: Typesetter, width_px: float) -> list[str]:
    """Greedy word wrap of each paragraph to ``width_px``."""
    lines: list[str] = []
    for para in text.split("\n"):
        words = para.split()
        if not words:
            lines.append("")
            continue
        cur = ""
        for word in words:
            cand = f"{cur} {word}" if cur else word
            if font.width(cand) <= width_px:
                cur = cand
                continue
            if cur:
                lines.append(cur)
            # a word longer than the line is broken
            while font.width(word) > width_px and len(word) > 1:
                cut = len(word) - 1
                while cut > 1 and font.width(word[:cut]) > width_px:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            cur = word
        lines.append(cur)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def layout_page(text: str, font_path: Path, opts: RenderOptions):
    """Lay out and draw the clean page: (coverage [H, W] float32, lines, chars with boxes)."""
    size_px = opts.size_pt * opts.dpi / 72.0
    font = Typesetter(font_path, size_px)
    page_w = int(round(opts.width_in * opts.dpi))
    margin = int(round(opts.margin_in * opts.dpi))
    lines = wrap(text, font, page_w - 2 * margin)
    if not any(lines):
        raise RenderError("the text is empty")
    pitch = opts.line_spacing * size_px
    first_baseline = margin + math.ceil(font.ascent)
    page_h = int(math.ceil(first_baseline + pitch * (len(lines) - 1) + font.descent + margin))
    if page_w * page_h > MAX_PAGE_PIXELS:
        raise RenderError(f"the text needs a {page_w}x{page_h} px page, more than {MAX_PAGE_PIXELS / 1e6:g} megapixels: shorten it or lower --dpi")
    cov = np.zeros((page_h, page_w), np.float32)
    chars = []
    for li, line in enumerate(lines):
        y = int(round(first_baseline + li * pitch))
        for ci, (ch, x) in enumerate(zip(line, font.positions(line))):
            if ch.isspace():
                continue
            drawn = font.glyph(ch, margin + x, y)
            if drawn is None:
                continue
            c, ix, iy = drawn
            h, w = c.shape
            ys, xs = max(0, iy), max(0, ix)
            ye, xe = min(page_h, iy + h), min(page_w, ix + w)
            if ye <= ys or xe <= xs:
                continue
            part = c[ys - iy : ye - iy, xs - ix : xe - ix]
            cov[ys:ye, xs:xe] = np.maximum(cov[ys:ye, xs:xe], part)
            rows, cols = np.nonzero(part >= 0.5)
            if rows.size == 0:
                rows, cols = np.nonzero(part > 0)
            box = [float(xs + cols.min()), float(ys + rows.min()), float(xs + cols.max() + 1), float(ys + rows.max() + 1)]
            chars.append({"char": ch, "line": li, "index_in_line": ci, "box": box})
    return cov, lines, chars


def degrade(gray: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Scanner-like degradation of a clean page (gray [H, W] in [0, 1], 1 = paper); see the module doc.
    Returns (page, parameters). The rotation is the only step that moves ink."""
    h, w = gray.shape
    paper = float(rng.uniform(0.90, 1.00))
    ink = float(rng.uniform(0.00, 0.12))
    angle = float(rng.uniform(-1.0, 1.0))
    factor = float(rng.uniform(0.55, 0.85))
    sigma = float(rng.uniform(0.3, 1.0))
    noise = float(rng.uniform(0.005, 0.03))
    quality = 85
    cov = 1.0 - gray
    page = paper - cov * (paper - ink)
    page = rotate_image(page, angle, fill=paper, order=1)
    small = (max(1, int(round(w * factor))), max(1, int(round(h * factor))))
    img = Image.fromarray(page.astype(np.float32), mode="F").resize(small, Image.BOX)
    page = np.asarray(img.resize((w, h), Image.BICUBIC), np.float32)
    page = ndimage.gaussian_filter(page, sigma)
    page = page + rng.normal(0.0, noise, size=page.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(to_u8(page), mode="L").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as j:
        page = np.asarray(j.convert("L"), np.float32) / 255.0
    params = {"paper": paper, "ink": ink, "angle_deg": angle, "resample_factor": factor,
              "blur_sigma_px": sigma, "noise_sigma": noise, "jpeg_quality": quality}
    return page, params


def render_text(text: str, font: str | Path, opts: RenderOptions | None = None) -> tuple[np.ndarray, dict]:
    """Render ``text`` in ``font`` (a TTF/OTF path or a shipped font name): (page gray [H, W]
    float32 in [0, 1], 1 = paper; ground truth dict). See the module doc."""
    opts = opts or RenderOptions()
    opts.check()
    if not isinstance(text, str) or not text.strip():
        raise RenderError("the text is empty")
    path = _font_path(font)
    _check_coverage(path, text)
    cov, lines, chars = layout_page(text, path, opts)
    gray = 1.0 - cov
    params: dict = {}
    if not opts.clean:
        gray, params = degrade(gray, np.random.default_rng(opts.seed))
        angle = params["angle_deg"]
        for c in chars:
            c["box"] = rotate_box(c["box"], angle, gray.shape, gray.shape)
    truth = {
        "format": TRUTH_FORMAT, "text": "\n".join(lines), "lines": lines, "font": str(path),
        "dpi": opts.dpi, "size_pt": opts.size_pt, "seed": opts.seed, "clean": opts.clean,
        "page_px": [int(gray.shape[1]), int(gray.shape[0])], "degradation": params,
        "units": "box = [x0, y0, x1, y1) in page pixels from the top-left, y down",
        "chars": chars,
    }
    return gray, truth


def write_page(path: Path | str, gray: np.ndarray, truth: dict, dpi: int) -> tuple[Path, Path]:
    """Write the page image (format from the suffix) and its truth JSON beside it, atomically."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"):
        raise RenderError(f"the page must be .png, .jpg, .tif or .bmp, got {path.name!r}")
    try:
        opts = {"dpi": (dpi, dpi)}
        if path.suffix.lower() in (".jpg", ".jpeg"):
            opts["quality"] = 95
        write_image(path, gray, **opts)
    except PageError as err:
        raise RenderError(str(err)) from None
    tp = truth_path(path)
    write_json(tp, {**truth, "page": path.name})
    return path, tp


def load_truth(path: Path | str) -> dict:
    """Read a truth JSON written by ``write_page``."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise RenderError(f"cannot read ground truth {path}: {err}") from None
    if d.get("format") != TRUTH_FORMAT:
        raise RenderError(f"{path} is not an a5ocr ground truth file")
    return d
