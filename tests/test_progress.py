"""Progress of the commands that compute (issue 17): rich bars on a terminal, timestamped plain
lines when the output goes to a file (``a5ocr design ... > run.log`` used to print nothing until
the end), on stdout when stdout is redirected, on stderr when only stderr is; ``--threads``.

The plain display is checked line by line with a hand-driven clock; the real console script is
run once with stdout and stderr redirected to files, as a user's ``> run.log`` does (the
session's ``design_process``, conftest, whose run the CLI tests also check)."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest
from rich.progress import Progress

from a5ocr.cli import progress as pr
from a5ocr.errors import A5Error

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class _Terminal(io.StringIO):
    """A stream that says it is a terminal (what ``isatty`` answers is all the choice looks at)."""

    def isatty(self) -> bool:
        return True


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


# --------------------------------------------------------------------------- the choice


def test_rich_bars_on_a_terminal_plain_lines_on_the_redirected_stream(monkeypatch):
    out, err = _Terminal(), _Terminal()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert pr.plain_stream() is None
    assert isinstance(pr.progress_bars(), Progress)
    # stdout redirected (> run.log): plain lines on stdout, even with a terminal on stderr
    log = io.StringIO()
    monkeypatch.setattr(sys, "stdout", log)
    assert pr.plain_stream() is log
    display = pr.progress_bars()
    assert isinstance(display, pr.PlainProgress) and display.console.file is log
    # only stderr redirected (2> err.log): plain lines on stderr
    errlog = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", errlog)
    assert pr.plain_stream() is errlog
    # a console given to progress_bars (reproduce, evaluate) decides in place of stderr
    from rich.console import Console

    assert pr.plain_stream(Console(file=_Terminal())) is None
    given = io.StringIO()
    assert pr.plain_stream(Console(file=given)) is given


def test_progress_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv(pr.SECONDS_ENV, raising=False)
    assert pr.progress_seconds() == 30.0
    monkeypatch.setenv(pr.SECONDS_ENV, "2.5")
    assert pr.progress_seconds() == 2.5
    for bad in ("abc", "-1", "nan", "inf"):
        monkeypatch.setenv(pr.SECONDS_ENV, bad)
        with pytest.raises(A5Error, match=f"{pr.SECONDS_ENV} must be a number of seconds >= 0"):
            pr.progress_seconds()


# --------------------------------------------------------------------------- the plain lines


def test_plain_progress_prints_start_periodic_and_end_lines():
    clock, stream = _Clock(), io.StringIO()
    display = pr.PlainProgress(stream, seconds=30, clock=clock)
    display.console.clock = lambda: 0.0  # the stamps: a fixed local time
    rep = pr.RichReporter(display)
    rep.stage("crown-ibp", 100)
    assert len(_lines(stream)) == 1 and "start  stage 1: CROWN-IBP classifier  (100)" in _lines(stream)[0]
    rec = {"step": 25, "eps": 0.05, "loss": 1.5, "clean_error": 0.2, "certified_error": 0.5}
    clock.t += 10
    rep.log(rec)
    assert len(_lines(stream)) == 1  # 10 s after the last line: nothing yet
    clock.t += 20
    rep.log({**rec, "step": 50})
    last = _lines(stream)[-1]
    assert len(_lines(stream)) == 2
    assert "stage 1: CROWN-IBP classifier  step 50/100 (50%)" in last
    assert "eps 0.050 loss 1.500 clean 20.0% cert 50.0%" in last
    assert "elapsed 30s  ETA 30s" in last  # 50 steps in 30 s, 50 to go
    clock.t += 5
    rep.log({**rec, "step": 100})  # the stage ends: a line at once
    assert "done   stage 1: CROWN-IBP classifier  step 100/100 (100%)" in _lines(stream)[-1]
    assert "elapsed 35s" in _lines(stream)[-1] and "ETA" not in _lines(stream)[-1]
    rep.message("resumed [bold]run[/] at stage 2")  # markup rendered as text
    assert _lines(stream)[-1].endswith(" resumed run at stage 2")
    rep.evaluation("final", 0, 8)
    rep.evaluation("final", 8, 8)
    assert [line.split("  ")[0][20:] for line in _lines(stream)[-2:]] == ["start", "done"]
    assert all(STAMP.match(line) for line in _lines(stream))


def test_plain_progress_resumed_stage_eta_and_stop_on_error():
    clock, stream = _Clock(), io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        with pr.PlainProgress(stream, seconds=0, clock=clock) as display:
            rep = pr.RichReporter(display)
            rep.stage("pc", 1000, done=400)
            assert "start  A5/PC: glyphs + classifier  (1000, from 400)" in _lines(stream)[0]
            clock.t += 60
            rep.log({"step": 500, "eps": 0.1, "loss": 0.3, "clean_error": 0.0, "certified_error": float("nan")})
            # 100 steps since the resume in 60 s, 500 to go: 5 minutes; the certified error "-" (eps 0)
            assert "step 500/1000 (50%)" in _lines(stream)[-1] and "cert -  elapsed" in _lines(stream)[-1]
            assert "ETA 5m00s" in _lines(stream)[-1]
            raise KeyboardInterrupt
    assert "stopped  A5/PC: glyphs + classifier  step 500/1000" in _lines(stream)[-1]


def test_reproduce_reporter_draws_into_the_plain_display():
    """``reproduce``'s reporter (a subclass of ``RichReporter`` that adds its own tasks) needs no
    change: the plain display answers the same calls."""
    from a5ocr.cli.reproduce_cmd import _RichReporter

    stream = io.StringIO()
    rep = _RichReporter(pr.PlainProgress(stream, seconds=30, clock=_Clock()))
    rep.row("A5/PC", "training")
    rep.stage("pc", 20)
    rep.log({"step": 20, "eps": 0.1, "loss": 0.3, "clean_error": 0.0, "certified_error": 0.1})
    rep.eval_progress("A5/PC", "certify", 0, 10)
    rep.eval_progress("A5/PC", "certify", 10, 10)
    text = [line[20:] for line in _lines(stream)]
    assert text == ["A5/PC: training", "start  A5/PC A5/PC: glyphs + classifier  (20)",
                    "done   A5/PC A5/PC: glyphs + classifier  step 20/20 (100%)  eps 0.100 loss 0.300 clean 0.0% cert 10.0%  elapsed 0s",
                    "start  A5/PC certify  (10)", "done   A5/PC certify  10/10 (100%)  elapsed 0s"]


# --------------------------------------------------------------------------- the real commands


@pytest.fixture(scope="module")
def piped_design(design_process):
    """``a5ocr design --preset tiny ... > run.log 2> err.log`` with a progress line at every update
    (the session's one design process, conftest; 4 characters)."""
    return design_process


def test_design_redirected_to_a_file_writes_progress_lines(piped_design):
    code, tmp = piped_design
    log, err = (tmp / "run.log").read_text(), (tmp / "err.log").read_text()
    assert code == 0, err[-2000:]
    lines = log.splitlines()
    progress = [line for line in lines if STAMP.match(line)]
    body = [line[20:] for line in progress]
    for stage in ("stage 1: IBP-trained classifier", "A5/PC: glyphs + classifier", "evaluate baseline", "evaluate final"):
        assert any(b.startswith(f"start  {stage}") for b in body), (stage, log)
        assert any(b.startswith(f"done   {stage}") for b in body), (stage, log)
    periodic = [b for b in body if b.startswith("stage 1: IBP-trained classifier  step ")]
    assert periodic and all(k in periodic[0] for k in ("eps ", "loss ", "clean ", "cert ", "elapsed ", "ETA "))
    assert "\x1b" not in log  # no terminal control codes in the file
    assert "certified error" in log and "run folder:" in log  # the results beside the progress
    assert lines.index(progress[-1]) < [i for i, line in enumerate(lines) if "certified error" in line][0]
    assert not any(STAMP.match(line) for line in err.splitlines())  # stdout redirected: progress there only


def test_evaluate_prints_plain_progress_and_checks_threads(piped_design, a5ocr_main, monkeypatch, tmp_path):
    _, tmp = piped_design
    monkeypatch.setenv(pr.SECONDS_ENV, "0")
    js = tmp_path / "e.json"
    code, out, err = a5ocr_main("evaluate", tmp / "run", "--samples-per-char", "2", "--attack", "none",
                                "--radius-steps", "0", "--device", "cpu", "--threads", "1", "--json", js)
    assert code == 0, err
    body = [line[20:] for line in out.splitlines() if STAMP.match(line)]
    assert body[0] == "start  certify + radius  (8)" and body[-1].startswith("done   certify + radius  8/8 (100%)")
    assert json.loads(js.read_text())["samples"] == 8  # 4 characters x 2
    for bad in ("0", "-3"):
        code, out, err = a5ocr_main("evaluate", tmp / "run", "--threads", bad)
        assert code == 2 and err.strip() == "error: --threads must be at least 1"


def test_threads_help_states_the_default(a5ocr_main):
    for command in ("evaluate", "scan"):
        code, out, _ = a5ocr_main(command, "--help")
        assert code == 0 and "--threads" in out
        assert "default: torch's own choice, the number of cores" in " ".join(out.replace("│", " ").split())
