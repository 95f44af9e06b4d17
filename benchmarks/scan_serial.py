"""A page of serial numbers (letters, digits and ``-/.:``) printed in a run's robust font and in
its source font, degraded as a scanner would, read by ``a5ocr scan`` (issue 14).

Not a test: the full-scale measurement on a real design run (e.g. the 62-character ``cpu``-preset
A5/PC runs). It exports the run's robust font (``a5ocr export --font``, which keeps the source's
punctuation), renders the same serial-number text (``serial_text``: lines such as
``SN-4521/B.7 LOT:QX-09/31.``) at each ``--sizes`` point size with ``a5ocr render-text``'s
degradation (one page per seed), in the robust font and in the source font, and scans each page
with the real command ``a5ocr scan PAGE --run RUN --json`` (one process per page, one torch thread).

**Characters outside the alphabet.** The classifier knows only the run's characters (62) and
has no reject class: it reads a hyphen, slash, full stop or colon as one of them, often with full
confidence and even certified (the certificate is about the classifier's input, not about which
character was printed). ``a5ocr scan`` therefore compares each normalised character with the
prototype of the class read and reports one that matches it too poorly as outside the alphabet
(U+FFFD, not certified; ``a5ocr.scan.reader.OUTSIDE_ERROR``). This benchmark does not hide what
is left. It matches each true character to the character read at its place by their page boxes
(one to one, the largest box IoU first, IoU >= 0.3; render-text's truth boxes and the scan's
boxes are both in the degraded page's pixels), and reports:

* designed characters (those of the run's alphabet in the truth): read correctly (matched, and
  read as that character) and certified-and-correct, as fractions of the designed characters in
  the truth; missed (no box matched) and how many were merged with a neighbour;
* designed characters wrongly reported as outside the alphabet (``designed_flagged_outside``);
* outside-alphabet characters (``-/.:``): how many were found as a component at all, how many the
  scan reported as outside the alphabet (``outside_flagged``), what the others were read as, and
  how many of those were certified (``certified_outside``: a certificate of a wrong letter);
* designed characters read from a piece of a split (the scan's ``split`` flag: a component cut
  by recognition, ``a5ocr.scan.split``), how many of them are right, and how many certified but wrong;
* components read where no true character is (``spurious``), and the scan's own text alignment
  (``a5ocr scan``'s ``accuracy`` against render-text's truth, over all characters, punctuation
  included: every punctuation mark is an error there).

    python benchmarks/scan_serial.py renders/comic-neue-62-0.1 [--sizes 12 9] [--seeds 0 1 2] [--out DIR]

Writes pages, scans (JSON) and ``summary.json`` (settings, versions, rows) in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from a5ocr.export import export_font
from a5ocr.runs import load_design
from a5ocr.scan.render_text import RenderOptions, render_text, write_page

PUNCT = "-/.:"


def serial_text(chars: str, lines: int, seed: int = 0) -> str:
    """``lines`` lines of serial-number-like fields, e.g. ``SN-4521/B.7 LOT:QX-09/31.``, drawn from
    the run's upper-case letters and digits (all of ``chars`` when it has neither) and ``-/.:``."""
    rng = random.Random(seed)
    upper = [c for c in chars if c.isupper()] or list(chars)
    digits = [c for c in chars if c.isdigit()] or list(chars)
    lower = [c for c in chars if c.islower()] or upper

    def word(pool, lo, hi):
        return "".join(rng.choice(pool) for _ in range(rng.randint(lo, hi)))

    fields = [
        lambda: f"{word(upper, 2, 3)}-{word(digits, 3, 5)}/{word(upper, 1, 1)}.{word(digits, 1, 2)}",
        lambda: f"{word(upper, 3, 3)}:{word(upper, 2, 2)}-{word(digits, 2, 2)}/{word(digits, 2, 2)}.",
        lambda: f"{word(digits, 2, 4)}.{word(digits, 2, 3)}-{word(upper + lower, 2, 4)}",
        lambda: f"{word(upper, 1, 2)}{word(digits, 4, 6)}:{word(lower, 2, 3)}/{word(upper, 1, 2)}-{word(digits, 1, 3)}",
    ]
    return "\n".join(" ".join(rng.choice(fields)() for _ in range(3)) for _ in range(lines))


def box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(truth: list[dict], read: list[dict], min_iou: float = 0.3) -> tuple[dict, np.ndarray]:
    """One-to-one matching of true to read characters by box IoU (greedy, largest first, >= min_iou):
    (true index -> read index, the IoU matrix [n_true, n_read])."""
    m = np.array([[box_iou(t["box"], r["box"]) for r in read] for t in truth]).reshape(len(truth), len(read))
    pairs, used_t, used_r = {}, set(), set()
    for flat in np.argsort(-m, axis=None):
        i, j = divmod(int(flat), max(len(read), 1))
        if m[i, j] < min_iou:
            break
        if i not in used_t and j not in used_r:
            pairs[i] = j
            used_t.add(i)
            used_r.add(j)
    return pairs, m


def score_page(truth: dict, scan: dict, alphabet: str) -> dict:
    """The counts of one page (the module doc)."""
    tchars, read = truth["chars"], scan["characters"]
    pairs, m = match_boxes(tchars, read)
    matched = set(pairs.values())
    c = Counter()
    outside_read = Counter()
    for i, t in enumerate(tchars):
        designed = t["char"] in alphabet
        key = "designed" if designed else "outside"
        c[key] += 1
        j = pairs.get(i)
        if j is None:
            c[f"{key}_missed"] += 1
            # merged: it overlaps a read box that another true character got
            c[f"{key}_merged"] += any(m[i, k] > 0 for k in matched)
            continue
        r = read[j]
        if designed:
            ok = r["label"] == t["char"]
            c["designed_correct"] += ok
            c["designed_certified_correct"] += ok and r["certified"]
            c["designed_certified_wrong"] += (not ok) and r["certified"]
            c["designed_flagged_outside"] += bool(r.get("outside_alphabet"))
            c["designed_split"] += bool(r.get("split"))  # read from a piece of a split (scan's JSON "split")
            c["designed_split_correct"] += bool(r.get("split")) and ok
            c["designed_split_certified_wrong"] += bool(r.get("split")) and (not ok) and r["certified"]
        else:
            c["outside_found"] += 1
            c["outside_flagged"] += bool(r.get("outside_alphabet"))
            c["certified_outside"] += bool(r["certified"])
            outside_read[f"{t['char']}->{r['label']}"] += 1
    c["spurious"] = len(read) - len(pairs)
    return {"counts": dict(c), "outside_read_as": dict(outside_read), "scan_accuracy": scan.get("accuracy"),
            "scan_certified_correct_fraction": scan.get("certified_correct_fraction")}


def scan_page(page: Path, run: Path, out_json: Path, eps_a, method: str) -> dict:
    """``a5ocr scan PAGE --run RUN --json OUT`` in its own process (the real command)."""
    cmd = [sys.executable, "-m", "a5ocr.cli.app", "scan", str(page), "--run", str(run), "--json", str(out_json),
           "--method", method, "--threads", "1"] + ([] if eps_a is None else ["--eps-a", str(eps_a)])
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise SystemExit(f"a5ocr scan failed on {page}: {r.stderr.strip()}")
    return json.loads(out_json.read_text())


def measure(args, text: str, alphabet: str, fname: str, fpath: str, size: float, out: Path) -> dict:
    """One font at one size over the seeds: the row of the summary."""
    tot, outside_read, acc = Counter(), Counter(), []
    for seed in args.seeds:
        opts = RenderOptions(dpi=args.dpi, size_pt=size, seed=seed)
        gray, truth = render_text(text, fpath, opts)
        tag = f"{fname.split()[0]}-{size:g}pt-seed{seed}"
        page, _ = write_page(out / f"{tag}.png", gray, truth, args.dpi)
        s = score_page(truth, scan_page(page, args.run, out / f"{tag}.scan.json", args.eps_a, args.method), alphabet)
        tot.update(s["counts"])
        outside_read.update(s["outside_read_as"])
        acc.append(s["scan_accuracy"])
    n = tot["designed"]
    return {"font": fname, "size_pt": size, "pages": len(args.seeds), "designed_characters": n,
            "read_correctly": tot["designed_correct"] / n, "certified_and_correct": tot["designed_certified_correct"] / n,
            "designed_missed": tot["designed_missed"], "designed_merged": tot["designed_merged"],
            "designed_certified_wrong": tot["designed_certified_wrong"],
            "outside_characters": tot["outside"], "outside_found": tot["outside_found"],
            "certified_outside": tot["certified_outside"], "outside_flagged": tot["outside_flagged"],
            "designed_flagged_outside": tot["designed_flagged_outside"], "spurious": tot["spurious"],
            "designed_split": tot["designed_split"], "designed_split_correct": tot["designed_split_correct"],
            "designed_split_certified_wrong": tot["designed_split_certified_wrong"],
            "outside_read_as": dict(outside_read.most_common()), "scan_accuracy_all_characters": float(np.mean(acc)),
            "counts": dict(tot)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--sizes", type=float, nargs="+", default=[12.0, 9.0])
    ap.add_argument("--dpi", type=int, default=300)
    ap.add_argument("--lines", type=int, default=14, help="lines of serial numbers per page")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eps-a", type=float, default=None, help="default: the run's eps_A")
    ap.add_argument("--method", default="crown-ibp")
    ap.add_argument("--out", type=Path, default=None, help="default <run>/scan-serial")
    args = ap.parse_args()

    design = load_design(args.run)
    out = args.out or (args.run / "scan-serial")
    out.mkdir(parents=True, exist_ok=True)
    font = out / "robust.ttf"
    export_font(args.run, font)
    text = serial_text(design.chars, args.lines)
    print(f"run {args.run}: {design.family}, {len(design.chars)} characters, print scale {design.print_scale}, eps_A {design.eps_a}")
    print(f"text ({sum(not c.isspace() for c in text)} characters, {sum(c in PUNCT for c in text)} of them {PUNCT!r}): "
          f"{text.splitlines()[0]} ...")
    rows = []
    for size in args.sizes:
        for fname, fpath in (("robust font", str(font)), ("source font", design.font_path)):
            row = measure(args, text, design.chars, fname, fpath, size, out)
            rows.append(row)
            print(f"{size:4g} pt {fname:11s} {row['designed_characters']:5d} designed  read correctly {row['read_correctly']:7.2%}  "
                  f"certified & correct {row['certified_and_correct']:7.2%}  missed {row['designed_missed']}  "
                  f"certified wrong {row['designed_certified_wrong']}  flagged outside {row['designed_flagged_outside']} | "
                  f"outside {row['outside_characters']}: found {row['outside_found']}, flagged {row['outside_flagged']}, "
                  f"certified {row['certified_outside']} | spurious {row['spurious']} | "
                  f"scan's own accuracy (all characters) {row['scan_accuracy_all_characters']:.2%}")
    (out / "summary.json").write_text(json.dumps({
        "run": str(args.run), "sizes_pt": args.sizes, "dpi": args.dpi, "seeds": args.seeds, "lines": args.lines,
        "eps_a": args.eps_a or design.eps_a, "method": args.method, "text": text, "rows": rows,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }, indent=2) + "\n")
    print(f"pages, scans and summary.json in {out}")


if __name__ == "__main__":
    main()
