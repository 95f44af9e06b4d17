"""``run_robustify``: an image-side recipe end to end, in one run folder.

The steps: resolve the config, load the data and the legacy classifier C (or plan its stage-1
CROWN-IBP training), open the run folder, train (stages ``crown-ibp``, ``r``, ``rc`` of
``a5ocr.training.trainer``), then test C alone on x and the recipe on z (same x).

A run folder holds ``config.json``, ``checkpoint.pt`` (resumable), ``classifier.safetensors``
(C at the end), ``baseline_classifier.safetensors`` (C before any A5), ``robustifier.safetensors``
(r, rc), ``metrics.jsonl``, ``examples.png`` (x, z and dx_D of test images, as the paper's
Fig. 3) and ``summary.json`` (clean and certified error of C alone on x and of the recipe on z,
PSNR of z against x, the largest |dx_D| measured).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from a5ocr import models
from a5ocr.errors import RobustifyError
from a5ocr.evaluation import evaluate_samples
from a5ocr.figures import defence_examples
from a5ocr.robustify.config import RECIPE_NAMES, RobustifyConfig
from a5ocr.robustify.data import Data, Legacy, legacy_classifier, load_data
from a5ocr.robustify.defence import DefenceStats, defence_transform
from a5ocr.robustify.model import Robustifier, load_robustifier, save_robustifier
from a5ocr.runs import RunFolder, slug
from a5ocr.runtime import Reporter, pick_device
from a5ocr.training.interrupt import RunState
from a5ocr.training.trainer import RobustGlyphs, StageSpec, Trainer, make_stage, run_stages

CLASSIFIER = "classifier.safetensors"
BASELINE_CLASSIFIER = "baseline_classifier.safetensors"
ROBUSTIFIER = "robustifier.safetensors"


def run_robustify(cfg: RobustifyConfig, *, resume: bool = False, reporter=None) -> dict:
    """Run an image-side recipe end to end; returns the summary (also ``summary.json``). Ctrl-C
    or SIGTERM stops training at the next step with a checkpoint there; at any point the run
    raises ``a5ocr.training.interrupt.RunInterrupted``, whose message says what the checkpoint holds."""
    cfg = cfg.resolved()
    reached = RunState(Path(cfg.out) / "checkpoint.pt" if cfg.out else None, resume=resume)
    try:
        return _run(cfg, resume, reporter or Reporter(), reached)
    except KeyboardInterrupt as err:
        raise reached.interrupted(err) from None


def _run(cfg: RobustifyConfig, resume: bool, rep, reached: RunState) -> dict:
    """``run_robustify`` of a resolved config; ``reached`` follows it (the folder, the trainer)."""
    device = pick_device(cfg.device, RobustifyError)
    t_start = time.monotonic()
    torch.manual_seed(cfg.seed)
    data, cfg = load_data(cfg)
    out = Path(cfg.out) if cfg.out else default_out(cfg, data)
    cfg = replace(cfg, out=str(out))
    folder = RunFolder.open(out, RobustifyError, started=t_start)
    reached.checkpoint = folder.checkpoint
    legacy = legacy_classifier(cfg, data)
    if legacy is not None:
        cfg = replace(cfg, arch=legacy.meta["arch"])
    robustifier, cfg = _starting_robustifier(cfg)
    folder.start(cfg.to_dict(), device=device, resume=resume, needs_checkpoint=False, kind="robustify",
                 extra={"data": data.description})
    model = legacy.model if legacy is not None else models.build(cfg.arch, data.resolution, len(data.classes))
    glyphs = RobustGlyphs(data.glyphs, 0.0) if data.glyphs is not None else None  # fixed prototypes (z unused)
    trainer = Trainer(model, glyphs, data.acquisition, copies=cfg.copies, seed=cfg.seed, device=device,
                      robustifier=robustifier, batch=data.batch_source(cfg.batch_size, device),
                      num_classes=len(data.classes))
    stages = robustify_stages(cfg, trains_classifier=legacy is None)
    reached.trainer, reached.stages = trainer, stages
    _train(trainer, stages, folder, cfg, data, legacy, resume=resume, reporter=rep)
    baseline, final = _test(trainer, folder, cfg, data, device, rep)
    summary = _summary(cfg, data, legacy, baseline, final, device, folder.elapsed())
    folder.write_summary(summary)
    return summary


def default_out(cfg: RobustifyConfig, data: Data) -> Path:
    src = Path(cfg.data).stem if cfg.data else (Path(cfg.run).name if cfg.run else Path(data.font or "glyphs").stem)
    return Path("renders") / f"robustify-{cfg.recipe}-{slug(src, 'data')}-{cfg.eps_a:g}"


def _starting_robustifier(cfg: RobustifyConfig) -> tuple[Robustifier | None, RobustifyConfig]:
    """R to start from (``--robustifier``, its shape then fixes width and depth), a fresh
    identity R for r and rc, or None for A5/O."""
    if cfg.robustifier:
        robustifier = load_robustifier(Path(cfg.robustifier))
        if abs(robustifier.eps_d - cfg.eps_d) > 1e-12:
            raise RobustifyError(f"robustifier {cfg.robustifier} was trained for eps_D {robustifier.eps_d:g}, not --eps-d {cfg.eps_d:g}")
        return robustifier, replace(cfg, width=robustifier.width, depth=robustifier.depth)
    if cfg.recipe in ("r", "rc"):
        return Robustifier(3, cfg.eps_d, cfg.width, cfg.depth), cfg
    return None, cfg


def robustify_stages(cfg: RobustifyConfig, *, trains_classifier: bool) -> list[StageSpec]:
    """Of a resolved config: stage 1 (CROWN-IBP classifier) when no C is given
    (``trains_classifier``), then A5/R, then A5/RC."""
    stages = []
    if trains_classifier:
        stages.append(make_stage("crown-ibp", cfg.stage1_steps, cfg.eps_a, warmup=cfg.warmup, ramp=cfg.ramp, lr=cfg.lr,
                                 train_bounds=cfg.train_bounds, crown_k=cfg.crown_k,
                                 collapse_advice=cfg.stage1_collapse_advice()))
    if cfg.recipe == "r" or (cfg.recipe == "rc" and not cfg.robustifier):
        stages.append(make_stage("r", cfg.r_steps, cfg.eps_r, train_bounds=cfg.train_bounds, lr_robustifier=cfg.lr_robustifier,
                                 crown_k=cfg.crown_k))
    if cfg.recipe == "rc":
        stages.append(make_stage("rc", cfg.rc_steps, cfg.eps_r, lr=cfg.lr_rc, train_bounds=cfg.train_bounds,
                                 lr_robustifier=cfg.lr_robustifier, crown_k=cfg.crown_k,
                                 collapse_advice="use a smaller --eps-r, or a classifier trained longer first "
                                                 "(more --stage1-steps)"))
    return stages


def _save_classifier(model: nn.Module, path: Path, cfg: RobustifyConfig, data: Data) -> None:
    chars = data.classes if isinstance(data.classes, str) else list(data.classes)
    models.save_classifier(model, path, arch=cfg.arch, resolution=data.resolution, chars=chars)


def _train(trainer: Trainer, stages: list[StageSpec], folder: RunFolder, cfg: RobustifyConfig, data: Data,
           legacy: Legacy | None, *, resume: bool, reporter) -> None:
    """Save C before A5, then run (or resume) the stages with checkpoints and metrics; without
    stages (A5/O of a given C) only the final files are written."""

    def save_checkpoint() -> None:
        trainer.checkpoint(folder.checkpoint)
        _save_classifier(trainer.model, folder / CLASSIFIER, cfg, data)
        if trainer.robustifier is not None:
            save_robustifier(trainer.robustifier, folder / ROBUSTIFIER)

    def after_stage(index: int, spec) -> None:
        if spec.recipe == "crown-ibp":
            _save_classifier(trainer.model, folder / BASELINE_CLASSIFIER, cfg, data)

    if legacy is not None:  # C before A5, saved before any stage can train it (A5/RC fine-tunes this object)
        _save_classifier(legacy.model, folder / BASELINE_CLASSIFIER, cfg, data)
    if not stages:
        save_checkpoint()
        return
    if resume and folder.checkpoint.is_file():
        try:
            trainer.restore(folder.checkpoint, stages)
        except (RuntimeError, ValueError, KeyError) as err:
            raise RobustifyError(f"{folder.checkpoint} does not fit this run: {err}") from None
        folder.trim_metrics([st.recipe for st in stages], trainer.stage_index, trainer.step)
        reporter.message(f"resumed {folder.path} at stage {trainer.stage_index + 1}/{len(stages)}, step {trainer.step}")
    else:
        folder.reset_metrics()
        trainer.start_stage(stages[0])
    run_stages(trainer, stages, reporter=reporter, on_log=lambda r: reporter.log(folder.append_metrics(r)),
               on_checkpoint=save_checkpoint, checkpoint_seconds=cfg.checkpoint_seconds, after_stage=after_stage)


def _test(trainer: Trainer, folder: RunFolder, cfg: RobustifyConfig, data: Data, device: torch.device,
          reporter) -> tuple[dict, dict]:
    """(C alone on the test images x, the recipe on their defended z); writes ``examples.png``."""
    total = data.test_total(cfg.samples_per_char)
    before = models.load_classifier(folder / BASELINE_CLASSIFIER)[0].to(device)
    baseline = _light_eval(before, data.test_chunks(cfg.samples_per_char, cfg.eval_seed, device), total, data.classes, cfg,
                           device, lambda ph, d, t: reporter.evaluation("classifier alone", d, t))
    stats = DefenceStats(len(data.classes))
    transform = defence_transform(cfg.recipe, trainer.model, trainer.robustifier, cfg, stats)
    chunks = ((transform(x, y), y) for x, y in data.test_chunks(cfg.samples_per_char, cfg.eval_seed, device))
    final = _light_eval(trainer.model, chunks, total, data.classes, cfg, device,
                        lambda ph, d, t: reporter.evaluation(RECIPE_NAMES[cfg.recipe], d, t))
    final.update({"psnr_db": stats.overall_psnr(), "max_abs_change": stats.max_abs})

    x_ex, y_ex = next(data.test_chunks(cfg.samples_per_char, cfg.eval_seed, device))
    pick = _examples(y_ex, 12)
    z_ex = transform(x_ex[pick], y_ex[pick])
    defence_examples(x_ex[pick].cpu(), z_ex.cpu(), cfg.eps_d, folder / "examples.png")
    return baseline, final


def _light_eval(model, chunks, total, classes, cfg: RobustifyConfig, device, progress=None) -> dict:
    ev = evaluate_samples(model, chunks, total=total, chars=classes, eps_a=cfg.eps_a, seed=cfg.eval_seed, device=device,
                          methods=cfg.certify_methods, attack="none", radius_steps=0, on_progress=progress)
    s = ev.result.summary()
    best = list(s["certified_error"].values())[-1]
    return {"clean_error": s["clean_error"], "certified_error": best, "certified_error_by_method": s["certified_error"]}


def _examples(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of up to ``n`` test samples of distinct classes (first occurrences)."""
    seen, idx = set(), []
    for i, y in enumerate(labels.tolist()):
        if y not in seen:
            seen.add(y)
            idx.append(i)
        if len(idx) == n:
            break
    return torch.tensor(idx, dtype=torch.int64, device=labels.device)


def _summary(cfg: RobustifyConfig, data: Data, legacy: Legacy | None, baseline: dict, final: dict,
             device: torch.device, wall_seconds: float) -> dict:
    return {
        "kind": "robustify",
        "recipe": cfg.recipe,
        "recipe_name": RECIPE_NAMES[cfg.recipe],
        "data": data.description,
        "classes": data.classes if isinstance(data.classes, str) else list(data.classes),
        "eps_a": cfg.eps_a,
        "eps_r": cfg.eps_r,
        "eps_d": cfg.eps_d,
        "resolution": data.resolution,
        "arch": cfg.arch,
        "seed": cfg.seed,
        "eval_seed": cfg.eval_seed,
        "samples": data.test_total(cfg.samples_per_char),
        "certify_method": "+".join(cfg.certify_methods),
        "classifier_before": str(legacy.path) if legacy is not None else "stage 1 (CROWN-IBP, this run)",
        "wall_seconds": round(wall_seconds, 1),
        "device": str(device),
        "out": str(cfg.out),
        "baseline": baseline,
        "final": final,
    }
