"""The restructure of the library changed no number and no file format.

``fixtures/premove/`` was written by the code *before* the move into one package per stage
(``make_golden.py``, run once with that code): a tiny design run folder, a tiny A5/R robustify run
folder, and ``golden.json`` with the summaries of ``design``, ``robustify`` and ``evaluate`` (of
both runs) for those settings. Here the current code (1) loads the old run folders and (2) runs
the same settings again on this machine: the summaries must be identical, except for what names
the machine, the folders or the clock.
"""

import json
import math
import shutil
from pathlib import Path

import pytest

from a5ocr.evaluation import evaluate_run
from a5ocr.evaluation.attacks import suite
from a5ocr.runs import load_run
from a5ocr.models import load_classifier
from a5ocr.robustify import RobustifyConfig, evaluate_robustify_run, load_robustifier, run_robustify
from a5ocr.training.design import DesignConfig, run_design

FIXTURE = Path(__file__).parent / "fixtures" / "premove"
GOLDEN = json.loads((FIXTURE / "golden.json").read_text())
DESIGN = dict(font="comic-neue", chars="AOo0", preset="tiny", eps_a=0.02, samples_per_char=10, device="cpu", seed=0,
              stage1_steps=150, stage2_steps=60, warmup=5, ramp=10)  # the fixture's schedule (--steps now scales it)
ROBUSTIFY = dict(recipe="r", eps_a=0.02, eps_d=0.2, preset="tiny", r_steps=20, samples_per_char=10, device="cpu")
# Defaults changed since (the camera's perspective rate 0.5 -> 0.99): the replays pin the old
# settings from the fixture's own config.json, so they measure the code, not the new defaults.
OLD_ACQUISITION = json.loads((FIXTURE / "design" / "config.json").read_text())["config"]["acquisition"]
DESIGN["acquisition"] = ROBUSTIFY["acquisition"] = OLD_ACQUISITION
# What names the machine, a folder or the clock: not part of the result.
VOLATILE = {"wall_seconds", "seconds", "out", "font", "run", "data", "classifier", "classifier_before", "histogram"}
# The standard attack as golden.json's code ran it, before FAB-T and Square joined it (issue 13).
# The A5/R replay attacks 4 samples with it (the design replays only run the fast check); the
# current suite breaks them with the same stages, and its per-stage counts add "fab-t": 0 and
# "square": 0, keys the golden record does not have.
PREMOVE_STANDARD = [
    ("apgd-ce", "apgd", dict(loss="ce", steps=100, restarts=1)),
    ("apgd-t", "apgd-t", dict(n_targets=9, steps=100, restarts=1)),
    ("pgd-ce", "pgd", dict(loss="ce", steps=100, restarts=5)),
]


def _stable(d):
    if isinstance(d, dict):
        return {k: _stable(v) for k, v in d.items() if k not in VOLATILE}
    if isinstance(d, (list, tuple)):
        return [_stable(v) for v in d]
    if isinstance(d, float) and not math.isfinite(d):
        return str(d)
    return d


# Summary keys added since the move (what trained the baseline classifier), absent from the golden files.
ADDED = {"design": {"train_bounds", "crown_k", "stage1", "eps_print", "print_scale", "parameterisation", "change"}}


def _same(now: dict, before: dict, added: set[str] = frozenset()) -> None:
    a, b = _stable(json.loads(json.dumps(now, default=str))), _stable(before)
    assert added.isdisjoint(b) and added <= set(a)
    assert {k: v for k, v in a.items() if k not in added} == b


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("premove")
    design = run_design(DesignConfig(**DESIGN, out=str(root / "design")))
    rob = run_robustify(RobustifyConfig(**ROBUSTIFY, run=str(root / "design"), out=str(root / "robustify")))
    return root, design, rob


def test_an_old_design_run_folder_loads_and_evaluates(tmp_path):
    run_dir = tmp_path / "design"
    shutil.copytree(FIXTURE / "design", run_dir)
    run = load_run(run_dir)
    assert run.chars == "AOo0" and run.resolution == 16 and run.robust.shape == (4, 16, 16)
    assert run.eps_a == 0.02 and run.eval_seed == 1_000_003
    model, meta = load_classifier(run_dir / "baseline_classifier.safetensors")
    assert meta["arch"] == "tiny" and meta["chars"] == "AOo0"
    # the old folder, evaluated by the current code, gives the old figures
    _same(evaluate_run(run, samples_per_char=10, device="cpu").report(), GOLDEN["evaluate"])


def test_an_old_robustify_run_folder_loads(tmp_path):
    r = load_robustifier(FIXTURE / "robustify" / "robustifier.safetensors")
    assert (r.channels, r.eps_d) == (3, 0.2)
    rec = json.loads((FIXTURE / "robustify" / "config.json").read_text())
    cfg = RobustifyConfig(**{**rec["config"], "certify_methods": tuple(rec["config"]["certify_methods"])}).resolved()
    assert cfg.recipe == "r" and cfg.eps_a == 0.02


def test_design_summary_is_unchanged_by_the_move(runs):
    _, design, _ = runs
    _same(design, GOLDEN["design"], ADDED["design"])


def test_robustify_summary_is_unchanged_by_the_move(runs):
    _, _, rob = runs
    _same(rob, GOLDEN["robustify"])


def test_evaluate_reports_are_unchanged_by_the_move(runs, monkeypatch):
    root, _, _ = runs
    _same(evaluate_run(load_run(root / "design"), samples_per_char=10, device="cpu").report(), GOLDEN["evaluate"])
    monkeypatch.setitem(suite.STRENGTHS, "standard", PREMOVE_STANDARD)
    _same(evaluate_robustify_run(root / "robustify", samples_per_char=10, device="cpu").report(),
          GOLDEN["evaluate_robustify"])


def test_the_comparison_can_fail():
    changed = json.loads(json.dumps(GOLDEN["design"]))
    changed["final"]["certified_error"] += 1e-12
    with pytest.raises(AssertionError):
        _same(changed, GOLDEN["design"])
