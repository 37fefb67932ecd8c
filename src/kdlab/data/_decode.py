"""Image decoding for the one-off image-folder import (numpy + Pillow only, safe to run in worker processes).

Not the training path: files are decoded once into a uint8 array and cached.
"""

from __future__ import annotations

import io
from typing import Union

import numpy as np

# a file path, or (display name, encoded bytes) for images read from an archive
Source = Union[str, "tuple[str, bytes]"]

_GRAY_MODES = {"L", "LA", "La", "1", "I", "I;16", "I;16B", "I;16L", "F"}


def source_name(src: Source) -> str:
    return src if isinstance(src, str) else src[0]


def decode_image(src: Source) -> np.ndarray:
    """Decode one image (path or ``(name, bytes)``) to uint8 ``(H, W, C)``, C = 1 (grayscale) or 3 (RGB).

    Raises the underlying error (OSError/ValueError...) for truncated or corrupt files.
    """
    from PIL import Image

    fp = src if isinstance(src, str) else io.BytesIO(src[1])
    with Image.open(fp) as im:
        im.load()  # forces a full decode: truncated files raise here
        if im.mode in _GRAY_MODES:
            im = im.convert("L") if im.mode != "L" else im
        elif im.mode != "RGB":
            im = im.convert("RGB")
        arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def decode_chunk(paths: list[Source]) -> tuple[np.ndarray | None, str | None]:
    """Decode ``paths`` (files or ``(name, bytes)``, all expected to share one size) into ``(n, H, W, C)`` uint8.

    Returns ``(array, None)`` or ``(None, message)``; the message names the offending file. Grayscale images
    are expanded to 3 channels when the chunk mixes them with colour ones.
    """
    arrays: list[np.ndarray] = []
    for p in paths:
        try:
            a = decode_image(p)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file
            return None, f"{source_name(p)}: cannot decode image ({type(exc).__name__}: {exc})"
        if arrays and a.shape[:2] != arrays[0].shape[:2]:
            return None, (
                f"{source_name(p)}: image size {a.shape[1]}x{a.shape[0]} differs from {arrays[0].shape[1]}x"
                f"{arrays[0].shape[0]} ({source_name(paths[0])}); an in-memory image folder needs one size (resize the images or use "
                "StreamingImageFolder)"
            )
        arrays.append(a)
    if not arrays:
        return np.zeros((0, 0, 0, 0), np.uint8), None
    channels = max(a.shape[2] for a in arrays)
    if channels == 3:
        arrays = [a if a.shape[2] == 3 else np.repeat(a, 3, axis=2) for a in arrays]
    return np.stack(arrays), None
