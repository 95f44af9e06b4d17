"""Progress drawing shared by the commands that train (design, robustify, reproduce): rich bars,
one per training stage with live eps, loss, clean and certified error, and one per evaluation.

``RichReporter`` draws the callbacks of ``a5ocr.runtime.Reporter`` (by duck typing: this module
imports no torch, so ``a5ocr --help`` stays fast); ``progress_bars`` is the rich ``Progress``
they draw into, on stderr.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# stderr: progress and errors; the results go to stdout.
console = Console(stderr=True)

STAGE_LABELS = {"crown-ibp": "stage 1: CROWN-IBP classifier", "p": "A5/P: glyphs", "pc": "A5/PC: glyphs + classifier",
                "vanilla": "vanilla classifier", "r": "A5/R: robustifier", "rc": "A5/RC: robustifier + classifier"}


def stage_label(name: str) -> str:
    return STAGE_LABELS.get(name, name)


def stats_line(rec: dict) -> str:
    """A metrics record as the bar's live text (certified error "-" while eps is 0)."""
    cert = rec["certified_error"]
    cert_s = "  -  " if cert != cert else f"{cert:5.1%}"
    return f"eps {rec['eps']:.3f}  loss {rec['loss']:.3f}  clean {rec['clean_error']:5.1%}  cert {cert_s}"


def progress_bars(out: Console | None = None, width: int = 30) -> Progress:
    """The rich progress display of a run (description column ``width`` wide), on ``out`` (stderr)."""
    return Progress(
        TextColumn(f"{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=out or console, transient=False,
    )


class RichReporter:
    """Draws a run's progress: one bar per stage with live eps, loss, clean and certified error."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None
        self.eval_tasks: dict[str, int] = {}

    def stage(self, name: str, total: int, done: int = 0) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=True)
        self.task = self.progress.add_task(stage_label(name), total=total, completed=done, stats="")

    def log(self, rec: dict) -> None:
        self.progress.update(self.task, completed=rec["step"], stats=stats_line(rec))

    def evaluation(self, name: str, done: int, total: int) -> None:
        if name not in self.eval_tasks:
            self.eval_tasks[name] = self.progress.add_task(f"evaluate {name}", total=total, stats="")
        self.progress.update(self.eval_tasks[name], completed=done)

    def message(self, text: str) -> None:
        self.progress.console.print(text)
