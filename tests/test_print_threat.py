"""Bounds through the camera (``a5ocr.bounds.camera``) and the print attack: the camera layer is
the acquisition itself, its transpose passes the dot-product test, and the bounds over the
print box (with and without the image attack) are never above the exact minimum margin (MILP),
nor above any of 10^4 random / vertex points or the PGD points through the real camera."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from test_bounds import _init, exact_margin_min
from torch import nn

from a5ocr import acquisition as acq
from a5ocr import bounds
from a5ocr.bounds import camera
from a5ocr.evaluation.attacks.print_attack import attacked_image, pgd_print, print_attack
from a5ocr.training.losses import attack_box

D = torch.float64
R = 6
METHODS = bounds.METHODS


def setup(n: int = 3, seed: int = 0, res: int = R):
    """Camera config at ``res``, n acquisitions' parameters (float64), n binary-ish glyphs."""
    cfg = acq.AcquisitionConfig().scaled(res)
    g = torch.Generator().manual_seed(seed)
    params = {k: v.to(D) for k, v in acq.sample_params(n, res, cfg, g).items()}
    w = (torch.rand(n, res, res, generator=g, dtype=D) > 0.5).to(D) * 0.9 + 0.05
    return cfg, params, w


def mlp(seed: int, classes: int = 3, res: int = R) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * res * res, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(),
                        nn.Linear(8, classes))
    return _init(net, seed, scale=2.0)


def conv(seed: int, classes: int = 3, res: int = R) -> nn.Module:
    torch.manual_seed(seed)
    side = (res + 1) // 2
    net = nn.Sequential(nn.Conv2d(3, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * side * side, 6), nn.ReLU(),
                        nn.Linear(6, classes))
    return _init(net, seed, scale=2.0)


ARCHS = {"mlp": mlp, "conv": conv}


def margins_at(model, w_adv, dx, params, cfg, labels):
    """Margins y_label - y_j [B, K] through the real camera (``acquisition.apply``) in float64."""
    with torch.no_grad():
        y = model(attacked_image(w_adv, dx, params, cfg))
    return y.gather(1, labels.view(-1, 1)) - y


# ------------------------------------------------------------------------- the camera layer
def test_camera_layer_is_the_acquisition_before_its_clamp():
    cfg, params, w = setup(4, seed=1)
    w32, p32 = w.float(), {k: v.float() for k, v in params.items()}
    layer = camera.CameraAffine(p32, cfg, (R, R))
    y = layer(w32.flatten(1))
    assert torch.allclose(y, acq.affine(w32, p32, cfg), atol=1e-6, rtol=0)
    assert torch.allclose(y.clamp(0, 1), acq.apply(w32, p32, cfg), atol=1e-6, rtol=0)
    # with the image attack the dx channels are carried shifted by 1
    lay2 = camera.CameraAffine(p32, cfg, (R, R), carry_dx=True)
    dx = torch.rand(4, 3, R, R) * 0.2 - 0.1
    out = lay2(torch.cat([w32.flatten(1), dx.flatten(1)], 1))
    assert torch.equal(out[:, :3], y) and torch.allclose(out[:, 3:], dx + 1)


def _dot_test(layer, gdim, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = layer.batch
    u = torch.randn((n, 5) + layer.image_shape, generator=g, dtype=D)
    v = torch.randn(n, 5, gdim, generator=g, dtype=D)
    off = layer.offset(D, "cpu")
    Lv = torch.stack([layer(v[:, s]) - off for s in range(5)], 1)
    lhs = (Lv * u).flatten(2).sum(2)
    rhs = (layer.transpose(u) * v).sum(2)
    assert torch.allclose(lhs, rhs, atol=1e-10, rtol=1e-10)
    assert lhs.abs().max() > 1e-3  # not a vacuous test


def test_camera_transpose_passes_the_dot_product_test():
    cfg, params, _ = setup(3, seed=2)
    _dot_test(camera.CameraAffine(params, cfg, (R, R)), R * R)


def _ibp_radius_holds(layer, w, eps, seed=0):
    """Random points of the box map inside [centre -+ radius] of the layer's IBP rule."""
    rule = bounds.rule_for(layer)
    lo, hi = (w.flatten(1) - eps).clamp(0, 1), (w.flatten(1) + eps).clamp(0, 1)
    c, r = rule.ibp((lo + hi) / 2, (hi - lo) / 2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(200):
        u = torch.rand(lo.shape, generator=g, dtype=D).round()
        y = layer(lo + (hi - lo) * u)
        assert torch.all((y - c).abs() <= r + 1e-12)


def test_camera_ibp_radius_contains_every_print_also_with_contrast_above_one():
    cfg, params, w = setup(4, seed=3)
    params["contrast"] = torch.tensor([0.9, 1.0, 1.1, 1.25], dtype=D)  # 1 - c of both signs
    _ibp_radius_holds(camera.CameraAffine(params, cfg, (R, R)), w, 0.2)


def test_camera_layer_takes_a_print_larger_than_the_sensor(monkeypatch):
    """The layer only calls ``acquisition.affine``: a camera that first averages a 2x print onto
    the sensor grid is followed exactly (forward, transpose, IBP radius)."""
    orig = acq.affine

    def supersampled(w, p, cfg):
        w4 = w if w.dim() == 4 else w.unsqueeze(1)
        return orig(F.avg_pool2d(w4, 2), p, cfg)

    monkeypatch.setattr(acq, "affine", supersampled)
    cfg, params, _ = setup(2, seed=4)
    w = torch.rand(2, 2 * R, 2 * R, dtype=D, generator=torch.Generator().manual_seed(0))
    layer = camera.CameraAffine(params, cfg, (2 * R, 2 * R))
    assert layer.image_shape == (3, R, R)
    assert torch.allclose(layer(w.flatten(1)), supersampled(w, params, cfg), atol=1e-12)
    _dot_test(layer, 4 * R * R)
    _ibp_radius_holds(layer, w, 0.1)


# ------------------------------------------------------------------------- soundness
def _lbs(model, w, params, cfg, labels, eps_p, eps_a):
    return {m: camera.camera_margin_lower_bounds(model, w, params, cfg, labels, eps_p, eps_a, m, sound=True)
            for m in METHODS}


@pytest.mark.parametrize("eps_a", [0.0, 0.02])
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_sound_against_the_exact_minimum_over_the_print_box(arch, eps_a):
    """A 5x5 glyph keeps the MILPs (every camera pixel, both clamps, dx) to a few seconds."""
    res = 5
    model = ARCHS[arch](5, res=res)
    cfg, params, w = setup(2, seed=5, res=res)
    labels = torch.tensor([0, 1])
    eps_p = 0.06
    lbs = _lbs(model, w, params, cfg, labels, eps_p, eps_a)
    for n in range(2):
        pn = camera.take_params(params, torch.tensor([n]))
        net = camera.camera_net(model, pn, cfg, (res, res), eps_a > 0)
        lo, hi = camera.print_box(w[n : n + 1], eps_p, eps_a, (3, res, res))
        for j in range(3):
            if j == labels[n]:
                continue
            exact, z = exact_margin_min(net, lo[0], hi[0], int(labels[n]), j)
            # the optimum is a real print (and dx): its margin through the real camera
            z = torch.as_tensor(z, dtype=D).view(1, -1)
            g = res * res
            dx = z[:, g:].view(1, 3, res, res) if eps_a > 0 else torch.zeros(1, 3, res, res, dtype=D)
            at = margins_at(model, z[:, :g].view(1, res, res), dx, pn, cfg, labels[n : n + 1])[0, j].item()
            assert at == pytest.approx(exact, abs=1e-6)
            for m in METHODS:
                assert exact >= lbs[m][n, j].item() - 1e-7, (m, exact, lbs[m][n, j].item())
    assert torch.all(lbs["alpha-crown"] >= lbs["crown"] - 1e-12)


@pytest.mark.parametrize("eps_a", [0.0, 0.03])
def test_sound_against_sampled_and_attacked_prints(eps_a):
    model = mlp(6)
    cfg, params, w = setup(3, seed=6)
    labels = torch.tensor([0, 1, 2])
    eps_p = 0.1
    lbs = _lbs(model, w, params, cfg, labels, eps_p, eps_a)
    g = torch.Generator().manual_seed(1)
    per = 3_334  # 10^4 points over the 3 samples
    lo, hi = (w - eps_p).clamp(0, 1), (w + eps_p).clamp(0, 1)
    u = torch.rand((per,) + tuple(w.shape), generator=g, dtype=D)
    u[: per // 2] = u[: per // 2].round()  # half of them vertices of the print box
    pts = (lo + (hi - lo) * u).reshape((-1, R, R))
    dx = eps_a * (2 * torch.rand(per * 3, 3, R, R, generator=g, dtype=D) - 1)
    dx[: per * 3 // 2] = dx[: per * 3 // 2].sign() * eps_a
    rep = {k: v.repeat((per,) + (1,) * (v.dim() - 1)) for k, v in params.items()}
    m = margins_at(model, pts, dx, rep, cfg, labels.repeat(per)).view(per, 3, 3)
    w_adv, d_adv = pgd_print(model, w, params, cfg, labels, eps_p, eps_a, loss="margin", steps=40, restarts=2)
    assert torch.all((w_adv - w).abs() <= eps_p + 1e-12) and torch.all(d_adv.abs() <= eps_a + 1e-12)
    m_pgd = margins_at(model, w_adv, d_adv, params, cfg, labels)
    for name, lb in lbs.items():
        assert torch.all(m >= lb - 1e-9), name
        assert torch.all(m_pgd >= lb - 1e-9), name
    # the bounds are not vacuous: the tightest one is within reach of the attack on some margin
    gap = (m_pgd - lbs["alpha-crown"]).scatter(1, labels.view(-1, 1), float("inf")).min()
    assert gap < 1.0


def test_zero_print_budget_is_the_image_box_exactly():
    """eps_print = 0: IBP through the camera equals IBP on ``attack_box(apply(w), eps_a)``."""
    model = conv(7)
    cfg, params, w = setup(3, seed=7)
    labels = torch.tensor([2, 0, 1])
    lb = camera.camera_margin_lower_bounds(model, w, params, cfg, labels, 0.0, 0.05, "ibp", sound=True)
    xl, xu = attack_box(acq.apply(w, params, cfg), 0.05)
    ref = bounds.margin_lower_bounds(model, xl, xu, labels, "ibp", sound=True)
    assert torch.allclose(lb, ref, atol=1e-10)


def test_certify_print_cascade_certifies_what_either_method_does():
    model = mlp(8)
    cfg, params, w = setup(12, seed=8)
    with torch.no_grad():
        labels = model(acq.apply(w, params, cfg)).argmax(1)
    args = (model, w, params, cfg, labels, 0.02, 0.01)
    ibp = camera.certify_print(*args, method="ibp", chunk=5)
    crown = camera.certify_print(*args, method="crown-ibp", chunk=5)
    both = camera.certify_print(*args, method="crown-ibp", ibp_first=True, chunk=5)
    assert torch.all(both >= (ibp | crown))
    assert both.any() and not both.all()  # a test that can tell


def test_print_attack_never_breaks_a_certified_sample():
    model = mlp(9)
    cfg, params, w = setup(16, seed=9)
    with torch.no_grad():
        labels = model(acq.apply(w, params, cfg)).argmax(1)
    cert = camera.certify_print(model, w, params, cfg, labels, 0.05, 0.0, "crown-ibp", ibp_first=True)
    res = print_attack(model, w, params, cfg, labels, 0.05, 0.0, strength="fast")
    assert not torch.any(cert & res.success)
    assert res.success.any() and cert.any()
    assert sum(res.per_attack.values()) == int(res.success.sum())
    assert torch.all((res.w_adv - w).abs() <= 0.05 + 1e-12)
    assert torch.allclose(res.x_adv, attacked_image(res.w_adv, res.dx, params, cfg))


def test_training_bounds_are_differentiable_in_the_glyph_and_the_weights():
    model = copy.deepcopy(mlp(10)).float()
    cfg, params, w = setup(4, seed=10)
    p32 = {k: v.float() for k, v in params.items()}
    w = w.float().requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 0])
    for method, f in (("ibp", None), ("crown-ibp", 0.5)):
        lb = camera.camera_margin_lower_bounds(model, w, p32, cfg, labels, 0.05, 0.02, method, f=f)
        loss = bounds.worst_case_cross_entropy(lb, labels)
        gw, gW = torch.autograd.grad(loss, (w, model[1].weight))
        assert torch.isfinite(gw).all() and gw.abs().sum() > 0 and gW.abs().sum() > 0
