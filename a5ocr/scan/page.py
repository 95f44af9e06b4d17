"""Page images: reading scans safely, writing PNGs, and rotations that ``scan`` and
``render_text`` share (so that a rotation applied by one is undone exactly by the other).

Conventions: a page is a float32 array [H, W] of gray levels in [0, 1], 1 = white paper,
0 = black ink. Pixel (col, row) covers the continuous square [col, col + 1) x [row, row + 1);
points are (x, y) with x to the right and y down. Angles are in degrees, positive =
counter-clockwise as seen on the screen (Pillow's ``Image.rotate`` convention).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from a5ocr.decode import pillow_guard
from a5ocr.errors import PageError
from a5ocr.runio import atomic_path

# Decompression-bomb guard: a page of more pixels than this is refused before it is decoded
# (an A4 page at 1200 dpi is 140 Mpx; at 600 dpi, 35 Mpx).
MAX_PAGE_PIXELS = 100_000_000


def _to_gray(img) -> np.ndarray:
    """Any Pillow image -> float32 [H, W] in [0, 1] (1 = paper). Transparent parts become white
    paper; 16-bit and 32-bit integer images keep their precision."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("L")
        mode = "L"
    if mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float64)
        return (arr / 65535.0).astype(np.float32)
    if mode == "I":
        arr = np.asarray(img).astype(np.float64)
        # 32-bit integer pages come from 16-bit files (older Pillow opens 16-bit PNG as "I")
        # or from 8-bit data widened; the largest value tells which range it uses.
        top = 65535.0 if arr.size and arr.max() > 255 else 255.0
        return np.clip(arr / top, 0.0, 1.0).astype(np.float32)
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        arr = np.nan_to_num(arr, nan=1.0, posinf=1.0, neginf=0.0)
        top = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
        return np.clip(arr / top, 0.0, 1.0).astype(np.float32)
    if mode != "L":
        img = img.convert("RGB").convert("L")  # CMYK, YCbCr, 1, LAB, HSV ...
    return np.asarray(img).astype(np.float32) / 255.0


def read_page(path: Path | str, max_pixels: int = MAX_PAGE_PIXELS) -> np.ndarray:
    """Read a PNG / JPEG / TIFF (any Pillow format; the first frame of a multi-page file)
    as a float32 gray page [H, W] in [0, 1], 1 = paper.

    The pixel count in the header is checked before any pixel is decoded; RGBA and LA images
    are composited on white, palette images expanded, 16-bit images scaled from 65535, the EXIF
    orientation applied. Raises ``PageError`` with a readable message.
    """
    path = Path(path)
    if not path.is_file():
        raise PageError(f"page not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"%PDF"):
        raise PageError(f"{path.name}: PDF input is not supported: convert it to PNG first (e.g. `pdftoppm -r 300 -png {path.name} page`)")
    try:
        with pillow_guard(max_pixels):
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise PageError(f"{path.name}: {w}x{h} pixels is more than the {max_pixels / 1e6:g} megapixel limit (a decompression bomb or a far too fine scan)")
                if w < 1 or h < 1:
                    raise PageError(f"{path.name}: the image is empty ({w}x{h})")
                img.seek(0)
                img.load()
                img = ImageOps.exif_transpose(img)
                return _to_gray(img)
    except PageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise PageError(f"{path.name}: refused: the image claims more pixels than the {max_pixels / 1e6:g} megapixel limit "
                        f"(a decompression bomb or a far too fine scan; {err})") from None
    except UnidentifiedImageError:
        raise PageError(f"{path.name}: not an image Pillow can read (PNG, JPEG, TIFF ...)") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as err:
        raise PageError(f"{path.name}: cannot read the image: {err}") from None


def to_u8(gray: np.ndarray) -> np.ndarray:
    """Float page in [0, 1] -> uint8 (255 = paper)."""
    return np.round(np.clip(gray, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_image(path: Path | str, image, **save_options) -> Path:
    """Write a Pillow image or a float gray page atomically; the format follows the suffix."""
    path = Path(path)
    if not path.parent.is_dir():
        raise PageError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise PageError(f"cannot write {path}: it is a folder")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(to_u8(image), mode="L")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise PageError(f"cannot write {path.name}: unknown image type {path.suffix!r} (use .png)")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **save_options)
    return path


# --------------------------------------------------------------------------- rotations


def rotated_shape(shape: tuple[int, int], angle: float, expand: bool) -> tuple[int, int]:
    """Output (H, W) of a rotation by ``angle``: the same, or large enough for the whole page."""
    h, w = shape
    if not expand:
        return h, w
    a = math.radians(angle)
    c, s = abs(math.cos(a)), abs(math.sin(a))
    return int(math.ceil(h * c + w * s - 1e-9)), int(math.ceil(w * c + h * s - 1e-9))


def _rotation(angle: float) -> np.ndarray:
    """2x2 matrix of a counter-clockwise (on screen) rotation in (x, y-down) coordinates."""
    a = math.radians(angle)
    return np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])


def rotate_points(pts: np.ndarray, angle: float, shape_in: tuple[int, int], shape_out: tuple[int, int]) -> np.ndarray:
    """Where points (x, y) [n, 2] of a page of ``shape_in`` land after ``rotate_image`` (the
    rotation is about the page centre; the centre maps to the centre of ``shape_out``)."""
    pts = np.asarray(pts, np.float64).reshape(-1, 2)
    cin = np.array([shape_in[1] / 2.0, shape_in[0] / 2.0])
    cout = np.array([shape_out[1] / 2.0, shape_out[0] / 2.0])
    return (pts - cin) @ _rotation(angle).T + cout


def rotate_box(box, angle: float, shape_in: tuple[int, int], shape_out: tuple[int, int]) -> list[float]:
    """The axis-aligned box [x0, y0, x1, y1] around a rotated box."""
    x0, y0, x1, y1 = box
    p = rotate_points(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), angle, shape_in, shape_out)
    return [float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())]


def rotate_image(gray: np.ndarray, angle: float, fill: float = 1.0, expand: bool = False, order: int = 1) -> np.ndarray:
    """Rotate a page by ``angle`` degrees (counter-clockwise on screen) about its centre;
    uncovered pixels get ``fill``. ``expand``: enlarge the page so nothing is cut off.
    Consistent with ``rotate_points`` (pixel centres at +0.5)."""
    shape_out = rotated_shape(gray.shape, angle, expand)
    rot = _rotation(angle)
    inv = rot.T  # out = R (in - cin) + cout  =>  in = R^T (out - cout) + cin
    cin = np.array([gray.shape[1] / 2.0, gray.shape[0] / 2.0])
    cout = np.array([shape_out[1] / 2.0, shape_out[0] / 2.0])
    # ndimage works on (row, col) indices of pixel centres: index i <-> coordinate i + 0.5.
    # in_xy = inv @ (out_xy - cout) + cin, swapped to (row, col).
    m = np.array([[inv[1, 1], inv[1, 0]], [inv[0, 1], inv[0, 0]]])
    c_out_rc = np.array([cout[1], cout[0]]) - 0.5
    c_in_rc = np.array([cin[1], cin[0]]) - 0.5
    offset = c_in_rc - m @ c_out_rc
    out = ndimage.affine_transform(gray.astype(np.float32), m, offset=offset, output_shape=shape_out,
                                   order=order, mode="constant", cval=fill)
    return out.astype(np.float32)
