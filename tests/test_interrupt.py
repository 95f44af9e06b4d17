"""Ctrl-C (or SIGTERM) during training loses nothing: the loop stops after the step in progress
with a checkpoint of that step, the command says what the checkpoint holds (or that there is
none) and exits 130, and ``--resume`` gives exactly the uninterrupted run's result.

Every signal here is a real one (``signal.raise_signal`` in this process, ``send_signal`` to a
``design`` subprocess): what is checked is the handlers' and the loop's answer to it."""

import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import a5ocr.cli.app as app
from a5ocr import models
from a5ocr.acquisition import Acquisition
from a5ocr.glyphs import rasterize
from a5ocr.robustify import RobustifyConfig, run_robustify
from a5ocr.runio import read_jsonl
from a5ocr.training import design as design_module
from a5ocr.training.interrupt import RunInterrupted, TrainingStopped, stop_on_signals
from a5ocr.training.trainer import RobustGlyphs, Trainer, make_stage

STAGE1 = 120  # long enough that the signal, sent at the first log (step 25), lands well inside stage 1
ARGS = ["design", "--preset", "tiny", "--font", "comic-neue", "--chars", "AOo0", "--eps-a", "0.05", "--steps", str(STAGE1),
        "--design-steps", "20", "--eval-samples", "5", "--device", "cpu", "--threads", "1"]


def _main(*argv) -> int:
    """``a5ocr *argv`` through the console entry point in this process; its exit code."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["a5ocr", *map(str, argv)])
        try:
            app.main()
        except SystemExit as ex:
            return ex.code
    return 0


def _records(folder) -> list[dict]:
    """metrics.jsonl without the wall times (which differ between any two runs)."""
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in read_jsonl(folder / "metrics.jsonl")]


def _ctrl_c_before(function):
    """``function`` that first sends this process a real SIGINT (Ctrl-C) at the moment it is called."""

    def call(*a, **k):
        signal.raise_signal(signal.SIGINT)
        return function(*a, **k)

    return call


def _same_state(a, b) -> bool:
    ta, tb = (torch.load(f / "checkpoint.pt", weights_only=True) for f in (a, b))
    return all(torch.equal(ta[part][k], tb[part][k]) for part in ("model", "glyphs") for k in ta[part])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of ARGS (seed 0): its folder and summary."""
    out = tmp_path_factory.mktemp("interrupt") / "whole"
    assert _main(*ARGS, "--out", out) == 0
    return out, json.loads((out / "summary.json").read_text())


# ------------------------------------------------------------------------- the handlers
def test_a_signal_sets_the_flag_a_second_one_acts_at_once_and_the_handlers_come_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with stop_on_signals() as stop:
        assert not stop.requested
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]  # a second SIGTERM would end the process
        signal.raise_signal(signal.SIGINT)  # the first SIGINT: the flag stays SIGTERM's, no exception
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # the second Ctrl-C: Python's own handler again
    assert {s: signal.getsignal(s) for s in before} == before


def test_handlers_are_left_alone_outside_the_main_thread_and_when_ignored():
    seen = {}

    def worker():
        with stop_on_signals() as stop:
            seen["handler"] = signal.getsignal(signal.SIGINT)
            seen["requested"] = stop.requested

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"handler": signal.default_int_handler, "requested": False}
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_on_signals():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # an ignored Ctrl-C stays ignored
    finally:
        signal.signal(signal.SIGINT, previous)


# ------------------------------------------------------------------------- the loop
def test_the_loop_stops_after_the_step_in_progress_with_a_checkpoint_of_it(tmp_path):
    g = rasterize("comic-neue", "AOo0", 16)
    torch.manual_seed(0)
    trainer = Trainer(models.build("tiny", 16, 4), RobustGlyphs(g.images, 0.5), Acquisition(16), seed=0,
                      device=torch.device("cpu"))
    spec = make_stage("p", steps=10, eps_a=0.05, train_bounds="ibp")
    trainer.start_stage(spec)
    before = signal.getsignal(signal.SIGTERM)
    real, written = trainer.train_step, []

    def step_then_term(s):
        if trainer.step == 3:
            signal.raise_signal(signal.SIGTERM)  # arrives during step 4
        return real(s)

    trainer.train_step = step_then_term
    with pytest.raises(TrainingStopped) as stopped:
        trainer.run_stage(spec, on_checkpoint=lambda: (written.append(trainer.step), trainer.checkpoint(tmp_path / "c.pt")),
                          checkpoint_seconds=1e9)
    assert stopped.value.signum == signal.SIGTERM and written == [4] and trainer.saved == (0, 4)
    assert torch.load(tmp_path / "c.pt", weights_only=True)["step"] == 4
    assert signal.getsignal(signal.SIGTERM) == before  # the stage's handler is gone


# ------------------------------------------------------------------------- a5ocr design
def test_ctrl_c_in_a_design_subprocess_checkpoints_the_step_and_resume_equals_the_whole_run(tmp_path, reference):
    whole, summary = reference
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "a5ocr.cli.app", *ARGS, "--out", str(cut)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ((cut / "metrics.jsonl").is_file() and (cut / "metrics.jsonl").read_text().endswith("\n")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-2000:]
    said = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(said) == 1 and "Traceback" not in err, err[-2000:]
    state = torch.load(cut / "checkpoint.pt", weights_only=True)
    step = state["step"]
    assert state["stage_index"] == 0 and 25 <= step < STAGE1
    assert f"checkpoint.pt holds step {step}/{STAGE1} of stage 1/2 (crown-ibp:ibp); run the same command with " \
           "--resume to continue from it" in said[0]
    assert _records(cut)[-1]["step"] <= step and not (cut / "summary.json").exists()

    assert _main(*ARGS, "--out", cut, "--resume") == 0
    resumed = json.loads((cut / "summary.json").read_text())
    assert resumed["baseline"] == summary["baseline"] and resumed["final"] == summary["final"]
    assert _same_state(cut, whole)
    assert _records(cut) == _records(whole)  # the log reads as one run, with the same figures


def test_ctrl_c_during_the_final_evaluation_says_a_resume_only_evaluates(tmp_path, reference, monkeypatch, capsys):
    whole, summary = reference
    cut = tmp_path / "evaluating"
    shutil.copytree(whole, cut)
    (cut / "summary.json").unlink()  # what a run stopped in its evaluation leaves
    real = design_module.evaluate
    monkeypatch.setattr(design_module, "evaluate", _ctrl_c_before(real))
    assert _main(*ARGS, "--out", cut, "--resume") == 130
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert "stopped after training" in said and "holds the end of training (all 2 stages)" in said
    assert "a resume trains nothing and runs the final evaluation again" in said
    monkeypatch.setattr(design_module, "evaluate", real)
    assert _main(*ARGS, "--out", cut, "--resume") == 0
    again = json.loads((cut / "summary.json").read_text())
    assert again["baseline"] == summary["baseline"] and again["final"] == summary["final"]
    assert _records(cut) == _records(whole)


def test_ctrl_c_before_the_first_checkpoint_says_there_is_none(tmp_path, monkeypatch, capsys):
    real = design_module.rasterize
    monkeypatch.setattr(design_module, "rasterize", _ctrl_c_before(real))
    assert _main(*ARGS, "--out", tmp_path / "early") == 130
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert "stopped before the first checkpoint: no checkpoint was written" in said
    assert "there is nothing to resume; run the command again without --resume to start over" in said
    monkeypatch.setattr(design_module, "rasterize", real)
    assert _main(*ARGS, "--out", tmp_path / "early", "--resume") == 2  # as said: nothing to resume
    assert "nothing to resume" in capsys.readouterr().err


# ------------------------------------------------------------------------- a5ocr robustify
def test_robustify_stops_with_a_checkpoint_and_resumes_to_the_same_result(tmp_path, monkeypatch):
    base = dict(recipe="r", font="comic-neue", chars="AOo0", eps_a=0.05, eps_d=0.2, preset="tiny", r_steps=12,
                samples_per_char=2, certify_methods=("ibp",), device="cpu")
    whole = run_robustify(RobustifyConfig(**base, out=str(tmp_path / "whole")))
    real = Trainer.train_step

    def ctrl_c_in_step_5_of_r(self, spec):
        if spec.recipe == "r" and self.step == 4:
            signal.raise_signal(signal.SIGINT)
        return real(self, spec)

    monkeypatch.setattr(Trainer, "train_step", ctrl_c_in_step_5_of_r)
    cfg = RobustifyConfig(**base, out=str(tmp_path / "cut"))
    with pytest.raises(RunInterrupted, match=r"checkpoint.pt holds step 5/12 of stage 2/2 \(r\)") as stopped:
        run_robustify(cfg)
    assert stopped.value.resumable and stopped.value.signum == signal.SIGINT
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 5
    monkeypatch.setattr(Trainer, "train_step", real)
    resumed = run_robustify(cfg, resume=True)
    assert resumed["final"] == whole["final"] and resumed["baseline"] == whole["baseline"]
    assert _records(tmp_path / "cut") == _records(tmp_path / "whole")
