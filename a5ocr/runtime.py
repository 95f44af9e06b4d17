"""What every run needs from the machine and from its caller: the device (``pick_device``), the
torch CPU threads (``set_threads``), the record of the machine and package versions stored
beside every run (``environment``), and the progress callbacks a run reports to (``Reporter``).

``a5ocr design``, ``a5ocr robustify`` and ``a5ocr reproduce`` take them from here; the command
line draws a ``Reporter`` with rich (``a5ocr.cli.progress``), tests and library callers use the
silent default.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from pathlib import Path

import freetype
import numpy
import torch

import a5ocr
from a5ocr.errors import A5Error, DesignError


def pick_device(name: str, error: type[A5Error] = DesignError) -> torch.device:
    """``auto`` (CUDA when there is one, else the CPU), ``cpu`` or ``cuda`` -> a torch device;
    ``error`` (one line) for an unknown name or a missing CUDA device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise error("--device cuda asked, but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise error(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def set_threads(threads: int | None, error: type[A5Error] = A5Error) -> None:
    """The ``--threads`` option: torch's CPU threads (None: torch's own choice); ``error`` below 1."""
    if threads is None:
        return
    if threads < 1:
        raise error("--threads must be at least 1")
    torch.set_num_threads(threads)


def environment() -> dict:
    """Package versions and machine facts to store beside every run."""
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__}
    # distribution versions from the installed metadata (module attributes differ: freetype-py's
    # ``version`` is a function, rich has none)
    for dist in ("kornia", "fonttools", "freetype-py", "pillow", "typer", "rich", "safetensors", "scipy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        versions["FreeType library"] = ".".join(str(v) for v in freetype.version())
    except Exception:  # noqa: BLE001 - the bundled library is a record, not a requirement
        pass
    versions["a5ocr"] = a5ocr.__version__
    return {
        "versions": {k: str(v) for k, v in versions.items()},
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Reporter:
    """Progress callbacks of a run; the CLI draws them with rich, tests ignore them.

    ``stage(name, total, done)`` when a training stage starts (or resumes at ``done``),
    ``log(record)`` for every metrics record, ``evaluation(name, done, total)`` during an
    end-of-run evaluation, ``message(text)`` for a line to show (e.g. where a run resumed)."""

    def stage(self, name: str, total: int, done: int = 0) -> None: ...
    def log(self, record: dict) -> None: ...
    def evaluation(self, name: str, done: int, total: int) -> None: ...
    def message(self, text: str) -> None: ...
