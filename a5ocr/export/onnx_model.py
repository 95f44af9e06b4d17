"""A run's classifier as ONNX, the network format of the verification community (VNN-COMP).

``export_onnx`` writes the whole classifier, its input normalisation included, so the ONNX model
takes acquired images in [0, 1] exactly as our certificates do: input ``"input"`` float32
[batch, 3, R, R] (NCHW, the batch axis dynamic), output ``"logits"`` float32 [batch, K] over the
run's characters (in the order of ``metadata_props["a5ocr.chars"]``). The file is checked by
``onnx.checker`` and by onnxruntime against the torch logits before it replaces ``path``.

The normalisation y = (x - mean) / std is written as a 1x1 ``Conv`` (weight diag(1 / std), bias
-mean / std; ``exchange_model``), not as ``Sub`` and ``Div``: verifiers that read only the
layer ops of VNN-COMP networks (Marabou 2.0's ONNX reader refuses ``Div`` and ``Mul``) then take
the file as it is. The onnxruntime check compares it with the run's own torch model.

Exporter: ``torch.onnx.export`` with ``dynamo=True`` (torch.export + onnxscript; the TorchScript
exporter is deprecated in torch 2.9+ and announced for removal), opset ``OPSET``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from a5ocr import runs
from a5ocr.errors import ExportError, RunError
from a5ocr.normalize import Normalize
from a5ocr.runio import atomic_path
from a5ocr.runs import Run

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# onnxruntime against torch on the probe batch: 1e-5 of the logits' scale (max(1, max |logit|)).
# Float32 cannot do better in absolute terms on a net whose logits reach ~100: the paper net of
# a CPU design run gives logits up to 118 on the random probe, and torch's own float32 logits
# differ from its float64 ones by 2.8e-5 there, so an absolute 1e-5 refused a correct export.
TOLERANCE = 1e-5
PROBE_BATCH = 3  # not the export example's batch (2), so the check exercises the dynamic axis


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter's log lines (torchvision ops skipped, opset conversion) and its
    deprecation warnings off: a CLI user sees our one-line summary, not the exporter's chatter."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _normalize_as_conv(layer: Normalize) -> nn.Conv2d:
    """A 1x1 convolution equal to ``layer``: x * (1 / std) + (-mean / std), channel by channel."""
    channels = layer.mean.numel()
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.diag((1.0 / layer.std).flatten()).view(channels, channels, 1, 1))
        conv.bias.copy_((-layer.mean / layer.std).flatten())
    return conv


def exchange_model(model: nn.Module) -> nn.Module:
    """The model as it is exported: a copy with every ``Normalize`` replaced by its 1x1 ``Conv``."""
    if isinstance(model, Normalize):
        return _normalize_as_conv(model)
    if isinstance(model, nn.Sequential):
        return nn.Sequential(*(exchange_model(m) for m in model))
    return model


def _to_onnx(model: nn.Module, resolution: int) -> onnx.ModelProto:
    """The traced ONNX graph of ``model`` (float32, CPU) with a dynamic batch axis."""
    example = torch.zeros(2, 3, resolution, resolution)
    batch = torch.export.Dim("batch", min=1)
    with _quiet_exporter():
        program = torch.onnx.export(
            model, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=OPSET,
            dynamic_shapes=({0: batch},), dynamo=True, verbose=False, external_data=False,
        )
    return program.model_proto


def onnx_logits(model_bytes: bytes | str | Path, x: np.ndarray) -> np.ndarray:
    """Logits [n, K] of an exported model (bytes or a path) on images x [n, 3, R, R] (onnxruntime, CPU)."""
    source = str(model_bytes) if isinstance(model_bytes, Path) else model_bytes
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _check(proto: onnx.ModelProto, payload: bytes, model: nn.Module, resolution: int) -> float:
    """onnx.checker (full, with shape inference) and onnxruntime vs torch on a seeded probe batch;
    returns the largest |difference| of the logits, ``ExportError`` above ``TOLERANCE`` times their scale."""
    onnx.checker.check_model(proto, full_check=True)
    probe = torch.rand(PROBE_BATCH, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(probe).numpy()
    got = onnx_logits(payload, probe.numpy())
    if got.shape != ref.shape:
        raise ExportError(f"the exported ONNX model disagrees with torch: logits {got.shape} vs {ref.shape}")
    diff = float(np.abs(got - ref).max())
    scale = max(1.0, float(np.abs(ref).max()))
    if not diff <= TOLERANCE * scale:
        raise ExportError(f"the exported ONNX model disagrees with torch: max |diff| of the logits {diff:g} > {TOLERANCE:g} x {scale:g} (their scale)")
    return diff


def export_onnx(model: nn.Module, path: Path | str, *, resolution: int, chars: str, meta: dict[str, str] | None = None) -> dict:
    """Write ``model`` (a classifier [B, 3, R, R] -> [B, K]) as an ONNX file at ``path``, atomically.

    ``meta``: extra ``metadata_props`` (strings) beside ``a5ocr.chars`` (JSON) and
    ``a5ocr.resolution``. Returns ``{"path", "opset", "sha256", "nodes", "max_abs_diff"}``.
    """
    model = model.cpu().float().eval()
    proto = _to_onnx(exchange_model(model), resolution)
    props = {"a5ocr.chars": json.dumps(chars), "a5ocr.resolution": str(resolution), **(meta or {})}
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = (f"a5ocr classifier: input {INPUT_NAME} float32 [batch, 3, {resolution}, {resolution}] in [0, 1] "
                        f"(normalisation inside), output {OUTPUT_NAME} [batch, {len(chars)}] logits")
    payload = proto.SerializeToString()
    diff = _check(proto, payload, model, resolution)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return {"path": str(path), "opset": OPSET, "sha256": hashlib.sha256(payload).hexdigest(),
            "nodes": [n.op_type for n in proto.graph.node], "max_abs_diff": diff}


def load_run(run_dir: Path | str) -> Run:
    """A design run with its classifier (``runs.load_run``), a bad run folder as an ``ExportError``."""
    try:
        return runs.load_run(run_dir)
    except RunError as err:
        raise ExportError(str(err)) from None


def export_run_onnx(run: Run, path: Path | str) -> dict:
    """``export_onnx`` of a run's classifier, the run folder and the classifier file's SHA-256 in
    its metadata (``a5ocr.run``, ``a5ocr.classifier_sha256``); the result adds ``classifier_sha256``."""
    digest = hashlib.sha256(Path(run.classifier_path).read_bytes()).hexdigest()
    info = export_onnx(run.model, path, resolution=run.resolution, chars=run.chars,
                       meta={"a5ocr.run": str(run.path), "a5ocr.classifier_sha256": digest})
    return {**info, "classifier_sha256": digest}
