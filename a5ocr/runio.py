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
import secrets
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The temporary file is created with mode 0666 less the process umask (0644 under the usual
    umask 022), as ``open(path, "w")`` would: ``tempfile.mkstemp`` makes 0600 files, which a
    font folder or another user cannot read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp(path)
    try:
        yield tmp_path
        # the writer may have made its own file in our place (safetensors' save_file leaves
        # 0600): the mode is set again, as open(path, "w") would have made it
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_temp(path: Path) -> Path:
    """Create (exclusively) an empty ``.<name>.<random>.tmp`` beside ``path``, mode 0666 & ~umask."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


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

