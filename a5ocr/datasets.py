"""Image datasets: a folder of class subfolders, or an ``.npz`` of arrays, read as labelled
images at one square resolution (``load_dataset``), with a seeded train/test ``split``.

Stage-agnostic: the images are taken as already acquired (no acquisition model). Every bad
layout raises ``DatasetError`` (``a5ocr.errors``) with what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from a5ocr.errors import DatasetError, check_in_unit_interval
from a5ocr.decode import pillow_guard

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
# Decompression-bomb guard for dataset images (each is a small picture, not a page).
MAX_IMAGE_PIXELS = 16_000_000


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
    try:
        with pillow_guard(MAX_IMAGE_PIXELS), Image.open(path) as im:
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
    check_in_unit_interval(test_fraction, "--test-fraction", DatasetError)
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

