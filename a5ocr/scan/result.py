"""The result of reading a page: one ``ScanChar`` per character (label, box, confidence,
certificate, radius), the ``ScanResult`` of the page, and its outputs (JSON, overlay image)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from a5ocr.errors import PageError, ScanError
from a5ocr.evaluation import radius_cap
from a5ocr.runio import write_json as _write_json
from a5ocr.scan.certify import certify_canvases
from a5ocr.scan.page import to_u8, write_image
from a5ocr.scan.reader import Reader

SCAN_FORMAT = "a5ocr-scan-1"
OVERLAY_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class ScanChar:
    """One character read: label, box, confidence, certificate and radius."""

    char: str
    box: list[float]  # [x0, y0, x1, y1] in the page as read
    line: int
    confidence: float
    certified: bool
    radius: float
    space_before: bool = False
    second: str = ""
    second_confidence: float = 0.0
    expected: str | None = None  # sheets: the character printed in that box

    def to_dict(self) -> dict:
        d = {"label": self.char, "box": [round(v, 2) for v in self.box], "line": self.line,
             "confidence": round(self.confidence, 6), "certified": bool(self.certified), "radius": round(self.radius, 6),
             "runner_up": self.second, "runner_up_confidence": round(self.second_confidence, 6)}
        if self.expected is not None:
            d["expected"] = self.expected
            d["correct"] = self.expected == self.char
        return d


@dataclass
class ScanResult:
    """A page read: its characters in reading order, and what was found about the page."""

    page: str
    mode: str  # "text" or "sheet"
    eps_a: float
    method: str
    chars: list[ScanChar]
    page_px: tuple[int, int]
    info: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        out, line = [], None
        for c in self.chars:
            if line is not None and c.line != line:
                out.append("\n")
            elif c.space_before:
                out.append(" ")
            out.append(c.char)
            line = c.line
        return "".join(out)

    @property
    def certified_count(self) -> int:
        return sum(c.certified for c in self.chars)

    @property
    def certified_fraction(self) -> float | None:
        return self.certified_count / len(self.chars) if self.chars else None

    def to_dict(self) -> dict:
        n = len(self.chars)
        d = {
            "format": SCAN_FORMAT, "page": self.page, "mode": self.mode, "page_px": list(self.page_px),
            "eps_a": self.eps_a, "method": self.method, "text": self.text,
            "counts": {"characters": n, "certified": self.certified_count, "uncertified": n - self.certified_count,
                       "lines": len({c.line for c in self.chars})},
            "certified_fraction": self.certified_fraction,
            "radius_cap": radius_cap(self.eps_a),
        }
        if any(c.expected is not None for c in self.chars):
            d["accuracy"] = sum(c.expected == c.char for c in self.chars) / n if n else None
        d.update(self.info)
        d["units"] = "box = [x0, y0, x1, y1] in pixels of the page as read (y down); radius = certified L-inf radius of the normalised character image (at the cap: at least that)"
        d["characters"] = [c.to_dict() for c in self.chars]
        return d


def scan_chars(reader: Reader, probs: np.ndarray, x: torch.Tensor, eps_a: float, method: str, boxes, lines, spaces,
               expected=None) -> list[ScanChar]:
    """The characters read (probabilities [n, K], classifier inputs x [n, 3, R, R]), certified."""
    pred = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    cert, radius = certify_canvases(reader.model, x, torch.from_numpy(pred).long(), eps_a, method)
    out = []
    for i in range(len(pred)):
        order = np.argsort(-probs[i])
        second = int(order[1]) if probs.shape[1] > 1 else int(order[0])
        out.append(ScanChar(
            char=reader.chars[int(pred[i])], box=boxes[i], line=int(lines[i]), confidence=float(probs[i, pred[i]]),
            certified=bool(cert[i]), radius=float(radius[i]), space_before=bool(spaces[i]),
            second=reader.chars[second], second_confidence=float(probs[i, second]),
            expected=None if expected is None else expected[i],
        ))
    return out


def check_json_path(path: Path) -> None:
    """A ``--json`` output: a .json file in a folder that exists (else ``ScanError``)."""
    if path.suffix.lower() != ".json":
        raise ScanError(f"--json must end in .json, got {path.name!r}")
    if not path.parent.is_dir():
        raise ScanError(f"cannot write {path}: folder {path.parent} does not exist")


def check_overlay_path(path: Path) -> None:
    """An ``--overlay`` output: an image file (by suffix) in a folder that exists (else ``ScanError``)."""
    if path.suffix.lower() not in OVERLAY_SUFFIXES:
        raise ScanError(f"--overlay must be a .png (or .jpg, .tif), got {path.name!r}")
    if not path.parent.is_dir():
        raise ScanError(f"cannot write {path}: folder {path.parent} does not exist")


def write_json(result: ScanResult, path: Path | str) -> Path:
    """The result as JSON (``ScanResult.to_dict``), atomically."""
    path = Path(path)
    check_json_path(path)
    _write_json(path, result.to_dict())
    return path


def write_overlay(result: ScanResult, gray: np.ndarray, path: Path | str) -> Path:
    """The page with a box per character: green certified, red not."""
    path = Path(path)
    if path.suffix.lower() not in OVERLAY_SUFFIXES:
        raise ScanError(f"--overlay must be a .png (or .jpg, .tif), got {path.name!r}")
    img = Image.fromarray(to_u8(gray), mode="L").convert("RGB")
    draw = ImageDraw.Draw(img)
    width = max(1, round(max(gray.shape) / 1200))
    for c in result.chars:
        x0, y0, x1, y1 = c.box
        colour = (0, 170, 0) if c.certified else (230, 0, 0)
        draw.rectangle([x0 - width, y0 - width, x1 + width - 1, y1 + width - 1], outline=colour, width=width)
    try:
        write_image(path, img)
    except PageError as err:
        raise ScanError(str(err)) from None
    return path
