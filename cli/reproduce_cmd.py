"""``a5ocr reproduce --table 9``: train and evaluate the four rows of the paper's Table 9.

Registered in ``cli/app.py``. Bad input raises ``a5ocr.evaluation.EvaluateError`` (or
``DesignError`` / ``GlyphError`` from the design runs): one line, exit 2. A broken certificate
or an inconsistent row exits with code 3 after the tables are written.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from a5ocr.cli.progress import RichReporter, progress_bars, stage_label, stats_line
from a5ocr.errors import EvaluateError

EXIT_INCONSISTENT = 3


class _RichReporter(RichReporter):
    """Draws ``a5ocr.training.reproduce.ReproduceReporter``'s callbacks (by duck typing: the
    library module imports torch): the row being worked on, its stages and its evaluations."""

    def __init__(self, progress):
        super().__init__(progress)
        self.key = ""
        self.eval_rows: dict[tuple[str, str], int] = {}

    def row(self, key: str, what: str) -> None:
        self.key = key
        self.progress.console.print(f"[bold]{key}[/]: {what}")

    def stage(self, name: str, total: int, done: int = 0) -> None:
        self.task = self.progress.add_task(f"{self.key} {stage_label(name)}", total=total, completed=done, stats="")

    def log(self, rec: dict) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=rec["step"], stats=stats_line(rec))

    def evaluation(self, name: str, done: int, total: int) -> None:
        self.eval_progress(f"{self.key} (design run's own check)", name, done, total)

    def eval_progress(self, key: str, phase: str, done: int, total: int) -> None:
        k = (key, phase)
        if k not in self.eval_rows:
            self.eval_rows[k] = self.progress.add_task(f"{key} {phase}", total=max(total, 1), stats="")
        self.progress.update(self.eval_rows[k], completed=done, total=max(total, 1))


def reproduce(
    table: int = typer.Option(9, help="The paper's table to reproduce; only 9 (the OCR experiment) is supported."),
    preset: str = typer.Option("cpu", help="cpu (32x32, minutes to an hour on a laptop), paper (128x128 and the paper's net, for a GPU), tiny (seconds; smoke test)."),
    font: str = typer.Option("comic-neue", help="A TTF/OTF path or a shipped font (comic-neue stands in for the paper's Comic Sans MS)."),
    chars: str = typer.Option("62", help="62 (A-Z a-z 0-9, the paper's), 36, 26, 10, or an explicit string."),
    eps_a: float = typer.Option(0.1, "--eps-a", help="Attack budget (L-inf on the acquired image) in (0, 1); the paper's Table 9 uses 0.1."),
    seed: int = typer.Option(0, help="Training seed of every row; the evaluation seed is seed + 1000003, the same for all rows."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    samples_per_char: int = typer.Option(100, "--samples-per-char", help="Fresh acquisitions per character in the evaluation of every row."),
    attack: str = typer.Option("standard", help="Empirical attack: standard (AutoAttack's suite: APGD-CE, APGD-T, FAB-T, Square; then PGD restarts), fast, or none."),
    check_fraction: float = typer.Option(0.1, "--check-fraction", help="Fraction of the certified samples also attacked, as a soundness cross-check."),
    check_attack: str = typer.Option("fast", "--check-attack", help="Attack on the certified check subset: fast or standard."),
    method: Optional[List[str]] = typer.Option(None, "--method", help="Certification methods of the cascade (repeatable); default ibp then crown-ibp. IBP alone is always reported."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default renders/table9-<font>/): one run folder per trained row, eval-<row>.json, table9.md, table9.json."),
    steps: Optional[int] = typer.Option(None, help="Override the preset's stage-1 steps (classifier training); its eps warmup and ramp scale with them."),
    design_steps: Optional[int] = typer.Option(None, help="Override the preset's A5 steps (its learning-rate decay points scale with them)."),
    warmup: Optional[int] = typer.Option(None, help="Steps at eps 0 that start stage 1 (default: the preset's, scaled with --steps)."),
    ramp: Optional[int] = typer.Option(None, help="Steps of stage 1 over which eps grows from 0 to eps_A after the warmup (default: the preset's, scaled with --steps); warmup + ramp must fit in --steps."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (default: torch's choice). On a shared machine 1 can be several times faster than 2."),
) -> None:
    """Reproduce the paper's Table 9: vanilla, CROWN-IBP, A5/P and A5/PC on one evaluation protocol."""
    from a5ocr.runtime import set_threads  # local: keep a5ocr --help fast
    from a5ocr.training.reproduce import ReproduceConfig, reproduce as run_reproduce  # local: keep a5ocr --help fast

    cfg = ReproduceConfig(
        table=table, font=font, chars=chars, eps_a=eps_a, preset=preset, seed=seed, device=device,
        samples_per_char=samples_per_char, attack=attack, check_fraction=check_fraction,
        check_attack=check_attack, methods=tuple(method) if method else ("ibp", "crown-ibp"), out=str(out) if out else None,
        stage1_steps=steps, stage2_steps=design_steps, warmup=warmup, ramp=ramp,
    )
    cfg.check()
    set_threads(threads, EvaluateError)
    err = Console(stderr=True)
    with progress_bars(err, width=34) as progress:
        rec = run_reproduce(cfg, _RichReporter(progress))
    _print_table(rec, preset)
    if not rec["consistency"]["ok"]:
        for v in rec["consistency"]["violations"]:
            err.print(f"[bold red]INCONSISTENT:[/] {v}", highlight=False)
        raise SystemExit(EXIT_INCONSISTENT)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def _print_table(rec: dict, preset: str) -> None:
    """The rows beside the paper's, on stdout, and where the table files are."""
    t = Table(title=f"Table 9: {rec['font']}, {len(rec['chars'])} characters, eps_A {rec['protocol']['eps_a']:g}, "
                    f"{rec['protocol']['samples']} acquisitions, preset {preset}")
    for col in ("recipe", "clean", "attack", "certified (IBP)", "certified (cascade)", "paper clean [cert]", "train s", "eval s"):
        t.add_column(col, justify="left" if col == "recipe" else "right")
    for r in rec["rows"]:
        t.add_row(r["label"], _pct(r["clean_error"]), _pct(r["attack_error"]), _pct(r["certified_error_ibp"]),
                  _pct(r["certified_error"]), f"{_pct(r['paper']['clean_error'])} [{_pct(r['paper']['certified_error'])}]",
                  "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}", f"{r['eval_seconds']:.0f}")
    Console().print(t)
    Console().print(f"written: {Path(rec['out']) / 'table9.md'}, {Path(rec['out']) / 'table9.json'}")
