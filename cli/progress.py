"""Progress shown by the commands that compute (design, robustify, reproduce, evaluate): on a
terminal, rich bars (one per training stage with live eps, loss, clean and certified error, one
per evaluation); otherwise (``a5ocr design ... > run.log``, CI, nohup) timestamped plain lines.

``progress_bars()`` makes the choice each time a command starts:

- stdout is not a terminal (``> run.log``, ``| tee``): plain lines on **stdout**, so they land in
  the file with the results;
- else stderr (or the ``out`` console given) is not a terminal (``2> err.log``): plain lines there;
- else: rich bars on stderr (or ``out``).

The plain display (``PlainProgress``) answers the part of rich's ``Progress`` the commands use
(``add_task``, ``update``, ``console.print``, a context manager), so ``RichReporter`` (and
``reproduce``'s subclass of it) draws the callbacks of ``a5ocr.runtime.Reporter`` into either
display unchanged. It prints one line when a stage (a task) starts, one when it ends (or stops
on an error or Ctrl-C), and one line at most every ``A5OCR_PROGRESS_SECONDS`` seconds (default
30; 0: every update) with the stage, its step, the live figures (eps, loss, batch clean and
certified error), the elapsed time and an estimate of the time left.

This module imports no torch, so ``a5ocr --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from a5ocr.errors import A5Error

# stderr: progress and errors; the results go to stdout.
console = Console(stderr=True)

# The --threads help of every command that computes (beside the progress: what those commands share).
THREADS_HELP = ("Torch CPU threads, at least 1 (default: torch's own choice, the number of cores: best on an idle "
                "machine; on a machine shared with other work, fewer threads can be several times faster).")

SECONDS_ENV = "A5OCR_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0

STAGE_LABELS = {"crown-ibp": "stage 1: CROWN-IBP classifier", "p": "A5/P: glyphs", "pc": "A5/PC: glyphs + classifier",
                "vanilla": "vanilla classifier", "r": "A5/R: robustifier", "rc": "A5/RC: robustifier + classifier"}


def stage_label(name: str) -> str:
    """The display label of a stage name (``StageSpec.display_name``): "crown-ibp:ibp", a
    stage 1 trained with IBP bounds alone, reads "stage 1: IBP-trained classifier"."""
    if name.startswith("crown-ibp:"):
        return f"stage 1: {name.split(':', 1)[1].upper()}-trained classifier"
    return STAGE_LABELS.get(name, name)


def stats_line(rec: dict) -> str:
    """A metrics record as the bar's live text (certified error "-" while eps is 0)."""
    cert = rec["certified_error"]
    cert_s = "  -  " if cert != cert else f"{cert:5.1%}"
    return f"eps {rec['eps']:.3f}  loss {rec['loss']:.3f}  clean {rec['clean_error']:5.1%}  cert {cert_s}"


def progress_seconds() -> float:
    """Seconds between two plain progress lines: ``A5OCR_PROGRESS_SECONDS`` (default 30)."""
    raw = os.environ.get(SECONDS_ENV, "").strip()
    if not raw:
        return DEFAULT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise A5Error(f"{SECONDS_ENV} must be a number of seconds >= 0, got {raw!r}")
    return value


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def plain_stream(out: Console | None = None) -> TextIO | None:
    """Where plain progress lines go, or None when rich bars apply (the module doc's rule)."""
    if not _is_terminal(sys.stdout):
        return sys.stdout
    target = (out or console).file
    return None if _is_terminal(target) else target


def progress_bars(out: Console | None = None, width: int = 30) -> "Progress | PlainProgress":
    """The progress display of a command: rich bars (description column ``width`` wide) on ``out``
    (default stderr) on a terminal, else a ``PlainProgress`` (the module doc)."""
    seconds = progress_seconds()  # a bad value is refused on a terminal too
    stream = plain_stream(out)
    if stream is not None:
        return PlainProgress(stream, seconds)
    return Progress(
        TextColumn(f"{{task.description:<{width}}}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=out or console, transient=False,
    )


def duration(seconds: float) -> str:
    """Seconds as ``42s``, ``3m05s`` or ``1h02m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class PlainConsole:
    """``console.print`` of the plain display: each text line stamped with the local time, on a
    stream that is not a terminal (no colours, markup rendered as text, no wrapping)."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.time):
        self.file = stream
        self.clock = clock
        self._console = Console(file=stream, color_system=None, force_terminal=False, highlight=False, soft_wrap=True)

    def stamp(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.clock()))

    def print(self, *objects, **kwargs) -> None:
        if all(isinstance(o, str) for o in objects):
            kwargs.setdefault("highlight", False)
            self._console.print(self.stamp(), *objects, **kwargs)
        else:  # a table or other renderable: as rich renders it, unstamped
            self._console.print(*objects, **kwargs)

    def line(self, text: str) -> None:
        """One stamped line, taken literally (no markup)."""
        self._console.print(self.stamp(), text, markup=False, highlight=False)


class _Task:
    def __init__(self, description: str, total: float | None, completed: float, fields: dict, now: float):
        self.description, self.total, self.completed, self.fields = description, total, completed, fields
        self.start, self.start_completed, self.finished = now, completed, False

    def is_done(self) -> bool:
        return self.total is not None and self.completed >= self.total

    def status(self, now: float) -> str:
        """``<description>  step/total (pct)  <stats>  elapsed ...  ETA ...``."""
        parts = [self.description]
        done = f"{self.completed:g}"
        if self.fields.get("stats"):  # a training stage: the count is its step
            done = f"step {done}"
        if self.total:
            parts.append(f"{done}/{self.total:g} ({self.completed / self.total:.0%})")
        else:
            parts.append(done)
        if self.fields.get("stats"):
            parts.append(" ".join(str(self.fields["stats"]).split()))  # the bars' column padding dropped
        elapsed = now - self.start
        parts.append(f"elapsed {duration(elapsed)}")
        moved = self.completed - self.start_completed
        if self.total and moved > 0 and not self.is_done():
            parts.append(f"ETA {duration(elapsed / moved * (self.total - self.completed))}")
        return "  ".join(parts)


class PlainProgress:
    """The plain stand-in for rich's ``Progress`` (the module doc): a line per task start and end,
    and one every ``seconds`` (default ``progress_seconds()``) for the task being updated.

    Hand-written rather than rich's own non-terminal mode: rich's ``Live`` display prints nothing
    on a non-terminal until it stops, which is the silence this class exists to break."""

    def __init__(self, stream: TextIO, seconds: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.console = PlainConsole(stream)
        self.seconds = progress_seconds() if seconds is None else seconds
        self.clock = clock
        self.tasks: dict[int, _Task] = {}
        self._last_line = clock()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        now = self.clock()
        for task in self.tasks.values():
            if not task.finished:
                word = "stopped" if exc_type is not None else "ended"
                self.console.line(f"{word}  {task.status(now)}")
                task.finished = True
        return False

    def add_task(self, description: str, total: float | None = 100.0, completed: float = 0, visible: bool = True,
                 **fields) -> int:
        now = self.clock()
        task_id = len(self.tasks)
        task = self.tasks[task_id] = _Task(description, total, completed, fields, now)
        size = f"{total:g}" if total is not None else "?"
        resumed = f", from {completed:g}" if completed else ""
        self.console.line(f"start  {description}  ({size}{resumed})")
        self._last_line = now
        if task.is_done():
            self._finish(task, now)
        return task_id

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, visible: bool | None = None,
               refresh: bool = False, **fields) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        if description is not None:
            task.description = description
        task.fields.update(fields)
        if task.finished:
            return
        now = self.clock()
        if task.is_done():
            self._finish(task, now)
        elif now - self._last_line >= self.seconds:
            self.console.line(task.status(now))
            self._last_line = now

    def _finish(self, task: _Task, now: float) -> None:
        task.finished = True
        self.console.line(f"done   {task.status(now)}")
        self._last_line = now


class RichReporter:
    """Draws a run's progress (the callbacks of ``a5ocr.runtime.Reporter``) into the display of
    ``progress_bars()``, rich bars or plain lines: one task per stage with live eps, loss, clean
    and certified error, one per evaluation, messages as lines."""

    def __init__(self, progress: "Progress | PlainProgress"):
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
