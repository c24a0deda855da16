"""The sequence format: one subject's ``data/`` folder, which every later stage reads.

Layout (the OcMotion / Wild2Avatar ``*_w2a`` layout, so that a real OcMotion folder drops in)::

    data/
      images/<name>.png        RGB frames; names start with a 5-digit frame number, sorted = time order
      masks/<name>.png         visible person mask, 0/255 (3-channel accepted on read: channel 0)
      metadata.json            {name: {"poses": [72], "betas": [10], "trans": [3],
                                       "cam_intrinsics": 3x3, "cam_extrinsics": 4x4 world-to-camera}}
      info.json                optional: {"source", "width", "height", "fps", "occlusion", "seed", ...}
      gt/                      optional ground truth
        images/<name>.png            unoccluded frame
        full_masks/<name>.png        complete person mask
        occluder_masks/<name>.png    optional, per frame: pixels covered by the occluder
        heldout/cameras.json         {view: {"K": 3x3, "w2c": 4x4, "width": W, "height": H}}
        heldout/<view>/images/<name>.png, heldout/<view>/masks/<name>.png
                                     held-out view of frame <name> (body pose = metadata[name])

Frames may also be ``.jpg``/``.jpeg`` on read (real clips); this package always writes PNG.
Poses are axis-angle in SMPL joint order (``poses[:3]`` = global orientation), ``trans`` is the SMPL
translation in metres, cameras follow :mod:`occfusion_core.render.camera` (OpenCV axes).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from occfusion_core.io import InputError, read_image, read_json, read_mask, write_image, write_json, write_mask
from occfusion_core.render.camera import Camera, is_rotation

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""File suffixes read as frames (lower-cased comparison)."""

FRAME_NAME = re.compile(r"\d{5}")
"""A frame name starts with a 5-digit, zero-padded frame number, so sorted order is time order."""

VIEW_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
"""A held-out view name doubles as a folder name."""

_VECTOR_KEYS = {"poses": 72, "betas": 10, "trans": 3}
_MATRIX_KEYS = {"cam_intrinsics": (3, 3), "cam_extrinsics": (4, 4)}


# ----------------------------------------------------------------------------------------------
# Parsing with error messages that name the file, the entry and the key
# ----------------------------------------------------------------------------------------------

def _parse_array(value, shape: tuple[int, ...], path, context: str, key: str) -> np.ndarray:
    """JSON value -> float64 array of ``shape``; InputError naming ``context`` and ``key`` otherwise.

    A vector (``shape == (n,)``) may also be stored as a single row ``[[...]]``.
    """
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged nesting
        raise InputError(path, f"{context}key '{key}' is not a regular array of numbers") from None
    if arr.dtype.kind not in "iuf":
        raise InputError(path, f"{context}key '{key}' is not an array of numbers")
    arr = arr.astype(np.float64)
    if len(shape) == 1:
        if arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 1:
            raise InputError(path, f"{context}key '{key}' has shape {_shape_str(arr.shape)}, "
                                   f"expected a list of {shape[0]} values")
        if arr.shape != shape:
            raise InputError(path, f"{context}key '{key}' has {arr.size} values, expected {shape[0]}")
    elif arr.shape != shape:
        raise InputError(path, f"{context}key '{key}' has shape {_shape_str(arr.shape)}, "
                               f"expected {_shape_str(shape)}")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        what = "NaN" if np.isnan(arr[idx]) else "inf"
        where = idx[0] if len(idx) == 1 else list(idx)
        raise InputError(path, f"{context}key '{key}' has a non-finite value ({what} at index {where})")
    return arr


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape) if shape else "scalar"


def _check_intrinsics(K: np.ndarray, path, context: str, key: str) -> None:
    """K (3, 3): positive focal lengths, last row (0, 0, 1)."""
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise InputError(path, f"{context}key '{key}' has a non-positive focal length "
                               f"(fx={K[0, 0]:g}, fy={K[1, 1]:g})")
    if not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-6):
        raise InputError(path, f"{context}key '{key}' last row is {K[2].tolist()}, expected [0, 0, 1]")


def _check_extrinsics(w2c: np.ndarray, path, context: str, key: str) -> None:
    """w2c (4, 4): rotation block in SO(3), last row (0, 0, 0, 1)."""
    R = w2c[:3, :3]
    if not is_rotation(R):
        err = float(np.abs(R @ R.T - np.eye(3)).max())
        raise InputError(path, f"{context}key '{key}' rotation part is not a rotation "
                               f"(det = {np.linalg.det(R):.4f}, max |R R^T - I| = {err:.4f}; "
                               "expected orthonormal with det +1)")
    if not np.allclose(w2c[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise InputError(path, f"{context}key '{key}' last row is {w2c[3].tolist()}, expected [0, 0, 0, 1]")


def parse_camera(entry, path, view: str) -> Camera:
    """One ``gt/heldout/cameras.json`` entry -> Camera, every field checked."""
    context = f"view '{view}' "
    if not VIEW_NAME.fullmatch(view):
        raise InputError(path, f"view name '{view}' is not a valid folder name")
    if not isinstance(entry, dict):
        raise InputError(path, f"{context}is not an object with keys K, w2c, width, height")
    missing = [k for k in ("K", "w2c", "width", "height") if k not in entry]
    if missing:
        raise InputError(path, f"{context}has no key {', '.join(repr(k) for k in missing)}")
    K = _parse_array(entry["K"], (3, 3), path, context, "K")
    w2c = _parse_array(entry["w2c"], (4, 4), path, context, "w2c")
    _check_intrinsics(K, path, context, "K")
    _check_extrinsics(w2c, path, context, "w2c")
    for key in ("width", "height"):
        v = entry[key]
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise InputError(path, f"{context}key '{key}' is {v!r}, expected a positive integer")
    return Camera(K, w2c, entry["width"], entry["height"])


@dataclass
class FrameMeta:
    """Body and camera of one frame (float64).

    Attributes:
        poses: (72,) axis-angle per SMPL joint; poses[:3] is the global orientation.
        betas: (10,) SMPL shape coefficients.
        trans: (3,) SMPL translation in metres.
        K: (3, 3) intrinsics.
        w2c: (4, 4) world-to-camera, OpenCV axes.
    """

    poses: np.ndarray
    betas: np.ndarray
    trans: np.ndarray
    K: np.ndarray
    w2c: np.ndarray

    def __post_init__(self) -> None:
        for key, value, shape in (("poses", self.poses, (72,)), ("betas", self.betas, (10,)),
                                  ("trans", self.trans, (3,)), ("K", self.K, (3, 3)),
                                  ("w2c", self.w2c, (4, 4))):
            arr = np.asarray(value, dtype=np.float64)
            if arr.shape != shape:
                raise ValueError(f"FrameMeta.{key} wants shape {shape}, got {arr.shape}")
            setattr(self, key, arr)

    def to_json(self) -> dict:
        """The ``metadata.json`` entry (OcMotion key names)."""
        return {
            "poses": self.poses.tolist(),
            "betas": self.betas.tolist(),
            "trans": self.trans.tolist(),
            "cam_intrinsics": self.K.tolist(),
            "cam_extrinsics": self.w2c.tolist(),
        }

    @staticmethod
    def from_json(d, where: str | os.PathLike = "metadata.json", frame: str | None = None) -> "FrameMeta":
        """Parse and check one ``metadata.json`` entry; extra keys are ignored.

        Args:
            d: the entry.
            where: the file it came from (named in errors).
            frame: the frame name (named in errors).

        Raises:
            InputError: a key is missing, has the wrong shape, a non-finite value, a rotation that is
                not a rotation or a non-positive focal length.
        """
        context = f"frame '{frame}' " if frame is not None else ""
        if not isinstance(d, dict):
            raise InputError(where, f"{context}entry is not an object")
        missing = [k for k in (*_VECTOR_KEYS, *_MATRIX_KEYS) if k not in d]
        if missing:
            raise InputError(where, f"{context}has no key {', '.join(repr(k) for k in missing)}")
        vec = {k: _parse_array(d[k], (n,), where, context, k) for k, n in _VECTOR_KEYS.items()}
        mat = {k: _parse_array(d[k], s, where, context, k) for k, s in _MATRIX_KEYS.items()}
        _check_intrinsics(mat["cam_intrinsics"], where, context, "cam_intrinsics")
        _check_extrinsics(mat["cam_extrinsics"], where, context, "cam_extrinsics")
        return FrameMeta(vec["poses"], vec["betas"], vec["trans"], mat["cam_intrinsics"], mat["cam_extrinsics"])


def parse_metadata(path: Path) -> dict[str, FrameMeta]:
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise InputError(path, "expected an object keyed by frame name")
    return {str(name): FrameMeta.from_json(entry, path, str(name)) for name, entry in raw.items()}


def list_frames(folder: Path) -> dict[str, Path]:
    """Frame name -> file for the image files in ``folder`` (hidden files, e.g. half-written
    temporaries of an atomic write, and other suffixes are skipped). Empty if no folder."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        if p.stem in found:
            raise InputError(folder, f"frame '{p.stem}' has two files: {found[p.stem].name} and {p.name}")
        found[p.stem] = p
    return found


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise InputError(path, "image file is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise InputError(path, f"cannot read image ({err})") from err
    return h, w


# ----------------------------------------------------------------------------------------------
# Read side
# ----------------------------------------------------------------------------------------------

class Sequence:
    """A sequence folder, read lazily: construction only lists ``images/``.

    Attributes:
        root: the ``data/`` folder.
        frames: frame names, sorted (= time order).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._images = list_frames(self.root / "images")
        self._masks = list_frames(self.root / "masks")
        self.frames: list[str] = sorted(self._images)

    def __repr__(self) -> str:
        return f"Sequence({str(self.root)!r}, {len(self.frames)} frames)"

    def __len__(self) -> int:
        return len(self.frames)

    @functools.cached_property
    def meta(self) -> dict[str, FrameMeta]:
        """Frame name -> FrameMeta, parsed and checked on first use."""
        return parse_metadata(self.root / "metadata.json")

    @functools.cached_property
    def info(self) -> dict:
        """``info.json`` ({} when absent)."""
        path = self.root / "info.json"
        if not path.exists():
            return {}
        info = read_json(path)
        if not isinstance(info, dict):
            raise InputError(path, "expected a JSON object")
        return info

    def image_path(self, name: str) -> Path:
        return self._images.get(name, self.root / "images" / f"{name}.png")

    def mask_path(self, name: str) -> Path:
        return self._masks.get(name, self.root / "masks" / f"{name}.png")

    def image(self, name: str) -> np.ndarray:
        """uint8 (H, W, 3) frame."""
        return read_image(self.image_path(name))

    def mask(self, name: str) -> np.ndarray:
        """bool (H, W) visible person mask."""
        return read_mask(self.mask_path(name))

    @functools.cached_property
    def size(self) -> tuple[int, int]:
        """(H, W) of the frames (from the first frame's header)."""
        if not self.frames:
            raise InputError(self.root / "images", "no image files")
        return image_size(self.image_path(self.frames[0]))

    def camera(self, name: str) -> Camera:
        m = self.meta[name]
        h, w = self.size
        return Camera(m.K, m.w2c, w, h)

    def keypoints(self) -> tuple[np.ndarray, np.ndarray] | None:
        """2D keypoints of every frame from ``keypoints.json`` (written by the video source):
        (pixels (T, 33, 2), visibility (T, 33)) in the frames' order, or None when the sequence has
        none. A frame missing from the file gets visibility 0.

        Raises:
            InputError: the file is not a keypoints file of 33 landmarks per frame.
        """
        path = self.root / "keypoints.json"
        if not path.exists():
            return None
        data = read_json(path)
        frames = data.get("frames") if isinstance(data, dict) else None
        if not isinstance(frames, dict):
            raise InputError(path, "expected an object with 'frames': {name: {'keypoints': [[u, v, visibility] x 33]}}")
        points = np.zeros((len(self.frames), 33, 2))
        visibility = np.zeros((len(self.frames), 33))
        for t, name in enumerate(self.frames):
            if name not in frames:
                continue
            kp = _parse_array(frames[name].get("keypoints"), (33, 3), path, f"frame '{name}' ", "keypoints")
            points[t], visibility[t] = kp[:, :2], kp[:, 2]
        return points, visibility

    def body_params(self, names: Iterable[str] | None = None) -> dict:
        """SMPL parameters of ``names`` (default: all frames) as float32 torch tensors.

        Returns:
            {"poses": (T, 72), "betas": (T, 10), "trans": (T, 3)}.
        """
        import torch

        names = self.frames if names is None else list(names)
        metas = [self.meta[n] for n in names]
        return {
            key: torch.tensor(np.stack([getattr(m, key) for m in metas]).reshape(len(metas), n),
                              dtype=torch.float32)
            for key, n in _VECTOR_KEYS.items()
        }

    # --- ground truth ---------------------------------------------------------------------

    @property
    def gt_root(self) -> Path:
        return self.root / "gt"

    @property
    def has_gt(self) -> bool:
        """True when unoccluded frames and complete masks exist (``gt/images`` and ``gt/full_masks``)."""
        return (self.gt_root / "images").is_dir() and (self.gt_root / "full_masks").is_dir()

    def gt_image(self, name: str) -> np.ndarray:
        """uint8 (H, W, 3) unoccluded frame."""
        return read_image(self.gt_root / "images" / f"{name}.png")

    def gt_full_mask(self, name: str) -> np.ndarray:
        """bool (H, W) complete person mask."""
        return read_mask(self.gt_root / "full_masks" / f"{name}.png")

    def gt_occluder_mask(self, name: str) -> np.ndarray | None:
        """bool (H, W) occluder pixels, or None where not recorded."""
        path = self.gt_root / "occluder_masks" / f"{name}.png"
        return read_mask(path) if path.exists() else None

    @functools.cached_property
    def _heldout_cameras(self) -> dict[str, Camera]:
        path = self.gt_root / "heldout" / "cameras.json"
        if not path.exists():
            return {}
        raw = read_json(path)
        if not isinstance(raw, dict):
            raise InputError(path, "expected an object keyed by view name")
        return {str(view): parse_camera(entry, path, str(view)) for view, entry in raw.items()}

    def heldout_views(self) -> dict[str, Camera]:
        """View name -> Camera of the held-out views ({} when there are none)."""
        return dict(self._heldout_cameras)

    def heldout_frames(self, view: str) -> list[str]:
        """Sorted frame names rendered in held-out ``view``."""
        return sorted(list_frames(self.gt_root / "heldout" / view / "images"))

    def heldout_image(self, view: str, name: str) -> np.ndarray:
        """uint8 (h, w, 3) frame ``name`` seen from held-out ``view``."""
        return read_image(self.gt_root / "heldout" / view / "images" / f"{name}.png")

    def heldout_mask(self, view: str, name: str) -> np.ndarray:
        """bool (h, w) person mask of frame ``name`` in held-out ``view``."""
        return read_mask(self.gt_root / "heldout" / view / "masks" / f"{name}.png")


def read_sequence(root: str | os.PathLike) -> Sequence:
    """Open a sequence folder (cheap: checks the folder, ``images/`` and ``metadata.json`` exist).

    Use :func:`validate_sequence` once, upstream, for the full check.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "sequence folder is missing")
    if not (root / "images").is_dir():
        raise InputError(root / "images", "folder is missing")
    if not (root / "metadata.json").is_file():
        raise InputError(root / "metadata.json", "file is missing")
    return Sequence(root)


# ----------------------------------------------------------------------------------------------
# Write side
# ----------------------------------------------------------------------------------------------

def _check_frame_arrays(name: str, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image, mask = np.asarray(image), np.asarray(mask)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"frame '{name}': image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"frame '{name}': mask shape {mask.shape} differs from image {image.shape[:2]}")
    return image, mask.astype(bool)


def _check_name(name: str) -> None:
    if not FRAME_NAME.match(name) or "/" in name or name.startswith("."):
        raise ValueError(f"frame name {name!r} must start with a 5-digit frame number, e.g. '00012'")


def write_sequence(
    root: str | os.PathLike,
    frames: Iterable[tuple[str, np.ndarray, np.ndarray, FrameMeta]],
    info: dict | None = None,
) -> None:
    """Write ``images/``, ``masks/``, ``metadata.json`` and (if given) ``info.json``.

    Frames stream through (a generator is fine). ``metadata.json`` is written last, so a writer
    killed midway leaves a folder that fails validation; image/mask files of frames not in this
    write (left over from an earlier write into the same folder) are removed.

    Args:
        frames: (name, image uint8 (H, W, 3), mask bool (H, W), FrameMeta) per frame.
        info: contents of ``info.json``.
    """
    root = Path(root)
    metadata: dict[str, dict] = {}
    size: tuple[int, int] | None = None
    for name, image, mask, meta in frames:
        _check_name(name)
        if name in metadata:
            raise ValueError(f"frame '{name}' given twice")
        image, mask = _check_frame_arrays(name, image, mask)
        if size is None:
            size = image.shape[:2]
        elif image.shape[:2] != size:
            raise ValueError(f"frame '{name}' is {image.shape[:2]}, earlier frames are {size}")
        write_image(root / "images" / f"{name}.png", image)
        write_mask(root / "masks" / f"{name}.png", mask)
        metadata[name] = meta.to_json()
    if not metadata:
        raise ValueError("write_sequence: no frames")
    for folder in ("images", "masks"):
        for path in (root / folder).iterdir():
            stale = path.stem not in metadata or path.suffix != ".png"
            if stale and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                path.unlink()
    write_json(root / "metadata.json", metadata)
    if info is not None:
        write_json(root / "info.json", info)


def write_gt_frame(
    root: str | os.PathLike, name: str, image: np.ndarray, full_mask: np.ndarray,
    occluder_mask: np.ndarray | None = None,
) -> None:
    """Write the ground truth of frame ``name``: unoccluded image uint8 (H, W, 3), complete mask
    bool (H, W) and optionally the occluder mask bool (H, W)."""
    _check_name(name)
    image, full_mask = _check_frame_arrays(name, image, full_mask)
    gt = Path(root) / "gt"
    write_image(gt / "images" / f"{name}.png", image)
    write_mask(gt / "full_masks" / f"{name}.png", full_mask)
    if occluder_mask is not None:
        _, occluder_mask = _check_frame_arrays(name, image, occluder_mask)
        write_mask(gt / "occluder_masks" / f"{name}.png", occluder_mask)


def write_unoccluded_sequence(data_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """The training frames of a ceiling: the sequence's unoccluded frames (``gt/images``) with their
    complete masks (``gt/full_masks``) as the visible masks, the same body estimates and cameras.

    A benchmark's reference, never a method: it needs the ground truth that only a synthetic or
    simulated occlusion has. The metrics of a model trained on it are computed on the original
    (occluded) sequence, so it is scored on the same hidden pixels as every other variant.

    Raises:
        InputError: the sequence has no ground truth.
    """
    seq = read_sequence(data_dir)
    if not seq.has_gt:
        raise InputError(seq.root, "has no ground truth (gt/images, gt/full_masks): an unoccluded "
                                   "ceiling cannot be trained for it")
    info = dict(seq.info)
    info["unoccluded_from"] = str(seq.root)
    info["notes"] = ("ceiling training data: gt/images and gt/full_masks of the sequence above as "
                     "images/ and masks/, its metadata.json unchanged")
    write_sequence(out_dir, ((n, seq.gt_image(n), seq.gt_full_mask(n), seq.meta[n]) for n in seq.frames), info)
    return {"frames": len(seq.frames), "from": str(seq.root)}


def write_heldout(
    root: str | os.PathLike,
    cameras: dict[str, Camera],
    frames: dict[str, list[tuple[str, np.ndarray, np.ndarray]]],
) -> None:
    """Write held-out views: ``gt/heldout/cameras.json`` and per view its images and masks.

    Args:
        cameras: view name -> Camera.
        frames: view name -> [(frame name, image uint8 (h, w, 3), mask bool (h, w))], the image size
            matching that view's camera.
    """
    heldout = Path(root) / "gt" / "heldout"
    unknown = sorted(set(frames) - set(cameras))
    if unknown:
        raise ValueError(f"held-out frames for view(s) without a camera: {unknown}")
    for view, cam in cameras.items():
        if not VIEW_NAME.fullmatch(view):
            raise ValueError(f"view name {view!r} is not a valid folder name")
        for name, image, mask in frames.get(view, []):
            _check_name(name)
            image, mask = _check_frame_arrays(name, image, mask)
            if image.shape[:2] != (cam.height, cam.width):
                raise ValueError(f"view '{view}' frame '{name}' is {image.shape[:2]}, "
                                 f"camera is {(cam.height, cam.width)}")
            write_image(heldout / view / "images" / f"{name}.png", image)
            write_mask(heldout / view / "masks" / f"{name}.png", mask)
    write_json(heldout / "cameras.json", {view: cam.to_dict() for view, cam in cameras.items()})
