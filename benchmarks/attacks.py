"""Strength / cost of the attacks of a5ocr.evaluation.attacks on a small CNN (CPU, ~2.5 minutes on 1 thread).

    PYTHONPATH=. python benchmarks/attacks.py [--n 200] [--threads 2]

Trains a small CNN on a synthetic 10-class 3x16x16 task (random smooth templates plus
noise), then prints, for a few eps, the robust error (%) reached by PGD, APGD-CE,
APGD-DLR, APGD-T and the ``attack`` ensemble, with wall times.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.nn import functional as F

from a5ocr.evaluation.attacks import apgd, apgd_targeted, attack, pgd


def make_data(n: int, g: torch.Generator, templates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, templates.shape[0], (n,), generator=g)
    x = (templates[y] + 0.15 * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 1)
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    templates = F.interpolate(torch.rand(10, 3, 4, 4, generator=g), size=16, mode="bilinear").clamp(0, 1)
    templates = 0.5 + 0.3 * (templates - 0.5)
    x, y = make_data(4000, g, templates)
    xt, yt = make_data(args.n, g, templates)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(3):
        for i in range(0, len(x), 100):
            opt.zero_grad()
            F.cross_entropy(net(x[i : i + 100]), y[i : i + 100]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        clean = (net(xt).argmax(1) != yt).float().mean().item()
    print(f"clean error {100 * clean:.1f}%  (n={args.n})")

    def err(xa: torch.Tensor) -> float:
        with torch.no_grad():
            return 100 * (net(xa).argmax(1) != yt).float().mean().item()

    runs = {
        "PGD-CE 20": lambda e, s: pgd(net, xt, yt, e, steps=20, generator=s),
        "PGD-CE 100": lambda e, s: pgd(net, xt, yt, e, steps=100, generator=s),
        "APGD-CE 20": lambda e, s: apgd(net, xt, yt, e, steps=20, generator=s),
        "APGD-CE 100": lambda e, s: apgd(net, xt, yt, e, steps=100, generator=s),
        "APGD-DLR 100": lambda e, s: apgd(net, xt, yt, e, loss="dlr", steps=100, generator=s),
        "APGD-T 9x100": lambda e, s: apgd_targeted(net, xt, yt, e, steps=100, generator=s),
        "attack fast": lambda e, s: attack(net, xt, yt, e, strength="fast", generator=s).x_adv,
        "attack standard": lambda e, s: attack(net, xt, yt, e, strength="standard", generator=s).x_adv,
    }
    for eps in (1 / 255, 2 / 255, 4 / 255, 8 / 255):
        print(f"eps = {eps * 255:.0f}/255")
        for name, f in runs.items():
            t = time.perf_counter()
            xa = f(eps, torch.Generator().manual_seed(1))
            dt = time.perf_counter() - t
            print(f"  {name:16s} {err(xa):6.1f}%  {dt:6.2f}s")


if __name__ == "__main__":
    main()
