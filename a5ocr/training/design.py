"""``a5ocr design``: from a font to certified robust glyphs, end to end.

Stages: (1) unless a legacy classifier is given, a CROWN-IBP classifier is trained on the
unmodified glyphs (the paper's baseline; ``classifier_recipe="vanilla"`` trains a plain one); (2) A5/P trains the glyph change dw for that fixed
classifier, or A5/PC trains dw and the classifier together; (3) both the baseline and the final
design are evaluated on fresh acquisitions with sound certificates. With ``eps_print`` > 0 the
A5 stage trains against the joint threat (the print w + dw_A, ||dw_A||_inf <= eps_print, and the
image attack eps_A; stage 1 stays the image-attack baseline), and (3) also certifies both at
eps_print (``summary.json``: ``baseline.print``, ``final.print``). A config.json without
``eps_print`` (older runs) means 0.

A run folder holds ``config.json``, ``checkpoint.pt`` (resumable state, read with
weights_only), ``classifier.safetensors``, ``glyphs.safetensors``, ``metrics.jsonl``,
``glyphs/`` (PNG per robust glyph), ``glyphs.png`` (sheet), ``curves.png`` and ``summary.json``.
Its lifecycle (new or resumed, config.json, metrics, summary) is ``a5ocr.runs.RunFolder``'s.

Under ``torchrun --nproc-per-node N`` (``a5ocr.training.distributed``) the N processes train
together: each draws 1/N of every step's acquisitions (``copies`` x characters must divide by N),
the gradients are averaged, and rank 0 alone writes the folder (config.json, checkpoints,
metrics, the outputs) and shows progress; the evaluation is shared (each process certifies its
part of every chunk of the same acquisitions, ``_evaluation``); config.json and summary.json
then say ``distributed`` (world size, backend, the ranks' seeds).
A resume needs the same N (the checkpoint holds every process's generator state).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar

import torch

from a5ocr import models
from a5ocr.acquisition import Acquisition, AcquisitionConfig
from a5ocr.errors import DesignError
from a5ocr.evaluation import EvalResult, acquisitions, evaluate, evaluate_samples
from a5ocr.figures import glyph_sheet, ink_to_image, training_curves
from a5ocr.glyphs import GlyphSet, rasterize, resolve_charset
from a5ocr.runio import atomic_path
from a5ocr.runs import RunFolder, read_json, save_glyphs, slug
from a5ocr.runtime import Reporter, pick_device
from a5ocr.training.config import PRESETS, TrainingConfig
from a5ocr.training.distributed import Distributed
from a5ocr.training.interrupt import RunState
from a5ocr.training.parameterisation import Parameterisation, change_record
from a5ocr.training.trainer import RobustGlyphs, StageSpec, Trainer, bounds_label, make_stage, run_stages


# The chunk of ``evaluate``'s draws (its default): a sharded evaluation draws the same chunks.
EVAL_CHUNK = 1024


@dataclass
class DesignConfig(TrainingConfig):
    """Everything a design run depends on (written to ``config.json``): the shared training
    settings (``TrainingConfig``; ``samples_per_char`` is the ``--eval-samples`` option, once
    named ``eval_samples``) and the design's own."""

    ERROR: ClassVar[type] = DesignError
    SAMPLES_FLAG: ClassVar[str] = "--eval-samples"
    STAGE1_FLAG: ClassVar[str] = "--steps"

    recipe: str = "pc"
    classifier_recipe: str = "crown-ibp"
    ink: str = "gray"
    stage2_steps: int | None = None
    lr_glyphs: float = 0.05
    # The print is print_scale times finer than the sensor (None: the preset's; 1: one grid).
    print_scale: int | None = None
    # The glyph change's parameterisation (``Parameterisation.to_dict``); None: the paper's per
    # pixel; "preset": the preset's ``defence`` (resolved; a record never holds "preset").
    parameterisation: dict | str | None = "preset"
    eps_print: float = 0.0  # the A5 stage's print budget (0: the image attack alone)

    def to_dict(self) -> dict:
        """The config record; ``eps_print`` only when set: a record without it (every run folder
        from before it, and image-attack runs) means 0, so those folders resume unchanged."""
        d = super().to_dict()
        if not d["eps_print"]:
            del d["eps_print"]
        return d

    def resolved(self) -> "DesignConfig":
        """Fill preset defaults (warmup and ramp scaled to ``stage1_steps``) and check ranges;
        raises ``DesignError`` with a readable message."""
        self.check_preset(PRESETS)
        self.check_budget("eps_a")
        self.check_budget("eps_d", closed_top=True)
        self._check_recipe()
        self.check_samples()
        preset = PRESETS[self.preset]
        cfg = self.with_scaled_schedule(preset).with_preset({k: v for k, v in preset.items() if k not in ("defence", "defence_tv")})
        if cfg.parameterisation == "preset":
            cfg = replace(cfg, parameterisation=parameterisation_option(preset["defence"], preset.get("defence_tv", 0.0)))
        p = cfg.parameterisation
        if isinstance(p, dict) and p.get("kind") == "outline" and "scale" not in p and isinstance(cfg.print_scale, int):
            # an outline moves edges by eps_D sensor px: eps_D x S print px, whatever z's grid
            cfg = replace(cfg, parameterisation={**p, "scale": cfg.print_scale})
        cfg.check_resolution()
        cfg._check_print()
        cfg = cfg.with_eval_seed()
        cfg.check_at_least_one(("copies", "stage1_steps", "stage2_steps"), as_flags=False)
        cfg.check_schedule()
        return cfg.with_checked_bounds()

    def _check_print(self) -> None:
        """``print_scale`` an integer >= 1 and a valid ``parameterisation`` whose grid divides the print."""
        s = self.print_scale
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise DesignError(f"--print-scale must be an integer of at least 1, got {s!r}")
        try:
            self.glyph_parameterisation().z_shape((self.resolution * s, self.resolution * s))
        except (TypeError, ValueError) as err:
            raise DesignError(f"bad glyph parameterisation: {err}") from None

    def glyph_parameterisation(self) -> Parameterisation:
        return Parameterisation.from_dict(self.parameterisation)

    def _check_recipe(self) -> None:
        if self.recipe not in ("p", "pc", "none"):
            raise DesignError(f"--recipe must be p or pc, got {self.recipe!r}")
        if self.classifier_recipe not in ("crown-ibp", "vanilla"):
            raise DesignError(f"classifier_recipe must be crown-ibp or vanilla, got {self.classifier_recipe!r}")
        if self.recipe == "none" and self.classifier:
            raise DesignError("recipe none trains a classifier only: it takes no --classifier")
        if self.ink not in ("gray", "binary"):
            raise DesignError(f"--ink must be gray or binary, got {self.ink!r}")
        if not 0.0 <= self.eps_print < 1.0:  # NaN fails too
            raise DesignError(f"--eps-print must be in [0, 1) (0: the image attack alone), got {self.eps_print}")
        if self.eps_print > 0 and self.recipe == "none":
            raise DesignError("--eps-print trains the glyphs against the print attack: it needs recipe p or pc")


def parameterisation_option(text: str, tv: float = 0.0) -> dict | None:
    """The ``parameterisation`` record of ``--defence TEXT --defence-tv TV`` (None: the paper's
    per-pixel change without penalty); ``DesignError`` on a bad one."""
    try:
        p = Parameterisation.parse(text, tv)
    except ValueError as err:
        raise DesignError(f"--defence: {err}") from None
    return None if p == Parameterisation() else p.to_dict()


def defence_option(text: str | None, tv: float, preset: str) -> dict | str | None:
    """``DesignConfig.parameterisation`` for ``--defence TEXT --defence-tv TV``: "preset" (the
    preset's defence, with its penalty) when neither is given; TV alone applies to the preset's
    defence (in place of its penalty); TEXT alone has no penalty."""
    if text is None and tv == 0.0:
        return "preset"
    return parameterisation_option(text if text is not None else PRESETS.get(preset, {}).get("defence", "pixel"), tv)


def default_out(cfg: DesignConfig, family: str) -> Path:
    chars = cfg.chars if cfg.chars.isdigit() else f"{len(cfg.chars)}custom"
    return Path("renders") / f"{slug(family)}-{chars}-{cfg.eps_a:g}"


@dataclass
class _Design:
    """One design run in progress: its settings, glyphs, folder and what it trains."""

    cfg: DesignConfig
    glyphs: GlyphSet
    device: torch.device
    folder: RunFolder
    legacy: torch.nn.Module | None
    dist: Distributed = field(default_factory=Distributed)
    acq: Acquisition | None = None
    trainer: Trainer | None = None
    stages: list[StageSpec] | None = None

    @property
    def baseline_path(self) -> Path:
        return self.folder / "baseline_classifier.safetensors"

    def save_classifier(self, model: torch.nn.Module, path: Path) -> None:
        models.save_classifier(model, path, arch=self.cfg.arch, resolution=self.cfg.resolution, chars=self.glyphs.chars)

    def save_checkpoint(self) -> None:
        self.trainer.checkpoint(self.folder.checkpoint)  # every process: the generator states are gathered
        if not self.dist.is_main:
            return
        self.save_classifier(self.trainer.model, self.folder / "classifier.safetensors")
        save_glyphs(self.folder / "glyphs.safetensors", self.glyphs, self.trainer.glyphs, eps_d=self.cfg.eps_d,
                    ink=self.cfg.ink)

    def after_stage(self, index: int, spec: StageSpec) -> None:
        if index == 0 and self.legacy is None and self.dist.is_main:
            self.save_classifier(self.trainer.model, self.baseline_path)


def run_design(cfg: DesignConfig, *, resume: bool = False, reporter: Reporter | None = None) -> dict | None:
    """Run a whole design; returns the summary dict (also written to ``summary.json``). Under
    ``torchrun`` (the module doc): the processes train and evaluate together, rank 0 reports to
    ``reporter``, writes and returns the summary; the others return None. Ctrl-C or SIGTERM stops
    training at the next step with a checkpoint there; at any point the run raises
    ``a5ocr.training.interrupt.RunInterrupted``, whose message says what the checkpoint holds."""
    cfg = cfg.resolved()
    dist = Distributed.from_env(DesignError)
    _check_split(cfg, dist)
    rep = (reporter or Reporter()) if dist.is_main else Reporter()
    device = dist.start(pick_device(cfg.device))
    # what the run has reached, for the message of a Ctrl-C or SIGTERM (``RunInterrupted``)
    reached = RunState(Path(cfg.out) / "checkpoint.pt" if cfg.out else None, resume=resume)
    try:
        t_start = time.monotonic()
        torch.manual_seed(cfg.seed)
        run = _open_run(cfg, device, t_start, resume, dist)
        reached.checkpoint = run.folder.checkpoint
        _build_trainer(run)
        reached.trainer, reached.stages = run.trainer, run.stages
        _train(run, resume, rep)
        baseline, final, w_final = _evaluate_baseline_and_final(run, rep)  # shared by the processes
        if not dist.is_main:
            return None
        _write_artefacts(run, w_final)
        summary = _summary(run, baseline, final, change_record(run.glyphs.images, w_final.cpu(), cfg.print_scale))
        run.folder.write_summary(summary)
        return summary
    except KeyboardInterrupt as err:
        raise reached.interrupted(err) from None
    finally:
        dist.close()


def _check_split(cfg: DesignConfig, dist: Distributed) -> None:
    """Several processes: each step's acquisitions (copies x characters) must split evenly."""
    if not dist.active:
        return
    batch = cfg.copies * len(resolve_charset(cfg.chars))
    if batch % dist.world_size:
        raise DesignError(f"{dist.world_size} processes cannot share a step of {batch} acquisitions ({cfg.copies} "
                          f"per character): use a number of processes that divides {batch}")


def _open_run(cfg: DesignConfig, device: torch.device, t_start: float, resume: bool, dist: Distributed) -> _Design:
    """The glyphs, the run folder (new or resumed: ``RunFolder.start``, by rank 0 while the others
    wait) and the legacy classifier."""
    glyphs = rasterize(cfg.font, cfg.chars, cfg.resolution, print_scale=cfg.print_scale)
    out = Path(cfg.out) if cfg.out else default_out(cfg, glyphs.family)
    cfg = replace(cfg, out=str(out))
    legacy = None
    if cfg.classifier:
        legacy, meta = models.load_classifier(Path(cfg.classifier))
        if meta["chars"] != glyphs.chars:
            raise DesignError(f"classifier {cfg.classifier} was trained for characters {meta['chars']!r}, not {glyphs.chars!r}")
        if meta["resolution"] != cfg.resolution:
            raise DesignError(f"classifier {cfg.classifier} takes {meta['resolution']}x{meta['resolution']} images; use --resolution {meta['resolution']}")
        cfg = replace(cfg, arch=meta["arch"])

    def claim() -> None:
        folder = RunFolder.open(out, DesignError, started=t_start)
        if resume:
            _check_resume_world(folder, dist)
        extra = {"distributed": dist.record(cfg.seed)} if dist.active else None
        folder.start(cfg.to_dict(), device=device, resume=resume, extra=extra)

    dist.main_first(claim, DesignError)
    folder = RunFolder(out, DesignError, started=t_start)
    return _Design(cfg=cfg, glyphs=glyphs, device=device, folder=folder, legacy=legacy, dist=dist)


def _check_resume_world(folder: RunFolder, dist: Distributed) -> None:
    """A resume runs on as many processes as the interrupted run (its config.json's
    ``distributed.world_size``; none: 1), before config.json is rewritten."""
    if not folder.config_path.is_file():
        return  # RunFolder.start says there is nothing to resume
    rec = read_json(folder.config_path) or {}
    problem = dist.resume_problem(int((rec.get("distributed") or {}).get("world_size", 1)))
    if problem:
        raise DesignError(f"{folder.path}: {problem}")


def _build_trainer(run: _Design) -> None:
    """The acquisition model, the classifier (legacy or new), the glyph change and the stages."""
    cfg, glyphs = run.cfg, run.glyphs
    run.acq = Acquisition(cfg.resolution, AcquisitionConfig.from_dict(cfg.acquisition), print_scale=cfg.print_scale)
    model = run.legacy if run.legacy is not None else models.build(cfg.arch, cfg.resolution, len(glyphs.chars))
    robust = RobustGlyphs(glyphs.images, cfg.eps_d, cfg.ink, cfg.glyph_parameterisation())
    run.trainer = Trainer(model, robust, run.acq, copies=cfg.copies, seed=cfg.seed, device=run.device, dist=run.dist)
    run.stages = design_stages(cfg, trains_classifier=run.legacy is None)


def design_stages(cfg: DesignConfig, *, trains_classifier: bool) -> list[StageSpec]:
    """The stages of a resolved design config: stage 1 (the classifier; not with a legacy one)
    on the config's eps schedule, then the A5 stage (none for recipe ``none``) at eps_A."""
    stages = []
    if trains_classifier:
        stages.append(make_stage(cfg.classifier_recipe, cfg.stage1_steps, cfg.eps_a, warmup=cfg.warmup, ramp=cfg.ramp,
                                 lr=cfg.lr, train_bounds=cfg.train_bounds, crown_k=cfg.crown_k,
                                 collapse_advice=cfg.stage1_collapse_advice()))
    if cfg.recipe != "none":
        stages.append(make_stage(cfg.recipe, cfg.stage2_steps, cfg.eps_a, lr=cfg.lr, lr_glyphs=cfg.lr_glyphs,
                                 train_bounds=cfg.train_bounds, crown_k=cfg.crown_k, eps_print=cfg.eps_print,
                                 collapse_advice="train the classifier longer first (more --steps) or use a smaller --eps-a"))
    return stages


def _train(run: _Design, resume: bool, rep: Reporter) -> None:
    """Every stage, from the checkpoint when resuming; checkpoints and metrics in the folder."""
    trainer, folder, main = run.trainer, run.folder, run.dist.is_main
    if resume:
        trainer.restore(folder.checkpoint, run.stages)
        if main:
            folder.trim_metrics([st.recipe for st in run.stages], trainer.stage_index, trainer.step)
        rep.message(f"resumed {folder.path} at stage {trainer.stage_index + 1}/{len(run.stages)}, step {trainer.step}")
    else:
        if main:
            folder.reset_metrics()
        trainer.start_stage(run.stages[0])
    run_stages(trainer, run.stages, reporter=rep, on_log=lambda rec: rep.log(folder.append_metrics(rec)) if main else None,
               on_checkpoint=run.save_checkpoint, checkpoint_seconds=run.cfg.checkpoint_seconds,
               after_stage=run.after_stage)


def _evaluate_design(run: _Design, name: str, model: torch.nn.Module, w: torch.Tensor, rep: Reporter,
                     eps_print: float = 0.0) -> dict:
    """Clean and certified error on the run's evaluation acquisitions (image attack eps_A; with
    ``eps_print`` the joint threat); with the run's eps_print, also the joint figures as "print"."""
    cfg = run.cfg
    label = (name if not eps_print else f"{name} (eps_print {eps_print:g})") + (" (process 0's part)" if run.dist.active else "")
    s = _evaluation(run, model, w.to(run.device), eps_print, lambda d, t: rep.evaluation(label, d, t)).summary()
    best = s["certified_error"].get("best", list(s["certified_error"].values())[-1])
    out = {"clean_error": s["clean_error"], "certified_error": best, "certified_error_by_method": s["certified_error"],
           "per_char": s["per_char"]}
    if eps_print:
        return {"eps_print": eps_print, "eps_a": cfg.eps_a, **out}
    if cfg.eps_print > 0:
        out["print"] = _evaluate_design(run, name, model, w, rep, cfg.eps_print)
    return out


def _evaluation(run: _Design, model: torch.nn.Module, w: torch.Tensor, eps_print: float,
                on_chunk: Callable[[int, int], None]) -> EvalResult:
    """``evaluate`` with the run's settings. Several processes: every one draws every chunk of the
    same acquisitions (so that the generator stays in step) and certifies its ``part`` of each with
    ``evaluate``'s protocol (``evaluate_samples``: the cascade, no attack, no radius, each chunk
    whole); the per-sample outcomes are gathered on every process. The figures are counts: those of
    one process, up to the floating-point effects of smaller batches."""
    cfg, dist, chars = run.cfg, run.dist, run.glyphs.chars
    if not dist.active:
        return evaluate(model, w, chars, run.acq, eps_a=cfg.eps_a, samples_per_char=cfg.samples_per_char,
                        seed=cfg.eval_seed, methods=cfg.certify_methods, eps_print=eps_print, on_chunk=on_chunk)
    printed, k = eps_print > 0, len(chars)
    n, per_chunk = k * cfg.samples_per_char, max(k, (EVAL_CHUNK // k) * k)  # ``acquisitions``' chunks
    mine = sum(len(range(c)[dist.part(c)]) for c in (min(per_chunk, n - s) for s in range(0, n, per_chunk)))

    def my_parts():
        for x, labels, *batch in acquisitions(w.detach(), run.acq, cfg.samples_per_char, cfg.eval_seed, EVAL_CHUNK,
                                              with_params=printed):
            part = dist.part(labels.numel())
            yield (x[part], labels[part], *(b.sub(part) for b in batch))

    res = evaluate_samples(model, my_parts(), total=mine, chars=chars, eps_a=cfg.eps_a, seed=cfg.eval_seed, device=w.device,
                           methods=tuple(cfg.certify_methods), ibp_first=False, cascade=True, attack="none",
                           radius_steps=0, sub_batch=None, on_progress=lambda phase, d, t: on_chunk(d, t),
                           eps_print=eps_print, camera=run.acq.cfg if printed else None).result
    names = list(res.certified)
    rows = dist.gather_columns(torch.stack([res.labels, res.correct.long(), *(res.certified[m].long() for m in names)]))
    return EvalResult(chars=chars, eps_a=res.eps_a, labels=rows[0], correct=rows[1].bool(),
                      certified={m: rows[2 + i].bool() for i, m in enumerate(names)})


def _evaluate_baseline_and_final(run: _Design, rep: Reporter) -> tuple[dict, dict, torch.Tensor]:
    """The baseline (before A5) and the final design on the same acquisitions; and the final glyphs."""
    # The baseline is the classifier before A5: the legacy file as given, or the end of stage 1
    # (re-read from disk: A5/PC has changed the in-memory classifier since).
    baseline_model = models.load_classifier(Path(run.cfg.classifier) if run.legacy is not None else run.baseline_path)[0]
    baseline = _evaluate_design(run, "baseline", baseline_model.to(run.device), run.glyphs.images, rep)
    with torch.no_grad():
        w_final = run.trainer.glyphs()
    # recipe "none" (a classifier alone): nothing changed after the baseline
    final = baseline if run.cfg.recipe == "none" else _evaluate_design(run, "final", run.trainer.model, w_final, rep)
    return baseline, final, w_final


def _write_artefacts(run: _Design, w_final: torch.Tensor) -> None:
    """glyphs/U+XXXX.png, glyphs.png (with acquisitions of the robust glyphs) and curves.png."""
    folder = run.folder
    png_dir = folder / "glyphs"
    png_dir.mkdir(exist_ok=True)
    for c, w in zip(run.glyphs.chars, w_final.cpu()):
        with atomic_path(png_dir / f"U+{ord(c):04X}.png") as tmp:
            ink_to_image(w).save(tmp, format="PNG")
    with torch.no_grad():
        shown = run.acq(w_final, torch.Generator(device=run.device).manual_seed(run.cfg.eval_seed))
    glyph_sheet(run.glyphs.images, w_final.cpu(), folder / "glyphs.png", acquired=shown.cpu(), print_scale=run.cfg.print_scale)
    training_curves(folder.read_metrics(), folder / "curves.png")


def stage1_label(classifier_recipe: str, train_bounds: str, crown_k: int | None = None) -> str:
    """The stage-1 classifier in words: "CROWN-IBP classifier" only when trained with the
    paper's CROWN-IBP/IBP mix; "IBP-trained certified classifier" (etc.) otherwise."""
    if classifier_recipe == "vanilla":
        return "vanilla classifier"
    if train_bounds == "mixed":
        return "CROWN-IBP classifier" + (f" (CROWN-IBP on the {crown_k} hardest margins)" if crown_k else "")
    return f"certified classifier trained with {bounds_label(train_bounds, crown_k)} bounds"


def _summary(run: _Design, baseline: dict, final: dict, change: dict) -> dict:
    cfg, glyphs = run.cfg, run.glyphs
    return {
        "recipe": cfg.recipe,
        "font": glyphs.font_path,
        "family": glyphs.family,
        "chars": glyphs.chars,
        "eps_a": cfg.eps_a,
        "eps_print": cfg.eps_print,
        "eps_d": cfg.eps_d,
        "ink": cfg.ink,
        "resolution": cfg.resolution,
        "print_scale": cfg.print_scale,
        "parameterisation": cfg.glyph_parameterisation().to_dict(),
        "change": change,  # how much the design changed the ink, measured (print and sensor grids)
        "arch": cfg.arch,
        "seed": cfg.seed,
        "eval_seed": cfg.eval_seed,
        "certify_method": "+".join(cfg.certify_methods),
        # what the baseline classifier was trained with (None: a legacy classifier was given)
        "train_bounds": None if cfg.classifier else cfg.train_bounds,
        "crown_k": None if cfg.classifier else cfg.crown_k,
        "stage1": None if cfg.classifier else stage1_label(cfg.classifier_recipe, cfg.train_bounds, cfg.crown_k),
        "wall_seconds": round(run.folder.elapsed(), 1),
        "samples": cfg.samples_per_char * len(glyphs.chars),
        "device": str(run.device),
        "out": str(run.folder.path),
        **({"distributed": run.dist.record(cfg.seed)} if run.dist.active else {}),
        "baseline": baseline,
        "final": final,
    }
