"""The certification cascade reuses its one IBP pass (``bounds.ibp_first_margin_lower_bounds``,
``pruned.margin_ibp_pass`` / ``relax_hardest``): the same bounds as the composition it replaced
(an IBP pass over the batch, then ``pruned_margin_bounds`` per chunk of each group, each with
its own IBP pass), bit for bit where IBP's arithmetic is exact; one IBP pass in all; only the
unproven samples' IBP bounds kept, each chunk a view of them; ``pruned_margin_bounds`` (training)
unchanged in values and gradients; the print cascade (``camera._cascade_margins``) on the same
code.

Bit-identity to the old composition needs IBP on a sub-batch to give the rows of IBP on the
batch, which CPU GEMMs do not promise (their blocking depends on the batch size: F.linear on
a[:k] and on a differ in the last bit here). So the exact comparison runs on a net with small
dyadic weights and inputs, where every IBP sum is exact in float32 and float64 (the test checks
that sub-batch IBP is then exact), and the relaxation, which does round, sees the same samples
in the same chunks in both; on a random net the two agree to rounding."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_print_threat import mlp as print_mlp
from test_print_threat import setup as print_setup
from torch import nn

from a5ocr import acquisition, bounds
from a5ocr.bounds import camera, engine, pruned
from a5ocr.bounds.api import _auto_chunk, _group_size, _other_classes, _scatter_margins, _sound_copy
from a5ocr.bounds.engine import _dense_margin_spec, _ibp_final, _prepare, bounds_for, relaxed_bounds

K = 10
RELAXATIONS = ("crown-ibp", "crown", "alpha-crown")
OPTIONS = {"alpha_steps": 3}  # alpha-CROWN kept cheap (the comparison is exact, not a tightness one)


def dyadic_net(seed: int, dtype: torch.dtype) -> nn.Sequential:
    """1x8x8 -> Conv(1->4) ReLU Conv(4->4, stride 2) ReLU Linear(64->16) ReLU Linear(16->10),
    weights in {-2..2}/4 and biases in {-4..4}/8: IBP on 1/1024-grid boxes is exact arithmetic."""
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, K))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randint(-2, 3, m.weight.shape, generator=g) / 4)
                m.bias.copy_(torch.randint(-4, 5, m.bias.shape, generator=g) / 8)
    return net.to(dtype).eval()


def random_net(seed: int) -> nn.Sequential:
    """The same architecture with Gaussian weights (float64): IBP rounds."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, K))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 2 / math.sqrt(m.weight[0].numel()))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    return net.double().eval()


def boxes(seed: int, n: int, eps: float, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randint(0, 65, (n, 1, 8, 8), generator=g) / 64).to(dtype)
    return x, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


def old_pruned(model, xl, xu, labels, others, method, k, **options):
    """``pruned_margin_bounds`` as it was written before the split (the reference)."""
    net, shapes, c, r = _prepare(model, xl, xu)
    dtype = xl.dtype
    boxes_, pre = net.ibp_pass(c, r, stop=net._fold_start())
    ibp_lb, _ = _ibp_final(net, boxes_, lambda: _dense_margin_spec(labels, others, K, dtype), shapes, False,
                           (labels, others))
    pos = pruned.hardest_by_ibp(ibp_lb, k)
    chosen = (labels, others.gather(1, pos))
    lb, _ = relaxed_bounds(net, shapes, boxes_, pre, lambda: _dense_margin_spec(chosen[0], chosen[1], K, dtype), chosen,
                           method, **options)
    return lb, pos, ibp_lb


def old_cascade(model, xl, xu, labels, method, chunk=None, **options):
    """The cascade as it was: IBP over the batch, then ``old_pruned`` (its own IBP pass) per chunk."""
    with torch.no_grad():
        others = _other_classes(labels, K)
        lb = bounds_for(model, xl, xu, None, "ibp", margin=(labels, others))[0]
        unproven = (lb <= 0).sum(1)
        group = torch.tensor([_group_size(int(u), K - 1) for u in unproven.tolist()])
        for k in sorted(set(group[unproven > 0].tolist())):
            idx = torch.nonzero((group == k) & (unproven > 0)).flatten()
            step = chunk or _auto_chunk(model, xl, k, method)
            for s in range(0, idx.numel(), step):
                i = idx[s : s + step]
                tight, pos, ibp = old_pruned(model, xl[i], xu[i], labels[i], others[i], method, k, **options)
                lb[i] = ibp.scatter(1, pos, torch.maximum(tight, ibp.gather(1, pos)))
        return _scatter_margins(lb, others, K)


def with_ibp_passes(monkeypatch, run):
    """(run(), the batch size of every ``ibp_pass`` it made)."""
    passes = []
    orig = engine.BoundedSequential.ibp_pass

    def spy(self, c, *a, **kw):
        passes.append(c.shape[0])
        return orig(self, c, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(engine.BoundedSequential, "ibp_pass", spy)
        return run(), passes


@pytest.fixture(scope="module", params=[torch.float64, torch.float32], ids=["float64", "float32"])
def dyadic(request):
    """(model, xl, xu, labels) with groups k = 1, 2, 4, 8 and samples that IBP proves; asserts
    that IBP on sub-batches gives exactly the batch's rows (the premise of bit-identity)."""
    dtype = request.param
    model = dyadic_net(0, dtype)
    x, xl, xu = boxes(0, 40, 1 / 256, dtype)
    labels = model(x).argmax(1)
    others = _other_classes(labels, K)
    ibp = bounds_for(model, xl, xu, None, "ibp", margin=(labels, others))[0]
    for i in (torch.arange(1), torch.arange(3), torch.arange(7, 30), torch.tensor([5, 17, 39])):
        sub = bounds_for(model, xl[i], xu[i], None, "ibp", margin=(labels[i], others[i]))[0]
        assert torch.equal(sub, ibp[i]), "IBP is not exact on this net: the bit-identity test would not apply"
    unproven = (ibp <= 0).sum(1)
    groups = {_group_size(int(u), K - 1) for u in unproven[unproven > 0].tolist()}
    assert groups == {1, 2, 4, 8} and (unproven == 0).sum() >= 3  # a test that can tell
    return model, xl, xu, labels


@pytest.mark.parametrize("chunk", [None, 3])
@pytest.mark.parametrize("method", RELAXATIONS)
def test_cascade_is_bit_identical_to_the_old_composition(dyadic, method, chunk):
    model, xl, xu, labels = dyadic
    new = bounds.ibp_first_margin_lower_bounds(model, xl, xu, labels, method, chunk=chunk, **OPTIONS)
    old = old_cascade(model, xl, xu, labels, method, chunk=chunk, **OPTIONS)
    assert new.dtype == xl.dtype
    assert torch.equal(new, old)
    assert not torch.equal(new, bounds.ibp_first_margin_lower_bounds(model, xl, xu, labels, "ibp"))  # it ran


def test_certify_ibp_first_is_unchanged(dyadic):
    model, xl, xu, labels = dyadic
    m64 = copy.deepcopy(model).double()  # (certify's own float64 copy)
    for method in ("crown-ibp", "crown"):
        old = ((old_cascade(m64, xl.double(), xu.double(), labels, method) > 0)
               | (torch.arange(K) == labels.view(-1, 1))).all(1)
        assert torch.equal(bounds.certify(model, xl, xu, labels, method, ibp_first=True), old)


def test_cascade_runs_one_ibp_pass_and_agrees_to_rounding_on_a_random_net(monkeypatch):
    """Gaussian weights: every IBP number now comes from the batch's one pass (IBP-proven samples
    and every margin the relaxation did not improve are the batch's IBP bound exactly); the
    old composition's sub-batch IBP differs from it in the last bits only."""
    model = random_net(4)
    x, xl, xu = boxes(4, 30, 0.005, torch.float64)
    labels = model(x).argmax(1)
    ibp = bounds.ibp_first_margin_lower_bounds(model, xl, xu, labels, "ibp")
    lb, passes = with_ibp_passes(monkeypatch, lambda: bounds.ibp_first_margin_lower_bounds(
        model, xl, xu, labels, "crown-ibp", chunk=4))
    assert passes == [30]
    proven = ((ibp > 0) | (torch.arange(K) == labels.view(-1, 1))).all(1)
    assert 0 < int(proven.sum()) < 30
    assert torch.equal(lb[proven], ibp[proven]) and torch.all(lb >= ibp)
    assert torch.all(lb[~proven].ne(ibp[~proven]).any(1))  # the relaxation improved every unproven sample
    old = old_cascade(model, xl, xu, labels, "crown-ibp", chunk=4)
    assert torch.allclose(lb, old, rtol=0, atol=1e-12)


def test_cascade_keeps_only_the_unproven_samples_and_chunks_are_views(dyadic, monkeypatch):
    """Memory: the relaxation of every chunk sees views into one copy of the unproven samples'
    IBP bounds (rows = the unproven samples, in group order), never more rows than its chunk."""
    model, xl, xu, labels = dyadic
    ibp = bounds.ibp_first_margin_lower_bounds(model, xl, xu, labels, "ibp")
    n_unproven = int(((ibp <= 0).sum(1) > 1).sum())  # (the label's entry is 0)
    seen = []
    orig = pruned.relaxed_bounds

    def spy(net, shapes, boxes_, pre, *a, **kw):
        tensors = [boxes_[net.exact_prefix][0], boxes_[net.exact_prefix][1]] + [t for p in pre.values() for t in p]
        seen.append([(t.shape[0], t.untyped_storage().nbytes() // (t[0].numel() * t.element_size())) for t in tensors])
        return orig(net, shapes, boxes_, pre, *a, **kw)

    monkeypatch.setattr(pruned, "relaxed_bounds", spy)
    bounds.ibp_first_margin_lower_bounds(model, xl, xu, labels, "crown-ibp", chunk=3)
    assert len(seen) > 4
    assert all(rows <= 3 and stored == n_unproven for call in seen for rows, stored in call)
    assert sum(call[0][0] for call in seen) == n_unproven


@pytest.mark.parametrize("method", RELAXATIONS)
def test_pruned_margin_bounds_values_and_gradients_are_unchanged(method):
    """Training's ``pruned_margin_bounds`` (now ``margin_ibp_pass`` + ``relax_hardest``) gives the
    old function's bounds, selection and gradients (weights and box) exactly."""
    x, xl, xu = boxes(5, 6, 0.02, torch.float64)
    results = []
    for fn in (old_pruned, pruned.pruned_margin_bounds):
        model = random_net(5)
        lo, hi = xl.clone().requires_grad_(True), xu.clone().requires_grad_(True)
        labels = model(x).argmax(1)
        others = _other_classes(labels, K)
        lb, pos, ibp_lb = fn(model, lo, hi, labels, others, method, 3, **OPTIONS)
        (lb.sum() + 0.5 * ibp_lb.sum()).backward()
        results.append([lb, pos, ibp_lb, lo.grad, hi.grad] + [p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert results[0][3].abs().sum() > 0  # gradients flow


def old_camera_cascade(model, w, params, cfg, labels, eps_print, eps_a, method):
    """The print cascade as it was: each group's ``pruned_margin_bounds`` on the group's camera
    net, with its own IBP pass."""
    net = camera.camera_net(model, params, cfg, tuple(w.shape[1:]), eps_a > 0)
    lo, hi = camera.print_box(w, eps_print, eps_a, net[0].image_shape)
    others = _other_classes(labels, 6)
    lb = bounds_for(net, lo, hi, None, "ibp", margin=(labels, others))[0]
    unproven = (lb <= 0).sum(1)
    group = torch.tensor([_group_size(int(u), 5) for u in unproven.tolist()])
    for k in sorted(set(group[unproven > 0].tolist())):
        i = torch.nonzero((group == k) & (unproven > 0)).flatten()
        sub = camera.camera_net(model, camera.take_params(params, i), cfg, tuple(w.shape[1:]), eps_a > 0)
        tight, pos, ibp = old_pruned(sub, lo[i], hi[i], labels[i], others[i], method, k, max_memory_gib=1e15)
        lb[i] = ibp.scatter(1, pos, torch.maximum(tight, ibp.gather(1, pos)))
    return _scatter_margins(lb, others, 6)


def test_print_cascade_runs_one_ibp_pass_and_agrees_with_the_old_one(monkeypatch):
    """The print cascade shares the image cascade's code (one IBP pass over the chunk's camera
    net; each group's relaxation on its own net from its rows of that pass): the old bounds to
    rounding (sub-batch GEMMs), IBP-proven samples exactly."""
    model = _sound_copy(print_mlp(8, classes=6))
    cfg, params, w = print_setup(12, seed=8)
    with torch.no_grad():
        labels = model(acquisition.apply(w, params, cfg)).argmax(1)
        ibp = camera._cascade_margins(model, w, params, cfg, labels, 0.01, 0.005, "ibp")
        old = old_camera_cascade(model, w, params, cfg, labels, 0.01, 0.005, "crown-ibp")
        lb, passes = with_ibp_passes(monkeypatch, lambda: camera._cascade_margins(
            model, w, params, cfg, labels, 0.01, 0.005, "crown-ibp"))
    assert passes == [12]
    proven = ((ibp > 0) | (torch.arange(6) == labels.view(-1, 1))).all(1)
    assert 0 < int(proven.sum()) < 12 and torch.equal(lb[proven], ibp[proven])
    assert torch.all(lb >= ibp) and torch.any(lb > ibp)
    assert torch.allclose(lb, old, rtol=0, atol=1e-12)
