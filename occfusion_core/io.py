"""Files: images, masks, JSON, checkpoints, videos, always written atomically.

A job killed midway must never leave a file that looks finished, so every writer here writes to a
temporary file in the same folder and renames it into place (rename is atomic on POSIX).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


class InputError(ValueError):
    """Bad user input: the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``path``; when the block succeeds it replaces ``path``
    whole, when it fails it is removed and ``path`` is left as it was."""
    import shutil

    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err})") from err


def _read_pixels(path: str | os.PathLike, what: str, mode: str | None) -> np.ndarray:
    """Decode an image file (converted to PIL ``mode`` when given) as an array."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert(mode) if mode else im)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise InputError(path, f"cannot read {what} ({err})") from err


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an RGB image as uint8 (H, W, 3). Grey images are expanded, alpha is dropped."""
    return _read_pixels(path, "image", "RGB")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a binary mask as bool (H, W). Multi-channel masks use channel 0 (OcMotion stores 3)."""
    arr = _read_pixels(path, "mask", None)
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr > 127 if arr.dtype == np.uint8 else arr > 0


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write uint8 (H, W), (H, W, 3) or (H, W, 4), or float in [0, 1], as PNG."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a bool/0-1 mask as a single-channel 0/255 PNG."""
    write_image(path, (np.asarray(mask) > 0.5).astype(np.uint8) * 255)


def write_video(path: str | os.PathLike, frames: list[np.ndarray] | np.ndarray, fps: int = 15) -> None:
    """Write frames (uint8 or float in [0, 1], (H, W, 3)) as an H.264 mp4 through imageio-ffmpeg."""
    import imageio.v2 as imageio

    frames = [np.asarray(f) for f in frames]
    frames = [
        f if f.dtype == np.uint8 else (np.clip(f, 0, 1) * 255 + 0.5).astype(np.uint8) for f in frames
    ]
    # libx264 with yuv420p needs even sizes: pad by edge replication rather than resample.
    h, w = frames[0].shape[:2]
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = [np.pad(f, ((0, ph), (0, pw), (0, 0)), mode="edge") for f in frames]
    with atomic_path(path, suffix=".mp4") as tmp:
        writer = imageio.get_writer(
            tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1, ffmpeg_log_level="error"
        )
        try:
            for f in frames:
                writer.append_data(f)
        finally:
            writer.close()


def plain(obj: Any) -> Any:
    """``obj`` with numpy arrays as tensors and numpy scalars as Python ones, tuples as lists: what
    :func:`save_torch` writes, so that :func:`load_torch` can read it with ``weights_only=True``."""
    import torch

    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """Write tensors and plain types (see :func:`plain`) with ``torch.save``, atomically."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(plain(obj), tmp)


def load_torch(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """Read a file :func:`save_torch` wrote, with ``weights_only=True``: nothing in it can run code.

    Raises:
        InputError: naming the file when it is missing, truncated or corrupt, or holds anything but
            tensors and plain types (a foreign file, or one from an older version of this project).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint is missing")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise InputError(path, "not a file this version of the project wrote: it holds objects other than "
                               f"tensors and plain types, which are not loaded ({err})") from err
    except Exception as err:  # torch raises many types for a truncated/corrupt file
        raise InputError(path, f"cannot load checkpoint ({type(err).__name__}: {err})") from err
