"""``a5ocr certify-range``: each glyph of a design run certified over a camera parameter box.

Registered in ``cli/app.py``. Progress goes to stderr, the results table to stdout, the full
record to ``--json``. Bad input raises ``a5ocr.certify_range.CertifyRangeError`` (one line, exit
2, nothing written); a pose inside a certified region that the cross-check finds misclassified
or broken by the attack (a soundness bug) exits with code 3 after writing the record.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.table import Table

from a5ocr.cli.progress import console as err_console
from a5ocr.runio import write_json

if TYPE_CHECKING:
    from a5ocr.certify_range import RangeResult

EXIT_INCONSISTENT = 3


def certify_range(
    run_dir: Path = typer.Argument(..., help="A design run folder (from `a5ocr design`)."),
    rotation: float = typer.Option(5.0, "--rotation", help="Rotation range: every angle in [-DEG, DEG] degrees (0: no rotation)."),
    shift: float = typer.Option(1.0, "--shift", help="Shift range: every shift in [-PX, PX] px along x and along y (0: none)."),
    scale: float = typer.Option(0.0, "--scale", help="Scale range: every scale in [1 - PCT/100, 1 + PCT/100] about the centre (0: none)."),
    eps_a: Optional[float] = typer.Option(None, "--eps-a", help="Attack budget on the acquired image, in [0, 1) (0: the geometry alone); default: the run's eps_a."),
    original: bool = typer.Option(False, "--original", help="Certify the unmodified source glyphs (with --classifier RUN/baseline_classifier.safetensors: the before-A5 baseline)."),
    classifier: Optional[Path] = typer.Option(None, help="Another classifier file on the run's glyphs; default RUN/classifier.safetensors."),
    blur_sigma: Optional[float] = typer.Option(None, "--blur-sigma", help="The fixed blur sigma (px at the run's resolution); default: the run's smallest (an identity in effect)."),
    brightness: float = typer.Option(1.0, help="The fixed brightness factor (1: identity)."),
    contrast: float = typer.Option(1.0, help="The fixed contrast factor (1: identity)."),
    budget_s: float = typer.Option(480.0, "--budget-s", help="Time budget of the splitting search in seconds; sub-boxes still queued then are reported undecided."),
    min_width: float = typer.Option(0.05, "--min-width", help="Sub-boxes whose widest dimension moves the ink by less than this (px) are not split further."),
    batch: int = typer.Option(256, help="Sub-boxes certified per batch."),
    samples: int = typer.Option(32, help="Poses sampled in each uncertified region when searching a counter-example (corners first)."),
    max_regions: int = typer.Option(500, "--max-regions", help="How many uncertified regions (largest first) are searched for counter-examples."),
    check_samples: int = typer.Option(64, "--check-samples", help="Poses per glyph drawn in its certified regions as a soundness cross-check (0: none)."),
    seed: int = typer.Option(0, help="Seed of the sampled poses and of the attack."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full record (box, fixed camera, per-glyph volumes, regions, counter-examples, config, versions, wall time)."),
    figure: Optional[Path] = typer.Option(None, "--figure", help="PNG of one glyph's certified region in the (rotation, shift x) plane."),
    figure_char: Optional[str] = typer.Option(None, "--figure-char", help="The glyph of --figure (default: the first character)."),
    device: str = typer.Option("cpu", help="auto, cpu or cuda (the bounds run in float64)."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (default: torch's choice)."),
) -> None:
    """Certify each glyph over a box of rotations, shifts (and scales), not sampled: certified volume per glyph."""
    from a5ocr.certify_range import CertifyRangeError, ParamBox, RangeRequest, check_request  # local: keep a5ocr --help fast (torch)
    from a5ocr.runtime import pick_device, set_threads  # local: keep a5ocr --help fast (torch)

    set_threads(threads, CertifyRangeError)
    dev = pick_device(device, CertifyRangeError)
    for flag, path, suffix in (("--json", json_out, None), ("--figure", figure, ".png")):
        if path is not None and not path.parent.is_dir():
            raise CertifyRangeError(f"cannot write {flag} {path}: folder {path.parent} does not exist")
        if path is not None and suffix and path.suffix.lower() != suffix:
            raise CertifyRangeError(f"{flag} must be a {suffix} file, got a {path.suffix or 'suffix-less'} one")
    req = RangeRequest(
        run_dir=run_dir, box=ParamBox(rotation=rotation, shift=shift, scale_pct=scale), eps_a=eps_a, original=original,
        classifier=classifier, blur_sigma=blur_sigma, brightness=brightness, contrast=contrast, budget_s=budget_s,
        min_width_px=min_width, batch=batch, samples=samples, max_regions=max_regions, check_samples=check_samples,
        seed=seed, device=str(dev), figure_char=figure_char,
    )
    check_request(req)
    if figure is not None and (rotation <= 0 or shift <= 0):
        raise CertifyRangeError("--figure needs a rotation range and a shift range (both > 0)")
    result = _run_with_progress(req)
    rec = result.record
    _write(result, json_out, figure, figure_char, CertifyRangeError)
    print_table(rec, Console())
    if json_out is not None:
        Console().print(f"record written to {json_out}")
    if rec["self_check"]["violations"]:
        for v in rec["self_check"]["violations"][:10]:
            err_console.print(f"[bold red]INCONSISTENT:[/] certified pose {v['pose']} of glyph "
                              f"{rec['chars'][v['glyph']]!r} {v['kind']}", highlight=False)
        raise SystemExit(EXIT_INCONSISTENT)  # typer.Exit would be swallowed by standalone_mode=False


def _run_with_progress(req) -> "RangeResult":
    """``certify_run_range`` with one live status line on stderr."""
    from a5ocr.certify_range import certify_run_range  # local: keep a5ocr --help fast (torch)

    with err_console.status("certify-range: loading") as status:
        def on_progress(p: dict) -> None:
            status.update(f"certify-range: {p['evaluated']} boxes, {p['queued']} queued, certified "
                          f"{p['certified']:.1%}, failed {p['failed']:.1%}, {p['seconds']:.0f} s")

        result = certify_run_range(req, on_progress)
    s = result.record["search"]
    err_console.print(f"search {s['stopped']}: {s['evaluated_boxes']} sub-boxes in {s['batches']} batches, "
                      f"{result.record['seconds']['total']:.1f} s in all", highlight=False)
    return result


def _write(result: "RangeResult", json_out: Optional[Path], figure: Optional[Path], figure_char: Optional[str], error) -> None:
    from a5ocr.certify_range import region_figure  # local: keep a5ocr --help fast (torch, matplotlib)

    rec = result.record
    try:
        if figure is not None:
            ch = figure_char or result.chars[0]
            row = rec["per_char"][ch]
            region_figure(result.leaves, result.chars.index(ch), ch, result.full, figure,
                          title=f"{ch!r} ({rec['glyphs']} glyph, eps_A {rec['eps_a']:g}): certified "
                                f"{row['certified']:.1%} of the box")
            rec["figure"] = str(figure)
        if json_out is not None:
            write_json(json_out, rec)
    except OSError as err:
        raise error(f"cannot write results: {err}") from None


def print_table(rec: dict, out: Console) -> None:
    """Per glyph and overall: the certified, failed and undecided shares of the box's volume."""
    box = rec["box"]
    t = Table(title=f"{rec['run']}  {rec['glyphs']} glyphs  rotation +-{box['rotation_deg']:g} deg, shift +-"
                    f"{box['shift_px']:g} px, scale +-{box['scale_pct']:g} %, eps_A {rec['eps_a']:g}")
    for col in ("char", "certified", "by IBP", "failed", "undecided", "leaves", "counter-examples"):
        t.add_column(col, justify="left" if col == "char" else "right")

    def row(name: str, r: dict, leaves: str, cx: str) -> None:
        t.add_row(name, f"{r['certified']:.2%}", f"{r['certified_by_method'].get('ibp', 0.0):.2%}",
                  f"{r['failed']:.2%}", f"{r['undecided']:.2%}", leaves, cx)

    for ch, r in rec["per_char"].items():
        row(ch, r, str(r["leaves"]), str(r["counterexamples"]))
    row("overall", rec["overall"], str(sum(r["leaves"] for r in rec["per_char"].values())), str(rec["counterexamples"]))
    out.print(t)
    fixed = ", ".join(f"{k} {v}" for k, v in rec["fixed_camera"].items())
    out.print(f"fixed camera: {fixed}", highlight=False)
    sc = rec["self_check"]
    out.print(f"cross-check of certified regions: {sc['samples']} poses, {sc['misclassified']} misclassified; "
              f"{sc['attacked']} attacked, {sc['broken']} broken", highlight=False)
