"""The outline table of an exported font: every glyph of the source font kept, the designed ones replaced.

The source font is loaded whole (``fontTools.ttLib.TTFont``): cmap, metrics, kerning (``kern``,
``GPOS``), ``GSUB``, ``GDEF`` and every other table stay as they are, in the source's glyph order.
Only the outline table is touched:

* TrueType output (``to_truetype``): a ``glyf`` source keeps its glyphs (and their hinting); a
  composite glyph that uses a designed glyph (an accented letter on a designed base) is
  decomposed first, so that every glyph that was not designed keeps the source's outline. A CFF
  source is converted glyph by glyph with ``fontTools.pens.cu2quPen`` (cubic -> quadratic within
  ``max_err`` font units, direction reversed to TrueType's), as fontTools' otf2ttf does.
* CFF output (``to_cff``): a CFF source keeps its charstrings (hints, subroutines) and only the
  designed glyphs' charstrings are replaced; a ``glyf`` source is redrawn into a new CFF table
  (quadratics become cubics exactly, ``T2CharStringPen``).

Designed glyphs come as ``RecordingPen`` recordings in font units with TrueType orientation
(lines and quadratic splines); for CFF they are merged into cubics by ``Qu2CuPen`` and reversed.
The hmtx left side bearing of a designed glyph becomes its new xMin (advances stay the source's).
"""

from __future__ import annotations

from fontTools.fontBuilder import FontBuilder
from fontTools.pens.cu2quPen import Cu2QuPen
from fontTools.pens.qu2cuPen import Qu2CuPen
from fontTools.pens.recordingPen import DecomposingRecordingPen, RecordingPen
from fontTools.pens.reverseContourPen import ReverseContourPen
from fontTools.pens.t2CharStringPen import T2CharStringPen
from fontTools.pens.ttGlyphPen import TTGlyphPen
from fontTools.ttLib import TTFont, newTable

from a5ocr.export.smooth import recording_points

# Tables tied to the old outlines or to TrueType alone (device metrics, hinting programs).
_STALE_TRUETYPE = ("hdmx", "LTSH", "VDMX")
_TRUETYPE_ONLY = ("glyf", "loca", "fpgm", "prep", "cvt ", "hdmx", "LTSH", "VDMX")


def to_truetype(font: TTFont, designed: dict[str, RecordingPen], max_err: float) -> None:
    """Make ``font`` a TrueType font whose designed glyphs are ``designed`` (in place).

    ``max_err``: cu2qu tolerance for a CFF source's glyphs (font units).
    """
    if "glyf" in font:
        _replace_glyf(font, designed)
    else:
        _cff_to_glyf(font, designed, max_err)
    for tag in _STALE_TRUETYPE:
        if tag in font:
            del font[tag]
    glyf = font["glyf"]
    for name in designed:
        g = glyf[name]
        g.recalcBounds(glyf)
        font["hmtx"][name] = (font["hmtx"][name][0], int(getattr(g, "xMin", 0)))


def _replace_glyf(font: TTFont, designed: dict[str, RecordingPen]) -> None:
    glyf = font["glyf"]
    users = [n for n in font.getGlyphOrder() if glyf[n].isComposite() and _uses(glyf, n, set(designed))]
    gs = font.getGlyphSet()
    flat = {}
    for name in users:  # decomposed before any designed glyph changes
        rec = DecomposingRecordingPen(gs)
        gs[name].draw(rec)
        flat[name] = rec
    for name, rec in {**flat, **designed}.items():
        pen = TTGlyphPen(None)
        rec.replay(pen)
        glyf[name] = pen.glyph()


def _uses(glyf, name: str, targets: set[str]) -> bool:
    """Whether composite glyph ``name`` uses one of ``targets``, directly or through its components."""
    for comp in glyf[name].components:
        if comp.glyphName in targets or (glyf[comp.glyphName].isComposite() and _uses(glyf, comp.glyphName, targets)):
            return True
    return False


def _cff_to_glyf(font: TTFont, designed: dict[str, RecordingPen], max_err: float) -> None:
    """CFF -> glyf for every glyph (fontTools' otf2ttf recipe), the designed glyphs from ``designed``."""
    order = font.getGlyphOrder()
    gs = font.getGlyphSet()
    glyphs = {}
    for name in order:
        pen = TTGlyphPen(None)
        if name in designed:
            designed[name].replay(pen)
        else:
            gs[name].draw(Cu2QuPen(pen, max_err, reverse_direction=True))
        glyphs[name] = pen.glyph()
    del font["CFF "]
    if "VORG" in font:
        del font["VORG"]
    font["loca"] = newTable("loca")
    font["glyf"] = glyf = newTable("glyf")
    glyf.glyphOrder = order
    glyf.glyphs = glyphs
    font["head"].glyphDataFormat = 0
    maxp = font["maxp"] = newTable("maxp")
    maxp.tableVersion = 0x00010000
    for field in ("maxZones",):
        setattr(maxp, field, 1)
    for field in ("maxTwilightPoints", "maxStorage", "maxFunctionDefs", "maxInstructionDefs",
                  "maxStackElements", "maxSizeOfInstructions", "maxComponentElements"):
        setattr(maxp, field, 0)
    post = font["post"]
    post.formatType, post.extraNames, post.mapping, post.glyphOrder = 2.0, [], {}, order
    font.sfntVersion = "\x00\x01\x00\x00"


def to_cff(font: TTFont, designed: dict[str, RecordingPen], max_err: float, names: dict) -> None:
    """Make ``font`` a CFF font whose designed glyphs are ``designed`` (in place).

    ``max_err``: the designed splines are merged into cubics by qu2cu within it; ``names``: psName, FullName, FamilyName, Weight of the CFF top dict.
    """
    if "CFF " in font:
        cff = font["CFF "].cff
        top = cff.topDictIndex[0]
        cs = top.CharStrings
        for name, rec in designed.items():
            private = cs[name].private
            pen = T2CharStringPen(font["hmtx"][name][0] - getattr(private, "nominalWidthX", 0), None)
            rec.replay(_cubic(pen, max_err))
            cs[name] = pen.getCharString(private=private, globalSubrs=cff.GlobalSubrs)
        cff.fontNames[0] = names["psName"]
        for key in ("FullName", "FamilyName", "Weight"):
            setattr(top, key, names[key])
    else:
        _glyf_to_cff(font, designed, max_err, names)
    cs = font["CFF "].cff.topDictIndex[0].CharStrings
    for name in designed:
        bounds = cs[name].calcBounds(cs)
        font["hmtx"][name] = (font["hmtx"][name][0], int(round(bounds[0])) if bounds else 0)


def _cubic(pen, max_err: float):
    """The pen that takes TrueType-oriented lines and quadratics and gives CFF-oriented cubics to ``pen``."""
    return Qu2CuPen(ReverseContourPen(pen), max_err, all_cubic=True)


def _glyf_to_cff(font: TTFont, designed: dict[str, RecordingPen], max_err: float, names: dict) -> None:
    gs = font.getGlyphSet()
    charstrings = {}
    for name in font.getGlyphOrder():
        pen = T2CharStringPen(font["hmtx"][name][0], None)
        if name in designed:
            designed[name].replay(_cubic(pen, max_err))
        else:
            rec = DecomposingRecordingPen(gs)
            gs[name].draw(rec)
            rec.replay(ReverseContourPen(pen))
        charstrings[name] = pen.getCharString()
    for tag in _TRUETYPE_ONLY:
        if tag in font:
            del font[tag]
    fb = FontBuilder(font=font, isTTF=False)
    fb.isTTF = False
    fb.setupCFF(names["psName"], {k: names[k] for k in ("FullName", "FamilyName", "Weight")}, charstrings, {})
    font["maxp"].tableVersion = 0x00005000
    post = font["post"]
    post.formatType = 3.0
    font.sfntVersion = "OTTO"


def point_count(font: TTFont, name: str) -> int:
    """On-curve + off-curve points of glyph ``name`` as stored (components decomposed; a closing
    point equal to the contour's start not counted; implied TrueType on-curve points not counted)."""
    gs = font.getGlyphSet()
    rec = DecomposingRecordingPen(gs)
    gs[name].draw(rec)
    return recording_points(rec)
