"""What every export shares: the run's designs and source font as ``ExportError``s, output-path
checks, 8-bit ink images and the unit constants.

Input of every export: a design run folder (``a5ocr design``) with ``glyphs.safetensors`` (format
``a5ocr-glyphs-1``: "original", "robust" [K, S*R, S*R] ink in [0, 1], 1 = ink, at the print
resolution (S = ``print_scale``, 1 for older runs; R the sensor's, the classifier's input), and the
geometry that maps print pixels to font units; see ``a5ocr.runs.Design``). Every export that draws
glyphs (font outlines, sheets, PNGs) draws the print; the scan compares at the sensor's R. Every file is written through
``runio.atomic_path`` (temporary file + rename), so a failure leaves no partial file; bad input
raises ``ExportError`` (a ``ValueError``) with a readable message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from a5ocr import fonts, runs
from a5ocr.errors import ExportError, RunError
from a5ocr.runs import Design

MM_PER_INCH = 25.4
PT_PER_INCH = 72.0


def load_design(run_dir: Path | str) -> Design:
    """The run's designs (``runs.load_design``), a bad run folder as an ``ExportError``."""
    try:
        return runs.load_design(run_dir)
    except RunError as err:
        raise ExportError(str(err)) from None


def source_font(design: Design) -> Path:
    """The source font file; falls back to a shipped font of the same file name."""
    path = fonts.shipped_twin(design.font_path)
    if path is None:
        raise ExportError(f"source font of the run not found: {design.font_path}")
    return path


def canvas_text(design: Design) -> str:
    """The design's canvas in words: "32x32" (S = 1), or "128x128 print / 32x32 sensor" (S = 4)."""
    r, n = design.resolution, design.print_resolution
    return f"{r}x{r}" if n == r else f"{n}x{n} print / {r}x{r} sensor"


def check_output(path: Path | str, suffixes: tuple[str, ...], what: str) -> Path:
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ExportError(f"{what} must end in {' or '.join(suffixes)}, got {path.name!r}")
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a folder")
    return path


def ink_u8(w: torch.Tensor | np.ndarray) -> np.ndarray:
    """Ink [.., H, W] in [0, 1] -> 8-bit gray (0 = black ink, 255 = paper)."""
    arr = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
    return np.round((1.0 - np.clip(arr, 0.0, 1.0)) * 255.0).astype(np.uint8)


def mm_to_px(mm: float, dpi: float) -> float:
    return mm / MM_PER_INCH * dpi
