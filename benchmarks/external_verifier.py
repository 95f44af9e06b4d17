"""Run an external verifier (Marabou) on a VNN-COMP folder written by `a5ocr export --vnnlib`.

Marabou is a complete SMT-based verifier of the VNN-COMP community (maraboupy 2.0.0 on PyPI ships
the `Marabou` executable, which reads ONNX networks and VNNLIB properties). It needs its own
virtual environment (it is not a dependency of a5ocr):

    python3.11 -m venv /tmp/mvenv && /tmp/mvenv/bin/pip install maraboupy==2.0.0 onnx==1.17.0
    a5ocr export RUN --vnnlib bench --samples 10 --eps-a 0.02 --threads 1
    python benchmarks/external_verifier.py bench --marabou /tmp/mvenv/bin/Marabou --timeout 300 --json out.json

For every instance of ``instances.csv`` it runs ``Marabou NET.onnx PROP.vnnlib --timeout T`` and
reads its verdict: ``unsat`` (no input of the box reaches the unsafe region: the property holds),
``sat`` (a counter-example) or ``unknown``/``timeout``. Each verdict is set beside a5ocr's own in
``manifest.json``. A sample a5ocr certified must never be ``sat``: that would be a wrong
certificate (or a wrong export), and the script exits 3.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

VERDICT = re.compile(r"^\s*(unsat|sat|unknown|timeout)\s*$", re.MULTILINE)


def run_marabou(marabou: str, bench: Path, onnx: str, prop: str, timeout: float) -> tuple[str, float]:
    """(verdict, wall seconds) of one instance."""
    start = time.perf_counter()
    try:
        out = subprocess.run([marabou, onnx, prop, "--timeout", str(int(timeout)), "--verbosity", "0"], cwd=bench,
                             capture_output=True, text=True, timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start
    found = VERDICT.findall(out.stdout)
    return (found[-1] if found else "error: " + (out.stdout + out.stderr).strip()[-200:]), time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path, help="a folder written by a5ocr export --vnnlib")
    ap.add_argument("--marabou", required=True, help="the Marabou executable")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per instance (default 300)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    manifest = json.loads((args.bench / "manifest.json").read_text())
    ours = {s["vnnlib"]: s for s in manifest["samples"]}
    rows = []
    with open(args.bench / "instances.csv", newline="") as fh:
        for onnx, prop, _ in csv.reader(fh):
            verdict, wall = run_marabou(args.marabou, args.bench, onnx, prop, args.timeout)
            mine = ours[prop]["certified"]
            rows.append({"vnnlib": prop, "char": ours[prop]["char"], "marabou": verdict, "seconds": round(wall, 1),
                         "a5ocr": mine, "correct": ours[prop]["correct"]})
            print(f"{prop}: Marabou {verdict} in {wall:.1f} s; a5ocr {mine}", flush=True)
    wrong = [r for r in rows if r["marabou"] == "sat" and any(r["a5ocr"].values())]
    summary = {"bench": str(args.bench), "eps_a": manifest["settings"]["eps_a"], "timeout": args.timeout,
               "verifier": "Marabou 2.0.0 (maraboupy wheel)", "machine": platform.processor() or platform.machine(),
               "counts": {v: sum(r["marabou"] == v for r in rows) for v in sorted({r["marabou"] for r in rows})},
               "a5ocr_certified": sum(any(r["a5ocr"].values()) for r in rows), "contradictions": len(wrong),
               "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    return 3 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
