"""``a5ocr robustify``: the image-side recipes A5/O, A5/R, A5/RC, image datasets, and
``a5ocr evaluate`` on their runs.

The defence bound ||dx_D||_inf <= eps_D is checked on extreme parameters and on what each
recipe outputs; R is the identity at initialisation; datasets with a wrong layout get a clear
error. One tiny design run (8 characters, 16x16, seconds) gives a trained classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from a5ocr import bounds
from a5ocr.training.losses import attack_box, defended
from a5ocr.datasets import DatasetError, load_dataset
from a5ocr.robustify import (
    Robustifier, RobustifyConfig, RobustifyError, load_robustifier, offline_defence, run_robustify, save_robustifier,
)

CHARS = "ABCDEFGH"
# float32 rounding of x + d - x: at most half an ulp of 1.0 on top of eps_D
ROUNDING = 2.0**-23


@pytest.fixture(scope="module")
def design_run(tmp_path_factory):
    from a5ocr.training.design import DesignConfig, run_design

    out = tmp_path_factory.mktemp("robrun") / "run"
    run_design(DesignConfig(font="comic-neue", chars=CHARS, preset="tiny", eps_a=0.05, samples_per_char=4, device="cpu",
                            certify_methods=("ibp",), out=str(out), stage1_steps=150, warmup=10, ramp=60,
                            stage2_steps=5, recipe="none"))
    return out


@pytest.fixture(scope="module")
def classifier(design_run):
    from a5ocr.models import load_classifier

    return load_classifier(design_run / "classifier.safetensors")[0]


# --------------------------------------------------------------------------- the defence bound
@pytest.mark.parametrize("eps_d", [0.05, 0.3, 1.0])
def test_defended_change_is_bounded_by_eps_d(eps_d):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=g)
    x[:8] = 0.0
    x[8:16] = 1.0  # the clamp at both ends of the pixel range
    for scale in (0.0, 1.0, 30.0, 1e4):
        z = scale * torch.randn(x.shape, generator=g)
        out = defended(x, z, eps_d)
        assert (out - x).abs().max() <= eps_d + ROUNDING
        assert out.min() >= 0.0 and out.max() <= 1.0
    # saturated parameters reach the full budget where the pixel range allows it
    out = defended(torch.full((4,), 0.5), torch.full((4,), 1e4), eps_d)
    assert torch.allclose(out, torch.full((4,), min(1.0, 0.5 + eps_d)))


def test_robustifier_is_identity_at_init_and_bounded_after_training():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 12, 12, generator=g)
    r = Robustifier(3, eps_d=0.2, width=8, depth=3)
    assert torch.equal(r(x), x)  # exactly: g(x) = 0, sigmoid(0) = 0.5, dx_D = 0
    # after some steps that push every pixel towards 1, the change is real and still bounded
    opt = torch.optim.Adam(r.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        (-r(x).sum()).backward()
        opt.step()
    z = r(x)
    change = (z - x).abs().max().item()
    assert 0.1 < change <= 0.2 + ROUNDING
    assert z.mean() > x.mean()


def test_robustifier_file_round_trip(tmp_path):
    r = Robustifier(3, eps_d=0.25, width=4, depth=2)
    with torch.no_grad():
        for p in r.parameters():
            p.normal_()
    save_robustifier(r, tmp_path / "r.safetensors")
    back = load_robustifier(tmp_path / "r.safetensors")
    x = torch.rand(2, 3, 8, 8)
    assert back.eps_d == 0.25 and torch.equal(back(x), r(x))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(RobustifyError, match="not a readable safetensors"):
        load_robustifier(tmp_path / "bad.safetensors")
    with pytest.raises(RobustifyError, match="not found"):
        load_robustifier(tmp_path / "none.safetensors")


def test_offline_defence_lowers_the_worst_case_loss_within_eps_d(design_run, classifier):
    from a5ocr.evaluation import acquisitions
    from a5ocr.runs import load_run

    run = load_run(design_run)
    from a5ocr.acquisition import Acquisition

    x, y = next(acquisitions(run.original, Acquisition(run.resolution, run.acquisition), 8, seed=5))
    eps_a, eps_d = 0.05, 0.2
    params = [p.detach().clone() for p in classifier.parameters()]
    z = offline_defence(classifier, x, y, eps_a=eps_a, eps_d=eps_d, steps=40, lr=0.1)
    assert (z - x).abs().max() <= eps_d + ROUNDING and z.min() >= 0 and z.max() <= 1
    assert all(torch.equal(a, b) for a, b in zip(params, classifier.parameters()))  # C untouched

    def wce(inp):
        with torch.no_grad():
            m = bounds.margin_lower_bounds(classifier, *attack_box(inp, eps_a), y, method="ibp")
            return bounds.worst_case_cross_entropy(m, y, reduction="none"), m

    before, m0 = wce(x)
    after, m1 = wce(z)
    assert torch.all(after <= before + 1e-6)  # each image keeps its best step (step 0 = x)
    assert after.mean() < 0.85 * before.mean()
    cert = lambda m: (m.scatter(1, y[:, None], float("inf")).min(1).values > 0).sum()  # noqa: E731
    assert cert(m1) > cert(m0)


# --------------------------------------------------------------------------- datasets
def _png(path, value=128, size=(10, 10), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value, value, 255)).save(path)


def test_dataset_folder_and_npz_layouts_load(tmp_path):
    for cls, v in (("cat", 0), ("dog", 255)):
        for i in range(5):
            _png(tmp_path / "f" / cls / f"{i}.png", v, mode="L" if i % 2 else "RGBA")
    train, test = load_dataset(tmp_path / "f", 8, test_fraction=0.2, seed=0)
    assert train.classes == ["cat", "dog"] and len(train) == 8 and len(test) == 2
    assert train.x.shape == (8, 3, 8, 8) and train.x.dtype == torch.float32
    assert torch.all((train.x == 0) == (train.y == 0)[:, None, None, None])  # cat black, dog white
    # train/ and test/ folders
    for part, n in (("train", 3), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                _png(tmp_path / "g" / part / cls / f"{i}.png")
    train, test = load_dataset(tmp_path / "g", 8)
    assert (len(train), len(test)) == (6, 4)
    # npz, NHWC uint8 with a test split and class names
    x = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2, 0, 1, 2]), x_test=x[:3], y_test=np.array([0, 1, 2]),
             classes=np.array(["r", "g", "b"]))
    train, test = load_dataset(tmp_path / "d.npz", 8)
    assert train.classes == ["r", "g", "b"] and len(test) == 3
    assert torch.allclose(train.x[0], torch.from_numpy(x[0]).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("case, needle", [
    ("loose", "one subfolder per class"),
    ("one_class", "at least 2"),
    ("nested", "holds a subfolder"),
    ("empty_class", "holds no images"),
    ("not_image", "not a readable image"),
    ("missing", "not found"),
    ("text_file", "folder of class subfolders or an .npz"),
    ("npz_no_y", "no array 'y'"),
    ("npz_short_y", "one label per image"),
    ("npz_float_range", "values in \\[0, 1\\]"),
    ("npz_pickle", "object arrays are refused"),
    ("npz_shape", "expected \\[N, H, W\\]"),
    ("test_classes", "differ from the training classes"),
])
def test_dataset_with_a_wrong_layout_gets_a_clear_error(tmp_path, case, needle):
    root = tmp_path / "data"
    if case == "loose":
        _png(root / "a" / "0.png")
        _png(root / "b" / "0.png")
        _png(root / "stray.png")
    elif case == "one_class":
        _png(root / "a" / "0.png")
    elif case == "nested":
        _png(root / "a" / "0.png")
        _png(root / "b" / "more" / "0.png")
    elif case == "empty_class":
        _png(root / "a" / "0.png")
        (root / "b").mkdir()
        (root / "b" / "notes.txt").write_text("no images here")
    elif case == "not_image":
        _png(root / "a" / "0.png")
        (root / "b").mkdir()
        (root / "b" / "0.png").write_bytes(b"this is not a png")
    elif case == "missing":
        pass
    elif case == "text_file":
        root = tmp_path / "data.csv"
        root.write_text("x,y\n")
    elif case == "test_classes":
        _png(root / "train" / "a" / "0.png")
        _png(root / "train" / "b" / "0.png")
        _png(root / "test" / "a" / "0.png")
        _png(root / "test" / "c" / "0.png")
    else:
        root = tmp_path / "data.npz"
        x = np.zeros((4, 8, 8), np.float32)
        kw = {"npz_no_y": {"x": x}, "npz_short_y": {"x": x, "y": np.array([0, 1])},
              "npz_float_range": {"x": x + 2.0, "y": np.arange(4)},
              "npz_pickle": {"x": np.array([{"a": 1}] * 4, dtype=object), "y": np.arange(4)},
              "npz_shape": {"x": np.zeros((4, 8), np.float32), "y": np.arange(4)}}[case]
        np.savez(root, **kw)
    with pytest.raises(DatasetError, match=needle):
        load_dataset(root, 8)


def test_config_rejects_bad_values():
    for kw, needle in (({"recipe": "x"}, "--recipe"), ({"eps_d": -0.1}, "--eps-d"), ({"eps_a": 1.5}, "--eps-a"),
                       ({"eps_r": 0.0}, "--eps-r"), ({"run": "a", "data": "b"}, "not both"),
                       ({"preset": "huge"}, "preset"), ({"o_lr": 0.0}, "--o-lr")):
        with pytest.raises(RobustifyError, match=needle):
            RobustifyConfig(**kw).resolved()


# --------------------------------------------------------------------------- runs
def test_a5r_run_on_acquired_glyphs_and_its_evaluation(tmp_path, design_run, a5ocr_main):
    out = tmp_path / "r"
    s = run_robustify(RobustifyConfig(recipe="r", run=str(design_run), eps_a=0.05, eps_d=0.2, preset="tiny", r_steps=40,
                                      samples_per_char=5, certify_methods=("ibp",), device="cpu", out=str(out)))
    for f in ("config.json", "summary.json", "robustifier.safetensors", "classifier.safetensors",
              "baseline_classifier.safetensors", "metrics.jsonl", "examples.png", "checkpoint.pt"):
        assert (out / f).is_file(), f
    assert s["samples"] == 40 and s["final"]["max_abs_change"] <= 0.2 + ROUNDING
    assert s["final"]["max_abs_change"] > 0  # R has moved off the identity
    # the legacy classifier is kept as it was: A5/R does not train C
    from safetensors.torch import load_file

    a = load_file(str(design_run / "classifier.safetensors"))
    b = load_file(str(out / "classifier.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "robustify" and cfg["config"]["seed"] == 0 and "torch" in cfg["environment"]["versions"]
    # a5ocr evaluate understands the run: clean, attack and certified error of z = x + dx_D
    code, _, err = a5ocr_main("evaluate", str(out), "--samples-per-char", "5", "--attack", "fast", "--method", "ibp",
                              "--json", str(tmp_path / "ev.json"), "--radius-steps", "3")
    assert code == 0, err
    rep = json.loads((tmp_path / "ev.json").read_text())
    assert rep["consistency"]["ok"] and rep["samples"] == 40
    assert rep["clean_error"] == pytest.approx(s["final"]["clean_error"])  # the run's own test set and defence
    assert rep["certified_error"]["ibp"] == pytest.approx(s["final"]["certified_error"])
    assert rep["clean_error"] <= rep["attack_error"] <= rep["certified_error"]["ibp"]
    code, _, err = a5ocr_main("evaluate", str(out), "--original", "--samples-per-char", "5", "--attack", "none",
                              "--method", "ibp", "--json", str(tmp_path / "ev0.json"), "--radius-steps", "0")
    assert code == 0, err
    rep0 = json.loads((tmp_path / "ev0.json").read_text())
    assert rep0["certified_error"]["ibp"] == pytest.approx(s["baseline"]["certified_error"])
    # a finished run is not overwritten
    with pytest.raises(RobustifyError, match="already holds a run"):
        run_robustify(RobustifyConfig(recipe="r", run=str(design_run), preset="tiny", device="cpu", out=str(out)))


def test_a5rc_trains_the_classifier_and_resumes_identically(tmp_path, design_run):
    base = dict(recipe="rc", run=str(design_run), eps_a=0.05, eps_d=0.2, preset="tiny", r_steps=10, rc_steps=10,
                samples_per_char=2, certify_methods=("ibp",), device="cpu")
    a = run_robustify(RobustifyConfig(**base, out=str(tmp_path / "a")))
    from safetensors.torch import load_file

    before = load_file(str(design_run / "classifier.safetensors"))
    after = load_file(str(tmp_path / "a" / "classifier.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # C fine-tuned with R
    kept = load_file(str(tmp_path / "a" / "baseline_classifier.safetensors"))
    assert all(torch.equal(before[k], kept[k]) for k in before)  # the "before" classifier is the legacy one
    # the same seed gives the same result
    b = run_robustify(RobustifyConfig(**base, out=str(tmp_path / "b")))
    assert a["final"] == b["final"]
    ra = load_file(str(tmp_path / "a" / "robustifier.safetensors"))
    rb = load_file(str(tmp_path / "b" / "robustifier.safetensors"))
    assert all(torch.equal(ra[k], rb[k]) for k in ra)


def test_a5o_on_an_npz_dataset_trains_its_own_classifier(tmp_path):
    rng = np.random.default_rng(0)
    # two classes: a bright square top-left or bottom-right on a dark, noisy background
    x = rng.uniform(0.0, 0.2, (60, 16, 16)).astype(np.float32)
    y = np.arange(60) % 2
    x[y == 0, 2:7, 2:7] = 0.9
    x[y == 1, 9:14, 9:14] = 0.9
    np.savez(tmp_path / "sq.npz", x=x, y=y)
    s = run_robustify(RobustifyConfig(recipe="o", data=str(tmp_path / "sq.npz"), eps_a=0.05, eps_d=0.1, preset="tiny",
                                      resolution=16, stage1_steps=60, warmup=5, ramp=20, o_steps=10,
                                      certify_methods=("ibp",), device="cpu", out=str(tmp_path / "o")))
    assert s["classes"] == ["0", "1"] and s["samples"] == 12
    assert s["final"]["max_abs_change"] <= 0.1 + ROUNDING
    assert s["final"]["certified_error"] <= s["baseline"]["certified_error"]
    assert (tmp_path / "o" / "baseline_classifier.safetensors").is_file()


def test_cli_robustify_bad_input_is_one_line_exit_2(tmp_path, a5ocr_main):
    (tmp_path / "flat").mkdir()
    _png(tmp_path / "flat" / "a.png")
    for args, needle in ((["--eps-d", "-1"], "--eps-d"), (["--recipe", "q"], "--recipe"),
                         (["--data", str(tmp_path / "flat")], "one subfolder per class"),
                         (["--data", str(tmp_path / "nothing")], "not found"),
                         (["--run", str(tmp_path / "norun")], "not found")):
        code, _, err = a5ocr_main("robustify", "--preset", "tiny", "--out", str(tmp_path / "o"), *args)
        assert code == 2, (args, err)
        assert needle in err and "Traceback" not in err, err


def test_a5rc_from_an_a5r_robustifier_fine_tunes_only(tmp_path, design_run):
    base = dict(run=str(design_run), eps_a=0.05, eps_d=0.2, preset="tiny", samples_per_char=2,
                certify_methods=("ibp",), device="cpu")
    run_robustify(RobustifyConfig(recipe="r", r_steps=10, out=str(tmp_path / "r"), **base))
    rfile = tmp_path / "r" / "robustifier.safetensors"
    run_robustify(RobustifyConfig(recipe="rc", rc_steps=5, robustifier=str(rfile), out=str(tmp_path / "rc"), **base))
    stages = {json.loads(line)["stage"] for line in (tmp_path / "rc" / "metrics.jsonl").read_text().splitlines()}
    assert stages == {"rc"}
    with pytest.raises(RobustifyError, match="trained for eps_D 0.2"):
        run_robustify(RobustifyConfig(recipe="rc", robustifier=str(rfile), out=str(tmp_path / "x"), **{**base, "eps_d": 0.3}))
