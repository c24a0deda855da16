"""Complete check of a sequence folder (the format of :mod:`occfusion_core.data.sequence`) before any
stage reads it: everything cheap (folders, file lists, metadata, cameras) first, then every image and
mask decoded. The first problem raises :class:`~occfusion_core.io.InputError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from occfusion_core.data.sequence import (
    FRAME_NAME,
    IMAGE_SUFFIXES,
    FrameMeta,
    image_size,
    list_frames,
    parse_camera,
    parse_metadata,
)
from occfusion_core.io import InputError, read_image, read_json, read_mask
from occfusion_core.render.camera import Camera


def _names(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _fraction_stats(fractions: dict[str, float]) -> dict:
    values = np.array(list(fractions.values()))
    lowest = min(fractions, key=fractions.get)
    return {"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max()),
            "min_frame": lowest}


def _require_files(folder: Path, names: list[str], what: str, frames_from: str) -> dict[str, Path]:
    """Name -> file in ``folder`` for each of ``names``; InputError naming the first missing file."""
    files = list_frames(folder)
    missing = [n for n in names if n not in files]
    if missing:
        more = f" (also missing: {_names(missing[1:])})" if len(missing) > 1 else ""
        raise InputError(folder / f"{missing[0]}.png",
                         f"{what} file is missing for frame '{missing[0]}' listed in {frames_from}{more}")
    return {n: files[n] for n in names}


def _read_checked(path: Path, kind: str, size: tuple[int, int], size_from: str, nonempty: bool) -> np.ndarray:
    """Read an image (uint8 (H, W, 3)) or mask (bool (H, W)) and check its size (and that a mask has
    a person pixel)."""
    arr = read_mask(path) if kind == "mask" else read_image(path)
    if arr.shape[:2] != size:
        raise InputError(path, f"{kind} is {arr.shape[1]}x{arr.shape[0]} (width x height) but "
                               f"{size_from} is {size[1]}x{size[0]}")
    if kind == "mask" and nonempty and not arr.any():
        raise InputError(path, f"mask of frame '{path.stem}' is empty (no person pixel; "
                               "masks are 0/255, values up to 127 count as background)")
    return arr


def validate_sequence(root: str | os.PathLike, check_gt: bool = True) -> dict:
    """Check a sequence folder completely and return a small report.

    Everything cheap (folders, file lists, metadata, cameras) is checked before any pixel is read;
    then every image and mask is decoded.

    Returns:
        {"root", "frames": T, "first_frame", "last_frame", "height", "width",
         "person_fraction": {min, mean, max, min_frame}, "source", "gt": {...} or None}.

    Raises:
        InputError: naming the file and the problem, at the first problem found.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "sequence folder is missing")
    images_dir, masks_dir, meta_path = root / "images", root / "masks", root / "metadata.json"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise InputError(folder, "folder is missing")
    if not meta_path.is_file():
        raise InputError(meta_path, "file is missing")

    images = list_frames(images_dir)
    if not images:
        raise InputError(images_dir, f"no image files ({', '.join(IMAGE_SUFFIXES)})")
    frames = sorted(images)
    bad_names = [n for n in frames if not FRAME_NAME.match(n)]
    if bad_names:
        raise InputError(images[bad_names[0]], f"frame name(s) {_names(bad_names)} do not start with a "
                                               "5-digit frame number (e.g. 00012.png)")
    meta = parse_metadata(meta_path)
    not_in_meta = [n for n in frames if n not in meta]
    if not_in_meta:
        raise InputError(meta_path, f"no entry for frame(s) {_names(not_in_meta)} found in images/")
    without_image = [n for n in meta if n not in images]
    if without_image:
        more = f" (also: {_names(without_image[1:])})" if len(without_image) > 1 else ""
        raise InputError(images_dir / f"{without_image[0]}.png",
                         f"image file is missing for frame '{without_image[0]}' listed in "
                         f"metadata.json{more}")
    masks = _require_files(masks_dir, frames, "mask", "images/")

    info_path = root / "info.json"
    info = read_json(info_path) if info_path.exists() else {}
    if not isinstance(info, dict):
        raise InputError(info_path, "expected a JSON object")

    gt = root / "gt"
    gt_files: dict[str, dict[str, Path]] = {}
    heldout: dict[str, tuple[Camera, dict[str, Path], dict[str, Path]]] = {}
    if check_gt and gt.is_dir():
        for part, what in (("images", "gt image"), ("full_masks", "gt full mask")):
            if (gt / part).is_dir():
                gt_files[part] = _require_files(gt / part, frames, what, "images/")
        if (gt / "occluder_masks").is_dir():
            occluders = list_frames(gt / "occluder_masks")
            stray = [n for n in occluders if n not in meta]
            if stray:
                raise InputError(occluders[stray[0]], f"occluder mask of frame(s) {_names(stray)} "
                                                      "not in metadata.json")
            gt_files["occluder_masks"] = occluders
        heldout = _check_heldout_files(gt / "heldout", meta)

    # Pixels: sizes agree everywhere, masks have a person pixel.
    h, w = image_size(images[frames[0]])
    first = f"frame '{frames[0]}' ({images[frames[0]].name})"
    fractions = {}
    for name in frames:
        _read_checked(images[name], "image", (h, w), first, False)
        mask = _read_checked(masks[name], "mask", (h, w), f"its image {images[name].name}", True)
        fractions[name] = float(mask.mean())
    for key in ("width", "height"):
        if key in info and info[key] != {"width": w, "height": h}[key]:
            raise InputError(info_path, f"'{key}' is {info[key]!r} but the images are {w}x{h} (width x height)")

    report = {
        "root": str(root),
        "frames": len(frames),
        "first_frame": frames[0],
        "last_frame": frames[-1],
        "height": h,
        "width": w,
        "person_fraction": _fraction_stats(fractions),
        "source": info.get("source"),
        "dropped_frames": info.get("dropped_frames", []),
        "framing": info.get("framing"),
        "gt": None,
    }
    if gt_files or heldout:
        report["gt"] = _check_gt_pixels(gt_files, heldout, frames, masks, (h, w), first)
    return report


def _check_heldout_files(heldout_dir: Path, meta: dict[str, FrameMeta]):
    """Cheap checks of ``gt/heldout``: cameras.json parses, folders and files match it.

    Returns:
        view -> (Camera, frame name -> image file, frame name -> mask file).
    """
    if not heldout_dir.is_dir():
        return {}
    cam_path = heldout_dir / "cameras.json"
    if not cam_path.is_file():
        raise InputError(cam_path, "file is missing (gt/heldout/ exists)")
    raw = read_json(cam_path)
    if not isinstance(raw, dict) or not raw:
        raise InputError(cam_path, "expected a non-empty object keyed by view name")
    cameras = {str(v): parse_camera(entry, cam_path, str(v)) for v, entry in raw.items()}
    folders = {p.name for p in heldout_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    stray = sorted(folders - set(cameras))
    if stray:
        raise InputError(heldout_dir / stray[0], f"held-out view folder has no entry in {cam_path.name}")
    out = {}
    for view, cam in cameras.items():
        images = list_frames(heldout_dir / view / "images")
        if not images:
            raise InputError(heldout_dir / view / "images", f"no images for held-out view '{view}'")
        unknown = [n for n in images if n not in meta]
        if unknown:
            raise InputError(images[unknown[0]], f"held-out frame(s) {_names(unknown)} of view '{view}' "
                                                 "have no entry in metadata.json (the body pose comes from it)")
        masks = _require_files(heldout_dir / view / "masks", sorted(images), "held-out mask",
                               f"{view}/images/")
        out[view] = (cam, images, masks)
    return out


def _check_gt_pixels(gt_files, heldout, frames, masks, size, first) -> dict:
    """Read every gt image and mask; returns the gt part of the report."""
    report: dict = {}
    if "images" in gt_files:
        for name in frames:
            _read_checked(gt_files["images"][name], "image", size, first, False)
    if "full_masks" in gt_files:
        full_fraction, visible_share = {}, {}
        for name in frames:
            full = _read_checked(gt_files["full_masks"][name], "mask", size, first, True)
            full_fraction[name] = float(full.mean())
            visible = read_mask(masks[name])
            visible_share[name] = float((visible & full).sum() / full.sum())
        report["full_person_fraction"] = _fraction_stats(full_fraction)
        # How much of the person each frame shows: 1 = unoccluded.
        report["visible_share_of_person"] = _fraction_stats(visible_share)
    if "occluder_masks" in gt_files:
        for name, path in gt_files["occluder_masks"].items():
            _read_checked(path, "mask", size, first, False)
        report["occluder_mask_frames"] = len(gt_files["occluder_masks"])
    views = {}
    for view, (cam, images, vmasks) in heldout.items():
        cam_size = (cam.height, cam.width)
        for name in images:
            _read_checked(images[name], "image", cam_size, f"camera '{view}' in cameras.json", False)
            _read_checked(vmasks[name], "mask", cam_size, f"camera '{view}' in cameras.json", True)
        views[view] = len(images)
    if views:
        report["heldout_views"] = views
    return report
