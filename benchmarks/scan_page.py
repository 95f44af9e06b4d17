"""Read whole pages printed in a design run's robust font and in its source font.

Not a test: the full-scale measurement of ``a5ocr scan`` on a real run (e.g. a 62-character
``cpu``-preset A5/PC run). It exports the run's robust font, renders the same text (>= 200
characters of the run's alphabet, wrapped to an A4 text width) in the robust font and in the
source font with the scanner degradation of ``a5ocr render-text`` (one page per seed), scans
every page, and prints per font and classifier: characters read correctly (edit distance to the
ground truth, spaces and line breaks excluded), certified fraction, certified-and-correct
fraction, and the time per page.

    python benchmarks/scan_page.py renders/comic-neue-62-0.1 [--size-pt 14] [--seeds 0 1 2] [--out renders/scan-bench]

The classifiers: the run's final ``classifier.safetensors`` on both fonts, and (when the run has
it) ``baseline_classifier.safetensors`` on the source font -- the "before A5" reading.
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import time
from pathlib import Path

import torch

from a5ocr.export import export_font
from a5ocr.runs import load_design
from a5ocr.scan import scan, write_json
from a5ocr.scan.render_text import RenderOptions, render_text, write_page

WORDS = (
    "The quick brown fox jumps over the lazy dog while five boxing wizards jump quickly and "
    "Pack my box with five dozen liquor jugs as Sphinx of black quartz judges my vow in 1984 "
    "versus 2023 the 7 daft zebras vex 365 grumpy wolves Jackdaws love my big sphinx of quartz "
    "Amazingly few discotheques provide jukeboxes How vexingly quick daft zebras jump Quiz 42 "
    "Waltz bad nymph for quick jigs vex Glib jocks quiz nymph to vex dwarf 0 1 2 3 4 5 6 7 8 9"
).split()


def make_text(chars: str, n_chars: int, seed: int = 0) -> str:
    """Pangram words restricted to the run's alphabet (words with other characters dropped), then
    every character of the alphabet once more (so each class appears), to at least ``n_chars``."""
    rng = random.Random(seed)
    words = [w for w in WORDS if all(c in chars for c in w)]
    if not words:
        words = ["".join(rng.choice(chars) for _ in range(rng.randint(3, 8))) for _ in range(40)]
    out: list[str] = []
    count = 0
    while count < n_chars:
        w = rng.choice(words)
        out.append(w)
        count += len(w)
    alphabet = [chars[i : i + 8] for i in range(0, len(chars), 8)]
    return " ".join(out + alphabet)


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
        prev = cur
    return prev[-1]


def aligned_certified_correct(read: list, truth: str) -> int:
    """Characters read correctly AND certified, on the longest-common-subsequence alignment."""
    s = "".join(c.char for c in read)
    m = difflib.SequenceMatcher(a=s, b=truth, autojunk=False)
    n = 0
    for block in m.get_matching_blocks():
        n += sum(read[block.a + i].certified for i in range(block.size))
    return n


def measure(args, text: str, out: Path, fname: str, fpath: str, cname: str, cpath) -> dict:
    """One font read by one classifier over the seeds: the row of the summary."""
    tot = dict(chars=0, errors=0, certified=0, cert_correct=0, read=0, seconds=0.0)
    for seed in args.seeds:
        opts = RenderOptions(dpi=args.dpi, size_pt=args.size_pt, seed=seed)
        gray, truth = render_text(text, fpath, opts)
        tag = f"{fname.split()[0]}-{cname.replace(' ', '')}-seed{seed}"
        page, _ = write_page(out / f"{tag}.png", gray, truth, args.dpi)
        t0 = time.time()
        res = scan(page, args.run, eps_a=args.eps_a, method=args.method, classifier=cpath)
        tot["seconds"] += time.time() - t0
        write_json(res, out / f"{tag}.json")
        want = truth["text"].replace(" ", "").replace("\n", "")
        got = "".join(c.char for c in res.chars)
        tot["chars"] += len(want)
        tot["read"] += len(got)
        tot["errors"] += edit_distance(got, want)
        tot["certified"] += res.certified_count
        tot["cert_correct"] += aligned_certified_correct(res.chars, want)
    n = tot["chars"]
    return {
        "font": fname, "classifier": cname, "pages": len(args.seeds), "characters": n,
        "read_correctly": 1 - tot["errors"] / n, "certified_fraction": tot["certified"] / max(tot["read"], 1),
        "certified_and_correct": tot["cert_correct"] / n, "seconds_per_page": tot["seconds"] / len(args.seeds),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--size-pt", type=float, default=14.0)
    ap.add_argument("--dpi", type=int, default=300)
    ap.add_argument("--chars", type=int, default=240, help="at least this many characters per page")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eps-a", type=float, default=None, help="default: the run's eps_A")
    ap.add_argument("--method", default="crown-ibp")
    ap.add_argument("--out", type=Path, default=None, help="where pages, fonts and JSON go (default <run>/scan-bench)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest for the small batches of a scan on a busy machine)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    design = load_design(args.run)
    out = args.out or (args.run / "scan-bench")
    out.mkdir(parents=True, exist_ok=True)
    font = out / "robust.ttf"
    export_font(args.run, font)
    text = make_text(design.chars, args.chars)
    print(f"run {args.run}: {design.family}, {len(design.chars)} characters, eps_A {design.eps_a}")
    print(f"text ({len(text.replace(' ', ''))} characters): {text[:100]}...")
    fonts = {"robust font": str(font), "source font": design.font_path}
    classifiers = {"final": None}
    if (args.run / "baseline_classifier.safetensors").is_file():
        classifiers["before A5"] = args.run / "baseline_classifier.safetensors"
    rows = []
    for fname, fpath in fonts.items():
        for cname, cpath in classifiers.items():
            if cname == "before A5" and fname == "robust font":
                continue
            row = measure(args, text, out, fname, fpath, cname, cpath)
            rows.append(row)
            print(f"{fname:12s} {cname:10s} {row['characters']:5d} chars  read correctly {row['read_correctly']:7.2%}  "
                  f"certified {row['certified_fraction']:7.2%}  certified & correct {row['certified_and_correct']:7.2%}  "
                  f"{row['seconds_per_page']:.1f} s/page")
    (out / "summary.json").write_text(json.dumps({"run": str(args.run), "size_pt": args.size_pt, "dpi": args.dpi,
                                                  "eps_a": args.eps_a or design.eps_a, "method": args.method,
                                                  "rows": rows}, indent=2) + "\n")
    print(f"pages, JSON and summary.json in {out}")

if __name__ == "__main__":
    main()
