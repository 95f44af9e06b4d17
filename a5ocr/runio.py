"""Atomic file writes, JSON files and JSON-lines logs (the standard library only: the command
line uses it before torch is loaded).

Every file a run writes goes through a temporary file in the same folder and an
``os.replace``, so that Ctrl-C or a kill never leaves a half-written checkpoint. The
environment record is ``a5ocr.runtime.environment``; safetensors weight files are
``a5ocr.models.save_module`` / ``read_safetensors``; the run-folder lifecycle is
``a5ocr.runs.RunFolder``.
"""

from __future__ import annotations

import contextlib
import json
import os
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

