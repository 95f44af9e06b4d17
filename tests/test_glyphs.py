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


@pytest.mark.parametrize("font", ["comic-neue", "ocr-b"])
def test_the_print_raster_box_filtered_is_the_sensor_raster(font):
    """Glyphs at print scale S share the R raster's canvas: box-filtering the S*R raster S x S
    gives the R raster up to FreeType's own error (its coverage is the area of the outline after
    curve flattening, to a fraction of a *rendered* pixel), measured here at max |d| ~0.03 and
    mean ~4e-4 with oversample 4, and shrinking as the rendered grid gets finer."""
    sensor = rasterize(font, "62", 32)
    prints = {s: rasterize(font, "62", 32, print_scale=s) for s in (2, 4)}
    for s, g in prints.items():
        assert g.images.shape == (62, 32 * s, 32 * s) and g.resolution == 32 and g.print_resolution == 32 * s
        d = (torch.nn.functional.avg_pool2d(g.images[:, None], s)[:, 0] - sensor.images).abs()
        assert d.max() < 0.05 and d.mean() < 1e-3, (s, d.max(), d.mean())
        # the geometry is the R canvas's, in print pixels
        assert g.baseline == s * sensor.baseline and g.units_per_pixel == pytest.approx(sensor.units_per_pixel / s)
        assert g.origin_x == pytest.approx(tuple(s * o for o in sensor.origin_x))
    # FreeType's error is its own: rendered on a 4x finer grid, the two agree 4x closer
    fine, fine_print = rasterize(font, "AgQs8", 32, oversample=16), rasterize(font, "AgQs8", 32, oversample=16, print_scale=4)
    d = (torch.nn.functional.avg_pool2d(fine_print.images[:, None], 4)[:, 0] - fine.images).abs()
    assert d.max() < 0.012
    # the comparison can fail: the print one print pixel off its place is far from the R raster
    moved = torch.roll(prints[4].images, 1, dims=2)
    assert (torch.nn.functional.avg_pool2d(moved[:, None], 4)[:, 0] - sensor.images).abs().max() > 0.1


def test_print_scale_is_checked():
    with pytest.raises(GlyphError, match="print scale"):
        rasterize("ocr-b", "AB", 16, print_scale=0)
    with pytest.raises(GlyphError, match="print scale"):
        rasterize("ocr-b", "AB", 16, print_scale=1.5)
