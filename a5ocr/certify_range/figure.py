"""The picture of one glyph's certified region in the (rotation, shift-x) plane.

At each (angle, shift x) point of a raster, the colour is the share of the remaining
dimensions (shift y, scale) that certified leaves cover there: 1 means every pose with that
angle and shift x is proven. Leaves tile the box (half-open cells), so the shares add up
exactly. Counter-examples found in the uncertified regions are drawn as red crosses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from a5ocr.certify_range.box import ANGLE, SHIFT_X, CertifyRangeError, widths
from a5ocr.certify_range.split import Leaf
from a5ocr.figures import plt
from a5ocr.runio import atomic_path


def coverage(leaves: list[Leaf], glyph: int, full: torch.Tensor, cells: int = 200) -> np.ndarray:
    """[cells (shift x), cells (angle)] certified share of the other dimensions at each cell centre."""
    a = np.linspace(float(full[ANGLE, 0]), float(full[ANGLE, 1]), cells + 1)
    s = np.linspace(float(full[SHIFT_X, 0]), float(full[SHIFT_X, 1]), cells + 1)
    ac, sc = 0.5 * (a[:-1] + a[1:]), 0.5 * (s[:-1] + s[1:])
    fw = widths(full.unsqueeze(0))[0].numpy()
    rest = [d for d in range(4) if d not in (ANGLE, SHIFT_X) and fw[d] > 0]
    out = np.zeros((cells, cells))
    for leaf in leaves:
        if leaf.glyph != glyph or leaf.status != "certified":
            continue
        b = leaf.box.numpy()
        share = float(np.prod([(b[d, 1] - b[d, 0]) / fw[d] for d in rest])) if rest else 1.0
        ia = (ac >= b[ANGLE, 0]) & ((ac < b[ANGLE, 1]) | (b[ANGLE, 1] >= full[ANGLE, 1].item()))
        js = (sc >= b[SHIFT_X, 0]) & ((sc < b[SHIFT_X, 1]) | (b[SHIFT_X, 1] >= full[SHIFT_X, 1].item()))
        out[np.ix_(js, ia)] += share
    return np.clip(out, 0.0, 1.0)


def region_figure(leaves: list[Leaf], glyph: int, char: str, full: torch.Tensor, path: Path, title: str = "") -> None:
    """PNG of glyph ``glyph``'s certified share over (angle, shift x); needs both ranges non-zero."""
    fw = widths(full.unsqueeze(0))[0]
    if fw[ANGLE] <= 0 or fw[SHIFT_X] <= 0:
        raise CertifyRangeError("--figure needs a rotation range and a shift range (both > 0)")
    cov = coverage(leaves, glyph, full)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    extent = [float(full[ANGLE, 0]), float(full[ANGLE, 1]), float(full[SHIFT_X, 0]), float(full[SHIFT_X, 1])]
    im = ax.imshow(cov, origin="lower", extent=extent, aspect="auto", vmin=0.0, vmax=1.0, cmap="viridis",
                   interpolation="nearest")
    cx = [leaf.pose for leaf in leaves if leaf.glyph == glyph and leaf.pose is not None]
    if cx:
        pts = torch.stack(cx).numpy()
        ax.scatter(pts[:, ANGLE], pts[:, SHIFT_X], marker="x", color="red", s=18, label="counter-example")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("rotation (degrees)")
    ax.set_ylabel("shift x (px)")
    ax.set_title(title or f"glyph {char!r}: certified share of the other parameters")
    fig.colorbar(im, ax=ax, label="certified share (shift y, scale)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
