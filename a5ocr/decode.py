"""Decoding images a user gives us: Pillow's decompression-bomb guard, shared by the page reader
of ``a5ocr scan`` and the dataset loader of ``a5ocr robustify``.

An image's pixel count is read from its header before decoding; over the caller's limit the
decoder raises instead of allocating it (Pillow's own warning is made an error).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

from PIL import Image


@contextlib.contextmanager
def pillow_guard(max_pixels: int) -> Iterator[None]:
    """Pillow's own bomb check set to ``max_pixels`` (its warning made an error), restored after."""
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = old
