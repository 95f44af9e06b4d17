"""The result of reading a page: one ``ScanChar`` per character (label, box, confidence,
certificate, radius), the ``ScanResult`` of the page, and its outputs (JSON, overlay image).

**Truth.** When the page's true text is known (a glyph sheet's layout, or a text page's truth:
``a5ocr render-text``'s ``page.png.truth.json``, or a text file), each character read carries
its ``expected`` character and the result counts what a user needs: characters read, correct,
certified, certified *and correct*, and certified but wrong (the worst case: a proof of a wrong
answer), each one listed. A text page is aligned to its truth without white space
(``align_to_truth``): a character read where the truth has none is wrong (expected ``""``); a
true character nothing was read for is *missed*. Without a truth every one of these is null:
nothing is guessed. Fractions of correctness are over the true characters.
"""

from __future__ import annotations

import difflib
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
from a5ocr.scan.reader import OUTSIDE_MARK, Reader

SCAN_FORMAT = "a5ocr-scan-2"  # 2: truth, correctness counts, expected/correct always present
OVERLAY_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
TRUTH_COUNTS = ("truth_characters", "correct", "wrong", "certified_correct", "certified_wrong", "missed")  # None without a truth


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
    expected: str | None = None  # the true character here; "" nothing there; None: no truth known
    read_as: str = ""  # for a character outside the alphabet (char = OUTSIDE_MARK): the class the classifier said
    prototype_error: tuple[float, float] | None = None  # ``reader.outside_alphabet``'s (ink, box) of the class read
    split: bool = False  # a piece of a component cut by recognition (``a5ocr.scan.split``): its image is part of one

    @property
    def outside_alphabet(self) -> bool:
        return self.char == OUTSIDE_MARK

    @property
    def correct(self) -> bool | None:
        return None if self.expected is None else self.expected == self.char

    def to_dict(self) -> dict:
        return {"label": self.char, "box": [round(v, 2) for v in self.box], "line": self.line,
                "confidence": round(self.confidence, 6), "certified": bool(self.certified), "radius": round(self.radius, 6),
                "runner_up": self.second, "runner_up_confidence": round(self.second_confidence, 6),
                "expected": self.expected, "correct": self.correct, "outside_alphabet": self.outside_alphabet,
                "read_as": self.read_as or self.char, "split": bool(self.split),
                "prototype_error": None if self.prototype_error is None else
                {"ink": round(self.prototype_error[0], 4), "box": round(self.prototype_error[1], 4)}}


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
    truth: dict | None = None  # {"source", "characters", "missed"} (``compare_with_truth``); sheets: from the layout

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

    def truth_known(self) -> dict | None:
        """The truth this page was compared with, or None; a sheet's from its layout."""
        if self.truth is not None:
            return self.truth
        if self.mode == "sheet" and self.chars and all(c.expected is not None for c in self.chars):
            return {"source": "sheet layout", "characters": len(self.chars), "missed": []}
        return None

    def counts(self) -> dict:
        """Characters read, certified, and (with a truth, else None) correct, certified and correct,
        certified but wrong, missed, and the number of true characters."""
        n, k = len(self.chars), self.certified_count
        out = {"characters": n, "certified": k, "uncertified": n - k, "lines": len({c.line for c in self.chars})}
        truth = self.truth_known()
        if truth is None:
            return {**out, **{key: None for key in TRUTH_COUNTS}}
        correct = sum(bool(c.correct) for c in self.chars)
        cert_correct = sum(bool(c.correct) and c.certified for c in self.chars)
        return {**out, "truth_characters": truth["characters"], "correct": correct, "wrong": n - correct,
                "certified_correct": cert_correct, "certified_wrong": k - cert_correct, "missed": len(truth["missed"])}

    def to_dict(self) -> dict:
        counts = self.counts()
        truth = self.truth_known()
        d = {
            "format": SCAN_FORMAT, "page": self.page, "mode": self.mode, "page_px": list(self.page_px),
            "eps_a": self.eps_a, "method": self.method, "text": self.text, "counts": counts,
            "certified_fraction": self.certified_fraction, **fractions(counts),
            "truth": None if truth is None else {"source": truth["source"], "characters": truth["characters"]},
            "certified_wrong": None if truth is None else
            [{"index": i, **c.to_dict()} for i, c in enumerate(self.chars) if c.certified and not c.correct],
            "missed": None if truth is None else truth["missed"],
            "radius_cap": radius_cap(self.eps_a),
        }
        d.update(self.info)
        d["units"] = "box = [x0, y0, x1, y1] in pixels of the page as read (y down); radius = certified L-inf radius of the normalised character image (at the cap: at least that)"
        d["characters"] = [c.to_dict() for c in self.chars]
        return d


def fractions(counts: dict) -> dict:
    """``accuracy`` (correct), ``certified_correct_fraction`` and ``certified_wrong_fraction``: over
    the true characters; None without a truth (or with no true character)."""
    t = counts["truth_characters"]
    if not t:
        return {"accuracy": None, "certified_correct_fraction": None, "certified_wrong_fraction": None}
    return {"accuracy": counts["correct"] / t, "certified_correct_fraction": counts["certified_correct"] / t,
            "certified_wrong_fraction": counts["certified_wrong"] / t}


def overall(results: list[ScanResult]) -> dict:
    """Several pages together: their counts summed, with the fractions; the correctness counts
    (``TRUTH_COUNTS``) are None unless every page has a truth."""
    pages = [r.counts() for r in results]
    total = {"pages": len(pages), **{key: sum(p[key] for p in pages) for key in ("characters", "certified", "uncertified", "lines")}}
    known = bool(pages) and all(p["truth_characters"] is not None for p in pages)
    total.update({key: sum(p[key] for p in pages) if known else None for key in TRUTH_COUNTS})
    frac = total["certified"] / total["characters"] if total["characters"] else None
    return {"counts": total, "certified_fraction": frac, **fractions(total)}


def align_to_truth(chars: list[ScanChar], truth_text: str) -> list[dict]:
    """Set each character's ``expected`` from ``truth_text`` (white space dropped on both sides);
    return the true characters no character read is aligned to (``{"index", "char"}``, index
    among the true non-space characters).

    The alignment is difflib's (the standard library's longest-matching-blocks alignment, no
    dependency): matched runs pair one to one; in a replaced run the characters pair in order,
    the surplus read ones get expected ``""`` (nothing there) and the surplus true ones are missed."""
    want = [c for c in truth_text if not c.isspace()]
    got = [c.char for c in chars]
    missed: list[dict] = []
    for _tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=got, b=want, autojunk=False).get_opcodes():
        pairs = min(i2 - i1, j2 - j1)
        for k in range(pairs):
            chars[i1 + k].expected = want[j1 + k]
        for i in range(i1 + pairs, i2):
            chars[i].expected = ""
        missed += [{"index": j, "char": want[j]} for j in range(j1 + pairs, j2)]
    return missed


def compare_with_truth(result: ScanResult, truth_text: str, source: str) -> ScanResult:
    """``result`` with every character's ``expected`` and its ``truth`` (``align_to_truth``), in place."""
    missed = align_to_truth(result.chars, truth_text)
    result.truth = {"source": source, "characters": sum(not c.isspace() for c in truth_text), "missed": missed}
    return result


def scan_chars(reader: Reader, probs: np.ndarray, x: torch.Tensor, eps_a: float, method: str, boxes, lines, spaces,
               expected=None, outside: tuple | None = None, split=None) -> list[ScanChar]:
    """The characters read (probabilities [n, K], classifier inputs x [n, 3, R, R]), certified.

    ``outside``: ``reader.outside_alphabet``'s (mask, ink error, box mismatch) (running text);
    a character in the mask is reported as ``OUTSIDE_MARK`` (outside the alphabet), not certified, radius 0.
    ``split``: per character, whether it is a piece cut from a component by recognition (``Glyph.cols``
    set); the certificate covers its normalised image as for any other character."""
    pred = probs.argmax(1) if len(probs) else np.zeros(0, np.int64)
    inside = np.ones(len(pred), bool) if outside is None else ~np.asarray(outside[0], bool)
    cert, radius = np.zeros(len(pred), bool), np.zeros(len(pred))
    if inside.any():
        sel = np.nonzero(inside)[0]
        cert[sel], radius[sel] = certify_canvases(reader.model, x[torch.from_numpy(sel)], torch.from_numpy(pred[sel]).long(),
                                                  eps_a, method)
    out = []
    for i in range(len(pred)):
        order = np.argsort(-probs[i])
        second = int(order[1]) if probs.shape[1] > 1 else int(order[0])
        label = reader.chars[int(pred[i])]
        out.append(ScanChar(
            char=label if inside[i] else OUTSIDE_MARK, box=boxes[i], line=int(lines[i]), confidence=float(probs[i, pred[i]]),
            certified=bool(cert[i]), radius=float(radius[i]), space_before=bool(spaces[i]),
            second=reader.chars[second], second_confidence=float(probs[i, second]),
            expected=None if expected is None else expected[i], read_as="" if inside[i] else label,
            prototype_error=None if outside is None else (float(outside[1][i]), float(outside[2][i])),
            split=bool(split[i]) if split is not None else False,
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
