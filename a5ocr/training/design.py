"""``a5ocr design``: from a font to certified robust glyphs, end to end.

Stages: (1) unless a legacy classifier is given, a CROWN-IBP classifier is trained on the
unmodified glyphs (the paper's baseline; ``classifier_recipe="vanilla"`` trains a plain one); (2) A5/P trains the glyph change dw for that fixed
classifier, or A5/PC trains dw and the classifier together; (3) both the baseline and the final
design are evaluated on fresh acquisitions with sound certificates.

A run folder holds ``config.json``, ``checkpoint.pt`` (resumable state, read with
weights_only), ``classifier.safetensors``, ``glyphs.safetensors``, ``metrics.jsonl``,
``glyphs/`` (PNG per robust glyph), ``glyphs.png`` (sheet), ``curves.png`` and ``summary.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from a5ocr import models
from a5ocr.acquisition import Acquisition, AcquisitionConfig
from a5ocr.evaluation import evaluate
from a5ocr.glyphs import GlyphSet, rasterize
from a5ocr.training.trainer import RobustGlyphs, StageSpec, Trainer, make_stage, run_stages
from a5ocr.runio import append_jsonl, atomic_path, ensure_writable_dir, environment, read_jsonl, write_json
from a5ocr.runs import default_eval_seed, save_glyphs
from a5ocr.errors import DesignError

PRESETS: dict[str, dict] = {
    # CPU default: 32x32, the wider small net, IBP bounds in training (CROWN-IBP costs ~50x an
    # IBP step on a CPU); minutes on a laptop. Steps chosen with benchmarks/tune_design.py.
    "cpu": {"resolution": 32, "arch": "cpu", "copies": 2, "stage1_steps": 2400, "warmup": 240, "ramp": 1200,
            "stage2_steps": 1600, "train_bounds": "ibp"},
    # The paper's setup: 128x128, the paper's net, lb = f*CROWN-IBP + (1-f)*IBP; meant for a GPU.
    "paper": {"resolution": 128, "arch": "paper", "copies": 2, "stage1_steps": 6000, "warmup": 600, "ramp": 3000,
              "stage2_steps": 4000, "train_bounds": "mixed"},
    # Seconds, for tests and smoke runs.
    "tiny": {"resolution": 16, "arch": "tiny", "copies": 1, "stage1_steps": 30, "warmup": 5, "ramp": 10,
             "stage2_steps": 20, "train_bounds": "ibp"},
}


def bounds_options_problem(train_bounds: str, certify_methods) -> str | None:
    """What is wrong with a run's training bounds ("mixed" or a bound method) and certification
    methods, in one line; None when both are valid. Shared by design and robustify configs."""
    from a5ocr.bounds import METHODS

    if train_bounds not in ("mixed", *METHODS):
        return f"train_bounds must be mixed or one of {', '.join(METHODS)}, got {train_bounds!r}"
    for m in certify_methods:
        if m not in METHODS:
            return f"unknown certification method {m!r} (one of: {', '.join(METHODS)})"
    return None



@dataclass
class DesignConfig:
    """Everything a design run depends on (written to ``config.json``)."""

    font: str = "comic-neue"
    chars: str = "62"
    eps_a: float = 0.1
    eps_d: float = 0.5
    recipe: str = "pc"
    classifier: str | None = None
    classifier_recipe: str = "crown-ibp"
    preset: str = "cpu"
    resolution: int | None = None
    arch: str | None = None
    device: str = "auto"
    seed: int = 0
    out: str | None = None
    ink: str = "gray"
    copies: int | None = None
    stage1_steps: int | None = None
    warmup: int | None = None
    ramp: int | None = None
    stage2_steps: int | None = None
    lr: float = 1e-3
    lr_glyphs: float = 0.05
    train_bounds: str | None = None
    eval_samples: int = 100
    eval_seed: int | None = None
    certify_methods: tuple[str, ...] = ("ibp", "crown-ibp")
    checkpoint_seconds: float = 120.0
    acquisition: dict = field(default_factory=lambda: AcquisitionConfig().to_dict())

    def resolved(self) -> "DesignConfig":
        """Fill preset defaults and check ranges; raises ``DesignError`` with a readable message."""
        if self.preset not in PRESETS:
            raise DesignError(f"unknown preset {self.preset!r} (one of: {', '.join(PRESETS)})")
        if not 0.0 < self.eps_a < 1.0:
            raise DesignError(f"--eps-a must be in (0, 1), got {self.eps_a}")
        if not 0.0 < self.eps_d <= 1.0:
            raise DesignError(f"--eps-d must be in (0, 1], got {self.eps_d}")
        if self.recipe not in ("p", "pc", "none"):
            raise DesignError(f"--recipe must be p or pc, got {self.recipe!r}")
        if self.classifier_recipe not in ("crown-ibp", "vanilla"):
            raise DesignError(f"classifier_recipe must be crown-ibp or vanilla, got {self.classifier_recipe!r}")
        if self.recipe == "none" and self.classifier:
            raise DesignError("recipe none trains a classifier only: it takes no --classifier")
        if self.ink not in ("gray", "binary"):
            raise DesignError(f"--ink must be gray or binary, got {self.ink!r}")
        if self.eval_samples < 1:
            raise DesignError("--eval-samples must be at least 1")
        p = PRESETS[self.preset]
        cfg = replace(self, **{k: (getattr(self, k) if getattr(self, k) is not None else p[k]) for k in p})
        if cfg.resolution < 8:
            raise DesignError("--resolution must be at least 8")
        if cfg.eval_seed is None:
            cfg = replace(cfg, eval_seed=default_eval_seed(cfg.seed))
        for name in ("copies", "stage1_steps", "stage2_steps"):
            if getattr(cfg, name) < 1:
                raise DesignError(f"{name} must be at least 1")
        problem = bounds_options_problem(cfg.train_bounds, cfg.certify_methods)
        if problem:
            raise DesignError(problem)
        cfg = replace(cfg, certify_methods=tuple(cfg.certify_methods))
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)


class Reporter:
    """Progress callbacks of a run; the CLI draws them with rich, tests ignore them."""

    def stage(self, name: str, total: int, done: int = 0) -> None: ...
    def log(self, record: dict) -> None: ...
    def evaluation(self, name: str, done: int, total: int) -> None: ...
    def message(self, text: str) -> None: ...


def default_out(cfg: DesignConfig, family: str) -> Path:
    slug = "".join(ch if ch.isalnum() else "-" for ch in family.lower()).strip("-")
    chars = cfg.chars if cfg.chars.isdigit() else f"{len(cfg.chars)}custom"
    return Path("renders") / f"{slug}-{chars}-{cfg.eps_a:g}"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DesignError("--device cuda asked, but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise DesignError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def _training_keys(d: dict) -> dict:
    """The parts of a config that a resumed run must share with the interrupted one."""
    return {k: v for k, v in d.items() if k not in ("device", "out", "checkpoint_seconds")}


def run_design(cfg: DesignConfig, *, resume: bool = False, reporter: Reporter | None = None) -> dict:
    """Run a whole design; returns the summary dict (also written to ``summary.json``)."""
    rep = reporter or Reporter()
    cfg = cfg.resolved()
    device = pick_device(cfg.device)
    t_start = time.monotonic()
    torch.manual_seed(cfg.seed)

    glyphs = rasterize(cfg.font, cfg.chars, cfg.resolution)
    out = Path(cfg.out) if cfg.out else default_out(cfg, glyphs.family)
    cfg = replace(cfg, out=str(out))
    try:
        ensure_writable_dir(out)
    except OSError as err:
        raise DesignError(f"cannot write to --out {out}: {err.strerror or err}") from None

    legacy = None
    if cfg.classifier:
        legacy, meta = models.load_classifier(Path(cfg.classifier))
        if meta["chars"] != glyphs.chars:
            raise DesignError(f"classifier {cfg.classifier} was trained for characters {meta['chars']!r}, not {glyphs.chars!r}")
        if meta["resolution"] != cfg.resolution:
            raise DesignError(f"classifier {cfg.classifier} takes {meta['resolution']}x{meta['resolution']} images; use --resolution {meta['resolution']}")
        cfg = replace(cfg, arch=meta["arch"])

    ckpt = out / "checkpoint.pt"
    config_path = out / "config.json"
    record = {"config": cfg.to_dict(), "environment": environment(), "device": str(device)}
    if resume:
        if not ckpt.is_file() or not config_path.is_file():
            raise DesignError(f"nothing to resume in {out} (no checkpoint.pt)")
        old = json.loads(config_path.read_text())["config"]
        if _training_keys(old) != _training_keys(json.loads(json.dumps(cfg.to_dict()))):
            diff = sorted(k for k in _training_keys(old) if _training_keys(old).get(k) != json.loads(json.dumps(cfg.to_dict())).get(k))
            raise DesignError(f"--resume with different settings than the interrupted run: {', '.join(diff)}")
    elif ckpt.is_file() or (out / "summary.json").is_file():
        raise DesignError(f"{out} already holds a run; use --resume to continue it or --out for a new folder")
    write_json(config_path, record)

    acq = Acquisition(cfg.resolution, AcquisitionConfig.from_dict(cfg.acquisition))
    model = legacy if legacy is not None else models.build(cfg.arch, cfg.resolution, len(glyphs.chars))
    robust = RobustGlyphs(glyphs.images, cfg.eps_d, cfg.ink)
    trainer = Trainer(model, robust, acq, copies=cfg.copies, seed=cfg.seed, device=device)
    stages: list[StageSpec] = []
    if legacy is None:
        stages.append(make_stage(cfg.classifier_recipe, cfg.stage1_steps, cfg.eps_a, warmup=cfg.warmup, ramp=cfg.ramp, lr=cfg.lr, train_bounds=cfg.train_bounds))
    if cfg.recipe != "none":
        stages.append(make_stage(cfg.recipe, cfg.stage2_steps, cfg.eps_a, lr=cfg.lr, lr_glyphs=cfg.lr_glyphs, train_bounds=cfg.train_bounds))

    metrics_path = out / "metrics.jsonl"
    if resume:
        trainer.restore(ckpt, stages)
        rep.message(f"resumed {out} at stage {trainer.stage_index + 1}/{len(stages)}, step {trainer.step}")
    else:
        metrics_path.unlink(missing_ok=True)
        trainer.start_stage(stages[0])

    def save_checkpoint() -> None:
        trainer.checkpoint(ckpt)
        models.save_classifier(trainer.model, out / "classifier.safetensors", arch=cfg.arch, resolution=cfg.resolution, chars=glyphs.chars)
        save_glyphs(out / "glyphs.safetensors", glyphs, trainer.glyphs, eps_d=cfg.eps_d, ink=cfg.ink)

    def on_log(rec: dict) -> None:
        rec = {**rec, "wall_seconds": round(time.monotonic() - t_start, 2)}
        append_jsonl(metrics_path, rec)
        rep.log(rec)

    baseline_path = out / "baseline_classifier.safetensors"

    def after_stage(index: int, spec: StageSpec) -> None:
        if index == 0 and legacy is None:
            models.save_classifier(trainer.model, baseline_path, arch=cfg.arch, resolution=cfg.resolution, chars=glyphs.chars)

    run_stages(trainer, stages, reporter=rep, on_log=on_log, on_checkpoint=save_checkpoint,
               checkpoint_seconds=cfg.checkpoint_seconds, after_stage=after_stage)

    # -- evaluation: the baseline (before A5) and the final design, same acquisitions --------
    def run_eval(name: str, model_: torch.nn.Module, w: torch.Tensor) -> dict:
        res = evaluate(
            model_, w.to(device), glyphs.chars, acq, eps_a=cfg.eps_a, samples_per_char=cfg.eval_samples,
            seed=cfg.eval_seed, methods=cfg.certify_methods,
            on_chunk=lambda d, t: rep.evaluation(name, d, t),
        )
        s = res.summary()
        best = s["certified_error"].get("best", list(s["certified_error"].values())[-1])
        return {"clean_error": s["clean_error"], "certified_error": best, "certified_error_by_method": s["certified_error"], "per_char": s["per_char"]}

    # The baseline is the classifier before A5: the legacy file as given, or the end of stage 1
    # (re-read from disk: A5/PC has changed the in-memory classifier since).
    baseline_model = models.load_classifier(Path(cfg.classifier) if legacy is not None else baseline_path)[0]
    baseline = run_eval("baseline", baseline_model.to(device), glyphs.images)
    with torch.no_grad():
        w_final = trainer.glyphs()
    # recipe "none" (a classifier alone): nothing changed after the baseline
    final = baseline if cfg.recipe == "none" else run_eval("final", trainer.model, w_final)

    # -- artefacts -------------------------------------------------------------------------
    from a5ocr.figures import glyph_sheet, ink_to_image, training_curves

    png_dir = out / "glyphs"
    png_dir.mkdir(exist_ok=True)
    for c, w in zip(glyphs.chars, w_final.cpu()):
        with atomic_path(png_dir / f"U+{ord(c):04X}.png") as tmp:
            ink_to_image(w).save(tmp, format="PNG")
    with torch.no_grad():
        shown = acq(w_final, torch.Generator(device=device).manual_seed(cfg.eval_seed))
    glyph_sheet(glyphs.images, w_final.cpu(), out / "glyphs.png", acquired=shown.cpu())
    training_curves(read_jsonl(metrics_path), out / "curves.png")

    summary = {
        "recipe": cfg.recipe,
        "font": glyphs.font_path,
        "family": glyphs.family,
        "chars": glyphs.chars,
        "eps_a": cfg.eps_a,
        "eps_d": cfg.eps_d,
        "ink": cfg.ink,
        "resolution": cfg.resolution,
        "arch": cfg.arch,
        "seed": cfg.seed,
        "eval_seed": cfg.eval_seed,
        "certify_method": "+".join(cfg.certify_methods),
        "wall_seconds": round(time.monotonic() - t_start, 1),
        "samples": cfg.eval_samples * len(glyphs.chars),
        "device": str(device),
        "out": str(out),
        "baseline": baseline,
        "final": final,
    }
    write_json(out / "summary.json", summary)
    return summary
