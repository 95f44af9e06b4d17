"""``a5ocr evaluate``: invariants, the attack, broken-certificate detection, determinism, radius,
PSNR and bad input, on tiny design runs (seconds)."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from a5ocr import bounds
from a5ocr.acquisition import Acquisition
from a5ocr.evaluation import EvaluateError, acquisitions, certify_batch, evaluate, evaluate_full, evaluate_run
from a5ocr.runs import load_run
from a5ocr.training.design import DesignConfig, run_design
from conftest import TINY_DESIGN

TINY = TINY_DESIGN  # the session's tiny_preset_run has these settings (conftest)
FAST = dict(samples_per_char=8, attack="fast", device="cpu")


@pytest.fixture(scope="module")
def pc_run(tiny_preset_run):
    """The design run of TINY (the session's, conftest)."""
    return tiny_preset_run


@pytest.fixture(scope="module")
def vanilla_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("van") / "run"
    run_design(DesignConfig(**TINY, recipe="none", classifier_recipe="vanilla", out=str(out)))
    return out


def test_invariants_on_a_trained_run(pc_run):
    run = load_run(pc_run)
    ev = evaluate_run(run, check_fraction=1.0, **FAST)
    rep = ev.report()
    assert rep["consistency"] == {"ok": True, "violations": []}
    assert rep["broken_certificates"] == 0
    for name, cert in rep["certified_error"].items():
        assert rep["clean_error"] <= rep["attack_error"] <= cert, name
    # the cascade never certifies less than IBP alone
    assert rep["certified_error"]["ibp+crown-ibp"] <= rep["certified_error"]["ibp"]
    # what was attacked: every correct uncertified sample, and (check fraction 1) every certified one
    a = rep["attacked"]
    assert a["samples"] == rep["samples"] - a["misclassified"]
    assert a["certified_not_attacked"] == 0
    for c, row in rep["per_char"].items():
        assert row["clean_error"] <= row["attack_error"] <= row["certified_error"] <= row["certified_error_by_method"]["ibp"]
    assert set(rep["weakest"]) <= set(run.chars)


def test_replays_the_design_runs_own_evaluation(pc_run):
    """Default seed and the run's sample count: the same acquisitions as the design's summary."""
    run = load_run(pc_run)
    summary = json.loads((pc_run / "summary.json").read_text())
    ev = evaluate_run(run, samples_per_char=5, methods=("ibp",), attack="none", radius_steps=0)
    rep = ev.report()
    assert rep["seed"] == summary["eval_seed"]
    assert rep["clean_error"] == pytest.approx(summary["final"]["clean_error"], abs=1e-9)
    assert rep["certified_error"]["ibp"] == pytest.approx(summary["final"]["certified_error"], abs=1e-9)
    assert rep["attack_error"] is None and rep["attacked"]["attack"] == "none"


def test_light_evaluate_is_the_full_protocol_with_the_attack_off(pc_run):
    """``evaluate`` (a design run's own evaluation): the methods as given (no IBP put first),
    progress after each chunk, the same certificates as ``evaluate_full`` without attack."""
    run = load_run(pc_run)
    acq = Acquisition(run.resolution, run.acquisition)
    calls = []
    res = evaluate(run.model, run.robust, run.chars, acq, eps_a=run.eps_a, samples_per_char=300, seed=3,
                   methods=("crown-ibp",), chunk=512, on_chunk=lambda d, t: calls.append((d, t)))
    assert list(res.certified) == ["crown-ibp"] and res.attacked is None
    assert calls == [(512, 1200), (1024, 1200), (1200, 1200)]
    # the same chunking: the draws depend on the seed and the chunk size
    full = evaluate_full(run.model, run.robust, run.chars, acq, eps_a=run.eps_a, samples_per_char=300, seed=3,
                         methods=("ibp", "crown-ibp"), cascade=False, attack="none", radius_steps=0, chunk=512)
    assert torch.equal(res.certified["crown-ibp"], full.result.certified["crown-ibp"])
    assert torch.equal(res.correct, full.result.correct) and torch.equal(res.labels, full.result.labels)


def test_attack_breaks_an_undefended_classifier(vanilla_run):
    ev = evaluate_run(load_run(vanilla_run), original=True, eps_a=0.1, samples_per_char=10, attack="fast", device="cpu")
    rep = ev.report()
    assert rep["certified_error"]["best"] == 1.0
    assert rep["attack_error"] >= 0.9
    assert rep["clean_error"] < rep["attack_error"]
    assert rep["consistency"]["ok"]


def test_broken_certificates_are_detected_saved_and_exit_3(vanilla_run, tmp_path, monkeypatch, a5ocr_main):
    # An unsound certifier: everything "certified". The attack must expose it.
    monkeypatch.setattr(bounds, "certify", lambda model, xl, xu, labels, method="crown-ibp", **kw: torch.ones(labels.shape[0], dtype=torch.bool))
    ev = evaluate_run(load_run(vanilla_run), original=True, eps_a=0.1, samples_per_char=5, attack="fast",
                      check_fraction=1.0, radius_steps=0, device="cpu")
    rep = ev.report()
    assert rep["broken_certificates"] > 0 and not rep["consistency"]["ok"]
    assert ev.broken["x"].shape[0] == rep["broken_certificates"]
    js = tmp_path / "e.json"
    code, out, err = a5ocr_main("evaluate", vanilla_run, "--original", "--eps-a", "0.1", "--samples-per-char", "5",
                          "--attack", "fast", "--check-fraction", "1", "--radius-steps", "0", "--device", "cpu", "--json", js)
    assert code == 3, err
    assert "broken certificate" in err
    saved = tmp_path / "broken_certificates.safetensors"
    assert saved.is_file()
    t = load_file(str(saved))
    assert {"x", "x_adv", "labels", "margins_adv", "margins_lower_ibp"} <= set(t)
    # the saved adversarial points really are misclassified, within eps of x
    assert (t["x_adv"] - t["x"]).abs().max() <= 0.1 + 1e-6
    assert json.loads(js.read_text())["broken_certificates"] == t["x"].shape[0]


def test_same_seed_same_json_and_radius_matches_the_certificate(pc_run, tmp_path, a5ocr_main):
    args = [pc_run, "--samples-per-char", "6", "--attack", "fast", "--seed", "123", "--device", "cpu"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert a5ocr_main("evaluate", *args, "--json", a)[0] == 0
    assert a5ocr_main("evaluate", *args, "--json", b)[0] == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    ra.pop("seconds"), rb.pop("seconds")
    assert ra == rb and ra["seed"] == 123
    for key in ("samples", "eps_a", "clean_error", "attack_error", "certified_error", "broken_certificates", "per_char", "radius", "psnr_db"):
        assert key in ra
    assert (tmp_path / "certified_radius.png").is_file()

    # the radius against the certificate at eps_a: >= eps_a exactly where certified
    run = load_run(pc_run)
    ev = evaluate_run(run, samples_per_char=6, attack="none", seed=123, device="cpu")
    cert = ev.result.certified_any()
    assert cert.any() and (~cert).any()
    assert bool((ev.radius[cert] >= run.eps_a).all()) and bool((ev.radius[~cert] < run.eps_a).all())
    assert bool((ev.radius[~ev.result.correct] == 0).all())
    # each radius above its floor is a float64 IBP proof: re-check it from the same acquisitions
    x, labels = next(acquisitions(run.robust, Acquisition(run.resolution, run.acquisition), 6, 123))
    pos = ev.radius > 0
    ok = certify_batch(run.model, x[pos], labels[pos], ev.radius[pos], "ibp")
    proven_by_cascade = (ev.radius[pos] == run.eps_a) & cert[pos]
    assert bool((ok | proven_by_cascade).all())


def test_psnr_original_infinite_robust_finite(pc_run):
    run = load_run(pc_run)
    rob = evaluate_run(run, samples_per_char=1, attack="none", radius_steps=0, device="cpu")
    org = evaluate_run(run, original=True, samples_per_char=1, attack="none", radius_steps=0, device="cpu")
    assert torch.isfinite(rob.psnr).all() and (rob.psnr > 0).all()
    assert torch.isinf(org.psnr).all()
    assert org.report()["psnr_db"]["mean"] is None  # JSON null = identical
    assert math.isfinite(rob.report()["psnr_db"]["mean"])


def test_bad_options_raise_evaluate_error(pc_run):
    run = load_run(pc_run)
    for kw, needle in (({"eps_a": 1.5}, "--eps-a"), ({"methods": ("ibp", "milp")}, "unknown certification method"),
                       ({"attack": "strong"}, "--attack"), ({"check_fraction": 2.0}, "--check-fraction"),
                       ({"samples_per_char": 0}, "--samples-per-char")):
        with pytest.raises(EvaluateError, match=needle):
            evaluate_full(run.model, run.robust, run.chars, None, **{"eps_a": 0.05, **kw})


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing", "run folder not found"),
        ("no-glyphs", "no designs"),
        ("corrupt-classifier", "not a readable"),
        ("eps", "--eps-a must be in (0, 1)"),
        ("method", "unknown certification method"),
        ("eps-print", "--eps-print must be in [0, 1)"),
        ("eps-print-negative", "--eps-print must be in [0, 1)"),
    ],
)
def test_bad_input_is_one_line_exit_2(case, needle, pc_run, tmp_path, a5ocr_main):
    run = tmp_path / "run"
    extra: list = []
    if case == "missing":
        run = tmp_path / "nope"
    elif case == "no-glyphs":
        run.mkdir()
        shutil.copy(pc_run / "config.json", run / "config.json")
    elif case == "corrupt-classifier":
        shutil.copytree(pc_run, run)
        (run / "classifier.safetensors").write_bytes(b"garbage" * 10)
    else:
        run = pc_run
        extra = {"eps": ["--eps-a", "1.5"], "method": ["--method", "milp"], "eps-print": ["--eps-print", "1.5"],
                 "eps-print-negative": ["--eps-print=-0.1"]}[case]
    code, out, err = a5ocr_main("evaluate", run, *extra, "--samples-per-char", "1", "--attack", "none")
    assert code == 2, err
    assert needle in " ".join(err.split()) and "Traceback" not in err
    assert err.count("error:") == 1 and not out.strip()


# The real console script on a missing run folder (`python -m a5ocr.cli.app evaluate`): in
# tests/test_cli.py, beside the other console-script errors, its process run with theirs.


# ----------------------------------------------------------------------------- --eps-print
PRINT = ["--samples-per-char", "4", "--attack", "fast", "--check-fraction", "1", "--device", "cpu"]


def test_eps_print_zero_is_todays_evaluation(pc_run, tmp_path, a5ocr_main):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert a5ocr_main("evaluate", pc_run, *PRINT, "--json", a)[0] == 0
    assert a5ocr_main("evaluate", pc_run, *PRINT, "--eps-print", "0", "--json", b)[0] == 0
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    ra.pop("seconds"), rb.pop("seconds")
    assert ra == rb and "eps_print" not in ra


def test_eps_print_certified_and_attacked_through_the_cli(pc_run, tmp_path, a5ocr_main):
    """--eps-print alone (eps_A 0), then jointly with --eps-a: every figure consistent, no
    certified sample broken by the print attack (all of them attacked), certificates shrink as
    the threat grows, and the certificates are those of ``bounds.certify_print``."""
    reps = {}
    for name, extra in (("print", ["--eps-print", "0.05"]), ("joint", ["--eps-print", "0.05", "--eps-a", "0.02"])):
        js = tmp_path / f"{name}.json"
        code, out, err = a5ocr_main("evaluate", pc_run, *PRINT, *extra, "--json", js)
        assert code == 0, err
        assert "eps_print 0.05" in " ".join(out.split())
        reps[name] = rep = json.loads(js.read_text())
        assert rep["eps_print"] == 0.05 and "threat" in rep and "radius" not in rep
        assert rep["consistency"] == {"ok": True, "violations": []} and rep["broken_certificates"] == 0
        assert rep["attacked"]["certified_not_attacked"] == 0
        for cert in rep["certified_error"].values():
            assert rep["clean_error"] <= rep["attack_error"] <= cert
    assert reps["print"]["eps_a"] == 0 and reps["joint"]["eps_a"] == 0.02
    assert reps["print"]["certified_error"]["best"] < 1  # some samples certified: a test that can tell
    assert reps["joint"]["certified_error"]["best"] >= reps["print"]["certified_error"]["best"]
    # the same acquisitions and certificates as the library call on them
    run = load_run(pc_run)
    x, labels, batch = next(acquisitions(run.robust, Acquisition(run.resolution, run.acquisition), 4, run.eval_seed,
                                         with_params=True))
    cfg = Acquisition(run.resolution, run.acquisition).cfg
    ok = bounds.certify_print(run.model, batch.w, batch.params, cfg, labels, 0.05, 0.0, "ibp")
    ok &= run.model(x).argmax(1) == labels
    assert reps["print"]["certified_error"]["ibp"] == pytest.approx(1 - ok.double().mean().item(), abs=1e-12)


def test_a_broken_print_certificate_is_detected_and_saved(vanilla_run, tmp_path, monkeypatch, a5ocr_main):
    # An unsound print certifier: everything "certified". The print attack must expose it.
    monkeypatch.setattr(bounds, "certify_print", lambda model, w, p, cfg, labels, *a, **kw: torch.ones(labels.shape[0], dtype=torch.bool))
    js = tmp_path / "e.json"
    code, out, err = a5ocr_main("evaluate", vanilla_run, "--original", "--eps-print", "0.3", "--samples-per-char", "3",
                                "--attack", "fast", "--check-fraction", "1", "--device", "cpu", "--json", js)
    assert code == 3, err
    assert "broken certificate" in err
    t = load_file(str(tmp_path / "broken_certificates.safetensors"))
    assert {"x", "x_adv", "w", "w_adv", "dx", "labels", "margins_adv", "margins_lower_ibp"} <= set(t)
    assert (t["w_adv"] - t["w"]).abs().max() <= 0.3 + 1e-6 and t["dx"].abs().max() == 0
    assert json.loads(js.read_text())["broken_certificates"] == t["x"].shape[0] > 0
