"""Certificates others can check: the classifier as ONNX (onnxruntime gives the torch logits) and
one VNNLIB property per evaluation sample, read back by a small independent reader (and by the
VNN-LIB project's parser) into exactly the box and the property our certificate is about; the benchmark folder, its manifest, the CLI
and its bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import vnnlib
import vnnlib.parser

from a5ocr import export as ex
from a5ocr.acquisition import Acquisition
from a5ocr.errors import ExportError
from a5ocr.evaluation import evaluate_full
from a5ocr.evaluation.certify import linf_box
from a5ocr.export import vnnlib as vn

CHARS = "AOo0"
R = 32
SPC = 3  # acquisitions per character of the evaluation the samples come from
N = 10  # samples exported (of K * SPC = 12)


@pytest.fixture(scope="module")
def run_dir(gray_design_run) -> Path:
    """A tiny A5/PC design run of CHARS at R px, eps_A 0.01 (the session's, conftest: seconds)."""
    return gray_design_run


@pytest.fixture(scope="module")
def run(run_dir):
    return ex.load_run(run_dir)


def _evaluation(run, samples_per_char: int, methods=("ibp", "crown-ibp")):
    """What ``a5ocr evaluate`` (on the CPU, no attack, no radius) certifies, and the acquired
    images it certified, captured as they enter the classifier."""
    seen = []

    def capture(x, labels):
        seen.append(x.clone())
        return x

    ev = evaluate_full(run.model, run.robust, run.chars, Acquisition(run.resolution, run.acquisition), eps_a=run.eps_a,
                       samples_per_char=samples_per_char, seed=run.eval_seed, transform=capture, methods=methods,
                       attack="none", radius_steps=0)
    return ev, torch.cat(seen)


@pytest.fixture(scope="module")
def bench(run, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bench") / "benchmark"
    ex.export_vnnlib(run, folder, samples=N, samples_per_char=SPC, timeout=30)
    return folder


# ------------------------------------------------------------------ the test's VNNLIB reader
def _sexprs(text: str) -> list:
    """Top-level s-expressions of an SMT-LIB text (comments dropped), as nested lists of tokens."""
    tokens = re.findall(r"\(|\)|[^\s()]+", re.sub(r";[^\n]*", "", text))
    stack: list[list] = [[]]
    for tok in tokens:
        if tok == "(":
            stack.append([])
        elif tok == ")":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    assert len(stack) == 1, "unbalanced parentheses"
    return stack[0]


def _decimal(tok: str) -> float:
    assert re.fullmatch(r"\d+\.\d+", tok), f"not an SMT-LIB decimal: {tok}"
    return float(tok)


def read_vnnlib(text: str) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]], int]:
    """(lower, upper) float64 per X_i, the unsafe disjuncts as (j, l) for "Y_j >= Y_l", and the
    number of Y declared. Asserts that the file has exactly this shape and nothing else."""
    declared = {"X": [], "Y": []}
    lower, upper, disjuncts = {}, {}, None
    for form in _sexprs(text):
        if form[0] == "declare-const":
            assert form[2] == "Real"
            declared[form[1][0]].append(int(form[1][2:]))
            continue
        assert form[0] == "assert" and len(form) == 2
        body = form[1]
        if body[0] in ("<=", ">="):
            assert body[1].startswith("X_")
            (upper if body[0] == "<=" else lower)[int(body[1][2:])] = _decimal(body[2])
        else:
            assert body[0] == "or" and disjuncts is None
            disjuncts = []
            for conj in body[1:]:
                assert conj[0] == "and" and len(conj) == 2 and conj[1][0] == ">="
                disjuncts.append((int(conj[1][1][2:]), int(conj[1][2][2:])))
    n = len(declared["X"])
    assert declared["X"] == list(range(n)) and sorted(lower) == sorted(upper) == list(range(n))
    return (np.array([lower[i] for i in range(n)]), np.array([upper[i] for i in range(n)]), disjuncts,
            len(declared["Y"]))


def _unsafe(logits: np.ndarray, disjuncts: list[tuple[int, int]]) -> np.ndarray:
    """Which rows of logits [m, K] satisfy the asserted output region (some Y_j >= Y_l)."""
    return np.any([logits[:, j] >= logits[:, l] for j, l in disjuncts], axis=0)


# ------------------------------------------------------------------ ONNX
def test_onnx_model_gives_the_torch_logits_to_1e5_at_any_batch_size(run, bench):
    path = bench / "onnx/classifier.onnx"  # written by export_run_onnx (one export: the dynamo exporter takes seconds)
    man = json.loads((bench / "manifest.json").read_text())
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17 and man["onnx"]["opset"] == proto.opset_import[0].version
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, R, R]  # batch axis dynamic
    first = proto.graph.node[0]  # the normalisation is inside the model, as a 1x1 Conv
    assert first.op_type == "Conv" and [a.ints for a in first.attribute if a.name == "kernel_shape"] == [[1, 1]]
    # only layer ops that verifiers with a small ONNX reader take (Marabou 2.0 refuses Sub/Div/Mul)
    assert {n.op_type for n in proto.graph.node} <= {"Conv", "Relu", "Reshape", "Flatten", "Gemm", "AveragePool"}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["a5ocr.chars"]) == CHARS and meta["a5ocr.resolution"] == str(R)
    assert meta["a5ocr.classifier_sha256"] == man["classifier_sha256"]
    _, x = _evaluation(run, SPC, methods=("ibp",))
    for batch in (1, 5, x.shape[0]):
        with torch.no_grad():
            ref = run.model(x[:batch]).numpy()
        got = ex.onnx_logits(path, x[:batch].numpy())
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    # and outside the images' range (the ONNX model is the whole function, not a lookup)
    z = torch.rand(4, 3, R, R, generator=torch.Generator().manual_seed(3)) * 3 - 1
    with torch.no_grad():
        np.testing.assert_allclose(ex.onnx_logits(path, z.numpy()), run.model(z).numpy(), rtol=0, atol=1e-5)


def test_onnx_check_scales_with_the_logits_and_still_refuses_a_wrong_export(tmp_path, monkeypatch):
    from a5ocr.normalize import Normalize  # local: only this test builds its own net
    from a5ocr.export import onnx_model  # local: the module whose check is patched
    torch.manual_seed(0)
    net = torch.nn.Sequential(Normalize(0.5, 0.25), torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    with torch.no_grad():
        net[2].weight.mul_(1000.0)  # logits of order 1e3: float32 rounding alone is ~1e-4 absolute
    info = ex.export_onnx(net, tmp_path / "big.onnx", resolution=8, chars="abcd")
    probe = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        scale = float(net(probe).abs().max())
    assert scale > 100 and info["max_abs_diff"] <= 1e-5 * max(1.0, scale) * 10
    np.testing.assert_allclose(ex.onnx_logits(tmp_path / "big.onnx", probe.numpy()), net(probe).detach().numpy(),
                               rtol=2e-6, atol=1e-5)
    real = onnx_model.onnx_logits
    monkeypatch.setattr(onnx_model, "onnx_logits", lambda *a: real(*a) * (1 + 1e-3))  # a 0.1 % wrong model
    with pytest.raises(ExportError, match="disagrees with torch"):
        ex.export_onnx(net, tmp_path / "wrong.onnx", resolution=8, chars="abcd")
    assert not (tmp_path / "wrong.onnx").exists()


# ------------------------------------------------------------------ VNNLIB
def test_each_vnnlib_file_reads_back_as_exactly_the_certificates_box_and_property(run, bench):
    ev, x_eval = _evaluation(run, SPC)
    labels = ev.result.labels
    lower, upper = linf_box(x_eval[:N], run.eps_a)  # the box evaluate_full's certificate is about
    clipped = 0
    for i in range(N):
        lo, hi, disjuncts, k = read_vnnlib((bench / f"vnnlib/sample_{i:05d}.vnnlib").read_text())
        assert k == len(CHARS) and lo.size == 3 * R * R
        assert np.array_equal(lo, lower[i].flatten().numpy()) and np.array_equal(hi, upper[i].flatten().numpy())
        assert np.array_equal(lo.astype(np.float32), lower[i].flatten().numpy().astype(np.float32))
        label = int(labels[i])
        assert sorted(disjuncts) == [(j, label) for j in range(k) if j != label]
        clipped += int((hi == 1.0).sum() + (lo == 0.0).sum())
    assert clipped > 0  # the [0, 1] clipping is exercised (paper pixels near 1)


def _read_with_the_vnnlib_package(path: Path) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """The same three things as read by the VNN-LIB project's own parser (``vnnlib`` 0.0.1: the
    VNN-LIB 1.0 format of VNN-COMP; its 1.x releases read VNN-LIB 2.0), in strict mode."""
    lower, upper, disjuncts = {}, {}, []
    for cmd in vnnlib.parse_file(str(path), strict=True).commands:
        if not isinstance(cmd, vnnlib.parser.Assert):
            continue
        fn, terms = cmd.term.function.value, cmd.term.terms
        if fn in ("<=", ">="):
            (upper if fn == "<=" else lower)[int(terms[0].value[2:])] = float(terms[1].value)
            continue
        assert fn == "or"
        for conj in terms:
            (ge,) = conj.terms
            assert conj.function.value == "and" and ge.function.value == ">="
            disjuncts.append((int(ge.terms[0].value[2:]), int(ge.terms[1].value[2:])))
    n = len(lower)
    return np.array([lower[i] for i in range(n)]), np.array([upper[i] for i in range(n)]), disjuncts


def test_the_vnnlib_projects_parser_reads_the_same_box_and_property(bench):
    for i in (0, N - 1):
        path = bench / f"vnnlib/sample_{i:05d}.vnnlib"
        lo, hi, disjuncts, _ = read_vnnlib(path.read_text())
        lo2, hi2, disjuncts2 = _read_with_the_vnnlib_package(path)
        assert np.array_equal(lo, lo2) and np.array_equal(hi, hi2) and disjuncts == disjuncts2


def test_manifest_and_headers_carry_the_evaluations_verdicts(run, bench):
    ev, _ = _evaluation(run, SPC)
    man = json.loads((bench / "manifest.json").read_text())
    assert man["settings"] == {"samples": N, "samples_per_char": SPC, "seed": run.eval_seed, "eps_a": run.eps_a,
                               "glyphs": "robust", "draw_device": "cpu", "timeout": 30.0}
    assert man["environment"]["versions"]["torch"] == torch.__version__ and "onnxruntime" in man["environment"]["interchange_versions"]
    cert = ev.result.certified
    assert set(cert) == {"ibp", "ibp+crown-ibp"}
    for i, row in enumerate(man["samples"]):
        assert row["index"] == i and row["char"] == CHARS[int(ev.result.labels[i])]
        assert row["correct"] == bool(ev.result.correct[i])
        assert row["certified"] == {name: bool(c[i]) for name, c in cert.items()}
        head = (bench / row["vnnlib"]).read_text().split("\n(declare-const")[0]
        verdict = "; ".join(f"{n} {'certified' if v else 'not certified'}" for n, v in row["certified"].items())
        for part in (f"sample {i} of the evaluation: seed {run.eval_seed}", f"= {row['char']!r}",
                     f"eps_A {run.eps_a!r}", f"a5ocr verdict: {verdict}"):
            assert part in head
    # the tiny run certifies some samples and not others: the verdicts say something
    n_cert = sum(r["certified"]["ibp+crown-ibp"] for r in man["samples"])
    assert 0 < n_cert < N


def test_instances_csv_lists_relative_paths_and_the_timeout(bench):
    rows = list(csv.reader((bench / "instances.csv").read_text().splitlines()))
    assert rows == [["onnx/classifier.onnx", f"vnnlib/sample_{i:05d}.vnnlib", "30"] for i in range(N)]
    assert all((bench / r[0]).is_file() and (bench / r[1]).is_file() for r in rows)
    assert sorted(p.name for p in bench.iterdir()) == ["instances.csv", "manifest.json", "onnx", "vnnlib"]


def test_certified_properties_survive_random_points_of_their_box_through_onnxruntime(run, bench):
    man = json.loads((bench / "manifest.json").read_text())
    gen = np.random.default_rng(0)
    checked = 0
    for row in man["samples"]:
        if not row["certified"]["ibp+crown-ibp"]:
            continue
        lo, hi, disjuncts, _ = read_vnnlib((bench / row["vnnlib"]).read_text())
        pts = lo + (hi - lo) * gen.integers(0, 2, size=(64, lo.size))  # box corners
        pts = np.concatenate([pts, lo + (hi - lo) * gen.random((64, lo.size))])
        logits = ex.onnx_logits(bench / "onnx/classifier.onnx", pts.reshape(-1, 3, R, R).astype(np.float32))
        assert not _unsafe(logits, disjuncts).any()
        checked += 1
    assert checked > 0


def test_the_unsafe_region_holds_exactly_where_another_class_scores_at_least_the_label(run):
    x, _ = ex.evaluation_samples(run, 2, samples_per_char=SPC, seed=run.eval_seed)
    with torch.no_grad():
        logits = run.model(x).numpy()
    lo, hi = (t.flatten(1).numpy() for t in linf_box(x, run.eps_a))
    for i in range(2):
        top = int(logits[i].argmax())
        for label in range(len(CHARS)):
            _, _, disjuncts, _ = read_vnnlib(vn.vnnlib_text(lo[i], hi[i], label, len(CHARS), ["test"]))
            # the box's own image x is a witness (SAT) iff the label is not the strict top class
            assert bool(_unsafe(logits[i : i + 1], disjuncts)[0]) == (label != top)


def test_samples_are_the_first_n_of_the_evaluation_draw_across_chunks(run):
    spc = 300  # 1200 acquisitions: two chunks of the evaluation (1024 + 176)
    _, x_eval = _evaluation(run, spc, methods=("ibp",))
    x, labels = ex.evaluation_samples(run, 1100, samples_per_char=spc, seed=run.eval_seed)
    assert torch.equal(x, x_eval[:1100])
    assert torch.equal(labels, torch.arange(len(CHARS)).repeat(spc)[:1100])


def test_a_failure_while_writing_leaves_no_folder(run, tmp_path, monkeypatch):
    text, calls = vn.vnnlib_text, []

    def fail_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return text(*args)

    monkeypatch.setattr(vn, "vnnlib_text", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        ex.export_vnnlib(run, tmp_path / "bench", samples=5, samples_per_char=SPC)
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []  # neither the folder nor its temporary twin


# ------------------------------------------------------------------ the CLI
def test_cli_writes_the_onnx_file_and_the_benchmark(run_dir, tmp_path, a5ocr_main):
    code, out, err = a5ocr_main("export", run_dir, "--onnx", tmp_path / "c.onnx", "--vnnlib", tmp_path / "b",
                                "--samples", 4, "--samples-per-char", 2, "--threads", 1)
    assert code == 0, err
    assert (tmp_path / "c.onnx").is_file() and "VNN-COMP" in out
    man = json.loads((tmp_path / "b/manifest.json").read_text())
    assert man["settings"]["samples"] == 4 and len(list((tmp_path / "b/vnnlib").iterdir())) == 4
    assert (tmp_path / "b/onnx/classifier.onnx").read_bytes() == (tmp_path / "c.onnx").read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--vnnlib", "{t}/b"], "--vnnlib needs --samples"),
    (["--onnx", "{t}/c.onnx", "--samples", "3"], "--samples needs --vnnlib"),
    (["--vnnlib", "{t}/b", "--samples", "0", "--samples-per-char", "2"], "--samples must be in [1, 8]"),
    (["--vnnlib", "{t}/b", "--samples", "9", "--samples-per-char", "2"], "--samples must be in [1, 8]"),
    (["--vnnlib", "{t}/b", "--samples", "1", "--samples-per-char", "0"], "--samples-per-char must be at least 1"),
    (["--vnnlib", "{t}/no/b", "--samples", "1"], "does not exist"),
    (["--vnnlib", "{t}/full", "--samples", "1"], "already exists and is not an empty folder"),
    (["--vnnlib", "{t}/b", "--samples", "1", "--eps-a", "1.5"], "--eps-a"),
    (["--vnnlib", "{t}/b", "--samples", "1", "--timeout", "0"], "--timeout must be > 0"),
    (["--onnx", "{t}/c.pt"], "--onnx must end in .onnx"),
    (["--onnx", "{t}/e/c.onnx", "--vnnlib", "{t}/e", "--samples", "1"], "is inside --vnnlib"),
    (["--onnx", "{t}/no/c.onnx"], "does not exist"),
    (["--onnx", "{t}/c.onnx", "--threads", "0"], "--threads must be at least 1"),
    (["--onnx", "{t}/c.onnx", "--vnnlib", "{t}/b", "--samples", "99", "--samples-per-char", "2"], "--samples must be"),
])
def test_cli_bad_interchange_options_are_one_line_and_write_nothing(run_dir, tmp_path, a5ocr_main, args, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    (tmp_path / "e").mkdir()  # an empty folder: a valid --vnnlib
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, out, err = a5ocr_main("export", run_dir, *[a.format(t=tmp_path) for a in args])
    assert code == 2
    # one error line (the CLI's console folds a long one at the terminal width: unfolded here)
    assert err.startswith("error: ") and err.count("error:") == 1 and "Traceback" not in err
    assert message in " ".join(err.split())
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_library_refuses_a_folder_that_is_a_file(run, tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ExportError, match="not an empty folder"):
        ex.export_vnnlib(run, tmp_path / "f", samples=1, samples_per_char=1)
