"""``a5ocr robustify``: the image-side recipes A5/O, A5/R and A5/RC (``a5ocr.robustify``).

Registered in ``cli/app.py``. Bad input raises ``a5ocr.robustify.RobustifyError`` (one line,
exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from a5ocr.cli.progress import RichReporter, progress_bars


def robustify(
    recipe: str = typer.Option("r", help="o = A5/O (per-image defence optimised knowing the label; offline baseline), r = A5/R (robustifier network R for a fixed classifier, no label), rc = A5/RC (A5/R, then R and the classifier fine-tuned together)."),
    run: Optional[Path] = typer.Option(None, help="A design run folder: its glyph prototypes, acquisition model and stage-1 CROWN-IBP classifier (baseline_classifier.safetensors)."),
    data: Optional[Path] = typer.Option(None, help="An image dataset instead of glyphs: a folder DATA/<class>/<image> (or DATA/train/<class>/ + DATA/test/<class>/), or an .npz with x [N,H,W(,C)] and y [N] (optional x_test, y_test, classes)."),
    font: str = typer.Option("comic-neue", help="Without --run or --data: the font whose acquired glyphs are the data (a TTF/OTF path or a shipped font)."),
    chars: str = typer.Option("62", help="Without --run or --data: the characters (62, 36, 26, 10 or an explicit string)."),
    classifier: Optional[Path] = typer.Option(None, help="Legacy classifier C (a5ocr safetensors); default: the design run's stage-1 classifier, else a CROWN-IBP classifier is trained first."),
    robustifier: Optional[Path] = typer.Option(None, help="Start R from this file (RUN/robustifier.safetensors of an A5/R run): A5/RC then only fine-tunes R and C together."),
    eps_a: float = typer.Option(0.1, "--eps-a", help="Attack budget: L-inf size of the man-in-the-middle change of the defended image, in (0, 1)."),
    eps_r: Optional[float] = typer.Option(None, "--eps-r", help="eps_A^R: the attack size the defence is trained / optimised for (default --eps-a)."),
    eps_d: float = typer.Option(0.3, "--eps-d", help="Defence budget: L-inf size of the defensive change dx_D of the image, in (0, 1]."),
    preset: str = typer.Option("cpu", help="cpu (32x32, minutes), paper (128x128, for a GPU), tiny (seconds, smoke test)."),
    resolution: Optional[int] = typer.Option(None, help="Image size (default from the preset; a design run imposes its own)."),
    steps: Optional[int] = typer.Option(None, help="Steps of the A5/R stage (default from the preset)."),
    rc_steps: Optional[int] = typer.Option(None, "--rc-steps", help="Steps of the A5/RC fine-tuning stage (default from the preset)."),
    o_steps: Optional[int] = typer.Option(None, "--o-steps", help="RMSprop steps of A5/O per test image (default from the preset)."),
    o_lr: float = typer.Option(0.1, "--o-lr", help="RMSprop learning rate of A5/O."),
    stage1_steps: Optional[int] = typer.Option(None, "--stage1-steps", help="Steps of the CROWN-IBP classifier trained when no classifier is given; its eps warmup and ramp scale with them."),
    warmup: Optional[int] = typer.Option(None, help="Steps at eps 0 that start stage 1 (default: the preset's, scaled with --stage1-steps)."),
    ramp: Optional[int] = typer.Option(None, help="Steps of stage 1 over which eps grows from 0 to eps_A after the warmup (default: the preset's, scaled with --stage1-steps); warmup + ramp must fit in --stage1-steps."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Training batch size on a dataset (glyphs: every glyph, twice, per step)."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Share of a dataset held out for testing when it has no test split."),
    samples_per_char: int = typer.Option(100, "--samples-per-char", help="Glyphs: fresh acquisitions per character in the test set."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of the training draws and of the dataset split; the same seed on the same machine gives the same result."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default renders/robustify-<recipe>-<source>-<eps>/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out from its last checkpoint."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (default: torch's choice)."),
    train_bounds: Optional[str] = typer.Option(None, "--train-bounds", help="Training bounds: mixed (f*CROWN-IBP + (1-f)*IBP) or a bound method (ibp, crown-ibp, ...); default from the preset."),
    crown_k: Optional[int] = typer.Option(None, "--crown-k", help="The relaxation on the k hardest margins by IBP only, IBP on the rest (sound, a few times cheaper); default: every margin."),
) -> None:
    """Robustify acquired images before the classifier (A5/O, A5/R, A5/RC) and evaluate them."""
    from a5ocr.robustify import RobustifyConfig, RobustifyError, run_robustify  # local: keep a5ocr --help fast
    from a5ocr.runtime import set_threads  # local: keep a5ocr --help fast (torch)

    set_threads(threads, RobustifyError)
    for name, p in (("--run", run), ("--classifier", classifier), ("--robustifier", robustifier)):
        if p is not None and not p.exists():
            raise RobustifyError(f"{name} {p} not found")
    cfg = RobustifyConfig(
        recipe=recipe, run=str(run) if run else None, data=str(data) if data else None, font=font, chars=chars,
        classifier=str(classifier) if classifier else None, robustifier=str(robustifier) if robustifier else None, eps_a=eps_a, eps_r=eps_r, eps_d=eps_d, preset=preset,
        resolution=resolution, r_steps=steps, rc_steps=rc_steps, o_steps=o_steps, o_lr=o_lr, stage1_steps=stage1_steps,
        warmup=warmup, ramp=ramp,
        batch_size=batch_size, test_fraction=test_fraction, samples_per_char=samples_per_char, device=device, seed=seed,
        out=str(out) if out else None, train_bounds=train_bounds, crown_k=crown_k,
    )
    with progress_bars() as progress:
        summary = run_robustify(cfg, resume=resume, reporter=RichReporter(progress))
    print_summary(summary, Console())


def print_summary(summary: dict, console: Console) -> None:
    t = Table(title=f"{summary['recipe_name']}  eps_A {summary['eps_a']:g}  eps_D {summary['eps_d']:g}  "
                    f"({summary['samples']} test images, certified by {summary['certify_method']})")
    t.add_column("")
    t.add_column("clean error", justify="right")
    t.add_column("certified error", justify="right")
    t.add_row("classifier alone (x)", f"{summary['baseline']['clean_error']:.2%}", f"{summary['baseline']['certified_error']:.2%}")
    f = summary["final"]
    t.add_row(f"{summary['recipe_name']} (z = x + dx_D)", f"{f['clean_error']:.2%}", f"{f['certified_error']:.2%}")
    console.print(t)
    psnr = "identical" if f.get("psnr_db") is None else f"{f['psnr_db']:.1f} dB"
    console.print(f"{summary['data']}\nchange of the images: PSNR {psnr}, largest |dx_D| {f['max_abs_change']:.4f} "
                  f"(eps_D {summary['eps_d']:g})\nrun folder: {summary['out']}  ({summary['wall_seconds']:.0f} s)")
