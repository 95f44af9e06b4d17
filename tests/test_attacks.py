"""Tests of the empirical L-inf attacks (a5ocr.evaluation.attacks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from a5ocr.acquisition import Acquisition
from a5ocr.evaluation import acquisitions
from a5ocr.evaluation.certify import certify_cascade
from a5ocr.runs import load_run

from a5ocr.evaluation.attacks import (
    AttackResult,
    apgd,
    apgd_checkpoints,
    apgd_targeted,
    attack,
    dlr_loss,
    dlr_targeted_loss,
    fab_targeted,
    pgd,
    square,
    square_p,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _wrong(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) != y


def _linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).amax(1)


def _all_attacks(model, x, y, eps, seed=0):
    """Every attack entry point, fast settings: name -> x_adv (Square only on images)."""
    k = model(x[:1]).shape[1]
    tgt = (y + 1) % k
    out = {
        "pgd": pgd(model, x, y, eps, steps=10, restarts=2, generator=_gen(seed)),
        "pgd-dlr": pgd(model, x, y, eps, steps=10, loss="dlr", generator=_gen(seed)),
        "apgd-ce": apgd(model, x, y, eps, steps=15, restarts=2, generator=_gen(seed)),
        "apgd-dlr": apgd(model, x, y, eps, loss="dlr", steps=15, generator=_gen(seed)),
        "apgd-dlr-t": apgd(model, x, y, eps, loss="dlr-targeted", target_class=tgt, steps=15, generator=_gen(seed)),
        "apgd-t": apgd_targeted(model, x, y, eps, n_targets=3, steps=15, generator=_gen(seed)),
        "fab-t": fab_targeted(model, x, y, eps, n_targets=3, steps=20, generator=_gen(seed)),
        "attack": attack(model, x, y, eps, strength="fast", generator=_gen(seed)).x_adv,
    }
    if x.dim() == 4:
        out["square"] = square(model, x, y, eps, queries=500, generator=_gen(seed))
    return out


# ----------------------------------------------------------------------- fixtures
def _patterns() -> torch.Tensor:
    """5 low-contrast 1x8x8 patterns (0.4 background, 0.6 strokes)."""
    p = torch.full((5, 1, 8, 8), 0.4)
    p[0, :, 3:5, :] = 0.6  # horizontal bar
    p[1, :, :, 3:5] = 0.6  # vertical bar
    idx = torch.arange(8)
    p[2, 0, idx, idx] = 0.6  # diagonal
    p[3, 0, idx, 7 - idx] = 0.6  # anti-diagonal
    p[4, :, 2:6, 2:6] = 0.6  # square
    return p


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    y = torch.randint(0, 5, (n,), generator=g)
    x = (_patterns()[y] + 0.04 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, y


@pytest.fixture(scope="module")
def tiny():
    """A small undefended MLP trained to 100% accuracy on the pattern task (eval mode)."""
    torch.manual_seed(0)
    x, y = _data(1000, seed=1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    for p in net.parameters():
        p.grad = None
    xt, yt = _data(200, seed=2)
    assert not _wrong(net, xt, yt).any(), "tiny net should be perfect on clean test data"
    return net, xt, yt


def _random_cnn(seed: int, k: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.LazyLinear(k),
    )
    net(torch.zeros(1, 3, 12, 12))
    return net.eval()


# ----------------------------------------------------------------------- losses / schedule
def test_checkpoints_match_apgd_schedule():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    for n in (1, 5, 10, 50, 1000):
        c = apgd_checkpoints(n)
        assert c == sorted(set(c)) and all(0 < w < n for w in c)


def test_dlr_values():
    z = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    y = torch.tensor([0])
    assert dlr_loss(z, y).item() == pytest.approx(-(3 - 2) / (3 - 1))
    assert dlr_targeted_loss(z, y, torch.tensor([3])).item() == pytest.approx(-(3 - 0) / (3 - 0.5))
    # scale invariance of DLR
    assert dlr_loss(5 * z, y).item() == pytest.approx(dlr_loss(z, y).item())


# ----------------------------------------------------------------------- linear classifier
def _linear_model(d: torch.Tensor, db: float) -> nn.Module:
    """2 classes: logit0 = d . flatten(x) + db, logit1 = 0."""
    lin = nn.Linear(d.numel(), 2)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[0] = d
        lin.bias[0] = db
    return nn.Sequential(nn.Flatten(), lin).eval()


def _linear_problem(seed: int):
    """A random 2-class linear model and a correctly classified x whose minimal L-inf
    adversarial radius is eps* = margin / ||d||_1: returns (model, x, sign of d, d, eps*, margin)."""
    g = _gen(seed)
    shape = (1, 3, 2, 2)
    n = shape[1] * shape[2] * shape[3]
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    d = sign * (0.5 + torch.rand(n, generator=g))
    x = 0.3 + 0.4 * torch.rand(shape, generator=g)
    eps_star = 0.1 + 0.1 * torch.rand((), generator=g).item()
    margin = eps_star * d.abs().sum().item()
    return _linear_model(d, margin - float(d @ x.flatten())), x, sign.view(shape), d, eps_star, margin


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_minimal_eps(seed):
    """eps* = margin / ||w0 - w1||_1; above it the corner is found, below it nothing."""
    model, x, sign, d, eps_star, margin = _linear_problem(seed)
    y = torch.zeros(1, dtype=torch.long)
    assert not _wrong(model, x, y).any()
    corner = x - eps_star * 1.02 * sign

    above = _all_attacks(model, x, y, eps_star * 1.02, seed=seed)
    for name, xa in above.items():
        assert _wrong(model, xa, y).all(), name
        # f(x_adv) < 0 forces |x_adv - corner|_i * |d_i| < 0.02 * margin for each i
        dev = (xa - corner).abs().flatten()
        assert torch.all(dev * d.abs() <= 0.02 * margin + 1e-5), name
    res = attack(model, x, y, eps_star * 1.02, strength="standard", generator=_gen(seed))
    assert res.success.all() and res.per_attack["apgd-ce"] == 1
    assert list(res.per_attack) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square", "pgd-ce"]

    below = _all_attacks(model, x, y, eps_star * 0.98, seed=seed)
    for name, xa in below.items():
        assert not _wrong(model, xa, y).any(), name
        assert _linf(xa, x).item() <= eps_star * 0.98 + 1e-6
    for strength in ("fast", "standard") if seed == 0 else ("fast",):  # standard: every stage runs (slow)
        res = attack(model, x, y, eps_star * 0.98, strength=strength, generator=_gen(seed))
        assert not res.success.any() and sum(res.per_attack.values()) == 0


@pytest.mark.parametrize("delta", [-0.01, 0.01])
def test_linear_box_binds(delta):
    """With the [0, 1] box binding, the best point is the clipped corner: success iff
    the clipped corner is misclassified."""
    g = _gen(5)
    n = 12
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    d = sign * (0.5 + torch.rand(n, generator=g))
    x = torch.rand(1, n, generator=g)
    x[0, :4] = torch.tensor([0.0, 1.0, 0.05, 0.97])
    eps = 0.3
    c = (x - eps * sign).clamp(0, 1)
    model = _linear_model(d, -float(d @ c.flatten()) + delta)
    y = torch.zeros(1, dtype=torch.long)
    assert not _wrong(model, x, y).any()
    for name, xa in _all_attacks(model, x, y, eps).items():
        assert bool(_wrong(model, xa, y).item()) == (delta < 0), name


# ----------------------------------------------------------------------- undefended net
def test_breaks_undefended_net(tiny):
    net, x, y = tiny
    clean_err = _wrong(net, x, y).float().mean().item()
    res = attack(net, x, y, 0.3, strength="fast", generator=_gen(0))
    assert isinstance(res, AttackResult)
    assert res.error >= 0.95 and res.error > clean_err
    assert torch.equal(res.success, _wrong(net, res.x_adv, y))
    assert sum(res.per_attack.values()) == int(res.success.sum())


def test_ensemble_at_least_components(tiny):
    net, x, y = tiny
    eps = 0.07  # partial success: components differ
    res = attack(net, x, y, eps, strength="fast", generator=_gen(0))
    assert 0 < res.success.sum() < len(y)
    # same seed, same first stage on the same (all clean-correct) samples: superset
    a = _wrong(net, apgd(net, x, y, eps, steps=50, generator=_gen(0)), y)
    assert torch.all(res.success | ~a)
    t = _wrong(net, apgd_targeted(net, x, y, eps, n_targets=3, steps=50, generator=_gen(0)), y)
    p = _wrong(net, pgd(net, x, y, eps, steps=20, generator=_gen(0)), y)
    assert res.success.sum() >= max(a.sum(), t.sum(), p.sum())
    # APGD at least as strong as PGD with the same number of steps
    for e in (0.06, 0.07, 0.08):
        a = _wrong(net, apgd(net, x, y, e, steps=20, generator=_gen(1)), y).sum()
        p = _wrong(net, pgd(net, x, y, e, steps=20, generator=_gen(1)), y).sum()
        assert a >= p, (e, a, p)


def test_determinism(tiny):
    net, x, y = tiny
    eps = 0.07
    r1 = attack(net, x, y, eps, strength="fast", generator=_gen(3))
    r2 = attack(net, x, y, eps, strength="fast", generator=_gen(3))
    assert torch.equal(r1.x_adv, r2.x_adv) and r1.per_attack == r2.per_attack
    for f in (pgd, apgd):
        assert torch.equal(f(net, x, y, eps, steps=10, generator=_gen(4)), f(net, x, y, eps, steps=10, generator=_gen(4)))
    assert not torch.equal(pgd(net, x, y, eps, steps=10, generator=_gen(4)), pgd(net, x, y, eps, steps=10, generator=_gen(5)))
    # default generator is seeded: reproducible without one
    assert torch.equal(apgd(net, x, y, eps, steps=10), apgd(net, x, y, eps, steps=10))


# ----------------------------------------------------------------------- budget / eps = 0
@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.1, 0.5, 1.0])
def test_never_exceeds_budget(eps):
    net = _random_cnn(int(eps * 1000))
    g = _gen(7)
    x = torch.rand(6, 3, 12, 12, generator=g)
    x[0] = 0.0
    x[1] = 1.0
    y = torch.randint(0, 10, (6,), generator=g)
    for name, xa in _all_attacks(net, x, y, eps).items():
        assert xa.shape == x.shape
        assert torch.all(_linf(xa, x) <= eps + 1e-6), name
        assert xa.min() >= 0 and xa.max() <= 1, name
    # per-sample budgets
    e = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.2, eps])
    res = attack(net, x, y, e, strength="fast", generator=_gen(0), batch_size=4)
    assert torch.all(_linf(res.x_adv, x) <= e + 1e-6)
    assert torch.equal(res.success, _wrong(net, res.x_adv, y))


def test_eps_zero_returns_clean():
    net = _random_cnn(3)
    x = torch.rand(8, 3, 12, 12, generator=_gen(1))
    y = torch.arange(8) % 10
    res = attack(net, x, y, 0.0, strength="fast")
    assert torch.equal(res.x_adv, x)
    assert torch.equal(res.success, _wrong(net, x, y))
    assert res.per_attack["clean"] == int(res.success.sum())


def test_clean_errors_count_and_stay(tiny):
    net, x, y = tiny
    y_bad = y.clone()
    y_bad[:5] = (y[:5] + 1) % 5  # clean-misclassified by construction
    res = attack(net, x, y_bad, 0.02, strength="fast", generator=_gen(0))
    assert res.success[:5].all() and torch.equal(res.x_adv[:5], x[:5])
    assert res.per_attack["clean"] == 5


# ----------------------------------------------------------------------- model untouched
@pytest.mark.parametrize("training", [False, True])
def test_model_untouched(training):
    net = _random_cnn(11)
    net.train(training)
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.rand(4, 3, 12, 12, generator=_gen(2))
    y = torch.arange(4)
    with torch.no_grad():  # the attacks must not depend on the caller's grad mode
        _all_attacks(net, x, y, 0.05)
    assert net.training == training and all(m.training == training for m in net.modules())
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p, b)
        assert torch.equal(p.grad, torch.full_like(p, 0.5))
        assert p.requires_grad


# ----------------------------------------------------------------------- square (gradient-free)
class _Quantised(nn.Module):
    """The model on 8-bit quantised inputs: ``round`` has zero derivative, so every input
    gradient is exactly 0 (masked) while the decisions are those of an undefended net."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 255) / 255)


class _NoGradOnly(nn.Module):
    """Fails when called with autograd enabled (a gradient-free attack never needs it)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled() and not x.requires_grad, "square used autograd"
        return self.net(x)


def test_square_p_schedule():
    assert square_p(0, 5000) == 0.8
    assert square_p(5, 5000) == 0.8  # i = 10: still p_init
    assert square_p(6, 5000) == pytest.approx(0.4)  # i = 12
    assert square_p(25, 5000) == pytest.approx(0.4)  # i = 50
    assert square_p(26, 5000) == pytest.approx(0.2)
    assert square_p(300, 5000) == pytest.approx(0.8 / 16)  # i = 600
    assert square_p(2500, 5000) == pytest.approx(0.8 / 128)  # i = 5000
    assert square_p(4999, 5000) == pytest.approx(0.8 / 512)  # i = 9998
    # rescaled to the budget, and proportional to p_init
    assert square_p(2, 1000) == pytest.approx(0.4) and square_p(500, 1000, p_init=0.1) == pytest.approx(0.1 / 128)
    ps = [square_p(i, 1000) for i in range(1000)]
    assert all(a >= b for a, b in zip(ps, ps[1:])) and len(set(ps)) == 10


def test_square_breaks_gradient_masked_net(tiny):
    """Quantised inputs mask the gradient: PGD/APGD (and the gradient ensemble) stay at the
    random start and break nothing, the query-only Square attack breaks the undefended net."""
    net, x, y = tiny
    q = _Quantised(net).eval()
    xr = x[:4].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(q(xr), y[:4]), xr)
    assert torch.all(g == 0)
    eps = 0.1
    assert _wrong(net, apgd(net, x, y, eps, steps=50, generator=_gen(0)), y).float().mean() >= 0.95
    rates = {
        "pgd": _wrong(q, pgd(q, x, y, eps, steps=50, restarts=2, generator=_gen(0)), y).float().mean(),
        "apgd": _wrong(q, apgd(q, x, y, eps, steps=50, generator=_gen(0)), y).float().mean(),
        "attack": torch.tensor(attack(q, x, y, eps, strength="fast", generator=_gen(0)).error),
    }
    assert all(r <= 0.1 for r in rates.values()), rates
    xa = square(q, x, y, eps, generator=_gen(0))
    assert torch.all(_linf(xa, x) <= eps + 1e-6) and xa.min() >= 0 and xa.max() <= 1
    assert _wrong(q, xa, y).float().mean() >= 0.8


@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.1, 0.5, 1.0])
def test_square_budget_and_seed(eps):
    net = _random_cnn(int(eps * 1000) + 1)
    g = _gen(7)
    x = torch.rand(6, 3, 12, 12, generator=g)
    x[0] = 0.0
    x[1] = 1.0
    y = torch.randint(0, 10, (6,), generator=g)
    xa = square(net, x, y, eps, queries=200, generator=_gen(1))
    assert xa.shape == x.shape and xa.min() >= 0 and xa.max() <= 1
    assert torch.all(_linf(xa, x) <= eps + 1e-6)
    assert torch.equal(xa, square(net, x, y, eps, queries=200, generator=_gen(1)))
    e = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.2, eps])
    xe = square(net, x, y, e, queries=100, generator=_gen(0))
    assert torch.all(_linf(xe, x) <= e + 1e-6) and torch.equal(xe[0], x[0])


def test_square_seed_replays(tiny):
    net, x, y = tiny
    eps = 0.07  # partial success: the runs are long and differ between seeds
    a = square(net, x, y, eps, queries=300, generator=_gen(3))
    assert torch.equal(a, square(net, x, y, eps, queries=300, generator=_gen(3)))
    assert not torch.equal(a, square(net, x, y, eps, queries=300, generator=_gen(4)))
    assert torch.equal(square(net, x[:20], y[:20], eps, queries=50), square(net, x[:20], y[:20], eps, queries=50))


def test_square_clean_errors_and_eps_zero_unchanged(tiny):
    net, x, y = tiny
    y_bad = y.clone()
    y_bad[:5] = (y[:5] + 1) % 5  # clean-misclassified by construction
    xa = square(net, x, y_bad, 0.1, queries=500, generator=_gen(0))
    assert torch.equal(xa[:5], x[:5]) and _wrong(net, xa, y_bad)[:5].all()
    assert not torch.equal(xa[5:], x[5:])
    assert torch.equal(square(net, x, y, 0.0, queries=50), x)


@pytest.mark.parametrize("shape", [(2, 3, 12, 12), (3, 1, 3, 20), (2, 2, 1, 7)])
def test_square_gradient_free_and_model_untouched(shape):
    """Forwards only, with autograd off even when the caller enables it; non-square images."""
    torch.manual_seed(0)
    n, c, h, w = shape
    net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, 4)).train()
    for p in net.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.rand(shape, generator=_gen(2))
    y = torch.arange(n) % 4
    with torch.enable_grad():
        xa = square(_NoGradOnly(net), x, y, 0.2, queries=100, generator=_gen(0))
    assert xa.shape == x.shape and torch.all(_linf(xa, x) <= 0.2 + 1e-6)
    assert net.training
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p, b) and torch.equal(p.grad, torch.full_like(p, 0.5))


@pytest.mark.parametrize("seed", [0, 1])
def test_square_linear_minimal_eps(seed):
    """Random search reaches the optimal corner of a linear model just above eps* and, being
    sound, never succeeds below it."""
    model, x, _, _, eps_star, _ = _linear_problem(seed)
    y = torch.zeros(1, dtype=torch.long)
    assert _wrong(model, square(model, x, y, eps_star * 1.02, queries=500, generator=_gen(seed)), y).all()
    assert not _wrong(model, square(model, x, y, eps_star * 0.98, queries=500, generator=_gen(seed)), y).any()


# ----------------------------------------------------------------------- FAB-T (minimum norm)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fab_finds_the_minimum_norm_point(seed):
    """FAB is a minimum-norm attack: given a budget far above eps*, its point lies just beyond
    the boundary (within 2% of eps*), where PGD's goes to the full budget."""
    model, x, _, _, eps_star, _ = _linear_problem(seed)
    y = torch.zeros(1, dtype=torch.long)
    xa = fab_targeted(model, x, y, 1.0)
    assert _wrong(model, xa, y).all()
    assert eps_star <= _linf(xa, x).item() <= 1.02 * eps_star
    assert _linf(pgd(model, x, y, 1.0, steps=10), x).item() > 2 * eps_star


def _two_targets() -> tuple[nn.Module, torch.Tensor]:
    """3 linear classes on 12 inputs, x = 0.5 of class 0 (logit 0): class 1 is the top target
    (logit -0.5) but far (L-inf distance 0.5 / ||w1||_1 = 0.2, on inputs 0-5 only); class 2
    is second (logit -1) but near (1 / ||w2||_1 = 0.1, on inputs 6-11 only)."""
    g = _gen(9)
    w = torch.zeros(3, 12)
    w[1, :6] = torch.where(torch.rand(6, generator=g) < 0.5, -1.0, 1.0) * 2.5 / 6
    w[2, 6:] = torch.where(torch.rand(6, generator=g) < 0.5, -1.0, 1.0) * 10 / 6
    x = torch.full((1, 3, 2, 2), 0.5)
    lin = nn.Linear(12, 3)
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(torch.tensor([0.0, -0.5, -1.0]) - w @ x.flatten())
    return nn.Sequential(nn.Flatten(), lin).eval(), x


def test_fab_targets_in_order_of_the_clean_logits():
    """With one target FAB-T only reaches class 1 (distance 0.2); the second target finds the
    nearer class 2 (0.1). Exact distances of a linear model."""
    model, x = _two_targets()
    y = torch.zeros(1, dtype=torch.long)
    assert model(x).argmax(1).item() == 0
    far = fab_targeted(model, x, y, 1.0, n_targets=1, steps=20)
    assert model(far).argmax(1).item() == 1 and 0.2 <= _linf(far, x).item() <= 0.204
    assert torch.equal(fab_targeted(model, x, y, 0.15, n_targets=1, steps=20), x)  # class 1 out of reach
    near = fab_targeted(model, x, y, 0.15, n_targets=2, steps=20)
    assert model(near).argmax(1).item() == 2 and 0.1 <= _linf(near, x).item() <= 0.102
    assert torch.equal(fab_targeted(model, x, y, 0.098, n_targets=9, steps=20), x)  # nothing below 0.1


def test_fab_projects_its_point_onto_the_budget():
    """FAB stops a little beyond the boundary (0.5% here); projected onto a budget between the
    boundary and FAB's distance the point still counts, re-evaluated there."""
    model, x, _, _, eps_star, _ = _linear_problem(0)
    y = torch.zeros(1, dtype=torch.long)
    d_fab = _linf(fab_targeted(model, x, y, 1.0), x).item()
    eps = 0.5 * (eps_star + d_fab)
    assert eps_star < eps < d_fab
    xa = fab_targeted(model, x, y, eps)
    assert _wrong(model, xa, y).all() and _linf(xa, x).item() <= eps + 1e-6


def test_fab_leaves_global_rng_and_is_deterministic(tiny):
    """torchattacks reseeds torch's global generator: fab_targeted restores it; FAB-T draws
    nothing, so two calls agree whatever the generator."""
    net, x, y = tiny
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = fab_targeted(net, x[:20], y[:20], 0.07, n_targets=2, steps=20, generator=_gen(1))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, fab_targeted(net, x[:20], y[:20], 0.07, n_targets=2, steps=20, generator=_gen(2)))
    assert _wrong(net, a, y[:20]).any()
    e = torch.linspace(0.0, 0.1, 20)  # per-sample budgets
    b = fab_targeted(net, x[:20], y[:20], e, n_targets=2, steps=20)
    assert torch.all(_linf(b, x[:20]) <= e + 1e-6) and torch.equal(b[0], x[0])


# ----------------------------------------------------------------------- the standard suite
def test_standard_suite_breaks_a_gradient_masked_net_with_square(tiny):
    """On quantised inputs the gradient stages break nothing; the standard suite still breaks
    the undefended net, through its Square stage."""
    net, x, y = tiny
    q = _Quantised(net).eval()
    res = attack(q, x[:10], y[:10], 0.1, strength="standard", generator=_gen(0))
    assert list(res.per_attack) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square", "pgd-ce"]
    assert res.error >= 0.8 and res.per_attack["square"] >= 0.8 * 10
    assert res.per_attack["apgd-ce"] + res.per_attack["apgd-t"] + res.per_attack["fab-t"] <= 1
    assert torch.equal(res.success, _wrong(q, res.x_adv, y[:10]))


def test_each_stage_runs_once_on_all_survivors_in_chunks(tiny, monkeypatch):
    """Stage by stage over the whole batch: every stage sees exactly the samples no earlier stage
    broke, gathered from every chunk (ceil(survivors / batch) calls, then the next stage)."""
    from a5ocr.evaluation.attacks import suite

    net, x, y = tiny
    q = _Quantised(net).eval()  # APGD breaks nothing here, Square most
    calls, real = [], dict(suite.KINDS)

    def spy(kind):
        def run(model, xs, ys, es, **kw):
            calls.append((kind, xs.shape[0]))
            return real[kind](model, xs, ys, es, **kw)
        return run

    monkeypatch.setattr(suite, "KINDS", {k: spy(k) for k in real})
    monkeypatch.setitem(suite.STRENGTHS, "spy", [("apgd-ce", "apgd", dict(steps=5)), ("square", "square", dict(queries=300)),
                                                 ("pgd-ce", "pgd", dict(steps=5))])
    seen = []
    res = attack(q, x[:10], y[:10], 0.1, strength="spy", generator=_gen(0), batch_size=4,
                 on_progress=lambda d, t: seen.append((d, t)))
    kinds = [k for k, _ in calls]
    assert kinds == sorted(kinds, key=["apgd", "square", "pgd"].index)  # stage-major order
    assert [n for k, n in calls if k == "apgd"] == [4, 4, 2]
    survivors = 10 - res.per_attack["clean"] - res.per_attack["apgd-ce"]
    sq = [n for k, n in calls if k == "square"]
    assert sum(sq) == survivors and len(sq) == -(-survivors // 4)
    left = survivors - res.per_attack["square"]
    assert sum(n for k, n in calls if k == "pgd") == left
    assert seen[-1] == (30, 30) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


# ----------------------------------------------------------------------- against the certificates
TRAINED_RUN = Path(__file__).parent / "fixtures" / "premove" / "design"


@pytest.fixture(scope="module")
def trained():
    """The classifier of a tiny design run trained by the library (fixtures/premove/design:
    "AOo0", 16x16, A5/PC) and 40 fresh acquisitions of its robust glyphs."""
    run = load_run(TRAINED_RUN)
    acq = Acquisition(run.resolution, run.acquisition)
    x, y = next(acquisitions(run.robust, acq, 10, seed=123))
    return run.model.eval(), x, y


def _certified(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The IBP then CROWN-IBP cascade certificates [n] (False where misclassified)."""
    correct = ~_wrong(model, x, y)
    return certify_cascade(model, x, y, correct, eps, ("ibp", "crown-ibp"), True)[-1]


@pytest.mark.parametrize("eps", [0.04, 0.08])
def test_attack_error_never_exceeds_certified_error_on_a_trained_run(trained, eps):
    """Every correct sample attacked, certified ones included: none is certified and broken, so
    attack error <= certified error; the attack breaks more than the clean errors (not vacuous)."""
    model, x, y = trained
    cert = _certified(model, x, y, eps)
    res = attack(model, x, y, eps, strength="fast", generator=_gen(0))
    assert not (cert & res.success).any()
    assert res.success.sum() <= (~cert).sum()  # attack error <= certified error, in counts
    assert cert.any() and res.success.sum() > res.per_attack["clean"] > 0


def test_standard_suite_never_exceeds_certified_error_on_a_trained_run(trained):
    """The same with the standard suite, on a few samples (certified ones run every stage, 5000
    Square queries included): 2 certified, 3 correct uncertified, 1 misclassified."""
    model, x, y = trained
    eps = 0.06
    cert = _certified(model, x, y, eps)
    wrong = _wrong(model, x, y)
    pick = torch.cat([cert.nonzero()[:2], (~cert & ~wrong).nonzero()[:3], wrong.nonzero()[:1]]).flatten()
    assert pick.numel() == 6
    res = attack(model, x[pick], y[pick], eps, strength="standard", generator=_gen(0))
    assert not (cert[pick] & res.success).any()
    assert res.success.sum() <= (~cert[pick]).sum()
    assert res.per_attack["clean"] == 1 and res.success[2:].sum() >= 2
