"""Tests of the certified bound engine (a5ocr.bounds).

Soundness against exact answers (MILP with scipy's HiGHS), sampling and PGD, tightness
relations, gradients, unsupported layers, float64 certification.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from a5ocr import bounds
from a5ocr.bounds import engine as bengine
from a5ocr.normalize import Normalize

METHODS = bounds.METHODS
D = torch.float64


# ----------------------------------------------------------------------------------------
# small random networks


def _init(model: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * scale / math.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return model.eval().to(D)


def mlp(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """5 -> 12 -> 12 -> 3 (24 ReLUs)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 3))
    return _init(net, seed), (5,)


def convnet(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """1x6x6 -> Normalize -> Conv(1->2, k3) ReLU -> Flatten -> Linear(32->8) ReLU -> Linear(8->3)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        Normalize(0.5, 1.0, channels=1),
        nn.Conv2d(1, 2, 3), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32, 8), nn.ReLU(),
        nn.Linear(8, 3),
    )
    return _init(net, seed), (1, 6, 6)


def bn_pool_net(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """Nested Sequentials with BatchNorm2d (eval), AvgPool2d, Identity, a strided padded conv."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        Normalize([0.4, 0.6], [0.5, 2.0], channels=2),
        nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), nn.ReLU()),
        nn.AvgPool2d(2),
        nn.Identity(),
        nn.Conv2d(3, 4, 2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3),
    )
    return _init(net, seed), (2, 8, 8)


ARCHS = {"mlp": mlp, "conv": convnet, "bnpool": bn_pool_net}


def box(shape, seed: int, eps: float, batch: int = 2):
    g = torch.Generator().manual_seed(10_000 + seed)
    x = torch.rand((batch,) + tuple(shape), generator=g, dtype=D)
    return x, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


# ----------------------------------------------------------------------------------------
# exact minima by MILP (independent of the engine: dense unrolled layers + plain interval bounds)


def _leaves(model):
    out = []
    for m in model:
        out.extend(_leaves(m) if isinstance(m, nn.Sequential) else [m])
    return out


def dense_segments(model: nn.Module, in_shape) -> list[tuple[np.ndarray, np.ndarray]]:
    """The net as affine maps (W [out, in], b [out]) separated by ReLUs (unrolled by probing)."""
    segs, cur, shape = [], [], tuple(in_shape)

    def close():
        nonlocal cur, shape
        n = math.prod(shape)
        with torch.no_grad():
            eye = torch.eye(n, dtype=D).view((n,) + shape)
            zero = torch.zeros((1,) + shape, dtype=D)
            for m in cur:
                eye, zero = m(eye), m(zero)
        b = zero.flatten()
        W = eye.reshape(n, -1) - b
        segs.append((W.T.numpy(), b.numpy()))
        shape = tuple(zero.shape[1:])
        cur = []

    for m in _leaves(model):
        if isinstance(m, nn.ReLU):
            close()
        else:
            cur.append(m)
    close()
    return segs


def exact_margin_min(model, x_lower, x_upper, label: int, j: int) -> tuple[float, np.ndarray]:
    """min over the box of y_label - y_j, by a big-M MILP; returns (value, argmin x)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    segs = dense_segments(model, x_lower.shape)
    lo = x_lower.flatten().numpy()
    hi = x_upper.flatten().numpy()
    n0 = lo.size
    # variable layout: x, then per hidden layer: z (pre), a (post), d (binary)
    sizes = [W.shape[0] for W, _ in segs[:-1]]
    nvar = n0 + 3 * sum(sizes)
    var_lo, var_hi = np.full(nvar, -np.inf), np.full(nvar, np.inf)
    integrality = np.zeros(nvar)
    var_lo[:n0], var_hi[:n0] = lo, hi
    rows, rlo, rhi = [], [], []
    prev, prev_lo, prev_hi = np.arange(n0), lo, hi
    off = n0
    for (W, b), n in zip(segs[:-1], sizes):
        z, a, d = np.arange(off, off + n), np.arange(off + n, off + 2 * n), np.arange(off + 2 * n, off + 3 * n)
        off += 3 * n
        Wp, Wn = np.clip(W, 0, None), np.clip(W, None, 0)
        l = Wp @ prev_lo + Wn @ prev_hi + b
        u = Wp @ prev_hi + Wn @ prev_lo + b
        for i in range(n):  # z_i = W_i . prev + b_i
            r = np.zeros(nvar)
            r[prev] = W[i]
            r[z[i]] = -1.0
            rows.append(r), rlo.append(-b[i]), rhi.append(-b[i])
        var_lo[z], var_hi[z] = l, u
        integrality[d] = 1
        var_lo[d], var_hi[d] = 0, 1
        for i in range(n):
            if l[i] >= 0:  # active: a = z
                r = np.zeros(nvar)
                r[a[i]], r[z[i]] = 1.0, -1.0
                rows.append(r), rlo.append(0.0), rhi.append(0.0)
                var_lo[a[i]], var_hi[a[i]] = l[i], u[i]
                var_lo[d[i]] = var_hi[d[i]] = 1
            elif u[i] <= 0:  # inactive: a = 0
                var_lo[a[i]] = var_hi[a[i]] = 0.0
                var_lo[d[i]] = var_hi[d[i]] = 0
            else:
                var_lo[a[i]], var_hi[a[i]] = 0.0, u[i]
                r = np.zeros(nvar)  # a - z >= 0
                r[a[i]], r[z[i]] = 1.0, -1.0
                rows.append(r), rlo.append(0.0), rhi.append(np.inf)
                r = np.zeros(nvar)  # a - z - l d <= -l   (a <= z - l (1 - d))
                r[a[i]], r[z[i]], r[d[i]] = 1.0, -1.0, -l[i]
                rows.append(r), rlo.append(-np.inf), rhi.append(-l[i])
                r = np.zeros(nvar)  # a - u d <= 0
                r[a[i]], r[d[i]] = 1.0, -u[i]
                rows.append(r), rlo.append(-np.inf), rhi.append(0.0)
        prev, prev_lo, prev_hi = a, np.maximum(l, 0), np.maximum(u, 0)
    W, b = segs[-1]
    cvec = W[label] - W[j]
    cost = np.zeros(nvar)
    cost[prev] = cvec
    const = b[label] - b[j]
    res = milp(
        cost,
        integrality=integrality,
        bounds=Bounds(var_lo, var_hi),
        constraints=[LinearConstraint(np.array(rows), rlo, rhi)] if rows else [],
        options={"mip_rel_gap": 1e-12, "presolve": True},
    )
    assert res.status == 0, res.message
    return float(res.fun + const), res.x[:n0]


def margins_of(model, x, labels):
    """Exact margins y_label - y_j at points x [B, *in] -> [B, K]."""
    y = model(x)
    return y.gather(1, labels.view(-1, 1)) - y


# ----------------------------------------------------------------------------------------
# soundness vs MILP


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("arch", ["mlp", "conv", "bnpool"])
def test_sound_against_milp(arch, seed):
    model, shape = ARCHS[arch](seed)
    eps = [0.05, 0.1, 0.2, 0.3][seed % 4] * (0.5 if arch == "bnpool" else 1.0)  # keep the MILPs small
    x, xl, xu = box(shape, seed, eps)
    labels = model(x).argmax(1)
    lbs = {m: bounds.margin_lower_bounds(model, xl, xu, labels, m).detach() for m in METHODS}
    for n in range(x.shape[0]):
        for j in range(3):
            if j == labels[n]:
                for m in METHODS:
                    assert lbs[m][n, j] == 0
                continue
            exact, xstar = exact_margin_min(model, xl[n], xu[n], int(labels[n]), j)
            # the MILP optimum is attained by a real input of the box
            xs = torch.as_tensor(xstar, dtype=D).view((1,) + shape)
            assert torch.all(xs >= xl[n] - 1e-9) and torch.all(xs <= xu[n] + 1e-9)
            at = margins_of(model, xs, labels[n : n + 1])[0, j].item()
            assert at == pytest.approx(exact, abs=1e-6)
            for m in METHODS:
                assert exact >= lbs[m][n, j].item() - 1e-6, (m, exact, lbs[m][n, j].item())
    # tightness order that must hold exactly
    assert torch.all(lbs["alpha-crown"] >= lbs["crown"] - 1e-12)


# ----------------------------------------------------------------------------------------
# soundness by sampling and PGD


def _pgd_min_margin(model, xl, xu, labels, j, steps=30):
    """Projected gradient descent on y_label - y_j over the box (an attack on our bounds)."""
    x = ((xl + xu) / 2).clone().requires_grad_(True)
    step = (xu - xl).max() / 8 + 1e-12
    for _ in range(steps):
        m = margins_of(model, x, labels)[:, j].sum()
        (g,) = torch.autograd.grad(m, x)
        with torch.no_grad():
            x -= step * g.sign()
            x.copy_(torch.maximum(torch.minimum(x, xu), xl))
    return margins_of(model, x.detach(), labels)


@pytest.mark.parametrize("arch", ["mlp", "conv", "bnpool"])
def test_sound_sampling_and_pgd(arch):
    model, shape = ARCHS[arch](7)
    x, xl, xu = box(shape, 7, 0.15, batch=3)
    labels = model(x).argmax(1)
    g = torch.Generator().manual_seed(0)
    n = 10_000
    with torch.no_grad():
        u = torch.rand((n,) + tuple(x.shape), generator=g, dtype=D)
        u[: n // 2] = u[: n // 2].round()  # half of the samples are box vertices
        pts = xl + (xu - xl) * u  # [n, B, *in]
        ys = model(pts.reshape((-1,) + shape)).view(n, x.shape[0], -1)
        margins = ys.gather(2, labels.view(1, -1, 1).expand(n, -1, 1)) - ys
    for m in METHODS:
        lb = bounds.margin_lower_bounds(model, xl, xu, labels, m).detach()
        assert torch.all(margins >= lb - 1e-9), m
        for j in range(3):
            adv = _pgd_min_margin(model, xl, xu, labels, j)
            assert torch.all(adv >= lb - 1e-9), m
        lo, hi = bounds.compute_bounds(model, xl, xu, method=m, bound_upper=True)
        assert lo.shape == (x.shape[0], 3) and hi.shape == (x.shape[0], 3)
        assert torch.all(ys >= lo - 1e-9) and torch.all(ys <= hi + 1e-9), m


def test_general_spec_matches_margin_spec():
    model, shape = convnet(3)
    x, xl, xu = box(shape, 3, 0.1, batch=4)
    labels = torch.tensor([0, 1, 2, 1])
    C = bounds.margin_spec(labels, 3).to(D)
    assert C.shape == (4, 3, 3)
    assert torch.all(C[torch.arange(4), labels] == 0)
    assert torch.all(C[0, 1] == torch.tensor([1.0, -1.0, 0.0], dtype=D))
    for m in METHODS:
        lb, ub = bounds.compute_bounds(model, xl, xu, C, method=m)
        assert ub is None
        ml = bounds.margin_lower_bounds(model, xl, xu, labels, m)
        assert torch.allclose(lb, ml, atol=1e-9), m
        assert torch.all(ml[torch.arange(4), labels] == 0)


# ----------------------------------------------------------------------------------------
# tightness


def test_tightness_relations():
    diffs = []
    for seed in range(12):
        model, shape = ARCHS[["mlp", "conv"][seed % 2]](100 + seed)
        x, xl, xu = box(shape, seed, 0.1, batch=3)
        labels = model(x).argmax(1)
        lb = {m: bounds.margin_lower_bounds(model, xl, xu, labels, m).detach() for m in METHODS}
        diffs.append((lb["crown"] - lb["ibp"]).mean().item())
        assert torch.all(lb["alpha-crown"] >= lb["crown"] - 1e-12)
    assert np.mean(diffs) > 0


@pytest.mark.parametrize("arch", ["mlp", "conv", "bnpool"])
def test_zero_width_box_is_exact(arch):
    model, shape = ARCHS[arch](5)
    x, _, _ = box(shape, 5, 0.0, batch=3)
    labels = torch.tensor([0, 1, 2])
    exact = margins_of(model, x, labels)
    for m in METHODS:
        lb = bounds.margin_lower_bounds(model, x, x.clone(), labels, m)
        assert torch.allclose(lb, exact, atol=1e-5), m
        lo, hi = bounds.compute_bounds(model, x, x.clone(), method=m, bound_upper=True)
        y = model(x)
        assert torch.allclose(lo, y, atol=1e-5) and torch.allclose(hi, y, atol=1e-5), m


def test_crown_intermediate_chunking_is_invisible():
    model, shape = convnet(11)
    x, xl, xu = box(shape, 11, 0.2, batch=3)
    net = bengine.BoundedSequential(model)
    shapes = net.shapes(shape)
    c, r = (xl + xu) / 2, (xu - xl) / 2
    boxes, pre = net.ibp_pass(c, r, net._fold_start())
    a = net.crown_intermediate(shapes, pre, boxes[net.exact_prefix], len(net.layers))
    b = net.crown_intermediate(shapes, pre, boxes[net.exact_prefix], len(net.layers), chunk_elements=7)
    for k in a:
        assert torch.allclose(a[k][0], b[k][0], atol=1e-12) and torch.allclose(a[k][1], b[k][1], atol=1e-12)
        assert torch.all(a[k][0] >= pre[k][0] - 1e-12) and torch.all(a[k][1] <= pre[k][1] + 1e-12)


# ----------------------------------------------------------------------------------------
# gradients


def _smooth_case(classes: int = 3, labels=None):
    """A tiny MLP and box whose pre-activation bounds and adaptive slopes are away from kinks
    (with ``labels``: also IBP margins at least 0.01 apart, so that a hardest-k selection is
    locally constant)."""
    for seed in range(200):
        torch.manual_seed(seed)
        net = _init(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, classes)), seed)
        x, xl, xu = box((3,), seed, 0.15, batch=2)
        xl, xu = x - 0.15, x + 0.15
        bn = bengine.BoundedSequential(net)
        shapes = bn.shapes((3,))
        c, r = (xl + xu) / 2, (xu - xl) / 2
        boxes, pre = bn.ibp_pass(c, r, bn._fold_start())
        crown_pre = bn.crown_intermediate(shapes, pre, boxes[0], len(bn.layers))
        ok = True
        for pp in (pre, crown_pre):
            for l, u in pp.values():
                if min(l.abs().min(), u.abs().min(), (u + l).abs().min()) < 0.05:
                    ok = False
        if ok and labels is not None:
            ibp = bounds.margin_lower_bounds(net, xl, xu, labels, "ibp")
            for n in range(ibp.shape[0]):
                v = torch.sort(ibp[n][torch.arange(classes) != labels[n]]).values
                ok = ok and bool((v[1:] - v[:-1]).min() > 0.01)
        if ok:
            return net, x, xl, xu
    raise AssertionError("no smooth case found")


def _with_weight(module: nn.Module, name: str, value: torch.Tensor, fn):
    """Run fn() with module.<name> temporarily replaced by a plain tensor (for gradcheck)."""
    old = getattr(module, name)
    delattr(module, name)
    setattr(module, name, value)
    try:
        return fn()
    finally:
        delattr(module, name)
        setattr(module, name, old)


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck(method):
    net, x, xl, xu = _smooth_case()
    labels = torch.tensor([0, 2])
    if method == "alpha-crown":
        # the optimised slopes are not a smooth function of the inputs: check at fixed alphas
        bn = bengine.BoundedSequential(net)
        shapes = bn.shapes((3,))
        C = bounds.margin_spec(labels, 3).to(D)

        def bound(a, b, alphas=None):
            c, r = (a + b) / 2, (b - a) / 2
            boxes, pre = bn.ibp_pass(c, r, bn._fold_start())
            pre = bn.crown_intermediate(shapes, pre, boxes[0], len(bn.layers))
            if alphas is None:
                return boxes, pre
            return bn.backward_bound(len(bn.layers) - 1, C, shapes, pre, boxes[0], alphas=alphas)[0]

        boxes, pre = bound(xl, xu)
        alphas = bengine._alpha_optimise(bn, C, shapes, pre, boxes[0], steps=10, lr=0.1)
        fn = lambda a, b: bound(a, b, alphas)  # noqa: E731
    else:
        fn = lambda a, b: bounds.margin_lower_bounds(net, a, b, labels, method)  # noqa: E731
    xl_ = xl.clone().requires_grad_(True)
    xu_ = xu.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (xl_, xu_), eps=1e-6, atol=1e-5)
    for layer, name in ((0, "weight"), (2, "weight"), (4, "weight"), (4, "bias")):
        w0 = getattr(net[layer], name).detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda w: _with_weight(net[layer], name, w, lambda: fn(xl, xu)), (w0,), eps=1e-6, atol=1e-5)


def test_gradients_reach_weights_and_images_float32():
    model = nn.Sequential(
        Normalize(0.5, 1.0), nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)
    )
    x = torch.rand(3, 3, 8, 8, requires_grad=True)
    labels = torch.tensor([0, 3, 4])
    for f in (0.0, 0.5):
        m = bounds.mixed_margin_lower_bounds(model, (x - 0.02).clamp(0, 1), (x + 0.02).clamp(0, 1), labels, f)
        loss = bounds.worst_case_cross_entropy(m)
        model.zero_grad()
        x.grad = None
        loss.backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        assert model[1].weight.grad is not None and model[1].weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------
# mixed bounds, losses


def test_mixed_bounds(monkeypatch):
    model, shape = convnet(2)
    x, xl, xu = box(shape, 2, 0.1, batch=3)
    labels = torch.tensor([2, 0, 1])
    ibp = bounds.margin_lower_bounds(model, xl, xu, labels, "ibp")
    cib = bounds.margin_lower_bounds(model, xl, xu, labels, "crown-ibp")
    assert torch.allclose(bounds.mixed_margin_lower_bounds(model, xl, xu, labels, 0.3), 0.3 * cib + 0.7 * ibp, atol=1e-12)
    assert torch.allclose(bounds.mixed_margin_lower_bounds(model, xl, xu, labels, 1.0), cib, atol=1e-12)

    calls = []
    orig = bengine.BoundedSequential.backward_bound
    monkeypatch.setattr(bengine.BoundedSequential, "backward_bound", lambda *a, **k: calls.append(1) or orig(*a, **k))
    assert torch.allclose(bounds.mixed_margin_lower_bounds(model, xl, xu, labels, 0.0), ibp, atol=1e-12)
    assert not calls  # f == 0: no CROWN pass at all


def test_worst_case_cross_entropy():
    m = torch.tensor([[0.0, 1.0, -2.0], [0.5, 0.0, 3.0]])
    labels = torch.tensor([0, 1])
    ref = F.cross_entropy(-m, labels)
    assert torch.allclose(bounds.worst_case_cross_entropy(m, labels), ref)
    assert torch.allclose(bounds.worst_case_cross_entropy(m), ref)
    assert torch.allclose(bounds.worst_case_logits(m), -m)
    assert bounds.worst_case_cross_entropy(m, reduction="none").shape == (2,)


# ----------------------------------------------------------------------------------------
# layers, errors, certification


@pytest.mark.parametrize("layer", [nn.Sigmoid(), nn.MaxPool2d(2), nn.Tanh()])
def test_unsupported_layer_is_named(layer):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), layer, nn.Flatten(), nn.LazyLinear(2))
    x = torch.rand(1, 1, 6, 6)
    with pytest.raises(TypeError, match=type(layer).__name__):
        bounds.margin_lower_bounds(model, x, x, torch.tensor([0]))


def test_non_sequential_and_train_mode_batchnorm_rejected():
    class Net(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="nn.Sequential"):
        bounds.compute_bounds(Net(), torch.zeros(1, 2), torch.zeros(1, 2))
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(32, 2))
    with pytest.raises(ValueError, match="eval"):
        bounds.compute_bounds(bn, torch.zeros(1, 1, 6, 6), torch.zeros(1, 1, 6, 6))
    with pytest.raises(ValueError, match="unknown bound method"):
        bounds.compute_bounds(bn.eval(), torch.zeros(1, 1, 6, 6), torch.zeros(1, 1, 6, 6), method="nope")


def test_certify_float64(monkeypatch):
    from a5ocr.bounds import api

    model, shape = convnet(4)
    model = model.float()
    x, xl, xu = box(shape, 4, 0.0, batch=6)
    x = x.float()
    labels = model(x).argmax(1)
    seen = []
    orig = api.margin_lower_bounds

    def spy(m, a, b, *args, **kw):
        seen.append((a.dtype, next(m.parameters()).dtype))
        return orig(m, a, b, *args, **kw)

    monkeypatch.setattr(api, "margin_lower_bounds", spy)
    for eps, method in ((1e-4, "ibp"), (1e-3, "crown-ibp"), (0.5, "crown"), (0.5, "alpha-crown")):
        xl, xu = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
        cert = bounds.certify(model, xl, xu, labels, method)
        assert cert.dtype == torch.bool and cert.shape == (6,)
        lb = orig(model, xl, xu, labels, method, sound=True)
        assert lb.dtype == torch.float64
        assert torch.equal(cert, (lb > 0).scatter(1, labels.view(-1, 1), True).all(1))
        if eps <= 1e-3:
            assert cert.all()  # easy: tiny boxes around correctly classified points
        if eps == 0.5:
            assert not cert.all()
    assert seen and all(d == (torch.float64, torch.float64) for d in seen)
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched
    # chunking gives the same answer
    xl, xu = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    assert torch.equal(bounds.certify(model, xl, xu, labels, "crown-ibp", chunk=4), bounds.certify(model, xl, xu, labels, "crown-ibp"))


def test_memory_chunking_is_invisible():
    model = nn.Sequential(
        Normalize(0.5, 1.0), nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 8),
        nn.ReLU(), nn.Linear(8, 5),
    ).to(D)
    x = torch.rand(7, 3, 8, 8, dtype=D)
    labels = torch.tensor([0, 3, 4, 1, 2, 2, 0])
    for method in ("crown-ibp", "crown"):
        grads = []
        outs = []
        for budget in (6.0, 1e-6):  # the tiny budget forces one sample per chunk
            xl = (x - 0.05).clamp(0, 1).requires_grad_(True)
            m = bounds.margin_lower_bounds(model, xl, (x + 0.05).clamp(0, 1), labels, method, max_memory_gib=budget)
            model.zero_grad()
            bounds.worst_case_cross_entropy(m).backward()
            outs.append(m.detach())
            grads.append((xl.grad.clone(), model[1].weight.grad.clone(), model[6].weight.grad.clone()))
        assert torch.allclose(outs[0], outs[1], atol=1e-12)
        for a, b in zip(*grads):
            assert torch.allclose(a, b, atol=1e-12)
        lo1, hi1 = bounds.compute_bounds(model, x - 0.05, x + 0.05, method=method, bound_upper=True)
        lo2, hi2 = bounds.compute_bounds(model, x - 0.05, x + 0.05, method=method, bound_upper=True, max_memory_gib=1e-6)
        assert torch.allclose(lo1, lo2, atol=1e-12) and torch.allclose(hi1, hi2, atol=1e-12)


def test_phase_split_transposed_conv():
    from a5ocr.bounds.kernels import _phase_conv_transpose

    g = torch.Generator().manual_seed(0)
    for k, s, p, H in ((5, 2, 2, 16), (3, 2, 1, 9), (4, 3, 0, 11), (5, 2, 2, 7), (1, 2, 0, 6)):
        x = torch.zeros(1, 3, H, H)
        Ho = F.conv2d(x, torch.zeros(4, 3, k, k), stride=s, padding=p).shape[-1]
        W = torch.randn(4, 3, k, k, generator=g)
        A = torch.randn(5, 4, Ho, Ho, generator=g)
        opad = H - ((Ho - 1) * s - 2 * p + k)
        ref = F.conv_transpose2d(A, W, None, s, p, opad)
        out = _phase_conv_transpose(A.contiguous(memory_format=torch.channels_last), W, (s, s), (p, p), (H, H))
        assert out.shape == ref.shape
        assert torch.allclose(out, ref, atol=1e-4)


def test_float32_fast_paths_match_float64():
    """float32 takes the channels-last / phase-split / permuted-ReLU paths that float64 skips."""
    torch.manual_seed(0)
    model = nn.Sequential(
        Normalize(0.5, 1.0), nn.Conv2d(3, 6, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(6, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 10), nn.ReLU(),
        nn.Linear(10, 4),
    )
    x = torch.rand(3, 3, 16, 16)
    labels = torch.tensor([0, 3, 1])
    for method in METHODS:
        res = {}
        for dt in (torch.float32, torch.float64):
            m = model.to(dt)
            xl = (x.to(dt) - 0.03).clamp(0, 1).requires_grad_(True)
            xu = (x.to(dt) + 0.03).clamp(0, 1).requires_grad_(True)
            lb = bounds.margin_lower_bounds(m, xl, xu, labels, method, alpha_steps=5)
            m.zero_grad()
            bounds.worst_case_cross_entropy(lb).backward()
            res[dt] = [lb.detach(), xl.grad, xu.grad, m[1].weight.grad, m[3].weight.grad, m[6].weight.grad]
        for a, b in zip(res[torch.float32], res[torch.float64]):
            assert torch.allclose(a.double(), b, rtol=1e-3, atol=1e-4), method
    model.float()


# ----------------------------------------------------------------------------------------
# robust_margins / robust_loss: the mix with IBP and the pruned (k hardest by IBP) margins

K6 = 6  # enough classes for a pruning to leave margins out


def mlp6(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """5 -> 12 -> 12 -> 6."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, K6))
    return _init(net, seed), (5,)


def conv6(seed: int) -> tuple[nn.Module, tuple[int, ...]]:
    """1x6x6 -> Normalize -> Conv(1->2, k3) ReLU -> Flatten -> Linear(32->8) ReLU -> Linear(8->6)."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        Normalize(0.5, 1.0, channels=1), nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, K6),
    )
    return _init(net, seed), (1, 6, 6)


ARCHS6 = {"mlp6": mlp6, "conv6": conv6}
KS = (0, 1, 2, 4, None)
FS = (None, 0.0, 0.5, 1.0)


def hardest_classes(ibp_margins, labels, k: int) -> list[list[int]]:
    """The k classes j != label with the smallest IBP margin bounds, ties by class index (by hand)."""
    out = []
    ibp_margins = ibp_margins.detach()
    for n in range(ibp_margins.shape[0]):
        pairs = sorted((float(ibp_margins[n, j]), j) for j in range(ibp_margins.shape[1]) if j != int(labels[n]))
        out.append(sorted(j for _, j in pairs[:k]))
    return out


@functools.cache
def six_class_case(arch: str, seed: int):
    """A 6-class net, a batch of 3 boxes, its labels and every margin's exact MILP minimum
    [3, K6] (0 at the label): (model, xl, xu, labels, exact). The MILPs are the slow part, so the
    two MILP tests of the 6-class nets (pruned margins, IBP-first margins) share them: built
    once per (arch, seed), read only."""
    model, shape = ARCHS6[arch](300 + seed)
    x, xl, xu = box(shape, 300 + seed, [0.08, 0.15, 0.25][seed], batch=3)
    labels = model(x).argmax(1)
    exact = torch.zeros(x.shape[0], K6, dtype=D)
    for n in range(x.shape[0]):
        for j in range(K6):
            if j != labels[n]:
                exact[n, j] = exact_margin_min(model, xl[n], xu[n], int(labels[n]), j)[0]
    return model, xl, xu, labels, exact


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("arch", list(ARCHS6))
def test_pruned_margins_sound_against_milp(arch, seed):
    model, xl, xu, labels, exact = six_class_case(arch, seed)
    for method in METHODS:
        for k in KS:
            for f in FS:
                lb = bounds.robust_margins(model, xl, xu, labels, method, f=f, k=k).detach()
                assert lb.shape == (xl.shape[0], K6)
                assert torch.all(lb[torch.arange(xl.shape[0]), labels] == 0)
                assert torch.all(lb <= exact + 1e-6), (method, k, f, (lb - exact).max().item())


@pytest.mark.parametrize("method", ["crown-ibp", "crown", "alpha-crown"])
@pytest.mark.parametrize("arch", list(ARCHS6))
def test_pruned_margins_are_full_on_the_selection_and_ibp_elsewhere(arch, method):
    model, shape = ARCHS6[arch](7)
    x, xl, xu = box(shape, 7, 0.2, batch=4)
    labels = torch.tensor([0, 3, 5, 3])
    ibp = bounds.robust_margins(model, xl, xu, labels, "ibp")
    for f in FS:
        full = bounds.robust_margins(model, xl, xu, labels, method, f=f)
        for k in (0, 1, 2, 4):
            lb = bounds.robust_margins(model, xl, xu, labels, method, f=f, k=k)
            chosen = hardest_classes(ibp, labels, k)
            for n in range(x.shape[0]):
                for j in range(K6):
                    ref = full if j in chosen[n] else ibp
                    assert torch.allclose(lb[n, j], ref[n, j], rtol=0, atol=1e-12), (f, k, n, j)
                    if j not in chosen[n]:
                        assert lb[n, j] == ibp[n, j]
        # k >= K-1 is the full computation, exactly
        for k in (K6 - 1, K6, 100):
            assert torch.equal(bounds.robust_margins(model, xl, xu, labels, method, f=f, k=k), full)


@pytest.mark.parametrize("arch", list(ARCHS6))
def test_robust_loss_is_above_the_cross_entropy_in_the_box(arch):
    model, shape = ARCHS6[arch](11)
    x, xl, xu = box(shape, 11, 0.15, batch=3)
    labels = torch.tensor([1, 4, 0])
    g = torch.Generator().manual_seed(1)
    n = 4000
    with torch.no_grad():
        u = torch.rand((n,) + tuple(x.shape), generator=g, dtype=D)
        u[: n // 2] = u[: n // 2].round()  # half of the samples are box vertices
        pts = xl + (xu - xl) * u  # [n, B, *in]
        ys = model(pts.reshape((-1,) + shape)).view(n, x.shape[0], -1)
        ce = F.cross_entropy(ys.reshape(-1, K6), labels.repeat(n), reduction="none").view(n, -1)
    # PGD ascent on the cross entropy (an attack on the loss bound)
    xa = x.clone().requires_grad_(True)
    for _ in range(40):
        (gx,) = torch.autograd.grad(F.cross_entropy(model(xa), labels, reduction="sum"), xa)
        with torch.no_grad():
            xa += (xu - xl).max() / 10 * gx.sign()
            xa.copy_(torch.maximum(torch.minimum(xa, xu), xl))
    with torch.no_grad():
        ce_pgd = F.cross_entropy(model(xa), labels, reduction="none")
    worst = torch.maximum(ce.max(0).values, ce_pgd)
    for method in ("crown-ibp", "ibp", "crown"):
        for k in (None, 1, 3):
            for f in (None, 0.5):
                m = bounds.robust_margins(model, xl, xu, labels, method, f=f, k=k)
                per_sample = bounds.worst_case_cross_entropy(m, labels, reduction="none")
                assert torch.all(per_sample >= worst - 1e-9), (method, k, f)
                loss = bounds.robust_loss(model, xl, xu, labels, method, f=f, k=k)
                assert loss.shape == () and torch.allclose(loss, per_sample.mean(), rtol=0, atol=1e-12)
                assert loss >= worst.mean() - 1e-9


@pytest.mark.parametrize("method", ["crown-ibp", "crown"])
def test_gradcheck_pruned(method):
    labels = torch.tensor([0, 4])
    net, x, xl, xu = _smooth_case(classes=K6, labels=labels)
    for k, f in ((2, None), (2, 0.5), (1, 0.3)):
        fn = lambda a, b: bounds.robust_margins(net, a, b, labels, method, f=f, k=k)  # noqa: E731
        xl_ = xl.clone().requires_grad_(True)
        xu_ = xu.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(fn, (xl_, xu_), eps=1e-6, atol=1e-5)
        for layer, name in ((0, "weight"), (2, "weight"), (4, "weight"), (4, "bias")):
            w0 = getattr(net[layer], name).detach().clone().requires_grad_(True)
            assert torch.autograd.gradcheck(
                lambda w: _with_weight(net[layer], name, w, lambda: fn(xl, xu)), (w0,), eps=1e-6, atol=1e-5
            )
        loss = lambda a, b: bounds.robust_loss(net, a, b, labels, method, f=f, k=k)  # noqa: E731
        assert torch.autograd.gradcheck(loss, (xl.clone().requires_grad_(True), xu.clone().requires_grad_(True)),
                                        eps=1e-6, atol=1e-5)


def test_hardest_by_ibp_selection_by_hand(monkeypatch):
    from a5ocr.bounds import pruned

    ibp = torch.tensor([[3.0, -1.0, 2.0, -1.0, 0.5], [0.0, 0.0, 0.0, -2.0, 0.0]])
    assert pruned.hardest_by_ibp(ibp, 3).tolist() == [[1, 3, 4], [3, 0, 1]]  # ties by position
    assert pruned.hardest_by_ibp(ibp, 1).tolist() == [[1], [3]]
    # y_j = relu(x_j) + b_j with x in [0, 1]^5: IBP bound of y_l - y_j = b_l - b_j - 1
    net = nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 5)).to(D)
    with torch.no_grad():
        for lin in (net[0], net[2]):
            lin.weight.copy_(torch.eye(5, dtype=D))
            lin.bias.zero_()
        net[2].bias.copy_(torch.tensor([0.0, 0.5, -0.2, 0.5, 0.1], dtype=D))
    xl, xu = torch.zeros(2, 5, dtype=D), torch.ones(2, 5, dtype=D)
    labels = torch.tensor([0, 2])
    ibp = bounds.robust_margins(net, xl, xu, labels, "ibp")
    b = net[2].bias.detach()
    assert torch.allclose(ibp, (b[labels].view(-1, 1) - b - 1).index_put((torch.arange(2), labels), torch.zeros(2, dtype=D)))
    seen = []
    orig = pruned.relaxed_bounds

    def spy(net_, shapes, boxes, pre, spec, margin, *a, **kw):
        seen.append(margin[1].clone())
        return orig(net_, shapes, boxes, pre, spec, margin, *a, **kw)

    monkeypatch.setattr(pruned, "relaxed_bounds", spy)
    # label 0: bounds -1.5 (j=1), -0.8 (j=2), -1.5 (j=3), -1.1 (j=4); label 2: -1.2, -1.7, -1.7, -1.3
    expect = {1: [[1], [1]], 2: [[1, 3], [1, 3]], 3: [[1, 3, 4], [1, 3, 4]]}
    for k, classes in expect.items():
        seen.clear()
        bounds.robust_margins(net, xl, xu, labels, "crown-ibp", k=k)
        assert len(seen) == 1 and seen[0].shape == (2, k)  # the relaxation sees only k specs per sample
        assert sorted(seen[0][0].tolist()) == classes[0] and sorted(seen[0][1].tolist()) == classes[1]
    assert hardest_classes(ibp, labels, 2) == expect[2]


def test_robust_margins_validation_and_float32_gradients():
    model = nn.Sequential(
        Normalize(0.5, 1.0), nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 8)
    )
    x = torch.rand(3, 3, 8, 8, requires_grad=True)
    labels = torch.tensor([0, 3, 7])
    xl, xu = (x - 0.02).clamp(0, 1), (x + 0.02).clamp(0, 1)
    for bad in (dict(f=1.5), dict(f=-0.1), dict(f=float("nan")), dict(k=-1), dict(k=1.5), dict(method="nope")):
        with pytest.raises(ValueError):
            bounds.robust_margins(model, xl, xu, labels, **bad)
    for k, f in ((2, 0.5), (3, None), (1, 1.0)):
        loss = bounds.robust_loss(model, xl, xu, labels, "crown-ibp", f=f, k=k)
        model.zero_grad()
        x.grad = None
        loss.backward(retain_graph=True)
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        assert model[1].weight.grad is not None and model[1].weight.grad.abs().sum() > 0
    # the memory budget's chunking is invisible on the pruned path too
    with torch.no_grad():
        a = bounds.robust_margins(model, xl, xu, labels, "crown-ibp", f=0.5, k=3)
        b = bounds.robust_margins(model, xl, xu, labels, "crown-ibp", f=0.5, k=3, max_memory_gib=1e-9)
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("n,s", [(1, 1), (2, 1), (2, 3)])
def test_relu_backward_kernel_gradcheck(n, s):
    """The ReLU backward kernel with one spec (S = 1: a 2-class net, or k = 1 pruned margins):
    its gradient buffers once aliased (grad of the upper slope overwritten by the sign of A)."""
    from a5ocr.bounds.kernels import _ReLULowerBackward

    g = torch.Generator().manual_seed(n * 10 + s)
    for lower in ((n, 1, 5), (n, s, 5)):
        args = [torch.randn(n, s, 5, generator=g, dtype=D), torch.rand(lower, generator=g, dtype=D)]
        args += [torch.rand(n, 1, 5, generator=g, dtype=D) for _ in range(2)]
        args = [a.requires_grad_(True) for a in args]
        assert torch.autograd.gradcheck(lambda *a: _ReLULowerBackward.apply(*a), args)


def test_gradcheck_two_classes():
    """K = 2: one margin per sample, through the whole engine (gradients must not leak between samples)."""
    labels = torch.tensor([0, 1])
    net, x, xl, xu = _smooth_case(classes=2)
    for method in ("crown-ibp", "crown"):
        fn = lambda a, b: bounds.margin_lower_bounds(net, a, b, labels, method)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (xl.clone().requires_grad_(True), xu.clone().requires_grad_(True)),
                                        eps=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------------------
# the certification cascade per margin: IBP everywhere, the relaxation only where IBP fails


def test_group_size_by_hand():
    from a5ocr.bounds.api import _group_size

    assert [_group_size(u, 61) for u in (1, 2, 3, 4, 5, 8, 9, 33, 61)] == [1, 2, 4, 4, 8, 8, 16, 61, 61]
    assert _group_size(5, 5) == 5 and _group_size(3, 5) == 4


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("arch", list(ARCHS6))
def test_ibp_first_margins_sound_against_milp_and_equal_to_the_best_of_both(arch, seed):
    """Every entry is <= its exact MILP minimum; where IBP proves the margin it is the IBP bound,
    elsewhere max(IBP, <method> on every margin) (CROWN-IBP: exactly; CROWN and alpha-CROWN,
    whose pruned path also keeps the IBP intermediate bounds: at least that); certify(ibp_first)
    certifies a superset of each method alone."""
    model, xl, xu, labels, exact = six_class_case(arch, seed)
    ibp = bounds.margin_lower_bounds(model, xl, xu, labels, "ibp").detach()
    for method in METHODS:
        lb = bounds.ibp_first_margin_lower_bounds(model, xl, xu, labels, method)
        full = bounds.margin_lower_bounds(model, xl, xu, labels, method).detach()
        assert torch.all(lb <= exact + 1e-6), (method, (lb - exact).max().item())
        assert torch.all(lb[torch.arange(xl.shape[0]), labels] == 0)
        want = torch.where(ibp > 0, ibp, torch.maximum(ibp, full))  # (extra margins of a group may be tighter)
        assert torch.all(lb >= ibp - 1e-12)  # (the pruned pass redoes IBP on a sub-batch: last-bit differences)
        done = ((ibp > 0) | (torch.arange(K6) == labels.view(-1, 1))).all(1)  # proven by IBP alone
        assert torch.equal(lb[done], ibp[done])
        assert torch.all(lb >= want - 1e-10), (method, (want - lb).max().item())
        if method in ("ibp", "crown-ibp"):  # the same IBP intermediate bounds: the same numbers where IBP fails
            assert torch.allclose(lb[ibp <= 0], want[ibp <= 0], rtol=0, atol=1e-10)
        cert = bounds.certify(model, xl, xu, labels, method, ibp_first=True)
        assert torch.equal(cert, ((lb > 0) | (torch.arange(K6) == labels.view(-1, 1))).all(1))
        assert torch.all(cert >= bounds.certify(model, xl, xu, labels, method))
        assert torch.all(cert >= bounds.certify(model, xl, xu, labels, "ibp"))


def test_ibp_first_runs_the_relaxation_only_on_ibp_unproven_margins(monkeypatch):
    """The relaxation sees each sample's IBP-unproven margins (rounded up to a power of two of
    the hardest by IBP) and nothing for a sample IBP proves: counted with a spy."""
    from a5ocr.bounds import pruned

    # y_j = relu(x_j) + b_j, x in [0, 1]^5: IBP bound of y_l - y_j = b_l - b_j - 1
    net = nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 5)).to(D)
    with torch.no_grad():
        for lin in (net[0], net[2]):
            lin.weight.copy_(torch.eye(5, dtype=D))
            lin.bias.zero_()
        net[2].bias.copy_(torch.tensor([4.0, 0.5, 2.2, 0.5, 2.6], dtype=D))
    xl, xu = torch.zeros(3, 5, dtype=D), torch.ones(3, 5, dtype=D)
    labels = torch.tensor([0, 2, 1])  # IBP-unproven margins: none; j = 0, 4; all four
    ibp = bounds.margin_lower_bounds(net, xl, xu, labels, "ibp")
    unproven = ((ibp <= 0) & (torch.arange(5) != labels.view(-1, 1))).sum(1).tolist()
    assert unproven == [0, 2, 4]
    seen = []
    orig = pruned.relaxed_bounds

    def spy(net_, shapes, boxes, pre, spec, margin, *a, **kw):
        seen.append((margin[0].clone(), margin[1].shape[1]))
        return orig(net_, shapes, boxes, pre, spec, margin, *a, **kw)

    monkeypatch.setattr(pruned, "relaxed_bounds", spy)
    lb = bounds.ibp_first_margin_lower_bounds(net, xl, xu, labels, "crown-ibp")
    from a5ocr.bounds.api import _group_size

    got = sorted((int(lab), k) for labs, k in seen for lab in labs)
    assert got == sorted((int(labels[n]), _group_size(unproven[n], 4)) for n in (1, 2))
    assert torch.equal(lb[0], ibp[0])  # proven by IBP: untouched
    # here the net is exact in the box (identity + ReLU on [0, 1]): CROWN-IBP is exact too
    assert torch.all(lb >= ibp)


# ----------------------------------------------------------------------------------------
# window-form ("patches") intermediate CROWN: the same bounds as the dense reference path

from a5ocr.bounds import patches as bpatches  # noqa: E402


@pytest.fixture
def windows_always(monkeypatch):
    """Force the window path wherever the layers allow it (these nets are too small for it to pay)."""
    monkeypatch.setattr(bpatches, "WINDOW_SHARE", math.inf)


def patch_net(seed: int, size: int = 9, widths=(3, 3, 2), bias: bool = True) -> tuple[nn.Module, tuple[int, ...]]:
    """The paper net's geometry in small: Normalize, Conv k5 s2 p2, Conv k5 s2 p2, Conv k3 s2 p1 (+BN),
    Linear, Linear (size: the input side, odd or even)."""
    torch.manual_seed(seed)
    a, b, c = widths
    convs = [nn.Conv2d(2, a, 5, stride=2, padding=2, bias=bias), nn.Conv2d(a, b, 5, stride=2, padding=2),
             nn.Conv2d(b, c, 3, stride=2, padding=1)]
    shapes = bengine.BoundedSequential(nn.Sequential(*convs)).shapes((2, size, size))
    net = nn.Sequential(
        Normalize([0.4, 0.6], [0.5, 2.0], channels=2),
        convs[0], nn.ReLU(), convs[1], nn.ReLU(), nn.Identity(), convs[2], nn.BatchNorm2d(c), nn.ReLU(),
        nn.Flatten(), nn.Linear(math.prod(shapes[-1]), 6), nn.ReLU(), nn.Linear(6, 3),
    )
    return _init(net, seed, scale=1.5), (2, size, size)


def _intermediate_both_paths(model, shape, xl, xu):
    net = bengine.BoundedSequential(model)
    shapes = net.shapes(shape)
    c, r = (xl + xu) / 2, (xu - xl) / 2
    boxes, pre = net.ibp_pass(c, r, net._fold_start())
    box_ = boxes[net.exact_prefix]
    taken = [k for k in pre if k > net.exact_prefix and not net._ibp_exact_at(k)
             and bpatches.patch_plan(net.layers, net.exact_prefix, k, shapes) is not None]
    fast = net.crown_intermediate(shapes, pre, box_, len(net.layers))
    ref = net.crown_intermediate(shapes, pre, box_, len(net.layers), patches=False)
    return pre, fast, ref, taken


@pytest.mark.parametrize("size,eps,force", [(9, 0.1, True), (10, 0.05, True), (11, 0.2, True), (16, 0.05, True),
                                            (19, 0.03, False), (20, 0.03, False)])
def test_patch_intermediate_bounds_equal_the_dense_path(size, eps, force, monkeypatch):
    if force:
        monkeypatch.setattr(bpatches, "WINDOW_SHARE", math.inf)
    model, shape = patch_net(size, size)
    _, xl, xu = box(shape, size, eps, batch=3)
    pre, fast, ref, taken = _intermediate_both_paths(model, shape, xl, xu)
    assert taken  # the window path was used (for the second and third convs' outputs)
    for k in ref:
        assert torch.allclose(fast[k][0], ref[k][0], rtol=0, atol=1e-9), k
        assert torch.allclose(fast[k][1], ref[k][1], rtol=0, atol=1e-9), k
    tightened = [k for k in taken if bool((ref[k][0] > pre[k][0] + 1e-6).any())]
    assert tightened  # CROWN did something there (the comparison is not between two IBP copies)


def test_patch_path_chunked_and_without_bias_equals_the_dense_path(windows_always):
    model, shape = patch_net(3, 12, widths=(4, 2, 3), bias=False)
    _, xl, xu = box(shape, 3, 0.1, batch=2)
    net = bengine.BoundedSequential(model)
    shapes = net.shapes(shape)
    c, r = (xl + xu) / 2, (xu - xl) / 2
    boxes, pre = net.ibp_pass(c, r, net._fold_start())
    ref = net.crown_intermediate(shapes, pre, boxes[1], len(net.layers), patches=False)
    tiny = net.crown_intermediate(shapes, pre, boxes[1], len(net.layers), chunk_elements=1)  # one position a chunk
    for k in ref:
        assert torch.allclose(tiny[k][0], ref[k][0], rtol=0, atol=1e-9)
        assert torch.allclose(tiny[k][1], ref[k][1], rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", ["crown", "alpha-crown"])
def test_final_bounds_with_patches_equal_the_dense_path(method, windows_always):
    model, shape = patch_net(5, 11)
    _, xl, xu = box(shape, 5, 0.1, batch=3)
    C = bounds.margin_spec(torch.tensor([0, 1, 2]), 3).to(D)
    out = {}
    for patches in (True, False):
        out[patches] = bengine.bounds_for(model, xl, xu, C, method, bound_upper=True, alpha_steps=5,
                                          crown_patches=patches)
    for a, b in zip(out[True][:2], out[False][:2]):
        assert torch.allclose(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_patch_path_sound_against_milp(seed, windows_always):
    model, shape = patch_net(seed, [7, 8, 9][seed], widths=(2, 2, 2))
    x, xl, xu = box(shape, seed, [0.02, 0.04, 0.03][seed])
    labels = model(x).argmax(1)
    lbs = {m: bounds.margin_lower_bounds(model, xl, xu, labels, m, alpha_steps=10).detach()
           for m in ("ibp", "crown", "alpha-crown")}
    for n in range(x.shape[0]):
        for j in range(3):
            if j == labels[n]:
                continue
            exact, _ = exact_margin_min(model, xl[n], xu[n], int(labels[n]), j)
            for m, lb in lbs.items():
                assert exact >= lb[n, j].item() - 1e-6, (m, exact, lb[n, j].item())
    assert torch.all(lbs["alpha-crown"] >= lbs["crown"] - 1e-12)


def test_patch_path_sound_by_sampling_and_pgd(windows_always):
    model, shape = patch_net(2, 13)
    x, xl, xu = box(shape, 2, 0.05, batch=2)
    labels = model(x).argmax(1)
    g = torch.Generator().manual_seed(1)
    n = 4000
    with torch.no_grad():
        u = torch.rand((n,) + tuple(x.shape), generator=g, dtype=D)
        u[: n // 2] = u[: n // 2].round()  # box vertices
        ys = model((xl + (xu - xl) * u).reshape((-1,) + shape)).view(n, x.shape[0], -1)
        margins = ys.gather(2, labels.view(1, -1, 1).expand(n, -1, 1)) - ys
    for m in ("crown", "alpha-crown"):
        lb = bounds.margin_lower_bounds(model, xl, xu, labels, m, alpha_steps=5).detach()
        assert torch.all(margins >= lb - 1e-9), m
        for j in range(3):
            assert torch.all(_pgd_min_margin(model, xl, xu, labels, j) >= lb - 1e-9), m
        lo, hi = bounds.compute_bounds(model, xl, xu, method=m, bound_upper=True, alpha_steps=5)
        assert torch.all(ys >= lo - 1e-9) and torch.all(ys <= hi + 1e-9), m


def test_patch_path_gradients_equal_the_dense_path(windows_always):
    model, shape = patch_net(4, 10)
    _, xl, xu = box(shape, 4, 0.05, batch=2)
    C = bounds.margin_spec(torch.tensor([0, 2]), 3).to(D)
    grads = {}
    for patches in (True, False):
        a, b = xl.clone().requires_grad_(True), xu.clone().requires_grad_(True)
        model.zero_grad()
        lb, _, _ = bengine.bounds_for(model, a, b, C, "crown", crown_patches=patches)
        lb.sum().backward()
        grads[patches] = [a.grad, b.grad] + [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(grads[True]) == len(grads[False]) > 2
    for g1, g2 in zip(grads[True], grads[False]):
        assert torch.allclose(g1, g2, rtol=0, atol=1e-9)


def test_patch_bounds_gradcheck_at_fixed_relaxations(windows_always):
    """With the ReLU relaxations fixed, the window bounds are smooth in the box and the weights."""
    model, shape = patch_net(6, 9, widths=(2, 2, 2))
    _, xl, xu = box(shape, 6, 0.1, batch=2)
    net = bengine.BoundedSequential(model)
    shapes = net.shapes(shape)
    c, r = (xl + xu) / 2, (xu - xl) / 2
    boxes, pre = net.ibp_pass(c, r, net._fold_start())
    pre = {i: (l.detach(), u.detach()) for i, (l, u) in pre.items()}
    k = 4  # the ReLU after the second conv: back through conv2, ReLU, conv1
    assert bpatches.patch_plan(net.layers, 1, k, shapes) is not None
    relax = {i: net.layers[i].relaxation(*pre[i]) for i in pre}
    pos = torch.tensor([0, 2, 3])

    def fn(c_, r_):
        return bpatches.patch_bounds(net.layers, 1, k, shapes, relax.__getitem__, (c_, r_), pos)

    c1, r1 = boxes[1]
    c1, r1 = c1.detach().clone().requires_grad_(True), r1.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (c1, r1), eps=1e-6, atol=1e-6, fast_mode=True)
    for layer in (model[1], model[3]):
        w0 = layer.weight.detach().clone().requires_grad_(True)
        with_w = lambda w: _with_weight(layer, "weight", w, lambda: fn(c1.detach(), r1.detach()))  # noqa: E731
        assert torch.autograd.gradcheck(with_w, (w0,), eps=1e-6, atol=1e-6, fast_mode=True)


def test_window_geometry_by_hand():
    """Windows of a k3 s2 p1 conv's outputs on a 5x5 input: position (i, j) covers rows 2i-1..2i+1."""
    t = torch.arange(25, dtype=D).view(1, 1, 5, 5) + 1
    win = bpatches.Window.start((3, 3), torch.arange(9)).through_conv((3, 3), (2, 2), (1, 1))
    assert win.size == (3, 3) and win.stride == (2, 2) and win.offset == (1, 1)
    w = win.gather(t)[0, :, :, :, 0]  # [9, 3, 3] (channels last)
    assert torch.equal(w[0], torch.tensor([[0, 0, 0], [0, 1, 2], [0, 6, 7]], dtype=D))
    assert torch.equal(w[4], t[0, 0, 1:4, 1:4])
    assert torch.equal(w[8], torch.tensor([[19, 20, 0], [24, 25, 0], [0, 0, 0]], dtype=D))
    valid = win.valid((5, 5), D, "cpu")
    assert valid.shape == (1, 9, 1, 3, 3, 1) and int(valid[0, 4].sum()) == 9 and int(valid[0, 0].sum()) == 4


def test_the_default_crown_budget_follows_the_grad_mode_and_the_ibp_pass():
    from a5ocr.bounds.budget import crown_budget_gib  # local: an engine detail, not the public API

    pre = {1: (torch.zeros(100, 2**20), torch.zeros(100, 2**20))}  # 2 x 400 MiB of pre-activation bounds
    assert crown_budget_gib(3.0, pre) == 3.0  # given: as given, in any mode
    with torch.no_grad():
        assert crown_budget_gib(None, pre) == 6.0  # certification: 6 GiB
    assert crown_budget_gib(None, pre) == pytest.approx(2 * 800 / 1024)  # training: twice the IBP bounds
    assert crown_budget_gib(None, {1: (torch.zeros(4, 4), torch.zeros(4, 4))}) == 0.25  # the floor
