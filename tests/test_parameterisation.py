import math

import kornia
import pytest
import torch

from a5ocr.acquisition import sensor_integrate
from a5ocr.glyphs import rasterize
from a5ocr.training.losses import defended
from a5ocr.training.parameterisation import Parameterisation, change_record, signed_distance

INK = [Parameterisation(), Parameterisation("coarse", 2), Parameterisation("coarse", 4),
       Parameterisation("coarse", 4, "bilinear"), Parameterisation("coarse", 8, tv=0.1)]
ALL = INK + [Parameterisation("outline", 4), Parameterisation("outline", 2, "bilinear", tv=0.1)]


def _print_glyphs(scale: int = 4) -> torch.Tensor:
    """Real glyphs at print scale (16 px sensor): exact 0 (paper) and 1 (ink) pixels and edges."""
    return rasterize("comic-neue", "AgQ8", 16, print_scale=scale).images


@pytest.mark.parametrize("p", INK, ids=lambda p: f"{p.kind}{p.factor}{p.mode}")
def test_the_change_is_bounded_by_eps_d_for_any_z(p):
    w = _print_glyphs()
    assert (w == 0).any() and (w == 1).any()
    g = torch.Generator().manual_seed(0)
    for eps in (0.05, 0.5, 1.0):
        for spread in (1.0, 30.0):  # moderate and saturating z (bicubic overshoot included)
            z = spread * torch.randn(p.z_shape(w.shape), generator=g)
            out = p.glyphs(w, z, eps)
            assert out.min() >= 0 and out.max() <= 1
            assert (out - w).abs().max() <= eps + 1e-6
            if spread > 1:  # and the bound is reached, not met by doing nothing
                assert (out - w).abs().max() > 0.9 * eps


@pytest.mark.parametrize("p", ALL, ids=lambda p: f"{p.kind}{p.factor}{p.mode}")
def test_zero_z_changes_nothing(p):
    w = _print_glyphs()
    assert torch.equal(p.glyphs(w, p.init(w.shape), 0.5), w)
    assert p.penalty(w, p.init(w.shape), 0.5) == 0


def test_pixel_is_the_papers_change_and_coarse_factor_1_agrees():
    w = _print_glyphs(1)
    z = 3 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1))
    assert torch.equal(Parameterisation().glyphs(w, z, 0.3), defended(w, z, 0.3))
    assert torch.allclose(Parameterisation("coarse", 1).glyphs(w, z, 0.3), defended(w, z, 0.3), atol=1e-6)


def test_bilinear_coarse_change_moves_at_most_eps_over_2_factor_per_print_pixel():
    """With bilinear upsampling a step of one print pixel moves up(z) by at most max |dz| / f
    between neighbouring cells, and the squash eps (2 sigmoid - 1) has slope <= eps / 2: so
    |dw(i+1) - dw(i)| <= eps / 2 * max |dz| / f (no clamp at w = 0.5, eps < 0.5). Per-pixel z
    of the same spread breaks that bound: the check can fail."""
    f, eps, n = 4, 0.4, 64
    w = torch.full((3, n, n), 0.5)
    g = torch.Generator().manual_seed(2)
    p = Parameterisation("coarse", f, "bilinear")
    z = 0.5 * torch.randn(p.z_shape(w.shape), generator=g)  # small: the bound stays below the change's range
    dw = p.change(w, z, eps)
    for dim in (-1, -2):
        step = dw.diff(dim=dim).abs().max()
        bound = eps / 2 * z.diff(dim=dim).abs().max() / f
        assert step <= bound + 1e-6
    speckle = Parameterisation().change(w, 0.5 * torch.randn(w.shape, generator=g), eps)
    assert speckle.diff(dim=-1).abs().max() > eps / 2 * z.diff(dim=-1).abs().max() / f


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_a_coarse_change_survives_the_sensor_while_pixel_speckle_averages_away(mode):
    """What 'printable' buys: the sensor (S x S area integration) keeps a coarse dw nearly whole
    (its energy ratio through the box filter near 1), while per-pixel speckle of the same
    amplitude loses most of it (independent pixels: about 1/S of the norm survives) and has
    several times the total variation."""
    s, eps = 4, 0.5
    w = torch.full((8, 16 * s, 16 * s), 0.5)
    g = torch.Generator().manual_seed(3)
    coarse = Parameterisation("coarse", s, mode)
    dw_c = coarse.change(w, 2 * torch.randn(coarse.z_shape(w.shape), generator=g), eps)
    dw_p = Parameterisation().change(w, 2 * torch.randn(w.shape, generator=g), eps)

    def kept(dw):  # the norm seen by the sensor, per print pixel, relative to the print's
        return (sensor_integrate(dw[:, None], s).norm() * s / dw.norm()).item()

    assert kept(dw_c) > 0.75 and kept(dw_p) < 1.5 / s
    tv = lambda dw: (dw.diff(dim=-1).abs().mean() + dw.diff(dim=-2).abs().mean()).item()  # noqa: E731
    assert tv(dw_c) < tv(dw_p) / 3


def test_penalty_is_the_weighted_mean_total_variation_and_descends():
    w = _print_glyphs()
    p = Parameterisation("coarse", 4, tv=0.25)
    z = torch.randn(p.z_shape(w.shape), generator=torch.Generator().manual_seed(4)).requires_grad_()
    dw = p.change(w, z, 0.5)
    by_hand = 0.25 * (dw.diff(dim=-1).abs().mean(dim=(-2, -1)) + dw.diff(dim=-2).abs().mean(dim=(-2, -1))).mean()
    assert torch.allclose(p.penalty(w, z, 0.5), by_hand, atol=1e-7)
    # descending the penalty alone smooths the change (on mid-gray glyphs, where no clamp acts)
    gray = torch.full_like(w, 0.5)
    before = p.penalty(gray, z, 0.5).item()
    opt = torch.optim.Adam([z], lr=0.1)
    for _ in range(30):
        opt.zero_grad()
        p.penalty(gray, z, 0.5).backward()
        assert z.grad.abs().sum() > 0
        opt.step()
    assert p.penalty(gray, z, 0.5).item() < 0.5 * before


def test_an_outlines_penalty_is_the_offsets_variation_along_the_edge():
    """outline: the TV of d / max offset over the edge band, not of dw: a constant offset (an
    edge moved evenly: dw is a whole band of flipped pixels) costs nothing, an offset flipping
    sign along the edge does, by hand; descending it makes the offset even."""
    w = _print_glyphs()
    p = Parameterisation("outline", 4, tv=0.5, scale=4)
    level = signed_distance(w)
    even = torch.full(p.z_shape(w.shape), 3.0)
    assert p.penalty(w, even, 0.5, level).item() == 0.0
    assert kornia.losses.total_variation(p.change(w, even, 0.5, level)).sum() > 0  # the old penalty was not 0
    z = torch.randn(p.z_shape(w.shape), generator=torch.Generator().manual_seed(2)).requires_grad_()
    d = 2 * torch.sigmoid(p.field(z, w.shape[-2:])) - 1
    band = (level.abs() <= 3.0).float()
    by_hand = ((d.diff(dim=-1).abs() * band[..., 1:] * band[..., :-1]).sum()
               + (d.diff(dim=-2).abs() * band[..., 1:, :] * band[..., :-1, :]).sum()) / band.sum()
    assert torch.allclose(p.penalty(w, z, 0.5, level), 0.5 * by_hand, atol=1e-6)
    before = p.penalty(w, z, 0.5, level).item()
    opt = torch.optim.Adam([z], lr=0.1)
    for _ in range(30):
        opt.zero_grad()
        p.penalty(w, z, 0.5, level).backward()
        opt.step()
    assert p.penalty(w, z, 0.5, level).item() < 0.5 * before


def test_shapes_records_and_bad_settings():
    p = Parameterisation("coarse", 4)
    assert p.z_shape((62, 128, 128)) == (62, 32, 32) and p.init((2, 8, 8)).shape == (2, 2, 2)
    assert Parameterisation.from_dict(p.to_dict()) == p and Parameterisation.from_dict(None) == Parameterisation()
    with pytest.raises(ValueError, match="do not divide"):
        p.z_shape((2, 30, 30))
    with pytest.raises(ValueError, match="expected"):
        p.glyphs(torch.zeros(2, 8, 8), torch.zeros(2, 8, 8), 0.5)
    assert Parameterisation.parse("coarse:4") == p and Parameterisation.parse("pixel", 0.1) == Parameterisation(tv=0.1)
    assert Parameterisation.parse("coarse:2:bilinear") == Parameterisation("coarse", 2, "bilinear")
    for text in ("coarse", "coarse:x", "pixel:2", "coarse:2:nearest", "speckle", "coarse:0", "outline", "outline:0"):
        with pytest.raises(ValueError):
            Parameterisation.parse(text)
    assert Parameterisation.parse("outline:4:bilinear", 0.2) == Parameterisation("outline", 4, "bilinear", 0.2)
    # the outline's offset: eps_D x scale print px (the design's S), whatever the grid; eps_D x factor without it
    ol = Parameterisation("outline", 8, scale=4)
    assert ol.max_offset(0.5) == 2.0 and ol.z_shape((3, 128, 128)) == (3, 16, 16)
    assert Parameterisation("outline", 4).max_offset(0.5) == 2.0 and Parameterisation("outline", 8).max_offset(0.5) == 4.0
    assert Parameterisation.from_dict(ol.to_dict()) == ol and "scale" not in Parameterisation("outline", 4).to_dict()
    for bad in (dict(kind="coarse", factor=2, scale=2), dict(kind="outline", factor=2, scale=0), dict(kind="outline", factor=2, scale=2.0)):
        with pytest.raises(ValueError, match="scale"):
            Parameterisation(**bad)
    for bad in (dict(kind="edges"), dict(kind="coarse", factor=0), dict(kind="coarse", factor=2.0),
                dict(factor=2), dict(kind="coarse", factor=2, mode="nearest"), dict(tv=-1.0), dict(tv=math.nan)):
        with pytest.raises(ValueError):
            Parameterisation(**bad)


def _edge(n: int = 64, x: float = 30.3, angle: float = 0.0) -> torch.Tensor:
    """[1, n, n] ink left of a straight edge through (x, n/2) turned by ``angle`` (radians),
    each pixel its exact-enough coverage (16x16 samples per pixel)."""
    sub = (torch.arange(n * 16, dtype=torch.float64) + 0.5) / 16
    yy, xx = torch.meshgrid(sub, sub, indexing="ij")
    inside = (xx - x) * math.cos(angle) + (yy - n / 2) * math.sin(angle) < 0
    return inside.double().reshape(n, 16, n, 16).mean(dim=(1, 3))[None].float()


def test_signed_distance_gives_the_glyph_back_and_is_the_distance_to_the_edge():
    w = _print_glyphs()
    phi = signed_distance(w)
    assert ((phi > 0) == (w > 0.5)).all()
    edge = (w > 0) & (w < 1)  # the ramp of phi is the coverage where the edge is straight; off at corners
    back = ((0.5 + phi).clamp(0, 1) - w).abs()
    assert torch.equal(back[~edge], torch.zeros(int((~edge).sum()))) and back[edge].mean() < 0.03 and back.max() < 0.35
    assert torch.equal(signed_distance(torch.zeros(2, 8, 8)), torch.full((2, 8, 8), -8.0))
    c = torch.arange(64) + 0.5
    inner = (slice(16, 48), slice(12, 52))  # away from where the edge leaves the canvas
    for angle in (0.0, 0.2, 0.4, math.pi / 4):
        e = _edge(x=30.3, angle=angle)  # coverage counted on 16 x 16 subsamples: 1/32 px of rounding
        true = -((c[None, :] - 30.3) * math.cos(angle) + (c[:, None] - 32) * math.sin(angle))
        band = true.abs() < 4
        err = (signed_distance(e)[0] - true)[inner][band[inner]].abs().max()
        assert err < 0.03, (angle, err)  # the pixel-grid transform alone: 0.14-0.47 px off the axes


@pytest.mark.parametrize("angle", [0.0, 0.2, 0.4, 0.7])
def test_an_outline_change_moves_a_straight_edge_by_the_offset_and_keeps_it_sharp(angle):
    """A constant z moves the edge by d = eps_D f (2 sigmoid(z) - 1) print px: the ink per row
    grows by d (exactly for a vertical edge, never more than eps_D f; on average d / cos within
    3% for a slanted one, the grid transform alone moved it 4-7% less), and the moved glyph is
    monochrome but for its 1-px anti-aliased edge (as many gray pixels as the source's edge has, about)."""
    p, eps = Parameterisation("outline", 4), 0.5
    e = _edge(angle=angle)
    rows = slice(16, 48)  # away from the canvas's top and bottom
    for zc in (-30.0, -1.0, 0.5, 30.0):
        z = torch.full(p.z_shape(e.shape), zc)
        out = p.glyphs(e, z, eps)
        d = eps * 4 * (2 * torch.sigmoid(torch.tensor(zc)) - 1)
        grown = (out - e)[0, rows].sum(dim=-1)  # per row: d / cos(angle) for an edge moved by d along its normal
        if angle == 0:
            assert (grown - d).abs().max() <= 1e-4 and grown.abs().max() <= p.max_offset(eps) + 1e-4
        else:  # rows see the slanted ramp at different phases; their mean is the area's
            assert 0.97 <= (grown.mean() / (d / math.cos(angle))).item() <= 1.01
        gray = lambda g: int(((g > 1e-6) & (g < 1 - 1e-6)).sum())  # noqa: E731
        assert gray(out) <= 1.5 * gray(e) + 4


def test_an_outline_design_is_monochrome_while_a_coarse_one_is_gray():
    """The point of the outline: for random saturating z on real glyphs the coarse change leaves
    most changed pixels gray (a font loses them), the outline's changed pixels are ink or paper
    but for the moved edge's ramp; its pixels far from every edge do not change at all."""
    w = _print_glyphs()
    g = torch.Generator().manual_seed(5)
    outline, coarse = Parameterisation("outline", 4), Parameterisation("coarse", 4)
    z = 30 * torch.randn(coarse.z_shape(w.shape), generator=g)
    gray = lambda x: ((x > 0.02) & (x < 0.98)).float().mean().item()  # noqa: E731
    assert gray(coarse.glyphs(w, z, 0.5)) > 0.4
    out = outline.glyphs(w, z, 0.5)
    assert gray(out) < 2 * gray(w) + 0.01
    far = signed_distance(w).abs() > outline.max_offset(0.5) + 0.5
    assert torch.equal(out[far], w[far]) and not torch.equal(out, w)


def test_the_change_record_measures_print_and_sensor_grids():
    """A coarse change of eps on mid-gray glyphs shows eps on both grids; one print pixel of ink
    added (|dw| 1 on the print) is 1 / S^2 of its sensor pixel."""
    w = torch.full((2, 16, 16), 0.5)
    coarse = Parameterisation("coarse", 4)
    rec = change_record(w, coarse.glyphs(w, torch.full(coarse.z_shape(w.shape), 30.0), 0.4), 4)
    assert rec["print_max"] == pytest.approx(0.4, abs=1e-4) and rec["sensor_max"] == pytest.approx(0.4, abs=1e-4)
    speck = torch.zeros(2, 16, 16)
    speck[1, 5, 6] = 1.0
    rec = change_record(torch.zeros(2, 16, 16), speck, 4)
    assert rec["print_max"] == 1.0 and rec["sensor_max"] == 1 / 16 and rec["sensor_mean"] == pytest.approx(1 / 16 / 32, abs=1e-5)
    assert change_record(speck, speck, 1) == {"print_max": 0.0, "sensor_max": 0.0, "sensor_mean": 0.0}


def test_robust_glyphs_with_an_outline_learn_and_checkpoint_only_z():
    """The trainer's glyph module: the source's signed distance is computed once (a buffer left
    out of checkpoints), the loss reaches z through the moved edges, and a step changes the glyphs."""
    from a5ocr.training.trainer import RobustGlyphs

    w = _print_glyphs()
    m = RobustGlyphs(w, 0.5, parameterisation=Parameterisation("outline", 4))
    assert torch.equal(m(), w) and torch.equal(m.level, signed_distance(w))
    assert set(m.state_dict()) == {"base", "z"}
    (m()[:, 20:40, 20:40].sum()).backward()  # more ink in a window
    assert m.z.grad is not None and m.z.grad.abs().sum() > 0
    with torch.no_grad():
        m.z += 10 * m.z.grad  # ascent
    assert m()[:, 20:40, 20:40].sum() > w[:, 20:40, 20:40].sum()
