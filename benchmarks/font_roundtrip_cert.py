"""Certified error measured through the exported font (issue 14): is the font the design?

Not a test: the full-scale measurement on a real design run. It exports the run's robust font
(``a5ocr.export.export_font``, the outline ``a5ocr export --font`` writes), renders the designed
characters with FreeType at the run's print resolution and exact canvas geometry
(``a5ocr.export.rasterize_at_design``: S*R px, each pixel the anti-aliased coverage), and runs the
run's own evaluation protocol on those glyphs: the same acquisition model and print scale, the
same seed and number of acquisitions per character, the run's classifier, certificates at the
run's eps_A with the run's cascade (IBP, then CROWN-IBP on what IBP leaves; ``a5ocr.evaluation.
evaluate``, as the design run's final evaluation). Beside it, the same protocol on the design's
own glyphs (``glyphs.safetensors``) and the figures the run's summary recorded.

    python benchmarks/font_roundtrip_cert.py renders/comic-neue-62-0.1 [--samples-per-char 100] [--format ttf]

Prints per glyph set: clean error, certified error per method and the best, and for the font
the per-glyph IoU (ink > 0.5) and mean |font - design| at print resolution. ``--json`` writes the
record (settings, versions, numbers).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from a5ocr.evaluation.protocol import evaluate
from a5ocr.export import export_font, iou, rasterize_at_design
from a5ocr.runs import load_design, load_run


def measure(run, glyphs: torch.Tensor, samples_per_char: int, methods: tuple[str, ...]) -> dict:
    """The run's evaluation protocol on ``glyphs`` [K, S*R, S*R]: clean and certified error."""
    acq = run.camera()
    res = evaluate(run.model, glyphs, run.chars, acq, eps_a=run.eps_a, samples_per_char=samples_per_char,
                   seed=run.eval_seed, methods=methods)
    s = res.summary()
    cert = s["certified_error"]
    return {"samples": res.samples, "clean_error": s["clean_error"], "certified_error_by_method": cert,
            "certified_error": cert.get("best", list(cert.values())[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--samples-per-char", type=int, default=None, help="default: the run's (its config's samples_per_char)")
    ap.add_argument("--format", choices=("ttf", "otf"), default="ttf", help="TrueType (quadratic) or CFF (cubic) outlines")
    ap.add_argument("--outline", default="auto", help="as `a5ocr export --outline`")
    ap.add_argument("--font-out", type=Path, default=None, help="keep the exported font here (default: a temporary file)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    run = load_run(args.run)
    design = load_design(args.run)
    cfg = run.config.get("config", run.config)
    n = args.samples_per_char or int(cfg.get("samples_per_char", 100))
    methods = tuple(cfg.get("certify_methods", ("ibp", "crown-ibp")))
    with tempfile.TemporaryDirectory() as tmp:
        font = args.font_out or Path(tmp) / f"robust.{args.format}"
        info = export_font(args.run, font, outline=args.outline)
        printed = rasterize_at_design(font, design)
    ious = iou(printed, design.robust)
    diff = (printed - design.robust).abs().flatten(1).mean(1)
    print(f"run {args.run}: {len(run.chars)} characters, sensor {run.resolution} px, print scale {run.print_scale} "
          f"({design.print_resolution} px), eps_A {run.eps_a:g}, seed {run.eval_seed}, {n} acquisitions per character, "
          f"methods {'+'.join(methods)}")
    print(f"font {info['method']} .{args.format}: IoU vs design min {ious.min():.4f} mean {ious.mean():.4f}; "
          f"mean |font - design| {diff.mean():.4f} (max over glyphs {diff.max():.4f})")
    rows = {"design (glyphs.safetensors)": measure(run, design.robust, n, methods),
            f"exported font (.{args.format}, FreeType)": measure(run, printed, n, methods)}
    final = (run.summary or {}).get("final")
    for name, r in rows.items():
        by = "  ".join(f"{m} {v:.2%}" for m, v in r["certified_error_by_method"].items() if m != "best")
        print(f"{name:34s} {r['samples']:5d} samples  clean {r['clean_error']:.2%}  certified {r['certified_error']:.2%}  ({by})")
    if final and n == int(cfg.get("samples_per_char", 100)):
        print(f"{'the run summary (final)':34s} {'':13s} clean {final['clean_error']:.2%}  certified {final['certified_error']:.2%}")
    d, f = rows.values()
    print(f"through the font minus the design: clean {100 * (f['clean_error'] - d['clean_error']):+.2f} points, "
          f"certified {100 * (f['certified_error'] - d['certified_error']):+.2f} points")
    if args.json:
        args.json.write_text(json.dumps({
            "run": str(args.run), "samples_per_char": n, "methods": list(methods), "eps_a": run.eps_a,
            "seed": run.eval_seed, "print_scale": run.print_scale, "format": args.format, "outline": info["method"],
            "iou_min": float(ious.min()), "iou_mean": float(ious.mean()), "mean_abs_diff": float(diff.mean()),
            "rows": rows, "summary_final": final and {k: final[k] for k in ("clean_error", "certified_error")},
            "versions": {"python": platform.python_version(), "torch": torch.__version__},
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
