import math
from dataclasses import replace

import kornia
import pytest
import torch
from scipy import stats

from a5ocr.acquisition import Acquisition, AcquisitionConfig, apply, homography, print_homography, sample_params, warp
from a5ocr.glyphs import rasterize


def _glyphs(r=32):
    return rasterize("comic-neue", "AaBb0", r).images


def test_shapes_range_and_seed_reproducible():
    w = _glyphs()
    acq = Acquisition(32)
    x1 = acq(w, torch.Generator().manual_seed(3))
    x2 = acq(w, torch.Generator().manual_seed(3))
    x3 = acq(w, torch.Generator().manual_seed(4))
    assert x1.shape == (5, 3, 32, 32)
    assert x1.min() >= 0 and x1.max() <= 1
    assert torch.equal(x1, x2)
    assert not torch.equal(x1, x3)


def test_differentiable_wrt_glyph():
    w = _glyphs().requires_grad_()
    x = Acquisition(32)(w, torch.Generator().manual_seed(0))
    (x * torch.randn_like(x)).sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_gradcheck_through_the_pipeline():
    # 8 px: the same ops as at 16 (blur kernel 3 at both; the warp's border a larger share), and
    # gradcheck builds the Jacobian column by column and row by row: 4x fewer inputs and outputs
    r = 8
    cfg = replace(AcquisitionConfig(), brightness=0.0, contrast=0.0).scaled(r)
    w = (0.2 + 0.6 * torch.rand(2, r, r, dtype=torch.float64)).requires_grad_()
    params = sample_params(2, r, cfg, torch.Generator().manual_seed(1))
    params["noise_std"] = params["noise_std"] * 0  # stay away from the final clamp
    assert torch.autograd.gradcheck(lambda v: apply(v, params, cfg), (w,), eps=1e-6, atol=1e-5)


def test_white_paper_black_ink_and_params_returned():
    w = _glyphs()
    x, params = Acquisition(32)(w, torch.Generator().manual_seed(0), return_params=True)
    # paper is bright, ink dark: the darkest pixel of each image is darker than its median
    flat = x[:, 0].flatten(1)
    assert (flat.median(1).values > 0.7).all() and (flat.min(1).values < 0.4).all()
    assert set(params) >= {"shift", "angle", "corners", "noise_std", "blur_sigma", "brightness", "contrast"}
    assert params["angle"].abs().max() <= 5


def test_saturation_and_hue_are_identities_on_gray_glyphs():
    # acquisition skips them for one-channel glyphs; check that running them changes nothing
    w = _glyphs(16)
    cfg = AcquisitionConfig().scaled(16)
    params = sample_params(5, 16, cfg, torch.Generator().manual_seed(2))
    gray = apply(w, params, cfg)
    colour = apply(w.unsqueeze(1).expand(5, 3, 16, 16), params, cfg)  # 3-channel path runs them
    assert torch.allclose(gray, colour, atol=1e-5)


def test_scaled_config_keeps_kernel_odd():
    for r in (16, 32, 64, 128):
        k = AcquisitionConfig().scaled(r).blur_kernel
        assert k % 2 == 1 and k >= 3
    assert AcquisitionConfig().scaled(128).blur_kernel == 9


def _uniform_ok(v: torch.Tensor, lo: float, hi: float) -> None:
    """v is U(lo, hi): inside the range, and a Kolmogorov-Smirnov test does not reject it."""
    v = v.double().flatten()
    assert v.min() >= lo and v.max() <= hi
    assert stats.kstest(((v - lo) / (hi - lo)).numpy(), "uniform").pvalue > 1e-4


@pytest.mark.parametrize("p", [0.5, 0.99])
def test_parameter_distributions_match_the_configuration(p):
    """Every draw of the camera follows its configured range and law, within sampling error
    (n = 20000, seeded): perspective rate p, corner offsets, shift, angle, noise, blur, jitter."""
    r, n = 32, 20_000
    cfg = replace(AcquisitionConfig(), perspective_p=p).scaled(r)
    prm = sample_params(n, r, cfg, torch.Generator().manual_seed(11))
    start = torch.tensor([[0.0, 0.0], [r - 1.0, 0.0], [r - 1.0, r - 1.0], [0.0, r - 1.0]])
    moved = (prm["corners"] - start).abs().flatten(1).amax(1) > 0
    rate = moved.double().mean().item()
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)
    half = (r - 1) / 2.0
    _uniform_ok((prm["corners"] - start)[moved].abs(), 0.0, cfg.distortion * half)
    _uniform_ok(prm["shift"], -cfg.pad, cfg.pad)
    assert cfg.pad == pytest.approx(5.0 * r / 128)
    _uniform_ok(prm["angle"], -cfg.degrees, cfg.degrees)
    _uniform_ok(prm["noise_std"], cfg.noise_min, cfg.noise_max)
    noise = prm["noise"][:200].double()
    assert abs(noise.mean().item()) < 4 / math.sqrt(noise.numel()) and abs(noise.std().item() - 1) < 0.01
    _uniform_ok(prm["blur_sigma"], *cfg.blur_sigma)
    assert cfg.blur_sigma == pytest.approx((0.01 * r / 128, 1.0 * r / 128))
    for name, width in (("brightness", cfg.brightness), ("contrast", cfg.contrast), ("saturation", cfg.saturation)):
        _uniform_ok(prm[name], 1 - width, 1 + width)
    _uniform_ok(prm["hue"], -cfg.hue, cfg.hue)


def test_the_distribution_check_can_fail():
    """A law outside the configured one is caught: angles drawn twice as wide, or a biased rate."""
    prm = sample_params(20_000, 32, replace(AcquisitionConfig(), degrees=10.0).scaled(32), torch.Generator().manual_seed(11))
    with pytest.raises(AssertionError):
        _uniform_ok(prm["angle"], -5.0, 5.0)
    with pytest.raises(AssertionError):
        _uniform_ok(prm["angle"].abs() ** 0.5, 0.0, math.sqrt(10.0))  # in range, but not uniform


# -- print resolution apart from sensor resolution ------------------------------------------------


def _still_params(n: int, r: int, shift: tuple[float, float] = (0.0, 0.0), dtype=torch.float64) -> dict:
    """Parameters of a camera that does not move the print (no angle, no perspective) but
    ``shift`` (sensor px), in ``dtype``; noise and jitter as drawn (they act after the warp)."""
    cfg = AcquisitionConfig().scaled(r)
    p = {k: v.to(dtype) for k, v in sample_params(n, r, cfg, torch.Generator().manual_seed(5)).items()}
    p["shift"] = torch.tensor(shift, dtype=dtype).expand(n, 2).clone()
    p["angle"] = torch.zeros(n, dtype=dtype)
    p["corners"] = torch.tensor([[0.0, 0.0], [r - 1.0, 0.0], [r - 1.0, r - 1.0], [0.0, r - 1.0]], dtype=dtype).expand(n, 4, 2).clone()
    return p


def _interval_integral(a: float, b: float, x0: float, x1: float, h: float) -> float:
    """Exact integral over [x0, x1] of clamp(a x + b, 0, h): a piecewise-linear integrand, so the
    trapezoid rule is exact between its breakpoints (where a x + b crosses 0 and h)."""
    cuts = [x0, x1] + ([t for t in (-b / a, (h - b) / a) if x0 < t < x1] if a != 0 else [])
    cuts.sort()
    f = lambda x: min(max(a * x + b, 0.0), h)  # noqa: E731
    return sum((u - t) * (f(t) + f(u)) / 2 for t, u in zip(cuts, cuts[1:]))


def _half_plane(n: int, slope: float, offset: float) -> torch.Tensor:
    """[n, n] the exact fraction of each pixel of an n x n grid over the unit canvas [0,1]^2
    (row 0 at the top, y downward) covered by the half-plane y > slope * x + offset."""
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        y0, y1 = i / n, (i + 1) / n
        for j in range(n):
            x0, x1 = j / n, (j + 1) / n
            # the covered height of column x inside [y0, y1] is clamp(y1 - max(line, y0), 0, 1/n)
            below = _interval_integral(-slope, y1 - offset, x0, x1, y1 - y0)
            out[i, j] = below / ((x1 - x0) * (y1 - y0))
    return out


@pytest.mark.parametrize("scale", [2, 4])
def test_sensor_integration_is_exact_on_a_constant_print(scale):
    r = 16
    params = _still_params(3, r)
    w = torch.full((3, 1, scale * r, scale * r), 0.37, dtype=torch.float64)
    assert torch.allclose(warp(w, params), torch.full((3, 1, r, r), 0.37, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", [2, 4])
def test_sensor_integration_is_the_area_fraction_of_a_half_plane_edge(scale):
    """A slanted edge printed at S*R as its exact area coverage: the still camera's sensor image
    is the exact fraction of each sensor pixel that the half-plane covers (box filters add areas)."""
    r = 12
    sensor = _half_plane(r, 0.37, 0.31)
    # the reference itself: the covered area is 1 - (0.31 + 0.37 / 2), and the edge crosses >= R pixels
    assert sensor.mean().item() == pytest.approx(1 - (0.31 + 0.37 / 2), abs=1e-12)
    assert sensor.min() == 0 and sensor.max() == 1 and ((sensor > 0.05) & (sensor < 0.95)).sum() >= r
    w = _half_plane(scale * r, 0.37, 0.31).expand(2, 1, scale * r, scale * r)
    got = warp(w, _still_params(2, r))
    assert torch.allclose(got, sensor.expand(2, 1, r, r), atol=1e-9, rtol=0)
    # the check can fail: without the area integration (the print sampled at one point per
    # sensor pixel) the edge pixels are off by far more than the tolerance
    assert (w[:, :, scale // 2 :: scale, scale // 2 :: scale] - sensor).abs().max() > 0.05


def _single_grid(w: torch.Tensor, params: dict, cfg: AcquisitionConfig) -> torch.Tensor:
    """The camera before print resolution was a thing (steps 1-8 on one grid), for gray glyphs."""
    w = w.unsqueeze(1)
    n, _, r, _ = w.shape
    h = homography(params, r)
    x = kornia.geometry.transform.warp_perspective(w, h, (r, r), mode="bilinear", padding_mode="zeros", align_corners=True)
    x = (1.0 - x + params["noise_std"].view(n, 1, 1, 1) * params["noise"]).expand(n, 3, r, r)
    x = kornia.filters.gaussian_blur2d(x, (cfg.blur_kernel,) * 2, params["blur_sigma"].view(n, 1).expand(n, 2), border_type="reflect")
    x = x * params["brightness"].view(n, 1, 1, 1)
    c = params["contrast"].view(n, 1, 1, 1)
    return (c * x + (1 - c) * kornia.color.rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)


def test_print_scale_1_is_the_single_grid_camera_bit_for_bit():
    w = _glyphs()
    acq = Acquisition(32, print_scale=1)
    x, params = acq(w, torch.Generator().manual_seed(7), return_params=True)
    assert torch.equal(x, Acquisition(32)(w, torch.Generator().manual_seed(7)))
    assert torch.equal(x, _single_grid(w, params, acq.cfg))


@pytest.mark.parametrize("scale", [2, 4])
def test_a_blocky_print_is_seen_almost_as_its_sensor_grid_glyph(scale):
    """A print that is the R glyph upsampled by nearest neighbour (each glyph pixel an S x S
    block), acquired at print scale S, against the R glyph acquired at S = 1 with the same draws.

    Not exact, and cannot be: at S = 1 the warp reads the glyph by bilinear interpolation between
    pixel centres (a tent kernel), at S > 1 it integrates the warped blocks over each sensor pixel
    (the area of each rotated square it covers); the two differ wherever an edge is rotated or
    moved by a non-multiple of 1/S px. Measured (32 px, 64 draws of the default camera, seeded):
    mean |dx| ~ 0.0023 and at most ~0.08 (S = 2) / ~0.12 (S = 4) on single edge pixels. The two
    agree exactly where they must: a still camera, and shifts by whole print pixels (k / S)."""
    r = 32
    w = _glyphs(r).repeat(13, 1, 1)[:64]
    cfg = AcquisitionConfig().scaled(r)
    params = sample_params(64, r, cfg, torch.Generator().manual_seed(0))
    blocky = w.repeat_interleave(scale, -1).repeat_interleave(scale, -2)
    diff = (apply(blocky, params, cfg) - apply(w, params, cfg)).abs()
    assert diff.mean() < 0.004 and diff.max() < 0.2
    for shift in ((0.0, 0.0), (1.0 / scale, 0.0), (-2.0 / scale, 3.0 / scale)):
        still = _still_params(5, r, shift, torch.float32)
        assert torch.allclose(apply(blocky[:5], still, cfg), apply(w[:5], still, cfg), atol=2e-5, rtol=0), shift


def test_print_homography_moves_the_print_as_the_sensor_glyph():
    """The same params at any print scale: a print pixel's centre maps to S x (where the sensor
    homography maps the same canvas point) in print coordinates."""
    r, s = 16, 4
    params = sample_params(6, r, AcquisitionConfig().scaled(r), torch.Generator().manual_seed(3))
    h, hs = homography(params, r).double(), print_homography(homography(params, r).double(), s)
    u = torch.tensor([[0.3, 7.9, 1.0], [15.0, 2.25, 1.0]], dtype=torch.float64).T  # sensor px (x, y, 1)
    p = torch.cat([s * u[:2] + (s - 1) / 2, u[2:]])  # the same points in print px
    to_sensor, to_print = h @ u, hs @ p
    to_sensor, to_print = to_sensor[:, :2] / to_sensor[:, 2:], to_print[:, :2] / to_print[:, 2:]
    assert torch.allclose(to_print, s * to_sensor + (s - 1) / 2, atol=1e-9)


def test_print_scale_gradcheck_and_wrong_sizes_are_refused():
    r = 6  # a 12 px print (blur kernel 3 as at 8 px): the full Jacobian, fewer rows and columns
    cfg = replace(AcquisitionConfig(), brightness=0.0, contrast=0.0).scaled(r)
    w = (0.2 + 0.6 * torch.rand(2, 2 * r, 2 * r, dtype=torch.float64)).requires_grad_()
    params = sample_params(2, r, cfg, torch.Generator().manual_seed(1))
    params["noise_std"] = params["noise_std"] * 0
    assert torch.autograd.gradcheck(lambda v: apply(v, params, cfg), (w,), eps=1e-6, atol=1e-5)
    acq = Acquisition(16, print_scale=4)
    assert acq(torch.rand(2, 64, 64)).shape == (2, 3, 16, 16) and acq.print_resolution == 64
    with pytest.raises(ValueError, match="prints at 64"):
        acq(torch.rand(2, 32, 32))
    with pytest.raises(ValueError, match="integer print scale"):
        apply(torch.rand(2, 20, 20), sample_params(2, 16, acq.cfg), acq.cfg)
    with pytest.raises(ValueError, match="print_scale"):
        Acquisition(16, print_scale=0)
