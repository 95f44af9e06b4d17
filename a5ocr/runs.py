"""Run folders: the files a run writes, read and written in one place.

* ``glyphs.safetensors`` (format ``a5ocr-glyphs-1``): a design's original and robust glyphs and
  their font geometry -- ``save_glyphs`` / ``load_design`` (``Design``);
* a design run folder as evaluation, export and scan read it -- ``load_run`` (``Run``): the
  glyphs, a classifier, the acquisition model, eps_A and the evaluation seed;
* ``default_eval_seed``: the evaluation seed every run derives from its training seed;
* the lifecycle of one run folder, shared by ``design``, ``robustify`` and ``reproduce`` --
  ``RunFolder``: open a new folder or resume one (with the settings check ``training_keys`` /
  ``settings_diff``), ``config.json``, the checkpoint, ``metrics.jsonl`` and ``summary.json``;
  ``slug`` names default folders; ``LEGACY_CONFIG_NAMES`` maps the config keys that old run
  folders spell differently (``current_config_names``).

Weight files are read and written beside the network they hold (``a5ocr.models`` for
classifiers, ``a5ocr.robustify.model`` for robustifiers), through ``a5ocr.models.save_module``
/ ``read_safetensors``; atomic writes are ``a5ocr.runio``'s, the environment record
``a5ocr.runtime.environment``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from a5ocr import models
from a5ocr.acquisition import Acquisition, AcquisitionConfig
from a5ocr.errors import A5Error, CheckpointError, RunError
from a5ocr.glyphs import GlyphSet
from a5ocr.runio import append_jsonl, atomic_path, ensure_writable_dir, read_jsonl, write_bytes, write_json
from a5ocr.runtime import environment

GLYPHS_FORMAT = "a5ocr-glyphs-1"
# The evaluation seed of a run whose config names none: distinct from every training seed's draws.
EVAL_SEED_OFFSET = 1_000_003
# config.json keys renamed since run folders were first written: old name -> current name.
LEGACY_CONFIG_NAMES = {"eval_samples": "samples_per_char"}
# config.json keys added since: their value in a record written before they existed (a design
# before print resolution printed on the sensor grid, with the paper's per-pixel change).
LEGACY_CONFIG_DEFAULTS = {"crown_k": None, "print_scale": 1, "parameterisation": None}
# The settings a resumed run may change: where it runs, and how often it checkpoints.
NOT_TRAINING_KEYS = ("device", "out", "checkpoint_seconds")
_MISSING = object()


def default_eval_seed(seed: int) -> int:
    """The evaluation seed of a run trained with ``seed`` (when the run names none)."""
    return seed + EVAL_SEED_OFFSET


@dataclass(frozen=True)
class Design:
    """A run's designed glyphs and their geometry.

    ``robust``, ``original``: [K, N, N] float32 ink in [0, 1], N = ``print_scale`` x
    ``resolution`` (the print grid; ``resolution`` is the sensor's R, the classifier's input;
    a file without ``print_scale`` is S = 1). Canvas point (u, v) in print pixels (continuous,
    pixel (col, row) covers [col, col+1] x [row, row+1]) of glyph k is at font units
    x = (u - origin_x[k]) * units_per_pixel, y = (baseline - v) * units_per_pixel.
    """

    run_dir: Path
    chars: str
    robust: torch.Tensor
    original: torch.Tensor
    font_path: str
    family: str
    resolution: int
    eps_d: float
    eps_a: float | None
    ink: str
    units_per_em: int
    units_per_pixel: float
    baseline: float
    origin_x: tuple[float, ...]
    print_scale: int = 1

    @property
    def print_resolution(self) -> int:
        return self.resolution * self.print_scale

    def to_font_units(self, k: int, pts: np.ndarray) -> np.ndarray:
        """Canvas points [n, 2] (u, v) of glyph k -> font units [n, 2] (x, y), y up."""
        out = np.empty_like(pts, dtype=np.float64)
        out[:, 0] = (pts[:, 0] - self.origin_x[k]) * self.units_per_pixel
        out[:, 1] = (self.baseline - pts[:, 1]) * self.units_per_pixel
        return out


def _read_eps_a(run_dir: Path) -> float | None:
    for name, keys in (("summary.json", ("eps_a",)), ("config.json", ("config", "eps_a"))):
        try:
            d = json.loads((run_dir / name).read_text())
            for k in keys:
                d = d[k]
            return float(d)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def load_design(run_dir: Path | str) -> Design:
    """Read ``glyphs.safetensors`` of a run folder; ``RunError`` if absent or malformed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    path = run_dir / "glyphs.safetensors"
    if not path.is_file():
        raise RunError(f"{run_dir} holds no designs (no glyphs.safetensors; run `a5ocr design` first)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise RunError(f"{path} is not a readable safetensors file: {err}") from None
    if meta.get("format") != GLYPHS_FORMAT:
        raise RunError(f"{path} is not an a5ocr design (format {meta.get('format')!r}, expected {GLYPHS_FORMAT!r})")
    try:
        chars = json.loads(meta["chars"])
        resolution = int(meta["resolution"])
        origin_x = tuple(float(v) for v in json.loads(meta["origin_x"]))
        design = Design(
            run_dir=run_dir,
            chars=str(chars),
            robust=tensors["robust"].float(),
            original=tensors["original"].float(),
            font_path=meta["font"],
            family=meta.get("family", "") or Path(meta["font"]).stem,
            resolution=resolution,
            eps_d=float(meta["eps_d"]),
            eps_a=_read_eps_a(run_dir),
            ink=meta.get("ink", "gray"),
            units_per_em=int(meta["units_per_em"]),
            units_per_pixel=float(meta["units_per_pixel"]),
            baseline=float(meta["baseline"]),
            origin_x=origin_x,
            print_scale=int(meta.get("print_scale", "1")),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise RunError(f"{path}: incomplete design metadata ({err})") from None
    if design.print_scale < 1:
        raise RunError(f"{path}: print scale {design.print_scale} (must be at least 1)")
    k = len(design.chars)
    shape = (k, design.print_resolution, design.print_resolution)
    for name in ("robust", "original"):
        t = getattr(design, name)
        if tuple(t.shape) != shape:
            raise RunError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
        if not torch.isfinite(t).all():
            raise RunError(f"{path}: tensor {name!r} has non-finite values")
    if len(origin_x) != k or design.units_per_pixel <= 0 or design.units_per_em <= 0:
        raise RunError(f"{path}: inconsistent geometry metadata")
    return design


def save_glyphs(path: Path, glyphs: GlyphSet, robust, *, eps_d: float, ink: str) -> None:
    """glyphs.safetensors: original, robust [K, S*R, S*R] and z; metadata for export (the
    geometry in print pixels, ``resolution`` the sensor's R, ``print_scale`` S).

    ``robust`` is the glyph module of training (``a5ocr.training.RobustGlyphs``: its ``base``,
    its output and its parameters ``z``); ``eps_d`` and ``ink`` are the design's."""
    with torch.no_grad():
        tensors = {"original": robust.base.cpu().contiguous(), "robust": robust().cpu().contiguous(), "z": robust.z.detach().cpu().contiguous()}
    meta = {
        "format": GLYPHS_FORMAT,
        "chars": json.dumps(glyphs.chars),
        "font": glyphs.font_path,
        "family": glyphs.family,
        "resolution": str(glyphs.resolution),
        "eps_d": str(eps_d),
        "ink": ink,
        "units_per_em": str(glyphs.units_per_em),
        "units_per_pixel": repr(glyphs.units_per_pixel),
        "baseline": repr(glyphs.baseline),
        "origin_x": json.dumps(list(glyphs.origin_x)),
        "print_scale": str(glyphs.print_scale),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


@dataclass
class Run:
    """What ``a5ocr evaluate`` needs from a design run folder."""

    path: Path
    chars: str
    resolution: int  # the sensor's R: the classifier's input
    robust: torch.Tensor  # [K, S*R, S*R] ink (the print)
    original: torch.Tensor  # [K, S*R, S*R] ink
    model: nn.Module
    classifier_path: Path
    acquisition: AcquisitionConfig
    eps_a: float
    eval_seed: int
    config: dict
    summary: dict | None
    family: str = ""
    font_path: str = ""
    print_scale: int = 1  # S: the glyphs are printed S times finer than the sensor's grid

    def camera(self) -> Acquisition:
        """The run's acquisition model: its camera settings, sensor R and print scale S."""
        return Acquisition(self.resolution, self.acquisition, print_scale=self.print_scale)


def read_json(path: Path) -> dict | None:
    """A JSON object file, or None when it does not exist; ``RunError`` when it is not one."""
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RunError(f"{path} is not readable JSON: {err}") from None
    if not isinstance(d, dict):
        raise RunError(f"{path} is not a JSON object")
    return d


def load_run(run_dir: Path | str, classifier: Path | str | None = None) -> Run:
    """Read a design run folder: glyphs.safetensors, classifier.safetensors (or ``classifier``),
    config.json (acquisition, eps_a, eval seed) and summary.json when present.

    Raises ``RunError`` (one readable line) on a missing folder or file, a corrupt file, or
    a classifier that does not fit the glyphs.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    config_rec = read_json(run_dir / "config.json")
    if config_rec is None:
        raise RunError(f"{run_dir} is not a design run (no config.json; run `a5ocr design` first)")
    cfg = config_rec.get("config")
    if not isinstance(cfg, dict):
        raise RunError(f"{run_dir / 'config.json'} has no 'config' record")
    design = load_design(run_dir)
    clf_path = Path(classifier) if classifier is not None else run_dir / "classifier.safetensors"
    if classifier is None and not clf_path.is_file():
        raise RunError(f"{run_dir} holds no classifier (no classifier.safetensors; the run has not finished a stage)")
    try:
        model, meta = models.load_classifier(clf_path)
    except CheckpointError as err:
        raise RunError(str(err)) from None
    if meta["chars"] != design.chars:
        raise RunError(f"classifier {clf_path} reads {meta['chars']!r}, but the run's glyphs are {design.chars!r}")
    if meta["resolution"] != design.resolution:
        raise RunError(f"classifier {clf_path} takes {meta['resolution']}px images, the glyphs are for a {design.resolution}px sensor")
    try:
        acq = AcquisitionConfig.from_dict(cfg.get("acquisition") or {})
    except (TypeError, ValueError) as err:
        raise RunError(f"{run_dir / 'config.json'}: bad acquisition config ({err})") from None
    cfg = current_config_names(cfg)
    summary = read_json(run_dir / "summary.json")
    try:
        eps_a = float((summary or {}).get("eps_a", cfg.get("eps_a")))
        seed = (summary or {}).get("eval_seed", cfg.get("eval_seed"))
        eval_seed = int(seed) if seed is not None else default_eval_seed(int(cfg.get("seed", 0)))
    except (TypeError, ValueError) as err:
        raise RunError(f"{run_dir}: no usable eps_a / eval_seed in summary.json or config.json ({err})") from None
    return Run(
        path=run_dir, chars=design.chars, resolution=design.resolution, robust=design.robust,
        original=design.original, model=model, classifier_path=clf_path, acquisition=acq,
        eps_a=eps_a, eval_seed=eval_seed, config=cfg, summary=summary, family=design.family, font_path=design.font_path,
        print_scale=design.print_scale,
    )


# =========================================================================== run folders
def current_config_names(config: dict) -> dict:
    """A config record in today's terms: the keys old run folders spell differently renamed
    (``LEGACY_CONFIG_NAMES``: ``eval_samples`` -> ``samples_per_char``), the keys added since
    filled with what a record without them meant (``LEGACY_CONFIG_DEFAULTS``); others as they are."""
    return {**LEGACY_CONFIG_DEFAULTS, **{LEGACY_CONFIG_NAMES.get(k, k): v for k, v in config.items()}}


def training_keys(config: dict) -> dict:
    """The part of a config record that a resumed run must share with the interrupted one:
    everything but ``NOT_TRAINING_KEYS``, legacy names mapped."""
    return {k: v for k, v in current_config_names(config).items() if k not in NOT_TRAINING_KEYS}


def settings_diff(old: dict, new: dict) -> list[str]:
    """The names (sorted) of the training settings in which two config records differ, both
    compared as JSON (tuples as lists) with legacy names mapped; a key only one side has differs."""
    a, b = training_keys(_as_json(old)), training_keys(_as_json(new))
    return sorted(k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING))


def _as_json(d: dict) -> dict:
    return json.loads(json.dumps(d))


def slug(name: str, empty: str = "") -> str:
    """A folder-name slug: lower case, every other character than a letter or digit a dash, no
    dash at either end (``"Comic Neue"`` -> ``"comic-neue"``); ``empty`` when nothing is left."""
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-") or empty


class RunFolder:
    """The lifecycle of one run folder (``design``, ``robustify``, the rows of ``reproduce``).

    ``RunFolder.open(out, error)`` makes the folder and proves it writable; ``start(config, ...)``
    claims it for a new run (refused when it already holds one) or, with ``resume``, checks that
    there is a run to continue with the same training settings; then writes ``config.json``
    (``{"kind"?, "config", extra..., "environment", "device"}``). Every user error is raised as
    ``error`` (``DesignError``, ``RobustifyError``, ...), one line.

    Paths: ``config_path``, ``checkpoint``, ``metrics``, ``summary_path``, ``folder / name``.
    ``append_metrics`` adds ``wall_seconds`` (since ``started``, a ``time.monotonic()`` value)
    to a record and appends it to ``metrics.jsonl``.
    """

    def __init__(self, path: Path | str, error: type[A5Error] = RunError, *, started: float | None = None):
        self.path = Path(path)
        self.error = error
        self.started = time.monotonic() if started is None else started

    @classmethod
    def open(cls, path: Path | str, error: type[A5Error] = RunError, *, started: float | None = None) -> "RunFolder":
        """The folder ``path``, created if needed; ``error`` when it cannot be written."""
        folder = cls(path, error, started=started)
        try:
            ensure_writable_dir(folder.path)
        except OSError as err:
            raise error(f"cannot write to --out {folder.path}: {err.strerror or err}") from None
        return folder

    # -- paths ----------------------------------------------------------------------------
    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def holds_run(self) -> bool:
        """A run has been started here (a checkpoint) or finished (a summary)."""
        return self.checkpoint.is_file() or self.summary_path.is_file()

    # -- config.json, resume ----------------------------------------------------------------
    def read_config(self) -> dict:
        """The ``config`` record of ``config.json`` with legacy names mapped ({} when it has none)."""
        try:
            rec = read_json(self.config_path)
        except RunError as err:
            raise self.error(str(err)) from None
        cfg = (rec or {}).get("config")
        return current_config_names(cfg) if isinstance(cfg, dict) else {}

    def check_resumable(self, *, needs_checkpoint: bool = True) -> None:
        """There is a run to resume: ``config.json`` and (``needs_checkpoint``) ``checkpoint.pt``."""
        if needs_checkpoint:
            if not self.checkpoint.is_file() or not self.config_path.is_file():
                raise self.error(f"nothing to resume in {self.path} (no checkpoint.pt)")
        elif not self.config_path.is_file():
            raise self.error(f"nothing to resume in {self.path} (no config.json)")

    def check_compatible(self, config: dict) -> None:
        """``config`` has the training settings of the run in this folder (``settings_diff``)."""
        diff = settings_diff(self.read_config(), config)
        if diff:
            raise self.error(f"--resume with different settings than the interrupted run: {', '.join(diff)}")

    def start(self, config: dict, *, device: object, resume: bool = False, needs_checkpoint: bool = True,
              kind: str | None = None, extra: dict | None = None) -> None:
        """Claim the folder for ``config``: with ``resume`` the run to continue must be here with the
        same settings; without, the folder must hold no run. Then writes ``config.json``."""
        if resume:
            self.check_resumable(needs_checkpoint=needs_checkpoint)
            self.check_compatible(config)
        elif self.holds_run():
            raise self.error(f"{self.path} already holds a run; use --resume to continue it or --out for a new folder")
        self.write_config(config, device=device, kind=kind, extra=extra)

    def write_config(self, config: dict, *, device: object, kind: str | None = None, extra: dict | None = None) -> None:
        """``config.json``: ``{"kind": kind}`` (when given), the config, ``extra``, the environment, the device."""
        head = {"kind": kind} if kind else {}
        write_json(self.config_path, {**head, "config": config, **(extra or {}), "environment": environment(),
                                      "device": str(device)})

    # -- metrics, summary -------------------------------------------------------------------
    def elapsed(self) -> float:
        """Seconds since ``started``."""
        return time.monotonic() - self.started

    def reset_metrics(self) -> None:
        """A fresh run: no metrics of an earlier attempt."""
        self.metrics.unlink(missing_ok=True)

    def trim_metrics(self, stages: list[str], stage_index: int, step: int) -> int:
        """On resume from a checkpoint at ``step`` of stage ``stage_index`` (``stages``: the
        stages' names, as the records' "stage"): drop the records an interrupted attempt logged
        past it (they are logged again) and a last line cut by a kill, so that the log reads as
        one run. Returns how many records were dropped."""
        rows = self.read_metrics()
        keep = []
        for r in rows:
            at = stages.index(r["stage"]) if r.get("stage") in stages else -1
            if at > stage_index or (at == stage_index and int(r.get("step", 0)) > step):
                break
            keep.append(r)
        write_bytes(self.metrics, "".join(json.dumps(r) + "\n" for r in keep).encode())
        return len(rows) - len(keep)

    def append_metrics(self, record: dict) -> dict:
        """``record`` with ``wall_seconds``, appended to ``metrics.jsonl``; returns it."""
        record = {**record, "wall_seconds": round(self.elapsed(), 2)}
        append_jsonl(self.metrics, record)
        return record

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics)

    def write_summary(self, summary: dict) -> None:
        write_json(self.summary_path, summary)
