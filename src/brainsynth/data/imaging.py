"""2D image helpers shared by the sources: grayscale conversion and aspect-preserving square fit."""

from __future__ import annotations

import numpy as np
from PIL import Image

HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_gray(image: Image.Image) -> Image.Image:
    """Any PIL image → mode 'L'. 16-bit/int/float images are scaled by their own range (a plain
    convert('L') would clip them); RGB(A), palette and 1-bit images use PIL's luminance conversion."""
    if image.mode in HIGH_BIT_MODES:
        array = np.asarray(image, dtype=np.float32)
        lo, hi = float(array.min()), float(array.max())
        array = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
        return Image.fromarray(np.round(array).astype(np.uint8))
    return image.convert("L")


def fitted_size(width: float, height: float, size: int) -> tuple[int, int]:
    """(w, h) in pixels of a width × height picture scaled so its longer side is ``size``."""
    scale = size / max(width, height)
    return max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale)))


def fit_square(image: Image.Image, size: int, physical: tuple[float, float] | None = None) -> np.ndarray:
    """Grayscale PIL image → uint8 (size, size), aspect kept by zero padding (centred).

    ``physical`` = (width, height) in mm for anisotropic pixels; by default pixels are square.
    """
    width, height = image.size
    new_w, new_h = fitted_size(*(physical or (width, height)), size)
    if (new_w, new_h) != (width, height):
        shrinking = new_w < width or new_h < height
        image = image.resize((new_w, new_h), Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC,
                             reducing_gap=3.0 if shrinking else None)
    canvas = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = np.asarray(image)
    return canvas

