"""The chunked CROWN-IBP training loss (``a5ocr.bounds.chunked``): each chunk of samples is
differentiated as soon as it is bounded. Its values must be those of ``robust_loss`` /
``robust_margins`` exactly, its gradients (weights and box) those of the unchunked path up to
rounding, and the loss an upper bound of the cross-entropy at every point of the box."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from a5ocr import bounds
from a5ocr.bounds import budget, engine
from a5ocr.normalize import Normalize
from a5ocr.training.losses import a5_loss, attack_box

D = torch.float64
K = 6
TINY = 1e-9  # GiB: the final CROWN pass in chunks of one sample
CASES = [(None, None), (0.4, None), (None, 2), (0.3, 3), (0.5, 1), (1.0, 2)]  # (f, k)


def _init(net: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.weight[0].numel()))
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    return net.eval()


def conv(seed: int = 0, dtype=D) -> tuple[nn.Module, tuple]:
    """3x8x8 -> Normalize -> Conv(3->4, s2) ReLU -> Conv(4->4, s2) ReLU -> Linear 16 ReLU -> Linear 6."""
    net = nn.Sequential(
        Normalize((0.5, 0.4, 0.3), (0.3, 0.3, 0.3)),
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, K),
    )
    return _init(net, seed).to(dtype), (3, 8, 8)


def mlp(seed: int = 0, dtype=D) -> tuple[nn.Module, tuple]:
    """5 -> 12 -> 12 -> 6."""
    net = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, K))
    return _init(net, seed).to(dtype), (5,)


def conv_head(seed: int = 0, dtype=D) -> tuple[nn.Module, tuple]:
    """3x6x6 -> Conv(3->4) ReLU -> Conv(4->6, 4x4) -> Flatten: no last Linear, the dense spec path."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, K, 4), nn.Flatten())
    return _init(net, seed).to(dtype), (3, 6, 6)


def _batch(shape, n: int, seed: int, dtype=D):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n,) + shape, generator=g).to(dtype), torch.arange(n) % K


def _step(net, x, labels, eps, f, k, **options):
    """(loss, margins, grad w.r.t. x, grads w.r.t. the weights) of one robust_loss_and_margins."""
    net.zero_grad(set_to_none=True)
    xx = x.clone().requires_grad_(True)
    loss, margins = bounds.robust_loss_and_margins(net, xx - eps, xx + eps, labels, "crown-ibp", f, k, **options)
    (2.5 * loss).backward()  # a scaled use: the stored gradients must follow grad_output
    return loss.detach(), margins, xx.grad, [p.grad.clone() for p in net.parameters()]


def _count_chunks(monkeypatch) -> list:
    calls = []
    orig = engine.crown_chunk

    def spy(net, shapes, pre, box, *a):
        calls.append(box[0].shape[0])
        return orig(net, shapes, pre, box, *a)

    monkeypatch.setattr("a5ocr.bounds.chunked.crown_chunk", spy)
    return calls


@pytest.mark.parametrize("f,k", CASES)
@pytest.mark.parametrize("arch", [conv, mlp, conv_head])
def test_chunked_values_exact_and_gradients_equal_the_unchunked(arch, f, k, monkeypatch):
    net, shape = arch(1)
    x, labels = _batch(shape, 7, 1)
    calls = _count_chunks(monkeypatch)
    new = _step(net, x, labels, 0.1, f, k, max_memory_gib=TINY)
    assert calls == [1] * 7  # seven chunks of one sample, each bounded once (no recompute)
    old = _step(net, x, labels, 0.1, f, k, max_memory_gib=TINY, checkpoint_chunks=True)
    whole = _step(net, x, labels, 0.1, f, k, max_memory_gib=1e6)
    assert len(calls) == 8  # the unchunked path: one piece
    # the values: the same bounds as HEAD's checkpointed chunks, bit for bit
    assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])
    with torch.no_grad():
        ref = bounds.robust_margins(net, x - 0.1, x + 0.1, labels, "crown-ibp", f=f, k=k, max_memory_gib=TINY)
    assert torch.equal(new[1], ref) and not new[1].requires_grad
    assert torch.allclose(new[0], whole[0], rtol=1e-13, atol=0)
    # the gradients: the box (the glyph path of A5/PC) and every weight, to rounding
    for a, b in [(new[2], whole[2]), (new[2], old[2])] + list(zip(new[3], whole[3])):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14), (a - b).abs().max()
    assert new[2].abs().sum() > 0 and all(g.abs().sum() > 0 for g in new[3][-2:])


def test_chunked_float32_gradients_and_the_default_budget(monkeypatch):
    net, shape = conv(2, torch.float32)
    x, labels = _batch(shape, 9, 2, torch.float32)
    new = _step(net, x, labels, 0.05, 0.5, 2, max_memory_gib=TINY)
    whole = _step(net, x, labels, 0.05, 0.5, 2, max_memory_gib=1e6)
    assert torch.allclose(new[0], whole[0], rtol=1e-6)
    for a, b in [(new[2], whole[2])] + list(zip(new[3], whole[3])):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # the default training budget chunks when its floor is below one sample's pass
    monkeypatch.setattr(budget, "TRAIN_BUDGET_FLOOR_GIB", 1e-9)
    calls = _count_chunks(monkeypatch)
    default = _step(net, x, labels, 0.05, 0.5, 2)
    assert len(calls) > 1 and torch.equal(default[0], new[0])


def test_a5_loss_uses_the_chunked_pass_and_mixes_its_gradient(monkeypatch):
    """a5_loss = f CE + (1 - f) E: the chunked E's gradient is scaled by 1 - f and the
    statistics get the same margins as robust_margins."""
    net, shape = conv(3)
    x, labels = _batch(shape, 5, 3)
    monkeypatch.setattr(budget, "TRAIN_BUDGET_FLOOR_GIB", 1e-9)
    calls = _count_chunks(monkeypatch)
    net.zero_grad(set_to_none=True)
    loss, stats = a5_loss(net, x, labels, 0.05, 0.3, "mixed", crown_k=2)
    loss.backward()
    got = [p.grad.clone() for p in net.parameters()]
    assert len(calls) == 5
    net.zero_grad(set_to_none=True)
    xl, xu = attack_box(x, 0.05)
    wce = bounds.robust_loss(net, xl, xu, labels, "crown-ibp", f=0.3, k=2, checkpoint_chunks=True)
    ref = 0.3 * F.cross_entropy(net(x), labels) + 0.7 * wce
    ref.backward()
    assert torch.equal(loss.detach(), ref.detach())
    with torch.no_grad():
        m = bounds.robust_margins(net, xl, xu, labels, "crown-ibp", f=0.3, k=2)
    assert torch.equal(stats["margins"], m)
    for a, p in zip(got, net.parameters()):
        assert torch.allclose(a, p.grad, rtol=1e-10, atol=1e-14)


class _Loss(nn.Module):
    """robust_loss of ``net`` as a module, so that torch.func.functional_call can swap its weights."""

    def __init__(self, net, labels, f, k):
        super().__init__()
        self.net, self.labels, self.f, self.k = net, labels, f, k

    def forward(self, a, b):
        return bounds.robust_loss(self.net, a, b, self.labels, "crown-ibp", self.f, self.k, max_memory_gib=TINY)


def test_gradcheck_of_the_chunked_loss():
    net = _init(nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 4)), 5).to(D)
    x = torch.tensor([[0.2, -0.4, 0.7], [0.9, 0.1, -0.3], [-0.5, 0.6, 0.2]], dtype=D)
    labels = torch.tensor([0, 2, 3])
    for f, k in ((None, None), (0.5, 2), (None, 1)):
        loss = _Loss(net, labels, f, k)
        a, b = (x - 0.05).requires_grad_(True), (x + 0.05).requires_grad_(True)
        assert torch.autograd.gradcheck(loss, (a, b), eps=1e-6, atol=1e-6)
        if k == 2:  # the weights, through the chunks (functional_call swaps the module's parameters)
            names = ["net.0.weight", "net.2.bias", "net.4.weight"]
            w0 = [dict(loss.named_parameters())[n].detach().clone().requires_grad_(True) for n in names]
            fn = lambda *w: torch.func.functional_call(loss, dict(zip(names, w)), (x - 0.05, x + 0.05))  # noqa: E731
            assert torch.autograd.gradcheck(fn, tuple(w0), eps=1e-6, atol=1e-6)


def test_a_weight_that_is_a_plain_tensor_gets_its_gradient():
    """A weight set on a module as a plain tensor (not a registered parameter) is an input of
    the chunks too: its gradient equals the one of the registered parameter."""
    net, shape = conv(5)
    x, labels = _batch(shape, 4, 5)
    lin = net[6]
    w = lin.weight.detach().clone().requires_grad_(True)
    registered = torch.autograd.grad(bounds.robust_loss(net, x - 0.05, x + 0.05, labels, "crown-ibp", 0.5, 2,
                                                        max_memory_gib=TINY), lin.weight)[0]
    del lin.weight
    lin.weight = w
    plain = torch.autograd.grad(bounds.robust_loss(net, x - 0.05, x + 0.05, labels, "crown-ibp", 0.5, 2,
                                                   max_memory_gib=TINY), w)[0]
    assert torch.allclose(plain, registered, rtol=1e-12, atol=0) and plain.abs().sum() > 0


def test_the_chunked_loss_is_above_the_cross_entropy_in_the_box():
    net, shape = conv(4)
    x, labels = _batch(shape, 4, 4)
    eps = 0.03
    xl, xu = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    n = 600
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        u = torch.rand((n,) + tuple(x.shape), generator=g, dtype=D)
        u[: n // 2] = u[: n // 2].round()  # half of the points are vertices of the box
        pts = xl + (xu - xl) * u
        ce = F.cross_entropy(net(pts.reshape((-1,) + shape)), labels.repeat(n), reduction="none").view(n, -1)
    xa = x.clone().requires_grad_(True)  # PGD ascent on the cross-entropy
    for _ in range(30):
        (gx,) = torch.autograd.grad(F.cross_entropy(net(xa), labels, reduction="sum"), xa)
        with torch.no_grad():
            xa.copy_(torch.maximum(torch.minimum(xa + eps / 5 * gx.sign(), xu), xl))
    with torch.no_grad():
        worst = torch.maximum(ce.max(0).values, F.cross_entropy(net(xa), labels, reduction="none"))
    for f, k in CASES:
        loss, m = bounds.robust_loss_and_margins(net, xl, xu, labels, "crown-ibp", f, k, max_memory_gib=TINY)
        per_sample = bounds.worst_case_cross_entropy(m, labels, reduction="none")
        assert torch.all(per_sample >= worst - 1e-12), (f, k)
        assert loss.requires_grad and loss >= worst.mean() - 1e-12
        assert torch.allclose(loss.detach(), per_sample.mean(), rtol=1e-15, atol=0)


def test_unknown_bound_options_are_refused():
    net, shape = mlp()
    x, labels = _batch(shape, 2, 0)
    with pytest.raises(TypeError, match="max_memory"):
        bounds.robust_loss(net, x - 0.1, x + 0.1, labels, "crown-ibp", max_memory=1.0)
