"""Adaptive splitting of the parameter box: a queue of (glyph, sub-box) certified in batches.

Every glyph starts from a coarse grid of its box (each dimension cut so that one piece moves
the glyph's ink by at most ``INITIAL_MOTION_PX``). The largest sub-boxes (by volume, over all
glyphs) are taken ``batch`` at a time:

* the pose at the sub-box's centre is acquired with ``a5ocr.acquisition.apply`` and classified:
  misclassified, the sub-box can never be certified: it is a failed leaf with that pose as its
  counter-example;
* otherwise its interval image (``interval.interval_images``, widened by eps_A) goes to the bound
  engine: IBP on every sub-box, then CROWN-IBP (IBP first per margin) on what IBP left;
* a sub-box that fails is split in two along its most sensitive dimension: the one whose width
  moves the ink the most, in px (rotation: width in radians x the glyph's ink radius; shift:
  its width; scale: width x ink radius), unless that motion is below ``min_width_px`` already
  (then it is a failed leaf: not proven at the finest width).

The loop stops when the queue is empty or ``budget_s`` has passed; the sub-boxes still queued
are ``undecided`` leaves. Certified leaves tile a part of the box: their volume share is the
certified fraction.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from a5ocr import bounds
from a5ocr.acquisition import AcquisitionConfig
from a5ocr.certify_range.box import ANGLE, SCALE, SHIFT_X, SHIFT_Y, FixedCamera, acquire, volume_fraction, widths
from a5ocr.certify_range.interval import interval_images

INITIAL_MOTION_PX = 2.0
METHODS = ("ibp", "crown-ibp")

Progress = Callable[[dict], None]


@dataclass
class Leaf:
    """One final sub-box of one glyph: ``status`` certified (by ``method``), failed (``pose``
    then holds a counter-example when one is known, ``kind`` says what broke it) or undecided."""

    glyph: int
    box: torch.Tensor  # [4, 2] float64
    status: str
    volume: float
    method: str | None = None
    pose: torch.Tensor | None = None
    kind: str | None = None
    predicted: int | None = None


@dataclass
class SplitResult:
    leaves: list[Leaf]
    evaluated: int = 0
    batches: int = 0
    seconds: float = 0.0
    stopped: str = "done"  # or "budget"
    by_method: dict[str, int] = field(default_factory=dict)


def ink_radius(glyphs: torch.Tensor, print_scale: int = 1) -> torch.Tensor:
    """[K, S*R, S*R] -> [K] largest distance of an inked pixel from the canvas centre, in sensor
    px, plus one pixel (the reach of the bilinear support); the half-diagonal for an empty glyph."""
    r = glyphs.shape[-1]
    c = (r - 1) / 2.0
    v, u = torch.meshgrid(torch.arange(r, dtype=torch.float64), torch.arange(r, dtype=torch.float64), indexing="ij")
    rho = torch.hypot(u - c, v - c)
    inked = glyphs.double() > 0
    far = torch.where(inked, rho, torch.zeros_like(rho)).flatten(1).max(dim=1).values
    return torch.where(inked.flatten(1).any(1), far, torch.full_like(far, float(rho.max()))) / print_scale + 1.0


def motion_px(boxes: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """How far each dimension's width moves the ink, in px: boxes [N, 4, 2], radius [N] -> [N, 4]."""
    w = widths(boxes).clone()
    w[:, ANGLE] = torch.deg2rad(w[:, ANGLE]) * radius
    w[:, SCALE] = w[:, SCALE] * radius
    return w


def initial_grid(full: torch.Tensor, radius: float, motion: float = INITIAL_MOTION_PX) -> torch.Tensor:
    """The coarse grid of the full box [4, 2]: each dimension cut into ceil(motion / ``motion``)
    equal pieces -> [M, 4, 2]."""
    m = motion_px(full.unsqueeze(0), torch.tensor([radius], dtype=torch.float64))[0]
    cuts = []
    for d in range(4):
        pieces = max(1, math.ceil(float(m[d]) / motion))
        edges = torch.linspace(float(full[d, 0]), float(full[d, 1]), pieces + 1, dtype=torch.float64)
        cuts.append(torch.stack([edges[:-1], edges[1:]], dim=1))
    rows = [torch.stack(parts) for parts in itertools.product(*cuts)]
    return torch.stack(rows)


def split_box(box: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[4, 2] -> its two halves along ``dim``."""
    mid = 0.5 * (box[dim, 0] + box[dim, 1])
    a, b = box.clone(), box.clone()
    a[dim, 1] = mid
    b[dim, 0] = mid
    return a, b


def centre_predictions(model: nn.Module, glyphs: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor,
                       cam: FixedCamera, cfg: AcquisitionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The pose at each box centre [N, 4] and the classifier's answer there [N] (real ``apply``;
    ``labels`` [N], the true classes, are the caller's to compare)."""
    poses = boxes.mean(dim=2)
    device = next(model.parameters()).device
    x = acquire(glyphs, poses, cam, cfg)
    with torch.no_grad():
        pred = model(x.to(device)).argmax(dim=1).cpu()
    return poses, pred


def certify_boxes(model: nn.Module, glyphs: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor,
                  cam: FixedCamera, blur_kernel: int, eps_a: float, methods: tuple[str, ...] = METHODS) -> list[str | None]:
    """The method that certified each sub-box [N] (None: none did). Sound, float64: IBP on all,
    each later method (IBP first per margin, ``bounds.certify``) on what the earlier left."""
    device = next(model.parameters()).device
    lo, hi = interval_images(glyphs, boxes, cam, blur_kernel, eps_a)
    lo, hi, labels = lo.to(device), hi.to(device), labels.to(device)
    out: list[str | None] = [None] * boxes.shape[0]
    todo = torch.arange(boxes.shape[0])
    for m in methods:
        if todo.numel() == 0:
            break
        ok = bounds.certify(model, lo[todo], hi[todo], labels[todo], method=m, ibp_first=m != "ibp").cpu()
        for i in todo[ok].tolist():
            out[i] = m
        todo = todo[~ok]
    return out


class _Queue:
    """Sub-boxes of all glyphs, largest volume first (ties: first queued)."""

    def __init__(self, full: torch.Tensor):
        self.full = full
        self.heap: list = []
        self.count = itertools.count()

    def push(self, glyph: int, box: torch.Tensor) -> None:
        vol = float(volume_fraction(box.unsqueeze(0), self.full)[0])
        heapq.heappush(self.heap, (-vol, next(self.count), glyph, box))

    def pop(self, n: int) -> list[tuple[float, int, torch.Tensor]]:
        out = []
        while self.heap and len(out) < n:
            neg, _, g, b = heapq.heappop(self.heap)
            out.append((-neg, g, b))
        return out

    def __len__(self) -> int:
        return len(self.heap)


@dataclass(frozen=True)
class SplitOptions:
    eps_a: float = 0.0
    budget_s: float = 540.0
    min_width_px: float = 0.05
    batch: int = 256
    methods: tuple[str, ...] = METHODS


def certify_range(model: nn.Module, glyphs: torch.Tensor, labels: torch.Tensor, full: torch.Tensor,
                  cam: FixedCamera, cfg: AcquisitionConfig, opts: SplitOptions = SplitOptions(),
                  on_progress: Progress | None = None) -> SplitResult:
    """Certify glyphs [K, R, R] (their classes ``labels`` [K]) over the full box [4, 2] by
    adaptive splitting (module docstring); ``cfg`` is the run's scaled acquisition config
    (blur kernel), the other stages at ``cam``. Returns every leaf."""
    start = time.monotonic()
    radius = ink_radius(glyphs, cam.print_scale)
    queue = _Queue(full)
    for g in range(glyphs.shape[0]):
        for box in initial_grid(full, float(radius[g])):
            queue.push(g, box)
    res = SplitResult(leaves=[], by_method={m: 0 for m in opts.methods})
    while len(queue):
        if time.monotonic() - start > opts.budget_s:
            res.stopped = "budget"
            break
        _step(model, glyphs, labels, radius, queue, cam, cfg, opts, res)
        if on_progress is not None:
            on_progress(_progress(res, queue, glyphs.shape[0], time.monotonic() - start))
    for vol, g, b in queue.pop(len(queue)):
        res.leaves.append(Leaf(g, b, "undecided", vol))
    res.seconds = time.monotonic() - start
    return res


def _step(model, glyphs, labels, radius, queue: _Queue, cam, cfg, opts: SplitOptions, res: SplitResult) -> None:
    """One batch: centre check, certificates, splits."""
    items = queue.pop(opts.batch)
    vols = [v for v, _, _ in items]
    gi = torch.tensor([g for _, g, _ in items])
    boxes = torch.stack([b for _, _, b in items])
    poses, pred = centre_predictions(model, glyphs[gi], labels[gi], boxes, cam, cfg)
    wrong = pred != labels[gi]
    methods: list[str | None] = [None] * len(items)
    right = torch.nonzero(~wrong).flatten()
    if right.numel():
        for i, m in zip(right.tolist(), certify_boxes(model, glyphs[gi[right]], labels[gi[right]], boxes[right],
                                                       cam, cfg.blur_kernel, opts.eps_a, opts.methods)):
            methods[i] = m
    motion = motion_px(boxes, radius[gi])
    for i, (vol, g, box) in enumerate(items):
        if wrong[i]:
            res.leaves.append(Leaf(g, box, "failed", vol, pose=poses[i], kind="misclassified", predicted=int(pred[i])))
        elif methods[i] is not None:
            res.leaves.append(Leaf(g, box, "certified", vol, method=methods[i]))
            res.by_method[methods[i]] += 1
        elif float(motion[i].max()) < opts.min_width_px:
            res.leaves.append(Leaf(g, box, "failed", vol))
        else:
            for half in split_box(box, int(motion[i].argmax())):
                queue.push(g, half)
    res.evaluated += len(items)
    res.batches += 1


def _progress(res: SplitResult, queue: _Queue, k: int, elapsed: float) -> dict:
    cert = sum(leaf.volume for leaf in res.leaves if leaf.status == "certified") / k
    failed = sum(leaf.volume for leaf in res.leaves if leaf.status == "failed") / k
    return {"evaluated": res.evaluated, "queued": len(queue), "certified": cert, "failed": failed, "seconds": elapsed}
