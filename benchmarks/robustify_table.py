"""The README's image-side table from finished ``a5ocr robustify`` runs.

Not a test: it reads each run's ``summary.json`` and prints one markdown row per run (and the
classifier-alone row of the first), with wall time. Make the runs first, e.g. on a design run
``D`` (its stage-1 CROWN-IBP classifier is the legacy C):

    a5ocr robustify --recipe o  --run D --out R/o
    a5ocr robustify --recipe r  --run D --out R/r
    a5ocr robustify --recipe rc --run D --robustifier R/r/robustifier.safetensors --out R/rc
    python benchmarks/robustify_table.py R/o R/r R/rc
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args()
    rows = [json.loads((r / "summary.json").read_text()) for r in args.runs]
    first = rows[0]
    print(f"{first['data']}; eps_A {first['eps_a']:g}; {first['samples']} test images; certified by {first['certify_method']}\n")
    print("| recipe | eps_D | eps_A^R | clean error | certified error | PSNR of z vs x | wall time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    b = first["baseline"]
    print(f"| CROWN-IBP classifier alone | - | - | {b['clean_error']:.2%} | {b['certified_error']:.2%} | - | - |")
    for s in rows:
        f = s["final"]
        psnr = "-" if f.get("psnr_db") is None else f"{f['psnr_db']:.1f} dB"
        print(f"| {s['recipe_name']} | {s['eps_d']:g} | {s['eps_r']:g} | {f['clean_error']:.2%} | {f['certified_error']:.2%} "
              f"| {psnr} | {s['wall_seconds'] / 60:.1f} min |")
        if s["baseline"] != b:
            print(f"|   (its classifier alone) | | | {s['baseline']['clean_error']:.2%} | {s['baseline']['certified_error']:.2%} | | |")


if __name__ == "__main__":
    main()
