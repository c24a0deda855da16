"""A user's own monocular video -> the sequence format: frames, person masks, keypoints, camera and
body, in one call (:func:`prepare_video`); and simulated occlusion on real frames with the originals
kept as ground truth (:func:`simulate_occlusion` on arrays, :func:`occlude_sequence` on a written
sequence folder of any source).

Steps of :func:`prepare_video`:

1. frames from the video through imageio-ffmpeg's bundled ffmpeg (start, stride, frame cap), scaled
   down so the longer side is at most ``max_side`` pixels;
2. MediaPipe Pose (``model_complexity=1``) per frame: 33 keypoints with visibility, 33 metric world
   landmarks and a person probability map, thresholded into a mask (stray blobs dropped);
3. the camera: the user's intrinsics (scaled with the frames) or a field-of-view default, and the
   extrinsics of :func:`occfusion_core.body.fit.camera_w2c` (camera at the world origin, world y up,
   level or pitched by ``camera_pitch_deg``);
4. the body fit of :mod:`occfusion_core.body.fit` to all frames at once;
5. optionally simulated occlusion, the original frames and masks going to ``gt/``;
6. written as ``images/``, ``masks/``, ``metadata.json``, ``info.json`` (every method and setting,
   fit residuals), ``keypoints.json`` (the detections) and ``gt/`` when occluded.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

from occfusion_core import io
from occfusion_core.data.keypoints import DETECTOR, LANDMARK_NAMES, Detection, PoseDetector
from occfusion_core.data.occlusion import apply_occlusion, moving_box_occluder, zju_band_masks
from occfusion_core.data.sequence import FrameMeta, write_gt_frame, write_sequence
from occfusion_core.data.source_configs import SimulatedOcclusionConfig, VideoConfig
from occfusion_core.io import InputError

log = logging.getLogger(__name__)

OCCLUSION_KINDS = ("none", "zju_band", "object")
BAND_FILLS = ("background", "white", "black")
DETECTOR_MODES = ("auto", "video", "static")
VIDEO_MODE_MAX_GAP_S = 0.25
"""'auto' uses MediaPipe's tracking mode when sampled frames are at most this far apart in time."""
BACKGROUND_MAX_FRAMES = 50
"""The background median uses at most this many frames (evenly spaced)."""
BACKGROUND_MARGIN_PX = 3
"""Person masks are grown by this many pixels before a pixel counts as showing background."""


# ----------------------------------------------------------------------------------------------
# Frames
# ----------------------------------------------------------------------------------------------

@dataclass
class VideoFrames:
    """Frames sampled from a video.

    Attributes:
        images: (T, H, W, 3) uint8 RGB, scaled.
        indices: (T,) int video frame numbers (0-based).
        fps: the video's frame rate.
        source_size: (width, height) of the video's frames.
        scale: (sx, sy) scaled size / source size per axis.
    """

    images: np.ndarray
    indices: np.ndarray
    fps: float
    source_size: tuple[int, int]
    scale: tuple[float, float]


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled down (never up) so the longer side is at most ``max_side``."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def read_video_frames(path: str | os.PathLike, start_frame: int = 0, frame_stride: int = 1,
                      max_frames: int | None = None, max_side: int | None = None) -> VideoFrames:
    """Decode frames ``start_frame, start_frame + frame_stride, ...`` (at most ``max_frames``).

    Raises:
        InputError: the file is missing, ffmpeg cannot read it, or no frame is in the range.
    """
    import imageio_ffmpeg
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "video file is missing")
    if frame_stride < 1 or start_frame < 0 or (max_frames is not None and max_frames < 1):
        raise ValueError(f"video: frame_stride >= 1, start_frame >= 0, max_frames >= 1 or None; got "
                         f"{frame_stride}, {start_frame}, {max_frames}")
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
    except (RuntimeError, OSError, StopIteration) as err:
        raise InputError(path, f"ffmpeg cannot read the video ({err})") from err
    width, height = meta["size"]
    if meta.get("rotate", 0) in (90, 270):  # ffmpeg auto-rotates; the reported size is pre-rotation
        width, height = height, width
    fps = float(meta.get("fps") or 0.0)
    out_w, out_h = scaled_size(width, height, max_side)
    images, indices = [], []
    try:
        for index, raw in enumerate(reader):
            if index < start_frame or (index - start_frame) % frame_stride:
                continue
            if len(raw) != width * height * 3:
                raise InputError(path, f"frame {index} has {len(raw)} bytes, expected {width}x{height}x3")
            frame = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
            if (out_w, out_h) != (width, height):
                frame = np.asarray(Image.fromarray(frame).resize((out_w, out_h), Image.Resampling.LANCZOS))
            images.append(frame.copy())
            indices.append(index)
            if max_frames is not None and len(images) >= max_frames:
                break
    except RuntimeError as err:
        raise InputError(path, f"ffmpeg failed while decoding ({err})") from err
    finally:
        reader.close()
    if not images:
        raise InputError(path, f"no frame at or after start_frame {start_frame} (the video has fewer frames)")
    return VideoFrames(np.stack(images), np.asarray(indices), fps, (width, height),
                       (out_w / width, out_h / height))


# ----------------------------------------------------------------------------------------------
# Masks, camera
# ----------------------------------------------------------------------------------------------

def person_mask(probability: np.ndarray, threshold: float = 0.5, min_component_fraction: float = 0.05) -> np.ndarray:
    """(H, W) person probability -> (H, W) bool mask: above ``threshold``, without blobs smaller than
    ``min_component_fraction`` of the largest (8-connected)."""
    mask = np.asarray(probability) > threshold
    labels, count = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count > 1:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= min_component_fraction * sizes.max()) + 1
        mask = np.isin(labels, keep)
    return mask


def mask_box_heights(masks: np.ndarray) -> np.ndarray:
    """(T, H, W) bool -> (T,) height in pixels of each mask's bounding box (0 for an empty mask)."""
    rows = masks.any(axis=2)
    heights = np.zeros(len(masks))
    for t, r in enumerate(rows):
        idx = np.flatnonzero(r)
        if idx.size:
            heights[t] = idx[-1] - idx[0] + 1
    return heights


def video_intrinsics(width: int, height: int, scale: tuple[float, float], intrinsics=None,
                     fov_deg: float = 60.0) -> tuple[np.ndarray, str]:
    """(3, 3) K of the scaled frames and how it was obtained.

    Args:
        width, height: scaled frame size.
        scale: (sx, sy) scaled / source size.
        intrinsics: [fx, fy, cx, cy] in source pixels, or None.
        fov_deg: field of view across the longer side when ``intrinsics`` is None.
    """
    if intrinsics is not None:
        if len(intrinsics) != 4:
            raise ValueError(f"video.intrinsics wants [fx, fy, cx, cy], got {intrinsics!r}")
        fx, fy, cx, cy = (float(v) for v in intrinsics)
        if fx <= 0 or fy <= 0:
            raise ValueError(f"video.intrinsics: focal lengths must be positive, got fx={fx}, fy={fy}")
        sx, sy = scale
        K = np.array([[fx * sx, 0.0, cx * sx], [0.0, fy * sy, cy * sy], [0.0, 0.0, 1.0]])
        return K, "user intrinsics [fx, fy, cx, cy], scaled with the frames"
    if not 1.0 < fov_deg < 179.0:
        raise ValueError(f"video.fov_deg must be in (1, 179), got {fov_deg}")
    f = 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2.0)
    K = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
    return K, f"default: {fov_deg:g} deg field of view across the longer side, principal point at the centre"


# ----------------------------------------------------------------------------------------------
# Simulated occlusion on real frames
# ----------------------------------------------------------------------------------------------

def estimate_background(images: np.ndarray, person_masks: np.ndarray,
                        max_frames: int = BACKGROUND_MAX_FRAMES,
                        margin_px: int = BACKGROUND_MARGIN_PX) -> tuple[np.ndarray, np.ndarray]:
    """Background of a static camera: per pixel, the median over frames where no person covers it.

    Pixels covered in every frame take the colour of the nearest pixel that is not (so a band drawn
    there shows a plausible smear rather than the person).

    Args:
        images: (T, H, W, 3) uint8; person_masks: (T, H, W) bool.

    Returns:
        background (H, W, 3) uint8, known (H, W) bool (pixels seen free in some frame).
    """
    T, H, W = person_masks.shape
    pick = np.unique(np.linspace(0, T - 1, min(T, max_frames)).round().astype(int))
    covered = np.stack([ndi.binary_dilation(person_masks[t], iterations=margin_px) if margin_px > 0
                        else person_masks[t] for t in pick])
    background = np.zeros((H, W, 3), dtype=np.float32)
    chunk = max(1, 2_000_000 // max(1, len(pick) * W * 3))  # rows per chunk: bounded memory
    for r0 in range(0, H, chunk):
        block = images[pick, r0:r0 + chunk].astype(np.float32)
        block[covered[:, r0:r0 + chunk]] = np.nan
        with np.errstate(all="ignore"), _quiet_nan_warnings():
            background[r0:r0 + chunk] = np.nanmedian(block, axis=0)
    known = ~covered.all(axis=0)
    if not known.any():
        return np.zeros((H, W, 3), dtype=np.uint8), known
    if not known.all():
        _, (ri, ci) = ndi.distance_transform_edt(~known, return_indices=True)
        background = background[ri, ci]
    return np.clip(background + 0.5, 0, 255).astype(np.uint8), known


class _quiet_nan_warnings:
    """Silence numpy's 'All-NaN slice' warning (those pixels are filled afterwards)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def band_fill(kind: str, images: np.ndarray, person_masks: np.ndarray) -> tuple[np.ndarray, dict]:
    """What a band occluder shows: (H, W, 3) uint8 background estimate or constant colour, and a note."""
    if kind == "background":
        background, known = estimate_background(images, person_masks)
        return background, {"band_fill": "background (per-pixel median of frames where the person "
                                          "does not cover the pixel; never-free pixels: nearest free "
                                          "pixel's colour)", "background_known_fraction": float(known.mean())}
    if kind in ("white", "black"):
        value = 255 if kind == "white" else 0
        return np.full(images.shape[1:], value, dtype=np.uint8), {"band_fill": kind}
    raise ValueError(f"band_fill: {kind!r} is not one of {', '.join(BAND_FILLS)}")


@dataclass
class SimulatedOcclusion:
    """Occluded frames and their ground truth.

    Attributes:
        images: (T, H, W, 3) uint8 occluded frames.
        visible_masks: (T, H, W) bool complete person mask minus occluder.
        occluder_masks: (T, H, W) bool occluder pixels.
        summary: JSON-ready description (kind, settings, frames occluded, hidden share of the person).
    """

    images: np.ndarray
    visible_masks: np.ndarray
    occluder_masks: np.ndarray
    summary: dict


def simulate_occlusion(images: np.ndarray, full_masks: np.ndarray, cfg: SimulatedOcclusionConfig,
                       camera=None, person_centers: np.ndarray | None = None) -> SimulatedOcclusion:
    """Hide part of the person in real frames; the inputs are the ground truth.

    Args:
        images: (T, H, W, 3) uint8 unoccluded frames.
        full_masks: (T, H, W) bool complete person masks.
        cfg: kind 'zju_band' (:func:`occfusion_core.data.occlusion.zju_band_masks`, filled per
            ``cfg.band_fill``) or 'object' (a crate from
            :func:`occfusion_core.data.occlusion.moving_box_occluder`).
        camera: :class:`occfusion_core.render.camera.Camera` of the frames ('object' only).
        person_centers: (T, 3) world points the crate aims at, e.g. the fitted pelvis ('object' only).

    Raises:
        ValueError: unknown kind, missing camera for 'object', or an occluder hiding the whole person.
    """
    images = np.asarray(images)
    full_masks = np.asarray(full_masks, dtype=bool)
    T = len(images)
    summary: dict = {"kind": cfg.kind, "occluded_frames_fraction": cfg.occluded_frames_fraction}
    if cfg.kind == "zju_band":
        occluder = zju_band_masks(full_masks, cfg.occluded_frames_fraction, cfg.band_width_fraction)
        fill, note = band_fill(cfg.band_fill, images, full_masks)
        fills = np.broadcast_to(fill, images.shape)
        summary.update(note, band_width_fraction=cfg.band_width_fraction,
                       rule="ZJU-MoCap/OccNeRF protocol: vertical band over the central part of the "
                            "person's horizontal extent, full image height, in the first frames")
    elif cfg.kind == "object":
        if camera is None or person_centers is None:
            raise ValueError("simulated occlusion 'object' needs the camera and the person's centres")
        R = camera.R.double().numpy()
        t = camera.t.double().numpy()
        depth = (np.asarray(person_centers, np.float64) @ R.T + t)[:, 2]  # (T,) camera z of the person
        person_depth = np.where(full_masks, depth[:, None, None], np.inf).astype(np.float32)
        box = moving_box_occluder(camera, person_centers, person_depth, cfg.occluded_frames_fraction,
                                  seed=cfg.seed)
        occluder = box.mask
        fills = (np.clip(box.rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        summary.update(seed=cfg.seed, rule="a wooden crate sliding across between camera and person "
                                           "(moving_box_occluder), drawn by the mesh rasterizer")
    else:
        raise ValueError(f"simulated occlusion: kind {cfg.kind!r} is not one of zju_band, object "
                         "('none' needs no call)")
    out = np.empty_like(images)
    visible = np.empty_like(full_masks)
    for i in range(T):
        out[i], visible[i] = apply_occlusion(images[i], full_masks[i], occluder[i], fills[i])
        if full_masks[i].any() and not visible[i].any():
            raise ValueError(f"simulated occlusion hides the whole person in frame {i}")
    occluded = occluder.reshape(T, -1).any(axis=1)
    person_px = full_masks.reshape(T, -1).sum(axis=1)
    hidden = (full_masks & occluder).reshape(T, -1).sum(axis=1) / np.maximum(person_px, 1)
    summary.update(occluded_frames=int(occluded.sum()),
                   hidden_fraction_mean=float(hidden[occluded].mean()) if occluded.any() else 0.0)
    return SimulatedOcclusion(out, visible, occluder, summary)


def occlude_sequence(root: str | os.PathLike, cfg: SimulatedOcclusionConfig, body_model=None) -> dict:
    """Simulated occlusion on an already written sequence folder (any source), in place.

    The folder's current frames and masks are taken as complete: they move to ``gt/images`` and
    ``gt/full_masks`` (with ``gt/occluder_masks``), and ``images/`` and ``masks/`` get the occluded
    frames and the visible masks. 'object' aims the crate at the bodies of ``metadata.json``, seen
    from the first frame's camera (``body_model`` needed).

    Raises:
        InputError: the folder already has ground truth (``gt/``), which would be overwritten.
    """
    from occfusion_core.data.sequence import read_sequence

    seq = read_sequence(root)
    if seq.gt_root.exists():
        raise InputError(seq.gt_root, "the sequence already has ground truth; simulated occlusion would "
                                      "overwrite it")
    images = np.stack([seq.image(n) for n in seq.frames])
    masks = np.stack([seq.mask(n) for n in seq.frames])
    camera = centres = None
    if cfg.kind == "object":
        if body_model is None:
            raise ValueError("occlude_sequence: 'object' needs the body model (the crate aims at the body)")
        camera = seq.camera(seq.frames[0])
        params = seq.body_params()
        centres = _pelvis_of(body_model, params["poses"], params["betas"], params["trans"])
    occlusion = simulate_occlusion(images, masks, cfg, camera, centres)
    for t, name in enumerate(seq.frames):
        write_gt_frame(seq.root, name, images[t], masks[t], occlusion.occluder_masks[t])
        for folder, path, write, value in (("images", seq.image_path(name), io.write_image, occlusion.images[t]),
                                           ("masks", seq.mask_path(name), io.write_mask, occlusion.visible_masks[t])):
            target = seq.root / folder / f"{name}.png"
            write(target, value)
            if path != target and path.exists():  # a .jpg frame is replaced by the .png written
                path.unlink()
    info = dict(seq.info)
    info.update(occlusion=cfg.kind, occlusion_settings=occlusion.summary)
    io.write_json(seq.root / "info.json", info)
    return occlusion.summary


# ----------------------------------------------------------------------------------------------
# The video source
# ----------------------------------------------------------------------------------------------

def frame_name(video_index: int) -> str:
    """Frame file stem: the video frame number, 5 digits (or more past 99999)."""
    return f"{video_index:05d}"


def _detect(images: np.ndarray, video_mode: bool, cfg: VideoConfig, on_missing=None
            ) -> tuple[list[Detection | None], list[np.ndarray | None]]:
    """MediaPipe on every frame -> (detections, person masks); None where no person is found.
    ``on_missing(i)`` is called at the first such frame (it may raise, to stop early)."""
    detections, masks = [], []
    with PoseDetector(video_mode=video_mode) as detector:
        for i, image in enumerate(images):
            det = detector(image)
            mask = None if det is None else person_mask(det.segmentation, cfg.mask_threshold,
                                                        cfg.min_component_fraction)
            if det is None or not mask.any():
                det, mask = None, None
                if on_missing is not None:
                    on_missing(i)
            detections.append(det)
            masks.append(mask)
    return detections, masks


def prepare_video(video_path: str | os.PathLike, out_dir: str | os.PathLike, cfg: VideoConfig, body_model) -> dict:
    """A user's video -> sequence folder ``out_dir`` (see the module docstring).

    Args:
        video_path: the video file.
        out_dir: the sequence folder to write (created).
        cfg: :class:`~occfusion_core.data.source_configs.VideoConfig`.
        body_model: :class:`~occfusion_core.body.model.BodyModel` to fit (proxy or SMPL).

    Returns:
        Summary: frames, size, dropped frames, fit residuals, timings.

    Raises:
        InputError: unreadable video, or (``on_missing_person: error``) a frame without a person,
            naming the video frame and its time.
    """
    from occfusion_core.body.fit import camera_w2c
    from occfusion_core.render.camera import Camera

    if cfg.on_missing_person not in ("error", "drop"):
        raise ValueError(f"video.on_missing_person: {cfg.on_missing_person!r} is not 'error' or 'drop'")
    if cfg.detector_mode not in DETECTOR_MODES:
        raise ValueError(f"video.detector_mode: {cfg.detector_mode!r} is not one of {', '.join(DETECTOR_MODES)}")
    occ = cfg.occlusion
    if occ.kind not in OCCLUSION_KINDS:
        raise ValueError(f"video.occlusion.kind: {occ.kind!r} is not one of {', '.join(OCCLUSION_KINDS)}")
    if occ.detect_on not in ("original", "occluded"):
        raise ValueError(f"video.occlusion.detect_on: {occ.detect_on!r} is not 'original' or 'occluded'")
    out = Path(out_dir)
    timings: dict[str, float] = {}

    start = time.time()
    video = read_video_frames(video_path, cfg.start_frame, cfg.frame_stride, cfg.max_frames, cfg.max_side)
    timings["decode_s"] = time.time() - start
    T0, H, W = video.images.shape[:3]
    fps = video.fps if video.fps > 0 else 30.0
    gap_s = cfg.frame_stride / fps
    video_mode = cfg.detector_mode == "video" or (cfg.detector_mode == "auto" and gap_s <= VIDEO_MODE_MAX_GAP_S)

    def stop_at_missing(i: int) -> None:
        # fail at the first frame without a person, before detecting the rest
        raise InputError(video_path, f"no person found in video frame {video.indices[i]} "
                                     f"(t = {video.indices[i] / fps:.2f} s); set video.on_missing_person: "
                                     "drop to skip such frames")

    start = time.time()
    detections, masks = _detect(video.images, video_mode, cfg,
                                stop_at_missing if cfg.on_missing_person == "error" else None)
    timings["detect_s"] = time.time() - start
    missing = [i for i, d in enumerate(detections) if d is None]
    keep = [i for i in range(T0) if i not in set(missing)]
    if not keep:
        raise InputError(video_path, "no person found in any sampled frame")
    dropped = [int(video.indices[i]) for i in missing]
    for i in missing:
        log.warning("video frame %d (t = %.2f s): no person found, frame dropped", video.indices[i],
                    video.indices[i] / fps)
    images = video.images[keep]
    indices = video.indices[keep]
    full_masks = np.stack([masks[i] for i in keep])
    dets = [detections[i] for i in keep]
    T = len(keep)

    K, k_source = video_intrinsics(W, H, video.scale, cfg.intrinsics, cfg.fov_deg)
    w2c = camera_w2c(cfg.camera_pitch_deg)
    camera = Camera(K, w2c, W, H)

    occlusion = None
    fit_dets, fit_masks = dets, full_masks
    fit = None
    if occ.kind == "none" or occ.kind == "object" or occ.detect_on == "original":
        # the crate of 'object' aims at the fitted person, so this fit comes first
        start = time.time()
        fit = _fit(body_model, dets, full_masks, K, w2c, cfg, gap_s)
        timings["fit_s"] = time.time() - start
    if occ.kind != "none":
        centers = _pelvis(body_model, fit) if occ.kind == "object" else None
        occlusion = simulate_occlusion(images, full_masks, occ, camera, centers)
        if occ.detect_on == "occluded":
            start = time.time()
            redetected, fit_masks = _detect(occlusion.images, video_mode, cfg)
            timings["detect_occluded_s"] = time.time() - start
            lost = [int(indices[i]) for i, d in enumerate(redetected) if d is None]
            if lost:
                raise InputError(video_path, f"with the simulated occlusion no person is found in video "
                                             f"frame(s) {lost[:8]}; use occlusion.detect_on: original")
            fit_dets = redetected
            fit_masks = np.stack(fit_masks)
            start = time.time()
            fit = _fit(body_model, fit_dets, full_masks, K, w2c, cfg, gap_s)
            timings["fit_occluded_s"] = time.time() - start

    names = [frame_name(int(i)) for i in indices]
    visible_masks = fit_masks if occlusion is None else (
        occlusion.visible_masks if occ.detect_on == "original" else fit_masks)
    train_images = images if occlusion is None else occlusion.images
    metas = [FrameMeta(fit.poses[t], fit.betas, fit.trans[t], K, w2c) for t in range(T)]

    info = {
        "source": "video",
        "video": str(video_path),
        "width": W,
        "height": H,
        "fps": fps / cfg.frame_stride,
        "video_fps": fps,
        "video_size": list(video.source_size),
        "scale": list(video.scale),
        "video_frames": [int(i) for i in indices],
        "dropped_frames": dropped,
        "detector": DETECTOR,
        "detector_mode": ("video (tracking, temporal smoothing)" if video_mode
                          else "static image (every frame on its own)") + f"; frames {gap_s:.3f} s apart",
        "masks": f"MediaPipe segmentation probability > {cfg.mask_threshold}, blobs under "
                 f"{cfg.min_component_fraction} of the largest dropped",
        "camera": {"intrinsics": k_source, "K": K.tolist(), "w2c": w2c.tolist(),
                   "convention": "camera at the world origin facing -z, world y up, OpenCV image axes; "
                                 "units metres",
                   "pitch_deg": cfg.camera_pitch_deg,
                   "tilt": "given by the user" if cfg.camera_pitch_deg else "level camera assumed (one view "
                           "cannot tell its tilt; set video.camera_pitch_deg if it looks down)"},
        "body_model": "proxy" if getattr(body_model, "is_proxy", False) else str(getattr(body_model, "name", "smpl")),
        "fit": {"method": "SMPLify-style: robust 2D reprojection of the MediaPipe landmarks mapped onto the "
                          "body's joints45, MediaPipe world landmarks as a bone-direction prior, quadratic "
                          "pose prior with joint limits, shape prior, temporal smoothness; Adam in three "
                          "stages (orientation + translation, + pose, + shape)",
                "keypoints_from": "original frames" if occlusion is None or occ.detect_on == "original"
                else "occluded frames",
                "config": asdict(cfg.fit),
                **fit.summary(),
                "residual_box_fraction_per_frame": {n: _round(v) for n, v in zip(names, fit.residual_fraction)},
                "residual_px_per_landmark": {LANDMARK_NAMES[i]: _round(v) for i, v in enumerate(fit.landmark_error_px)
                                             if np.isfinite(v)},
                "box": "bounding box of the person mask"},
        "occlusion": occ.kind,
        "occlusion_settings": occlusion.summary if occlusion is not None else None,
        "seed": occ.seed,
        "heldout": "none: a monocular clip has no other views; evaluate on the hidden pixels of the "
                   "training frames (gt/) or on visible pixels",
        "config": asdict(cfg),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }
    write_sequence(out, ((names[t], train_images[t], visible_masks[t], metas[t]) for t in range(T)), info)
    if occlusion is not None:
        for t in range(T):
            write_gt_frame(out, names[t], images[t], full_masks[t], occlusion.occluder_masks[t])
    io.write_json(out / "keypoints.json", {
        "detector": DETECTOR,
        "landmarks": list(LANDMARK_NAMES),
        "image_size": [W, H],
        "keypoints": "per landmark [u, v, visibility]: continuous pixel coordinates of images/ "
                     "(pixel (i, j) covers [j, j+1) x [i, i+1))",
        "world": "per landmark [x, y, z] metres, centred between the hips, camera-like axes "
                 "(x right, y down, z away from the camera)",
        "detected_on": info["fit"]["keypoints_from"],
        "dropped_frames": dropped,
        "frames": {n: {"video_frame": int(i), **d.to_json()} for n, i, d in zip(names, indices, fit_dets)},
    })
    summary = {"frames": T, "width": W, "height": H, "dropped_frames": dropped, **fit.summary(),
               "timings_s": info["timings_s"]}
    summary.pop("stage_losses", None)
    return summary


def _round(v: float) -> float | None:
    return round(float(v), 4) if np.isfinite(v) else None


def _fit(body_model, dets: list[Detection], full_masks: np.ndarray, K: np.ndarray, w2c: np.ndarray,
         cfg: VideoConfig, frame_interval_s: float):
    from occfusion_core.body.fit import fit_body

    heights = mask_box_heights(full_masks)
    return fit_body(body_model, np.stack([d.keypoints for d in dets]), np.stack([d.visibility for d in dets]),
                    K, np.stack([d.world for d in dets]), cfg.fit, box_height_px=heights,
                    frame_interval_s=frame_interval_s, w2c=w2c)


def _pelvis(body_model, fit) -> np.ndarray:
    """(T, 3) world pelvis of a fit."""
    T = len(fit.poses)
    return _pelvis_of(body_model, fit.poses, np.tile(fit.betas, (T, 1)), fit.trans)


def _pelvis_of(body_model, poses, betas, trans) -> np.ndarray:
    """(T, 3) world pelvis of bodies poses (T, 72), betas (T, 10), trans (T, 3)."""
    import torch

    from occfusion_core.body.fit import JointsFK

    with torch.no_grad():
        joints, _ = JointsFK(body_model)(torch.as_tensor(np.asarray(poses), dtype=torch.float32),
                                         torch.as_tensor(np.asarray(betas), dtype=torch.float32),
                                         torch.as_tensor(np.asarray(trans), dtype=torch.float32))
    return joints[:, 0].double().numpy()
