"""``a5ocr certify-range`` as a library call: a design run's glyphs certified over a parameter box.

``RangeRequest`` holds the options (checked by ``check_request``: one line,
``CertifyRangeError``); ``certify_run_range`` loads the run (``a5ocr.runs.load_run``), splits and
certifies (``split.certify_range``), searches counter-examples in what is left
(``sampling.find_counterexamples``), cross-checks the certified regions with real acquisitions
and the attack (``sampling.check_certified``), and returns a ``RangeResult``: the leaves and the
JSON-ready record (box, fixed camera, per-glyph volume shares, failed regions with their
counter-examples, config, versions, wall time).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from a5ocr.certify_range.box import DIMS, CertifyRangeError, FixedCamera, ParamBox, check_box, check_camera
from a5ocr.certify_range.sampling import check_certified, find_counterexamples
from a5ocr.certify_range.split import Leaf, Progress, SplitOptions, SplitResult, certify_range
from a5ocr.runs import Run, load_run
from a5ocr.runtime import environment

STATUSES = ("certified", "failed", "undecided")


@dataclass(frozen=True)
class RangeRequest:
    """The options of ``a5ocr certify-range`` (None: the run's value)."""

    run_dir: Path
    box: ParamBox = ParamBox(rotation=5.0, shift=1.0)
    eps_a: float | None = None
    original: bool = False
    classifier: Path | None = None
    blur_sigma: float | None = None
    brightness: float = 1.0
    contrast: float = 1.0
    budget_s: float = 480.0
    min_width_px: float = 0.05
    batch: int = 256
    samples: int = 32
    max_regions: int = 500
    check_samples: int = 64
    seed: int = 0
    device: str = "cpu"
    figure_char: str | None = None


def _finite(v: float) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def check_request(req: RangeRequest) -> None:
    """The options that need no run folder (one line, ``CertifyRangeError``)."""
    for name, v in (("--rotation", req.box.rotation), ("--shift", req.box.shift), ("--scale", req.box.scale_pct),
                    ("--budget-s", req.budget_s), ("--min-width", req.min_width_px), ("--brightness", req.brightness),
                    ("--contrast", req.contrast)):
        if not _finite(v):
            raise CertifyRangeError(f"{name} must be a finite number, got {v}")
    if req.eps_a is not None and not (_finite(req.eps_a) and 0.0 <= req.eps_a < 1.0):
        raise CertifyRangeError(f"--eps-a must be in [0, 1), got {req.eps_a}")
    if not 0.0 < req.budget_s <= 86400.0:
        raise CertifyRangeError(f"--budget-s must be in (0, 86400] seconds, got {req.budget_s}")
    if not 1e-4 <= req.min_width_px <= 100.0:
        raise CertifyRangeError(f"--min-width must be in [0.0001, 100] px, got {req.min_width_px}")
    for name, v, lo in (("--batch", req.batch, 1), ("--samples", req.samples, 1), ("--max-regions", req.max_regions, 0),
                        ("--check-samples", req.check_samples, 0)):
        if v < lo:
            raise CertifyRangeError(f"{name} must be at least {lo}, got {v}")
    if req.blur_sigma is not None and not _finite(req.blur_sigma):
        raise CertifyRangeError(f"--blur-sigma must be a finite number, got {req.blur_sigma}")


@dataclass
class RangeResult:
    record: dict
    leaves: list[Leaf] = field(default_factory=list)
    chars: str = ""
    full: torch.Tensor | None = None


def prepare(req: RangeRequest) -> tuple[Run, FixedCamera, float]:
    """The run, the fixed camera and eps_A of a request, every value checked."""
    check_request(req)
    run = load_run(req.run_dir, req.classifier)
    check_box(req.box, run.resolution)
    cfg = run.acquisition.scaled(run.resolution)
    cam = FixedCamera(blur_sigma=cfg.blur_sigma[0] if req.blur_sigma is None else req.blur_sigma,
                      brightness=req.brightness, contrast=req.contrast, print_scale=run.print_scale)
    check_camera(cam)
    if req.figure_char is not None and (len(req.figure_char) != 1 or req.figure_char not in run.chars):
        raise CertifyRangeError(f"--figure-char must be one of the run's characters {run.chars!r}, got {req.figure_char!r}")
    eps = run.eps_a if req.eps_a is None else req.eps_a
    return run, cam, float(eps)


def certify_run_range(req: RangeRequest, on_progress: Progress | None = None) -> RangeResult:
    """The whole command (module docstring)."""
    started = time.monotonic()
    run, cam, eps = prepare(req)
    device = torch.device(req.device)
    model = run.model.to(device).eval()
    glyphs = (run.original if req.original else run.robust).float()
    labels = torch.arange(glyphs.shape[0])
    cfg = run.acquisition.scaled(run.resolution)
    full = req.box.tensor()
    opts = SplitOptions(eps_a=eps, budget_s=req.budget_s, min_width_px=req.min_width_px, batch=req.batch)
    res = certify_range(model, glyphs, labels, full, cam, cfg, opts, on_progress)
    t_split = time.monotonic()
    searched = find_counterexamples(model, glyphs, labels, res.leaves, cam, cfg, eps, samples=req.samples,
                                    max_regions=req.max_regions, seed=req.seed)
    t_search = time.monotonic()
    check = check_certified(model, glyphs, labels, res.leaves, cam, cfg, eps, per_glyph=req.check_samples,
                            seed=req.seed + 1)
    seconds = {"search": round(res.seconds, 2), "counterexamples": round(t_search - t_split, 2),
               "check": round(time.monotonic() - t_search, 2), "total": round(time.monotonic() - started, 2)}
    record = build_record(req, run, cam, cfg.blur_kernel, eps, res, searched, check, seconds)
    return RangeResult(record=record, leaves=res.leaves, chars=run.chars, full=full)


def _shares(leaves: list[Leaf]) -> dict:
    out = {s: 0.0 for s in STATUSES}
    by_method: dict[str, float] = {}
    for leaf in leaves:
        out[leaf.status] += leaf.volume
        if leaf.method:
            by_method[leaf.method] = by_method.get(leaf.method, 0.0) + leaf.volume
    return {**out, "certified_by_method": by_method}


def _region(leaf: Leaf) -> dict:
    cx = None
    if leaf.pose is not None:
        cx = {"pose": dict(zip(DIMS, [float(v) for v in leaf.pose])), "kind": leaf.kind, "predicted": leaf.predicted}
    return {"status": leaf.status, "box": leaf.box.tolist(), "volume": leaf.volume, "counterexample": cx}


def per_char_record(chars: str, leaves: list[Leaf]) -> dict:
    """Per glyph: volume shares, leaf counts, certified boxes, the uncertified regions."""
    out = {}
    for g, ch in enumerate(chars):
        mine = [leaf for leaf in leaves if leaf.glyph == g]
        uncert = sorted((leaf for leaf in mine if leaf.status != "certified"), key=lambda leaf: -leaf.volume)
        out[ch] = {
            **_shares(mine),
            "leaves": len(mine),
            "counterexamples": sum(leaf.pose is not None for leaf in mine),
            "certified_boxes": [leaf.box.tolist() for leaf in mine if leaf.status == "certified"],
            "uncertified_regions": [_region(leaf) for leaf in uncert],
        }
    return out


def build_record(req: RangeRequest, run: Run, cam: FixedCamera, blur_kernel: int, eps: float, res: SplitResult,
                 searched: int, check: dict, seconds: dict) -> dict:
    """The JSON-ready record of one certify-range run."""
    per_char = per_char_record(run.chars, res.leaves)
    k = max(len(run.chars), 1)
    overall = {s: sum(row[s] for row in per_char.values()) / k for s in STATUSES}
    methods: dict[str, float] = {}
    for row in per_char.values():
        for m, v in row["certified_by_method"].items():
            methods[m] = methods.get(m, 0.0) + v / k
    options = {k2: (str(v) if isinstance(v, Path) else v) for k2, v in asdict(req).items() if k2 not in ("box", "run_dir")}
    return {
        "run": str(run.path), "glyphs": "original" if req.original else "robust", "classifier": str(run.classifier_path),
        "chars": run.chars, "resolution": run.resolution, "eps_a": eps,
        "box": req.box.to_dict(), "fixed_camera": {**cam.to_dict(), "blur_kernel": blur_kernel},
        "methods": list(res.by_method), "options": options,
        "overall": {**overall, "certified_by_method": methods},
        "search": {"evaluated_boxes": res.evaluated, "batches": res.batches, "stopped": res.stopped,
                   "boxes_certified_by": res.by_method, "regions_searched_for_counterexamples": searched},
        "counterexamples": sum(row["counterexamples"] for row in per_char.values()),
        "self_check": check, "per_char": per_char,
        "run_config": run.config, "environment": environment(), "seconds": seconds,
    }
