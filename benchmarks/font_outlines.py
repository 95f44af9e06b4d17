"""Per-glyph quality of an exported font's outlines: IoU with the design and points against the source.

    python benchmarks/font_outlines.py RUN_DIR [--outline auto]

Exports the run's font as .ttf and .otf (temporary folder) and prints, per designed character,
the IoU of FreeType's rendering at the design geometry (``a5ocr.export.rasterize_at_design``,
ink > 0.5) with the design's ink > 0.5, and the on-curve + off-curve points of the exported glyph
against the source glyph's (``glyph_tables.point_count``: the source in its own format), as a
markdown table, then the summary lines.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from a5ocr import export as ex
from a5ocr.runs import load_design


def measure(run_dir: Path, outline: str) -> dict:
    design = load_design(run_dir)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".ttf", ".otf"):
            path = Path(tmp) / f"f{suffix}"
            info = ex.export_font(run_dir, path, outline=outline)
            ious = ex.iou(ex.rasterize_at_design(path, design), design.robust).tolist()
            out[suffix] = {c: (ious[k], info["points_by_char"][c], info["source_points"][c])
                           for k, c in enumerate(design.chars)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--outline", default="auto")
    args = ap.parse_args()
    res = measure(args.run_dir, args.outline)
    ttf, otf = res[".ttf"], res[".otf"]
    print("| char | source points | .ttf IoU | .ttf points (x source) | .otf IoU | .otf points (x source) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for c in ttf:
        (ti, tp, sp), (oi, op, _) = ttf[c], otf[c]
        print(f"| {c} | {sp} | {ti:.3f} | {tp} ({tp / sp:.2f}x) | {oi:.3f} | {op} ({op / sp:.2f}x) |")
    for name, r in res.items():
        ious = [v[0] for v in r.values()]
        ratios = [v[1] / v[2] for v in r.values()]
        print(f"{name}: IoU min {min(ious):.3f} mean {sum(ious) / len(ious):.4f}; points / source min "
              f"{min(ratios):.2f} mean {sum(ratios) / len(ratios):.2f} max {max(ratios):.2f}, "
              f"{sum(q > 3 for q in ratios)} above 3x, {sum(i < 0.97 for i in ious)} IoU below 0.97")


if __name__ == "__main__":
    main()
