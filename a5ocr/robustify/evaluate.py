"""``a5ocr evaluate`` on a robustify run: the full protocol on its test set, defended or not."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from a5ocr import models
from a5ocr.evaluation import EvaluateError, evaluate_samples
from a5ocr.robustify.config import RECIPE_NAMES, RobustifyConfig
from a5ocr.robustify.data import load_data
from a5ocr.robustify.defence import DefenceStats, defence_transform
from a5ocr.robustify.model import load_robustifier


def is_robustify_run(run_dir: Path | str) -> bool:
    """True when ``run_dir`` holds an ``a5ocr robustify`` run (its config.json says so)."""
    p = Path(run_dir) / "config.json"
    try:
        return json.loads(p.read_text()).get("kind") == "robustify"
    except (OSError, ValueError, AttributeError):
        return False


def evaluate_robustify_run(run_dir: Path | str, *, original: bool = False, device: torch.device | str = "cpu",
                           eps_a: float | None = None, seed: int | None = None, samples_per_char: int | None = None,
                           **options):
    """The full protocol of ``a5ocr evaluate`` (``evaluate_samples``: certificate cascade,
    radius, attack and consistency checks) on a robustify run's test set: the recipe's defended
    images z = x + dx_D with the run's final classifier, or with ``original`` the classifier
    before A5 on x. ``EvaluateError`` on a missing or corrupt run."""
    run_dir = Path(run_dir)
    try:
        rec = json.loads((run_dir / "config.json").read_text())
        cfg = RobustifyConfig.from_dict(rec["config"])
        if seed is not None:
            cfg = replace(cfg, eval_seed=seed)
        if samples_per_char is not None:
            cfg = replace(cfg, samples_per_char=samples_per_char)
        cfg = cfg.resolved()
        data, cfg = load_data(cfg)
        clf = run_dir / ("baseline_classifier.safetensors" if original else "classifier.safetensors")
        model = models.load_classifier(clf)[0].to(device)
        robustifier = None
        if cfg.recipe in ("r", "rc") and not original:
            robustifier = load_robustifier(run_dir / "robustifier.safetensors").to(device)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EvaluateError(f"{run_dir}: not a readable robustify run ({err})") from None
    device = torch.device(device)
    eps = cfg.eps_a if eps_a is None else eps_a
    k = len(data.classes)
    stats = DefenceStats(k)
    chunks = data.test_chunks(cfg.samples_per_char, cfg.eval_seed, device)
    if not original:
        transform = defence_transform(cfg.recipe, model, robustifier, cfg, stats)
        chunks = ((transform(x, y), y) for x, y in chunks)
    ev = evaluate_samples(model, chunks, total=data.test_total(cfg.samples_per_char), chars=data.classes, eps_a=eps,
                          seed=cfg.eval_seed, device=device, **options)
    if not original:
        ev.psnr = stats.psnr()
    what = "x (no defence, classifier before A5)" if original else f"z = x + dx_D ({RECIPE_NAMES[cfg.recipe]}, eps_D {cfg.eps_d:g})"
    ev.protocol = {"run": str(run_dir), "glyphs": what, "data": data.description, "classifier": str(clf),
                   "resolution": data.resolution, "psnr_reference": "the acquired images x", **ev.protocol}
    if data.test is None:
        ev.protocol["samples_per_char"] = cfg.samples_per_char
    ev.protocol["max_abs_change"] = stats.max_abs
    return ev
