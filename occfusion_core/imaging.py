"""Resizing images and masks, one way for every stage and source (PIL, which maps the output pixel
grid onto the input's corner to corner: the same convention as scaling intrinsics by the size ratio)."""

from __future__ import annotations

import numpy as np

FILTERS = ("nearest", "bilinear", "bicubic", "box", "lanczos")
"""Resampling filters by name; ``box`` is area averaging (``cv2.INTER_AREA`` for integer factors)."""


def resize(array: np.ndarray, size_wh: tuple[int, int], resample: str = "bicubic") -> np.ndarray:
    """An image or a mask at ``size_wh`` = (width, height); the input itself when already that size.

    Args:
        array: uint8 (h, w) or (h, w, 3) image, or bool (h, w) mask.
        resample: one of :data:`FILTERS`. A mask is resampled as the share of each output pixel it
            covers and thresholded at one half ('nearest' keeps its labels).

    Returns:
        uint8 image or bool mask of shape (height, width[, 3]).
    """
    from PIL import Image

    if resample not in FILTERS:
        raise ValueError(f"resample {resample!r} is not one of {', '.join(FILTERS)}")
    width, height = (int(v) for v in size_wh)
    if array.shape[1] == width and array.shape[0] == height:
        return array
    pil_filter = getattr(Image.Resampling, resample.upper())
    if array.dtype == bool:
        share = Image.fromarray(array.astype(np.float32)).resize((width, height), pil_filter)
        return np.asarray(share) > 0.5
    return np.asarray(Image.fromarray(array).resize((width, height), pil_filter))
