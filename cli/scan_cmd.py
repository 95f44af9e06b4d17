"""``a5ocr scan`` and ``a5ocr render-text``.

Registered in ``cli/app.py``; the work is ``a5ocr.scan.scan_and_write`` and
``a5ocr.scan.render_text``. Bad input raises ``a5ocr.scan.ScanError`` (a ``ValueError``; one
line, exit 2). ``scan --require-certified`` exits 1 when a character is not certified.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.text import Text

from a5ocr.cli.progress import THREADS_HELP
from a5ocr.errors import ScanError


def scan(
    page: Path = typer.Argument(..., help="The scanned page: PNG, JPEG or TIFF (the first frame). A glyph sheet from `a5ocr export --sheet` is recognised by its <name>.layout.json beside it (or --layout)."),
    run: Path = typer.Option(..., "--run", help="A design run folder (glyphs.safetensors and classifier.safetensors)."),
    eps_a: Optional[float] = typer.Option(None, "--eps-a", help="Attack budget on each normalised character image, in (0, 1); default: the run's eps_A (0.1 if unknown)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON: per character its box, label, confidence, certificate and certified radius."),
    overlay: Optional[Path] = typer.Option(None, "--overlay", help="Write the page with a box per character: green certified, red not (.png)."),
    require_certified: bool = typer.Option(False, "--require-certified", help="Exit with code 1 if any character is not certified."),
    method: str = typer.Option("crown-ibp", help="Certificate: ibp, or crown-ibp (IBP first, CROWN-IBP on what IBP leaves)."),
    layout: Optional[Path] = typer.Option(None, "--layout", help="The sheet layout JSON, when it is not <page stem>.layout.json beside the page."),
    sheet_page: int = typer.Option(1, "--sheet-page", help="Which page of a multi-page sheet this scan is (1-based)."),
    classifier: Optional[Path] = typer.Option(None, help="Another classifier of the run (e.g. baseline_classifier.safetensors) instead of classifier.safetensors."),
    truth: Optional[Path] = typer.Option(None, "--truth", help="The page's true text, to count the characters read correctly and certified-and-correct: a ground truth JSON of `a5ocr render-text` or a UTF-8 text file. Default: render-text's <page>.truth.json beside the page, if there; else the correctness figures are null."),
    threads: Optional[int] = typer.Option(None, help=THREADS_HELP),
) -> None:
    """Read a scanned page with a design run's classifier and certify every character."""
    from a5ocr.runtime import set_threads  # local: keep a5ocr --help fast (torch)
    from a5ocr.scan import scan_and_write  # local: keep a5ocr --help fast (torch)

    set_threads(threads, ScanError)
    result = scan_and_write(page, run, eps_a=eps_a, method=method, layout=layout, classifier=classifier,
                            sheet_page=sheet_page, json_out=json_out, overlay=overlay, truth=truth)
    out = Console()
    if not result.chars:
        out.print(f"{page.name}: no text found")
    else:
        text = Text()
        line = None
        for c in result.chars:
            if line is not None and c.line != line:
                text.append("\n")
            elif c.space_before:
                text.append(" ")
            text.append(c.char, style=None if c.certified else "bold red")
            line = c.line
        out.print(text)
        n, k = len(result.chars), result.certified_count
        out.print(
            f"[dim]{n} characters, {k} certified ({k / n:.1%}) at eps_A {result.eps_a:g} ({result.method}); "
            f"uncertified in [bold red]red[/bold red][/dim]", highlight=False,
        )
    out.print(Text(_truth_line(result), style="dim"))
    for label, path in (("json", json_out), ("overlay", overlay)):
        if path is not None:
            out.print(f"[dim]{label}: {path}[/dim]", highlight=False)
    if require_certified and result.certified_count < len(result.chars):
        # SystemExit, not typer.Exit: the console script runs typer with standalone_mode=False,
        # where an Exit's code would be returned and dropped.
        raise SystemExit(1)


def _truth_line(result) -> str:
    """Correct, certified and correct, certified but wrong: over the true characters, or why unknown."""
    c = result.counts()
    t = c["truth_characters"]
    if t is None:
        return "correctness unknown: no truth for this page (--truth)"
    src = result.truth_known()["source"]
    if not t:
        return f"the truth ({src}) has no characters"
    return (f"truth {src}: {t} characters; read correctly {c['correct']} ({c['correct'] / t:.1%}), "
            f"certified and correct {c['certified_correct']} ({c['certified_correct'] / t:.1%}), "
            f"certified but wrong {c['certified_wrong']}, missed {c['missed']}")


def render_text(
    text: str = typer.Argument(..., help="The text; a literal \\n starts a new line; '-' reads it from standard input. Lines are wrapped to the page width."),
    font: str = typer.Option(..., "--font", help="A TTF/OTF path (e.g. a font from `a5ocr export --font`) or a shipped font name."),
    out: Path = typer.Option(..., "--out", help="The page image (.png, .jpg, .tif); the ground truth goes to <out>.truth.json."),
    dpi: int = typer.Option(300, help="Rendering resolution (dots per inch)."),
    size_pt: float = typer.Option(24.0, "--size-pt", help="Font size in points."),
    seed: int = typer.Option(0, help="Seed of the scanner degradation."),
    clean: bool = typer.Option(False, "--clean", help="No degradation: the page as rendered."),
    width_in: float = typer.Option(8.27, "--width-in", help="Page width in inches (A4: 8.27)."),
) -> None:
    """Render text in a font on a page as a scanner would see it (blur, resampling, noise, slight rotation, JPEG)."""
    from a5ocr.scan import render_text as rt  # local: keep a5ocr --help fast (torch)

    if text == "-":
        text = sys.stdin.read()
    text = text.replace("\\n", "\n")
    opts = rt.RenderOptions(dpi=dpi, size_pt=size_pt, seed=seed, clean=clean, width_in=width_in)
    gray, truth = rt.render_text(text, font, opts)
    page, tp = rt.write_page(out, gray, truth, dpi)
    n = len(truth["chars"])
    deg = "clean" if clean else f"degraded (seed {seed}, rotation {truth['degradation']['angle_deg']:+.2f} deg)"
    Console().print(f"{page}: {gray.shape[1]}x{gray.shape[0]} px, {len(truth['lines'])} lines, {n} characters, {deg}; truth: {tp}", highlight=False)
