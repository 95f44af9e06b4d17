"""Run folders: atomic writes, the environment record, metrics logs.

Every file a run writes goes through a temporary file in the same folder and an
``os.replace``, so that Ctrl-C or a kill never leaves a half-written checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def ensure_writable_dir(path: Path | str) -> None:
    """Create ``path`` if needed and prove it writable; raises ``OSError`` otherwise."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / ".write-test"
    probe.write_text("ok")
    probe.unlink()


def write_json(path: Path | str, data: object) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_bytes(path: Path | str, payload: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def environment() -> dict:
    """Package versions and machine facts to store beside every run."""
    import numpy
    import torch

    from importlib import metadata

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__}
    # distribution versions from the installed metadata (module attributes differ: freetype-py's
    # ``version`` is a function, rich has none)
    for dist in ("kornia", "fonttools", "freetype-py", "pillow", "typer", "rich", "safetensors", "scipy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    try:
        import freetype

        versions["FreeType library"] = ".".join(str(v) for v in freetype.version())
    except Exception:  # noqa: BLE001 - the bundled library is a record, not a requirement
        pass
    import a5ocr

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


def append_jsonl(path: Path | str, record: dict) -> None:
    """Append one JSON record to a log (a line is small; appends are not made atomic)."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def read_jsonl(path: Path | str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill: stop there
    return rows


def save_module(module, path: Path | str, meta: dict[str, str]) -> None:
    """A module's weights (on the CPU) and string metadata to a safetensors file, atomically
    (never pickle)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def read_safetensors(path: Path | str) -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) of a safetensors file. Raises FileNotFoundError when it is missing and
    ValueError (with the reader's reason) when it is not a readable safetensors file."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(str(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(str(err)) from None
