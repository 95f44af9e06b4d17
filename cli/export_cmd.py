"""``a5ocr export``: printable sheet, comparison figure, PNGs and an installable font from a design run;
for other verifiers, its classifier as ONNX and its evaluation samples as VNNLIB properties.

Registered in ``cli/app.py``; bad input raises ``a5ocr.export.ExportError`` (one line, exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from a5ocr.errors import ExportError

if TYPE_CHECKING:
    from a5ocr.runs import Run


def export(
    run_dir: Path = typer.Argument(..., help="A design run folder (from `a5ocr design`) holding glyphs.safetensors."),
    sheet: Optional[Path] = typer.Option(None, help="Printable sheet of the robust glyphs: .pdf (vector outlines as the font's, any number of pages) or .png (raster at --dpi, one page); a <name>.layout.json sidecar is written beside it."),
    font: Optional[Path] = typer.Option(None, help="Installable font: the source font whole (every glyph, metrics, kerning) with the robust glyphs in place of the designed ones; .ttf (TrueType) or .otf (CFF); family '<source family> A5'."),
    png_dir: Optional[Path] = typer.Option(None, help="Folder for one PNG per robust glyph (U+0041.png ...), black ink on white."),
    figure: Optional[Path] = typer.Option(None, help="Comparison figure .png (robust / original / difference rows, as the paper's Fig. 4)."),
    glyph_mm: float = typer.Option(10.0, "--glyph-mm", help="Printed size of each glyph's square canvas on the sheet, in mm."),
    dpi: int = typer.Option(600, help="Resolution of the PNG sheet (dots per inch); a PDF sheet is vector, its layout's px are at this dpi."),
    paper: str = typer.Option("a4", help="Paper size of the sheet: a4 (210x297 mm) or letter (215.9x279.4 mm)."),
    upsample: str = typer.Option("nearest", help="PNG sheet upsampling of the design pixels: nearest (each design pixel a uniform square) or bilinear."),
    outline: str = typer.Option("auto", help="Font and PDF sheet outlines: auto (pixels for --ink binary designs, smooth for gray), smooth (quadratic / cubic splines fitted so the rendered coverage matches the design's ink > 0.5), contour (0.5 iso-line of the bilinear design as a polygon), pixels (exact pixel edges of ink > 0.5), halftone (one dot of area = ink per pixel)."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="The run's classifier, its input normalisation included, as an ONNX file (.onnx; opset 17, input [batch, 3, R, R] in [0, 1], output logits)."),
    vnnlib: Optional[Path] = typer.Option(None, "--vnnlib", help="A new folder for a VNN-COMP benchmark of the first --samples evaluation samples: onnx/classifier.onnx, vnnlib/sample_*.vnnlib, instances.csv, manifest.json (our verdicts)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="With --vnnlib: how many evaluation samples (the first N of `a5ocr evaluate`'s draw) get a property."),
    samples_per_char: int = typer.Option(100, "--samples-per-char", help="With --vnnlib: acquisitions per character of the evaluation the samples come from (as `a5ocr evaluate`'s)."),
    seed: Optional[int] = typer.Option(None, help="With --vnnlib: seed of the evaluation's acquisitions; default: the run's evaluation seed (as `a5ocr evaluate`'s)."),
    eps_a: Optional[float] = typer.Option(None, "--eps-a", help="With --vnnlib: the L-inf budget of the input boxes, in (0, 1); default: the run's eps_a."),
    original: bool = typer.Option(False, "--original", help="With --vnnlib: samples of the unmodified font glyphs (as `a5ocr evaluate --original`)."),
    timeout: float = typer.Option(60.0, help="With --vnnlib: the per-instance timeout (seconds) written in instances.csv."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads for --vnnlib's certificates (default: torch's choice)."),
) -> None:
    """Export a design run: printable sheet, font, PNGs, comparison figure; ONNX classifier and VNNLIB properties."""
    from a5ocr import export as ex  # local: keep a5ocr --help fast (torch, fontTools, matplotlib, onnx)
    from a5ocr.runs import load_design  # local: keep a5ocr --help fast (torch)
    from a5ocr.runtime import set_threads  # local: keep a5ocr --help fast (torch)

    set_threads(threads, ExportError)
    design_outputs = (sheet, font, png_dir, figure)
    if all(v is None for v in (*design_outputs, onnx, vnnlib)):
        raise ExportError("nothing to export: give at least one of --sheet, --font, --png-dir, --figure, --onnx, --vnnlib")
    # Check every option and path before writing anything.
    _check_design_outputs(sheet, font, png_dir, figure, glyph_mm=glyph_mm, dpi=dpi, paper=paper)
    run = _check_interchange(run_dir, onnx, vnnlib, samples=samples, samples_per_char=samples_per_char,
                             eps_a=eps_a, timeout=timeout)
    design = load_design(run_dir)
    if any(v is not None for v in design_outputs):
        ex.resolve_outline_method(design, outline)

    table = Table(title=f"{design.family} A5: {len(design.chars)} glyphs from {run_dir}")
    table.add_column("written")
    table.add_column("what")
    if sheet is not None:
        lay = ex.export_sheet(run_dir, sheet, glyph_mm=glyph_mm, dpi=dpi, paper=paper, upsample=upsample, outline=outline)
        pages = f"{lay['pages']} page{'s' if lay['pages'] > 1 else ''}"
        table.add_row(str(sheet), f"sheet, {paper}, {pages}, glyph {lay['glyph_mm_printed']:.2f} mm = {lay['glyph_px']} px at {dpi} dpi")
        table.add_row(str(ex.layout_path(sheet)), "sheet layout (mm/px boxes, registration marks)")
    if font is not None:
        info = ex.export_font(run_dir, font, outline=outline)
        table.add_row(str(font), f"font '{info['family']}', {info['glyphs']} glyphs ({info['designed']} designed, outline {info['method']}, {info['contours']} contours, {info['points']} points)")
    if png_dir is not None:
        files = ex.export_pngs(run_dir, png_dir)
        n = design.print_resolution
        table.add_row(f"{png_dir}/", f"{len(files)} PNGs ({n}x{n})")
    if figure is not None:
        ex.comparison_figure(run_dir, figure)
        table.add_row(str(figure), "comparison figure: robust / original / difference")
    if run is not None:
        _write_interchange(run, table, onnx, vnnlib, samples=samples, samples_per_char=samples_per_char, seed=seed,
                           eps_a=eps_a, original=original, timeout=timeout)
    Console().print(table)


def _check_design_outputs(sheet: Optional[Path], font: Optional[Path], png_dir: Optional[Path], figure: Optional[Path],
                          *, glyph_mm: float, dpi: int, paper: str) -> None:
    """The paths and options of the design's outputs (sheet, font, PNGs, figure)."""
    from a5ocr import export as ex  # local: keep a5ocr --help fast (torch, fontTools, matplotlib, onnx)

    if sheet is not None:
        ex.sheet_layout(1, glyph_mm, dpi, paper)
        ex.check_output(sheet, (".pdf", ".png"), "--sheet")
    if font is not None:
        ex.check_output(font, (".ttf", ".otf"), "--font")
    if figure is not None:
        ex.check_output(figure, (".png",), "--figure")
    if png_dir is not None and not png_dir.parent.is_dir():
        raise ExportError(f"cannot write PNGs into {png_dir}: folder {png_dir.parent} does not exist")


def _check_interchange(run_dir: Path, onnx: Optional[Path], vnnlib: Optional[Path], *, samples: Optional[int],
                       samples_per_char: int, eps_a: Optional[float], timeout: float) -> "Run | None":
    """The run with its classifier when --onnx or --vnnlib asks for it (None otherwise), every
    option of those two checked."""
    from a5ocr import export as ex  # local: keep a5ocr --help fast (torch, fontTools, matplotlib, onnx)

    if vnnlib is None:
        if samples is not None:
            raise ExportError("--samples needs --vnnlib DIR")
    elif samples is None:
        raise ExportError("--vnnlib needs --samples N (how many evaluation samples get a property)")
    if onnx is not None:
        ex.check_output(onnx, (".onnx",), "--onnx")
        if vnnlib is not None and onnx.resolve().is_relative_to(vnnlib.resolve()):
            raise ExportError(f"--onnx {onnx} is inside --vnnlib {vnnlib}, which gets its own onnx/classifier.onnx")
    if onnx is None and vnnlib is None:
        return None
    run = ex.load_run(run_dir)
    if vnnlib is not None:
        ex.check_vnnlib_options(run, vnnlib, samples=samples, samples_per_char=samples_per_char,
                                eps_a=run.eps_a if eps_a is None else eps_a, timeout=timeout)
    return run


def _write_interchange(run: "Run", table: Table, onnx: Optional[Path], vnnlib: Optional[Path], **vnnlib_options) -> None:
    """The ONNX file and the VNNLIB benchmark, each a row of ``table``."""
    from a5ocr import export as ex  # local: keep a5ocr --help fast (torch, fontTools, matplotlib, onnx)

    info = None
    if onnx is not None:
        info = ex.export_run_onnx(run, onnx)
        table.add_row(str(onnx), escape(f"ONNX classifier, opset {info['opset']}, input [batch, 3, {run.resolution}, "
                                        f"{run.resolution}], onnxruntime = torch to {info['max_abs_diff']:.1e}"))
    if vnnlib is not None:
        man = ex.export_vnnlib(run, vnnlib, onnx_info=info, **vnnlib_options)
        n = man["settings"]["samples"]
        counts = ", ".join(f"{name} {k}/{n}" for name, k in man["certified_counts"].items())
        table.add_row(f"{vnnlib}/", f"VNN-COMP benchmark: {n} VNNLIB properties (eps_A {man['settings']['eps_a']:g}, "
                                    f"seed {man['settings']['seed']}), instances.csv, manifest.json; certified by a5ocr: {counts}")
