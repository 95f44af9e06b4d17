"""Figures of a run: glyph sheets (like the paper's Fig. 4), training curves, histograms.

All written through ``runio.atomic_path``; images as 8-bit PNG (paper white, ink black). Plots use
matplotlib's non-interactive Agg backend, selected when this module is imported.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from a5ocr.runio import atomic_path


def ink_to_image(w: torch.Tensor) -> Image.Image:
    """Ink [R, R] in [0,1] -> an 8-bit grayscale image (1 = black ink on white paper)."""
    arr = (1.0 - w.detach().cpu().clamp(0, 1).numpy()) * 255.0
    return Image.fromarray(np.round(arr).astype(np.uint8), mode="L")


def _grid(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """rows: list of [K, R, R] arrays in [0,255] -> one image, one row per entry."""
    k, r, _ = rows[0].shape
    out = np.full((len(rows) * (r + gap) + gap, k * (r + gap) + gap), 200, np.uint8)
    for i, row in enumerate(rows):
        for j in range(k):
            y, x = gap + i * (r + gap), gap + j * (r + gap)
            out[y : y + r, x : x + r] = row[j]
    return out


def glyph_sheet(original: torch.Tensor, robust: torch.Tensor, path: Path, acquired: torch.Tensor | None = None, scale: int = 2,
                print_scale: int = 1) -> None:
    """The paper's Fig. 4: robust row, original row, difference row (gray = no change), acquired row.

    original, robust: [K, S*R, S*R] ink (the print); acquired: optional [K, 3, R, R] images of
    the robust glyphs (the sensor's), shown S times larger (nearest) beside the print.
    """
    o = (1.0 - original.detach().cpu().numpy()) * 255
    r = (1.0 - robust.detach().cpu().numpy()) * 255
    d = 127.5 - (robust - original).detach().cpu().numpy() * 127.5
    rows = [r, o, d]
    if acquired is not None:
        seen = acquired[:, 0].detach().cpu().numpy() * 255
        rows.append(seen.repeat(print_scale, axis=1).repeat(print_scale, axis=2))
    img = Image.fromarray(np.clip(np.round(_grid(rows)), 0, 255).astype(np.uint8), mode="L")
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def training_curves(records: list[dict], path: Path) -> None:
    """Loss, eps, and batch clean / certified error against the global step, one panel each."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    stages = []
    for rec in records:
        if rec.get("stage") not in stages:
            stages.append(rec.get("stage"))
    offset = 0
    for stage in stages:
        rows = [r for r in records if r.get("stage") == stage and "step" in r]
        if not rows:
            continue
        steps = np.array([r["step"] for r in rows]) + offset
        axes[0].plot(steps, [r["loss"] for r in rows], label=stage)
        axes[1].plot(steps, [r["eps"] for r in rows], label=stage)
        axes[2].plot(steps, [r["clean_error"] for r in rows], label=f"{stage} clean")
        axes[2].plot(steps, [r["certified_error"] for r in rows], "--", label=f"{stage} certified")
        offset = steps.max()
    axes[0].set_yscale("log")
    for ax, title in zip(axes, ("loss", "attack radius eps", "batch error")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[2].set_ylim(0, 1)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def histogram(values: np.ndarray, path: Path, title: str, xlabel: str) -> None:
    """A histogram PNG of ``values``."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(values, bins=40)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def defence_examples(x: torch.Tensor, z: torch.Tensor, eps_d: float, path: Path, scale: int = 3) -> None:
    """The paper's Fig. 3 for image-side recipes: per test image (a column), the acquired image
    x, the defended z = x + dx_D, and dx_D itself (mid gray = no change, white / black = +-eps_D).

    x, z: [N, C, H, W] images in [0, 1] (RGB when C = 3, gray when C = 1)."""
    x = x.detach().cpu().float().clamp(0, 1)
    z = z.detach().cpu().float().clamp(0, 1)
    d = (0.5 + (z - x) / (2 * max(eps_d, 1e-12))).clamp(0, 1)
    n, c, h, w = x.shape
    gap = 2
    canvas = np.full((3 * (h + gap) + gap, n * (w + gap) + gap, 3), 200, np.uint8)
    for i, row in enumerate((x, z, d)):
        for j in range(n):
            img = row[j].permute(1, 2, 0).numpy()
            if c == 1:
                img = np.repeat(img, 3, axis=2)
            y0, x0 = gap + i * (h + gap), gap + j * (w + gap)
            canvas[y0 : y0 + h, x0 : x0 + w] = np.round(img[..., :3] * 255).astype(np.uint8)
    im = Image.fromarray(canvas, mode="RGB")
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG")
