import pytest
import torch

from a5ocr.glyphs import CHARSETS, GlyphError, rasterize, resolve_charset


def test_charset_62_is_the_papers_order():
    s = CHARSETS["62"]
    assert len(s) == 62 and s[0] == "A" and s[25] == "Z" and s[26] == "a" and s[51] == "z" and s[52] == "0" and s[61] == "9"


@pytest.mark.parametrize("font", ["comic-neue", "dejavu-sans-mono", "ocr-b"])
def test_rasterize_keeps_case_apart(font):
    g = rasterize(font, "62", 32)
    assert g.images.shape == (62, 32, 32)
    assert g.images.min() >= 0 and g.images.max() <= 1 and g.images.max() > 0.9
    for lo, up in ("oO", "cC", "xX", "sS", "vV"):
        a, b = g.images[g.chars.index(lo)], g.images[g.chars.index(up)]
        # common scale and baseline: the capital has clearly more ink and a taller box
        assert b.sum() > 1.1 * a.sum(), (lo, up)
        rows_a = torch.nonzero(a.sum(1) > 0.1).flatten()
        rows_b = torch.nonzero(b.sum(1) > 0.1).flatten()
        assert rows_b.min() < rows_a.min(), (lo, up)  # capital reaches higher
        assert abs(int(rows_b.max()) - int(rows_a.max())) <= 1  # same baseline


def test_glyphs_are_centred_and_inside():
    g = rasterize("comic-neue", "62", 32)
    border = torch.cat([g.images[:, 0], g.images[:, -1], g.images[:, :, 0], g.images[:, :, -1]], 1)
    assert border.max() < 0.05
    for img in g.images:  # each glyph's ink box is centred horizontally (to a pixel)
        cols = torch.nonzero(img.max(0).values > 0.05).flatten()
        assert abs((cols.min() + cols.max()).item() / 2 - 15.5) <= 1.0


def test_missing_glyph_is_named(tmp_path):
    with pytest.raises(GlyphError, match="'\\\\u20ac'|'€'"):
        rasterize("ocr-b", "AB€", 16)


def test_bad_font_path_and_corrupt_font(tmp_path):
    with pytest.raises(GlyphError, match="font not found"):
        rasterize(tmp_path / "nope.ttf", "AB", 16)
    bad = tmp_path / "bad.ttf"
    bad.write_bytes(b"this is not a font" * 10)
    with pytest.raises(GlyphError, match="cannot read font"):
        rasterize(bad, "AB", 16)


def test_explicit_charsets():
    assert resolve_charset("XYZ") == "XYZ"
    with pytest.raises(GlyphError, match="repeated"):
        resolve_charset("XX")
    with pytest.raises(GlyphError):
        resolve_charset("A")
