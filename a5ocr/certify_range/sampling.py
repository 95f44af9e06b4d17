"""Real acquisitions at poses drawn inside leaves: counter-examples in the regions left
unproven, and the soundness cross-check of the certified ones.

Both acquire through ``a5ocr.acquisition.apply`` (the camera that was certified) and classify;
with eps_A > 0 the attack is ``a5ocr.evaluation.attacks.attack`` (the evaluation's suite, "fast").
A pose inside a certified leaf that is misclassified, or broken by the attack, is a soundness
bug: ``check_certified`` reports it as a violation (the command then exits with code 3).
"""

from __future__ import annotations

import torch
from torch import nn

from a5ocr.acquisition import AcquisitionConfig
from a5ocr.certify_range.box import FixedCamera, acquire, sample_poses
from a5ocr.certify_range.split import Leaf
from a5ocr.evaluation import attacks

CHUNK = 2048  # acquisitions per classifier call


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits [n, K] (CPU) of images [n, 3, R, R], in chunks."""
    with torch.no_grad():
        return torch.cat([model(x[s : s + CHUNK].to(_device(model))).cpu() for s in range(0, x.shape[0], CHUNK)])


def _margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, labels.view(-1, 1), float("-inf")).max(dim=1).values
    return true - other


def _attack(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps_a: float, seed: int):
    """(broken [n], predicted class at the returned point [n]) of the fast attack at eps_A."""
    gen = torch.Generator(device=_device(model)).manual_seed(seed)
    res = attacks.attack(model, x.to(_device(model)), labels.to(_device(model)), eps_a, strength="fast", generator=gen)
    return res.success.cpu(), predict(model, res.x_adv).argmax(dim=1)


def find_counterexamples(model: nn.Module, glyphs: torch.Tensor, labels: torch.Tensor, leaves: list[Leaf],
                         cam: FixedCamera, cfg: AcquisitionConfig, eps_a: float, *, samples: int = 32,
                         max_regions: int = 500, seed: int = 0) -> int:
    """Fill ``pose``, ``kind``, ``predicted`` of the uncertified leaves without a counter-example
    (the ``max_regions`` largest): ``samples`` poses each (corners and extreme values first); the
    first misclassified one, else (eps_A > 0) the lowest-margin one if the attack breaks it.
    Returns the number of regions searched."""
    todo = sorted((leaf for leaf in leaves if leaf.status != "certified" and leaf.pose is None),
                  key=lambda leaf: -leaf.volume)[:max_regions]
    if not todo:
        return 0
    gen = torch.Generator().manual_seed(seed)
    poses = torch.stack([sample_poses(leaf.box, samples, gen) for leaf in todo])  # [M, S, 4]
    gi = torch.tensor([leaf.glyph for leaf in todo]).repeat_interleave(samples)
    logits = predict(model, acquire(glyphs[gi], poses.flatten(0, 1), cam, cfg)).view(len(todo), samples, -1)
    lab = labels[torch.tensor([leaf.glyph for leaf in todo])]
    pred = logits.argmax(dim=2)
    for m, leaf in enumerate(todo):
        bad = torch.nonzero(pred[m] != lab[m]).flatten()
        if bad.numel():
            leaf.pose, leaf.kind, leaf.predicted = poses[m, bad[0]], "misclassified", int(pred[m, bad[0]])
    if eps_a > 0:
        _attack_regions(model, glyphs, labels, [(m, leaf) for m, leaf in enumerate(todo) if leaf.pose is None],
                        poses, logits, cam, cfg, eps_a, seed)
    return len(todo)


def _attack_regions(model, glyphs, labels, regions, poses, logits, cam, cfg, eps_a, seed) -> None:
    """The attack on the lowest-margin pose of each region whose samples are all read right."""
    if not regions:
        return
    rows = torch.tensor([m for m, _ in regions])
    lab = labels[torch.tensor([leaf.glyph for _, leaf in regions])]
    margins = torch.stack([_margin(logits[m], lab[i].expand(logits.shape[1])) for i, m in enumerate(rows.tolist())])
    pick = poses[rows, margins.argmin(dim=1)]
    x = acquire(glyphs[torch.tensor([leaf.glyph for _, leaf in regions])], pick, cam, cfg)
    broken, pred = _attack(model, x, lab, eps_a, seed)
    for i, (_, leaf) in enumerate(regions):
        if broken[i]:
            leaf.pose, leaf.kind, leaf.predicted = pick[i], "attack", int(pred[i])


def _poses_in(leaves: list[Leaf], n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n uniform poses in the union of ``leaves`` (a leaf drawn by volume): (leaf index [n], poses [n, 4])."""
    vol = torch.tensor([leaf.volume for leaf in leaves], dtype=torch.float64)
    idx = torch.multinomial(vol + 1e-300, n, replacement=True, generator=gen)
    boxes = torch.stack([leaves[i].box for i in idx.tolist()])
    u = torch.rand(n, 4, generator=gen, dtype=torch.float64)
    return idx, boxes[..., 0] + u * (boxes[..., 1] - boxes[..., 0])


def check_certified(model: nn.Module, glyphs: torch.Tensor, labels: torch.Tensor, leaves: list[Leaf],
                    cam: FixedCamera, cfg: AcquisitionConfig, eps_a: float, *, per_glyph: int = 64,
                    attack_fraction: float = 0.25, seed: int = 1) -> dict:
    """Poses drawn in each glyph's certified leaves: none may be misclassified, and (eps_A > 0) a
    seeded ``attack_fraction`` of them is attacked: none may be broken. Returns the record
    ``{samples, attacked, misclassified, broken, violations}``."""
    gen = torch.Generator().manual_seed(seed)
    glyph_ids, pose_rows = [], []
    for g in range(glyphs.shape[0]):
        mine = [leaf for leaf in leaves if leaf.glyph == g and leaf.status == "certified"]
        if mine and per_glyph:
            _, p = _poses_in(mine, per_glyph, gen)
            glyph_ids.append(torch.full((per_glyph,), g))
            pose_rows.append(p)
    rec = {"samples": 0, "attacked": 0, "misclassified": 0, "broken": 0, "violations": []}
    if not pose_rows:
        return rec
    gi, poses = torch.cat(glyph_ids), torch.cat(pose_rows)
    x = acquire(glyphs[gi], poses, cam, cfg)
    pred = predict(model, x).argmax(dim=1)
    wrong = torch.nonzero(pred != labels[gi]).flatten()
    rec.update(samples=int(gi.numel()), misclassified=int(wrong.numel()))
    rec["violations"] += [{"glyph": int(gi[i]), "pose": poses[i].tolist(), "kind": "misclassified"} for i in wrong.tolist()]
    if eps_a > 0 and attack_fraction > 0:
        n_att = max(1, int(round(attack_fraction * gi.numel())))
        sel = torch.randperm(gi.numel(), generator=gen)[:n_att]
        broken, _ = _attack(model, x[sel], labels[gi[sel]], eps_a, seed)
        rec.update(attacked=n_att, broken=int(broken.sum()))
        rec["violations"] += [{"glyph": int(gi[sel[i]]), "pose": poses[sel[i]].tolist(), "kind": "attack"}
                              for i in torch.nonzero(broken).flatten().tolist()]
    return rec
