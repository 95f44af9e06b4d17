"""Image exports of a run: one PNG per robust glyph (``export_pngs``) and the paper's Fig. 4
comparison figure (``comparison_figure``).

PNGs: each robust glyph as ``U+XXXX.png``, black ink on white, R x R (or ``scale`` times larger,
nearest).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from a5ocr.errors import ExportError
from a5ocr.export.common import check_output, ink_u8, load_design
from a5ocr.figures import glyph_sheet
from a5ocr.runio import atomic_path


def comparison_figure(run_dir: Path | str, path: Path | str, scale: int = 4) -> Path:
    """The paper's Fig. 4 for a run: robust, original and difference rows (``figures.glyph_sheet``)."""
    path = check_output(path, (".png",), "the figure")
    if not 1 <= int(scale) <= 32:
        raise ExportError("figure scale must be in [1, 32]")
    design = load_design(run_dir)
    glyph_sheet(design.original, design.robust, path, scale=int(scale))
    return path


def export_pngs(run_dir: Path | str, out_dir: Path | str, scale: int = 1) -> list[Path]:
    """Each robust glyph as ``out_dir/U+XXXX.png`` (R*scale square, black ink on white, nearest)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"cannot write PNGs into {out_dir}: it is a file")
    if not out_dir.parent.is_dir():
        raise ExportError(f"cannot write PNGs into {out_dir}: folder {out_dir.parent} does not exist")
    if not 1 <= int(scale) <= 64:
        raise ExportError("PNG scale must be in [1, 64]")
    design = load_design(run_dir)
    images = []
    for c, w in zip(design.chars, design.robust):
        img = Image.fromarray(ink_u8(w), mode="L")
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        images.append((out_dir / f"U+{ord(c):04X}.png", img))
    out_dir.mkdir(exist_ok=True)
    written = []
    for p, img in images:
        with atomic_path(p) as tmp:
            img.save(tmp, format="PNG")
        written.append(p)
    return written
