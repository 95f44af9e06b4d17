"""An installable font of the robust glyphs (``export_font``): TrueType or CFF, built with fontTools.

TrueType (``.ttf``: glyf, quadratic splines used as straight segments only) or CFF (``.otf``),
built with ``fontTools.fontBuilder``. Outlines are placed in the SOURCE font's units with the
run's canvas geometry (x = (col - origin_x[k]) * units_per_pixel, y = (baseline - row) *
units_per_pixel), so each designed glyph sits where the source glyph sat; advance widths,
ascender/descender and the OS/2 vertical metrics are the source's. The hmtx left side bearing is
the new outline's xMin (TrueType rasterisers put the origin at xMin - lsb, so copying the
source's lsb would move every designed glyph sideways). The outlines are drawn once with the pen
protocol; the pen (``TTGlyphPen`` / ``T2CharStringPen``) makes the table's format.

Raster -> outline (``outline="auto"``), see ``glyph_loops``:

* ``binary`` designs: ``"pixels"``, the exact boundary of the ink pixels (lossless up to
  rounding to integer font units).
* ``gray`` designs: ``"contour"``, the 0.5 iso-line of the bilinear interpolant of the design
  (pixel values at pixel centres, paper outside the canvas), traced with marching squares on a
  grid ``oversample`` times finer and simplified (tolerance 0.02 px). A font outline is
  monochrome: ink above 0.5 becomes solid, ink below 0.5 disappears, so the gray levels are lost
  (the part of the defence that lives in faint ink or partial erasures); edges stay where the
  design crosses half ink. Measured (comic-neue digits, 32x32, a short ``cpu``-preset A5/PC run,
  FreeType rendering at the design geometry): IoU of the ink > 0.5 masks 0.969-0.995 per glyph,
  mean |rendered - design| 0.006; IBP certified error on 1000 acquisitions 0.1% vs 0.1% at the
  design's eps_A 0.1, 10.1% vs 11.1% at 0.2, 48.0% vs 50.9% at 0.25 (thresholding sharpens the
  glyphs; it is a different design).
* ``"halftone"`` (opt-in for gray designs): each pixel becomes a centred square dot of area w
  (side sqrt(w) px), full pixels merged into exact pixel outlines. At the design size and pixel
  grid the box-filtered coverage is the design again (up to rounding to integer font units),
  i.e. an amplitude-modulated screen with the design's pixel pitch; the dots are visible when
  printed large. Same run: IoU 0.985-1.0, mean |diff| 0.0016, certified error 11.4% vs 11.1% at
  eps_A 0.2, 51.4% vs 50.9% at 0.25.

After writing, the font is re-read with fontTools and every character rendered by FreeType
(``_verify_font``). ``a5ocr.export.roundtrip.rasterize_at_design`` renders any font with the run's
exact canvas geometry (the check of the round trip).
"""

from __future__ import annotations

import math
from pathlib import Path

import freetype
import numpy as np
from fontTools.agl import UV2AGL
from fontTools.fontBuilder import FontBuilder
from fontTools.pens.t2CharStringPen import T2CharStringPen
from fontTools.pens.ttGlyphPen import TTGlyphPen
from fontTools.ttLib import TTFont

from a5ocr import fonts
from a5ocr.errors import ExportError, GlyphError
from a5ocr.export import outline as tracers
from a5ocr.export.common import check_output, load_design, source_font
from a5ocr.runio import atomic_path
from a5ocr.runs import Design

OUTLINE_METHODS = ("auto", "contour", "pixels", "halftone")
STYLE = "Regular"


# --------------------------------------------------------------------------- outlines


def resolve_outline_method(design: Design, method: str) -> str:
    if method not in OUTLINE_METHODS:
        raise ExportError(f"unknown outline method {method!r} (one of: {', '.join(OUTLINE_METHODS)})")
    if method == "auto":
        return "pixels" if design.ink == "binary" else "contour"
    return method


def glyph_loops(design: Design, k: int, method: str = "auto", oversample: int = 8) -> list[np.ndarray]:
    """Closed outline loops of robust glyph k in canvas coordinates (u, v), [n, 2] each.

    Orientation: ink on the right once y points up (TrueType: outer clockwise). ``method``:
    auto (pixels for binary designs, contour for gray), contour, pixels or halftone.
    """
    method = resolve_outline_method(design, method)
    w = design.robust[k].detach().cpu().numpy().astype(np.float64)
    if method == "pixels":
        return tracers.trace_pixels(w > 0.5)
    if method == "contour":
        f, x0, step = tracers.bilinear_upsample(w, oversample)
        return [tracers.simplify(x0 + loop * step, 0.02) for loop in tracers.trace_level(f, 0.5)]
    # halftone: merged full pixels + one square dot of area w per partial pixel
    full = w >= 1.0 - 0.5 / 255.0
    loops = tracers.trace_pixels(full)
    rows, cols = np.nonzero(~full & (w > 0.5 / 255.0))
    for r, c in zip(rows, cols):
        h = 0.5 * math.sqrt(float(w[r, c]))
        cx, cy = c + 0.5, r + 0.5
        # clockwise with y up == in image coords (y down): left-top, left-bottom... see outline._orient
        loops.append(np.array([[cx - h, cy - h], [cx + h, cy - h], [cx + h, cy + h], [cx - h, cy + h]]))
    return loops


def _font_loops(design: Design, k: int, method: str, oversample: int) -> list[list[tuple[int, int]]]:
    """Loops of glyph k in integer font units (y up), simplified; degenerate loops dropped."""
    out = []
    for loop in glyph_loops(design, k, method, oversample):
        pts = np.round(design.to_font_units(k, loop))
        pts = tracers.simplify(pts, 0.0)
        if len(pts) < 3 or abs(tracers.signed_area(pts)) < 1.0:
            continue
        out.append([(int(x), int(y)) for x, y in pts])
    return out


def _notdef_loops(upem: int, ascent: int) -> list[list[tuple[int, int]]]:
    w, h, t = upem // 2, int(0.7 * ascent) or upem // 2, max(1, upem // 20)
    x0 = upem // 20
    outer = [(x0, 0), (x0, h), (x0 + w - 2 * x0, h), (x0 + w - 2 * x0, 0)]  # clockwise (y up)
    inner = [(x0 + t, t), (x0 + w - 2 * x0 - t, t), (x0 + w - 2 * x0 - t, h - t), (x0 + t, h - t)]
    return [outer, inner]


def _draw(pen, loops: list[list[tuple[int, int]]], reverse: bool = False) -> None:
    """Draw closed polygons with the pen protocol (moveTo / lineTo / closePath)."""
    for loop in loops:
        pts = loop[::-1] if reverse else loop
        pen.moveTo(pts[0])
        for p in pts[1:]:
            pen.lineTo(p)
        pen.closePath()


# --------------------------------------------------------------------------- source font


def _source_info(path: Path, chars: str) -> dict:
    """Metrics and names of the source font needed by the export (read with fontTools)."""
    try:
        with fonts.open_font(path, "the source font") as f:
            cmap = f.getBestCmap() or {}
            missing = [c for c in chars if ord(c) not in cmap]
            if missing:
                raise ExportError(f"source font {path.name} lacks {''.join(missing)!r}")
            return _font_info(f, cmap, chars, path)
    except GlyphError as err:
        raise ExportError(str(err)) from None


def _font_info(f, cmap: dict, chars: str, path: Path) -> dict:
    hmtx = f["hmtx"]
    adv = {c: int(hmtx[cmap[ord(c)]][0]) for c in chars}
    upem = int(f["head"].unitsPerEm)
    space = int(hmtx[cmap[32]][0]) if 32 in cmap else upem // 4
    hhea = f["hhea"]
    info = {
        "upem": upem, "advance": adv, "space": space,
        "ascent": int(hhea.ascent), "descent": int(hhea.descent), "lineGap": int(hhea.lineGap),
        "names": {},
    }
    if "OS/2" in f:
        os2 = f["OS/2"]
        info["os2"] = {k: getattr(os2, k) for k in (
            "sTypoAscender", "sTypoDescender", "sTypoLineGap", "usWinAscent", "usWinDescent",
            "usWeightClass", "usWidthClass", "fsType", "sxHeight", "sCapHeight") if hasattr(os2, k)}
    if "post" in f:
        info["post"] = {"underlinePosition": int(f["post"].underlinePosition),
                        "underlineThickness": int(f["post"].underlineThickness)}
    name = f["name"]
    for nid in (0, 13, 14):
        text = name.getDebugName(nid)
        if text:
            info["names"][nid] = text
    info["family"] = fonts.family_name(f, path.stem)
    return info


def _glyph_name(c: str) -> str:
    cp = ord(c)
    return UV2AGL.get(cp, f"uni{cp:04X}" if cp <= 0xFFFF else f"u{cp:05X}")


# --------------------------------------------------------------------------- building


def export_font(
    run_dir: Path | str,
    path: Path | str,
    outline: str = "auto",
    oversample: int = 8,
    family: str | None = None,
) -> dict:
    """An installable font (``.ttf`` or ``.otf``) whose glyphs are the robust designs.

    Family name "<source family> A5" unless ``family`` is given. Returns a summary dict
    (path, family, method, glyphs, contours, points). The written file is re-read with fontTools
    and every character rendered by FreeType before it replaces ``path``.
    """
    path = check_output(path, (".ttf", ".otf"), "the font")
    if not 1 <= int(oversample) <= 32:
        raise ExportError("outline oversampling must be in [1, 32]")
    design = load_design(run_dir)
    method = resolve_outline_method(design, outline)
    src_path = source_font(design)
    src = _source_info(src_path, design.chars)
    if src["upem"] != design.units_per_em:
        raise ExportError(f"source font {src_path} has {src['upem']} units per em, the run says {design.units_per_em}")
    is_ttf = path.suffix.lower() == ".ttf"
    family = family or f"{src['family']} A5"
    ps_name = "".join(ch for ch in f"{family}-{STYLE}" if ch.isalnum() or ch == "-")[:63]
    names, loops, advance = _glyphs(design, src, method, int(oversample))
    lsb = {n: (min(x for lp in loops[n] for x, _ in lp) if loops[n] else 0) for n in names}

    fb = FontBuilder(src["upem"], isTTF=is_ttf)
    fb.setupGlyphOrder(names)
    fb.setupCharacterMap({32: "space", **{ord(c): names[k + 2] for k, c in enumerate(design.chars)}})
    if is_ttf:
        fb.setupGlyf(_truetype_glyphs(names, loops))
    else:
        fb.setupCFF(ps_name, {"FullName": f"{family} {STYLE}", "FamilyName": family, "Weight": STYLE},
                    _cff_charstrings(names, loops, advance), {})
    fb.setupHorizontalMetrics({n: (advance[n], lsb[n]) for n in names})
    fb.setupHorizontalHeader(ascent=src["ascent"], descent=src["descent"], lineGap=src["lineGap"])
    fb.setupNameTable(_name_strings(design, src, family, ps_name, method))
    fb.setupOS2(**_os2(src))
    fb.setupPost(keepGlyphNames=is_ttf, **src.get("post", {}))

    with atomic_path(path) as tmp:
        fb.save(str(tmp))
        _verify_font(tmp, design.chars)
    contours = sum(len(loops[n]) for n in names[2:])
    points = sum(len(lp) for n in names[2:] for lp in loops[n])
    return {"path": str(path), "family": family, "method": method, "glyphs": len(names), "contours": contours, "points": points}


def _glyphs(design: Design, src: dict, method: str, oversample: int) -> tuple[list[str], dict, dict]:
    """Glyph order (.notdef, space, the characters), each glyph's loops in font units and its advance."""
    names = [".notdef", "space"] + [_glyph_name(c) for c in design.chars]
    loops: dict[str, list] = {".notdef": _notdef_loops(src["upem"], src["ascent"]), "space": []}
    advance = {".notdef": src["upem"] // 2, "space": src["space"]}
    for k, c in enumerate(design.chars):
        loops[names[k + 2]] = _font_loops(design, k, method, oversample)
        advance[names[k + 2]] = src["advance"][c]
    return names, loops, advance


def _truetype_glyphs(names: list[str], loops: dict) -> dict:
    glyphs = {}
    for n in names:
        pen = TTGlyphPen(None)
        _draw(pen, loops[n])
        glyphs[n] = pen.glyph()
    return glyphs


def _cff_charstrings(names: list[str], loops: dict, advance: dict) -> dict:
    charstrings = {}
    for n in names:
        pen = T2CharStringPen(advance[n], None)
        _draw(pen, loops[n], reverse=True)  # CFF: outer contours counter-clockwise
        charstrings[n] = pen.getCharString()
    return charstrings


def _name_strings(design: Design, src: dict, family: str, ps_name: str, method: str) -> dict:
    """The name table: the new family, a description of the design, the source's copyright and license."""
    eps_a = f"{design.eps_a:g}" if design.eps_a is not None else "?"
    note = (f"Certifiably robust glyphs (A5, Frosio & Kautz CVPR 2023) designed by a5ocr from {src['family']}: "
            f"eps_A {eps_a}, eps_D {design.eps_d:g}, ink {design.ink}, {design.resolution}x{design.resolution}, "
            f"outline {method}. Only the characters {design.chars!r} and space.")
    name_strings = {
        "familyName": family, "styleName": STYLE, "fullName": f"{family} {STYLE}", "psName": ps_name,
        "uniqueFontIdentifier": f"a5ocr: {family} {STYLE}", "version": "Version 1.000", "description": note,
    }
    copyright_ = src["names"].get(0)
    name_strings["copyright"] = (copyright_ + "\n" if copyright_ else "") + "Modified with a5ocr (robust glyph designs)."
    if 13 in src["names"]:
        name_strings["licenseDescription"] = src["names"][13]
    if 14 in src["names"]:
        name_strings["licenseInfoURL"] = src["names"][14]
    return name_strings


def _os2(src: dict) -> dict:
    """OS/2 fields: vertical metrics from hhea, overridden by the source's OS/2, then ours."""
    os2 = {"sTypoAscender": src["ascent"], "sTypoDescender": src["descent"], "sTypoLineGap": src["lineGap"],
           "usWinAscent": src["ascent"], "usWinDescent": abs(src["descent"]), "fsType": 0}
    os2.update(src.get("os2", {}))
    os2.update({"achVendID": "NONE", "fsSelection": 0x40})
    return os2


# --------------------------------------------------------------------------- verification


def _verify_font(path: Path, chars: str) -> None:
    """Re-read a written font with fontTools and render every character with FreeType."""
    try:
        with TTFont(str(path)) as f:
            for tag in f.keys():
                f[tag]  # decompile every table
            cmap = f.getBestCmap()
        missing = [c for c in chars if ord(c) not in cmap]
        if missing:
            raise ExportError(f"written font lacks {''.join(missing)!r}")
        face = freetype.Face(str(path))
        face.set_pixel_sizes(0, 64)
        for c in chars:
            face.load_char(c, freetype.FT_LOAD_RENDER | freetype.FT_LOAD_NO_HINTING)
    except ExportError:
        raise
    except Exception as err:  # any failure here means a broken font: no file is left
        raise ExportError(f"the written font does not read back: {err}") from None
