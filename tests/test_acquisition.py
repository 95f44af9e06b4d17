import math
from dataclasses import replace

import pytest
import torch
from scipy import stats

from a5ocr.acquisition import Acquisition, AcquisitionConfig, apply, sample_params
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
    r = 16
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
