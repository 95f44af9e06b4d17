"""Stopping a training run on Ctrl-C or a kill without losing its steps.

``stop_on_signals()`` is a context manager around training: while it is entered, SIGINT and
SIGTERM only set its ``requested`` flag (and remember which signal came), and the training loop
(``Trainer.run_stage``) looks at the flag between two steps: it writes a checkpoint at the step
reached and raises ``TrainingStopped``. The first signal puts back the handler that was there
before (for SIGINT Python's, which raises ``KeyboardInterrupt``; for SIGTERM the default, which
ends the process), so a second Ctrl-C while the first is handled (a slow step, the checkpoint
being written) stops at once. On exit the previous handlers come back. Handlers can only be set
in the main thread: elsewhere the context manager installs nothing and its flag stays down.

``RunInterrupted`` is what a whole run (``run_design``, ``run_robustify``) raises instead of a
bare ``KeyboardInterrupt``: one line saying what its folder's checkpoint holds, or that there is
none (``RunState.interrupted`` writes it from what the run has reached), for the command line to
show. Both are ``KeyboardInterrupt``s, so every caller that stops on Ctrl-C stops on them too.

Hand-written on the standard library's ``signal``: what is needed is a flag, the previous
handlers put back, and the loop's own point of stopping; no library adds more than that.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """The flag a signal sets: ``requested`` and the signal (``signum``, None before one came)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None


class TrainingStopped(KeyboardInterrupt):
    """The training loop stopped on a signal (``signum``) after writing a checkpoint."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(f"stopped on {signal.Signals(signum).name}")
        self.signum = int(signum)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal: ``message`` (one line: what the checkpoint holds, or that there is
    none), ``resumable`` (a checkpoint is there to continue from) and ``signum`` (the command line
    exits with 128 + signum, the shell's code of a death by that signal: 130 for SIGINT)."""

    def __init__(self, message: str, *, resumable: bool, signum: int = signal.SIGINT):
        super().__init__(message)
        self.message = message
        self.resumable = resumable
        self.signum = int(signum)


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = SIGNALS) -> Iterator[StopRequest]:
    """While entered, ``signals`` set the yielded ``StopRequest`` instead of stopping the process
    (the module doc); the previous handlers are restored on exit. Outside the main thread nothing
    is installed, and a signal the process ignores (``SIG_IGN``: a job started in the background
    by a script) stays ignored."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    # None: a handler not installed from Python; the default is the closest we can put back
    previous = {s: signal.getsignal(s) or signal.SIG_DFL for s in signals if signal.getsignal(s) != signal.SIG_IGN}

    def handler(signum, frame) -> None:
        if stop.signum is None:
            stop.signum = signum
        signal.signal(signum, previous[signum])  # the next one of this signal acts at once

    for s in previous:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class RunState:
    """What a run has reached, for the message of its interruption (``interrupted``): its folder's
    ``checkpoint`` path (None: not known yet), its ``trainer`` (whose ``saved`` is the (stage
    index, step) of the last checkpoint it wrote or resumed from) and ``stages``; ``resume``:
    this attempt continues an earlier one (whose checkpoint is in the folder until it is read)."""

    checkpoint: Path | None = None
    trainer: Any = None
    stages: list | None = None
    resume: bool = False

    def interrupted(self, err: KeyboardInterrupt) -> RunInterrupted:
        """The ``RunInterrupted`` of this run stopped by ``err`` (a signal's, or Python's Ctrl-C)."""
        signum = getattr(err, "signum", signal.SIGINT)
        saved = None if self.trainer is None else self.trainer.saved
        if saved is None or self.stages is None:
            message, resumable = self._before_checkpoint()
            return RunInterrupted(message, resumable=resumable, signum=signum)
        index, step = saved
        n = len(self.stages)
        if index >= n:
            stages = f" (all {n} stages)" if n else ""
            return RunInterrupted(f"stopped after training: {self.checkpoint} holds the end of training{stages}; "
                                  "a resume trains nothing and runs the final evaluation again",
                                  resumable=True, signum=signum)
        spec = self.stages[index]
        where = f"step {step}/{spec.steps} of stage {index + 1}/{n} ({spec.display_name})"
        if step == 0 and index > 0:
            where += f": the end of stage {index}"
        return RunInterrupted(f"{self.checkpoint} holds {where}", resumable=True, signum=signum)

    def _before_checkpoint(self) -> tuple[str, bool]:
        """(message, resumable) of a run stopped before it wrote or read a checkpoint."""
        if not self.resume:
            where = f" in {self.checkpoint.parent}" if self.checkpoint is not None else ""
            return f"stopped before the first checkpoint: no checkpoint was written{where}, there is nothing to resume", False
        if self.checkpoint is None:
            return "stopped before training resumed: the run folder's checkpoint is untouched", True
        if self.checkpoint.is_file():
            return f"stopped before training resumed: {self.checkpoint} (the earlier attempt's) is untouched", True
        return f"stopped before training resumed: there is no {self.checkpoint} to resume from", False
