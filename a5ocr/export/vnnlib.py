"""The evaluation's certificates as a VNN-COMP benchmark: an ONNX classifier and one VNNLIB
property per evaluation sample, so that any verifier (alpha,beta-CROWN, NNV, Marabou, ...) can
check what ``a5ocr evaluate`` certifies.

``export_vnnlib(run, folder, samples=N)`` writes, into a new folder (built beside it and renamed
into place, so a failure leaves nothing half-written)::

    folder/onnx/classifier.onnx     the classifier with its normalisation (``onnx_model``)
    folder/vnnlib/sample_00000.vnnlib ...  one property per sample
    folder/instances.csv            onnx path, vnnlib path, timeout (s), relative, as VNN-COMP
    folder/manifest.json            settings, seeds, versions, and per sample our verdicts

The samples are the first N acquisitions of the evaluation's own draw (``evaluation.acquisitions``
with the run's evaluation seed and ``samples_per_char`` as ``a5ocr evaluate`` uses them, on the
CPU), so sample i here is sample i of ``a5ocr evaluate --device cpu`` with the same options. The
input box of sample i is ``evaluation.certify.linf_box(x_i, eps_A)``: [x - eps_A, x + eps_A]
clipped to [0, 1] in float64, the box our certificate is about; every bound is written as the
shortest decimal that reads back as that float64 exactly. Inputs X_0 .. X_{3R^2-1} are the ONNX
input [1, 3, R, R] flattened in C order (NCHW); outputs Y_0 .. Y_{K-1} its logits. As VNN-COMP
does, the file asserts the box and the NEGATION of the property "Y_label > Y_j for all j !=
label", so the property holds iff the assertions are UNSAT.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from a5ocr.errors import ExportError, check_in_unit_interval
from a5ocr.evaluation import acquisitions
from a5ocr.evaluation.certify import cascade_names, certify_cascade, linf_box
from a5ocr.export.onnx_model import INPUT_NAME, OUTPUT_NAME, export_run_onnx
from a5ocr.runio import write_json
from a5ocr.runs import Run
from a5ocr.runtime import environment

VNNLIB_FORMAT = "a5ocr-vnnlib-1"
# ``a5ocr evaluate``'s default certificates: IBP, then CROWN-IBP on what IBP left (the cascade).
METHODS = ("ibp", "crown-ibp")
ONNX_PATH = "onnx/classifier.onnx"
INSTANCES = "instances.csv"
MANIFEST = "manifest.json"


@dataclass
class Samples:
    """The first n acquisitions of an evaluation and what our engine proves of them.

    ``x`` [n, 3, R, R] float32; ``labels``, ``prediction`` [n]; ``lower``, ``upper`` [n, 3, R, R]
    float64 (the certificate's box); ``certified``: cascade entry -> BoolTensor [n]."""

    x: torch.Tensor
    labels: torch.Tensor
    prediction: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    certified: dict[str, torch.Tensor]


def real(value: float) -> str:
    """An SMT-LIB decimal (no exponent) that reads back as exactly ``value`` (a float64)."""
    return np.format_float_positional(np.float64(value), unique=True, trim="0")


def evaluation_samples(run: Run, n: int, *, samples_per_char: int, seed: int, original: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` (x [n, 3, R, R], labels [n]) of the acquisitions ``evaluate_run`` certifies
    with ``samples_per_char`` and ``seed`` on the CPU: the same generator, glyphs and chunking."""
    glyphs = (run.original if original else run.robust).cpu()
    xs, ys, have = [], [], 0
    acq = run.camera()
    for x, labels in acquisitions(glyphs, acq, samples_per_char, seed):
        xs.append(x)
        ys.append(labels)
        have += labels.numel()
        if have >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def certify_samples(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, eps_a: float) -> Samples:
    """Our verdicts on x [n, 3, R, R]: the clean prediction and the ``METHODS`` cascade, as
    ``evaluate_samples`` computes them (``certify_cascade``), with the box they are about."""
    model = model.cpu().eval()
    with torch.no_grad():
        prediction = model(x).argmax(1)
    certs = certify_cascade(model, x, labels, prediction == labels, eps_a, METHODS, True)
    lower, upper = linf_box(x, eps_a)
    return Samples(x=x, labels=labels, prediction=prediction, lower=lower, upper=upper,
                   certified=dict(zip(cascade_names(METHODS, True), certs)))


def vnnlib_text(lower: np.ndarray, upper: np.ndarray, label: int, num_classes: int, comments: list[str]) -> str:
    """A VNNLIB property: X_i in [lower_i, upper_i] (flat float64 arrays) and the unsafe region
    "Y_j >= Y_label for some j != label"; ``comments`` become the ``;`` header lines."""
    lines = [f"; {c}" for c in comments]
    lines += ["", *(f"(declare-const X_{i} Real)" for i in range(lower.size))]
    lines += ["", *(f"(declare-const Y_{j} Real)" for j in range(num_classes)), "", "; input box"]
    for i, (lo, hi) in enumerate(zip(lower.tolist(), upper.tolist())):
        lines += [f"(assert (<= X_{i} {real(hi)}))", f"(assert (>= X_{i} {real(lo)}))"]
    others = [j for j in range(num_classes) if j != label]
    lines += ["", f"; unsafe: some class scores at least the label's (Y_{label})", "(assert (or"]
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in others]
    lines += ["))", ""]
    return "\n".join(lines)


def sample_comments(run: Run, s: Samples, i: int, settings: dict) -> list[str]:
    """The header of sample i's file: what it is, where it comes from, our verdicts."""
    label, pred = int(s.labels[i]), int(s.prediction[i])
    ch = run.chars[label]
    verdicts = "; ".join(f"{name} {'certified' if bool(c[i]) else 'not certified'}" for name, c in s.certified.items())
    r = run.resolution
    return [
        f"a5ocr VNNLIB property ({VNNLIB_FORMAT}) of run {run.path}",
        f"sample {i} of the evaluation: seed {settings['seed']}, {settings['samples_per_char']} acquisitions per "
        f"character, {settings['glyphs']} glyphs, drawn on the CPU",
        f"label {label} = {ch!r} (U+{ord(ch):04X}); clean prediction {pred} ({'correct' if pred == label else 'wrong'})",
        f"eps_A {settings['eps_a']!r}: box = [x - eps_A, x + eps_A] clipped to [0, 1], float64, as a5ocr certifies it",
        f"a5ocr verdict: {verdicts}",
        f"X_0 .. X_{3 * r * r - 1}: ONNX input {INPUT_NAME!r} [1, 3, {r}, {r}] flattened in C order (NCHW)",
        f"Y_0 .. Y_{len(run.chars) - 1}: ONNX output {OUTPUT_NAME!r}, logits of {run.chars!r} in that order",
        f"property: Y_{label} > Y_j for every j != {label}; its negation is asserted: the property holds iff UNSAT",
    ]


def check_vnnlib_options(run: Run, folder: Path | str, *, samples: int, samples_per_char: int, eps_a: float,
                         timeout: float) -> Path:
    """Every option of ``export_vnnlib`` checked before anything is computed or written."""
    folder = Path(folder)
    if samples_per_char < 1:
        raise ExportError("--samples-per-char must be at least 1")
    size = len(run.chars) * samples_per_char
    if not 1 <= samples <= size:
        raise ExportError(f"--samples must be in [1, {size}] ({len(run.chars)} characters x {samples_per_char} "
                          f"acquisitions), got {samples}")
    check_in_unit_interval(eps_a, "--eps-a", ExportError)
    if not timeout > 0:
        raise ExportError(f"--timeout must be > 0 seconds, got {timeout}")
    if not folder.parent.is_dir():
        raise ExportError(f"cannot write --vnnlib {folder}: folder {folder.parent} does not exist")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ExportError(f"--vnnlib {folder} already exists and is not an empty folder")
    return folder


def _versions() -> dict:
    out = {}
    for dist in ("onnx", "onnxruntime", "onnxscript"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _manifest(run: Run, s: Samples, settings: dict, onnx_info: dict, files: list[str]) -> dict:
    rows = [{"index": i, "vnnlib": files[i], "label": int(s.labels[i]), "char": run.chars[int(s.labels[i])],
             "prediction": int(s.prediction[i]), "correct": bool(s.prediction[i] == s.labels[i]),
             "certified": {name: bool(c[i]) for name, c in s.certified.items()}} for i in range(len(files))]
    counts = {name: int(c.sum()) for name, c in s.certified.items()}
    return {
        "format": VNNLIB_FORMAT, "run": str(run.path), "classifier": str(run.classifier_path),
        "classifier_sha256": onnx_info["classifier_sha256"], "chars": run.chars, "resolution": run.resolution,
        "settings": settings, "methods": list(METHODS), "cascade": True,
        "onnx": {"path": ONNX_PATH, "input": INPUT_NAME, "output": OUTPUT_NAME, **{k: onnx_info[k] for k in ("opset", "sha256", "max_abs_diff")}},
        "instances": INSTANCES, "certified_counts": counts, "samples": rows,
        "environment": {**environment(), "interchange_versions": _versions()},
    }


def _write_benchmark(tmp: Path, run: Run, s: Samples, settings: dict, onnx_info: dict | None) -> dict:
    """Every file of the benchmark into the folder ``tmp``; returns the manifest. ``onnx_info``:
    the result of ``export_run_onnx`` for this run, whose file is copied (None: export here)."""
    (tmp / "vnnlib").mkdir()
    n = s.labels.numel()
    files = [f"vnnlib/sample_{i:05d}.vnnlib" for i in range(n)]
    lower, upper = s.lower.reshape(n, -1).numpy(), s.upper.reshape(n, -1).numpy()
    for i, name in enumerate(files):
        text = vnnlib_text(lower[i], upper[i], int(s.labels[i]), len(run.chars), sample_comments(run, s, i, settings))
        (tmp / name).write_text(text)
    timeout = f"{settings['timeout']:g}"
    (tmp / INSTANCES).write_text("".join(f"{ONNX_PATH},{name},{timeout}\n" for name in files))
    if onnx_info is None:
        onnx_info = export_run_onnx(run, tmp / ONNX_PATH)
    else:
        (tmp / ONNX_PATH).parent.mkdir()
        shutil.copyfile(onnx_info["path"], tmp / ONNX_PATH)
    manifest = _manifest(run, s, settings, onnx_info, files)
    write_json(tmp / MANIFEST, manifest)
    return manifest


def export_vnnlib(run: Run, folder: Path | str, *, samples: int, samples_per_char: int = 100, seed: int | None = None,
                  eps_a: float | None = None, original: bool = False, timeout: float = 60.0,
                  onnx_info: dict | None = None) -> dict:
    """The benchmark folder of the first ``samples`` evaluation samples (see the module doc).

    ``seed``, ``eps_a`` default to the run's evaluation seed and eps_A, as ``a5ocr evaluate``'s;
    ``original``: the unmodified glyphs. ``onnx_info``: what ``export_run_onnx`` returned for this
    run's classifier, when it has just been exported: its file is copied rather than exported again.
    Returns the manifest (also written as ``manifest.json``).
    """
    eps = run.eps_a if eps_a is None else float(eps_a)
    seed = run.eval_seed if seed is None else int(seed)
    folder = check_vnnlib_options(run, folder, samples=samples, samples_per_char=samples_per_char, eps_a=eps, timeout=timeout)
    settings = {"samples": samples, "samples_per_char": samples_per_char, "seed": seed, "eps_a": eps,
                "glyphs": "original" if original else "robust", "draw_device": "cpu", "timeout": float(timeout)}
    x, labels = evaluation_samples(run, samples, samples_per_char=samples_per_char, seed=seed, original=original)
    s = certify_samples(run.model, x, labels, eps)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        manifest = _write_benchmark(tmp, run, s, settings, onnx_info)
        if folder.is_dir():
            folder.rmdir()  # empty (checked above): the finished folder takes its place
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return manifest
