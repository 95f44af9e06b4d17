"""Any step count gives a sane run: stage 1's eps warmup and ramp scale with its steps
(``--steps`` / ``--stage1-steps``), the learning-rate decay points with every stage's, a hand-given
schedule that does not reach eps_A within stage 1 is refused before anything trains, and the
collapse error names only options the command has."""

import json
import re

import pytest
import torch
from typer.testing import CliRunner

from a5ocr import models
from a5ocr.acquisition import Acquisition
from a5ocr.cli.app import app
from a5ocr.errors import CollapseError
from a5ocr.glyphs import rasterize
from a5ocr.robustify import RobustifyConfig, RobustifyError
from a5ocr.robustify.model import Robustifier
from a5ocr.robustify.run import robustify_stages
from a5ocr.training.config import PRESETS
from a5ocr.training.design import DesignConfig, DesignError, design_stages, run_design
from a5ocr.training.trainer import RobustGlyphs, Trainer, lr_factor

EPS_A = 0.1


def _stage_counts(preset: str) -> list[int]:
    """From 50 steps to 10x the preset's stage 1, odd counts included."""
    base = PRESETS[preset]["stage1_steps"]
    return sorted({50, 51, 77, 100, 199, 300, 601, base // 2, base, base + 1, 3 * base, 10 * base})


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_the_preset_step_counts_keep_the_preset_schedule(preset):
    p = PRESETS[preset]
    for cfg in (DesignConfig(preset=preset).resolved(), RobustifyConfig(preset=preset).resolved(),
                DesignConfig(preset=preset, stage1_steps=p["stage1_steps"]).resolved()):
        assert (cfg.stage1_steps, cfg.warmup, cfg.ramp) == (p["stage1_steps"], p["warmup"], p["ramp"])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_any_stage1_length_reaches_eps_a_within_stage_1_on_a_monotone_schedule(preset):
    p = PRESETS[preset]
    for steps in _stage_counts(preset):
        design = DesignConfig(preset=preset, eps_a=EPS_A, stage1_steps=steps).resolved()
        robust = RobustifyConfig(preset=preset, eps_a=EPS_A, stage1_steps=steps).resolved()
        for stage in (design_stages(design, trains_classifier=True)[0],
                      robustify_stages(robust, trains_classifier=True)[0]):
            s = stage.schedule
            assert stage.steps == steps and stage.recipe == "crown-ibp"
            # in proportion to the preset's (rounded down)
            assert 0 <= p["warmup"] * steps / p["stage1_steps"] - s.warmup < 1, (steps, s)
            assert 0 <= p["ramp"] * steps / p["stage1_steps"] - s.ramp < 1, (steps, s)
            eps = [s(t) for t in range(steps)]
            assert eps[0] == 0.0 and eps[-1] == EPS_A, (steps, s)  # eps_A before the next stage
            assert all(b >= a for a, b in zip(eps, eps[1:])), (steps, s)
            assert s.ramp > 0 and 0 < s(s.warmup + s.ramp // 2) < EPS_A  # a ramp, not a jump


def test_the_learning_rate_decays_at_the_same_fractions_of_any_stage():
    for steps in (50, 150, 1600, 16000):
        pc = design_stages(DesignConfig(preset="cpu", stage2_steps=steps).resolved(), trains_classifier=True)[1]
        factors = [lr_factor(t, pc.steps, pc.lr_milestones) for t in range(steps)]
        first_cut = factors.index(0.1)
        assert factors[0] == 1.0 and factors[-1] == pytest.approx(0.01)
        assert first_cut == int(0.7 * steps) and factors.index(pytest.approx(0.01)) == int(0.9 * steps)


def test_a_hand_given_schedule_is_kept_and_checked():
    cfg = DesignConfig(preset="tiny", stage1_steps=60, warmup=3).resolved()
    assert (cfg.warmup, cfg.ramp) == (3, 20)  # the ramp the preset's, scaled; the warmup as given
    assert DesignConfig(preset="tiny", stage1_steps=60, warmup=40, ramp=20).resolved().ramp == 20  # exactly fits
    with pytest.raises(DesignError, match=r"--warmup 41 \+ --ramp 20 = 61 steps > --steps 60"):
        DesignConfig(preset="tiny", stage1_steps=60, warmup=41, ramp=20).resolved()
    with pytest.raises(RobustifyError, match=r"--warmup 0 \+ --ramp 61 = 61 steps > --stage1-steps 60"):
        RobustifyConfig(preset="tiny", stage1_steps=60, warmup=0, ramp=61).resolved()
    for bad in (dict(warmup=-1), dict(ramp=-2)):
        with pytest.raises(DesignError, match=f"--{next(iter(bad))} must be at least 0"):
            DesignConfig(preset="tiny", **bad).resolved()


@pytest.mark.parametrize("argv", [
    ("design", "--preset", "tiny", "--steps", "20", "--warmup", "10", "--ramp", "15"),
    ("design", "--preset", "tiny", "--steps", "20", "--ramp", "25"),
    ("design", "--preset", "tiny", "--warmup", "-1"),
    ("robustify", "--preset", "tiny", "--stage1-steps", "20", "--warmup", "10", "--ramp", "15"),
    ("reproduce", "--preset", "tiny", "--steps", "20", "--warmup", "10", "--ramp", "15"),
])
def test_a_schedule_that_does_not_fit_is_refused_before_anything_is_written(argv, tmp_path, a5ocr_main):
    out = tmp_path / "run"
    code, stdout, stderr = a5ocr_main(*argv, "--out", out)
    assert code == 2, stderr
    message = " ".join(stderr.split())  # one message (the console wraps it at its width)
    assert message.startswith("error: ") and message.count("error:") == 1 and "Traceback" not in stderr, stderr
    if "-1" in argv:
        assert "--warmup must be at least 0" in message
    else:
        flag = "--stage1-steps" if argv[0] == "robustify" else "--steps"
        assert "does not reach eps_A within stage 1" in message and f"> {flag} 20" in message, message
    assert not out.exists()  # nothing trained, no folder made


def test_config_json_records_the_scaled_schedule_that_trained(tmp_path):
    out = tmp_path / "run"
    run_design(DesignConfig(font="comic-neue", chars="AOo0", preset="tiny", eps_a=0.05, samples_per_char=2, device="cpu",
                            certify_methods=("ibp",), stage1_steps=60, stage2_steps=4, out=str(out)))
    config = json.loads((out / "config.json").read_text())["config"]
    assert (config["stage1_steps"], config["warmup"], config["ramp"]) == (60, 10, 20)
    stage1 = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["stage"] == "crown-ibp"]
    eps = {r["step"]: r["eps"] for r in stage1}
    assert 0 < eps[25] < 0.05 and eps[50] == eps[60] == 0.05  # on the ramp at step 25; at eps_A from step 30


def _help_options(command: str) -> set[str]:
    """The options ``a5ocr COMMAND --help`` lists (its option column)."""
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    options = set(re.findall(r"^[\s│|]*(--[a-z0-9][a-z0-9-]*)", result.output, flags=re.M))
    assert {"--help", "--seed"} <= options, result.output
    return options


def _collapse_message(spec, *, robustifier=None) -> str:
    """The error of ``spec``'s real training loop on a classifier collapsed to one class (its
    last layer: no weights, a bias that only class 0 ever wins)."""
    glyphs = rasterize("comic-neue", "AOo0", 16)
    torch.manual_seed(0)
    model = models.build("tiny", 16, 4)
    with torch.no_grad():
        model[-1].weight.zero_()
        model[-1].bias.copy_(torch.tensor([1000.0, 0.0, 0.0, 0.0]))
    trainer = Trainer(model, RobustGlyphs(glyphs.images, 0.3), Acquisition(16), seed=0, device=torch.device("cpu"),
                      robustifier=robustifier)
    trainer.start_stage(spec)
    with pytest.raises(CollapseError) as err:
        trainer.run_stage(spec)
    assert trainer.step == 50  # the first step the check may fire
    return str(err.value)


def test_the_collapse_message_names_only_options_of_its_command():
    tiny = dict(font="comic-neue", chars="AOo0", preset="tiny", eps_a=0.05, device="cpu", stage1_steps=60)
    design = DesignConfig(**tiny, stage2_steps=60).resolved()
    robust = RobustifyConfig(**tiny, recipe="rc", rc_steps=60).resolved()
    checked = []
    # reproduce trains its rows with design's stages (and reports their errors as they are)
    for commands, stages, robustifier in (
        (("design", "reproduce"), design_stages(design, trains_classifier=True), None),
        (("robustify",), robustify_stages(robust, trains_classifier=True), Robustifier(3, 0.3, 4, 1)),
    ):
        for spec in stages:
            if not spec.trains_classifier:
                continue  # no collapse check: the classifier is fixed
            message = _collapse_message(spec, robustifier=robustifier)
            named = set(re.findall(r"--[a-z0-9][a-z0-9-]*", message))
            for command in commands:
                assert named and named <= _help_options(command), (command, spec.recipe, message)
            checked.append((commands[0], spec.recipe))
    assert checked == [("design", "crown-ibp"), ("design", "pc"), ("robustify", "crown-ibp"), ("robustify", "rc")]


def test_stage_names_say_which_bounds_trained_stage_1():
    """A stage 1 trained with IBP alone is not shown as a CROWN-IBP classifier."""
    from a5ocr.cli.progress import stage_label
    from a5ocr.training.design import stage1_label
    from a5ocr.training.trainer import bounds_label, make_stage

    ibp = make_stage("crown-ibp", 100, 0.1, warmup=10, ramp=50, train_bounds="ibp")
    mixed = make_stage("crown-ibp", 100, 0.1, warmup=10, ramp=50, train_bounds="mixed", crown_k=4)
    assert (ibp.display_name, mixed.display_name) == ("crown-ibp:ibp", "crown-ibp")
    assert stage_label(ibp.display_name) == "stage 1: IBP-trained classifier"
    assert stage_label(mixed.display_name) == "stage 1: CROWN-IBP classifier"
    assert make_stage("pc", 10, 0.1, train_bounds="ibp").display_name == "pc"
    assert bounds_label("mixed", 4) == "CROWN-IBP/IBP mix, CROWN-IBP on the 4 hardest margins"
    assert bounds_label("ibp", 4) == "IBP" and bounds_label("crown-ibp") == "CROWN-IBP"
    assert stage1_label("crown-ibp", "mixed") == "CROWN-IBP classifier"
    assert stage1_label("vanilla", "ibp") == "vanilla classifier"


def test_logged_certified_error_is_the_mean_over_the_steps_that_certified():
    """A log window that starts at eps 0 (certified error NaN on those steps) still reports the
    certified error of its other steps, not NaN ("cert -" in the progress line)."""
    import math

    from a5ocr.training.trainer import _mean

    assert _mean([float("nan"), 0.5, 0.3]) == 0.4
    assert math.isnan(_mean([float("nan")] * 3)) and _mean([1.0, 2.0]) == 1.5
