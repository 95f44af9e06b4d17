"""``a5ocr design``: parse the options, run the design, print its summary table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from a5ocr.cli.progress import RichReporter, progress_bars
from a5ocr.errors import DesignError

out_console = Console()


def design(
    font: str = typer.Option("comic-neue", help="A TTF/OTF path, or a shipped font: comic-neue, comic-neue-bold, dejavu-sans, dejavu-sans-mono, ocr-b."),
    chars: str = typer.Option("62", help="62 (A-Z a-z 0-9), 36, 26, 10, or an explicit string of characters."),
    eps_a: float = typer.Option(0.1, "--eps-a", help="Attack budget: L-inf size of any change to the scanned image, in (0, 1)."),
    eps_print: float = typer.Option(0.0, "--eps-print", help="Also train the A5 stage against the physical attack on the print: L-inf change of the glyph's ink in [0, 1), jointly with --eps-a (0: the image attack alone)."),
    eps_d: float = typer.Option(0.5, "--eps-d", help="Glyph change budget: L-inf size of the defensive change of the ink, in (0, 1]."),
    recipe: str = typer.Option("pc", help="pc = A5/PC (glyphs and classifier trained together); p = A5/P (glyphs only, classifier fixed)."),
    classifier: Optional[Path] = typer.Option(None, help="Legacy classifier (safetensors from a5ocr) for A5/P; without it a CROWN-IBP classifier is trained first."),
    preset: str = typer.Option("cpu", help="cpu (32x32, minutes on a laptop), paper (128x128 and the paper's net, for a GPU), tiny (seconds, smoke test)."),
    resolution: Optional[int] = typer.Option(None, help="Canvas size in pixels (default from the preset)."),
    print_scale: Optional[int] = typer.Option(None, "--print-scale", help="Design the glyphs S times finer than the sensor (the print; the classifier still sees --resolution px): default from the preset (cpu 4: a 128 px print for its 32 px sensor; paper and tiny 1)."),
    defence: Optional[str] = typer.Option(None, "--defence", help="The glyph change: pixel (one value per print pixel, the paper's), coarse:F (on a grid F times coarser than the print, upsampled smoothly) or outline:F (a monochrome glyph whose edges move by at most eps-d sensor pixels, smoothly on that grid: what a font can hold); default from the preset (cpu outline:4, paper and tiny pixel)."),
    defence_tv: float = typer.Option(0.0, "--defence-tv", help="Weight of a total-variation penalty on the glyph change (for outline: on the edge offset along the edges); unset: the preset's (cpu 0.3 with its outline:4; --defence alone: none)."),
    ink: str = typer.Option("gray", help="gray (any ink level) or binary (each pixel ink or paper: printable exactly)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of the training draws; the same seed on the same machine gives the same result."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default renders/<font>-<chars>-<eps>/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out from its last checkpoint."),
    steps: Optional[int] = typer.Option(None, help="Override the preset's stage-1 steps (the CROWN-IBP classifier); its eps warmup and ramp scale with them."),
    design_steps: Optional[int] = typer.Option(None, help="Override the preset's A5 steps (its learning-rate decay points scale with them)."),
    warmup: Optional[int] = typer.Option(None, help="Steps at eps 0 that start stage 1 (default: the preset's, scaled with --steps)."),
    ramp: Optional[int] = typer.Option(None, help="Steps of stage 1 over which eps grows from 0 to eps_A after the warmup (default: the preset's, scaled with --steps); warmup + ramp must fit in --steps."),
    eval_samples: int = typer.Option(100, help="Fresh acquisitions per character for the final evaluation."),
    train_bounds: Optional[str] = typer.Option(None, help="Training bounds: mixed (the paper's f*CROWN-IBP + (1-f)*IBP) or a bound method (ibp, crown-ibp, ...); default from the preset."),
    crown_k: Optional[int] = typer.Option(None, help="CROWN-IBP (in mixed training) on the k hardest margins by IBP only, IBP on the rest (a few times cheaper, sound); default: every margin."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (default: torch's choice)."),
) -> None:
    """Design certifiably robust glyphs for a font (A5/PC by default) and evaluate them.

    On several processes: torchrun --nproc-per-node N -m a5ocr.cli design ... (gloo on the CPU,
    NCCL on GPUs; copies x characters must divide by N; resume with the same N)."""
    from a5ocr.runtime import set_threads  # local: keep a5ocr --help fast (torch)
    from a5ocr.training.design import DesignConfig, defence_option, run_design  # local: keep a5ocr --help fast
    from a5ocr.training.distributed import launched_rank  # local: keep a5ocr --help fast (torch)

    set_threads(threads, DesignError)
    cfg = DesignConfig(
        font=font, chars=chars, eps_a=eps_a, eps_d=eps_d, recipe=recipe, eps_print=eps_print,
        classifier=str(classifier) if classifier else None, preset=preset, resolution=resolution,
        ink=ink, device=device, seed=seed, out=str(out) if out else None,
        stage1_steps=steps, stage2_steps=design_steps, warmup=warmup, ramp=ramp, samples_per_char=eval_samples, train_bounds=train_bounds,
        crown_k=crown_k, print_scale=print_scale, parameterisation=defence_option(defence, defence_tv, preset),
    )
    if launched_rank() != 0:  # torchrun's other processes: they train, rank 0 shows and writes
        run_design(cfg, resume=resume)
        return
    with progress_bars() as progress:
        summary = run_design(cfg, resume=resume, reporter=RichReporter(progress))
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    table = Table(title=f"{summary['family']}  {len(summary['chars'])} characters  eps_A {summary['eps_a']:g}  ({summary['samples']} acquisitions, certified by {summary['certify_method']})")
    table.add_column("")
    table.add_column("clean error", justify="right")
    table.add_column("certified error", justify="right")
    printed = summary.get("eps_print") or 0
    if printed:
        table.add_column(f"certified error, + eps_print {printed:g}", justify="right")
    label = "A5/PC" if summary["recipe"] == "pc" else "A5/P"
    for name, key in (("classifier before A5 (original glyphs)", "baseline"), (f"{label} (robust glyphs)", "final")):
        row = [name, f"{summary[key]['clean_error']:.2%}", f"{summary[key]['certified_error']:.2%}"]
        table.add_row(*row, *([f"{summary[key]['print']['certified_error']:.2%}"] if printed else []))
    out_console.print(table)
    out_console.print(f"run folder: {summary.get('out', '')}  ({summary['wall_seconds']:.0f} s)")
