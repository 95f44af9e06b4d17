"""``a5ocr robustify``: the image-side A5 recipes A5/O, A5/R and A5/RC (paper Sec. 3).

They protect the acquired image itself, before it travels to the classifier (in a scanner's
firmware, say). The defended image is z = clamp(x + dx_D, 0, 1), dx_D = eps_D (2 sigmoid(.) - 1)
(Eq. 4-5, ``a5ocr.training.losses.defended``), so ||dx_D||_inf <= eps_D; the man in the middle then
changes z by any ||dx_A||_inf <= eps_A, and every certificate is about the classifier C at z.

* **A5/O** (``o``): per image, knowing its label, the free parameters of dx_D are optimised
  with RMSprop against the worst-case cross-entropy of C at eps_A^R (``offline_defence``; the
  best step per image is kept). Nothing is trained: an offline baseline, run on the test set.
* **A5/R** (``r``): a robustifier network R (``Robustifier``, identity at initialisation) maps
  x to z without the label; trained on the training set for a fixed C.
* **A5/RC** (``rc``): A5/R, then R and C fine-tuned together.

Training uses the one loop of ``a5ocr.training.trainer`` (stages ``r`` and ``rc``: worst-case
cross-entropy at eps_A^R, IBP or mixed bounds as the preset says).

**Data** (``RobustifyConfig``): acquired glyph images -- the acquisition model applied to a
font's prototypes, fresh draws every training step; the test set is ``samples_per_char`` draws
per glyph with the evaluation seed -- from a design run (``run``: its prototypes, acquisition
and stage-1 CROWN-IBP classifier) or a font; or any image dataset (``load_dataset``: a folder
of class subfolders, or an ``.npz`` with ``x`` and ``y``), taken as already acquired.

**C**: ``classifier`` (a5ocr safetensors), else the design run's ``baseline_classifier``,
else a CROWN-IBP classifier trained first (stage 1, as ``a5ocr design``).

A run folder holds ``config.json``, ``checkpoint.pt`` (resumable), ``classifier.safetensors``
(C at the end), ``baseline_classifier.safetensors`` (C before any A5), ``robustifier.safetensors``
(r, rc), ``metrics.jsonl``, ``examples.png`` (x, z and dx_D of test images, as the paper's
Fig. 3) and ``summary.json`` (clean and certified error of C alone on x and of the recipe on z,
PSNR of z against x, the largest |dx_D| measured).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from a5ocr import bounds, models
from a5ocr.acquisition import Acquisition, AcquisitionConfig
from a5ocr.training.losses import attack_box, defended
from a5ocr.runs import default_eval_seed
from a5ocr.errors import DatasetError, RobustifyError, RunError

RECIPES = ("o", "r", "rc")
RECIPE_NAMES = {"o": "A5/O", "r": "A5/R", "rc": "A5/RC"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# Decompression-bomb guard for dataset images (each is a small picture, not a page).
MAX_IMAGE_PIXELS = 16_000_000
ROBUSTIFIER_FORMAT = "a5ocr-robustifier-1"




# =========================================================================== the defences
class Robustifier(nn.Module):
    """R: images x [B, C, H, W] in [0, 1] -> defended images z = clamp(x + dx_D, 0, 1), same
    shape, with dx_D = eps_D (2 sigmoid(g(x)) - 1) (``a5ocr.training.losses.defended``).

    g is a small fully convolutional net: ``depth`` 3x3 convolutions (``width`` channels, ReLU
    between) on x - 0.5. Its last convolution starts at zero, so g(x) = 0, dx_D = 0 and R is the
    identity at initialisation: training starts from "no defence". Any H, W.
    """

    def __init__(self, channels: int = 3, eps_d: float = 0.3, width: int = 32, depth: int = 4):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError("Robustifier needs depth >= 1 and width >= 1")
        self.channels, self.eps_d, self.width, self.depth = int(channels), float(eps_d), int(width), int(depth)
        layers: list[nn.Module] = []
        c_in = channels
        for _ in range(depth - 1):
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU()]
            c_in = width
        last = nn.Conv2d(c_in, channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*layers, last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return defended(x, self.net(x - 0.5), self.eps_d)

    def meta(self) -> dict:
        return {"channels": self.channels, "eps_d": self.eps_d, "width": self.width, "depth": self.depth}


def save_robustifier(r: Robustifier, path: Path) -> None:
    """Weights and shape metadata to safetensors (never pickle), atomically."""
    from a5ocr.runio import save_module

    save_module(r, path, {"format": ROBUSTIFIER_FORMAT, **{k: str(v) for k, v in r.meta().items()}})


def load_robustifier(path: Path) -> Robustifier:
    """Read ``save_robustifier``'s file; ``RobustifyError`` on a missing, corrupt or foreign file."""
    from a5ocr.runio import read_safetensors

    path = Path(path)
    try:
        state, meta = read_safetensors(path)
    except FileNotFoundError:
        raise RobustifyError(f"robustifier file not found: {path}") from None
    except ValueError as err:
        raise RobustifyError(f"{path} is not a readable safetensors file: {err}") from None
    if meta.get("format") != ROBUSTIFIER_FORMAT:
        raise RobustifyError(f"{path} is not an a5ocr robustifier (no metadata)")
    try:
        r = Robustifier(int(meta["channels"]), float(meta["eps_d"]), int(meta["width"]), int(meta["depth"]))
        r.load_state_dict(state)
    except (KeyError, ValueError, RuntimeError) as err:
        raise RobustifyError(f"{path}: robustifier does not match its metadata: {err}") from None
    return r.eval()


def offline_defence(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, *, eps_a: float, eps_d: float, steps: int = 100,
    lr: float = 0.1, method: str = "ibp",
) -> torch.Tensor:
    """A5/O (Eq. 6): the defended images z [B, C, H, W] of x [B, C, H, W] for their ``labels`` [B].

    One free tensor per image (z-parameters, 0 = no change) minimises the worst-case
    cross-entropy of ``model`` over ||dx_A||_inf <= ``eps_a`` (``method`` bounds) with RMSprop;
    each image keeps the step with its lowest worst-case cross-entropy (step 0 = x itself).
    The model's parameters are not changed (nor their gradients).
    """
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad():  # callers may hold no_grad (the acquisitions generator yields inside it)
            return _optimise_offline(model, x, labels, eps_a, eps_d, steps, lr, method)
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def _optimise_offline(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps_a: float, eps_d: float, steps: int,
                      lr: float, method: str) -> torch.Tensor:
    theta = torch.zeros_like(x, requires_grad=True)
    opt = torch.optim.RMSprop([theta], lr=lr)
    best = x.detach().clone()
    best_loss = torch.full((x.shape[0],), math.inf, device=x.device, dtype=x.dtype)
    for step in range(steps + 1):
        z = defended(x, theta, eps_d)
        margins = bounds.margin_lower_bounds(model, *attack_box(z, eps_a), labels, method=method)
        per = bounds.worst_case_cross_entropy(margins, labels, reduction="none")
        with torch.no_grad():
            better = per < best_loss
            best[better] = z[better]
            best_loss = torch.where(better, per, best_loss)
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        per.sum().backward()
        opt.step()
    return best


# =========================================================================== image datasets
@dataclass
class ImageSet:
    """Images x [N, 3, R, R] float32 in [0, 1] with labels y [N] (int64) into ``classes``."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return int(self.y.numel())


def _resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, R, R] (area average when shrinking, bilinear when growing)."""
    if x.shape[-2:] == (resolution, resolution):
        return x
    mode = "area" if x.shape[-1] >= resolution and x.shape[-2] >= resolution else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    return torch.nn.functional.interpolate(x, size=(resolution, resolution), mode=mode, **kw).clamp(0.0, 1.0)


def _to_three(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def _read_image(path: Path) -> np.ndarray:
    """One dataset image -> float32 [3, H, W] in [0, 1] (transparency over white); guarded
    against decompression bombs."""
    from PIL import Image, UnidentifiedImageError

    from a5ocr.scan.page import _pillow_guard

    try:
        with _pillow_guard(MAX_IMAGE_PIXELS), Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA", "P"):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            if im.mode.startswith("I;16") or im.mode == "I":
                arr = np.asarray(im).astype(np.float64)
                arr = arr / (65535.0 if arr.size and arr.max() > 255 else 255.0)
                arr = np.repeat(arr[None], 3, axis=0)
            else:
                arr = np.asarray(im.convert("RGB")).astype(np.float64).transpose(2, 0, 1) / 255.0
    except Image.DecompressionBombError:
        raise DatasetError(f"{path}: image too large (over {MAX_IMAGE_PIXELS:,} pixels; decompression-bomb guard)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"{path}: not a readable image ({err})") from None
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def _class_folders(root: Path) -> tuple[list[str], list[list[Path]]]:
    """A folder of class subfolders -> (class names sorted, image paths per class)."""
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    loose = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    dirs = [p for p in entries if p.is_dir()]
    if loose:
        raise DatasetError(f"{root}: images must be in one subfolder per class (found {len(loose)} image file(s) directly "
                           f"in the folder, e.g. {loose[0].name}); expected {root}/<class>/<image>")
    if len(dirs) < 2:
        raise DatasetError(f"{root}: expected one subfolder per class (at least 2), found {len(dirs)}: "
                           f"expected {root}/<class>/<image>")
    files = []
    for d in dirs:
        inner = sorted(p for p in d.iterdir() if not p.name.startswith("."))
        sub = [p for p in inner if p.is_dir()]
        if sub:
            raise DatasetError(f"class folder {d} holds a subfolder ({sub[0].name}); expected images only "
                               f"({root}/<class>/<image>, or {root}/train/<class>/ and {root}/test/<class>/)")
        imgs = [p for p in inner if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not imgs:
            raise DatasetError(f"class folder {d} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files.append(imgs)
    return [d.name for d in dirs], files


def _load_folder_set(root: Path, resolution: int, classes: list[str] | None = None) -> ImageSet:
    names, files = _class_folders(root)
    if classes is not None and names != classes:
        raise DatasetError(f"{root}: its classes {names} differ from the training classes {classes}")
    xs, ys = [], []
    for k, paths in enumerate(files):
        for p in paths:
            xs.append(_resize(torch.from_numpy(_read_image(p))[None], resolution)[0])
            ys.append(k)
    return ImageSet(torch.stack(xs), torch.tensor(ys, dtype=torch.int64), names)


def _npz_images(arr: np.ndarray, name: str, path: Path) -> torch.Tensor:
    """An npz image array -> float32 [N, C, H, W] in [0, 1] (see ``load_dataset``)."""
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        if arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3):
            arr = arr.transpose(0, 3, 1, 2)
        elif arr.shape[1] not in (1, 3):
            raise DatasetError(f"{path}: '{name}' has shape {arr.shape}; expected [N, H, W], [N, H, W, C] or [N, C, H, W] with C = 1 or 3")
        if arr.shape[1] == 4:
            arr = arr[:, :3]
    else:
        raise DatasetError(f"{path}: '{name}' has shape {arr.shape}; expected [N, H, W], [N, H, W, C] or [N, C, H, W]")
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    elif arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all() or out.min() < 0.0 or out.max() > 1.0:
            raise DatasetError(f"{path}: float '{name}' must hold values in [0, 1] (found {np.nanmin(out):.3g} to {np.nanmax(out):.3g}, or NaN)")
    else:
        raise DatasetError(f"{path}: '{name}' has dtype {arr.dtype}; expected uint8, uint16, bool or float in [0, 1]")
    return torch.from_numpy(np.ascontiguousarray(out))


def _npz_labels(arr: np.ndarray, name: str, n: int, path: Path) -> torch.Tensor:
    if arr.ndim != 1 or arr.shape[0] != n:
        raise DatasetError(f"{path}: '{name}' must be 1-D with one label per image ({n}), found shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise DatasetError(f"{path}: '{name}' must hold integer class indices, found dtype {arr.dtype}")
    if n and arr.min() < 0:
        raise DatasetError(f"{path}: '{name}' holds a negative class index ({arr.min()})")
    return torch.from_numpy(arr.astype(np.int64))


def _load_npz(path: Path, resolution: int) -> tuple[ImageSet, ImageSet | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except ValueError as err:
        raise DatasetError(f"{path}: not a plain .npz of arrays ({err}; object arrays are refused, they would need unpickling)") from None
    except (OSError, EOFError) as err:
        raise DatasetError(f"{path}: not a readable .npz file ({err})") from None
    for key in ("x", "y"):
        if key not in data:
            raise DatasetError(f"{path}: no array '{key}' (an .npz dataset holds x [N, H, W(, C)] and y [N]; found: {', '.join(data) or 'nothing'})")
    if ("x_test" in data) != ("y_test" in data):
        raise DatasetError(f"{path}: x_test and y_test come together")
    x = _npz_images(data["x"], "x", path)
    y = _npz_labels(data["y"], "y", x.shape[0], path)
    if x.shape[0] == 0:
        raise DatasetError(f"{path}: 'x' holds no images")
    test = None
    if "x_test" in data:
        xt = _npz_images(data["x_test"], "x_test", path)
        yt = _npz_labels(data["y_test"], "y_test", xt.shape[0], path)
        if xt.shape[1:] != x.shape[1:]:
            raise DatasetError(f"{path}: x_test images {tuple(xt.shape[1:])} differ from x images {tuple(x.shape[1:])}")
        test = (xt, yt)
    k = int(max(int(y.max()), int(test[1].max()) if test is not None and len(test[1]) else -1)) + 1
    if "classes" in data:
        cl = data["classes"]
        if cl.ndim != 1 or not (np.issubdtype(cl.dtype, np.str_) or np.issubdtype(cl.dtype, np.integer)):
            raise DatasetError(f"{path}: 'classes' must be a 1-D array of names")
        classes = [str(c) for c in cl.tolist()]
        if len(classes) < k:
            raise DatasetError(f"{path}: labels go up to {k - 1} but 'classes' names only {len(classes)}")
    else:
        classes = [str(i) for i in range(k)]
    if len(classes) < 2:
        raise DatasetError(f"{path}: a classifier needs at least 2 classes, the labels hold {len(classes)}")
    train = ImageSet(_to_three(_resize(x, resolution)), y, classes)
    if test is None:
        return train, None
    return train, ImageSet(_to_three(_resize(test[0], resolution)), test[1], classes)


def split(data: ImageSet, test_fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """A seeded random split into (train, test); each keeps at least one image."""
    n = len(data)
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    te, tr = perm[:n_test], perm[n_test:]
    return ImageSet(data.x[tr], data.y[tr], data.classes), ImageSet(data.x[te], data.y[te], data.classes)


def load_dataset(path: Path | str, resolution: int, *, test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Read an image dataset as (train, test) ``ImageSet`` s at ``resolution`` x ``resolution``.

    Layouts (``DatasetError`` with what was expected otherwise):

    * a folder ``PATH/<class>/<image>`` (PNG, JPEG, BMP, GIF, TIFF, WebP; at least 2 classes;
      class names = subfolder names, sorted) -- split at random (``test_fraction``, ``seed``);
      or ``PATH/train/<class>/...`` and ``PATH/test/<class>/...`` with the same classes;
    * an ``.npz`` (read without pickle) with ``x`` [N, H, W], [N, H, W, C] or [N, C, H, W]
      (C = 1, 3 or 4 (alpha dropped); uint8, uint16, bool or float in [0, 1]) and ``y`` [N]
      integer classes; optional ``x_test`` / ``y_test`` (else the random split) and
      ``classes`` (names).

    Images are taken as acquired (no acquisition model), resized to a square (area average when
    shrinking) and replicated to 3 channels when gray.
    """
    path = Path(path)
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    if not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DatasetError(f"{path}: a dataset is a folder of class subfolders or an .npz file")
        train, test = _load_npz(path, resolution)
        return (train, test) if test is not None else split(train, test_fraction, seed)
    if (path / "train").is_dir() and (path / "test").is_dir():
        train = _load_folder_set(path / "train", resolution)
        return train, _load_folder_set(path / "test", resolution, train.classes)
    return split(_load_folder_set(path, resolution), test_fraction, seed)


# =========================================================================== configuration
PRESETS: dict[str, dict] = {
    # the stage-1 settings are those of a5ocr.training.design's presets of the same name
    "cpu": {"r_steps": 1600, "rc_steps": 1600, "o_steps": 100, "batch_size": 124, "width": 32, "depth": 4},
    "paper": {"r_steps": 4000, "rc_steps": 4000, "o_steps": 100, "batch_size": 124, "width": 64, "depth": 5},
    "tiny": {"r_steps": 20, "rc_steps": 20, "o_steps": 5, "batch_size": 16, "width": 8, "depth": 2},
}


@dataclass
class RobustifyConfig:
    """Everything an image-side run depends on (written to ``config.json``)."""

    recipe: str = "r"
    run: str | None = None  # a design run: its prototypes, acquisition and stage-1 classifier
    font: str = "comic-neue"
    chars: str = "62"
    data: str | None = None  # an image dataset (folder or .npz) instead of glyphs
    classifier: str | None = None
    robustifier: str | None = None  # start R from this file (an A5/R run's): rc then skips its r stage
    eps_a: float = 0.1
    eps_r: float | None = None  # eps_A^R of training / optimisation (default eps_a)
    eps_d: float = 0.3
    preset: str = "cpu"
    resolution: int | None = None
    arch: str | None = None
    device: str = "auto"
    seed: int = 0
    out: str | None = None
    copies: int | None = None
    stage1_steps: int | None = None
    warmup: int | None = None
    ramp: int | None = None
    r_steps: int | None = None
    rc_steps: int | None = None
    o_steps: int | None = None
    o_lr: float = 0.1
    batch_size: int | None = None
    width: int | None = None
    depth: int | None = None
    lr: float = 1e-3
    lr_rc: float = 1e-4
    lr_robustifier: float = 1e-3
    train_bounds: str | None = None
    test_fraction: float = 0.2
    samples_per_char: int = 100
    eval_seed: int | None = None
    certify_methods: tuple[str, ...] = ("ibp", "crown-ibp")
    checkpoint_seconds: float = 120.0
    acquisition: dict = field(default_factory=lambda: AcquisitionConfig().to_dict())

    def resolved(self) -> "RobustifyConfig":
        """Fill preset defaults and check every value (``RobustifyError``, one readable line)."""
        from a5ocr.training.design import PRESETS as DESIGN_PRESETS
        from a5ocr.training.design import bounds_options_problem

        if self.recipe not in RECIPES:
            raise RobustifyError(f"--recipe must be o, r or rc, got {self.recipe!r}")
        if self.preset not in PRESETS:
            raise RobustifyError(f"unknown preset {self.preset!r} (one of: {', '.join(PRESETS)})")
        if self.run and self.data:
            raise RobustifyError("give --run (acquired glyphs of a design run) or --data (an image dataset), not both")
        if self.robustifier and self.recipe == "o":
            raise RobustifyError("A5/O optimises each image on its own: it takes no --robustifier")
        for name in ("eps_a", "eps_r"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and 0.0 < v < 1.0):
                raise RobustifyError(f"--{name.replace('_', '-')} must be in (0, 1), got {v}")
        if not (math.isfinite(self.eps_d) and 0.0 < self.eps_d <= 1.0):
            raise RobustifyError(f"--eps-d must be in (0, 1], got {self.eps_d}")
        if not 0.0 < self.test_fraction < 1.0:
            raise RobustifyError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.samples_per_char < 1:
            raise RobustifyError("--samples-per-char must be at least 1")
        if not (self.o_lr > 0 and math.isfinite(self.o_lr)):
            raise RobustifyError(f"--o-lr must be positive, got {self.o_lr}")
        d = DESIGN_PRESETS[self.preset]
        fill = {k: d[k] for k in ("resolution", "arch", "copies", "stage1_steps", "warmup", "ramp", "train_bounds")}
        fill.update(PRESETS[self.preset])
        cfg = replace(self, **{k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in fill.items()})
        if cfg.eps_r is None:
            cfg = replace(cfg, eps_r=cfg.eps_a)
        if cfg.eval_seed is None:
            cfg = replace(cfg, eval_seed=default_eval_seed(cfg.seed))
        if cfg.resolution < 8:
            raise RobustifyError("--resolution must be at least 8")
        for name in ("copies", "stage1_steps", "r_steps", "rc_steps", "batch_size", "width", "depth"):
            if getattr(cfg, name) < 1:
                raise RobustifyError(f"--{name.replace('_', '-')} must be at least 1")
        if cfg.o_steps < 0:
            raise RobustifyError("--o-steps must be >= 0")
        problem = bounds_options_problem(cfg.train_bounds, cfg.certify_methods)
        if problem:
            raise RobustifyError(problem)
        return replace(cfg, certify_methods=tuple(cfg.certify_methods))

    def to_dict(self) -> dict:
        return asdict(self)


# =========================================================================== data sources
@dataclass
class Data:
    """What a run trains and is tested on.

    Glyphs: ``glyphs`` [K, R, R] ink prototypes and ``acquisition`` (fresh training draws; the
    test set is ``samples_per_char`` draws per glyph, seeded). Datasets: ``train`` and ``test``.
    """

    classes: str | list[str]
    resolution: int
    description: str
    glyphs: torch.Tensor | None = None
    acquisition: Acquisition | None = None
    train: ImageSet | None = None
    test: ImageSet | None = None
    font: str | None = None
    legacy: Path | None = None  # the design run's stage-1 classifier

    def test_total(self, samples_per_char: int) -> int:
        return len(self.test) if self.test is not None else self.glyphs.shape[0] * samples_per_char

    def test_chunks(self, samples_per_char: int, seed: int, device: torch.device,
                    chunk: int = 1024) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test set as (x [n, 3, R, R], labels [n]) chunks on ``device``; the same on every call."""
        if self.test is not None:
            for s in range(0, len(self.test), chunk):
                yield self.test.x[s : s + chunk].to(device), self.test.y[s : s + chunk].to(device)
            return
        from a5ocr.evaluation import acquisitions

        yield from acquisitions(self.glyphs.to(device), self.acquisition, samples_per_char, seed, chunk)

    def batch_source(self, batch_size: int, device: torch.device) -> Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]] | None:
        """For datasets, a random minibatch sampler for ``a5ocr.training.trainer.Trainer``; None for glyphs."""
        if self.train is None:
            return None
        x, y = self.train.x.to(device), self.train.y.to(device)

        def draw(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            idx = torch.randint(0, x.shape[0], (batch_size,), generator=generator, device=generator.device)
            return x[idx], y[idx]

        return draw


def load_data(cfg: RobustifyConfig) -> tuple[Data, RobustifyConfig]:
    """The run's data (and cfg with the resolution and acquisition a design run imposes)."""
    if cfg.data:
        train, test = load_dataset(cfg.data, cfg.resolution, test_fraction=cfg.test_fraction, seed=cfg.seed)
        desc = f"dataset {cfg.data}: {len(train)} training and {len(test)} test images, {len(train.classes)} classes"
        return Data(classes=train.classes, resolution=cfg.resolution, description=desc, train=train, test=test), cfg
    if cfg.run:
        from a5ocr.runs import load_run

        try:
            run = load_run(cfg.run)
        except RunError as err:
            raise RobustifyError(str(err)) from None
        cfg = replace(cfg, resolution=run.resolution, acquisition=run.acquisition.to_dict(), font=run.font_path,
                      chars=run.chars)
        legacy = run.path / "baseline_classifier.safetensors"
        if not legacy.is_file() and run.config.get("classifier"):
            legacy = Path(run.config["classifier"])
        desc = f"acquired glyphs of design run {run.path} ({run.family}, {len(run.chars)} characters)"
        return Data(classes=run.chars, resolution=run.resolution, description=desc, glyphs=run.original.float(),
                    acquisition=Acquisition(run.resolution, run.acquisition), font=run.font_path,
                    legacy=legacy if legacy.is_file() else None), cfg
    from a5ocr.glyphs import rasterize

    g = rasterize(cfg.font, cfg.chars, cfg.resolution)
    acq = Acquisition(cfg.resolution, AcquisitionConfig.from_dict(cfg.acquisition))
    desc = f"acquired glyphs of {g.family} ({len(g.chars)} characters, {cfg.resolution}x{cfg.resolution})"
    return Data(classes=g.chars, resolution=cfg.resolution, description=desc, glyphs=g.images, acquisition=acq,
                font=g.font_path), cfg


# =========================================================================== the run
def _legacy_classifier(cfg: RobustifyConfig, data: Data) -> tuple[nn.Module, dict, Path] | None:
    path = Path(cfg.classifier) if cfg.classifier else data.legacy
    if path is None:
        return None
    model, meta = models.load_classifier(path)
    if list(meta["chars"]) != list(data.classes):
        raise RobustifyError(f"classifier {path} reads {len(meta['chars'])} classes {_short(meta['chars'])}, "
                             f"the data has {len(data.classes)}: {_short(data.classes)}")
    if meta["resolution"] != data.resolution:
        raise RobustifyError(f"classifier {path} takes {meta['resolution']}x{meta['resolution']} images, the data is "
                             f"{data.resolution}x{data.resolution} (use --resolution {meta['resolution']})")
    return model, meta, path


def _short(classes) -> str:
    s = "".join(classes) if isinstance(classes, str) else ", ".join(classes)
    return repr(s if len(s) <= 40 else s[:37] + "...")


class DefenceStats:
    """Per-class squared change and the largest |dx_D| of the defended test images."""

    def __init__(self, k: int):
        self.sse = torch.zeros(k, dtype=torch.float64)
        self.count = torch.zeros(k, dtype=torch.float64)
        self.max_abs = 0.0

    def add(self, x: torch.Tensor, z: torch.Tensor, labels: torch.Tensor) -> None:
        d = (z.double() - x.double()).cpu()
        per = (d**2).flatten(1).mean(1)
        lab = labels.cpu()
        self.sse.index_add_(0, lab, per)
        self.count.index_add_(0, lab, torch.ones_like(per))
        self.max_abs = max(self.max_abs, float(d.abs().max()) if d.numel() else 0.0)

    def psnr(self) -> torch.Tensor:
        mse = self.sse / self.count.clamp_min(1)
        return torch.where(mse > 0, -10.0 * torch.log10(mse.clamp_min(1e-300)), torch.full_like(mse, math.inf))

    def overall_psnr(self) -> float | None:
        mse = float(self.sse.sum() / max(float(self.count.sum()), 1.0))
        return None if mse <= 0 else -10.0 * math.log10(mse)


def defence_transform(recipe: str, model: nn.Module, robustifier: Robustifier | None, cfg: RobustifyConfig,
                      stats: DefenceStats | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """transform(x, labels) -> z: the recipe's defended images of a test chunk (A5/O uses the
    labels; A5/R and A5/RC do not); records the change in ``stats``."""

    def apply(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if recipe == "o":
            z = offline_defence(model, x, labels, eps_a=cfg.eps_r, eps_d=cfg.eps_d, steps=cfg.o_steps, lr=cfg.o_lr,
                                method="ibp" if cfg.train_bounds == "ibp" else "crown-ibp")
        else:
            robustifier.eval()
            with torch.no_grad():
                z = robustifier(x)
        if stats is not None:
            stats.add(x, z, labels)
        return z.detach()

    return apply


def _light_eval(model, chunks, total, classes, cfg: RobustifyConfig, device, progress=None) -> dict:
    from a5ocr.evaluation import evaluate_samples

    ev = evaluate_samples(model, chunks, total=total, chars=classes, eps_a=cfg.eps_a, seed=cfg.eval_seed, device=device,
                          methods=cfg.certify_methods, attack="none", radius_steps=0, on_progress=progress)
    s = ev.result.summary()
    best = list(s["certified_error"].values())[-1]
    return {"clean_error": s["clean_error"], "certified_error": best, "certified_error_by_method": s["certified_error"]}


def _training_keys(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("device", "out", "checkpoint_seconds")}


def default_out(cfg: RobustifyConfig, data: Data) -> Path:
    src = Path(cfg.data).stem if cfg.data else (Path(cfg.run).name if cfg.run else Path(data.font or "glyphs").stem)
    slug = "".join(ch if ch.isalnum() else "-" for ch in src.lower()).strip("-") or "data"
    return Path("renders") / f"robustify-{cfg.recipe}-{slug}-{cfg.eps_a:g}"


def run_robustify(cfg: RobustifyConfig, *, resume: bool = False, reporter=None) -> dict:
    """Run an image-side recipe end to end; returns the summary (also ``summary.json``)."""
    from a5ocr.training.design import Reporter, pick_device
    from a5ocr.training.trainer import RobustGlyphs, Trainer, make_stage, run_stages
    from a5ocr.runio import append_jsonl, ensure_writable_dir, environment, write_json

    rep = reporter or Reporter()
    cfg = cfg.resolved()
    try:
        device = pick_device(cfg.device)
    except ValueError as err:
        raise RobustifyError(str(err)) from None
    t_start = time.monotonic()
    torch.manual_seed(cfg.seed)
    data, cfg = load_data(cfg)
    out = Path(cfg.out) if cfg.out else default_out(cfg, data)
    cfg = replace(cfg, out=str(out))
    try:
        ensure_writable_dir(out)
    except OSError as err:
        raise RobustifyError(f"cannot write to --out {out}: {err.strerror or err}") from None

    legacy = _legacy_classifier(cfg, data)
    if legacy is not None:
        cfg = replace(cfg, arch=legacy[1]["arch"])
    robustifier = None
    if cfg.robustifier:
        robustifier = load_robustifier(Path(cfg.robustifier))
        if abs(robustifier.eps_d - cfg.eps_d) > 1e-12:
            raise RobustifyError(f"robustifier {cfg.robustifier} was trained for eps_D {robustifier.eps_d:g}, not --eps-d {cfg.eps_d:g}")
        cfg = replace(cfg, width=robustifier.width, depth=robustifier.depth)
    elif cfg.recipe in ("r", "rc"):
        robustifier = Robustifier(3, cfg.eps_d, cfg.width, cfg.depth)
    ckpt, config_path = out / "checkpoint.pt", out / "config.json"
    record = {"kind": "robustify", "config": cfg.to_dict(), "data": data.description, "environment": environment(),
              "device": str(device)}
    if resume:
        if not config_path.is_file():
            raise RobustifyError(f"nothing to resume in {out} (no config.json)")
        old = json.loads(config_path.read_text()).get("config", {})
        new = json.loads(json.dumps(cfg.to_dict()))
        if _training_keys(old) != _training_keys(new):
            diff = sorted(k for k in _training_keys(new) if _training_keys(old).get(k) != new.get(k))
            raise RobustifyError(f"--resume with different settings than the interrupted run: {', '.join(diff)}")
    elif ckpt.is_file() or (out / "summary.json").is_file():
        raise RobustifyError(f"{out} already holds a run; use --resume to continue it or --out for a new folder")
    write_json(config_path, record)

    k = len(data.classes)
    model = legacy[0] if legacy is not None else models.build(cfg.arch, data.resolution, k)
    glyphs = RobustGlyphs(data.glyphs, 0.0) if data.glyphs is not None else None  # fixed prototypes (z unused)
    trainer = Trainer(model, glyphs, data.acquisition, copies=cfg.copies, seed=cfg.seed, device=device,
                      robustifier=robustifier, batch=data.batch_source(cfg.batch_size, device), num_classes=k)
    stages = []
    if legacy is None:
        stages.append(make_stage("crown-ibp", cfg.stage1_steps, cfg.eps_a, warmup=cfg.warmup, ramp=cfg.ramp, lr=cfg.lr,
                                 train_bounds=cfg.train_bounds))
    if cfg.recipe == "r" or (cfg.recipe == "rc" and not cfg.robustifier):
        stages.append(make_stage("r", cfg.r_steps, cfg.eps_r, train_bounds=cfg.train_bounds, lr_robustifier=cfg.lr_robustifier))
    if cfg.recipe == "rc":
        stages.append(make_stage("rc", cfg.rc_steps, cfg.eps_r, lr=cfg.lr_rc, train_bounds=cfg.train_bounds,
                                 lr_robustifier=cfg.lr_robustifier))

    baseline_path = out / "baseline_classifier.safetensors"
    names = list(data.classes)
    chars_meta = data.classes if isinstance(data.classes, str) else names

    def save_checkpoint() -> None:
        trainer.checkpoint(ckpt)
        models.save_classifier(trainer.model, out / "classifier.safetensors", arch=cfg.arch, resolution=data.resolution, chars=chars_meta)
        if trainer.robustifier is not None:
            save_robustifier(trainer.robustifier, out / "robustifier.safetensors")

    metrics_path = out / "metrics.jsonl"

    def on_log(r: dict) -> None:
        r = {**r, "wall_seconds": round(time.monotonic() - t_start, 2)}
        append_jsonl(metrics_path, r)
        rep.log(r)

    def after_stage(index: int, spec) -> None:
        if spec.recipe == "crown-ibp":
            models.save_classifier(trainer.model, baseline_path, arch=cfg.arch, resolution=data.resolution, chars=chars_meta)

    if legacy is not None:  # C before A5, saved before any stage can train it (A5/RC fine-tunes this object)
        models.save_classifier(legacy[0], baseline_path, arch=cfg.arch, resolution=data.resolution, chars=chars_meta)
    if stages:
        if resume and ckpt.is_file():
            try:
                trainer.restore(ckpt, stages)
            except (RuntimeError, ValueError, KeyError) as err:
                raise RobustifyError(f"{ckpt} does not fit this run: {err}") from None
            rep.message(f"resumed {out} at stage {trainer.stage_index + 1}/{len(stages)}, step {trainer.step}")
        else:
            metrics_path.unlink(missing_ok=True)
            trainer.start_stage(stages[0])
        run_stages(trainer, stages, reporter=rep, on_log=on_log, on_checkpoint=save_checkpoint,
                   checkpoint_seconds=cfg.checkpoint_seconds, after_stage=after_stage)
    else:
        save_checkpoint()

    # -- evaluation on the test set: C alone on x, then the recipe on z (same x) -------------
    total = data.test_total(cfg.samples_per_char)
    before = models.load_classifier(baseline_path)[0].to(device)
    baseline = _light_eval(before, data.test_chunks(cfg.samples_per_char, cfg.eval_seed, device), total, data.classes, cfg,
                           device, lambda ph, d, t: rep.evaluation("classifier alone", d, t))
    stats = DefenceStats(k)
    transform = defence_transform(cfg.recipe, trainer.model, trainer.robustifier, cfg, stats)
    chunks = ((transform(x, y), y) for x, y in data.test_chunks(cfg.samples_per_char, cfg.eval_seed, device))
    final = _light_eval(trainer.model, chunks, total, data.classes, cfg, device,
                        lambda ph, d, t: rep.evaluation(RECIPE_NAMES[cfg.recipe], d, t))
    final.update({"psnr_db": stats.overall_psnr(), "max_abs_change": stats.max_abs})

    from a5ocr.figures import defence_examples

    x_ex, y_ex = next(data.test_chunks(cfg.samples_per_char, cfg.eval_seed, device))
    pick = _examples(y_ex, 12)
    z_ex = transform(x_ex[pick], y_ex[pick])
    defence_examples(x_ex[pick].cpu(), z_ex.cpu(), cfg.eps_d, out / "examples.png")

    summary = {
        "kind": "robustify",
        "recipe": cfg.recipe,
        "recipe_name": RECIPE_NAMES[cfg.recipe],
        "data": data.description,
        "classes": data.classes if isinstance(data.classes, str) else names,
        "eps_a": cfg.eps_a,
        "eps_r": cfg.eps_r,
        "eps_d": cfg.eps_d,
        "resolution": data.resolution,
        "arch": cfg.arch,
        "seed": cfg.seed,
        "eval_seed": cfg.eval_seed,
        "samples": total,
        "certify_method": "+".join(cfg.certify_methods),
        "classifier_before": str(legacy[2]) if legacy is not None else "stage 1 (CROWN-IBP, this run)",
        "wall_seconds": round(time.monotonic() - t_start, 1),
        "device": str(device),
        "out": str(out),
        "baseline": baseline,
        "final": final,
    }
    write_json(out / "summary.json", summary)
    return summary


def _examples(labels: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of up to ``n`` test samples of distinct classes (first occurrences)."""
    seen, idx = set(), []
    for i, y in enumerate(labels.tolist()):
        if y not in seen:
            seen.add(y)
            idx.append(i)
        if len(idx) == n:
            break
    return torch.tensor(idx, dtype=torch.int64, device=labels.device)


# =========================================================================== a5ocr evaluate
def is_robustify_run(run_dir: Path | str) -> bool:
    """True when ``run_dir`` holds an ``a5ocr robustify`` run (its config.json says so)."""
    p = Path(run_dir) / "config.json"
    try:
        return json.loads(p.read_text()).get("kind") == "robustify"
    except (OSError, ValueError, AttributeError):
        return False


def evaluate_robustify_run(run_dir: Path | str, *, original: bool = False, device: torch.device | str = "cpu",
                           eps_a: float | None = None, seed: int | None = None, samples_per_char: int | None = None,
                           **options):
    """The full protocol of ``a5ocr evaluate`` (``evaluate_samples``: certificate cascade,
    radius, attack and consistency checks) on a robustify run's test set: the recipe's defended
    images z = x + dx_D with the run's final classifier, or with ``original`` the classifier
    before A5 on x. ``EvaluateError`` on a missing or corrupt run."""
    from a5ocr.evaluation import EvaluateError, evaluate_samples

    run_dir = Path(run_dir)
    try:
        rec = json.loads((run_dir / "config.json").read_text())
        cfg = RobustifyConfig(**{**rec["config"], "certify_methods": tuple(rec["config"]["certify_methods"])})
        if seed is not None:
            cfg = replace(cfg, eval_seed=seed)
        if samples_per_char is not None:
            cfg = replace(cfg, samples_per_char=samples_per_char)
        cfg = cfg.resolved()
        data, cfg = load_data(cfg)
        clf = run_dir / ("baseline_classifier.safetensors" if original else "classifier.safetensors")
        model = models.load_classifier(clf)[0].to(device)
        robustifier = None
        if cfg.recipe in ("r", "rc") and not original:
            robustifier = load_robustifier(run_dir / "robustifier.safetensors").to(device)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise EvaluateError(f"{run_dir}: not a readable robustify run ({err})") from None
    device = torch.device(device)
    eps = cfg.eps_a if eps_a is None else eps_a
    k = len(data.classes)
    stats = DefenceStats(k)
    chunks = data.test_chunks(cfg.samples_per_char, cfg.eval_seed, device)
    if not original:
        transform = defence_transform(cfg.recipe, model, robustifier, cfg, stats)
        chunks = ((transform(x, y), y) for x, y in chunks)
    ev = evaluate_samples(model, chunks, total=data.test_total(cfg.samples_per_char), chars=data.classes, eps_a=eps,
                          seed=cfg.eval_seed, device=device, **options)
    if not original:
        ev.psnr = stats.psnr()
    what = "x (no defence, classifier before A5)" if original else f"z = x + dx_D ({RECIPE_NAMES[cfg.recipe]}, eps_D {cfg.eps_d:g})"
    ev.protocol = {"run": str(run_dir), "glyphs": what, "data": data.description, "classifier": str(clf),
                   "resolution": data.resolution, "psnr_reference": "the acquired images x", **ev.protocol}
    if data.test is None:
        ev.protocol["samples_per_char"] = cfg.samples_per_char
    ev.protocol["max_abs_change"] = stats.max_abs
    return ev
