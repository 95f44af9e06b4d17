"""``a5ocr export``: printable sheet, comparison figure, PNGs and an installable font from a design run.

Registered in ``cli/app.py``; bad input raises ``a5ocr.export.ExportError`` (one line, exit 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table


def export(
    run_dir: Path = typer.Argument(..., help="A design run folder (from `a5ocr design`) holding glyphs.safetensors."),
    sheet: Optional[Path] = typer.Option(None, help="Printable sheet of the robust glyphs: .pdf (any number of pages) or .png (one page); a <name>.layout.json sidecar is written beside it."),
    font: Optional[Path] = typer.Option(None, help="Installable font of the robust glyphs: .ttf (TrueType) or .otf (CFF); family '<source family> A5'."),
    png_dir: Optional[Path] = typer.Option(None, help="Folder for one PNG per robust glyph (U+0041.png ...), black ink on white."),
    figure: Optional[Path] = typer.Option(None, help="Comparison figure .png (robust / original / difference rows, as the paper's Fig. 4)."),
    glyph_mm: float = typer.Option(10.0, "--glyph-mm", help="Printed size of each glyph's square canvas on the sheet, in mm."),
    dpi: int = typer.Option(600, help="Resolution the sheet is rendered at (dots per inch)."),
    paper: str = typer.Option("a4", help="Paper size of the sheet: a4 (210x297 mm) or letter (215.9x279.4 mm)."),
    upsample: str = typer.Option("nearest", help="Sheet upsampling of the design pixels: nearest (each design pixel a uniform square) or bilinear."),
    outline: str = typer.Option("auto", help="Font outlines: auto (pixels for --ink binary designs, contour for gray), contour (0.5 iso-line of the bilinear design), pixels (exact pixel edges of ink > 0.5), halftone (one dot of area = ink per pixel)."),
) -> None:
    """Export a design run: printable sheet, font, PNGs and/or comparison figure."""
    from a5ocr import export as ex  # local: keep a5ocr --help fast (torch, fontTools, matplotlib)
    from a5ocr.runs import load_design  # local: keep a5ocr --help fast (torch)

    if sheet is None and font is None and png_dir is None and figure is None:
        raise ex.ExportError("nothing to export: give at least one of --sheet, --font, --png-dir, --figure")
    # Check every option and path before writing anything.
    if sheet is not None:
        ex.sheet_layout(1, glyph_mm, dpi, paper)
        ex.check_output(sheet, (".pdf", ".png"), "--sheet")
    if font is not None:
        ex.check_output(font, (".ttf", ".otf"), "--font")
    if figure is not None:
        ex.check_output(figure, (".png",), "--figure")
    if png_dir is not None and not png_dir.parent.is_dir():
        raise ex.ExportError(f"cannot write PNGs into {png_dir}: folder {png_dir.parent} does not exist")
    design = load_design(run_dir)
    ex.resolve_outline_method(design, outline)

    table = Table(title=f"{design.family} A5: {len(design.chars)} glyphs from {run_dir}")
    table.add_column("written")
    table.add_column("what")
    if sheet is not None:
        lay = ex.export_sheet(run_dir, sheet, glyph_mm=glyph_mm, dpi=dpi, paper=paper, upsample=upsample)
        pages = f"{lay['pages']} page{'s' if lay['pages'] > 1 else ''}"
        table.add_row(str(sheet), f"sheet, {paper}, {pages}, glyph {lay['glyph_mm_printed']:.2f} mm = {lay['glyph_px']} px at {dpi} dpi")
        table.add_row(str(ex.layout_path(sheet)), "sheet layout (mm/px boxes, registration marks)")
    if font is not None:
        info = ex.export_font(run_dir, font, outline=outline)
        table.add_row(str(font), f"font '{info['family']}', {info['glyphs']} glyphs, outline {info['method']}, {info['contours']} contours")
    if png_dir is not None:
        files = ex.export_pngs(run_dir, png_dir)
        table.add_row(f"{png_dir}/", f"{len(files)} PNGs ({design.resolution}x{design.resolution})")
    if figure is not None:
        ex.comparison_figure(run_dir, figure)
        table.add_row(str(figure), "comparison figure: robust / original / difference")
    Console().print(table)
