"""End-to-end design on tiny configs (seconds): the loop, resume, outputs, and the loss going down."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from a5ocr import models
from a5ocr.acquisition import Acquisition
from a5ocr.training.design import DesignConfig, DesignError, run_design
from a5ocr.glyphs import rasterize
from a5ocr.runs import RunFolder, settings_diff
from a5ocr.runio import read_jsonl
from a5ocr.training.losses import a5_loss
from a5ocr.training.trainer import RobustGlyphs, Trainer, make_stage

TINY = dict(font="comic-neue", chars="AOo0", preset="tiny", eps_a=0.05, samples_per_char=5, device="cpu",
            certify_methods=("ibp",))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One finished TINY design run shared by the module (the uninterrupted reference of the
    seed, resume and recipe-p tests): its folder and the summary ``run_design`` returned. Read
    only; a test that resumes into a run works on a copy."""
    out = tmp_path_factory.mktemp("design") / "run"
    return out, run_design(DesignConfig(**TINY, out=str(out)))


def test_one_design_step_reduces_the_worst_case_loss():
    g = rasterize("comic-neue", "AOo0", 16)
    torch.manual_seed(0)
    model = models.build("tiny", 16, 4)
    acq = Acquisition(16)
    robust = RobustGlyphs(g.images, eps_d=0.5)
    trainer = Trainer(model, robust, acq, copies=4, seed=0, device=torch.device("cpu"))
    spec = make_stage("p", steps=1, eps_a=0.05, lr_glyphs=0.05, train_bounds="ibp")
    trainer.start_stage(spec)
    labels = torch.arange(4).repeat(4)
    x = acq(robust()[labels], torch.Generator().manual_seed(5))

    def loss_at():
        with torch.no_grad():
            xx = acq(robust()[labels], torch.Generator().manual_seed(5))
            return a5_loss(model, xx, labels, 0.05, 0.0, "ibp")[0].item()

    before = loss_at()
    # a few steps on fixed draws: the worst-case loss of those draws must fall
    for _ in range(5):
        trainer.opt_glyphs.zero_grad()
        xx = acq(robust()[labels], torch.Generator().manual_seed(5))
        a5_loss(model, xx, labels, 0.05, 0.0, "ibp")[0].backward()
        trainer.opt_glyphs.step()
    assert loss_at() < before
    # the change respects the budget
    assert (robust() - g.images).abs().max() <= 0.5 + 1e-6


def test_glyph_change_stays_in_budget_and_range():
    base = torch.rand(3, 8, 8)
    r = RobustGlyphs(base, eps_d=0.2)
    with torch.no_grad():
        r.z.normal_(0, 10)
    w = r()
    assert (w - base).abs().max() <= 0.2 + 1e-6 and w.min() >= 0 and w.max() <= 1
    rb = RobustGlyphs(base, eps_d=0.2, ink="binary")
    assert set(torch.unique(rb()).tolist()) <= {0.0, 1.0}


def test_design_end_to_end_and_outputs(tiny_run):
    out, s = tiny_run
    for name in ("config.json", "checkpoint.pt", "classifier.safetensors", "glyphs.safetensors", "metrics.jsonl",
                 "glyphs.png", "curves.png", "summary.json", "baseline_classifier.safetensors"):
        assert (out / name).is_file(), name
    assert len(list((out / "glyphs").glob("U+*.png"))) == 4
    summary = json.loads((out / "summary.json").read_text())
    for key in ("recipe", "font", "chars", "eps_a", "eps_d", "resolution", "seed", "certify_method", "wall_seconds", "samples"):
        assert key in summary
    assert summary["samples"] == 20
    # the tiny preset trains stage 1 with IBP alone, and says so (not "CROWN-IBP classifier")
    assert summary["train_bounds"] == "ibp" and summary["crown_k"] is None
    assert summary["stage1"] == "certified classifier trained with IBP bounds"
    for part in ("baseline", "final"):
        assert 0 <= summary[part]["clean_error"] <= summary[part]["certified_error"] <= 1
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["seed"] == 0 and "torch" in cfg["environment"]["versions"]
    assert all(v[0].isdigit() for v in cfg["environment"]["versions"].values()), cfg["environment"]["versions"]
    assert s == summary


def test_same_seed_same_result(tmp_path, tiny_run):
    a_dir, a = tiny_run
    b = run_design(DesignConfig(**TINY, out=str(tmp_path / "b")))
    ta = torch.load(a_dir / "checkpoint.pt", weights_only=True)
    tb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for k in ta["model"]:
        assert torch.equal(ta["model"][k], tb["model"][k])
    assert a["final"] == b["final"]


def test_resume_after_interruption_matches_uninterrupted(tmp_path, monkeypatch, tiny_run):
    full_dir, full = tiny_run
    # interrupt stage 2 after its first checkpoint by raising from the logger
    from a5ocr.training import trainer as recipes

    calls = {"n": 0}
    real = recipes.Trainer.train_step

    def flaky(self, spec):
        calls["n"] += 1
        if spec.recipe == "pc" and self.step == 10:
            raise KeyboardInterrupt
        return real(self, spec)

    monkeypatch.setattr(recipes.Trainer, "train_step", flaky)
    cfg = DesignConfig(**TINY, out=str(tmp_path / "cut"), checkpoint_seconds=0.0)
    with pytest.raises(KeyboardInterrupt):
        run_design(cfg)
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()
    assert not (tmp_path / "cut" / "summary.json").exists()
    monkeypatch.setattr(recipes.Trainer, "train_step", real)
    with pytest.raises(DesignError, match="already holds a run"):
        run_design(cfg)
    # what a kill after the checkpoint leaves: a record past it and a line cut in two
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"stage": "pc", "step": 15, "loss": 9.0}) + "\n" + '{"stage": "pc", "st')
    resumed = run_design(cfg, resume=True)
    assert resumed["final"] == full["final"]
    assert resumed["baseline"] == full["baseline"]
    # the log reads as one run: the records of the uninterrupted run, each once
    steps = [(r["stage"], r["step"]) for r in read_jsonl(tmp_path / "cut" / "metrics.jsonl")]
    assert steps == [(r["stage"], r["step"]) for r in read_jsonl(full_dir / "metrics.jsonl")]


def test_resume_with_other_settings_is_refused(tmp_path, tiny_run):
    shutil.copytree(tiny_run[0], tmp_path / "r")  # a finished run of these settings ("out" is no training setting)
    cfg = DesignConfig(**TINY, out=str(tmp_path / "r"))
    with pytest.raises(DesignError, match="different settings than the interrupted run: eps_a$"):
        run_design(replace(cfg, eps_a=0.07), resume=True)
    with pytest.raises(DesignError, match="nothing to resume"):
        run_design(replace(cfg, out=str(tmp_path / "empty")), resume=True)


def test_recipe_p_keeps_the_legacy_classifier(tmp_path, tiny_run):
    base_dir, base = tiny_run
    legacy = base_dir / "baseline_classifier.safetensors"
    s = run_design(DesignConfig(**{**TINY, "recipe": "p"}, classifier=str(legacy), out=str(tmp_path / "p")))
    m0, _ = models.load_classifier(legacy)
    m1, _ = models.load_classifier(tmp_path / "p" / "classifier.safetensors")
    for a, b in zip(m0.state_dict().values(), m1.state_dict().values()):
        assert torch.equal(a, b)
    assert s["baseline"] == base["baseline"]  # same classifier, same glyphs, same eval seed


def test_an_old_format_design_folder_passes_the_resume_check(tmp_path):
    """config.json of the code before the restructure says ``eval_samples``: the resume check maps
    it onto ``samples_per_char`` (the same settings pass, another eps_a does not)."""
    old = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "fixtures" / "premove" / "design", old)
    assert "eval_samples" in json.loads((old / "config.json").read_text())["config"]
    same = DesignConfig(font="comic-neue", chars="AOo0", preset="tiny", eps_a=0.02, samples_per_char=10, device="cpu",
                        seed=0, stage1_steps=150, stage2_steps=60, warmup=5, ramp=10, out=str(old),
                        acquisition=json.loads((old / "config.json").read_text())["config"]["acquisition"]).resolved()
    folder = RunFolder(old, DesignError)
    folder.check_compatible(same.to_dict())
    assert folder.read_config()["samples_per_char"] == 10
    with pytest.raises(DesignError, match="different settings than the interrupted run: eps_a$"):
        folder.check_compatible(replace(same, eps_a=0.03).to_dict())
    with pytest.raises(DesignError, match="different settings than the interrupted run: samples_per_char$"):
        folder.check_compatible(replace(same, samples_per_char=11).to_dict())
    # the old record read as a config: legacy names mapped
    cfg = DesignConfig.from_dict(json.loads((old / "config.json").read_text())["config"])
    assert cfg.samples_per_char == 10 and cfg.certify_methods == ("ibp", "crown-ibp")
    assert settings_diff(cfg.to_dict(), same.to_dict()) == []


def test_crown_k_trains_with_pruned_mixed_bounds_and_is_recorded(tmp_path):
    """``crown_k`` reaches the loss: the step's margins are the pruned mix of ``bounds.robust_margins``
    (k hardest by IBP), recorded in config.json; a bad k is one DesignError line."""
    from a5ocr import bounds

    torch.manual_seed(0)
    model = models.build("tiny", 16, 4)
    x = torch.rand(6, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    _, stats = a5_loss(model, x, labels, 0.05, 0.5, "mixed", crown_k=1)
    xl, xu = (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1)
    assert torch.equal(stats["margins"], bounds.robust_margins(model, xl, xu, labels, "crown-ibp", f=0.5, k=1))
    full = bounds.robust_margins(model, xl, xu, labels, "crown-ibp", f=0.5)
    assert not torch.equal(stats["margins"], full)  # k=1 of 3 margins: the others are IBP's
    cfg = DesignConfig(font="comic-neue", chars="AOo0", preset="tiny", eps_a=0.05, samples_per_char=2, device="cpu",
                       train_bounds="mixed", crown_k=2, stage1_steps=12, stage2_steps=4, out=str(tmp_path / "run"),
                       certify_methods=("ibp",))
    run_design(cfg)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["crown_k"] == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["train_bounds"], summary["crown_k"]) == ("mixed", 2)
    assert summary["stage1"] == "CROWN-IBP classifier (CROWN-IBP on the 2 hardest margins)"
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DesignError, match="--crown-k"):
            replace(cfg, crown_k=bad).resolved()


def test_a_print_scale_design_runs_through_evaluation_and_is_read_back(tmp_path):
    """--print-scale 2 on the tiny preset: glyphs designed at 32 px, the classifier at 16 px;
    the glyph file, load_run, the evaluation and certify-range's camera all follow the print
    scale, and the coarse change keeps |dw| <= eps_D. A bad scale or defence is one DesignError."""
    from a5ocr.evaluation import evaluate_run
    from a5ocr.runs import load_run
    from a5ocr.training.design import defence_option, parameterisation_option
    from a5ocr.training.parameterisation import Parameterisation

    out = tmp_path / "run"
    defence = parameterisation_option("coarse:2", 0.01)
    s = run_design(DesignConfig(**TINY, out=str(out), print_scale=2, parameterisation=defence,
                                stage1_steps=12, stage2_steps=6))
    assert (s["resolution"], s["print_scale"], s["parameterisation"]["factor"]) == (16, 2, 2)
    run = load_run(out)
    assert run.resolution == 16 and run.print_scale == 2 and run.robust.shape == (4, 32, 32)
    assert (run.robust - run.original).abs().max() <= 0.5 + 1e-6
    assert s["change"]["print_max"] == pytest.approx((run.robust - run.original).abs().max().item(), abs=1e-4)
    assert 0 < s["change"]["sensor_max"] <= s["change"]["print_max"]
    z = torch.load(out / "checkpoint.pt", weights_only=True)["glyphs"]["z"]
    assert z.shape == (4, 16, 16)  # the coarse grid: one z per sensor pixel
    # the fast attack: the camera is what follows the print scale; the attack acts on the sensor
    # images it makes (the standard suite's Square and FAB-T took most of this test's time)
    ev = evaluate_run(run, samples_per_char=2, attack="fast", device="cpu")
    assert ev.protocol["print_scale"] == 2 and ev.result.samples == 8
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert cfg["print_scale"] == 2 and DesignConfig.from_dict(cfg).print_scale == 2
    for bad in (0, 1.5, True):
        with pytest.raises(DesignError, match="--print-scale"):
            DesignConfig(**TINY, print_scale=bad).resolved()
    with pytest.raises(DesignError, match="parameterisation"):
        DesignConfig(**TINY, print_scale=1, parameterisation={"kind": "coarse", "factor": 3}).resolved()
    with pytest.raises(DesignError, match="--defence"):
        parameterisation_option("coarse:x")
    # the presets' defaults: tiny (and paper) one grid, per pixel; cpu the print-resolution design
    tiny = DesignConfig(**TINY).resolved()
    assert (tiny.print_scale, tiny.parameterisation) == (1, None)
    cpu = DesignConfig(font="comic-neue").resolved()
    assert cpu.print_scale == 4 and cpu.glyph_parameterisation() == Parameterisation("outline", 4, tv=0.3, scale=4)
    assert DesignConfig(font="comic-neue", print_scale=1, parameterisation=None).resolved().parameterisation is None
    # an outline's edge offset is in sensor px: the design records its print scale with it
    ol = DesignConfig(font="comic-neue", parameterisation=parameterisation_option("outline:8")).resolved()
    assert ol.glyph_parameterisation() == Parameterisation("outline", 8, scale=4)
    assert DesignConfig(font="comic-neue", preset="paper").resolved().parameterisation is None
    # the CLI's --defence / --defence-tv: unset = the preset's; the penalty alone joins the preset's
    assert defence_option(None, 0.0, "cpu") == "preset"
    assert Parameterisation.from_dict(defence_option(None, 0.01, "cpu")) == Parameterisation.parse("outline:4", 0.01)
    assert Parameterisation.from_dict(defence_option("outline:4", 0.0, "cpu")) == Parameterisation("outline", 4)  # no penalty unless asked
    assert defence_option("pixel", 0.0, "cpu") is None


# ----------------------------------------------------------------------------- --eps-print
def test_the_print_loss_bounds_the_joint_threat():
    """``a5_loss`` with a print box: the worst case of ``bounds.camera_margin_lower_bounds``,
    never above the image-attack-only IBP bounds (the joint set contains the image box)."""
    from a5ocr import bounds
    from a5ocr.training.losses import PrintBox

    g = rasterize("comic-neue", "AOo0", 16)
    torch.manual_seed(0)
    model = models.build("tiny", 16, 4)
    acq = Acquisition(16)
    labels = torch.arange(4).repeat(2)
    w = g.images[labels]
    x, params = acq(w, torch.Generator().manual_seed(3), return_params=True)
    box = PrintBox(w, params, acq.cfg, 0.05)
    loss, stats = a5_loss(model, x, labels, 0.05, 0.0, "ibp", printed=box)
    ref = bounds.camera_margin_lower_bounds(model, w, params, acq.cfg, labels, 0.05, 0.05, "ibp")
    assert torch.equal(stats["margins"], ref)
    assert loss.item() == pytest.approx(bounds.worst_case_cross_entropy(ref, labels).item())
    _, image_only = a5_loss(model, x, labels, 0.05, 0.0, "ibp")
    assert torch.all(stats["margins"] <= image_only["margins"] + 1e-5)
    assert torch.any(stats["margins"] < image_only["margins"] - 1e-3)


def test_design_with_eps_print_through_the_cli(tmp_path, a5ocr_main):
    out = tmp_path / "run"
    args = ["design", "--preset", "tiny", "--chars", "AOo0", "--eps-a", "0.05", "--steps", "12", "--design-steps", "4",
            "--eval-samples", "2", "--device", "cpu", "--out", out]
    code, stdout, err = a5ocr_main(*args, "--eps-print", "0.05")
    assert code == 0, err
    assert "eps_print 0.05" in " ".join(stdout.split())
    assert json.loads((out / "config.json").read_text())["config"]["eps_print"] == 0.05
    s = json.loads((out / "summary.json").read_text())
    assert s["eps_print"] == 0.05
    for part in ("baseline", "final"):
        p = s[part]["print"]
        assert (p["eps_print"], p["eps_a"]) == (0.05, 0.05)
        # the joint threat contains the image attack alone: never fewer certified errors
        assert s[part]["clean_error"] == p["clean_error"] and p["certified_error"] >= s[part]["certified_error"]
    # another eps_print does not resume this run; bad values are one line, exit 2, no folder
    code, _, err = a5ocr_main(*args, "--eps-print", "0.1", "--resume")
    assert code == 2 and "eps_print" in err
    for bad in ("1.5", "-0.1", "nan"):
        code, stdout, err = a5ocr_main(*args[:-1], tmp_path / f"bad{bad}", f"--eps-print={bad}")
        assert code == 2 and "--eps-print must be in [0, 1)" in " ".join(err.split()) and err.count("error:") == 1
        assert not (tmp_path / f"bad{bad}").exists()


def test_an_image_attack_design_records_no_eps_print_and_an_old_config_loads():
    cfg = DesignConfig(**TINY).resolved()
    assert "eps_print" not in cfg.to_dict() and DesignConfig.from_dict(cfg.to_dict()).eps_print == 0
    assert DesignConfig.from_dict(replace(cfg, eps_print=0.1).to_dict()).eps_print == 0.1
    with pytest.raises(DesignError, match="recipe p or pc"):
        replace(cfg, recipe="none", eps_print=0.1).resolved()
